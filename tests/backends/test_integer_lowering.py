"""adl's integer operators through TVM: the library computes u8 x s8 -> s32, and agrees with the
eager integer model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

from adl.backends.runtime import CompiledLibrary
from adl.backends.tvm.build import build_library
from adl.backends.tvm.integer_ops import import_exported
from adl.backends.tvm.layer_timing import compile_group, layer_model
from adl.ir.layers import KernelGroup, LayerDesc
from adl.models.integer import IntegerConv2d, IntegerLinear
from adl.passes.haq.quantizers import activation_quant, quantize_weight

TARGET = {"kind": "llvm", "num-cores": 2}


def integer(layer: nn.Module, weight_bits: int, act_bits: int, lo: float, hi: float) -> nn.Module:
    codes, scales = quantize_weight(layer.weight, weight_bits)
    act = activation_quant(lo, hi, act_bits)
    cls = IntegerConv2d if isinstance(layer, nn.Conv2d) else IntegerLinear
    return cls(layer, codes, scales, act.scale, act.zero_point, act_bits, weight_bits)


class IntegerNet(nn.Module):
    """Every integer form the `haq` pass emits: padded conv with a zero point, strided,
    depthwise with a residual, 1x1, linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = integer(nn.Conv2d(1, 16, 3, padding=1), 8, 8, -1.5, 3.0)
        self.down = integer(nn.Conv2d(16, 16, 3, stride=2, padding=1), 5, 6, 0.0, 2.0)
        self.dw = integer(nn.Conv2d(16, 16, 3, padding=1, groups=16), 4, 7, 0.0, 2.0)
        self.project = integer(nn.Conv2d(16, 24, 1), 6, 8, 0.0, 3.0)
        self.fc = integer(nn.Linear(24, 10), 8, 4, 0.0, 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.down(x))
        x = torch.relu(self.dw(x)) + x
        x = torch.relu(self.project(x))
        return self.fc(x.mean((2, 3)))


def near_rounding_ties(model: nn.Module, x: np.ndarray, ulps: int = 4) -> np.ndarray:
    """(N,) bool: the samples with a quantized activation within `ulps` float32 ulps of a rounding tie
    of round(x / s). There the library and PyTorch may pick codes one apart: both round the rescale
    acc * rescale + bias once (the library as an FMA), but the float32 ops between layers (the mean
    before the linear layer) sum in another order, and an ulp decides which way the tie goes."""
    near = np.zeros(len(x), bool)

    def check(module, inputs):
        codes = inputs[0].detach().numpy().astype(np.float64) * module.inverse_scale
        distance = np.abs(codes - np.floor(codes) - 0.5)  # to the nearest tie, in codes
        slack = ulps * np.finfo(np.float32).eps * np.abs(codes)  # `ulps` float32 ulps of x / s
        near[:] |= (distance <= slack).reshape(len(codes), -1).any(1)

    handles = [
        m.register_forward_pre_hook(check) for m in model.modules() if isinstance(m, (IntegerConv2d, IntegerLinear))
    ]
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        for handle in handles:
            handle.remove()
    return near


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    model = IntegerNet().eval()
    x = np.random.default_rng(0).normal(size=(16, 1, 8, 8)).astype(np.float32)
    path = tmp_path_factory.mktemp("int") / "model.so"
    info = build_library(model, x, TARGET, path)
    return model, x, path, info


def test_the_relax_program_convolves_uint8_codes_and_int8_weights_into_int32():
    model = IntegerNet().eval()
    exported = torch.export.export(model, (torch.zeros(1, 1, 8, 8),))
    text = import_exported(exported).script()
    convs = [line for line in text.splitlines() if "R.nn.conv2d(" in line]
    assert len(convs) == 4 and all('out_dtype="int32"' in line for line in convs)
    # the stem's input padded with its zero point (and from 1 to 4 channels, the depth vpdpbusd reduces)
    assert 'R.Tensor((1, 4, 10, 10), dtype="uint8")' in text
    assert "R.matmul(" in text and 'out_dtype="int32"' in text.split("R.matmul(")[1].splitlines()[0]


