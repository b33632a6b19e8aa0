"""Splitting the spec's latency budget between the passes of a pipeline.

A pipeline that searches an architecture and then compresses it should not make the search
meet the final budget alone: pruning and quantization will make the network faster still.
Each pass says what fraction of the latency it expects to leave (`Pass.latency_factor`: `amc
{ flops = 70 % }` ~ 0.7, a `haq` latency budget its fraction; 1.0 for passes that do not
compress), and a pass that searches against the budget (`Pass.searches_latency`: `nas`) gets

    its share = spec latency budget / product of the factors of the passes after it

so with no compression pass after it, the search gets the whole budget. The final library
is always checked against the spec's own budget. The plan goes into the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from adl.ir.spec import Budget, Spec

__all__ = ["BudgetPlan", "Share", "latency_budget", "plan_budgets"]


@dataclass(frozen=True)
class Share:
    pass_index: int
    pass_name: str
    metric: str
    value: float  # in the metric's base unit (seconds)
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "pass": self.pass_name,
            "index": self.pass_index,
            "metric": self.metric,
            "value": self.value,
            "why": self.why,
        }


@dataclass(frozen=True)
class BudgetPlan:
    shares: tuple[Share, ...] = field(default_factory=tuple)

    def for_pass(self, index: int) -> dict[str, float]:
        return {s.metric: s.value for s in self.shares if s.pass_index == index}

    def as_list(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.shares]


def latency_budget(spec: Spec) -> Budget | None:
    """The spec's upper latency budget, if it declares one."""
    return next((b for b in spec.budgets if b.metric == "latency" and b.is_upper), None)


def plan_budgets(spec: Spec, passes: Sequence[Any]) -> BudgetPlan:
    """Each latency-searching pass's share of the spec's latency budget."""
    budget = latency_budget(spec)
    if budget is None:
        return BudgetPlan()
    shares = []
    for index, p in enumerate(passes):
        if not p.searches_latency:
            continue
        later = [(q, q.latency_factor(spec)) for q in passes[index + 1 :]]
        compressing = [(q, f) for q, f in later if f < 1.0]
        factor = 1.0
        for _, f in compressing:
            factor *= f
        if compressing:
            why = (
                f"spec latency {budget.op} {budget.text} / {factor:.3g} (expected from "
                + ", ".join(f"{q} x{f:.3g}" for q, f in compressing)
                + ")"
            )
        else:
            why = f"spec latency {budget.op} {budget.text}: no compression pass after it"
        shares.append(Share(index, p.name, "latency", budget.value / factor, why))
    return BudgetPlan(tuple(shares))
