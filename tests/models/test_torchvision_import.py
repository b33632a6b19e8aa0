"""`adl.models.torchvision_import`: torchvision networks with the user's weights, their stem and head
replaced to fit the data, and every user mistake a `TorchvisionError` that names the file, the
layer and the shapes. Inputs are 32x32 and batches of 2, so that the eleven networks run in seconds."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from adl.models.torchvision_import import (
    FRESH,
    NAMES,
    Replacement,
    TorchvisionError,
    build_torchvision,
    load_state_dict_file,
)

try:
    from adl.models.torchvision_import import import_torchvision

    import_torchvision()
except ImportError:
    pytest.skip("torchvision is not installed", allow_module_level=True)

# The stem (first Conv2d) and head (last Linear) of every network, as the manifest names them.
STEMS = {
    "mobilenet_v2": "features.0.0",
    "mobilenet_v3_small": "features.0.0",
    "mobilenet_v3_large": "features.0.0",
    "resnet18": "conv1",
    "resnet34": "conv1",
    "resnet50": "conv1",
    "mnasnet0_5": "layers.0",
    "mnasnet1_0": "layers.0",
    "efficientnet_b0": "features.0.0",
    "shufflenet_v2_x0_5": "conv1.0",
    "shufflenet_v2_x1_0": "conv1.0",
}
HEADS = {
    "mobilenet_v2": "classifier.1",
    "mobilenet_v3_small": "classifier.3",
    "mobilenet_v3_large": "classifier.3",
    "resnet18": "fc",
    "resnet34": "fc",
    "resnet50": "fc",
    "mnasnet0_5": "classifier.1",
    "mnasnet1_0": "classifier.1",
    "efficientnet_b0": "classifier.1",
    "shufflenet_v2_x0_5": "fc",
    "shufflenet_v2_x1_0": "fc",
}
SMALL = "shufflenet_v2_x0_5"  # 0.35 M parameters: the file format tests use it


def _random_statistics(model: torch.nn.Module) -> None:
    """BatchNorm running statistics away from their defaults (0, 1), so that a file whose buffers
    failed to load would give other outputs."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)


def _saved(tmp_path: Path, name: str, *, classes: int = 10, seed: int = 0, file: str = "w.pt"):
    """A randomly initialised `name` (3 channels, `classes` classes) and its state dict saved to
    `tmp_path / file` (safetensors if the name says so)."""
    torch.manual_seed(seed)
    model = build_torchvision(name, classes=classes, input_channels=3).model
    _random_statistics(model)
    path = tmp_path / file
    if file.endswith(".safetensors"):
        safetensors_torch.save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return model, path


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_names_are_readable_without_torch():
    """The spec checker reads NAMES: importing the module must not load torch (adl check stays fast)."""
    code = "import sys, adl.models.torchvision_import as t; assert t.NAMES; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", NAMES)
def test_every_network_takes_gray_images_the_stem_sees_the_image_and_the_head_gives_the_output(name):
    torch.manual_seed(0)
    built = build_torchvision(name, classes=10, input_channels=1, stem="replace", head="replace")
    model = built.model
    assert not model.training
    stem, head = built.replaced
    assert (stem.layer, head.layer) == (STEMS[name], HEADS[name])
    assert stem.before.startswith("Conv2d(3 -> ") and stem.after.startswith("Conv2d(1 -> ")
    assert head.before.endswith(" -> 10)") and head.after.endswith(" -> 10)")
    assert stem.init == head.init == FRESH  # no weights to derive anything from
    assert model.get_submodule(stem.layer).in_channels == 1
    assert model.get_submodule(head.layer).out_features == 10

    # The stem found is the layer the image goes into, the head the layer whose output is the model's.
    seen = {}

    def recorder(key, what):
        def hook(module, inputs, output):  # returns None: a hook that returns a value replaces the output
            seen[key] = inputs[0] if what == "input" else output

        return hook

    hooks = [
        model.get_submodule(stem.layer).register_forward_hook(recorder("stem", "input")),
        model.get_submodule(head.layer).register_forward_hook(recorder("head", "output")),
    ]
    x = torch.rand(2, 1, 32, 32)
    y = _run(model, x)
    for hook in hooks:
        hook.remove()
    assert y.shape == (2, 10)
    assert seen["stem"] is x
    assert torch.equal(seen["head"], y)


