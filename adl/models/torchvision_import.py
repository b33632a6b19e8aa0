"""torchvision architectures for a spec's `model torchvision(name = ..., weights = ..., stem = ..., head = ...)`.

The network is built by torchvision's own builder (never downloading: `weights=None`); the user's
weights come from a file, a state dict saved with `torch.save` or safetensors. The data set rarely
matches what the weights were trained on, so two layers can be swapped:

- the *stem*, the first `nn.Conv2d` (the layer that sees the image), when the data has another
  number of channels (gray digits: 1, ImageNet weights: 3);
- the *head*, the last `nn.Linear` (the classifier), when the data has another number of classes.

Each swap is recorded (`Replacement`: layer, before, after, how initialised) for the manifest, and a
mismatch the spec did not ask to swap is a `TorchvisionError` that says which line to write. A
mistake in the weights file (unreadable, not plain tensors, keys or shapes that do not fit) is a
`TorchvisionError` too, naming the file, the keys and the shapes.

torch and torchvision are imported inside the functions, so that the spec checker can read `NAMES`
without loading them.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import re
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adl.models.families import TORCHVISION_NAMES

if TYPE_CHECKING:
    import torch
    from torch import nn

#: torchvision builders a spec may name: image classifiers whose first layer applied to the image is
#: their first registered `nn.Conv2d` and whose output is their last registered `nn.Linear` (the
#: tests check both for every name), so that `stem` and `head` can be found without a per-network table.
NAMES: tuple[str, ...] = TORCHVISION_NAMES  # one list: the spec checker reads it from families (no torch)

#: what `stem` and `head` accept: keep the layer as built (and loaded), or build a new one in its place
CHOICES: tuple[str, ...] = ("keep", "replace")

#: `Replacement.init` of a layer built anew: torch's default initialisation, from the caller's seed
FRESH = "fresh (seeded)"

#: how many keys of each kind a mismatch error lists before it only counts the rest
_LISTED = 5


class TorchvisionError(ValueError):
    """A user mistake (weights file, mismatched shapes); the message names the file, the layer and the shapes.
    `key` is the model block's setting at fault (``weights``, ``stem``, ``head``), for the caret."""

    def __init__(self, message: str, key: str = "weights") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Replacement:
    """One layer swapped for a new one, as the manifest shows it."""

    layer: str  # qualified module name, e.g. "conv1", "features.0.0", "classifier.1", "fc"
    before: str  # e.g. "Conv2d(3 -> 32, 3x3, stride 2)"
    after: str
    init: str  # how the new layer was initialised, e.g. "sum of the pretrained filters over the 3 input channels"


@dataclass(frozen=True)
class TorchvisionBuild:
    """The built network (in eval mode) and what the manifest records about how it was made."""

    model: torch.nn.Module
    name: str
    weights_path: str | None
    weights_sha256: str | None  # of the file's bytes: the very bytes the tensors were read from
    loaded_tensors: int  # tensors loaded from the file
    replaced: tuple[Replacement, ...]


