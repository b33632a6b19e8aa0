"""AMC channel pruning against uniform L1 pruning and Torch-Pruning's magnitude pruner (Fashion-MNIST or digits).

    python bench/amc.py [--quick] [--data fashion_mnist|digits] [--out FILE] [--seeds N] [--episodes N]
                        [--finetune-seeds N] [--study N] [--methods M ...] [--reward acc|flops]

A MobileNetV2-style network (`--width`, `--head`; the defaults per data set in `NETWORKS`) is
trained once, 20 % of its training split held out as the validation split (`data ... {
validation = 20 % }`); accuracies are on the whole test split (Fashion-MNIST: the official
10,000 images).
For each FLOPs budget (50 % and 30 %) and seed, the pruners cut it to the budget: (a) the
`amc` pass's DDPG search (reward: accuracy on the validation split without fine-tuning;
least-squares reconstruction), (a') the same search rewarded on training images instead (the
pass without a validation split, AMC's own practice: an ablation, not a goal), (b) uniform
pruning -- one keep ratio for every layer, channels by L1 norm -- through the same machinery,
(c) Torch-Pruning's `MagnitudePruner` (L1, its pruning ratio bisected to the budget).

Methods are compared at equal FLOPs: each must keep the budget +- 1 % of the unpruned FLOPs
(|kept - budget| <= 0.01, counted by the AMC environment's layer table, `flops`), or the
comparison is not made (its goal reports met = false and why). Channel counts move in steps
of the SIMD lanes, so one keep ratio for every layer rarely lands there: the uniform ratio is
bisected on the fractional channel counts, then each layer's count rounded down or up to its
grid, of the combinations of roundings within 1 % (not above the budget where one can be) the
one nearest the fractional counts (`uniform_counts_at`); Torch-Pruning's ratio is bisected,
the one nearest the budget kept, and where its rounding (down, to `round_to`) leaves it off by
more than 1 %, some layers get a step more or fewer channels (`pruning_ratio_dict`), chosen the
same way. AMC keeps <= the budget by construction. Every method's kept fraction is recorded
(`flops_kept`, per seed; `flops_within_tolerance`). Every
pruned network is then fine-tuned identically (the `train` loop on the training split: Adam,
cosine, same epochs) with `--finetune-seeds` seeds, as is the unpruned network (a control for
the extra training); a policy's accuracy is the mean over its fine-tunings, a method's the
mean and spread over search seeds. Kept channel counts are multiples of the host's float32
SIMD lanes for all (8 on AVX2, 16 on AVX-512; other counts fall off the default schedules'
fast path).

The policy study (`--study`, at 50 %) asks whether any score a search can see ranks policies by
what counts, the test accuracy after fine-tuning: for uniform pruning and random policies that
keep >= 85 % validation accuracy, the validation accuracy before fine-tuning, after one epoch
and after the full fine-tuning, each against the test accuracy (Spearman).

Latency: the batch-1 latency of each seed-0 network compiled by the `lower` machinery --
default schedules, and the unpruned and the AMC 50 %-FLOPs networks also MetaSchedule-tuned --
each timed with 1 and 2 threads in interleaved rounds; like `lower`, a library runs at its
fastest thread count, and speedups over the unpruned library (tuned against tuned) are
per-round ratios, medianed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import itertools
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import torch
from common import TRAIN_THREADS, log, set_train_threads, train
from provenance import provenance

from adl.data import load_dataset
from adl.hwmodels.calibration import host_cpu
from adl.ir.layers import describe_model
from adl.models.zoo import build_model
from adl.passes.amc.env import AmcEnv
from adl.passes.amc.search import AmcConfig, make_env, run_amc
from adl.passes.channels import ChannelGraph

if TYPE_CHECKING:
    from adl.backends.tvm.build import TuneRequest

# what the figures depend on (`python -m bench.status`): search, fine-tuning, the network, the data, the lowering
MEASURES = (
    "bench/amc.py",
    "bench/common.py",
    "adl/passes/amc",
    "adl/passes/channels.py",
    "adl/passes/rl",
    "adl/passes/train/loop.py",
    "adl/models",
    "adl/data",
    "adl/ir/layers.py",
    "adl/models/folding.py",
    "adl/backends/tvm",
    "adl/backends/runtime.py",
)
FAMILY = "mobilenet"
# the network per data set: digits (8x8) width 2, head 256 (~3 MFLOPs); Fashion-MNIST (28x28) six
# blocks at width 1, head 128 -- what two cores can train, search and fine-tune 3 seeds of in about an hour
NETWORKS = {
    "digits": {"width": 2.0, "head": 256},
    "fashion_mnist": {"width": 1.0, "head": 128, "kernels": (3,) * 6, "expand": (1, 6, 6, 6, 6, 6)},
}
DATA = {
    "digits": "digits (scikit-learn 8x8; test split 0.2, seed 0)",
    "fashion_mnist": "Fashion-MNIST (official split: 60,000 training, 10,000 test images)",
}
BUDGETS = (0.5, 0.3)
METHODS = ("amc", "amc_train_images", "uniform", "torch_pruning")
LOWERED = ("amc", "uniform", "torch_pruning")  # the methods whose seed-0 networks are timed
VALIDATION = 0.2
THREADS = 2  # the libraries run on both cores
DROP_TARGET = 1.0  # points, at 50 % FLOPs
TOLERANCE = 0.01  # equal FLOPs: every compared method keeps the budget +- 1 % of the unpruned FLOPs


@functools.lru_cache(maxsize=None)
def simd_multiple() -> int:
    """Kept channel counts are multiples of the host's float32 SIMD lanes for every method (what
    the `amc` pass does by default): 8 on AVX2, 16 on AVX-512. Other counts fall off the default
    schedules' fast path (5x slower with multiples of 8 on AVX-512). (Imports TVM: called by
    `main`, not at import, so the pure functions below load without it.)"""
    from adl.hwmodels.cpu import float_lanes

    return float_lanes({"kind": "llvm", "num-cores": THREADS})


def flops(model: torch.nn.Module, shape) -> int:
    return sum(layer.flops for layer in describe_model(model, (1, *shape)))


def within_tolerance(kept: float, budget: float, tolerance: float = TOLERANCE) -> bool:
    """Whether a kept FLOPs fraction is the budget +- `tolerance` (absolute, of the unpruned FLOPs)."""
    return abs(kept - budget) <= tolerance + 1e-12


def nearest_counts(
    fraction: Callable[[np.ndarray], float],
    ideal: np.ndarray,
    sizes: Mapping[int, int],
    options: Mapping[int, Sequence[int]],
    target: float,
    tolerance: float = TOLERANCE,
    limit: int = 1 << 14,
) -> np.ndarray:
    """Per group g of `options` one of `options[g]` kept channels (the other entries as in `ideal`):
    among the combinations whose FLOPs fraction, `fraction(counts)`, is within `tolerance` of
    `target` -- those not above `target` first (AMC's never are) -- the one nearest `ideal`
    (sum over the groups of |count - ideal| / size), ties to the nearer fraction; if none is
    within it, the one whose fraction is nearest `target`.
    Every combination is tried up to `limit` of them, else one group is changed at a time
    (greedy, from the counts nearest `ideal`)."""
    groups = list(options)

    def key(counts: np.ndarray) -> tuple[int, float, float]:
        kept = fraction(counts)
        miss, deviation = abs(kept - target), sum(abs(counts[g] - ideal[g]) / sizes[g] for g in groups)
        if within_tolerance(kept, target, tolerance):
            return (0 if kept <= target + 1e-12 else 1), deviation, miss
        return 2, miss, deviation

    def with_choice(choice: Sequence[int]) -> np.ndarray:
        counts = np.array(ideal, np.float64)
        for g, c in zip(groups, choice):
            counts[g] = c
        return counts

    if math.prod(len(options[g]) for g in groups) <= limit:
        return min((with_choice(choice) for choice in itertools.product(*(options[g] for g in groups))), key=key)
    best = with_choice([min(options[g], key=lambda c, g=g: abs(c - ideal[g])) for g in groups])
    while True:
        moves = []
        for g in groups:
            for c in options[g]:
                if c != best[g]:
                    moved = best.copy()
                    moved[g] = c
                    moves.append(moved)
        better = min(moves, key=key, default=best)
        if key(better) >= key(best):
            return best
        best = better


def grid_options(grid: Sequence[int], x: float, steps: int) -> list[int]:
    """The allowed counts (`grid`, ascending) within `steps` places of `x` below and above it
    (x itself when it is on the grid; the grid's ends when x is beyond them)."""
    values = [int(v) for v in grid]
    below = [v for v in values if v <= x + 1e-9][-steps:] or values[:1]
    above = [v for v in values if v >= x - 1e-9][:steps] or values[-1:]
    return sorted(set(below) | set(above))


def uniform_counts_at(
    env: AmcEnv, target: float, tolerance: float = TOLERANCE, max_steps: int = 3
) -> tuple[np.ndarray, float]:
    """Uniform pruning at a FLOPs fraction: one keep ratio for every prunable group, bisected so
    that the fractional channel counts (ratio x size, within the group's grid) cost `target` of
    the unpruned FLOPs -- by the layer table AMC's environment counts FLOPs with -- then each
    group's count rounded to its grid (multiples of the SIMD lanes), down or up: the combination
    of roundings nearest the fractional counts among those within `tolerance` of `target`, not
    above it if one can be (`nearest_counts`). Where one step either way cannot get there (a
    48-channel group has 16, 32, 48), up to `max_steps` steps are allowed. Returns the counts
    and the ratio."""
    table = env.resources.table
    full = float(table.flops_full.sum())

    def fraction(counts: np.ndarray) -> float:
        return float(table.flops_per_layer(counts).sum()) / full

    def fractional(ratio: float) -> np.ndarray:
        counts = np.array(table.full_counts, np.float64)
        for d in env.decisions:
            counts[d.group] = min(max(ratio * d.size, float(d.grid[0])), float(d.size))
        return counts

    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if fraction(fractional(middle)) < target else (low, middle)
    ideal = fractional(high)
    sizes = {d.group: d.size for d in env.decisions}
    for steps in range(1, max_steps + 1):
        options = {d.group: grid_options(d.grid, ideal[d.group], steps) for d in env.decisions}
        counts = nearest_counts(fraction, ideal, sizes, options, target, tolerance)
        if within_tolerance(fraction(counts), target, tolerance) and fraction(counts) <= target + 1e-12:
            break
    return counts, high


def group_modules(env: AmcEnv) -> dict[int, list[str]]:
    """Per prunable group, the conv, depthwise-conv and Linear modules whose outputs are its channels."""
    out: dict[int, list[str]] = {d.group: [] for d in env.decisions}
    for name, layout in env.graph.layouts.items():
        if layout.kind in ("conv", "dwconv", "linear"):
            for seg in layout.rows:
                if seg.group in out and name not in out[seg.group]:
                    out[seg.group].append(name)
    return out


def torch_pruning(
    model: torch.nn.Module, budget: float, shape, env: AmcEnv, multiple: int, iterations: int = 12
) -> tuple[torch.nn.Module | None, dict]:
    """Torch-Pruning's magnitude (L1) pruner: one pruning ratio for every layer, each layer's kept
    channels rounded down to a multiple of `multiple` (its `round_to`). The ratio is bisected to
    the budget (`iterations` halvings) and the one whose FLOPs are nearest it kept; if that is
    off by more than TOLERANCE (or above the budget), per-layer ratios (`pruning_ratio_dict`)
    give some layers one step (`multiple` channels; up to three where one is not enough) more or
    fewer than that ratio does: of the combinations within TOLERANCE by the AMC environment's
    layer table, those not above the budget first, the one nearest the ratio's own counts
    (`nearest_counts`). The FLOPs kept are measured on the pruned network."""
    try:
        import torch_pruning as tp
    except ImportError as err:
        return None, {"error": f"torch-pruning is not installed ({err}); see bench/requirements.txt"}
    example = torch.zeros(1, *shape)
    full = flops(model, shape)
    table = env.resources.table
    modules = group_modules(env)
    sizes = {d.group: d.size for d in env.decisions}

    def prune(ratio: float, kept: Mapping[int, int] | None = None) -> torch.nn.Module:
        copy_ = copy.deepcopy(model).eval()
        named = dict(copy_.named_modules())
        last = [m for m in copy_.modules() if isinstance(m, torch.nn.Linear)][-1]
        # keeps int(size * (1 - r)) = k channels, a multiple of round_to already
        per_layer = (
            {named[name]: max(0.0, 1.0 - (k + 0.5) / sizes[g]) for g, k in kept.items() for name in modules[g]}
            if kept
            else None
        )
        pruner = tp.pruner.MagnitudePruner(
            copy_,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            pruning_ratio_dict=per_layer,
            ignored_layers=[last],
            round_to=multiple,
        )
        pruner.step()
        return copy_

    def counts_of(pruned: torch.nn.Module) -> np.ndarray:
        counts = np.array(table.full_counts, np.float64)
        for g, names in modules.items():
            counts[g] = pruned.get_submodule(names[0]).weight.shape[0]
        return counts

    tried = []  # (|kept - budget|, ratio, kept, network)
    low, high = 0.0, 0.95
    for _ in range(iterations):
        middle = (low + high) / 2
        candidate = prune(middle)
        kept = flops(candidate, shape) / full
        tried.append((abs(kept - budget), middle, kept, candidate))
        low, high = (low, middle) if kept <= budget else (middle, high)
    _, ratio, kept, best = min(tried, key=lambda t: t[0])
    extra: dict = {"pruning_ratio": ratio, "flops_kept_at_ratio": kept, "version": tp.__version__}
    if within_tolerance(kept, budget) and kept <= budget:
        return best, extra
    at_ratio = counts_of(best)
    fraction = lambda c: float(table.flops_per_layer(c).sum()) / float(table.flops_full.sum())  # noqa: E731 -- a one-expression closure, named for what it computes
    for steps in range(1, 4):
        options = {
            d.group: sorted({int(at_ratio[d.group]), *grid_options(d.grid, at_ratio[d.group], steps)})
            for d in env.decisions
        }
        counts = nearest_counts(fraction, at_ratio, sizes, options, budget)
        if within_tolerance(fraction(counts), budget) and fraction(counts) <= budget + 1e-12:
            break
    adjusted = {g: int(counts[g]) for g in modules}
    pruned = prune(ratio, adjusted)
    got = counts_of(pruned)
    extra["per_layer_counts"] = {env.graph.groups[g].name: k for g, k in adjusted.items()}
    extra["changed_layers"] = {
        env.graph.groups[g].name: [int(at_ratio[g]), k] for g, k in adjusted.items() if k != int(at_ratio[g])
    }
    if any(int(got[g]) != k for g, k in adjusted.items()):
        extra["counts_mismatch"] = {env.graph.groups[g].name: int(got[g]) for g in adjusted}
    return pruned, extra


def policy_study(env, dataset, policies: int, epochs: int, finetune_seeds: int, min_accuracy: float = 0.85) -> dict:
    """Uniform pruning and random policies of at least `min_accuracy` validation accuracy before
    fine-tuning, each fine-tuned `finetune_seeds` times: does any score a search could use
    (validation accuracy before, after one epoch, after the whole fine-tuning) rank them by
    their test accuracy after fine-tuning?"""
    from scipy.stats import spearmanr

    from adl.passes.train.loop import evaluate

    rng = np.random.default_rng(7)
    rows, drawn = [], 0
    while len(rows) < policies and drawn < 50 * policies:
        if rows:  # a random episode: actions uniform in [0.3, 1], clipped to the budget by the env
            drawn += 1
            env.reset()
            step = env.step(float(rng.uniform(0.3, 1.0)))
            while not step.done:
                step = env.step(float(rng.uniform(0.3, 1.0)))
            counts = np.array(step.info["counts"], np.float64)
        else:
            counts = env.uniform_counts()
        model = env.build(counts)
        before = env.evaluate(model).accuracy
        if rows and before < min_accuracy:
            continue
        one_epoch = evaluate(train(copy.deepcopy(model), dataset, 1, 0.001, 0)[0], dataset.x_val, dataset.y_val)
        tuned = [train(copy.deepcopy(model), dataset, epochs, 0.001, k) for k in range(finetune_seeds)]
        rows.append(
            {
                "policy": "uniform" if not rows else "random",
                "ratios": env.ratios(counts),
                "val_before": before,
                "val_after_one_epoch": one_epoch,
                "val_after": statistics.fmean(evaluate(m, dataset.x_val, dataset.y_val) for m, _ in tuned),
                "test_after": statistics.fmean(a for _, a in tuned),
            }
        )
        log(f"policy {len(rows)}: val {before:.4f} -> {rows[-1]['val_after']:.4f}, test {rows[-1]['test_after']:.4f}")
    test = [r["test_after"] for r in rows]
    correlations = {}
    for score in ("val_before", "val_after_one_epoch", "val_after"):
        rho, p = spearmanr([r[score] for r in rows], test) if len(rows) > 2 else (float("nan"), float("nan"))
        correlations[score] = {"spearman": float(rho), "p": float(p)}
    return {
        "budget": 0.5,
        "min_val_before": min_accuracy,
        "policies": rows,
        "spearman_with_test_after": correlations,
        "uniform_rank_by_test": 1 + sum(t > test[0] for t in test[1:]),
        "test_after_range": [min(test), max(test)],
    }


def summarise(values: list[float]) -> dict:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {
        "mean": statistics.fmean(values),
        "std": spread,
        "standard_error": spread / math.sqrt(len(values)),
        "values": values,
    }


def measure_latency(
    models: dict[str, torch.nn.Module],
    dataset,
    rounds: int,
    repeats: int,
    workdir: Path,
    tune: "TuneRequest | None",
    tuned: tuple[str, ...],
) -> dict:
    """Build every model with the default schedules (and the `tuned` ones also with MetaSchedule,
    which keeps the faster of tuned and default), then time every library with 1..THREADS
    threads in interleaved rounds. A library ships with its fastest thread count (what `lower`
    picks), so speedups compare each library at its best count, per round, medianed."""
    from adl.backends.runtime import fastest_thread_counts
    from adl.backends.tvm.build import build_library, max_abs_difference

    shape = tuple(dataset.input_shape)
    x = np.zeros((1, *shape), np.float32)
    out: dict[str, dict] = {}
    for name, model in models.items():
        for variant in ("default", "tuned") if tune and name in tuned else ("default",):
            key = name if variant == "default" else f"{name}+tuned"
            log(f"lowering {key}")
            path = workdir / f"{key}.so"
            info = build_library(
                model, x, {"kind": "llvm", "num-cores": THREADS}, path, tune=tune if variant == "tuned" else None
            )
            out[key] = {
                "path": path,
                "build_seconds": info.build_seconds,
                "library_bytes": info.library_bytes,
                "tuning": info.tuning,
                "max_abs_diff": max_abs_difference(model, path, dataset.x_test[:64]),
            }
    paths = {key: row.pop("path") for key, row in out.items()}
    choices = fastest_thread_counts(paths, (1, *shape), THREADS, rounds=rounds, repeats=repeats, warmup=10)
    for key, row in out.items():
        choice = choices[key]
        row["rounds_ms"] = {n: [t * 1e3 for t in times] for n, times in choice.rounds_s.items()}
        row["median_ms"] = {n: m * 1e3 for n, m in choice.median_s.items()}
        row["threads"] = choice.threads
        row["shipped_ms"] = row["rounds_ms"][row["threads"]]
    for key, row in out.items():
        base = out["unpruned+tuned" if key.endswith("+tuned") else "unpruned"]
        row["speedup"] = statistics.median(b / r for b, r in zip(base["shipped_ms"], row["shipped_ms"]))
        row["speedup_per_threads"] = {
            n: statistics.median(b / r for b, r in zip(base["rounds_ms"][n], times))
            for n, times in row["rounds_ms"].items()
        }
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"amc": "tab:red", "amc_train_images": "tab:orange", "uniform": "tab:blue", "torch_pruning": "tab:green"}
    unpruned = report["unpruned"]["finetuned_accuracy"]["mean"] * 100
    left.axhline(unpruned, color="gray", ls="--", label="unpruned (same fine-tuning)")
    for i, method in enumerate(report["settings"]["methods"]):
        xs, ys, es = [], [], []
        for budget in BUDGETS:
            row = report["results"].get(f"{budget:.2f}", {}).get(method)
            if row and "accuracy" in row:
                xs.append(statistics.fmean(row["flops_kept"]) * 100 + (i - 1.5) * 0.6)
                ys.append(row["accuracy"]["mean"] * 100)
                es.append(row["accuracy"]["std"] * 100)
        if xs:
            left.errorbar(xs, ys, yerr=es, fmt="o", capsize=4, color=colors[method], label=method)
    left.set_xlabel("FLOPs kept (%)")
    left.set_ylabel("test accuracy after fine-tuning (%)")
    model = report["settings"]["model"]
    left.set_title(
        f"{report['settings']['data']}, mobilenet width {model['width']:g} head {model['head']}: "
        f"{report['settings']['seeds']} seeds (mean, std)",
        fontsize=10,
    )
    left.legend(fontsize=8)
    latency = report.get("latency", {})
    names = list(latency)
    right.bar(
        range(len(names)),
        [latency[n]["speedup"] for n in names],
        color=[colors.get(n.split("@")[0], "gray") for n in names],
    )
    right.axhline(1.6, color="black", ls=":", label="goal at 50 %: 1.6x")
    right.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    right.set_ylabel("speedup over unpruned (TVM, batch 1)")
    right.set_title("measured latency, interleaved rounds (median ratio)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def unequal_flops(rows: Mapping[str, dict], methods: Sequence[str], budget: float, tolerance: float = TOLERANCE) -> str:
    """Why `methods` are not at equal FLOPs at `budget` ("" when they are): every seed of each
    must have kept the budget +- `tolerance` of the unpruned FLOPs (`rows[m]["flops_kept"]`)."""
    off = [
        f"{m} kept {kept:.1%} (seed {seed})"
        for m in methods
        for seed, kept in enumerate(rows[m]["flops_kept"])
        if not within_tolerance(kept, budget, tolerance)
    ]
    if not off:
        return ""
    return (
        f"not compared at equal FLOPs: {', '.join(off)}, outside {budget:.0%} +- {tolerance:.0%} of the unpruned FLOPs"
    )


def paired_difference(first: Sequence[float], second: Sequence[float]) -> dict:
    """Per seed first - second (in points), their mean and its standard error (None below two seeds)."""
    differences = [100 * (a - b) for a, b in zip(first, second)]
    n = len(differences)
    return {
        "mean": statistics.fmean(differences) if n else None,
        "standard_error": statistics.stdev(differences) / math.sqrt(n) if n > 1 else None,
        "differences": differences,
    }


def comparison_goal(
    rows: Mapping[str, dict], budget: float, first: str = "amc", second: str = "uniform", tolerance: float = TOLERANCE
) -> dict:
    """The goal `first` >= `second` in test accuracy at `budget`: the paired difference over
    seeds (mean +- s.e., points); met only if it is >= 0 and both kept the budget's FLOPs
    +- `tolerance` on every seed -- otherwise `reason` says which did not."""
    paired = paired_difference(rows[first]["accuracy_values"], rows[second]["accuracy_values"])
    reason = unequal_flops(rows, (first, second), budget, tolerance)
    goal = {
        "value": paired["mean"],
        "target": 0.0,
        "met": not reason and paired["mean"] >= 0.0,
        "standard_error": paired["standard_error"],
        "statistic": "mean +- s.e. of the per-seed paired difference",
        "paired_differences": paired["differences"],
        "flops_kept": {m: rows[m]["flops_kept"] for m in (first, second)},
        "flops_tolerance": tolerance,
    }
    if reason:
        goal["reason"] = reason
    return goal


def goals(report: dict) -> dict:
    out = {}
    results = report["results"]
    unpruned = report["unpruned"]["accuracy"]
    for budget in BUDGETS:
        row = results.get(f"{budget:.2f}", {})
        if row.get("amc", {}).get("accuracy_values") and row.get("uniform", {}).get("accuracy_values"):
            out[f"AMC - uniform accuracy at {budget:.0%} FLOPs (points)"] = comparison_goal(row, budget)
    half = results.get("0.50", {})
    if "accuracy" in half.get("amc", {}):  # against the unpruned network given the same fine-tuning (the stricter)
        reference = report["unpruned"].get("finetuned_accuracy", {}).get("mean", unpruned)
        drop = (reference - half["amc"]["accuracy"]["mean"]) * 100
        out["AMC accuracy drop from unpruned at 50 % FLOPs (points)"] = {
            "value": drop,
            "target": DROP_TARGET,
            "met": drop <= DROP_TARGET,
            "reference": "the unpruned network with the same fine-tuning",
        }
    latency = report.get("latency", {})
    speed = latency.get("amc@0.50+tuned") or latency.get("amc@0.50")
    if speed:
        how = "tuned" if "amc@0.50+tuned" in latency else "untuned"
        out[f"AMC measured speedup at 50 % FLOPs (TVM, {how})"] = {
            "value": speed["speedup"],
            "target": 1.6,
            "met": speed["speedup"] >= 1.6,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, short search and training (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/amc.json"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=400, help="AMC search episodes (the paper: 400)")
    parser.add_argument("--warmup", type=int, default=100, help="random episodes first (the paper: 100)")
    parser.add_argument("--base-epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--finetune-seeds", type=int, default=3, help="fine-tunings per pruned network (averaged)")
    parser.add_argument("--study", type=int, default=30, help="policies in the policy study at 50 %% (0: none)")
    parser.add_argument("--data", choices=tuple(DATA), default="fashion_mnist")
    parser.add_argument("--width", type=float, help="width multiplier of the network (default: NETWORKS[data])")
    parser.add_argument("--head", type=int, help="channels of the 1x1 head convolution (default: NETWORKS[data])")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--reward",
        choices=("acc", "flops"),
        default="acc",
        help="AMC's reward: validation accuracy, or the paper's -error * log(FLOPs)",
    )
    parser.add_argument(
        "--train-threads",
        type=int,
        default=TRAIN_THREADS,
        help="torch threads for training and search (2 only on an otherwise idle machine)",
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds")
    parser.add_argument("--repeats", type=int, default=100, help="timed runs per round")
    parser.add_argument("--tune-trials", type=int, default=8, help="MetaSchedule trials per task (0: no tuning)")
    parser.add_argument(
        "--tune-minutes",
        type=float,
        default=3.0,
        help="tuning time cap per network (checked between rounds: overshoots under load)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.episodes, args.warmup, args.base_epochs, args.finetune_epochs = 1, 8, 4, 1, 1
        args.finetune_seeds, args.study = 1, 3
        args.rounds, args.repeats, args.tune_trials = 2, 20, 0
    from adl.backends.tvm.build import TuneRequest

    methods = [m for m in METHODS if m in args.methods]
    multiple = simd_multiple()
    set_train_threads(args.train_threads)
    origin = provenance(f"{DATA[args.data]}; validation {VALIDATION:g} of training")
    started = time.perf_counter()
    dataset = load_dataset(args.data, validation=VALIDATION)
    training_images = dataclasses.replace(dataset, x_val=None, y_val=None)  # the pass without a validation split
    shape = tuple(dataset.input_shape)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    family, options = FAMILY, dict(NETWORKS[args.data])
    options.update({k: v for k, v in (("width", args.width), ("head", args.head)) if v is not None})
    base = build_model(family, options, input_shape=shape, classes=10, mean=dataset.mean, std=dataset.std)
    log(f"training the unpruned {family}{options} for {args.base_epochs} epochs")
    base, base_accuracy = train(base, dataset, args.base_epochs, 0.003, seed=0)
    base_flops = flops(base, shape)
    log(
        f"unpruned: {base_accuracy:.4f} test accuracy, {base_flops / 1e6:.2f} MFLOPs, "
        f"{len(ChannelGraph(base, (1, *shape)).groups)} channel groups"
    )
    report: dict = {
        "goals": {},
        "provenance": origin,
        "machine": {
            "platform": platform.platform(),
            "cpu": host_cpu(),
            "threads": THREADS,
            "float_lanes": multiple,
            "torch": torch.__version__,
        },
        "settings": {
            "data": args.data,
            "model": {"family": family, **options},
            "budgets": BUDGETS,
            "methods": methods,
            "seeds": args.seeds,
            "train_threads": args.train_threads,
            "episodes": args.episodes,
            "warmup": args.warmup,
            "base_epochs": args.base_epochs,
            "finetune_epochs": args.finetune_epochs,
            "finetune_optimizer": "adam(lr=0.001), cosine",
            "finetune_seeds": args.finetune_seeds,
            "validation": VALIDATION,
            "samples": {"train": len(dataset.y_train), "validation": len(dataset.y_val), "test": len(dataset.y_test)},
            "multiple": multiple,
            "flops_tolerance": TOLERANCE,
            "reward": args.reward,
            "reconstruct": True,
            "val_samples": 500,
            "lowering": (
                "default schedules; unpruned and amc@0.50 also MetaSchedule "
                f"({args.tune_trials} trials/task, <= {args.tune_minutes:g} min per network)"
                if args.tune_trials
                else "default (untuned) schedules"
            ),
            "latency_threads": f"each library at its fastest of 1..{THREADS} threads",
            "quick": args.quick,
        },
        "unpruned": {
            "accuracy": base_accuracy,
            "flops": base_flops,
            "channel_groups": len(ChannelGraph(base, (1, *shape)).groups),
            "params": sum(p.numel() for p in base.parameters()),
        },
        "results": {},
    }

    def save() -> None:
        report["goals"] = goals(report)
        report["seconds"] = time.perf_counter() - started
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    def finetuned(model: torch.nn.Module, seed: int) -> float:
        """Mean test accuracy over `--finetune-seeds` identical fine-tunings of `model`."""
        return statistics.fmean(
            train(copy.deepcopy(model), dataset, args.finetune_epochs, 0.001, seed * 1000 + k)[1]
            for k in range(args.finetune_seeds)
        )

    controls = []
    for seed in range(args.seeds):
        log(f"unpruned + the same fine-tuning, seed {seed}")
        controls.append(finetuned(base, seed))
    report["unpruned"]["finetuned_accuracy"] = summarise(controls)
    save()

    seed0_models: dict[str, torch.nn.Module] = {"unpruned": base}
    for budget in BUDGETS:
        rows: dict[str, dict] = {
            m: {"accuracy_values": [], "flops_kept": [], "val_accuracy_before_finetune": []} for m in methods
        }
        for seed in range(args.seeds):
            config = AmcConfig(
                budgets={"flops": budget},
                episodes=args.episodes,
                warmup=args.warmup,
                multiple=multiple,
                seed=seed,
                reward=args.reward,
            )
            envs = {"validation": make_env(base, dataset, config)}
            if "amc_train_images" in methods:
                envs["training"] = make_env(base, training_images, config)
            for method in methods:
                env = envs["training" if method == "amc_train_images" else "validation"]
                t0 = time.perf_counter()
                extra: dict = {}
                if method == "torch_pruning":
                    pruned, extra = torch_pruning(base, budget, shape, env, multiple)
                    if pruned is None:
                        rows[method]["error"] = extra["error"]
                        continue
                    val = env.evaluate(pruned).accuracy
                elif method == "uniform":  # one keep ratio, rounded per layer to land at the budget +- 1 %
                    counts, ratio = uniform_counts_at(env, budget)
                    pruned, val = env.build(counts), env.finish(counts)["accuracy"]
                    extra = {"ratios": env.ratios(counts), "uniform_ratio": ratio}
                else:
                    result = run_amc(base, dataset, dataclasses.replace(config, strategy="ddpg"), env=env)
                    pruned, val = result.model, result.info["accuracy"]
                    extra = {
                        "ratios": result.ratios,
                        "best_episode_reward": result.info["reward"],
                        "rewards": [h["reward"] for h in result.history],
                    }
                search_seconds = time.perf_counter() - t0
                kept = flops(pruned, shape) / base_flops
                if seed == 0 and method in LOWERED:
                    seed0_models[f"{method}@{budget:.2f}"] = copy.deepcopy(pruned).eval()
                if method == "amc_train_images":  # scored on the validation split like the others, for the table
                    val = envs["validation"].evaluate(pruned).accuracy
                accuracy = finetuned(pruned, seed)
                log(
                    f"{budget:.0%} FLOPs, seed {seed}, {method}: kept {kept:.3f}, val before fine-tuning "
                    f"{val:.3f}, test after {accuracy:.4f} (search {search_seconds:.0f} s)"
                )
                row = rows[method]
                row["accuracy_values"].append(accuracy)
                row["flops_kept"].append(kept)
                row["flops_target"] = budget
                row["flops_within_tolerance"] = all(within_tolerance(k, budget) for k in row["flops_kept"])
                row["val_accuracy_before_finetune"].append(val)
                row.setdefault("search_seconds", []).append(search_seconds)
                row.setdefault("details", []).append(extra)
                if row["accuracy_values"]:
                    row["accuracy"] = summarise(row["accuracy_values"])
                report["results"][f"{budget:.2f}"] = rows
                save()

    if args.study:
        log(f"policy study: {args.study} policies at 50 % FLOPs")
        study_env = make_env(base, dataset, AmcConfig(budgets={"flops": 0.5}, multiple=multiple, seed=0))
        report["policy_study"] = policy_study(study_env, dataset, args.study, args.finetune_epochs, args.finetune_seeds)
        save()

    with tempfile.TemporaryDirectory(prefix="adl-bench-amc-") as tmp:
        tune = TuneRequest(args.tune_trials, args.tune_minutes, root=Path(tmp) / "tuning") if args.tune_trials else None
        report["latency"] = measure_latency(
            seed0_models, dataset, args.rounds, args.repeats, Path(tmp), tune, tuned=("unpruned", "amc@0.50")
        )
    save()
    plot(report, args.out.with_suffix(".png"))
    for goal, verdict in report["goals"].items():
        value = verdict["value"]
        print(
            f"{goal}: {value if value is None else f'{value:.3f}'} (target {verdict['target']}) "
            f"{'met' if verdict['met'] else 'MISSED'}" + (f" -- {verdict['reason']}" if "reason" in verdict else "")
        )


if __name__ == "__main__":
    os.environ.setdefault("TVM_NUM_THREADS", "2")  # before TVM starts its thread pool (on first use)
    main()
