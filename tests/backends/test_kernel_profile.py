"""Per-kernel timing of a built library and the attribution of kernels to layers."""

from __future__ import annotations

import numpy as np
import pytest

from adl.backends.tvm.kernel_profile import KernelTime, attribute_kernels
from adl.ir.layers import LayerDesc


def _kernel(name: str, us: float) -> KernelTime:
    return KernelTime(name, (((1, 4), "float32"),), us * 1e-6)


LAYERS = [
    LayerDesc("stem", "conv2d", (1, 1, 8, 8), (1, 8, 8, 8), (3, 3)),
    LayerDesc("dw", "dwconv2d", (1, 8, 8, 8), (1, 8, 8, 8), (3, 3), groups=8),
    LayerDesc("skip", "add", (1, 8, 8, 8), (1, 8, 8, 8)),
    LayerDesc("gap", "pool", (1, 8, 8, 8), (1, 8, 1, 1), (8, 8)),
    LayerDesc("fc", "linear", (1, 8), (1, 10)),
]


def test_compute_and_pooling_kernels_go_to_their_layers_in_order_the_rest_is_other():
    kernels = [
        _kernel("layout_transform", 0.1),
        _kernel("fused_conv2d_add_relu", 2.0),
        _kernel("fused_conv2d1_add1_add2", 1.0),
        _kernel("mean1", 0.3),
        _kernel("fused_matmul_add", 0.2),
    ]
    result = attribute_kernels(kernels, LAYERS)
    assert result.attributed and result.why_not == ""
    assert [None if s is None else round(s * 1e6, 6) for s in result.per_layer] == [2.0, 1.0, None, 0.3, 0.2]
    assert [k.name for k in result.other] == ["layout_transform"]
    assert result.kernels_s == pytest.approx(3.6e-6)


def test_a_kernel_time_survives_its_json_form():
    import json

    kernel = KernelTime("fused_conv2d_add", (((1, 8, 8, 8), "float32"), ((8,), "int8")), 3.5e-6)
    assert KernelTime.from_dict(json.loads(json.dumps(kernel.as_dict()))) == kernel


def test_counts_that_disagree_are_not_guessed():
    kernels = [
        _kernel("fused_conv2d_a", 1.0),
        _kernel("fused_conv2d_b", 1.0),
        _kernel("fused_conv2d_c", 1.0),
        _kernel("fused_matmul", 0.2),
        _kernel("mean", 0.3),
    ]
    result = attribute_kernels(kernels, LAYERS)
    assert not result.attributed and "4 conv2d/dwconv2d/linear kernels for 3 such layers" in result.why_not
    assert result.per_layer == [None, None, None, pytest.approx(0.3e-6), None]
    assert len(result.other) == 4
    pooling_fused_away = attribute_kernels(kernels[:2] + kernels[3:4], LAYERS)
    assert pooling_fused_away.attributed and pooling_fused_away.why_not == "0 pool kernels for 1 such layers"
    assert pooling_fused_away.per_layer[3] is None and pooling_fused_away.other == []


def test_a_built_library_is_profiled_kernel_by_kernel_in_call_order(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("tvm")
    from torch import nn

    from adl.backends.tvm.build import build_library
    from adl.backends.tvm.kernel_profile import profile_library
    from adl.ir.layers import describe_model

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
    path = tmp_path / "model.so"
    build_library(model, np.zeros((1, 1, 8, 8), np.float32), {"kind": "llvm", "num-cores": 1}, path)
    kernels = profile_library(path, (1, 1, 8, 8), threads=1, repeats=10)
    compute = [k for k in kernels if "conv2d" in k.name or "matmul" in k.name]
    assert len(compute) == 3 and all(k.median_s > 0 for k in kernels)
    assert [k.args[-1][0] for k in compute] == [(1, 8, 8, 8), (1, 8, 8, 16), (1, 10)]  # NHWC outputs, in order
    result = attribute_kernels(kernels, describe_model(model, (1, 1, 8, 8)))
    assert result.attributed
    # the second conv (8 -> 16 channels, 9x the MACs of the first) takes longer
    convs = [s for s, layer in zip(result.per_layer, describe_model(model, (1, 1, 8, 8))) if layer.op == "conv2d"]
    assert convs[1] > convs[0]


def test_the_manifest_record_matches_kernels_to_the_cost_models_rows_by_layer_name():
    from adl.driver.run import kernel_record

    kernels = [
        {"name": "fused_conv2d_add", "args": [[[1, 8, 8, 8], "float32"]], "median_s": 2e-6},
        {"name": "fused_conv2d1_add", "args": [], "median_s": 1e-6},
        {"name": "mean", "args": [], "median_s": 3e-7},
        {"name": "fused_matmul", "args": [], "median_s": 2e-7},
        {"name": "layout_transform", "args": [], "median_s": 1e-7},
    ]
    # a cost model may price rows of its own (the measured model's network overhead)
    rows = [{"name": "(network overhead)", "latency_s": 1e-6}] + [{"name": l.name, "latency_s": 1e-6} for l in LAYERS]
    record = kernel_record(kernels, LAYERS, rows)
    assert [row["measured_s"] for row in rows] == [None, 2e-6, 1e-6, None, 3e-7, 2e-7]
    assert record["kernels"]["attributed"] and record["kernels"]["count"] == 5
    assert [k["name"] for k in record["kernels"]["other"]] == ["layout_transform"]