def build_torchvision(
    name: str,
    *,
    classes: int,
    input_channels: int,
    weights: str | os.PathLike[str] | None = None,
    stem: str = "keep",
    head: str = "keep",
) -> TorchvisionBuild:
    """torchvision's `name` for `input_channels`-channel images and `classes` classes, with `weights`
    (a state dict file) loaded if given, its stem and head replaced as `stem` and `head` say.

    With weights, the network is built with the file's class count (so the whole file loads, head
    included) and the head is replaced afterwards if `classes` differs. New layers built without
    weights to derive them from take torch's default initialisation: the caller seeds torch.
    """
    if name not in NAMES:
        raise ValueError(f"unknown torchvision model {name!r}; one of: {', '.join(NAMES)}")
    for what, value in (("stem", stem), ("head", head)):
        if value not in CHOICES:
            raise ValueError(f"{what} = {value!r}: expected one of {', '.join(CHOICES)}")
    for what, count in (("classes", classes), ("input_channels", input_channels)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{what} must be a positive integer, not {count!r}")

    import torch

    torchvision = import_torchvision()

    # The layers' names do not depend on the class count: find them on a copy without storage (no
    # memory, no initialisation, the random generator untouched).
    with torch.device("meta"):
        skeleton = torchvision.models.get_model(name, weights=None, num_classes=classes)
    head_name, _ = _head(skeleton, name)

    state: dict[str, torch.Tensor] | None = None
    sha256 = path = None
    built_classes = classes
    if weights is not None:
        path = os.fspath(weights)
        data = _read_bytes(path)
        sha256 = hashlib.sha256(data).hexdigest()
        state = _parse_state_dict(data, path)
        head_weight = state.get(f"{head_name}.weight")
        if head_weight is not None and head_weight.dim() == 2:
            built_classes = int(head_weight.shape[0])

    model = torchvision.models.get_model(name, weights=None, num_classes=built_classes)
    if state is not None:
        _load(model, state, name, path)

    replaced: list[Replacement] = []
    stem_name, conv = _stem(model, name)
    if stem == "keep" and conv.in_channels != input_channels:
        plural = "" if input_channels == 1 else "s"
        raise TorchvisionError(
            f"the data has {input_channels} input channel{plural}; {name}'s first layer {stem_name!r} takes "
            f"{conv.in_channels}: set `stem = replace` in the model block",
            key="stem",
        )
    if stem == "replace":
        # Replacing a stem that already fits is an explicit request for a fresh one: nothing is derived.
        derive = state is not None and conv.in_channels != input_channels
        new_conv, init = _new_stem(conv, input_channels, from_weights=derive, name=name, layer=stem_name)
        _swap(model, stem_name, new_conv)
        replaced.append(Replacement(stem_name, _describe(conv), _describe(new_conv), init))

    head_name, linear = _head(model, name)
    if head == "keep" and linear.out_features != classes:
        raise TorchvisionError(
            f"the data has {classes} classes; {name}'s last layer {head_name!r} "
            f"(as in {os.path.basename(path or '')}) gives "
            f"{linear.out_features}: set `head = replace` in the model block",
            key="head",
        )
    if head == "replace":
        new_linear = torch.nn.Linear(
            linear.in_features,
            classes,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        _swap(model, head_name, new_linear)
        replaced.append(Replacement(head_name, _describe(linear), _describe(new_linear), FRESH))

    return TorchvisionBuild(
        model=model.eval(),
        name=name,
        weights_path=path,
        weights_sha256=sha256,
        loaded_tensors=0 if state is None else len(state),
        replaced=tuple(replaced),
    )


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in the file at `path`: `.safetensors` through safetensors, anything else through
    `torch.load(weights_only=True)` (plain tensors and containers only: loading runs no code from the
    file). A checkpoint that holds the state dict under "state_dict" or "model" is unwrapped, and a
    "module." prefix on every key (what `nn.DataParallel` saves) is stripped.
    """
    path = os.fspath(path)
    return _parse_state_dict(_read_bytes(path), path)


def import_torchvision() -> types.ModuleType:
    """torchvision, also where its compiled operators cannot load (a CUDA build of torchvision beside a
    CPU build of torch): torchvision's import then fails registering the operators' shape functions
    (`torchvision._meta_registrations`), which the model builders never use, so it is retried with
    that module stubbed out."""
    try:
        import torchvision
    except RuntimeError:
        sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
        import torchvision
    import torchvision.models  # noqa: F401 (the submodule `get_model` lives in)

    return torchvision


def _stem(model: nn.Module, name: str) -> tuple[str, nn.Conv2d]:
    """The first `nn.Conv2d` in module order: the layer that sees the image, for every one of `NAMES`."""
    import torch

    for qualified, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            return qualified, module
    raise AssertionError(f"{name} has no Conv2d")  # not for any of NAMES


def _head(model: nn.Module, name: str) -> tuple[str, nn.Linear]:
    """The last `nn.Linear` in module order: the classifier, for every one of `NAMES`."""
    import torch

    found = [(q, m) for q, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not found:
        raise AssertionError(f"{name} has no Linear")  # not for any of NAMES
    return found[-1]


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TorchvisionError(f"weights file {path}: cannot read it ({e.strerror or e})") from None


def _parse_state_dict(data: bytes, path: str) -> dict[str, torch.Tensor]:
    """The state dict in `data`, the bytes of the file `path` (named in every error). Parsing the bytes
    that were hashed, rather than opening the file again, makes the recorded sha256 that of the
    tensors loaded even if the file changes meanwhile."""
    import torch

    if path.endswith(".safetensors"):
        import safetensors.torch

        try:
            loaded: Any = safetensors.torch.load(data)
        except Exception as e:  # SafetensorError, and whatever a malformed header raises
            raise TorchvisionError(f"weights file {path}: not a readable safetensors file ({e})") from None
    else:
        try:
            loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # torch.load raises UnpicklingError, RuntimeError (zip), EOFError, KeyError, ...
            raise _load_error(e, path) from None

    state = loaded
    if isinstance(state, Mapping) and not _all_tensors(state):
        for wrapper in ("state_dict", "model"):  # checkpoint formats: {"epoch": ..., "state_dict": {...}, ...}
            if isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping):
        raise TorchvisionError(
            f"weights file {path}: holds a {type(loaded).__name__}, not a state dict (a dict of tensors, "
            f"as `torch.save(model.state_dict(), ...)` saves)"
        )
    bad = [key for key, value in state.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if bad:
        raise TorchvisionError(
            f"weights file {path}: not a state dict: {len(bad)} entr{'y is' if len(bad) == 1 else 'ies are'} not "
            f"a tensor under a name ({_listing([repr(b) for b in bad])})"
        )
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def _all_tensors(mapping: Mapping[Any, Any]) -> bool:
    import torch

    return all(isinstance(value, torch.Tensor) for value in mapping.values())


def _load_error(error: Exception, path: str) -> TorchvisionError:
    """What `torch.load(weights_only=True)` raising `error` on `path` means to the user: a pickle that
    refers to code (a class, a function) it would have to run, or a file that is not one torch saved."""
    text = str(error)
    reason = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0].strip()
    reason = " ".join(reason.split()) or type(error).__name__
    if "Unsupported global" in text or "allowed global" in text:
        named = re.search(r"GLOBAL (\S+)", text)
        return TorchvisionError(
            f"weights file {path}: not a plain tensor file: torch.load(weights_only=True) refused it, since "
            f"loading it would run code ({named.group(1) if named else reason}). Save the state dict alone, with "
            f"safetensors (safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')) or "
            f"torch.save(model.state_dict(), 'weights.pt')"
        )
    return TorchvisionError(
        f"weights file {path}: not a readable PyTorch weights file ({reason}); a safetensors file is read as "
        f"one when its name ends in '.safetensors'"
    )


def _load(model: nn.Module, state: dict[str, torch.Tensor], name: str, path: str) -> None:
    """Load `state` into `model` strictly, after one check that reports every key and shape that does
    not fit at once (`load_state_dict` would stop at its own, longer message). Only a missing
    BatchNorm `num_batches_tracked` is forgiven: it counts training steps, some exporters leave it
    out, and no eval-mode output depends on it; the model's own (0) is kept. The check is against this
    torchvision's layout of `name`: a checkpoint of an older layout (MNASNet below 1.0 before
    torchvision 0.9) shows as shape mismatches."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    forgiven = [key for key in missing if key.endswith(".num_batches_tracked")]
    missing = [key for key in missing if key not in forgiven]
    shapes = [
        f"{key}: file {tuple(value.shape)}, model {tuple(expected[key].shape)}"
        for key, value in state.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if missing or unexpected or shapes:
        lines = [f"weights file {path} does not fit torchvision's {name}:"]
        if missing:
            lines.append(f"  {len(missing)} missing from the file: {_listing(missing)}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected in the file: {_listing(unexpected)}")
        if shapes:
            lines.append(f"  {len(shapes)} with other shapes: {_listing(shapes, sep='; ')}")
        raise TorchvisionError("\n".join(lines))
    # The file's tensors with this torchvision's module versions (`_metadata`, which a state dict saved
    # by torch.save carries and a safetensors file cannot): a module that converts older layouts on
    # load reads them, and MNASNet refuses to load without one.
    loadable = collections.OrderedDict({**{key: expected[key] for key in forgiven}, **state})
    loadable._metadata = getattr(expected, "_metadata", collections.OrderedDict())  # type: ignore[attr-defined]
    model.load_state_dict(loadable, strict=True)


def _listing(items: list[str], sep: str = ", ") -> str:
    shown = sep.join(items[:_LISTED])
    more = len(items) - _LISTED
    return f"{shown}{sep}... and {more} more" if more > 0 else shown


def _new_stem(conv: nn.Conv2d, channels: int, *, from_weights: bool, name: str, layer: str) -> tuple[nn.Conv2d, str]:
    """A Conv2d like `conv` taking `channels` input channels, and how it was initialised.

    With loaded weights, the new filters are derived so that an image whose `channels` channels all
    hold one gray image g gives exactly the response the loaded filters give to g repeated over their
    own input channels (what feeding gray data to an RGB network usually means):
    sum_i W_i * g = sum_j W'_j * g holds for W'_j = (sum_i W_i) / channels = mean_i(W_i) * old/channels.
    For one channel that is the sum of the filters over their input channels. The activations after
    the stem are thus unchanged, so the BatchNorm statistics and every layer after it stay valid. (A
    plain mean, or keeping one colour's filter, would rescale or change them.)
    Without weights there is nothing to keep: torch's default initialisation (the caller seeds torch).
    """
    import torch

    if conv.groups != 1:  # not for any of NAMES
        raise TorchvisionError(f"{name}'s first layer {layer!r} is a grouped convolution: cannot replace it")
    new = torch.nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    if not from_weights:
        return new, FRESH
    old = conv.in_channels
    with torch.no_grad():
        summed = conv.weight.sum(dim=1, keepdim=True)
        new.weight.copy_((summed if channels == 1 else summed / channels).expand_as(new.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    if channels == 1:
        return new, f"sum of the pretrained filters over the {old} input channels"
    return new, (
        f"mean of the pretrained filters over the {old} input channels times {old}/{channels}, "
        f"in each of the {channels} channels"
    )


def _swap(model: nn.Module, qualified: str, new: nn.Module) -> None:
    """Put `new` where `qualified` was, through its parent, so that the module keeps its name (for
    named_modules, fx tracing and the manifest)."""
    parent, _, attribute = qualified.rpartition(".")
    setattr(model.get_submodule(parent), attribute, new)


def _describe(layer: nn.Module) -> str:
    """A layer as the manifest shows it: "Conv2d(3 -> 32, 3x3, stride 2)", "Linear(1280 -> 1000)"."""
    import torch

    if isinstance(layer, torch.nn.Conv2d):
        text = f"Conv2d({layer.in_channels} -> {layer.out_channels}, {_pair(layer.kernel_size)}"
        for label, value in (("stride", layer.stride), ("dilation", layer.dilation)):
            if tuple(value) != (1, 1):
                text += f", {label} {_pair(value) if value[0] != value[1] else value[0]}"
        if layer.groups != 1:
            text += f", groups {layer.groups}"
        return text + ")"
    if isinstance(layer, torch.nn.Linear):
        return f"Linear({layer.in_features} -> {layer.out_features})"
    return type(layer).__name__


def _pair(value: tuple[int, ...]) -> str:
    return "x".join(str(v) for v in value)
