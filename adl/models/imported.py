"""Networks the user brings: `model onnx(path = ...)` and `model torchvision(name = ...)`.

Each becomes a torch module every pass works on (train fine-tunes it, amc prunes it, haq
quantizes it, lower compiles it), plus the record the manifest keeps of where it came from:
the file's digest, what adl changed (a replaced first or last layer) and whether the
network arrives trained. An imported network keeps its own input contract: adl puts its
input normalisation in front only when the spec says `normalize = true`, so a library
lowered as-is computes what the imported file computes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from adl.models.zoo import Normalize


class ModelSourceError(ValueError):
    """A user's network that cannot be used as written; `key` names the setting at fault (None: the block)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class ImportedModel:
    model: nn.Module
    pretrained: bool  # it arrives with trained weights for this task: `train` may be skipped
    record: dict[str, Any]  # the manifest's `model` entry


def build_imported(
    family: str,
    options: Mapping[str, Any],
    *,
    input_shape: Sequence[int],
    classes: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> ImportedModel:
    """The user's network of `family` ("onnx" or "torchvision") for data of `input_shape`."""
    if family == "onnx":
        imported = _onnx(options, input_shape, classes)
    elif family == "torchvision":
        imported = _torchvision(options, input_shape, classes)
    else:
        raise ValueError(f"'{family}' is not an imported model family")
    if not options.get("normalize", False):
        return imported
    normalize = Normalize(mean, std, channel_dims=len(input_shape) - 1)
    return ImportedModel(nn.Sequential(normalize, imported.model).eval(), imported.pretrained, imported.record)


def _record(family: str, options: Mapping[str, Any], **details: Any) -> dict[str, Any]:
    return {
        "family": family,
        **details,
        "normalize": bool(options.get("normalize", False)),
        "input_contract": "the data's values normalised by adl ((x - mean) / std)"
        if options.get("normalize", False)
        else "the data's values as they are (the imported network's own contract)",
    }


def _onnx(options: Mapping[str, Any], input_shape: Sequence[int], classes: int) -> ImportedModel:
    from adl.models.onnx_import import OnnxImportError, check_input_shape, import_onnx

    path = Path(options["path"])
    try:
        imported = import_onnx(path)
    except OnnxImportError as err:
        raise ModelSourceError(str(err), "path") from None
    mismatch = check_input_shape(imported, tuple(input_shape))
    if mismatch is not None:
        raise ModelSourceError(mismatch, "path")
    outputs = _output_width(imported.module, input_shape)
    if outputs != classes:
        raise ModelSourceError(
            f"{path.name} gives {outputs} outputs per sample ('{imported.output_name}'); "
            f"the task has {classes} classes",
            "path",
        )
    record = _record(
        "onnx",
        options,
        file=path.name,
        external_data=list(imported.external_files),
        sha256=imported.sha256,
        opset=imported.opset,
        producer=imported.producer,
        input=imported.input_name,
        output=imported.output_name,
        operators=dict(sorted(imported.operators.items())),
        replaced=[],
    )
    return ImportedModel(imported.module, pretrained=True, record=record)


def _output_width(module: nn.Module, input_shape: Sequence[int]) -> int | str:
    with torch.no_grad():
        out = module(torch.zeros((1, *input_shape)))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        return f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
    return int(out.shape[1])


def _torchvision(options: Mapping[str, Any], input_shape: Sequence[int], classes: int) -> ImportedModel:
    from adl.models.torchvision_import import TorchvisionError, build_torchvision

    name = options["name"]
    if len(input_shape) != 3:
        raise ModelSourceError(
            f"torchvision's {name} needs image inputs (C, H, W); this data has shape {tuple(input_shape)}", "name"
        )
    weights = options.get("weights") or None
    try:
        built = build_torchvision(
            name,
            classes=classes,
            input_channels=int(input_shape[0]),
            weights=weights,
            stem=options.get("stem", "keep"),
            head=options.get("head", "keep"),
        )
    except TorchvisionError as err:
        raise ModelSourceError(str(err), err.key if weights or err.key != "weights" else "name") from None
    fresh = [r for r in built.replaced if r.init.startswith("fresh")]
    record = _record(
        "torchvision",
        options,
        name=name,
        weights=Path(weights).name if weights else None,
        sha256=built.weights_sha256,
        loaded_tensors=built.loaded_tensors,
        replaced=[asdict(r) for r in built.replaced],
    )
    return ImportedModel(built.model, pretrained=weights is not None and not fresh, record=record)
