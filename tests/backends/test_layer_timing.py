"""Measuring kernel groups with TVM (adl.backends.tvm.layer_timing), the `measured` cost
model end to end on this machine and over RPC on loopback, and roofline calibration.
Timings are checked for being real measurements (positive, finite, cached), never for speed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from adl.backends.tvm.layer_timing import LayerTimer, compile_group, layer_model, network_latency
from adl.hwmodels.measured import MeasuredModel
from adl.ir.layers import KernelGroup, LayerDesc, describe_model, group_layers
from adl.ir.spec import TargetSpec

torch = pytest.importorskip("torch")

TVM_TARGET = {"kind": "llvm", "num-cores": 2}
CONV = LayerDesc("conv", "conv2d", (1, 8, 8, 8), (1, 16, 4, 4), (3, 3), (2, 2), activation="relu6")
DW = LayerDesc("dw", "dwconv2d", (1, 16, 9, 9), (1, 16, 9, 9), (5, 5), groups=16, activation="relu")
PROJECT = LayerDesc("project", "conv2d", (1, 16, 4, 4), (1, 16, 4, 4))
ADD = LayerDesc("add", "add", (1, 16, 4, 4), (1, 16, 4, 4), activation="relu")
FC = LayerDesc("fc", "linear", (1, 16), (1, 10), has_bias=True)
POOL = LayerDesc("pool", "pool", (1, 16, 4, 4), (1, 16, 1, 1), (4, 4), (4, 4))


@pytest.mark.parametrize(
    "group",
    [
        KernelGroup(CONV),
        KernelGroup(DW),
        KernelGroup(PROJECT, ADD),
        KernelGroup(FC),
        KernelGroup(POOL),
        KernelGroup(ADD),
    ],
    ids=lambda g: g.key,
)
def test_the_one_layer_model_reproduces_the_layer(group):
    model = layer_model(group)
    out = model(torch.randn(group.layer.input_shape))
    assert tuple(out.shape) == group.layer.output_shape
    assert describe_model(model, group.layer.input_shape)[0].op == group.layer.op


def test_a_compiled_group_keeps_the_layers_kernels_and_drops_the_layout_boundary(tmp_path):
    compiled = compile_group(KernelGroup(PROJECT, ADD), TVM_TARGET, tmp_path)
    names = [k.name for k in compiled.kernels]
    assert len(names) == 1 and "conv2d" in names[0] and "add" in names[0]  # conv, bias, residual: one kernel
    assert not any(n.startswith(("transpose", "layout_transform")) for n in names)
    (kernel,) = compiled.kernels
    assert kernel.args[0][0] == (1, 4, 4, 16)  # NHWC, as inside a network


def test_the_timer_measures_each_distinct_group_once_in_worker_processes():
    groups = [KernelGroup(CONV), KernelGroup(DW), KernelGroup(CONV)]
    seconds = LayerTimer(TVM_TARGET, threads=2, repeats=5, jobs=2).measure(groups)
    assert set(seconds) == {KernelGroup(CONV).key, KernelGroup(DW).key}
    assert all(math.isfinite(s) and 0 < s < 0.1 for s in seconds.values())


def small_network():
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(8, 8, 3, padding=1, groups=8),
                nn.BatchNorm2d(8),
                nn.ReLU6(),
                nn.Conv2d(8, 8, 1),
                nn.BatchNorm2d(8),
            )

        def forward(self, x):
            return x + self.body(x)

    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    ).eval()


def test_the_measured_model_prices_a_network_and_caches_its_table(tmp_path):
    model = small_network()
    layers = describe_model(model, (1, 1, 8, 8))
    target = TargetSpec(name="host", cores=2)
    measured = MeasuredModel(cache=str(tmp_path), repeats=5, jobs=1)
    cost = measured.estimate(layers, target)
    groups = group_layers(layers)
    assert len(groups) == len(layers) - 1  # the residual add rides on the 1x1 conv
    assert cost.latency_s > 0 and math.isfinite(cost.latency_s)
    assert measured.parameters(target)["overhead_source"] == "empty call"
    table = json.loads(measured.table(target).path.read_text())
    assert set(table["entries"]) == {g.key for g in groups}
    assert MeasuredModel(cache=str(tmp_path)).measure(layers, target) == 0  # all cached

    whole = network_latency(model, (1, 1, 8, 8), TVM_TARGET, threads=2, repeats=10)
    assert whole > 0


def test_the_measured_model_times_kernels_on_an_rpc_device(servers, tmp_path):
    target = TargetSpec(name="board", cores=2, rpc=servers.tracker(), key="board")
    measured = MeasuredModel(cache=str(tmp_path), repeats=5, jobs=1)
    cost = measured.estimate([CONV, FC], target)
    assert cost.latency_s > 0
    table = measured.table(target)
    assert table.identity["where"] == f"rpc:{servers.tracker()}/board"
    assert len(table.entries) == 2
    # a table measured on the device is not the one of this machine
    assert table.path != MeasuredModel(cache=str(tmp_path)).table(TargetSpec(name="host", cores=2)).path


def test_roofline_calibration_is_measured_stored_and_used(tmp_path, monkeypatch):
    from adl.backends.tvm.calibrate import measure_roofline
    from adl.hwmodels.calibration import load_calibration, save_calibration
    from adl.hwmodels.roofline import RooflineModel

    monkeypatch.setenv("ADL_CACHE_DIR", str(tmp_path))
    target = TargetSpec(name="host", cores=2)
    assert RooflineModel().parameters(target)["sources"]["gflops"] == "uncalibrated default"
    values = measure_roofline(TVM_TARGET, threads=2, repeats=5)
    assert values["gflops"] > 0.1 and values["bandwidth"] > 0.01 and values["overhead"] >= 0
    save_calibration(target, values)
    assert load_calibration(target)["gflops"] == values["gflops"]
    params = RooflineModel().parameters(target)
    assert params["gflops"] == pytest.approx(values["gflops"]) and params["sources"]["gflops"] == "calibrated"
    # what the spec sets wins over the calibration
    assert RooflineModel(bandwidth=3.0).parameters(target)["sources"]["bandwidth"] == "spec"
    # another target (other cores) is not calibrated
    assert load_calibration(TargetSpec(name="host", cores=1)) is None
    assert np.isfinite(RooflineModel().estimate([CONV], target).latency_s)


def test_a_tuned_target_builds_its_kernels_from_the_tuning_database_too(tmp_path):
    # an empty database: TVM's untuned kernels, which the timer weighs against the default schedules
    compiled = compile_group(KernelGroup(CONV), TVM_TARGET, tmp_path / "k", tuned=True, tuning_root=tmp_path / "db")
    assert compiled.tuned and any("conv2d" in k.name for k in compiled.kernels)
    seconds = LayerTimer(TVM_TARGET, threads=2, repeats=5, jobs=1, tuned=True, tuning_root=tmp_path / "db").measure(
        [KernelGroup(CONV)]
    )
    default = LayerTimer(TVM_TARGET, threads=2, repeats=5, jobs=1).measure([KernelGroup(CONV)])
    assert set(seconds) == set(default) == {KernelGroup(CONV).key}
    assert seconds[KernelGroup(CONV).key] > 0
