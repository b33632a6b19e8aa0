"""`adl.models.onnx_import`: ONNX files (torch's exporters and hand-built graphs) as torch.fx networks
of standard modules, compared with onnxruntime; the errors for files adl cannot import."""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from adl.models.onnx_import import ImportedOnnx, OnnxImportError, check_input_shape, import_onnx
from adl.models.zoo import build_model

TOLERANCE = 1e-4


# -- exporting torch models ------------------------------------------------------------------------


def _legacy_available() -> bool:
    import inspect

    return "dynamo" in inspect.signature(torch.onnx.export).parameters


EXPORTERS = [
    pytest.param(
        "dynamo",
        marks=pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="needs onnxscript"),
    ),
    pytest.param("legacy", marks=pytest.mark.skipif(not _legacy_available(), reason="no legacy exporter")),
]


def _export(model: nn.Module, sample_shape: tuple[int, ...], path: Path, exporter: str, **options) -> Path:
    """`model` (eval mode) exported: dynamo with batch 1 fixed, legacy with a symbolic batch."""
    model.eval()
    example = (torch.randn(1, *sample_shape),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, example, str(path), dynamo=True, input_names=["x"], verbose=False, **options)
        else:
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=False,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
                **options,
            )
    return path


def _compare(path: Path, imported: ImportedOnnx | None = None, batches=(1, 5)) -> ImportedOnnx:
    """The converted module agrees with onnxruntime at each batch size (one sample at a time where
    the file's batch is fixed at 1)."""
    imported = imported or import_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fixed_batch = isinstance(session.get_inputs()[0].shape[0], int)
    gen = np.random.default_rng(0)
    for batch in batches:
        x = gen.standard_normal((batch, *imported.input_shape)).astype(np.float32)
        if fixed_batch:
            expected = np.concatenate([session.run(None, {imported.input_name: x[i : i + 1]})[0] for i in range(batch)])
        else:
            expected = session.run(None, {imported.input_name: x})[0]
        with torch.no_grad():
            got = imported.module(torch.from_numpy(x)).numpy()
        assert got.shape == expected.shape, (path.name, batch)
        assert np.abs(got - expected).max() <= TOLERANCE, (path.name, batch, np.abs(got - expected).max())
    return imported


def _randomise_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


class CatNet(nn.Module):
    """Two branches concatenated along the channels, then a 1x1 conv and a global pool."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Sigmoid())
        self.mix = nn.Conv2d(10, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mix(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class SqueezeExcite(nn.Module):
    """x * sigmoid(conv(pool(x))), then a spatial mean (ReduceMean) and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.squeeze = nn.Conv2d(8, 2, 1)
        self.excite = nn.Conv2d(2, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean((2, 3), keepdim=True)))))
        return self.head((x * gate).mean((2, 3)))


class ViewNet(nn.Module):
    """The legacy `x.view(x.size(0), -1)` flatten (Shape -> Gather -> Unsqueeze -> Concat -> Reshape)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(x)))
        return self.fc(x.view(x.size(0), -1))


class MatMulNet(nn.Module):
    """BatchNorm that cannot fold (after ReLU), `x @ w + b` (MatMul, Add), BatchNorm1d, pooling
    variants, hard activations and softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
        self.w = nn.Parameter(torch.randn(8, 6) * 0.3)
        self.b = nn.Parameter(torch.randn(6))
        self.bn1 = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.bn(torch.relu(self.conv(x))))
        x = nn.functional.hardsigmoid(x) * nn.functional.hardswish(x) + nn.functional.leaky_relu(x, 0.1)
        x = torch.tanh(x).mean((2, 3))
        return torch.softmax(self.bn1(torch.relu(x @ self.w + self.b)), -1)


def _zoo(family: str, options: dict, shape: tuple[int, ...]) -> nn.Module:
    channels = shape[0]
    return build_model(family, options, input_shape=shape, classes=10, mean=[0.5] * channels, std=[0.25] * channels)


