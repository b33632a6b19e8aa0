"""Pricing candidate ops from layer descriptions alone: no torch, no JAX.

`price_pieces` is the arithmetic of every latency table (`pricing.price_candidates` wraps it
in a `LatencyTable`); `price_mobilenet` prices a MobileNet space from its geometry
(`adl.models.space.network_layers`, `block_layers`) for the search and for
`fastest_mobilenet`, which is what lets `adl compile` refuse a latency
budget below the fastest network of the space in a fraction of a second, before the data
set, torch or JAX are loaded.
"""

from __future__ import annotations

from typing import Any, Sequence

from adl.ir.layers import LayerDesc
from adl.ir.spec import TargetSpec
from adl.models.space import MobileNetSpace, block_layers, network_layers


def layers_only(cost: Any) -> float:
    """A piece's latency without a per-network term (the `measured` model's overhead row):
    that is paid once per network, in `fixed`."""
    return float(sum(c.latency_s for c in cost.layers if c.op != "overhead"))


def price_pieces(
    pieces: list, whole_layers: list[LayerDesc], cost_model: Any, target: TargetSpec, reference: Sequence[int]
) -> tuple[list[list[float]], float]:
    """Price every piece alone and the network made of the `reference` candidates: what the
    network costs beyond those candidates is `fixed`. `pieces[decision][candidate]` lists the
    layers of the candidate in every place that shares the decision (one per block; one per
    cell of the edge's type), [] where it has none. A model that measures
    (`measure_networks`, as `measured`) measures everything in one round first.
    Returns (per-candidate latencies, fixed)."""
    prefetch = getattr(cost_model, "measure_networks", None)
    if prefetch is not None:
        unique = {tuple(layers): layers for block in pieces for piece in block for layers in piece if layers}
        prefetch(list(unique.values()) + [whole_layers], target)
    per_op = [
        [sum(layers_only(cost_model.estimate(layers, target)) for layers in piece if layers) for piece in block]
        for block in pieces
    ]
    whole = cost_model.estimate(whole_layers, target).latency_s
    return per_op, max(0.0, whole - sum(block[i] for block, i in zip(per_op, reference)))


def price_mobilenet(
    space: MobileNetSpace, width: float, cost_model: Any, target: TargetSpec
) -> tuple[list[list[float]], float]:
    """(per-candidate latencies, fixed) of a MobileNet space at `width`, from its geometry."""
    pieces = [[[layers] for layers in block] for block in block_layers(space, width)]
    return price_pieces(pieces, network_layers(space, space.first(width)), cost_model, target, [0] * space.blocks)


def fastest_mobilenet(space: MobileNetSpace, width: float, cost_model: Any, target: TargetSpec) -> float:
    """Latency of the fastest network of `space` at `width`, as `cost_model` prices it."""
    per_op, fixed = price_mobilenet(space, width, cost_model, target)
    return fixed + sum(min(block) for block in per_op)
