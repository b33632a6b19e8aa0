"""Integer requantization between integer layers: the op, and which hand-offs a network allows."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn

from adl.models.integer import IntegerConv2d, IntegerLinear, OutputRequantization, requantize
from adl.models.integer_graph import fuse_requantization
from adl.passes.haq.quantizers import activation_quant, quantize_weight


def integer(layer: nn.Module, lo: float, hi: float, weight_bits: int = 8, act_bits: int = 8) -> nn.Module:
    codes, scales = quantize_weight(layer.weight, weight_bits)
    act = activation_quant(lo, hi, act_bits)
    cls = IntegerConv2d if isinstance(layer, nn.Conv2d) else IntegerLinear
    return cls(layer, codes, scales, act.scale, act.zero_point, act_bits, weight_bits).eval()


def chain() -> nn.Sequential:
    """conv -> ReLU6 -> conv -> ReLU -> maxpool -> 1x1 conv -> ReLU -> flatten -> linear: every
    output but the last reaches only the next integer layer."""
    torch.manual_seed(0)
    return nn.Sequential(
        integer(nn.Conv2d(1, 16, 3, padding=1), -1.5, 3.0),
        nn.ReLU6(),
        integer(nn.Conv2d(16, 32, 3, padding=1), 0.0, 5.0),
        nn.ReLU(),
        nn.MaxPool2d(2),
        integer(nn.Conv2d(32, 16, 1), 0.0, 4.0),
        nn.ReLU(),
        nn.Flatten(),
        integer(nn.Linear(16 * 16, 10), 0.0, 4.0),
    ).eval()


def test_requantize_rounds_half_to_even_and_clamps_to_the_code_range():
    acc = torch.tensor([-7, 5, 3, 1000], dtype=torch.int32).reshape(1, 4, 1)
    bias = torch.tensor([0.0, 0.0, 1.0, 0.25]).reshape(1, 4, 1)
    scale = torch.tensor([0.5, 0.5, 0.5, 0.5]).reshape(1, 4, 1)
    codes = requantize(acc, bias, scale, 10, 8, 200)
    # -3.5 -> -4 (even) + 10 = 6, clamped to 8; 2.5 -> 2 (even) -> 12; (3 + 1) * 0.5 = 2 -> 12; 500.1 -> 200
    assert codes.dtype == torch.uint8 and codes.reshape(-1).tolist() == [8, 12, 12, 200]


def test_output_requantization_keeps_the_bias_in_accumulator_units():
    requant = OutputRequantization(
        torch.tensor([0.01, 0.5]), torch.tensor([0.05, -0.2]), scale=0.1, zero_point=3, bits=8, low=3, high=255
    )
    # not rounded to accumulator units: -0.2 is 0.4 of a 0.5 unit, which alone moves the output 2 codes
    assert torch.allclose(requant.bias, torch.tensor([5.0, -0.4]))
    assert torch.allclose(requant.multiplier, torch.tensor([0.1, 5.0]))
    acc = torch.tensor([[[[100]], [[10]]]], dtype=torch.int32)
    # (100 + 5) * 0.1 = 10.5 -> 10 (even) + 3; (10 - 0.4) * 5 = 48 + 3
    assert requant(acc).reshape(-1).tolist() == [13, 51]
    with pytest.raises(ValueError, match="code range"):
        OutputRequantization(torch.tensor([0.01]), None, 0.1, 0, 4, 0, 16)


def test_a_chain_of_integer_layers_hands_codes_from_layer_to_layer():
    model = chain()
    x = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        floats = model(x)
    fused, handoffs, note = fuse_requantization(model)
    assert note == ""
    assert [(h.producer, h.consumers) for h in handoffs] == [("0", ("2",)), ("2", ("5",)), ("5", ("8",))]
    # ReLU6 became the code range [code of 0, code of 6]; the pools and the flatten stay, on codes
    relu6 = handoffs[0]
    consumer = model[2]
    assert (relu6.low, relu6.high) == (
        consumer.zero_point,
        min(255, round(6 / consumer.act_scale) + consumer.zero_point),
    )
    called = [type(fused.get_submodule(n.target)) for n in fused.graph.nodes if n.op == "call_module"]
    assert nn.ReLU not in called and nn.ReLU6 not in called  # the clamps became code ranges
    assert called.count(nn.MaxPool2d) == 1 and called.count(nn.Flatten) == 1 and len(called) == 6
    assert model[2].takes_codes and not model[0].takes_codes and model[8].requantize_output is None
    with torch.no_grad():
        assert model[2](torch.zeros(1, 16, 8, 8, dtype=torch.uint8)).dtype == torch.uint8
        integers = fused(x)
    # both paths round each activation once to the next layer's grid, from the same accumulators:
    # (acc * s_x * s_w + bias) / s' in float64 against (acc + bias / (s_x * s_w)) * m in float32,
    # codes one apart only where float32 rounding decides a tie
    assert (integers.argmax(1) == floats.argmax(1)).float().mean() >= 0.95
    assert torch.allclose(integers, floats, atol=0.05)


def test_outputs_that_reach_a_float_operation_stay_floats():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a = integer(nn.Conv2d(4, 4, 3, padding=1), -1.0, 1.0)
            self.b = integer(nn.Conv2d(4, 4, 3, padding=1), 0.0, 2.0)
            self.c = integer(nn.Conv2d(4, 4, 1), 0.0, 2.0)
            self.d = integer(nn.Conv2d(4, 4, 1), 0.0, 3.0)

        def forward(self, x):
            y = torch.relu(self.a(x))
            y = self.b(y) + y  # a's output also reaches the addition; b's output only the addition
            return self.c(y) + self.d(y)  # two consumers with different quantizers

    model = Residual().eval()
    fused, handoffs, note = fuse_requantization(model)
    assert handoffs == [] and note == "" and fused is model


def test_a_network_fx_cannot_trace_is_left_alone_with_the_reason():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = integer(nn.Linear(4, 4), -1.0, 1.0)
            self.b = integer(nn.Linear(4, 4), 0.0, 1.0)

        def forward(self, x):
            y = self.a(x)
            if y.sum() > 0:  # data-dependent control flow
                y = torch.relu(y)
            return self.b(y)

    model = Branchy().eval()
    fused, handoffs, note = fuse_requantization(model)
    assert fused is model and handoffs == [] and "torch.fx could not trace" in note


def test_a_layer_refuses_floats_once_it_takes_codes():
    layer = integer(nn.Linear(4, 2), 0.0, 1.0)
    layer.takes_codes = True
    with pytest.raises(TypeError, match="uint8 codes"):
        layer(torch.zeros(1, 4))
