"""Finding the channels training zeroed and removing them: a smaller dense network whose output
is the same (exactly zero groups) or nearly so (groups below a threshold)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import fx, nn

from adl.passes.channels import ChannelGraph
from adl.passes.train.ssl import group_sets


@dataclass
class Removal:
    """What `remove_zeroed` did: per channel group (by name) [kept, of, zeroed] and the network."""

    model: fx.GraphModule | nn.Module
    channels: dict[str, list[int]] = field(default_factory=dict)
    zeroed: int = 0  # channels found zero, over all prunable groups
    prunable: int = 0  # channels in prunable groups


def zeroed_channels(model: nn.Module, graph: ChannelGraph, threshold: float) -> dict[int, np.ndarray]:
    """Per prunable group, a boolean per channel: its filters (everything producing it) or its
    input channels (everything reading it) have a norm <= `threshold` x the group's largest one
    (`threshold` = 0: exactly zero)."""
    filters, channels = group_sets(model, graph)
    zero = {g.index: np.zeros(g.size, dtype=bool) for g in graph.prunable}
    for lasso in (filters, channels):
        for g, norms in lasso.norms().items():
            zero[g] |= norms <= threshold * norms.max() if threshold > 0 else norms == 0
    return zero


def _keep(zero: np.ndarray, multiple: int) -> np.ndarray:
    """The channels a group keeps: its nonzero ones, padded with zero ones up to a multiple of
    `multiple` (never more than the group has, never none)."""
    alive = np.flatnonzero(~zero)
    want = min(len(zero), max(multiple, math.ceil(len(alive) / multiple) * multiple))
    padding = np.flatnonzero(zero)[: max(0, want - len(alive))]
    return np.sort(np.concatenate([alive, padding]).astype(np.int64))


def remove_zeroed(model: nn.Module, input_shape: Sequence[int], threshold: float, multiple: int) -> Removal:
    """`model` without the channels `zeroed_channels` finds, each group's count rounded up to
    `multiple` (kept zero channels change nothing); a copy, `model` is left as it is."""
    graph = ChannelGraph(model, (1, *input_shape))
    zero = zeroed_channels(model, graph, threshold)
    keep: dict[int, Any] = {}
    record: dict[str, list[int]] = {}
    for group in graph.prunable:
        kept = _keep(zero[group.index], multiple)
        record[group.name] = [len(kept), group.size, int(zero[group.index].sum())]
        if len(kept) < group.size:
            keep[group.index] = kept
    pruned = graph.prune(keep) if keep else model
    zeroed = int(sum(z.sum() for z in zero.values()))
    return Removal(pruned, record, zeroed, int(sum(len(z) for z in zero.values())))


def output_change(before: nn.Module, after: nn.Module, x: np.ndarray) -> float:
    """The largest absolute change of the logits on `x` over their largest magnitude (eval mode)."""
    before.eval()
    after.eval()
    with torch.inference_mode():
        inputs = torch.from_numpy(x)
        old, new = before(inputs), after(inputs)
    return float((old - new).abs().max() / old.abs().max().clamp_min(1e-30))
