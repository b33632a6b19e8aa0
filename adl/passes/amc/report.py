"""The `amc` section of the artifact's reports: the search, what it kept, and the fraction of
each channel group kept (a plot and a table)."""

from __future__ import annotations

from typing import Any

from adl.ir.report import Figure, Section, Table


def sections(amc: dict[str, Any]) -> list[Section]:
    budgets = ", ".join(f"{resource} <= {fraction:.0%}" for resource, fraction in amc["budgets"].items())
    kept = ", ".join(f"{resource} {fraction:.1%}" for resource, fraction in amc["kept"].items())
    summary = (
        f"Search `{amc['search']}` ({amc['episodes']} episodes, reward `{amc['reward']}`) under {budgets}: "
        f"kept {kept} ({'budget met' if amc['budget_met'] else 'budget NOT met'}); validation accuracy "
        f"{amc['val_accuracy_unpruned']:.4f} -> {amc['val_accuracy_pruned']:.4f} before fine-tuning, test "
        f"accuracy {amc['finetune']['test_accuracy']:.4f} after {amc['finetune']['epochs']} epochs."
    )
    rows = [(group, kept_, size, f"{_ratio(amc, group):.3f}") for group, (kept_, size) in amc["channels"].items()]
    return [
        Section(
            "Channel pruning (`amc`)",
            [summary, _ratios_plot(amc), Table(["channel group", "kept", "of", "ratio"], rows)],
        )
    ]


def _ratio(amc: dict[str, Any], group: str) -> float:
    kept, size = amc["channels"][group]
    return amc["ratios"].get(group, kept / size)


def _ratios_plot(amc: dict[str, Any]) -> Figure:
    groups = list(amc["channels"])

    def draw(ax: Any) -> None:
        ax.bar(range(len(groups)), [_ratio(amc, g) for g in groups], color="tab:blue")
        ax.set_xticks(range(len(groups)), groups, rotation=60, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("channels kept")

    return Figure("Fraction of each channel group kept by the AMC policy", draw)