@pytest.mark.slow
def test_the_library_agrees_with_the_eager_integer_model(built):
    model, x, path, info = built
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    out = CompiledLibrary(path, info.input_shape, num_threads=1).run(x)
    # the integer parts are exact and the float32 parts (rescale, mean) round within ~1e-7 of logits < 0.4
    # (measured 3e-8, and 0 for a target without FMA); a sample with an activation within a few ulps of a
    # rounding tie may get a code one apart (up to 0.2 * |w| ~ 0.04 on a logit, through the 4-bit fc): like
    # `lower`, hold those to the top-1 class only (the smallest top-2 margin here is 0.05)
    near = near_rounding_ties(model, x)
    assert near.sum() <= len(x) // 4, f"{near.sum()} of {len(x)} samples near a tie: too few left to compare"
    assert np.abs(out - expected)[~near].max() < 1e-4
    assert np.array_equal(out.argmax(1), expected.argmax(1))


def _target_has_fma(target: dict) -> bool:
    """Whether LLVM may contract a multiply and add into an FMA for `target` (as the build sees it)."""
    import tvm
    from tvm.target.codegen import target_has_features

    from adl.hwmodels.cpu import native_target

    return bool(target_has_features("fma", tvm.target.Target(native_target(target))))


@pytest.mark.slow
@pytest.mark.skipif(
    not _target_has_fma(TARGET), reason="LLVM contracts the rescale into an FMA only where the target has one"
)
def test_a_layers_rescale_rounds_once_in_the_library_as_in_pytorch(tmp_path):
    """acc * rescale + bias: the library's epilogue computes it as one fused multiply-add, and the
    eager layer rounds it once too, so one layer's outputs agree bit for bit. The float32 multiply
    then add (two roundings) that eager mode computed before differs on some of these outputs:
    what made a code land one apart in the next layer (193 of 10,000 Fashion-MNIST samples)."""
    from adl.models.integer import int_conv2d

    torch.manual_seed(1)
    layer = integer(nn.Conv2d(8, 16, 3, padding=1), 8, 8, -2.0, 2.0).eval()
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 8)).astype(np.float32)
    info = build_library(layer, x[:1], TARGET, tmp_path / "layer.so")
    out = CompiledLibrary(tmp_path / "layer.so", info.input_shape, num_threads=1).run(x)
    with torch.no_grad():
        expected = layer(torch.from_numpy(x)).numpy()
        acc = int_conv2d(
            layer.quantize_input(torch.from_numpy(x)),
            layer.weight_codes,
            layer.zero_point,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
        )
        rounded_twice = (acc.to(torch.float32) * layer.rescale + layer.bias).numpy()
    assert np.array_equal(out, expected)
    assert not np.array_equal(out, rounded_twice)  # the comparison above can tell the two apart


@pytest.mark.slow
def test_measured_table_times_integer_kernels_for_layers_at_8_bits_or_fewer(tmp_path):
    conv = LayerDesc("conv", "conv2d", (1, 8, 8, 8), (1, 16, 8, 8), (3, 3), activation="relu")
    narrow = dataclasses.replace(conv, weight_bits=4, act_bits=8)
    assert isinstance(layer_model(KernelGroup(narrow)).op, IntegerConv2d)
    assert isinstance(layer_model(KernelGroup(conv)).op, nn.Conv2d)
    kernels = compile_group(KernelGroup(narrow), TARGET, tmp_path).kernels
    conv_kernel = next(k for k in kernels if "conv2d" in k.name)
    assert [dtype for _, dtype in conv_kernel.args][:2] == ["uint8", "int8"]


@pytest.mark.slow
def test_integer_convolutions_tile_by_their_int32_accumulators():
    """An int8 convolution writing int8 accumulates in int32: its register tile is 8 lanes wide on
    AVX2 (like float32), not the 32 lanes of its int8 output (which spilled and ran 2.5x slower)."""
    import tvm

    from adl.backends.tvm.default_schedules import graph_passes, schedule_passes

    exported = torch.export.export(IntegerNet().eval(), (torch.zeros(1, 1, 8, 8),))
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2, "mcpu": "znver3"})
    with target:
        scheduled = tvm.transform.Sequential(graph_passes() + schedule_passes())(import_exported(exported))
    convs = [
        f.script()
        for gv, f in scheduled.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint
    ]
    assert len(convs) == 4
    for text in convs:
        update = text.split('_update"')[0].split('_init"')[-1]  # the loop nest around the accumulation
        assert "T.vectorized(T.int64(8))" in update and "T.vectorized(T.int64(32))" not in update
