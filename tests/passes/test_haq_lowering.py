"""The deployed form of a quantized network: integer layers, their fallbacks, packed weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

from adl.ir.layers import describe_model
from adl.models.integer import IntegerConv2d, IntegerLinear, SimulatedQuantLayer, int_conv2d
from adl.passes.haq.budget import BitPolicy
from adl.passes.haq.lowering import deployable_model
from adl.passes.haq.model import FakeQuantLayer, quantize_model
from adl.passes.haq.packing import unpack_codes
from adl.passes.haq.quantizers import activation_quant, quantize_weight


def fake_and_integer(layer: nn.Module, weight_bits: int, act_bits: int, lo: float, hi: float):
    act = activation_quant(lo, hi, act_bits)
    fake = FakeQuantLayer(layer, weight_bits, act).eval()
    codes, scales = quantize_weight(layer.weight, weight_bits)
    cls = IntegerConv2d if isinstance(layer, nn.Conv2d) else IntegerLinear
    return fake, cls(layer, codes, scales, act.scale, act.zero_point, act_bits, weight_bits)


@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
        dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
        dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),  # depthwise
        dict(in_channels=5, out_channels=7, kernel_size=1, bias=False),
    ],
    ids=["3x3", "stride2", "depthwise", "1x1-nobias"],
)
@pytest.mark.parametrize("bits", [(8, 8), (4, 6), (2, 3)], ids=lambda b: f"w{b[0]}a{b[1]}")
def test_integer_conv_computes_what_the_fake_quantized_conv_simulates(conv, bits):
    torch.manual_seed(0)
    layer = nn.Conv2d(**conv)
    x = torch.randn(2, conv["in_channels"], 9, 9) * 2
    # an asymmetric range, so the zero point is not in the middle and padding must use it
    fake, integer = fake_and_integer(layer, *bits, lo=-1.0, hi=3.0)
    # the integer sum is exact, the fake one rounds ~27 products of |.| < 1 in float32: ~1e-6 on |y| < 4. The
    # two quantize x / s and x * (1/s), which pick codes one apart within ~1e-7 of a rounding tie; the inputs
    # here are >= 1e-4 codes from one (measured), a margin no float32 rounding closes
    with torch.no_grad():
        assert torch.allclose(integer(x), fake(x), atol=1e-5, rtol=1e-5)


def test_integer_linear_and_its_accumulator_are_exact():
    torch.manual_seed(1)
    layer = nn.Linear(40, 10)
    fake, integer = fake_and_integer(layer, 5, 7, lo=-0.5, hi=4.0)
    x = torch.rand(16, 40) * 4
    with torch.no_grad():
        assert torch.allclose(integer(x), fake(x), atol=1e-5, rtol=1e-5)
    codes = integer.quantize_input(x)
    assert codes.dtype == torch.uint8  # u8 activations x s8 weights: the operand order of VNNI's vpdpbusd
    expected = (codes.to(torch.int64) - integer.zero_point) @ integer.weight_codes.to(torch.int64).T
    assert torch.equal(
        torch.ops.adl.int_linear(codes, integer.weight_codes, integer.zero_point), expected.to(torch.int32)
    )


def test_integer_conv_accumulates_in_int32_without_overflowing_int8():
    codes = torch.full((1, 64, 3, 3), 255, dtype=torch.uint8)
    weight = torch.full((1, 64, 3, 3), 127, dtype=torch.int8)
    acc = int_conv2d(codes, weight, 0, [1, 1], [0, 0], [1, 1], 1)
    assert acc.dtype == torch.int32 and int(acc) == 255 * 127 * 64 * 9


def test_all_zero_channel_and_constant_input_stay_finite():
    layer = nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        layer.weight[1] = 0.0
    _, integer = fake_and_integer(layer, 4, 4, lo=0.0, hi=0.0)  # a constant all-zero activation range
    y = integer(torch.zeros(1, 2, 5, 5))
    assert torch.isfinite(y).all()
    assert torch.allclose(y[0, 1], layer.bias[1].expand(5, 5))


def test_integer_layers_refuse_codes_wider_than_their_bits():
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="4-bit range"):
        IntegerLinear(layer, torch.full((2, 3), 9), torch.ones(2), 0.1, 0, 8, 4)
    with pytest.raises(ValueError, match="2..8-bit weights"):
        IntegerLinear(layer, torch.zeros(2, 3), torch.ones(2), 0.1, 0, 8, 12)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.dw(x)) + x
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def small():
    torch.manual_seed(0)
    model = Small().eval()
    samples = torch.randn(32, 1, 8, 8)
    return model, samples


def test_deployable_model_runs_in_integer_arithmetic_where_it_can_and_says_why_not(small):
    model, samples = small
    fake = quantize_model(model, BitPolicy((8, 4, 12), (8, 6, 8)), samples)
    deployed, decisions, _ = deployable_model(fake, "llvm")
    kinds = [type(m).__name__ for m in (deployed.conv, deployed.dw, deployed.fc)]
    assert kinds == ["IntegerConv2d", "IntegerConv2d", "SimulatedQuantLayer"]
    assert [d.arithmetic for d in decisions] == ["int8", "int8", "float32"]
    assert "wider than int8" in decisions[2].reason
    with torch.no_grad():
        agree = (deployed(samples).argmax(1) == fake(samples).argmax(1)).float().mean()
        # equal to float32 rounding (~1e-7 on |y| < 0.6) unless an activation is requantized one code apart
        # (s * |w| ~ 1e-2): the nearest one to a rounding tie is 1.3e-4 codes away, 20x what the two paths'
        # different float32 convolutions move it (measured 6e-6 codes)
        assert torch.allclose(deployed(samples), fake(samples), atol=1e-4)
    assert agree == 1.0

    _, on_gpu, _ = deployable_model(fake, "cuda")
    assert all(d.arithmetic == "float32" and "llvm" in d.reason for d in on_gpu)
    kmeans = quantize_model(model, BitPolicy((3, 3, 3), (8, 8, 8)), samples, mode="kmeans")
    deployed_kmeans, decisions_kmeans, _ = deployable_model(kmeans, "llvm")
    assert all("k-means" in d.reason for d in decisions_kmeans)
    with torch.no_grad():
        assert torch.allclose(deployed_kmeans(samples), kmeans(samples), atol=1e-4)


def test_packed_weights_hold_the_codes_at_their_width(small):
    model, samples = small
    fake = quantize_model(model, BitPolicy((3, 5, 8), (8, 8, 8)), samples)
    deployed, decisions, packed = deployable_model(fake, "llvm")
    for name, layer in (("conv", deployed.conv), ("dw", deployed.dw), ("fc", deployed.fc)):
        bits = int(packed[f"{name}.bits"][0])
        count = layer.weight_codes.numel()
        assert packed[f"{name}.codes"].nbytes == (count * bits + 7) // 8
        codes = unpack_codes(packed[f"{name}.codes"], bits, count).reshape(tuple(packed[f"{name}.shape"]))
        assert np.array_equal(codes, layer.weight_codes.numpy())
    assert [d.packed_bytes for d in decisions] == [(72 * 3 + 7) // 8, (72 * 5 + 7) // 8, 80]


def test_describe_model_sees_quantized_layers_as_the_layers_they_compute(small):
    model, samples = small
    float_layers = describe_model(model, (1, 1, 8, 8))
    fake = quantize_model(model, BitPolicy((3, 5, 8), (4, 6, 7)), samples)
    deployed, _, _ = deployable_model(fake, "llvm")
    for quantized in (fake, deployed):
        layers = describe_model(quantized, (1, 1, 8, 8))
        assert [(l.op, l.input_shape, l.output_shape, l.params) for l in layers] == [
            (l.op, l.input_shape, l.output_shape, l.params) for l in float_layers
        ]
        assert [(l.weight_bits, l.act_bits) for l in layers if l.op != "add"] == [(3, 4), (5, 6), (8, 7)]
    assert isinstance(
        SimulatedQuantLayer(nn.Linear(2, 2), torch.zeros(2, 2), 0.1, 0, 8, 12).quantized_template, nn.Linear
    )


def test_parameter_count_counts_integer_weight_codes(small):
    from adl.driver.run import parameter_count

    model, samples = small
    fake = quantize_model(model, BitPolicy((3, 5, 12), (8, 8, 8)), samples)
    deployed, _, _ = deployable_model(fake, "llvm")
    folded = 8 * 9 + 8 + 8 * 9 + 8 + 8 * 10 + 10  # BatchNorm folded into the first conv's weights and bias
    assert parameter_count(deployed) == parameter_count(fake) == folded
