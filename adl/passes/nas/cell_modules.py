"""PyTorch modules of the DARTS cell space (see `cells.py` for the ops and the wiring).

`build` makes the derived network and loads the JAX supernet's weights into it: each
convolution gets its kernel; the BatchNorms after convolutions and poolings (the supernet's
are affine=False) start at scale 1 and shift 0, so that in training mode the network computes
what the supernet's derived path does, and `to_torch` recalibrates their running
statistics; `train` fine-tunes it from there.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adl.passes.nas.cells import DROPPED, CellSpace, CellSupernet, Params


class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation, groups, bias=False), nn.BatchNorm2d(cout)
        )

    def load(self, p: Params) -> None:
        conv, bn = self[0], self[1]
        conv.weight.data = torch.from_numpy(np.ascontiguousarray(np.asarray(p["w"]).transpose(3, 2, 0, 1))).float()
        bn.weight.data.fill_(1.0)
        bn.bias.data.zero_()


class FactorizedReduce(nn.Module):
    """ReLU, then two stride-2 1x1 convolutions, the second on the input shifted by one pixel."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.a, self.b = ConvBN(cin, cout // 2, 1, 2), ConvBN(cin, cout - cout // 2, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return torch.cat([self.a(x), self.b(shifted)], dim=1)

    def load(self, p: Params) -> None:
        self.a.load(p["a"])
        self.b.load(p["b"])


class Zero(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride] * 0.0


class ReLUConvs(nn.Module):
    """ReLU then a chain of ConvBNs, repeated per group (sepK: two groups of depthwise + pointwise)."""

    def __init__(self, groups: Sequence[Sequence[ConvBN]], names: Sequence[Sequence[str]]) -> None:
        super().__init__()
        self.groups = nn.ModuleList(nn.ModuleList(g) for g in groups)
        self.names = [list(n) for n in names]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for group in self.groups:
            x = F.relu(x)
            for conv in group:
                x = conv(x)
        return x

    def load(self, p: Params) -> None:
        for group, names in zip(self.groups, self.names):
            for conv, name in zip(group, names):
                conv.load(p[name])


def op_module(op: str, c: int, stride: int) -> nn.Module:
    """The PyTorch module of one cell op on `c` channels."""
    if op.startswith("sep"):
        k = int(op[3:])
        return ReLUConvs(
            [[ConvBN(c, c, k, stride, groups=c), ConvBN(c, c, 1)], [ConvBN(c, c, k, 1, groups=c), ConvBN(c, c, 1)]],
            [["dw1", "pw1"], ["dw2", "pw2"]],
        )
    if op.startswith("dil"):
        k = int(op[3:])
        return ReLUConvs([[ConvBN(c, c, k, stride, dilation=2, groups=c), ConvBN(c, c, 1)]], [["dw", "pw"]])
    if op == "max3":
        return nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.BatchNorm2d(c))
    if op == "avg3":
        return nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False), nn.BatchNorm2d(c))
    if op == "skip":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    if op == "none":
        return Zero(stride)
    raise ValueError(f"unknown cell op {op!r}")


class Cell(nn.Module):
    def __init__(
        self, pre0: nn.Module, pre1: nn.Module, edges: Sequence[tuple[int, int]], ops: Sequence[nn.Module], nodes: int
    ) -> None:
        super().__init__()
        self.pre0, self.pre1, self.ops = pre0, pre1, nn.ModuleList(ops)
        self.edges, self.nodes = [tuple(e) for e in edges], nodes

    def forward(self, s_pp: torch.Tensor, s_p: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s_pp), self.pre1(s_p)]
        for i in range(self.nodes):
            terms = [op(states[j]) for (node, j), op in zip(self.edges, self.ops) if node == i]
            total = terms[0]
            for term in terms[1:]:
                total = total + term
            states.append(total)
        return torch.cat(states[2:], dim=1)


class CellNetwork(nn.Module):
    def __init__(self, stem: ConvBN, cells: Sequence[Cell], width: int, classes: int) -> None:
        super().__init__()
        self.stem, self.cells = stem, nn.ModuleList(cells)
        self.pool, self.classifier = nn.AdaptiveAvgPool2d(1), nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s_pp = s_p = self.stem(x)
        for cell in self.cells:
            s_pp, s_p = s_p, cell(s_pp, s_p)
        return self.classifier(torch.flatten(self.pool(s_p), 1))


class _ReLUConv(nn.Module):
    """ReLU and a 1x1 convolution: a cell input at the cell's resolution, to its width."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(x))

    def load(self, p: Params) -> None:
        self.conv.load(p)


def build(space: CellSpace, params: Params | None, indices: Sequence[int]) -> CellNetwork:
    """The network whose normal (reduction) cells keep edge e with op `indices[e]`
    (`indices[E + e]`), DROPPED edges left out; with `params`, carrying those weights."""
    n_edges = len(space.edges)
    cells = []
    for k, cell in enumerate(space.layout()):
        c, reduction = cell["c"], cell["reduction"]
        chosen = indices[n_edges:] if reduction else indices[:n_edges]
        pre0 = FactorizedReduce(cell["c_pp"], c) if cell["reduced_prev"] else _ReLUConv(cell["c_pp"], c)
        pre1 = _ReLUConv(cell["c_p"], c)
        kept, ops = [], []
        for e, (node, j) in enumerate(space.edges):
            if chosen[e] == DROPPED:
                continue
            op = op_module(space.ops[chosen[e]], c, 2 if reduction and j < 2 else 1)
            if params is not None and hasattr(op, "load"):
                op.load(params["cells"][k]["edges"][e][chosen[e]])
            kept.append((node, j))
            ops.append(op)
        if params is not None:
            pre0.load(params["cells"][k]["pre0"])
            pre1.load(params["cells"][k]["pre1"])
        cells.append(Cell(pre0, pre1, kept, ops, space.nodes))
    stem = ConvBN(space.input_shape[0], space.stem_multiplier * space.channels, 3)
    width = space.nodes * space.layout()[-1]["c"]
    network = CellNetwork(stem, cells, width, space.classes)
    if params is not None:
        stem.load(params["stem"])
        network.classifier.weight.data = torch.from_numpy(np.array(params["classifier"]["w"]).T.copy()).float()
        network.classifier.bias.data = torch.from_numpy(np.array(params["classifier"]["b"])).float()
    return network


def describe_op(op: str, c: int, hw: tuple[int, int], stride: int) -> list[Any]:
    """LayerDescs of one op alone, for pricing (dilation is not in a LayerDesc: a dilated
    depthwise convolution is priced as the dense-kernel one, which has the same work)."""
    from adl.ir.layers import describe_model

    return describe_model(op_module(op, c, stride), (1, c, *hw))


# -- the derived network in PyTorch ----------------------------------------------------------


def to_torch(
    supernet: CellSupernet, params: Params, indices: Sequence[int], calibration: np.ndarray, batch_size: int = 64
) -> Any:
    """The PyTorch network of the derived cells with the supernet's weights: in training mode it
    computes what `mixed_forward` computes with `derived_weights(indices)`; its BatchNorms'
    running statistics are recalibrated on `calibration` (NCHW inputs as the supernet saw them,
    in batches of `batch_size`), so that the eval-mode network normalises by its own statistics."""
    from adl.passes.nas.supernet import recalibrate_batch_norms

    model = build(supernet.space, params, indices)
    recalibrate_batch_norms(model, calibration, batch_size)
    return model.eval()
