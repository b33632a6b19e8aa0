"""Price every candidate op of a supernet with the target's cost model.

Each candidate is described as a network piece (`LayerDesc`s of the inverted residual at its
block's input shape, so a residual addition fuses with its conv as in the whole network) and
priced alone (without a per-network overhead row); what every network has -- stem, head,
classifier, and the cost model's per-network overhead -- is the price of the network with the
first candidate everywhere minus those candidates' prices. Identity costs nothing.
"""

from __future__ import annotations

from typing import Any

from adl.compiler.layers import LayerDesc, describe_model
from adl.compiler.spec import TargetSpec
from adl.models.space import Architecture
from adl.models.zoo import InvertedResidual
from adl.passes.nas.search import LatencyTable
from adl.passes.nas.supernet import Supernet


def candidate_layers(supernet: Supernet) -> list[list[list[LayerDesc]]]:
    """Per block, per candidate: the candidate's layers ([] for identity)."""
    space, width = supernet.space, supernet.width
    height, width_px = space.input_shape[1:]
    out = []
    for (cin, cout, stride), choices in zip(space.block_shapes(width), supernet.choices):
        pieces = []
        for choice in choices:
            if choice.skip:
                pieces.append([])
            else:
                module = InvertedResidual(cin, cout, choice.kernel, choice.expand, stride)
                pieces.append(describe_model(module, (1, cin, height, width_px)))
        out.append(pieces)
        height, width_px = -(-height // stride), -(-width_px // stride)
    return out


def price_candidates(supernet: Supernet, cost_model: Any, target: TargetSpec) -> LatencyTable:
    """Per-candidate latencies of `supernet` on `target` by `cost_model` (a `CostModel`). A model
    that measures (`measure_networks`, as `measured`) measures every piece in one round first."""
    space = supernet.space
    pieces = candidate_layers(supernet)
    first = Architecture(supernet.width, tuple(choices[0] for choices in supernet.choices))
    whole_layers = describe_model(space.build(first), (1, *space.input_shape))
    prefetch = getattr(cost_model, "measure_networks", None)
    if prefetch is not None:
        prefetch([layers for block in pieces for layers in block if layers] + [whole_layers], target)
    per_op = [[_layers_only(cost_model.estimate(layers, target)) if layers else 0.0 for layers in block]
              for block in pieces]
    whole = cost_model.estimate(whole_layers, target).latency_s
    return LatencyTable(per_op, max(0.0, whole - sum(block[0] for block in per_op)))


def _layers_only(cost: Any) -> float:
    """A piece's latency without a per-network term (the `measured` model's overhead row):
    that is paid once per network, in `fixed`."""
    return float(sum(c.latency_s for c in cost.layers if c.op != "overhead"))
