"""HAQ's resource constraint: after the agent proposes bit widths, lower them until the network
fits the budget, priced by the target's cost model.

As in the paper, the bit widths are decreased sequentially -- one bit, layer after layer, in
network order, weights then activations -- until the cost holds; each pass over the layers
lowers every width that is still above the minimum and whose lowering saves something, so
the loop ends after at most (max - min) passes. If no lowering helps any more and the budget
still does not hold, the budget is infeasible and `BudgetUnreachable` says by how much.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

from adl.ir.layers import LayerDesc

QUANTIZED_OPS = ("conv2d", "dwconv2d", "linear")  # layers whose weights and inputs haq quantizes
RESOURCES = ("latency", "energy", "size")


@dataclass(frozen=True)
class BitPolicy:
    """Per quantized layer (network order) the weight and activation (input) bit widths."""

    weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.weight_bits) != len(self.act_bits):
            raise ValueError(f"{len(self.weight_bits)} weight widths but {len(self.act_bits)} activation widths")

    @classmethod
    def uniform(cls, layers: int, bits: int) -> "BitPolicy":
        return cls((bits,) * layers, (bits,) * layers)


class BudgetUnreachable(ValueError):
    """Even the smallest bit widths miss the budget."""

    def __init__(self, resource: str, lowest: float, budget: float) -> None:
        super().__init__(
            f"the {resource} budget {budget:.4g} cannot be met: with every layer at the minimum bit "
            f"width the network still costs {lowest:.4g}"
        )
        self.resource, self.lowest, self.budget = resource, lowest, budget


def quantized_layers(layers: Sequence[LayerDesc]) -> list[int]:
    """Indices of the layers a policy assigns bits to."""
    return [i for i, layer in enumerate(layers) if layer.op in QUANTIZED_OPS]


def apply_policy(layers: Sequence[LayerDesc], policy: BitPolicy) -> list[LayerDesc]:
    """`layers` with the policy's widths on the quantized layers (the others keep theirs)."""
    index = quantized_layers(layers)
    if len(index) != len(policy.weight_bits):
        raise ValueError(f"the policy has {len(policy.weight_bits)} layers, the network {len(index)} quantized ones")
    out = list(layers)
    for slot, i in enumerate(index):
        out[i] = dataclasses.replace(layers[i], weight_bits=policy.weight_bits[slot], act_bits=policy.act_bits[slot])
    return out


def cost_function(
    layers: Sequence[LayerDesc], estimate: Callable[[Sequence[LayerDesc]], object], resource: str
) -> Callable[[BitPolicy], float]:
    """policy -> its `resource` (seconds, joules or weight bytes) as `estimate` (a cost model's
    `estimate(layers)` bound to the target) prices the network under that policy."""
    if resource not in RESOURCES:
        raise ValueError(f"resource must be one of {', '.join(RESOURCES)}, got {resource!r}")

    def cost(policy: BitPolicy) -> float:
        priced = estimate(apply_policy(layers, policy))
        if resource == "latency":
            return float(priced.latency_s)
        if resource == "energy":
            if priced.energy_j is None:
                raise ValueError(f"the cost model {priced.model} does not price energy")
            return float(priced.energy_j)
        return float(priced.weight_bytes)

    return cost


def _next_saving(
    weights: list[int],
    acts: list[int],
    lowering: tuple[list[int], ...],
    i: int,
    low: int,
    cost: Callable[[BitPolicy], float],
    current_cost: float,
) -> tuple[BitPolicy, float] | None:
    """Lower layer `i`'s width in each list of `lowering` (`weights`, `acts` or both, in place) to
    the widest width below the current one that costs less than `current_cost`: (that policy,
    its cost); None, with the widths unchanged, if none does."""
    originals = [widths[i] for widths in lowering]
    for bits in range(max(originals) - 1, low - 1, -1):
        for widths, original in zip(lowering, originals):
            widths[i] = min(original, bits)
        candidate = BitPolicy(tuple(weights), tuple(acts))
        candidate_cost = cost(candidate)
        if candidate_cost < current_cost:
            return candidate, candidate_cost
    for widths, original in zip(lowering, originals):
        widths[i] = original
    return None


def enforce_budget(
    policy: BitPolicy, cost: Callable[[BitPolicy], float], budget: float, low: int, resource: str = "latency"
) -> BitPolicy:
    """The policy with widths lowered one bit at a time (layer by layer, weights before
    activations) until ``cost(policy) <= budget``; raises `BudgetUnreachable` when no further
    lowering helps.

    A decrement that does not lower the cost is not made: a size budget never touches
    activation widths, and a layer the cost model prices the same at fewer bits (a
    memory-bound layer's weights, say) keeps its accuracy for free. Where one bit saves
    nothing but more bits do -- a measured CPU prices 9..16 bits alike (float kernels) and
    2..8 alike (int8 kernels) -- the width drops to the widest that saves, and where only
    weights and activations together save (an int8 kernel needs both at <= 8 bits), both drop.
    """
    weights, acts = list(policy.weight_bits), list(policy.act_bits)
    if any(b < low for b in weights + acts):
        raise ValueError(f"the policy has widths below the minimum {low}")
    current, current_cost = policy, cost(policy)
    while current_cost > budget:
        lowered = False
        for i in range(len(weights)):
            saved = False
            # the weights, then the activations; both together only when neither saves alone
            for lowering in ((weights,), (acts,), (weights, acts)):
                if saved and len(lowering) == 2:
                    break
                step = _next_saving(weights, acts, lowering, i, low, cost, current_cost)
                if step is None:  # no narrower width saves anything: keep the bits
                    continue
                (current, current_cost), saved, lowered = step, True, True
                if current_cost <= budget:
                    return current
        if not lowered:
            raise BudgetUnreachable(resource, current_cost, budget)
    return current
