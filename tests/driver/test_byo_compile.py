"""Networks users bring, compiled from a spec: `model onnx(...)` (the file's network through every
pass, its library against ONNX Runtime on the same file) and `model torchvision(...)`."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import adl  # noqa: E402
from adl.dsl.errors import AdlError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXPORT = ROOT / "examples" / "onnx" / "export.py"

# An ONNX graph and a library built from it compute the same float32 function with different
# kernels (summation orders, fused multiply-adds, folded BatchNorm): on logits of order 1-10 the
# differences are a few float32 ulps per accumulation, far below 1e-4 for networks this size.
TOLERANCE = 1e-4


def _spec(model: str, pipeline: str, data: str = "data digits { split = 0.8  seed = 0 }") -> str:
    return f"spec byo\ntask classify {{ classes = 10 }}\n{data}\n{model}\npipeline {{\n{pipeline}\n}}\n"


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory) -> Path:
    """examples/onnx's network, exported by the example's own script."""
    out = tmp_path_factory.mktemp("onnx") / "net.onnx"
    subprocess.run([sys.executable, str(EXPORT), "--out", str(out)], check=True, capture_output=True, timeout=300)
    return out


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.adl"
    path.write_text(text)
    return path


def _compile_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(AdlError) as info:
        adl.compile(_write(tmp_path, text), out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    return str(info.value)


@pytest.mark.slow
def test_an_onnx_network_lowered_as_is_computes_what_onnx_runtime_computes(tmp_path, digits_onnx):
    spec = _spec(f'model onnx(path = "{digits_onnx}")', "lower")
    artifact = adl.compile(_write(tmp_path, spec), out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    x = np.random.default_rng(0).uniform(0, 16, size=(16, 1, 8, 8)).astype(np.float32)  # raw digits pixels
    session = ort.InferenceSession(str(digits_onnx), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(artifact.run(x), expected, atol=TOLERANCE, rtol=0)
    manifest = artifact.manifest
    assert manifest["model"]["family"] == "onnx"
    assert manifest["model"]["sha256"] == hashlib.sha256(digits_onnx.read_bytes()).hexdigest()
    assert manifest["model"]["normalize"] is False
    assert "imported network's input" in manifest["input"]["preprocessing"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Model" in report and manifest["model"]["sha256"] in report


@pytest.mark.slow
def test_an_onnx_network_compiles_through_train_amc_haq_and_lower(tmp_path, digits_onnx):
    pipeline = """  train { epochs = 6 }
  amc   { flops = 60 %  episodes = 6  warmup = 2  finetune = 1 }
  haq   { bits = 4..8  budget = size  fraction = 0.7  episodes = 6  warmup = 2  finetune = 1 }
  lower"""
    text = _spec(f'model onnx(path = "{digits_onnx}")', pipeline).replace(
        "pipeline", "constraints { accuracy >= 80 % }\npipeline"
    )
    artifact = adl.compile(_write(tmp_path, text), out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    manifest = artifact.manifest
    assert [p["name"] for p in manifest["passes"]] == ["train", "amc", "haq", "lower"]
    assert manifest["all_budgets_hold"], manifest["budgets"]
    metrics = manifest["metrics"]
    assert metrics["amc"]["budget_met"] and metrics["amc"]["kept"]["flops"] <= 0.6
    assert metrics["haq"]["bits"]
    # the library that ships is the one measured: its accuracy on the test split, recomputed here
    from adl.data import load_dataset

    data = load_dataset("digits", split=0.8, seed=0, classes=10)
    assert np.mean(artifact.predict(data.x_test) == data.y_test) == pytest.approx(metrics["accuracy"])


def test_a_damaged_onnx_file_is_a_caret_at_the_path(tmp_path, digits_onnx):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(digits_onnx.read_bytes()[: len(digits_onnx.read_bytes()) // 2])
    message = _compile_error(tmp_path, _spec('model onnx(path = "broken.onnx")', "lower"))
    assert "spec.adl:4:" in message and "error:" in message
    assert "not a readable ONNX model" in message
    assert '"broken.onnx"' in message and "^" in message


def test_an_input_shape_mismatch_names_both_shapes(tmp_path, digits_onnx):
    text = _spec(f'model onnx(path = "{digits_onnx}")', "lower", data="data fashion_mnist { seed = 0 }")
    path = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    if not path.exists():
        pytest.skip("Fashion-MNIST is not installed (make fashion-mnist)")
    message = _compile_error(tmp_path, text)
    assert "(N, 1, 8, 8)" in message and "(N, 1, 28, 28)" in message


def test_unsupported_operators_are_listed_in_one_caret_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="upsample", mode="nearest"),
        helper.make_node("Erf", ["r"], ["e"], name="gelu_erf"),
        helper.make_node("Flatten", ["e"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1),
    ]
    inits = [
        helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 1, 1]),
        helper.make_tensor("w", TensorProto.FLOAT, [10, 64], np.zeros(640, np.float32)),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "odd.onnx")
    message = _compile_error(tmp_path, _spec('model onnx(path = "odd.onnx")', "lower"))
    assert "Resize (node 'upsample')" in message and "Erf (node 'gelu_erf')" in message


@pytest.mark.slow
def test_a_torchvision_network_with_weights_trains_and_lowers(tmp_path):
    torch = pytest.importorskip("torch")
    from adl.models.torchvision_import import import_torchvision

    torchvision = import_torchvision()
    torch.manual_seed(0)
    source = torchvision.models.get_model("mobilenet_v2", weights=None, num_classes=1000)
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    text = _spec(
        'model torchvision(name = mobilenet_v2, weights = "w.safetensors", stem = replace, head = replace, '
        "normalize = true)",
        "train { epochs = 4 }\nlower",
    )
    artifact = adl.compile(_write(tmp_path, text), out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    record = artifact.manifest["model"]
    assert record["family"] == "torchvision" and record["name"] == "mobilenet_v2"
    assert record["sha256"] == hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()
    assert [r["layer"] for r in record["replaced"]] == ["features.0.0", "classifier.1"]
    assert record["replaced"][0]["init"].startswith("sum")  # from the file's RGB filters, not fresh
    assert artifact.manifest["metrics"]["accuracy"] > 0.5  # chance is 0.1: fine-tuning happened


def test_a_torchvision_head_that_does_not_fit_is_an_error_naming_head(tmp_path):
    torch = pytest.importorskip("torch")
    from adl.models.torchvision_import import import_torchvision

    torchvision = import_torchvision()
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=1000).state_dict(), tmp_path / "w.pt")
    message = _compile_error(
        tmp_path, _spec('model torchvision(name = resnet18, weights = "w.pt", stem = replace)', "lower")
    )
    assert "set `head = replace`" in message and "'fc'" in message
