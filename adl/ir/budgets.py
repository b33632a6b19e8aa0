"""Checking budgets against what was measured: the type checker's verdicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from adl.ir.options import BASE_UNIT, UNITS
from adl.ir.spec import Budget

# budget metric -> key of Module.metrics holding the measured value (in base units)
METRIC_KEYS = {
    "latency": "latency_s",
    "size": "size_bytes",
    "accuracy": "accuracy",
    "flops": "flops",
    "params": "params",
}


@dataclass(frozen=True)
class Verdict:
    budget: Budget
    measured: float | None  # None: nothing in the pipeline measured this metric

    @property
    def holds(self) -> bool:
        return self.measured is not None and self.budget.holds(self.measured)

    @property
    def measured_text(self) -> str:
        return "not measured" if self.measured is None else format_quantity(self.measured, self.budget)

    @property
    def margin_text(self) -> str:
        if self.measured is None:
            return f"no pass measured {self.budget.metric}"
        margin = self.budget.margin(self.measured)
        amount = format_quantity(abs(margin), self.budget)
        return f"{amount} to spare" if self.holds else f"misses by {amount}"

    def as_dict(self) -> dict[str, Any]:
        b = self.budget
        return {
            "metric": b.metric,
            "op": b.op,
            "bound": b.value,
            "bound_text": b.text,
            "measured": self.measured,
            "measured_text": self.measured_text,
            "holds": self.holds,
            "margin": self.margin_text,
        }


def format_quantity(value: float, budget: Budget) -> str:
    """`value` (base units) in the unit the budget was written in, e.g. 0.000131 s -> '0.131 ms'."""
    unit = budget.unit
    if unit is None:
        if budget.metric == "accuracy":
            return f"{value * 100:.2f} %"
        base = BASE_UNIT.get({"latency": "time", "size": "bytes", "flops": "flops"}.get(budget.metric, ""), "")
        return f"{value:.4g} {base}".strip()
    factor = UNITS[unit][1]
    return f"{value / factor:.4g} {unit}"


def evaluate(budgets: Sequence[Budget], metrics: Mapping[str, Any]) -> list[Verdict]:
    out = []
    for budget in budgets:
        measured = metrics.get(METRIC_KEYS[budget.metric])
        out.append(Verdict(budget, None if measured is None else float(measured)))
    return out