@pytest.mark.parametrize("file", ["w.pt", "w.safetensors"])
def test_weights_round_trip_through_either_format(tmp_path, file):
    model, path = _saved(tmp_path, SMALL, file=file)
    torch.manual_seed(1)  # another initialisation: only the file can make the outputs equal
    built = build_torchvision(SMALL, classes=10, input_channels=3, weights=path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(_run(built.model, x), _run(model.eval(), x))  # same weights, same kernels: bit for bit
    assert built.weights_path == str(path)
    assert built.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert built.loaded_tensors == len(model.state_dict())
    assert built.replaced == ()


def test_checkpoint_wrappers_and_a_data_parallel_prefix_load(tmp_path):
    model, _ = _saved(tmp_path, SMALL)
    state = model.state_dict()
    prefixed = {f"module.{key}": value for key, value in state.items()}
    for i, saved in enumerate([{"state_dict": state, "epoch": 3}, {"model": prefixed, "optimizer": {}}, prefixed]):
        path = tmp_path / f"checkpoint{i}.pth"
        torch.save(saved, path)
        loaded = load_state_dict_file(path)
        assert list(loaded) == list(state)
        assert all(torch.equal(loaded[key], state[key]) for key in state)
        built = build_torchvision(SMALL, classes=10, input_channels=3, weights=path)
        assert built.loaded_tensors == len(state)


def test_keys_and_shapes_that_do_not_fit_are_listed_in_one_error(tmp_path):
    model, _ = _saved(tmp_path, SMALL)
    state = dict(model.state_dict())
    del state["conv1.0.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["conv5.0.weight"] = torch.zeros(7, 192, 1, 1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(TorchvisionError) as caught:
        build_torchvision(SMALL, classes=10, input_channels=3, weights=path)
    message = str(caught.value)
    assert str(path) in message
    assert "1 missing from the file: conv1.0.weight" in message
    assert "1 unexpected in the file: extra.weight" in message
    assert "1 with other shapes: conv5.0.weight: file (7, 192, 1, 1), model (1024, 192, 1, 1)" in message

    # Many: the first five of each, then a count.
    path = tmp_path / "half.pt"
    torch.save({key: value for i, (key, value) in enumerate(model.state_dict().items()) if i % 2}, path)
    with pytest.raises(TorchvisionError, match=r"169 missing from the file: conv1\.0\.weight, .* and 164 more"):
        build_torchvision(SMALL, classes=10, input_channels=3, weights=path)


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, planted):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"conv1.0.weight": planted(marker)}, path)
    with pytest.raises(TorchvisionError) as caught:
        build_torchvision(SMALL, classes=10, input_channels=3, weights=path)
    message = str(caught.value)
    assert str(path) in message and "not a plain tensor file" in message
    assert "weights_only" in message and "safetensors" in message
    assert not marker.exists()


@pytest.mark.parametrize("file", ["garbage.pt", "garbage.safetensors", "missing.pt"])
def test_an_unreadable_file_is_named(tmp_path, file):
    path = tmp_path / file
    if not file.startswith("missing"):
        path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(TorchvisionError, match="weights file " + str(path).replace("\\", "\\\\")):
        load_state_dict_file(path)