MODELS = {
    "cnn": (lambda: _zoo("cnn", {}, (1, 28, 28)), (1, 28, 28)),
    "mobilenet": (lambda: _zoo("mobilenet", {}, (3, 16, 16)), (3, 16, 16)),
    "resnet": (lambda: _zoo("resnet", {"blocks": (1, 1), "widths": (8, 16)}, (3, 16, 16)), (3, 16, 16)),
    "mlp": (lambda: build_model("mlp", {}, input_shape=(64,), classes=10, mean=[0.5], std=[0.25]), (64,)),
    "cat": (CatNet, (3, 12, 12)),
    "squeeze_excite": (SqueezeExcite, (3, 10, 10)),
    "view": (ViewNet, (1, 28, 28)),
    "matmul_bn": (MatMulNet, (3, 16, 16)),
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_exported_models_match_onnxruntime(tmp_path, name, exporter):
    torch.manual_seed(0)
    make, shape = MODELS[name]
    model = _randomise_bn(make())
    path = _export(model, shape, tmp_path / f"{name}.onnx", exporter)
    imported = _compare(path)
    assert imported.input_shape == shape
    assert not imported.module.training
    params = list(imported.module.parameters())
    assert params and all(p.requires_grad for p in params)
    standard = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh)
    standard += (nn.Hardsigmoid, nn.Hardswish, nn.LeakyReLU, nn.Softmax, nn.MaxPool2d, nn.AvgPool2d)
    standard += (nn.AdaptiveAvgPool2d, nn.Flatten)
    for child_name, child in imported.module.named_children():
        assert isinstance(child, standard), (child_name, type(child))
    if exporter == "legacy" and name == "view":  # the Shape -> ... -> Reshape chain became a flatten
        assert imported.operators["Shape"] == 1
        assert any(n.target is torch.flatten for n in imported.module.graph.nodes)


@pytest.mark.skipif(not _legacy_available(), reason="no legacy exporter")
@pytest.mark.parametrize("opset", [9, 11])
def test_older_opsets(tmp_path, opset):
    """Clip's bounds as attributes (opset < 11) or inputs; Unsqueeze's axes as an attribute."""
    torch.manual_seed(0)
    for name in ("mobilenet", "view"):
        make, shape = MODELS[name]
        path = _export(_randomise_bn(make()), shape, tmp_path / f"{name}.onnx", "legacy", opset_version=opset)
        imported = _compare(path)
        assert imported.opset == opset
    assert any(isinstance(m, nn.ReLU6) for m in import_onnx(tmp_path / "mobilenet.onnx").module.modules())


@pytest.mark.skipif(not _legacy_available(), reason="no legacy exporter")
def test_metadata_names_and_hash(tmp_path):
    torch.manual_seed(0)
    path = _export(_zoo("cnn", {}, (1, 28, 28)), (1, 28, 28), tmp_path / "net.onnx", "legacy")
    imported = import_onnx(path)
    assert imported.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (imported.input_name, imported.output_name, imported.input_shape) == ("x", "y", (1, 28, 28))
    assert imported.opset == onnx.load(str(path)).opset_import[0].version
    assert imported.producer.startswith("pytorch ")
    assert imported.operators["Conv"] == 2 and imported.operators["Gemm"] == 2
    names = [name for name, _ in imported.module.named_children()]
    assert "1_0_0_conv" in names and "1_2_0_conv" in names, names  # '/1/1.0/1.0.0/Conv' -> the torch path
    assert len(set(names)) == len(names)


@pytest.mark.skipif(not _legacy_available(), reason="no legacy exporter")
def test_imported_network_trains(tmp_path):
    torch.manual_seed(0)
    path = _export(_zoo("cnn", {}, (1, 28, 28)), (1, 28, 28), tmp_path / "net.onnx", "legacy")
    module = import_onnx(path).module
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(module(x), y)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert all(p.grad is not None for p in module.parameters())
    assert losses[-1] < losses[0]


# -- hand-built graphs (opset differences, operators torch does not emit) --------------------------


