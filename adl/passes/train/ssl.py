"""Structured Sparsity Learning (Wen et al., "Learning Structured Sparsity in Deep Neural
Networks", NeurIPS 2016): group lasso on whole filters and whole input channels, so that
training zeros structures a compiler can remove for a real speedup.

The groups are the network's prunable channel groups (`adl.passes.channels`), the same units
`shrink` and `amc` remove, so every group that reaches zero is one channel fewer:

- a *filter* group of channel i is everything that produces it: row i of every convolution,
  depthwise convolution and Linear of the group (bias included) and of every BatchNorm on it
  (weight and bias). When it is zero the channel's output is exactly 0 (after any activation
  with f(0) = 0), whatever the input: removing it changes nothing downstream.
- a *channel* group of channel i is everything that reads it: column i (H*W columns after a
  flatten) of every convolution and Linear that consumes the group. When it is zero nothing
  depends on the channel.

Residual additions tie channels of several layers into one group, so a channel group spans
every layer of the tie. The penalty is R(W) = filters * sum_g ||W_g|| + channels * sum_g ||W_g||
(Euclidean norms, one per group, unscaled as in the paper). Two ways to minimise it:

- `proximal` (default): after each optimizer step, each group is shrunk by the group-lasso
  proximal operator, W_g <- W_g * max(0, 1 - lr * lambda / ||W_g||): groups reach exact zeros.
- `subgradient`: the penalty is added to the loss and differentiated (the paper's SGD form;
  the subgradient at a zero group is taken as 0). Groups approach zero without reaching it;
  `shrink { threshold = ... }` then removes the near-zero ones.

With an adaptive optimizer (Adam) every step moves a weight by about lr, so a zeroed group of
n weights is pushed back to a norm near lr * sqrt(n): lambda must exceed about sqrt(n) for
the proximal step to keep it at zero. SGD (the paper's optimizer) has no such floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from adl.passes.channels import ChannelGraph, Segment
from adl.passes.train.objective import Term

SSL_STEPS = ("proximal", "subgradient")


@dataclass(frozen=True, eq=False)
class _Slice:
    """The part of a parameter that belongs to `size` channels of group `group`: `positions`
    along `axis`, `unit` consecutive positions per channel."""

    param: nn.Parameter
    axis: int
    positions: torch.Tensor
    group: int
    size: int
    unit: int


@dataclass
class GroupSet:
    """Filter or channel groups: for each prunable channel group, one lasso group per channel."""

    kind: str  # filters | channels
    slices: list[_Slice]
    sizes: dict[int, int]  # channel group -> channels

    def squared_norms(self) -> dict[int, torch.Tensor]:
        """Per channel group, each channel's squared Euclidean norm (differentiable)."""
        norms = {g: None for g in self.sizes}
        for s in self.slices:
            dims = [d for d in range(s.param.dim()) if d != s.axis]
            per_position = s.param.pow(2).sum(dim=dims) if dims else s.param.pow(2)
            part = per_position.index_select(0, s.positions).view(s.size, s.unit).sum(1)
            norms[s.group] = part if norms[s.group] is None else norms[s.group] + part
        return {g: n for g, n in norms.items() if n is not None}

    def penalty(self) -> torch.Tensor:
        """sum over lasso groups of ||W_g||; the subgradient at ||W_g|| = 0 is 0."""
        total = torch.zeros((), dtype=torch.float64)
        for sq in self.squared_norms().values():
            # sqrt's derivative 1 / (2 sqrt(x)) times d(x)/dW = 2W = 0 at a zero group: 0, not NaN
            total = total + sq.clamp_min(1e-30).sqrt().sum().to(torch.float64)
        return total

    @torch.no_grad()
    def shrink(self, threshold: float) -> None:
        """The group-lasso proximal operator with step `threshold` (= lr * lambda)."""
        for g, sq in self.squared_norms().items():
            norm = sq.sqrt()
            scale = torch.clamp(1.0 - threshold / norm.clamp_min(1e-30), min=0.0)
            for s in self.slices:
                if s.group != g:
                    continue
                factor = scale.repeat_interleave(s.unit)
                shape = [1] * s.param.dim()
                shape[s.axis] = -1
                kept = s.param.index_select(s.axis, s.positions) * factor.view(shape).to(s.param.dtype)
                s.param.index_copy_(s.axis, s.positions, kept)

    @torch.no_grad()
    def norms(self) -> dict[int, np.ndarray]:
        return {g: sq.sqrt().double().numpy() for g, sq in self.squared_norms().items()}


