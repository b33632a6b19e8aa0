"""int8 kernels on VNNI: which targets get vpdpbusd, and that the libraries compute exact integers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")
from torch import nn

from adl.backends.runtime import CompiledLibrary
from adl.backends.tvm.build import build_library
from adl.backends.tvm.int8_kernels import int8_path
from adl.hwmodels.cpu import native_target
from adl.models.integer import IntegerConv2d, IntegerLinear
from adl.models.integer_graph import fuse_requantization
from adl.passes.haq.quantizers import activation_quant, quantize_weight

VNNI_TARGET = {"kind": "llvm", "num-cores": 2, "mcpu": "icelake-server"}  # AVX-512 with VNNI
AVX2_TARGET = {"kind": "llvm", "num-cores": 2, "mcpu": "znver3"}  # no VNNI


def integer(layer: nn.Module, lo: float, hi: float) -> nn.Module:
    codes, scales = quantize_weight(layer.weight, 8)
    act = activation_quant(lo, hi, 8)
    cls = IntegerConv2d if isinstance(layer, nn.Conv2d) else IntegerLinear
    return cls(layer, codes, scales, act.scale, act.zero_point, 8, 8).eval()


def network() -> nn.Module:
    """Every kernel shape the VNNI schedule takes or refuses: a 3-channel stem (padded to 4 input
    channels), a 3x3 conv, a 1x1 conv to 24 channels (the 8-lane form), a depthwise conv (generic),
    a linear layer to 32 outputs; codes handed from layer to layer."""
    torch.manual_seed(0)
    return fuse_requantization(
        nn.Sequential(
            integer(nn.Conv2d(3, 16, 3, padding=1), -2.0, 2.0),
            nn.ReLU(),
            integer(nn.Conv2d(16, 32, 3, stride=2, padding=1), 0.0, 3.0),
            nn.ReLU6(),
            integer(nn.Conv2d(32, 24, 1), 0.0, 4.0),
            nn.ReLU(),
            integer(nn.Conv2d(24, 24, 3, padding=1, groups=24), 0.0, 4.0),
            nn.ReLU(),
            nn.Flatten(),
            integer(nn.Linear(24 * 8 * 8, 32), 0.0, 4.0),
        ).eval()
    )[0]


def scheduled_tir(model: nn.Module, target: dict) -> str:
    from adl.backends.tvm.default_schedules import graph_passes, int8_kernel_counts, schedule_passes
    from adl.backends.tvm.integer_ops import import_exported

    exported = torch.export.export(model, (torch.zeros(1, 3, 16, 16),))
    int8_kernel_counts()
    with tvm.target.Target(target):
        mod = tvm.transform.Sequential(graph_passes() + schedule_passes())(import_exported(exported))
    return "\n".join(f.script() for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))


def test_the_int8_path_follows_the_targets_features():
    assert int8_path(tvm.target.Target(VNNI_TARGET)) == "vnni"
    assert int8_path(tvm.target.Target(AVX2_TARGET)) == "generic"
    assert int8_path(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})) == "generic"


@pytest.mark.slow
def test_a_vnni_target_gets_vpdpbusd_and_others_the_generic_kernels():
    from adl.backends.tvm.default_schedules import int8_kernel_counts

    text = scheduled_tir(network(), VNNI_TARGET)
    counts = int8_kernel_counts()
    # stem, 3x3, 1x1 to 24 channels (8 lanes), linear: vpdpbusd; the depthwise conv: generic
    assert counts == {"generic": 1, "vnni": 4}
    assert "llvm.x86.avx512.vpdpbusd.512" in text and "llvm.x86.avx512.vpdpbusd.256" in text
    text = scheduled_tir(network(), AVX2_TARGET)
    assert "vpdpbusd" not in text and int8_kernel_counts() == {"generic": 5}


def _host_has_vnni() -> bool:
    return int8_path(tvm.target.Target(native_target({"kind": "llvm"}))) == "vnni"


@pytest.mark.slow
@pytest.mark.skipif(not _host_has_vnni(), reason="this CPU has no AVX-512 VNNI: the vpdpbusd kernels cannot run here")
def test_vnni_libraries_compute_the_same_integers_as_pytorch(tmp_path):
    model = network()
    x = np.random.default_rng(0).normal(size=(32, 3, 16, 16)).astype(np.float32)
    info = build_library(model, x, {"kind": "llvm", "num-cores": 2}, tmp_path / "model.so")
    assert info.int8_kernels == {"generic": 1, "vnni": 4}
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    out = CompiledLibrary(tmp_path / "model.so", info.input_shape, num_threads=2).run(x)
    # codes are handed on in integers and the last layer rescales as PyTorch does (one rounding)
    assert np.array_equal(out, expected)
