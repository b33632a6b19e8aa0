"""The learned optimizer (L2O) against tuned Adam, RMSprop and SGD with momentum.

    python bench/l2o.py [--quick] [--out FILE] [--weights FILE] [--seeds N]

Tasks: the meta-training family on held-out problems (other seeds, and the digits subset
meta-training never saw: sigmoid MLP, CNN, random quadratics) and out-of-family ones (a
deeper, wider ReLU MLP; a tanh MLP). Every optimizer runs the same problems (one per seed:
initialization, quadratic, mini-batch sequence) for 2x the meta-training horizon; the loss is
the full-data training loss of the held-out subset (the paper's measure: how well the
optimizer minimizes). Each baseline's learning rate is the best of a grid on separate
tuning seeds, chosen once for the horizon and once for 2x the horizon, before any evaluation
seed is run. L2O gets no tuning. Reported per task: mean, std, median and geometric mean of the final loss
at the horizon and at 2x, the mean curve (plot), per-seed wins; then the per-step time of
L2O and Adam (jitted, same run, interleaved, medians) and of the torch adapter against
torch.optim.Adam.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
from provenance import provenance

from adl.passes.train.l2o import load_weights
from adl.passes.train.l2o.config import IN_FAMILY, OUT_OF_FAMILY, MetaConfig
from adl.passes.train.l2o.rule import l2o
from adl.passes.train.l2o.tasks import Task, make_task, rollout

# what the figures depend on (`python -m bench.status`): the rule, the shipped weights, the tasks, the data
MEASURES = ("bench/l2o.py", "adl/passes/train/l2o", "adl/data")
# `adl l2o meta-train --curves bench/results/l2o[_TASK]_meta_train.json` (then `python bench/provenance.py`) measures
# meta-training, whose output the weights are: not the weights themselves, nor this file
META_TRAINING = (
    "adl/passes/train/l2o/meta_train.py",
    "adl/passes/train/l2o/rule.py",
    "adl/passes/train/l2o/tasks.py",
    "adl/passes/train/l2o/config.py",
    "adl/passes/train/l2o/weights.py",
    "adl/data",
)
RESULT_MEASURES = {"l2o_meta_train": META_TRAINING, "l2o_quadratic_meta_train": META_TRAINING}
BASELINES = {
    "adam": optax.adam,
    "rmsprop": optax.rmsprop,
    "sgd_momentum": lambda lr: optax.sgd(lr, momentum=0.9),
}
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
TUNING_SEEDS = range(1000, 1005)


def _final(losses: np.ndarray) -> np.ndarray:
    """Final losses with diverged runs (NaN/inf) counted as +inf, so they never win."""
    return np.where(np.isfinite(losses), losses, np.inf)


def _stats(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    return {
        "mean": float(np.mean(values)) if len(finite) == len(values) else float("inf"),
        "std": float(np.std(finite)) if len(finite) else None,
        "median": float(np.median(values)),
        # the typical problem's loss (the mean is the hardest problems'): both are reported
        "geomean": float(np.exp(np.mean(np.log(values))))
        if len(finite) == len(values) and np.all(values > 0)
        else None,
        "diverged": int(len(values) - len(finite)),
        "per_seed": [float(v) for v in values],
    }


def bench_task(
    name: str,
    weights,
    horizon: int,
    seeds: list[int],
    grid: tuple[float, ...],
    tuning_seeds: list[int],
    specialist=None,
    task: Task | None = None,
) -> dict:
    """L2O (and, given `specialist` weights meta-trained on this task kind alone, as the paper
    trains one optimizer per family, that one too) against the tuned baselines on `name`
    (on its held-out digits subset), or on `task` when one is given."""
    task = task or make_task(name, "heldout")
    steps = 2 * horizon
    result: dict = {"tuning": {}, "final": {}, "curves": {}}
    chosen: dict[str, dict[int, float]] = {}
    for opt, make in BASELINES.items():
        tuned = rollout(task, make, grid, tuning_seeds, steps)  # (lrs, seeds, steps + 1)
        score = {t: _final(tuned[:, :, t]).mean(axis=1) for t in (horizon, steps)}
        chosen[opt] = {t: grid[int(np.argmin(score[t]))] for t in score}
        result["tuning"][opt] = {
            "grid": list(grid),
            **{f"mean_loss_at_{t}": [float(v) for v in score[t]] for t in score},
            **{f"best_lr_at_{t}": chosen[opt][t] for t in score},
        }
    learned = rollout(task, lambda scale: l2o(weights, scale=scale), (1.0,), seeds, steps)[0]
    runs = {"l2o": {horizon: learned, steps: learned}}  # untuned: one run serves both
    if specialist is not None:
        alone = rollout(task, lambda scale: l2o(specialist, scale=scale), (1.0,), seeds, steps)[0]
        runs["l2o_specialist"] = {horizon: alone, steps: alone}
    for opt, make in BASELINES.items():
        lrs = sorted(set(chosen[opt].values()))
        curves = rollout(task, make, lrs, seeds, steps)
        runs[opt] = {t: curves[lrs.index(chosen[opt][t])] for t in (horizon, steps)}
    for t in (horizon, steps):
        finals = {}
        for opt, by_t in runs.items():
            finals[opt] = _stats(_final(by_t[t][:, t]))
            if opt in BASELINES:
                finals[opt]["lr"] = chosen[opt][t]
        best = min(BASELINES, key=lambda o: finals[o]["mean"])
        l2o_final, best_final = finals["l2o"]["mean"], finals[best]["mean"]
        finals["best_baseline"] = best
        finals["l2o_over_best"] = l2o_final / best_final if np.isfinite(best_final) and best_final > 0 else None
        finals["l2o_beats_best"] = bool(l2o_final < best_final)
        finals["l2o_wins_per_seed"] = int(np.sum(_final(runs["l2o"][t][:, t]) < _final(runs[best][t][:, t])))
        if specialist is not None:
            alone = finals["l2o_specialist"]["mean"]
            finals["l2o_specialist_over_best"] = alone / best_final if best_final > 0 else None
            finals["l2o_specialist_beats_best"] = bool(alone < best_final)
        result["final"][f"step_{t}"] = finals
    for opt, by_t in runs.items():
        curves = by_t[horizon]  # the horizon-tuned baselines' curves, to 2x the horizon
        with np.errstate(invalid="ignore"):
            result["curves"][opt] = {
                "mean": [float(v) for v in np.mean(curves, axis=0)],
                "std": [float(v) for v in np.std(curves, axis=0)],
            }
    return result


def step_overhead(weights, repeats: int) -> dict:
    """Per-step wall-clock of one jitted training step (grad + update + apply), L2O vs Adam, same run."""
    out = {}
    for name in ("mlp", "cnn"):
        task = make_task(name, "heldout")
        params, instance = task.init(jax.random.key(0))
        fns = {}
        for opt, tx in (("l2o", l2o(weights)), ("adam", optax.adam(1e-2))):

            def step(params, state, key, tx=tx):
                grads = jax.grad(task.loss)(params, instance, key)  # noqa: B023 -- jitted and run in this iteration
                updates, state = tx.update(grads, state, params)
                return optax.apply_updates(params, updates), state

            fns[opt] = (jax.jit(step), tx.init(params))
        times: dict[str, list[float]] = {opt: [] for opt in fns}
        key = jax.random.key(1)
        for opt, (fn, state) in fns.items():  # noqa: B007 -- names the optimizer being warmed up
            jax.block_until_ready(fn(params, state, key))
        for _ in range(repeats):
            for opt, (fn, state) in fns.items():  # interleaved, so load changes hit both alike
                start = time.perf_counter()
                jax.block_until_ready(fn(params, state, key))
                times[opt].append(time.perf_counter() - start)
        med = {opt: statistics.median(v) for opt, v in times.items()}
        n = sum(leaf.size for leaf in jax.tree.leaves(params))
        out[name] = {"parameters": int(n), "median_step_s": med, "l2o_over_adam": med["l2o"] / med["adam"]}
    out["torch_mlp"] = _torch_overhead(weights, repeats)
    return out


def _torch_overhead(weights, repeats: int) -> dict:
    """The same for the torch adapter against torch.optim.Adam on the train pass's digits MLP (hidden 64)."""
    import torch

    from adl.passes.train.l2o.torch_optim import L2O

    torch.set_num_threads(1)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    setups = {}
    for opt in ("l2o", "adam"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        optimizer = L2O(model.parameters(), weights) if opt == "l2o" else torch.optim.Adam(model.parameters())
        setups[opt] = (model, optimizer)
    times: dict[str, list[float]] = {opt: [] for opt in setups}
    for i in range(repeats + 5):
        for opt, (model, optimizer) in setups.items():
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i >= 5:
                times[opt].append(time.perf_counter() - start)
    med = {opt: statistics.median(v) for opt, v in times.items()}
    return {
        "parameters": sum(p.numel() for p in setups["adam"][0].parameters()),
        "median_step_s": med,
        "l2o_over_adam": med["l2o"] / med["adam"],
    }


def plot(results: dict, horizon: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    axes = axes.ravel()
    axes[-1].axis("off")
    for ax, name in zip(axes, names):
        final = results[name]["final"][f"step_{horizon}"]
        for opt, curve in results[name]["curves"].items():
            mean, std = np.array(curve["mean"], float), np.array(curve["std"], float)
            label = f"{opt} (lr {final[opt]['lr']:g})" if opt in BASELINES else opt
            (line,) = ax.plot(mean, label=label, lw=1 if opt in BASELINES else 2)
            # ±std where it stays positive (a log axis cannot show the rest)
            ax.fill_between(
                np.arange(len(mean)), mean - std, mean + std, where=mean - std > 0, alpha=0.15, color=line.get_color()
            )
        ax.axvline(horizon, color="grey", ls=":", lw=1)
        ax.set_yscale("log")
        family = "in-family" if name in IN_FAMILY else "out-of-family"
        ax.set_title(f"{name} ({family})")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("training loss (mean ± std over seeds)")
    axes[3].set_ylabel("training loss (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds, 5-value grid, fewer timing repeats")
    parser.add_argument("--out", type=Path, default=Path("bench/results/l2o.json"))
    parser.add_argument("--weights", type=Path, help="weights file (default: the shipped weights)")
    parser.add_argument("--seeds", type=int, default=10, help="evaluation seeds (default 10)")
    parser.add_argument("--tasks", nargs="+", choices=IN_FAMILY + OUT_OF_FAMILY, help="only these tasks")
    parser.add_argument(
        "--specialist",
        action="append",
        default=[],
        metavar="TASK=FILE",
        help="also run weights meta-trained on TASK alone (adl l2o meta-train --tasks TASK) on TASK",
    )
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from an existing --out JSON")
    args = parser.parse_args(argv)
    if args.plot_only:
        report = json.loads(args.out.read_text())
        plot(report["tasks"], report["horizon"], args.out.with_suffix(".png"))
        return 0
    origin = provenance(
        "digits (scikit-learn 8x8: the held-out 40 % meta-training never saw) and random quadratics",
        None if argv is None else [sys.argv[0], *argv],
    )
    weights = load_weights(args.weights)
    specialists = {}
    for item in args.specialist:
        task, _, path = item.partition("=")
        if task not in IN_FAMILY + OUT_OF_FAMILY or not path:
            parser.error(f"--specialist {item!r}: expected TASK=FILE with TASK one of {IN_FAMILY + OUT_OF_FAMILY}")
        specialists[task] = load_weights(path)
    names = [n for n in IN_FAMILY + OUT_OF_FAMILY if not args.tasks or n in args.tasks]
    horizon = MetaConfig().horizon
    seeds = list(range(3 if args.quick else args.seeds))
    grid = LR_GRID[1:6] if args.quick else LR_GRID
    tuning = list(TUNING_SEEDS)[:2] if args.quick else list(TUNING_SEEDS)
    began = time.perf_counter()
    results = {}
    for name in names:
        start = time.perf_counter()
        results[name] = bench_task(name, weights, horizon, seeds, grid, tuning, specialists.get(name))
        summary = []
        for t in (horizon, 2 * horizon):
            f = results[name]["final"][f"step_{t}"]
            summary.append(
                f"at {t}: l2o {f['l2o']['mean']:.4g} vs {f['best_baseline']} {f[f['best_baseline']]['mean']:.4g}"
            )
        print(f"{name}: " + "; ".join(summary) + f" ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    overhead = step_overhead(weights, 30 if args.quick else 200)
    goals = {}
    for name in names:
        family = "in_family" if name in IN_FAMILY else "out_of_family"
        for t, tag in ((horizon, "horizon"), (2 * horizon, "2x_horizon")):
            f = results[name]["final"][f"step_{t}"]
            goals[f"{family}_{name}_l2o_beats_best_tuned_at_{tag}"] = {
                "value": f["l2o_over_best"],
                "target": "< 1 (L2O mean final loss / best tuned baseline's)",
                "met": f["l2o_beats_best"],
                "best_baseline": f["best_baseline"],
            }
            if name in specialists:
                goals[f"{family}_{name}_specialist_l2o_beats_best_tuned_at_{tag}"] = {
                    "value": f["l2o_specialist_over_best"],
                    "met": f["l2o_specialist_beats_best"],
                    "target": "< 1 (specialist L2O mean final loss / best tuned baseline's)",
                    "best_baseline": f["best_baseline"],
                }
    if set(IN_FAMILY) <= set(names):
        goals["in_family_all_beaten_at_horizon"] = {
            "value": sum(results[n]["final"][f"step_{horizon}"]["l2o_beats_best"] for n in IN_FAMILY),
            "target": len(IN_FAMILY),
            "met": all(results[n]["final"][f"step_{horizon}"]["l2o_beats_best"] for n in IN_FAMILY),
        }
    report = {
        "goals": goals,
        "provenance": origin,
        "quick": args.quick,
        "horizon": horizon,
        "seeds": seeds,
        "tuning_seeds": tuning,
        "lr_grid": list(grid),
        "weights": str(args.weights or "shipped"),
        "specialists": {task: path for task, _, path in (item.partition("=") for item in args.specialist)},
        "loss": "full-data training loss on the held-out digits subset (quadratic: its own loss)",
        "tasks": results,
        "step_overhead": overhead,
        "seconds": time.perf_counter() - began,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    plot(results, horizon, args.out.with_suffix(".png"))
    print(json.dumps({"goals": goals, "step_overhead": {k: v["l2o_over_adam"] for k, v in overhead.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
