"""Structured Sparsity Learning + `shrink` against AMC and uniform channel pruning at equal FLOPs (Fashion-MNIST).

    python bench/ssl_pruning.py [--quick] [--out FILE] [--seeds N] [--epochs N] [--lam L]

Does SSL's group lasso (`train { regularizer = ssl(...) }`), whose zeroed channels the `shrink`
pass removes, give a smaller library that is measured faster and at least as accurate as
pruning the same network to the same FLOPs after training (AMC's DDPG search, or one keep ratio
for every layer)?

Data: `fashion_subset(12_000, 3_000)` of bench/hpo.py -- 12,000 training and 3,000 validation
images from Fashion-MNIST's official training set (a fixed permutation, seed 0) -- and the
official 10,000 test images; every accuracy is on those 10,000.
Network: adl's `cnn(channels = [32, 64], hidden = 128)` (8.5 MFLOPs, 0.42 M parameters; three
prunable channel groups: 32, 64 and 128 channels), initialised with torch seed = the seed.

Every pipeline trains with the same recipe, SGD as in SSL's paper (with Adam every step moves a
weight by about lr, so the group lasso would need a far larger lambda; adl/passes/train/ssl.py):

    train { epochs = 8  batch_size = 64  schedule = cosine
            optimizer = sgd(lr = 0.05, momentum = 0.9, weight_decay = 0, nesterov = true) }

and each is compiled by `adl.Pipeline.run` (target `kind = llvm  cores = 2`, one cache folder
per seed, so the plain `train` stage is computed once and reused by `amc` and `uniform`):

    unpruned  train{...},lower
    ssl       train{..., regularizer = ssl(filters = 0.03, channels = 0.03)},shrink{multiple = 8, finetune = 2},lower
    amc       train{...},amc{flops = F, episodes = 120, warmup = 40, multiple = 8, finetune = 2},lower
    uniform   train{...},amc{flops = F, search = uniform, ...},lower

Channel counts are multiples of 8 for every method (the passes' default is the SIMD lanes, 16
on AVX-512; on this small network that grid is too coarse for AMC and uniform pruning to land
near SSL's FLOPs).

where F is the FLOPs fraction `shrink` kept for that seed (equal FLOPs: AMC's budget is what SSL
reached; AMC lands at or under it, uniform pruning -- the largest single keep ratio within the
budget, on the SIMD-lane grid -- often well under). The three pruned networks get the same
fine-tuning (2 epochs, the passes' default Adam 0.001). `train{ssl}` alone is compiled too
(a reused stage, no library) for the SSL network's accuracy before `shrink`.

Per seed: test accuracy after each stage (torch) and of the lowered library, kept FLOPs and
parameters, per-group channel counts, shrink's zeroed channels and output change, compile
seconds. Latency: every seed's four libraries are re-timed together in interleaved rounds
(`fastest_thread_counts`, 1 and 2 threads, batch 1); a pruned library's speedup is the median
over rounds of the same seed's unpruned latency over its own, each at the thread count its
artifact ships with (manifest `runtime_threads`; the speedup at the re-timed fastest counts is
recorded too).

Goals (each can miss): SSL's library at least as accurate as AMC's and as uniform pruning's
(mean paired difference over seeds >= 0 points); SSL's library >= 1.3x faster than the
unpruned one (median over seeds); the removal exact (shrink's output change <= 1e-4); equal
FLOPs (|baseline - SSL| kept FLOPs <= 2 % of the unpruned network's on every seed). The
accuracy goals are judged on accuracy alone; seeds whose FLOPs differ by more are flagged
beside them (`flops_unequal_seeds`).

`--quick` is a smoke run: one seed, 2,000/500 images, 1 epoch, lambda 0.5 (at 0.05 one short
epoch zeros nothing, and `shrink` would remove nothing), 10 AMC episodes (5 random), 1
fine-tuning epoch, 3 timing rounds of 30 runs. Work folders live in a temporary directory,
removed at the end; the JSON (--out) and the plot beside it (same name, .png) stay.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from common import log
from hpo import fashion_subset
from provenance import provenance

# what the figures depend on (`python -m bench.status`)
MEASURES = (
    "bench/ssl_pruning.py",
    "bench/hpo.py",
    "bench/common.py",
    "adl/passes/train/__init__.py",
    "adl/passes/train/loop.py",
    "adl/passes/train/objective.py",
    "adl/passes/train/regularizers.py",
    "adl/passes/train/ssl.py",
    "adl/passes/shrink",
    "adl/passes/channels.py",
    "adl/passes/amc",
    "adl/passes/rl",
    "adl/backends",
    "adl/driver",
    "adl/models",
    "adl/data",
)
NETWORK = ("cnn", {"channels": [32, 64], "hidden": 128})
TARGET = "kind = llvm  cores = 2"
THREADS = 2  # torch threads for training; the libraries are timed with 1 and 2
# ssl(filters, channels): smoke runs (multiples of 16) kept 25 % of the FLOPs at 0.05 after 8 epochs, 94 % at
# 0.03 after 3; 0.03 for 8 epochs aims between
LAMBDA = 0.03
QUICK_LAMBDA = 0.5  # --quick's 1 epoch on 2,000 images zeros nothing at 0.05: a stronger lasso exercises shrink
METHODS = ("unpruned", "ssl", "amc", "uniform")
PRUNED = ("ssl", "amc", "uniform")
BASELINES = ("amc", "uniform")
SPEEDUP_TARGET = 1.3
EXACT = 1e-4  # shrink's own bound on the output change when only exact zeros go
FLOPS_TOLERANCE = 0.02  # equal FLOPs: within 2 % of the unpruned network's FLOPs


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What the pipelines are written with: training epochs, the lasso's strength, AMC's search
    and the fine-tuning every pruned network gets."""

    epochs: int = 8
    lam: float = LAMBDA
    episodes: int = 120
    warmup: int = 40
    finetune: int = 2
    # every method's channel counts are multiples of 8: a finer grid than the AVX-512 default (16)
    # lets AMC and uniform pruning land near SSL's FLOPs on this small network (conv2 has 64)
    multiple: int = 8


