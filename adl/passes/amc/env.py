"""The AMC environment: one episode decides the kept channels of every prunable group, in order.

State (He et al. 2018, section 3.2), one vector per decision, every entry in [0, 1]:

    t, type (conv 0 / linear 1), in channels, out channels, input h, input w, stride, kernel,
    FLOPs of the layers the group sizes, FLOPs reduced so far, FLOPs of the layers after t,
    previous action

The static entries are min-max normalised over the decisions; the FLOPs entries are
fractions of the network's FLOPs. The action is the fraction of the group's channels to
keep. Resource-constrained episodes: before it is applied, the action is clipped to the
largest keep count for which the budget can still be met if every later group is cut to its
minimum -- so the last decision always lands within the budget. Rewards: validation
accuracy of the pruned network without fine-tuning (`acc`), or AMC's -error * log(FLOPs)
(`flops`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from adl.ir.layers import LayerDesc
from adl.passes.channels import ChannelGraph, LayerTable
from adl.passes.rl.ddpg import Step

RESOURCES = ("flops", "params", "latency")
REWARDS = ("acc", "flops")
STATE_DIM = 12


@dataclass(frozen=True)
class PolicyScore:
    """How a pruned network does on the validation images: top-1 accuracy (the reward) and
    mean cross-entropy (what breaks ties between policies of equal accuracy)."""

    accuracy: float
    loss: float


class BudgetError(ValueError):
    """No policy can meet the budget (even the smallest allowed network exceeds it)."""


class Resources:
    """What channel counts cost, per resource; `limits` are the budgets (fraction x unpruned cost).

    FLOPs and parameters are exact and vectorised (`LayerTable`); latency is the cost model's
    prediction for the re-derived `LayerDesc`s, cached per configuration.
    """

    def __init__(
        self,
        table: LayerTable,
        fractions: Mapping[str, float],
        latency: Callable[[Sequence[LayerDesc]], float] | None = None,
    ) -> None:
        unknown = set(fractions) - set(RESOURCES)
        if unknown:
            raise ValueError(f"unknown resources {sorted(unknown)}; known: {', '.join(RESOURCES)}")
        if "latency" in fractions and latency is None:
            raise ValueError("a latency budget needs a latency model")
        self.table = table
        self.fractions = dict(fractions)
        self._latency = latency
        self._cache: dict[tuple[int, ...], float] = {}
        self.full = self.cost(table.full_counts, list(fractions) or ["flops"])
        self.limits = {r: f * self.full[r] for r, f in self.fractions.items()}

    def cost(self, counts: np.ndarray, resources: Sequence[str] | None = None) -> dict[str, float]:
        out = {}
        for resource in resources if resources is not None else self.fractions:
            if resource == "flops":
                out[resource] = float(self.table.flops_per_layer(counts).sum())
            elif resource == "params":
                out[resource] = float(self.table.params_per_layer(counts).sum())
            else:
                key = tuple(int(c) for c in counts)
                if key not in self._cache:
                    assert self._latency is not None
                    self._cache[key] = float(self._latency(self.table.descs(counts)))
                out[resource] = self._cache[key]
        return out

    def within(self, counts: np.ndarray) -> bool:
        cost = self.cost(counts)
        return all(cost[r] <= self.limits[r] * (1 + 1e-9) for r in self.limits)


def keep_grid(size: int, min_keep: float, multiple: int) -> np.ndarray:
    """Allowed kept-channel counts of a group: multiples of `multiple` from ceil(min_keep * size) up,
    and the full size."""
    low = max(1, math.ceil(min_keep * size))
    values = {size} | {m for m in range(multiple, size, multiple) if m >= low}
    if not any(v < size for v in values) and low < size:
        values.add(low)
    return np.array(sorted(values), np.int64)


@dataclass
class Decision:
    """One prunable group in the episode's order, with its static features."""

    group: int
    size: int
    grid: np.ndarray
    features: np.ndarray  # t, type, cin, cout, h, w, stride, kernel, flops (raw, normalised later)


