"""The `hpo` section of the artifact's reports: the search, the chosen values, every trial."""

from __future__ import annotations

from typing import Any, Mapping

from adl.ir.report import Figure, Section, Table

_COLOURS = {"complete": "tab:blue", "pruned": "tab:orange", "fail": "tab:red", "diverged": "tab:purple"}


def sections(hpo: Mapping[str, Any]) -> list[Section]:
    trials = hpo["trials"]
    counts = {state: sum(t["state"] == state for t in trials) for state in _COLOURS}
    best = hpo["best"]
    chosen = ", ".join(f"`{path} = {_show(value)}`" for path, value in best["params"].items())
    summary = (
        f"Searched {len(hpo['space'])} domains of `{hpo['searched']}` with `{hpo['sampler']}` "
        f"(pruner `{hpo['pruner']}`) on `{hpo['executor']}`: {len(trials)} trials "
        f"({', '.join(f'{n} {state}' for state, n in counts.items() if n)}) in {hpo['seconds'] / 60:.1f} min. "
        f"Objective: {hpo['objective']}. Trial {best['trial']} won with validation accuracy "
        f"{best['val_accuracy']:.4f}: {chosen}."
    )
    space = Table(
        ["option", "domain", "chosen"], [(p, d, _show(best["params"].get(p))) for p, d in hpo["space"].items()]
    )
    paths = list(hpo["space"])
    rows = [
        (
            t["number"],
            t["state"],
            "" if t["value"] is None else f"{t['value']:.4f}",
            len(t["val_accuracy_per_epoch"]),
            *(_show(t["params"].get(p)) for p in paths),
        )
        for t in sorted(trials, key=lambda t: (t["value"] is None, -(t["value"] or 0.0), t["number"]))
    ]
    table = Table(["trial", "state", "val accuracy", "epochs run", *paths], rows)
    return [Section("Hyperparameter search (`hpo`)", [summary, space, _trials_plot(hpo), table])]


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _trials_plot(hpo: Mapping[str, Any]) -> Figure:
    trials = hpo["trials"]

    def draw(ax: Any) -> None:
        for state, colour in _COLOURS.items():
            points = [(t["number"], _last(t)) for t in trials if t["state"] == state and _last(t) is not None]
            if points:
                ax.scatter(*zip(*points), s=18, color=colour, label=state)
        best, line = float("-inf"), []
        for t in sorted(trials, key=lambda t: t["number"]):
            if t["state"] == "complete" and t["value"] is not None:
                best = max(best, t["value"])
            line.append((t["number"], best if best > float("-inf") else None))
        line = [(n, v) for n, v in line if v is not None]
        if line:
            ax.step(*zip(*line), where="post", color="black", linewidth=1, label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=7, loc="lower right")

    return Figure("Each trial's validation accuracy at its last epoch (pruned trials: where they stopped)", draw)


def _last(trial: Mapping[str, Any]) -> float | None:
    curve = trial["val_accuracy_per_epoch"]
    return trial["value"] if trial["value"] is not None else (curve[-1] if curve else None)