def train_stage(recipe: Recipe, ssl: bool) -> str:
    """The `train` stage every pipeline shares (SGD, SSL's paper), with SSL's group lasso or without."""
    text = (
        f"train{{epochs={recipe.epochs},batch_size=64,"
        "optimizer=sgd(lr=0.05,momentum=0.9,weight_decay=0,nesterov=true),schedule=cosine"
    )
    if ssl:
        text += f",regularizer=ssl(filters={recipe.lam!r},channels={recipe.lam!r})"
    return text + "}"


def pipeline_text(method: str, recipe: Recipe, flops: float | None = None) -> str:
    """The pipeline a method compiles. `amc` and `uniform` need `flops`, the fraction SSL's
    `shrink` kept for the same seed: their budget, so that the methods meet at equal FLOPs.
    `ssl_train` is SSL's training alone (a reused stage: the accuracy before `shrink`)."""
    plain = train_stage(recipe, ssl=False)
    if method == "unpruned":
        return f"{plain},lower"
    if method == "ssl_train":
        return train_stage(recipe, ssl=True)
    if method == "ssl":
        return f"{train_stage(recipe, ssl=True)},shrink{{multiple={recipe.multiple},finetune={recipe.finetune}}},lower"
    if method in BASELINES:
        if flops is None or not 0.0 < flops <= 1.0:
            raise ValueError(f"{method} needs the FLOPs fraction SSL kept, in (0, 1], got {flops!r}")
        search = "ddpg" if method == "amc" else "uniform"
        return (
            f"{plain},amc{{flops={float(flops)!r},search={search},episodes={recipe.episodes},"
            f"warmup={recipe.warmup},multiple={recipe.multiple},finetune={recipe.finetune}}},lower"
        )
    raise ValueError(f"unknown method {method!r}")