@pytest.mark.parametrize("name,channels", [("resnet18", 1), ("mobilenet_v2", 1), ("mnasnet0_5", 2)])
def test_a_replaced_stem_sees_a_gray_image_as_the_loaded_one_sees_it_in_colour(tmp_path, name, channels):
    model, path = _saved(tmp_path, name)
    built = build_torchvision(name, classes=10, input_channels=channels, weights=path, stem="replace")
    gray = torch.rand(2, 1, 32, 32)
    expected = _run(model.eval(), gray.expand(2, 3, 32, 32))
    got = _run(built.model, gray.expand(2, channels, 32, 32))
    # Equal in exact arithmetic; in float32 the stem adds its input channels in another order (and the
    # kernels block 1, 2 and 3 channels differently), rounding at u = 6e-8 relative to the terms, and
    # every later layer carries that on with its own sqrt(n) * u. Measured: at most 1e-6 of the output's
    # scale on these networks; 1e-4 leaves room for CPUs whose kernels round differently.
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-4 * scale
    (stem,) = built.replaced
    assert stem.layer == STEMS[name]
    assert stem.init.startswith("sum of" if channels == 1 else "mean of")


def test_resnet18_with_imagenet_shaped_weights_on_gray_ten_class_data(tmp_path):
    model, path = _saved(tmp_path, "resnet18", classes=1000)
    state = model.state_dict()
    torch.manual_seed(2)
    built = build_torchvision("resnet18", classes=10, input_channels=1, weights=path, stem="replace", head="replace")
    assert built.replaced == (
        Replacement(
            "conv1",
            "Conv2d(3 -> 64, 7x7, stride 2)",
            "Conv2d(1 -> 64, 7x7, stride 2)",
            "sum of the pretrained filters over the 3 input channels",
        ),
        Replacement("fc", "Linear(512 -> 1000)", "Linear(512 -> 10)", FRESH),
    )
    assert built.loaded_tensors == len(state)
    assert _run(built.model, torch.rand(2, 1, 32, 32)).shape == (2, 10)
    now = built.model.state_dict()
    assert set(now) == set(state)
    for key, value in state.items():
        if key == "conv1.weight":
            assert torch.equal(now[key], value.sum(dim=1, keepdim=True))
        elif key.startswith("fc."):
            assert now[key].shape[0] == 10
        else:
            assert torch.equal(now[key], value), key

    # The fresh head comes from the caller's seed.
    torch.manual_seed(2)
    again = build_torchvision("resnet18", classes=10, input_channels=1, weights=path, stem="replace", head="replace")
    assert torch.equal(again.model.fc.weight, built.model.fc.weight)

    with pytest.raises(TorchvisionError) as caught:
        build_torchvision("resnet18", classes=10, input_channels=3, weights=path)
    message = str(caught.value)
    assert "'fc'" in message and "10 classes" in message and "1000" in message and "`head = replace`" in message

    with pytest.raises(TorchvisionError) as caught:
        build_torchvision("resnet18", classes=1000, input_channels=1, weights=path)
    assert str(caught.value) == (
        "the data has 1 input channel; resnet18's first layer 'conv1' takes 3: set `stem = replace` in the model block"
    )


def test_replacing_layers_that_already_fit_builds_them_anew(tmp_path):
    model, path = _saved(tmp_path, SMALL)
    built = build_torchvision(SMALL, classes=10, input_channels=3, weights=path, stem="replace", head="replace")
    stem, head = built.replaced
    assert stem == Replacement("conv1.0", "Conv2d(3 -> 24, 3x3, stride 2)", "Conv2d(3 -> 24, 3x3, stride 2)", FRESH)
    assert head == Replacement("fc", "Linear(1024 -> 10)", "Linear(1024 -> 10)", FRESH)
    assert not torch.equal(built.model.conv1[0].weight, model.conv1[0].weight)
    assert not torch.equal(built.model.fc.weight, model.fc.weight)
    assert torch.equal(built.model.conv5[0].weight, model.conv5[0].weight)


def test_unknown_names_and_choices_are_refused():
    with pytest.raises(ValueError, match="resnet18, resnet34"):
        build_torchvision("vgg11", classes=10, input_channels=3)
    with pytest.raises(ValueError, match="stem = 'swap'"):
        build_torchvision(SMALL, classes=10, input_channels=3, stem="swap")
    with pytest.raises(ValueError, match="head = 'new'"):
        build_torchvision(SMALL, classes=10, input_channels=3, head="new")