def _init(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def _save(
    tmp_path: Path, nodes, initializers, opset: int, shape=("N", 3, 8, 8), inputs=None, name="g", out=("N", "K")
) -> Path:
    graph = helper.make_graph(
        nodes,
        name,
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out))],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="handmade")
    model.ir_version = 8
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def test_handmade_graph_opset_11(tmp_path):
    """Dilated depthwise and grouped convs, Clip with bound inputs, attribute axes (ReduceMean,
    Squeeze, Unsqueeze), Gemm with alpha/beta and transB=0, a generic HardSigmoid, opset-11 Softmax."""
    rng = np.random.default_rng(1)
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w_dw"], ["a"], name="/dw/Conv", group=3, dilations=[2, 2], pads=[2, 2, 2, 2]),
        n("Clip", ["a", "lo", "hi"], ["b"], name="/clip/Clip"),
        n("Conv", ["b", "w_g", "b_g"], ["c"], name="/grouped/Conv", group=3),
        n("LeakyRelu", ["c"], ["d"], name="/act/LeakyRelu", alpha=0.2),
        n("AveragePool", ["d"], ["e"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
        n("HardSigmoid", ["e"], ["f"], alpha=0.3, beta=0.4),
        n("Elu", ["f"], ["g"], alpha=0.7),
        n("ReduceMean", ["g"], ["h"], axes=[2, 3], keepdims=1),
        n("Squeeze", ["h"], ["i"], axes=[2, 3]),
        n("Gemm", ["i", "gemm_b", "gemm_c"], ["j"], alpha=0.5, beta=2.0),
        n("Unsqueeze", ["j"], ["k"], axes=[2]),
        n("Softmax", ["k"], ["l"], axis=1),
        n("Reshape", ["l", "shape"], ["y"]),
    ]
    inits = [
        _init("w_dw", rng.standard_normal((3, 1, 3, 3))),
        _init("lo", -1.0),
        _init("hi", 1.0),
        _init("w_g", rng.standard_normal((6, 1, 1, 1))),
        _init("b_g", rng.standard_normal(6)),
        _init("gemm_b", rng.standard_normal((6, 4))),
        _init("gemm_c", rng.standard_normal(4)),
        _ints("shape", [0, -1]),
    ]
    imported = _compare(_save(tmp_path, nodes, inits, 11))
    modules = dict(imported.module.named_children())
    assert modules["dw_conv"].groups == 3 and modules["dw_conv"].dilation == (2, 2)
    assert isinstance(modules["clip_clip"], nn.Hardtanh)
    assert modules["grouped_conv"].groups == 3 and modules["grouped_conv"].out_channels == 6


def test_handmade_graph_opset_17(tmp_path):
    """Axes as inputs, constants on either side of Sub/Div (buffers with their ONNX shape),
    MatMul + Add fused into one Linear, BatchNorm1d, Concat at a negative axis, a one-sided Clip,
    a dilated ceil-mode MaxPool, GlobalMaxPool, SAME padding."""
    rng = np.random.default_rng(2)
    n = helper.make_node
    nodes = [
        n("Sub", ["mean", "x"], ["a"], name="/norm/Sub"),
        n("Div", ["a", "std"], ["b"], name="/norm/Div"),
        n("Conv", ["b", "w"], ["c"], name="/conv/Conv", auto_pad="SAME_UPPER"),
        n("Clip", ["c", "lo"], ["d"], name="/clip/Clip"),
        n("MaxPool", ["d"], ["e"], kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2], ceil_mode=1),
        n("Tanh", ["e"], ["f"]),
        n("Concat", ["e", "f"], ["g"], axis=-3),
        n("GlobalMaxPool", ["g"], ["h"]),
        n("Squeeze", ["h", "axes23"], ["i"]),
        n("MatMul", ["i", "mm_w"], ["j"], name="/fc/MatMul"),
        n("Add", ["j", "mm_b"], ["k"], name="/fc/Add"),
        n("BatchNormalization", ["k", "s", "bias", "rm", "rv"], ["l"], epsilon=1e-3, momentum=0.8),
        n("Unsqueeze", ["l", "axes23"], ["m"]),
        n("Sigmoid", ["m"], ["o"]),
        n("ReduceMean", ["o"], ["y"], axes=[2, 3], keepdims=0),
    ]
    inits = [
        _init("mean", rng.standard_normal((3, 1, 1))),
        _init("std", rng.random((3, 1, 1)) + 0.5),
        _init("w", rng.standard_normal((5, 3, 3, 3))),
        _init("lo", 0.1),
        _ints("axes23", [2, 3]),
        _init("mm_w", rng.standard_normal((10, 7))),
        _init("mm_b", rng.standard_normal(7)),
        _init("s", rng.random(7) + 0.5),
        _init("bias", rng.standard_normal(7)),
        _init("rm", rng.standard_normal(7)),
        _init("rv", rng.random(7) + 0.5),
    ]
    imported = _compare(_save(tmp_path, nodes, inits, 17))
    gm = imported.module
    linears = [m for m in gm.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and linears[0].bias is not None  # the Add became the Linear's bias
    bn = next(m for m in gm.modules() if isinstance(m, nn.BatchNorm1d))
    assert bn.eps == pytest.approx(1e-3) and bn.momentum == pytest.approx(0.2)
    constants = {n.target: tuple(getattr(gm, n.target).shape) for n in gm.graph.nodes if n.op == "get_attr"}
    assert sorted(constants.values()) == [(3, 1, 1), (3, 1, 1)]
    assert "mean" in constants and "std" in constants


# -- files adl refuses -----------------------------------------------------------------------------


@pytest.mark.skipif(not _legacy_available(), reason="no legacy exporter")
def test_damaged_files(tmp_path):
    good = _export(_zoo("mlp", {}, (64,)), (64,), tmp_path / "good.onnx", "legacy").read_bytes()
    gen = np.random.default_rng(0)
    for name, data in [
        ("truncated", good[: len(good) // 2]),
        ("random", gen.integers(0, 256, 4000, dtype=np.uint8).tobytes()),
        ("empty", b""),
        ("text", b"model onnx(path = 'net.onnx')\n"),
    ]:
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(data)
        with pytest.raises(OnnxImportError, match="not a readable ONNX model: .+"):
            import_onnx(path)
    with pytest.raises(OnnxImportError, match="not a readable ONNX model"):
        import_onnx(tmp_path / "missing.onnx")


def test_all_unsupported_operators_in_one_error(tmp_path):
    n = helper.make_node
    nodes = [
        n("Resize", ["x", "", "scales"], ["a"], name="/up/Resize", mode="nearest"),
        n("Conv", ["a", "w"], ["b"], name="/conv/Conv"),
        n("Reshape", ["b", "seq_shape"], ["c"], name="/to_seq/Reshape"),
        n("LSTM", ["c", "lw", "lr"], ["y"], name="lstm_1", hidden_size=4),
    ]
    inits = [
        _init("scales", [1, 1, 2, 2]),
        _init("w", np.ones((2, 3, 1, 1))),
        _ints("seq_shape", [-1, 1, 2]),
        _init("lw", np.ones((1, 16, 2))),
        _init("lr", np.ones((1, 16, 4))),
    ]
    path = _save(tmp_path, nodes, inits, 13, name="rnn", out=("S", 1, 1, 4))
    with pytest.raises(OnnxImportError) as info:
        import_onnx(path)
    message = str(info.value)
    assert "unsupported ONNX operators: Resize (node '/up/Resize'), LSTM (node 'lstm_1')" in message
    assert "adl imports: " in message and "Conv" in message
    assert "Reshape" not in message.split("adl imports")[0]  # follows an unsupported node: not blamed


def test_unsupported_attributes_named_with_their_nodes(tmp_path):
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["a"], name="conv_asym", pads=[0, 0, 1, 1]),
        n("Conv", ["x", "w"], ["b"], name="conv_same", auto_pad="SAME_LOWER", strides=[2, 2]),
        n("Cast", ["x"], ["c"], name="to_int", to=TensorProto.INT64),
        n("QLinearConv", ["x", "s", "z", "w", "s", "z", "s", "z"], ["d"], name="qconv"),
        n("Transpose", ["x"], ["e"], name="to_nhwc", perm=[0, 2, 3, 1]),
        n("Add", ["a", "b"], ["y"]),
    ]
    inits = [_init("w", np.ones((2, 3, 3, 3))), _init("s", 1.0), _ints("z", 0)]
    path = _save(tmp_path, nodes, inits, 13, shape=("N", 3, 8, 8), name="attrs", out=("N", 2, "H", "W"))
    with pytest.raises(OnnxImportError) as info:
        import_onnx(path)
    message = str(info.value)
    assert "unsupported ONNX operators: QLinearConv (node 'qconv'), Transpose (node 'to_nhwc'); " in message
    assert "Conv (node 'conv_asym'): asymmetric pads [0, 0, 1, 1]" in message
    assert "Conv (node 'conv_same'): auto_pad=SAME_LOWER" in message
    assert "Cast (node 'to_int'): casts a tensor to int64" in message


@pytest.mark.parametrize(
    "inputs, expected",
    [
        (
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 4]),
            ],
            r"has 2 inputs \('x', 'x2'\)",
        ),
        ([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4])], r"shape \(\?, 4, 4\) \(rank 3\)"),
        ([helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])], "of type int64"),
        ([helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4])], "fixed batch of 8"),
    ],
)
def test_inputs_adl_refuses(tmp_path, inputs, expected):
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    path = _save(
        tmp_path,
        nodes,
        [],
        13,
        inputs=inputs,
        name="inputs",
        out=["N"] + ["?"] * (len(inputs[0].type.tensor_type.shape.dim) - 1),
    )
    with pytest.raises(OnnxImportError, match=expected):
        import_onnx(path)