def network(dataset: Any, seed: int) -> torch.nn.Module:
    """The bench's network, freshly initialised from torch seed `seed` (the same weights every
    time, so pipelines of one seed share their cached `train` stage)."""
    from adl.models import build_model

    family, options = NETWORK
    torch.manual_seed(seed)
    return build_model(family, options, input_shape=dataset.input_shape, classes=10, mean=dataset.mean, std=dataset.std)


# -- one seed ---------------------------------------------------------------------------------------


def method_record(manifest: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """What a method's manifest says: accuracies per stage, costs, kept fractions, channels, timings."""
    metrics = manifest["metrics"]
    record: dict[str, Any] = {
        "pipeline": manifest["pipeline"],
        "library_accuracy": metrics.get("accuracy") if manifest.get("library") else None,  # else torch's
        "torch_accuracy": metrics.get("torch_accuracy"),
        "flops": metrics.get("flops"),
        "params": metrics.get("params"),
        "kept_flops": 1.0,
        "kept_params": 1.0,
        "lower": {
            "latency_ms": None if metrics.get("latency_s") is None else metrics["latency_s"] * 1e3,
            "runtime_threads": metrics.get("runtime_threads"),
            "threads_median_ms": {n: s * 1e3 for n, s in (metrics.get("threads_median_s") or {}).items()},
            "max_abs_diff": metrics.get("max_abs_diff"),
            "size_bytes": metrics.get("size_bytes"),
            "build_seconds": (manifest.get("library") or {}).get("build_seconds"),
            "notes": (manifest.get("library") or {}).get("notes"),
        },
        "compile_seconds": seconds,
        "passes": manifest["passes"],
    }
    if "shrink" in metrics:
        shrink = metrics["shrink"]
        record["kept_flops"], record["kept_params"] = shrink["kept"]["flops"], shrink["kept"]["params"]
        record["channels"] = {name: {"kept": k, "of": n, "zeroed": z} for name, (k, n, z) in shrink["channels"].items()}
        record["shrink"] = {
            "zeroed": shrink["zeroed"],
            "prunable": shrink["prunable"],
            "multiple": shrink["multiple"],
            "output_change": shrink["output_change"],
            "finetune_test_accuracy": shrink["finetune"]["test_accuracy"],
        }
        last = (manifest.get("training", {}).get("history") or [{}])[-1]
        record["ssl_zeros_after_training"] = {k: v for k, v in last.items() if k.startswith("ssl_")}
    if "amc" in metrics:
        amc = metrics["amc"]
        record["kept_flops"], record["kept_params"] = amc["kept"]["flops"], amc["kept"]["params"]
        record["channels"] = {name: {"kept": k, "of": n} for name, (k, n) in amc["channels"].items()}
        record["amc"] = {
            "search": amc["search"],
            "budgets": amc["budgets"],
            "budget_met": amc["budget_met"],
            "multiple": amc["multiple"],
            "ratios": amc["ratios"],
            "val_accuracy_unpruned": amc["val_accuracy_unpruned"],
            "val_accuracy_pruned_before_finetune": amc["val_accuracy_pruned"],
            "finetune_test_accuracy": amc["finetune"]["test_accuracy"],
        }
    return record


def standalone_seconds(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Each method's compile seconds as if it ran alone: a stage another pipeline of the seed computed
    (and this one reused from the cache) counted at the seconds it took there."""
    computed = {p["key"]: p["seconds"] for r in runs.values() for p in r.get("passes", ()) if not p["reused"]}
    return {
        name: sum(computed.get(p["key"], p["seconds"]) for p in r["passes"])
        for name, r in runs.items()
        if "passes" in r
    }


def run_seed(
    seed: int, dataset: Any, recipe: Recipe, work: Path, note: Callable[[str], None] = log
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Compile the four pipelines (and SSL's training alone) for `seed`: the per-method records
    and the libraries' paths (in `work`, timed later)."""
    import adl

    cache = work / f"cache-{seed}"
    records: dict[str, dict[str, Any]] = {}
    manifests: dict[str, dict[str, Any]] = {}
    libraries: dict[str, Path] = {}

    def compile_(name: str, text: str) -> None:
        note(f"seed {seed}, {name}: {text}")
        started = time.perf_counter()
        try:
            result = adl.Pipeline.parse(text).run(
                network(dataset, seed),
                dataset,
                trained=False,
                target=TARGET,
                out_dir=work / f"seed{seed}-{name}",
                cache_dir=cache,
                seed=seed,
                log=lambda message: note(f"  seed {seed}, {name}: {message}"),
            )
        except Exception as err:  # noqa: BLE001 -- one failed pipeline is a result, not the end of the run
            records[name] = {"pipeline": text, "error": f"{type(err).__name__}: {err}"}
            note(f"seed {seed}, {name} FAILED: {records[name]['error']}")
            return
        seconds = time.perf_counter() - started
        manifests[name] = result.manifest
        records[name] = method_record(result.manifest, seconds)
        library = result.artifact_dir / "model.so"
        if library.is_file():
            libraries[name] = library
        record = records[name]
        note(
            f"seed {seed}, {name}: test accuracy {record['torch_accuracy']} (torch), "
            f"{record['library_accuracy']} (library); kept {record['kept_flops']:.3f} of the FLOPs ({seconds:.0f} s)"
        )

    compile_("unpruned", pipeline_text("unpruned", recipe))
    compile_("ssl_train", pipeline_text("ssl_train", recipe))
    compile_("ssl", pipeline_text("ssl", recipe))
    reached = records["ssl"].get("kept_flops") if "error" not in records["ssl"] else None
    for method in BASELINES:
        if reached is None:
            records[method] = {"error": "not run: the ssl pipeline failed, so there is no FLOPs budget"}
        else:
            compile_(method, pipeline_text(method, recipe, reached))

    train_accuracy = {
        "plain": records["unpruned"].get("torch_accuracy"),
        "ssl": records["ssl_train"].get("torch_accuracy"),
    }
    for method in METHODS:
        record = records[method]
        if "error" in record:
            continue
        record["stages"] = {  # test accuracy of the torch network after each stage, then of the library
            "train": train_accuracy["ssl" if method == "ssl" else "plain"],
            **({"finetuned": record["torch_accuracy"]} if method in PRUNED else {}),
            "library": record["library_accuracy"],
        }
        if record.get("flops") and records["unpruned"].get("flops"):
            record["flops_over_unpruned"] = record["flops"] / records["unpruned"]["flops"]
    for name, seconds in standalone_seconds(records).items():
        records[name]["compile_seconds_standalone"] = seconds
    ssl_train = records.pop("ssl_train")
    return {"seed": seed, "methods": records, "ssl_train": ssl_train}, libraries


# -- latency ----------------------------------------------------------------------------------------


def median_ratio(base_ms: Sequence[float], ms: Sequence[float]) -> float:
    """The median over interleaved rounds of base / this (a slow spell hits both of a round alike)."""
    return statistics.median(b / t for b, t in zip(base_ms, ms))


def time_libraries(
    libraries: Mapping[tuple[int, str], Path], input_shape: Sequence[int], rounds: int, repeats: int
) -> dict[tuple[int, str], dict[str, Any]]:
    """Every library with 1..THREADS threads in the same interleaved rounds: per library the
    per-round medians (ms) per thread count and the fastest count."""
    from adl.backends.runtime import fastest_thread_counts

    names = {f"seed{seed}-{method}": (seed, method) for seed, method in libraries}
    paths = {name: libraries[key] for name, key in names.items()}
    choices = fastest_thread_counts(paths, (1, *input_shape), THREADS, rounds=rounds, repeats=repeats, warmup=10)
    return {
        names[name]: {
            "rounds_ms": {n: [t * 1e3 for t in times] for n, times in choice.rounds_s.items()},
            "fastest_threads": choice.threads,
        }
        for name, choice in choices.items()
    }


def add_speedups(runs: Sequence[dict[str, Any]], timings: Mapping[tuple[int, str], Mapping[str, Any]]) -> None:
    """Each timed library's latency and its speedup over the same seed's unpruned library (in place):
    at the thread count each artifact ships with, and at the re-timed fastest counts."""
    for run in runs:
        seed = run["seed"]
        base = timings.get((seed, "unpruned"))
        for method, record in run["methods"].items():
            timing = timings.get((seed, method))
            if timing is None or "error" in record:
                continue
            shipped = record["lower"]["runtime_threads"] or timing["fastest_threads"]
            record["latency"] = {
                **timing,
                "shipped_threads": shipped,
                "shipped_median_ms": statistics.median(timing["rounds_ms"][shipped]),
            }
            if base is None:
                continue
            base_shipped = run["methods"]["unpruned"]["lower"]["runtime_threads"] or base["fastest_threads"]
            record["speedup"] = median_ratio(base["rounds_ms"][base_shipped], timing["rounds_ms"][shipped])
            record["speedup_at_fastest_threads"] = median_ratio(
                base["rounds_ms"][base["fastest_threads"]], timing["rounds_ms"][timing["fastest_threads"]]
            )


# -- summary and goals ------------------------------------------------------------------------------


def per_seed(runs: Sequence[Mapping[str, Any]], method: str, field: str) -> dict[int, float]:
    """seed -> a method's `field`, for the seeds where the method ran and has it."""
    out = {}
    for run in runs:
        record = run["methods"].get(method) or {}
        if "error" not in record and record.get(field) is not None:
            out[run["seed"]] = record[field]
    return out


def describe(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and standard error (None where too few values)."""
    n = len(values)
    sd = statistics.stdev(values) if n > 1 else None
    return {
        "n": n,
        "mean": statistics.fmean(values) if n else None,
        "sd": sd,
        "standard_error": sd / math.sqrt(n) if sd is not None else None,
        "values": list(values),
    }


def paired(runs: Sequence[Mapping[str, Any]], first: str, second: str, field: str = "library_accuracy") -> dict:
    """first - second per seed, in points (x100), over the seeds both have; mean, sd, s.e."""
    a, b = per_seed(runs, first, field), per_seed(runs, second, field)
    seeds = sorted(set(a) & set(b))
    differences = [100 * (a[s] - b[s]) for s in seeds]
    return {
        "seeds": seeds,
        "differences": differences,
        **{k: v for k, v in describe(differences).items() if k != "values"},
    }


def summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in METHODS:
        out[method] = {
            field: describe(list(per_seed(runs, method, field).values()))
            for field in ("library_accuracy", "kept_flops", "kept_params", "speedup", "compile_seconds_standalone")
        }
    for baseline in BASELINES:
        out[f"ssl_minus_{baseline}"] = paired(runs, "ssl", baseline)
    return out


def flops_gaps(runs: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, float | None]]:
    """Per seed, each baseline's kept FLOPs minus SSL's (None where either did not run)."""
    gaps: dict[int, dict[str, float | None]] = {}
    for run in runs:
        seed = run["seed"]
        ssl = per_seed([run], "ssl", "kept_flops").get(seed)
        gaps[seed] = {}
        for baseline in BASELINES:
            kept = per_seed([run], baseline, "kept_flops").get(seed)
            gaps[seed][baseline] = None if ssl is None or kept is None else kept - ssl
    return gaps


def goals(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The bench's goals, each {value, target, met}; a goal without figures is not met."""
    out: dict[str, dict[str, Any]] = {}
    gaps = flops_gaps(runs)
    for baseline in BASELINES:
        p = paired(runs, "ssl", baseline)
        unequal = [s for s, g in gaps.items() if g[baseline] is not None and abs(g[baseline]) > FLOPS_TOLERANCE]
        out[f"ssl_vs_{baseline}_accuracy"] = {
            "value": p["mean"],
            "target": ">= 0 points (mean over seeds of the paired ssl - baseline library test accuracy)",
            "met": p["mean"] is not None and p["mean"] >= 0.0,
            "standard_error": p["standard_error"],
            "seeds": p["seeds"],
            "paired_differences": p["differences"],
            **({"flops_unequal_seeds": unequal} if unequal else {}),
        }
    speedups = list(per_seed(runs, "ssl", "speedup").values())
    median = statistics.median(speedups) if speedups else None
    out["ssl_speedup"] = {
        "value": median,
        "target": f">= {SPEEDUP_TARGET} (median over seeds of the ssl library's measured speedup over unpruned)",
        "met": median is not None and median >= SPEEDUP_TARGET,
        "per_seed": speedups,
    }
    changes = [r["shrink"]["output_change"] for r in (run["methods"].get("ssl") or {} for run in runs) if "shrink" in r]
    worst = max(changes) if changes else None
    out["ssl_removal_exact"] = {
        "value": worst,
        "target": f"<= {EXACT:g} (max over seeds of shrink's output change, of the logits' scale)",
        "met": worst is not None and worst <= EXACT,
    }
    known = [abs(g) for seed_gaps in gaps.values() for g in seed_gaps.values() if g is not None]
    missing = [s for s, g in gaps.items() if any(v is None for v in g.values())]
    value = max(known) if known else None
    out["equal_flops"] = {
        "value": value,
        "target": f"<= {FLOPS_TOLERANCE:g} (max over seeds of |baseline - ssl| kept FLOPs, of the unpruned network's)",
        "met": value is not None and value <= FLOPS_TOLERANCE and not missing,
        "per_seed": {str(s): g for s, g in gaps.items()},
        **({"reason": f"a baseline or ssl did not run for seeds {missing}"} if missing else {}),
    }
    return out


# -- plot -------------------------------------------------------------------------------------------


COLORS = {"unpruned": "gray", "ssl": "tab:green", "amc": "tab:red", "uniform": "tab:blue"}


def plot(report: Mapping[str, Any], path: Path) -> None:
    """Library test accuracy against kept FLOPs (a point per method and seed, the mean bold) and
    the measured speedups over the unpruned libraries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in METHODS:
        accuracy, kept = per_seed(runs, method, "library_accuracy"), per_seed(runs, method, "kept_flops")
        seeds = sorted(set(accuracy) & set(kept))
        if not seeds:
            continue
        xs, ys = [100 * kept[s] for s in seeds], [100 * accuracy[s] for s in seeds]
        left.scatter(xs, ys, color=COLORS[method], alpha=0.45, s=25)
        left.scatter(
            [statistics.fmean(xs)],
            [statistics.fmean(ys)],
            color=COLORS[method],
            s=110,
            edgecolors="black",
            linewidths=2,
            label=f"{method} (mean of {len(seeds)})",
            zorder=3,
        )
    left.set_xlabel("FLOPs kept (% of the unpruned network)")
    left.set_ylabel("library test accuracy (%)")
    left.set_title(f"Fashion-MNIST, cnn[32, 64] hidden 128, {len(runs)} seed(s)", fontsize=10)
    left.legend(fontsize=8)
    for i, method in enumerate(PRUNED):
        values = list(per_seed(runs, method, "speedup").values())
        if values:
            right.bar(i, statistics.fmean(values), color=COLORS[method], alpha=0.7)
            right.scatter([i] * len(values), values, color="black", s=12, zorder=3)
    right.axhline(SPEEDUP_TARGET, color="black", ls=":", label=f"goal for ssl: {SPEEDUP_TARGET}x")
    right.axhline(1.0, color="gray", lw=0.8)
    right.set_xticks(range(len(PRUNED)), PRUNED)
    right.set_ylabel("speedup over unpruned (TVM, batch 1)")
    right.set_title("measured latency, interleaved rounds (mean of per-seed medians)", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 2,000/500 images, 1 epoch (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ssl_pruning.json"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 8; --quick: 1)")
    parser.add_argument(
        "--lam",
        type=float,
        default=None,
        help=f"ssl(filters = channels = lam) (default {LAMBDA}; --quick: {QUICK_LAMBDA})",
    )
    parser.add_argument("--episodes", type=int, default=120, help="AMC search episodes")
    parser.add_argument("--warmup", type=int, default=40, help="AMC's random episodes first")
    parser.add_argument("--finetune", type=int, default=2, help="fine-tuning epochs of every pruned network")
    parser.add_argument("--train", type=int, default=12_000, help="training images")
    parser.add_argument("--val", type=int, default=3_000, help="validation images")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved latency rounds")
    parser.add_argument("--repeats", type=int, default=200, help="timed runs per library, thread count and round")
    args = parser.parse_args()
    epochs, lam = args.epochs or 8, LAMBDA if args.lam is None else args.lam
    if args.quick:
        args.seeds, args.train, args.val, args.episodes, args.warmup, args.finetune = 1, 2_000, 500, 10, 5, 1
        args.rounds, args.repeats = 3, 30
        epochs, lam = args.epochs or 1, QUICK_LAMBDA if args.lam is None else args.lam
    recipe = Recipe(epochs=epochs, lam=lam, episodes=args.episodes, warmup=args.warmup, finetune=args.finetune)
    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    origin = provenance(
        f"Fashion-MNIST: {args.train} training and {args.val} validation images from the official training set "
        "(fixed permutation, seed 0), the official 10,000 test images"
    )
    dataset = fashion_subset(args.train, args.val)
    report: dict[str, Any] = {
        "goals": {},
        "provenance": origin,
        "setup": {
            "data": {"train": len(dataset.y_train), "validation": len(dataset.y_val), "test": len(dataset.y_test)},
            "network": f"{NETWORK[0]}(channels = {NETWORK[1]['channels']}, hidden = {NETWORK[1]['hidden']})",
            "recipe": dataclasses.asdict(recipe),
            "pipelines": {
                m: pipeline_text(m, recipe, None if m not in BASELINES else 0.5).replace("flops=0.5", "flops=F")
                for m in (*METHODS, "ssl_train")
            },
            "equal_flops": "F = the FLOPs fraction the ssl pipeline's shrink kept for the seed",
            "target": TARGET,
            "seeds": args.seeds,
            "torch_threads": THREADS,
            "latency": {
                "rounds": args.rounds,
                "repeats": args.repeats,
                "warmup": 10,
                "threads": f"1..{THREADS}, every library of every seed in the same interleaved rounds",
                "speedup": "median over rounds of unpruned / pruned, each at its artifact's runtime_threads",
            },
            "flops_tolerance": FLOPS_TOLERANCE,
            "quick": args.quick,
        },
        "runs": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        report["summary"] = summary(report["runs"])
        report["goals"] = goals(report["runs"])
        report["seconds"] = time.perf_counter() - started
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    work = Path(tempfile.mkdtemp(prefix="adl-ssl-bench-"))
    try:
        libraries: dict[tuple[int, str], Path] = {}
        for seed in range(args.seeds):
            run, paths = run_seed(seed, dataset, recipe, work)
            report["runs"].append(run)
            libraries.update({(seed, m): p for m, p in paths.items() if m in METHODS})
            save()
        if libraries:
            log(f"timing {len(libraries)} libraries in {args.rounds} interleaved rounds")
            timings = time_libraries(libraries, dataset.input_shape, args.rounds, args.repeats)
            add_speedups(report["runs"], timings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save()
    plot(report, args.out.with_name(args.out.stem + ".png"))
    for goal, verdict in report["goals"].items():
        value = verdict["value"]
        log(
            f"{goal}: {value if value is None else f'{value:.4g}'} (target {verdict['target']}) "
            f"{'met' if verdict['met'] else 'MISSED'}"
        )
    log(f"done in {report['seconds']:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))  # before TVM starts its thread pool (on first use)
    main()