class AmcEnv:
    state_dim = STATE_DIM

    def __init__(
        self,
        graph: ChannelGraph,
        resources: Resources,
        evaluate: Callable[[torch.nn.Module], PolicyScore],
        *,
        reward: str = "acc",
        min_keep: float = 0.2,
        multiple: int = 1,
        criterion: str = "l1",
        reconstruct: Callable | None = None,
    ) -> None:
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; known: {', '.join(REWARDS)}")
        self.graph, self.resources, self.evaluate = graph, resources, evaluate
        self.reward_kind, self.criterion, self.reconstruct = reward, criterion, reconstruct
        table = resources.table
        self.order = [g.index for g in graph.prunable]
        if not self.order:
            raise BudgetError(f"the model has no prunable channels: {graph.fixed_summary()}")
        layers = {layer.name: layer for layer in table.layers}
        flops_full = table.flops_full
        self.total_flops = float(flops_full.sum())
        self.decisions: list[Decision] = []
        raw = []
        for t, g in enumerate(self.order):
            group = graph.groups[g]
            producer = layers[group.producers[0]]
            is_linear = producer.op == "linear"
            h, w = (1, 1) if is_linear else producer.input_shape[2:4]
            cin = producer.input_shape[-1] if is_linear else producer.input_shape[1]
            raw.append(
                [
                    t,
                    float(is_linear),
                    cin,
                    group.size,
                    h,
                    w,
                    producer.stride[0],
                    producer.kernel[0],
                    float(flops_full[table.depends[:, g]].sum()),
                ]
            )
            self.decisions.append(Decision(g, group.size, keep_grid(group.size, min_keep, multiple), np.zeros(0)))
        raw_array = np.array(raw, np.float64)
        span = raw_array.max(0) - raw_array.min(0)
        normalised = np.where(span > 0, (raw_array - raw_array.min(0)) / np.where(span > 0, span, 1), 0.0)
        for decision, row in zip(self.decisions, normalised):
            decision.features = row
        # the last decision that changes each layer's cost; "FLOPs after t" = layers decided later
        position = {g: t for t, g in enumerate(self.order)}
        self.layer_owner = np.array(
            [max((position[g] for g in np.flatnonzero(row) if g in position), default=-1) for row in table.depends]
        )
        self.min_counts = table.full_counts.copy()
        for d in self.decisions:
            self.min_counts[d.group] = d.grid[0]
        if not resources.within(self.min_counts):
            cost = resources.cost(self.min_counts)
            worst = ", ".join(
                f"{r} {cost[r] / resources.full[r]:.1%} of the unpruned model (budget {resources.fractions[r]:.1%})"
                for r in resources.limits
            )
            raise BudgetError(
                f"the budget cannot be met: cutting every prunable group to its minimum "
                f"({min_keep:.0%} of its channels) still costs {worst}"
            )
        self.reset()

    # -- the episode ---------------------------------------------------------------------------

    def reset(self) -> np.ndarray:
        self.t = 0
        self.counts = self.resources.table.full_counts.copy()
        self.previous = 1.0
        return self._state()

    def _state(self) -> np.ndarray:
        t = min(self.t, len(self.decisions) - 1)
        flops = self.resources.table.flops_per_layer(self.counts).sum()
        reduced = (self.total_flops - flops) / self.total_flops
        rest = float(self.resources.table.flops_full[self.layer_owner > t].sum()) / self.total_flops
        return np.concatenate([self.decisions[t].features, [reduced, rest, self.previous]]).astype(np.float32)

    def max_feasible(self) -> int:
        """The largest allowed count for the current group that leaves the budget reachable."""
        decision = self.decisions[self.t]
        trial = self.counts.copy()
        for later in self.decisions[self.t + 1 :]:
            trial[later.group] = later.grid[0]
        for count in decision.grid[::-1]:
            trial[decision.group] = count
            if self.resources.within(trial):
                return int(count)
        raise AssertionError("unreachable: the previous step left the budget reachable")

    def clip(self, action: float) -> int:
        """The kept count for `action` (a keep fraction), clipped to the grid and to the budget."""
        decision = self.decisions[self.t]
        allowed = decision.grid[decision.grid <= self.max_feasible()]
        return int(allowed[np.argmin(np.abs(allowed - action * decision.size))])

    def step(self, action: float) -> Step:
        decision = self.decisions[self.t]
        count = self.clip(float(action))
        self.counts[decision.group] = count
        applied = count / decision.size
        self.previous = applied
        self.t += 1
        if self.t < len(self.decisions):
            return Step(self._state(), 0.0, False, applied)
        info = self.finish(self.counts)
        return Step(np.zeros(self.state_dim, np.float32), info["reward"], True, applied, info)

    def finish(self, counts: np.ndarray) -> dict:
        """Prune to `counts`, score it, and describe it (the reward included)."""
        model = self.build(counts)
        score = self.evaluate(model)
        flops = float(self.resources.table.flops_per_layer(counts).sum())
        reward = score.accuracy if self.reward_kind == "acc" else -(1.0 - score.accuracy) * math.log(flops)
        return {
            "reward": reward,
            "accuracy": score.accuracy,
            "loss": score.loss,
            "counts": [int(c) for c in counts],
            "cost": self.resources.cost(counts, list(self.resources.fractions)) | {"flops": flops},
        }

    def build(self, counts: np.ndarray) -> torch.nn.Module:
        keep = self.graph.select(
            {d.group: int(counts[d.group]) for d in self.decisions if counts[d.group] < d.size}, self.criterion
        )
        return self.graph.prune(keep, self.reconstruct)

    # -- fixed policies ------------------------------------------------------------------------

    def uniform_counts(self) -> np.ndarray:
        """Uniform pruning: the same keep fraction for every group, the largest that meets the budget
        (each group's count the nearest on its grid)."""

        def counts_at(ratio: float) -> np.ndarray:
            counts = self.resources.table.full_counts.copy()
            for d in self.decisions:
                counts[d.group] = d.grid[np.argmin(np.abs(d.grid - ratio * d.size))]
            return counts

        low, high = 0.0, 1.0
        if self.resources.within(counts_at(1.0)):
            return counts_at(1.0)
        for _ in range(40):
            middle = (low + high) / 2
            low, high = (middle, high) if self.resources.within(counts_at(middle)) else (low, middle)
        return counts_at(low)

    def ratios(self, counts: np.ndarray) -> dict[str, float]:
        """Per prunable group (named by the layer producing it) the fraction of channels kept."""
        return {self.graph.groups[d.group].name: round(float(counts[d.group]) / d.size, 4) for d in self.decisions}
