"""Price every candidate op of a supernet with the target's cost model.

Each candidate is described as a network piece (`LayerDesc`s of the inverted residual at its
block's input shape, so a residual addition fuses with its conv as in the whole network) and
priced alone (without a per-network overhead row); what every network has -- stem, head,
classifier, and the cost model's per-network overhead -- is the price of the network with the
first candidate everywhere minus those candidates' prices. Identity costs nothing.
"""

from __future__ import annotations

from typing import Any

from adl.ir.layers import LayerDesc, describe_model
from adl.ir.spec import TargetSpec
from adl.models.space import Architecture
from adl.passes.nas.cells import CellSupernet
from adl.passes.nas.search import LatencyTable
from adl.passes.nas.static_pricing import price_mobilenet, price_pieces


def price_candidates(supernet: Any, cost_model: Any, target: TargetSpec) -> LatencyTable:
    """Per-candidate latencies of `supernet` (MobileNet or cell space) on `target` by `cost_model`
    (a `CostModel`)."""
    if not isinstance(supernet, CellSupernet):  # from the space's geometry, as the budget check prices it
        return LatencyTable(*price_mobilenet(supernet.space, supernet.width, cost_model, target))
    whole_layers = describe_model(reference_model(supernet), (1, *supernet.space.input_shape))
    return LatencyTable(
        *price_pieces(cell_pieces(supernet), whole_layers, cost_model, target, reference_indices(supernet))
    )


def reference_indices(supernet: Any) -> list[int]:
    """The network priced whole to find what every network pays: the first candidate of every
    block; in the cell space, every edge kept with its first op that is not `none`."""
    if isinstance(supernet, CellSupernet):
        first = next(o for o, op in enumerate(supernet.space.ops) if op != "none")
        return [first] * len(supernet.choices)
    return [0] * len(supernet.choices)


def reference_model(supernet: Any) -> Any:
    """The PyTorch model of `reference_indices` (untrained weights)."""
    if isinstance(supernet, CellSupernet):
        from adl.passes.nas.cell_modules import build

        return build(supernet.space, None, reference_indices(supernet))
    indices = reference_indices(supernet)
    return supernet.space.build(Architecture(supernet.width, tuple(c[i] for c, i in zip(supernet.choices, indices))))


def cell_pieces(supernet: CellSupernet) -> list[list[list[list[LayerDesc]]]]:
    """Per decision (edge of the normal, then the reduction cell), per op: the layers of that
    op in every cell of that type."""
    from adl.passes.nas.cell_modules import describe_op

    space, n_edges = supernet.space, len(supernet.space.edges)
    described: dict[tuple, list[LayerDesc]] = {}
    pieces: list[list[list[list[LayerDesc]]]] = [[[] for _ in space.ops] for _ in range(2 * n_edges)]
    for cell in space.layout():
        h, w = cell["hw"]
        for e, (_, j) in enumerate(space.edges):
            stride = 2 if cell["reduction"] and j < 2 else 1
            hw = (h, w) if j < 2 or not cell["reduction"] else (-(-h // 2), -(-w // 2))
            for o, op in enumerate(space.ops):
                key = (op, cell["c"], hw, stride)
                if key not in described:
                    described[key] = describe_op(op, cell["c"], hw, stride)
                pieces[e + (n_edges if cell["reduction"] else 0)][o].append(described[key])
    return pieces


class PricedSupernet:
    """A supernet as `Pass.search_space` hands it to `adl hw lut --space`: its candidates priced by a
    cost model (a measured one measures what its table lacks) and its first network for calibration."""

    def __init__(self, supernet: Any) -> None:
        self.supernet = supernet
        self.description = f"the first network of {supernet.space}"

    def price(self, cost_model: Any, target: TargetSpec) -> None:
        price_candidates(self.supernet, cost_model, target)

    def reference_network(self) -> Any:
        return reference_model(self.supernet)
