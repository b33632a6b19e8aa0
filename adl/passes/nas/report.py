"""The `nas` section of the artifact's reports: the strategy and the found architecture, the
search trajectory against the latency budget (a plot), and the genotype."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adl.ir.report import Block, Figure, Section, Table


def sections(nas: dict[str, Any]) -> list[Section]:
    blocks: list[Block] = [_summary(nas)]
    history = [row for row in nas.get("history") or [] if "expected_latency_s" in row and "val_accuracy" in row]
    if history:
        blocks.append(_trajectory(nas, history))
    blocks += _genotype_tables(nas["genotype"])
    if nas.get("history"):
        last = nas["history"][-1]
        blocks.append(
            f"Last search epoch ({last['epoch']}): validation accuracy {last['val_accuracy']:.4f}, "
            f"expected latency {last['expected_latency_s'] * 1e6:.4g} us."
        )
    return [Section("Architecture search (`nas`)", blocks)]


def _summary(nas: dict[str, Any]) -> str:
    budget = nas.get("latency_budget_s")
    verdict = f" (budget {budget * 1e6:.4g} us: {'met' if nas['budget_met'] else 'NOT met'})." if budget else "."
    return (
        f"Strategy `{nas['strategy']}` over `{nas['space']}`; the found architecture's predicted latency: "
        f"{nas['predicted_latency_s'] * 1e6:.4g} us" + verdict
    )


def _genotype_tables(genotype: dict[str, Any]) -> list[Block]:
    if "blocks" in genotype:
        return [Table(["block", "op"], list(enumerate(genotype["blocks"])))]
    blocks: list[Block] = []
    for cell in ("normal", "reduce"):
        blocks += [
            f"{cell} cell:",
            Table(["node", "inputs (op(state))"], [(i, ", ".join(node)) for i, node in enumerate(genotype[cell])]),
        ]
    return blocks


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten in both latency (lower) and accuracy (higher), by latency."""
    front, best = [], -1.0
    for latency, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((latency, accuracy))
            best = accuracy
    return front


def _trajectory(nas: dict[str, Any], history: list[dict[str, Any]]) -> Figure:
    points = [(row["expected_latency_s"] * 1e6, row["val_accuracy"]) for row in history]

    def draw(ax: Any) -> None:
        ax.scatter(*zip(*points), s=18, c=range(len(points)), cmap="viridis", label="per search epoch")
        ax.step(*zip(*pareto(points)), where="post", color="tab:orange", label="Pareto front")
        ax.scatter(
            [nas["predicted_latency_s"] * 1e6],
            [history[-1]["val_accuracy"]],
            marker="*",
            s=200,
            color="tab:red",
            label="chosen",
            zorder=3,
        )
        if nas.get("latency_budget_s"):
            ax.axvline(nas["latency_budget_s"] * 1e6, color="grey", linestyle="--", label="budget")
        ax.set_xlabel("latency (us)")
        ax.set_ylabel("validation accuracy (shared weights)")
        ax.legend(fontsize=8)

    return Figure(
        "NAS accuracy vs latency: each epoch's derived architecture (expected latency of the architecture "
        "distribution), the Pareto front, and the chosen network",
        draw,
    )