def _positions(segments: Sequence[Segment], prunable: set[int]) -> list[tuple[int, torch.Tensor, int, int]]:
    """(group, positions, channels, unit) of each prunable group's run along an axis laid out as `segments`."""
    out, offset = [], 0
    for seg in segments:
        span = seg.size * seg.unit
        if seg.group in prunable:
            out.append((seg.group, torch.arange(offset, offset + span), seg.size, seg.unit))
        offset += span
    return out


def _layout_slices(
    param: nn.Parameter | None, layout_segments: Sequence[Segment], axis: int, prunable: set[int]
) -> list[_Slice]:
    if param is None:
        return []
    return [_Slice(param, axis, pos, g, size, unit) for g, pos, size, unit in _positions(layout_segments, prunable)]


def group_sets(model: nn.Module, graph: ChannelGraph) -> tuple[GroupSet, GroupSet]:
    """The filter and channel lasso groups of `model`, whose channel groups `graph` found (on
    `model` or a copy of it: parameters are looked up by module name in `model`)."""
    prunable = {g.index for g in graph.prunable}
    sizes = {g.index: g.size for g in graph.prunable}
    filters: list[_Slice] = []
    channels: list[_Slice] = []
    for name, layout in graph.layouts.items():
        module = model.get_submodule(name)
        if layout.kind in ("conv", "linear", "dwconv", "bn"):
            filters += _layout_slices(getattr(module, "weight", None), layout.rows, 0, prunable)
            filters += _layout_slices(getattr(module, "bias", None), layout.rows, 0, prunable)
        if layout.kind in ("conv", "linear"):
            channels += _layout_slices(module.weight, layout.cols, 1, prunable)
    return GroupSet("filters", filters, sizes), GroupSet("channels", channels, _consumed(sizes, channels))


def _consumed(sizes: Mapping[int, int], slices: Sequence[_Slice]) -> dict[int, int]:
    """The channel groups some convolution or Linear reads (only those have channel lasso groups)."""
    read = {s.group for s in slices}
    return {g: n for g, n in sizes.items() if g in read}


class SSL(Term):
    """The group-lasso term of `train { regularizer = ssl(filters = l1, channels = l2, step) }`."""

    name = "ssl"

    def __init__(self, filters: float, channels: float, step: str, input_shape: Sequence[int]) -> None:
        if step not in SSL_STEPS:
            raise ValueError(f"unknown ssl step {step!r}; known: {', '.join(SSL_STEPS)}")
        self.strengths = {"filters": filters, "channels": channels}
        self.step = step
        self.input_shape = tuple(input_shape)
        self.sets: list[GroupSet] = []

    def attach(self, model: nn.Module) -> None:
        graph = ChannelGraph(model, (1, *self.input_shape))
        self.sets = [s for s in group_sets(model, graph) if self.strengths[s.kind] > 0 and s.sizes]

    def penalty(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        if self.step != "subgradient" or not self.sets:
            return None
        total = sum(self.strengths[s.kind] * s.penalty() for s in self.sets)
        return total.to(logits.dtype)

    def after_step(self, lr: float) -> None:
        if self.step == "proximal":
            for s in self.sets:
                s.shrink(lr * self.strengths[s.kind])

    def epoch_record(self) -> dict[str, float]:
        record: dict[str, float] = {}
        for s in self.sets:
            norms = np.concatenate(list(s.norms().values()))
            record[f"ssl_zero_{s.kind}"] = float((norms == 0).sum())
            record[f"ssl_{s.kind}"] = float(norms.size)
        return record

    def detach(self) -> None:
        self.sets = []