def test_check_input_shape(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    imported = import_onnx(_save(tmp_path, nodes, [], 13, shape=("N", 3, 32, 32), name="net", out=("N", 3, 32, 32)))
    assert check_input_shape(imported, (3, 32, 32)) is None
    message = check_input_shape(imported, (1, 28, 28))
    assert message == "net.onnx takes input 'x' of shape (N, 3, 32, 32); the data gives (N, 1, 28, 28)"
    assert "\n" not in message
    assert check_input_shape(imported, (3 * 32 * 32,)) is not None


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_channel_pruning_follows_the_imported_graph(tmp_path, exporter):
    """amc's ChannelGraph understands the converted vocabulary (residual adds, ReLU6, depthwise
    convs, constants of the input normalisation, a concatenation) and prunes it."""
    graph_module = pytest.importorskip("adl.passes.channels")
    torch.manual_seed(0)
    for name in ("mobilenet", "cat"):
        make, shape = MODELS[name]
        module = import_onnx(_export(make(), shape, tmp_path / f"{name}.onnx", exporter)).module
        graph = graph_module.ChannelGraph(module, (2, *shape))
        assert graph.prunable, name
        keep = graph.select({g.index: max(1, g.size // 2) for g in graph.prunable})
        pruned = graph.prune(keep)
        assert pruned(torch.randn(2, *shape)).shape == module(torch.randn(2, *shape)).shape


def test_weights_in_an_external_data_file_are_loaded_and_in_the_digest(tmp_path):
    import onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    single = tmp_path / "single.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(single), dynamo=False)
    split = tmp_path / "split.onnx"
    onnx.save_model(onnx.load(str(single)), str(split), save_as_external_data=True, location="w.data", size_threshold=0)
    imported = import_onnx(split)
    assert imported.external_files == ("w.data",)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(imported.module(x), model(x), atol=1e-5, rtol=0)
    assert imported.sha256 != hashlib.sha256(split.read_bytes()).hexdigest()
    weights = bytearray((tmp_path / "w.data").read_bytes())
    weights[0] ^= 1  # one bit of one weight
    (tmp_path / "w.data").write_bytes(bytes(weights))
    assert import_onnx(split).sha256 != imported.sha256
