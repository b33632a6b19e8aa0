"""HAQ's budget loop on the bitserial cost model: it always ends within budget, or says the
budget is infeasible; it lowers widths in the paper's order."""

from __future__ import annotations

import pytest

from adl.hwmodels.bitserial import BitSerialModel
from adl.ir.layers import LayerDesc
from adl.ir.spec import TargetSpec
from adl.passes.haq.budget import (
    BitPolicy,
    BudgetUnreachable,
    apply_policy,
    cost_function,
    enforce_budget,
    quantized_layers,
)

LAYERS = [
    LayerDesc("stem", "conv2d", (1, 1, 8, 8), (1, 16, 8, 8), (3, 3)),
    LayerDesc("dw", "dwconv2d", (1, 16, 8, 8), (1, 16, 8, 8), (3, 3), groups=16),
    LayerDesc("pw", "conv2d", (1, 16, 8, 8), (1, 32, 8, 8)),
    LayerDesc("pool", "pool", (1, 32, 8, 8), (1, 32, 1, 1)),
    LayerDesc("fc", "linear", (1, 32), (1, 10), has_bias=True),
]
TARGET = TargetSpec(name="fpga")


def _cost(resource: str = "latency", preset: str = "edge"):
    model = BitSerialModel(preset=preset)
    return cost_function(LAYERS, lambda layers: model.estimate(layers, TARGET), resource)


def test_the_policy_sets_bits_on_conv_and_linear_layers_only():
    assert quantized_layers(LAYERS) == [0, 1, 2, 4]
    priced = apply_policy(LAYERS, BitPolicy((8, 6, 4, 2), (7, 5, 3, 2)))
    assert [(l.weight_bits, l.act_bits) for l in priced] == [(8, 7), (6, 5), (4, 3), (32, 32), (2, 2)]
    with pytest.raises(ValueError, match="4 quantized"):
        apply_policy(LAYERS, BitPolicy.uniform(3, 8))


@pytest.mark.parametrize("resource", ["latency", "energy", "size"])
@pytest.mark.parametrize("fraction", [0.9, 0.6, 0.3, 0.1])
def test_the_loop_ends_within_budget_or_reports_it_unreachable(resource, fraction):
    cost = _cost(resource)
    start = BitPolicy.uniform(4, 8)
    budget = fraction * cost(start)
    lowest = cost(BitPolicy.uniform(4, 2))
    if lowest > budget:
        with pytest.raises(BudgetUnreachable, match=f"the {resource} budget") as info:
            enforce_budget(start, cost, budget, low=2, resource=resource)
        assert info.value.lowest == pytest.approx(lowest)
        return
    result = enforce_budget(start, cost, budget, low=2, resource=resource)
    assert cost(result) <= budget and min(result.weight_bits + result.act_bits) >= 2
    assert result != start  # every fraction < 1 needed lowering


def test_widths_are_lowered_one_bit_at_a_time_in_network_order():
    calls = []

    def cost(policy):  # counts widths: the budget holds once 3 bits are gone
        calls.append(policy)
        return sum(policy.weight_bits) + sum(policy.act_bits)

    result = enforce_budget(BitPolicy((8, 8), (8, 8)), cost, budget=29, low=2)
    assert result == BitPolicy((7, 7), (7, 8))
    assert enforce_budget(BitPolicy((8, 8), (8, 8)), cost, budget=100, low=2) == BitPolicy((8, 8), (8, 8))
    with pytest.raises(ValueError, match="below the minimum"):
        enforce_budget(BitPolicy((1, 8), (8, 8)), cost, budget=100, low=2)


def test_a_lowering_that_saves_nothing_is_not_made():
    """A size budget prices weights only: activations keep their widths (lowering them would cost
    accuracy for nothing; the digits demo lost 40 points of validation accuracy that way)."""
    cost = _cost("size")
    result = enforce_budget(BitPolicy.uniform(4, 8), cost, 0.5 * cost(BitPolicy.uniform(4, 8)), low=2, resource="size")
    assert result.act_bits == (8, 8, 8, 8) and max(result.weight_bits) < 8

    def weights_of_the_first_layer_only(policy):
        return policy.weight_bits[0]

    result = enforce_budget(BitPolicy((8, 8), (8, 8)), weights_of_the_first_layer_only, budget=5, low=2)
    assert result == BitPolicy((5, 8), (8, 8))
    with pytest.raises(BudgetUnreachable, match="still costs 2"):
        enforce_budget(BitPolicy((8, 8), (8, 8)), weights_of_the_first_layer_only, budget=1, low=2)


def test_edge_and_cloud_presets_price_the_same_policy_differently():
    policy = BitPolicy((8, 4, 8, 2), (8, 8, 4, 4))
    assert _cost("latency", "edge")(policy) != _cost("latency", "cloud")(policy)


def test_a_step_priced_cost_drops_to_the_widest_width_that_saves():
    """A measured CPU prices every width above 8 bits as a float kernel and every width up to 8 as
    an int8 kernel: one bit less from 16 saves nothing, 8 bits do. The budget is reachable, so it is
    reached -- with the wider layer kept where the other alone pays for it."""

    def cost(policy: BitPolicy) -> float:
        return sum(10.0 if w > 8 or a > 8 else 7.0 for w, a in zip(policy.weight_bits, policy.act_bits))

    result = enforce_budget(BitPolicy((16, 16), (16, 16)), cost, budget=17.0, low=4)
    assert result == BitPolicy((8, 16), (8, 16)) and cost(result) == 17.0
    with pytest.raises(BudgetUnreachable):
        enforce_budget(BitPolicy((16, 16), (16, 16)), cost, budget=13.0, low=4)
