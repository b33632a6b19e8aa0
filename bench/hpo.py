"""Hyperparameter search on Fashion-MNIST: TPE against random search and the hand-picked defaults,
and trials per hour on one and two local workers and on a 2-CPU local Ray cluster.

    python bench/hpo.py [--quick] [--out FILE] [--seeds N] [--trials N] [--train N] [--val N]

The network is adl's `cnn(channels = [16, 32], hidden = 64)`; the data is a deterministic subset
of Fashion-MNIST's official training set (`--train` images to train on, the next `--val` held out
as the validation split that scores trials) and the official 10,000 test images. The space is
what a user of the `train` pass would write:

    train(epochs = int(2, 8), batch_size = choice(32, 64, 128, 256), schedule = choice(cosine, constant),
          optimizer = adam(lr = loguniform(1e-4, 1e-1), weight_decay = loguniform(1e-6, 1e-2)),
          label_smoothing = uniform(0 %, 20 %))

Search: for each seed, the `hpo` pass's study (`adl.passes.hpo.search.run_search`, the code the
pass runs) with TPE and with random search, the same trial budget, the median pruner for both,
trials on two local worker processes (one torch thread each). A method's score is the mean over
seeds of its study's best validation accuracy (goal: TPE >= random); each study's winner is then
retrained by the `train` loop and its test accuracy reported, as are the hand-picked defaults
(examples/fashion.adl's `train { epochs = 6 }`: Adam 0.003, batch 64, cosine), trained per seed.

Throughput: the same small study (random sampler, no pruning, `lr` searched, 2 epochs per trial)
run on local(jobs = 1), local(jobs = 2) and ray(cpus = 1) on a `ray start --head --num-cpus 2`
cluster on loopback, every trial on one torch thread; rounds interleave the three, and trials
per hour count from the executor's start (worker start-up included) to the last trial. Goal:
two local workers >= 1.7x the trials per hour of one (median of per-round ratios).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import log
from provenance import provenance

from adl.data import load_dataset
from adl.ir.domains import Domain, substitute
from adl.ir.options import format_value
from adl.ir.progress import SilentProgress
from adl.ir.spec import CallValue
from adl.models import build_model
from adl.passes.executor import LocalExecutor, RayExecutor
from adl.passes.executor.ray import LocalRayCluster
from adl.passes.hpo.search import Budget, best_trial, run_search, trial_records
from adl.passes.hpo.trial import TrialShared
from adl.passes.train import TrainPass
from adl.passes.train.loop import train_model

# what the figures depend on (`python -m bench.status`)
MEASURES = (
    "bench/hpo.py",
    "adl/passes/hpo",
    "adl/passes/executor",
    "adl/passes/train/loop.py",
    "adl/ir/domains.py",
    "adl/models",
    "adl/data",
)
NETWORK = ("cnn", {"channels": (16, 32), "hidden": 64})
SPACE = {
    "epochs": Domain("int", 2, 8),
    "batch_size": Domain("choice", choices=(32, 64, 128, 256)),
    "schedule": Domain("choice", choices=("cosine", "constant")),
    "optimizer.lr": Domain("loguniform", 1e-4, 1e-1),
    "optimizer.weight_decay": Domain("loguniform", 1e-6, 1e-2),
    "label_smoothing": Domain("uniform", 0.0, 0.2),
}
HAND_PICKED = {"epochs": 6, "batch_size": 64, "schedule": "cosine", "lr": 0.003, "weight_decay": 0.0}
THROUGHPUT_SPACE = {"optimizer.lr": Domain("loguniform", 1e-4, 1e-1)}
THROUGHPUT_EPOCHS = 2
SPEEDUP_TARGET = 1.7


def fashion_subset(train: int, val: int, seed: int = 0):
    """`train` + `val` images of Fashion-MNIST's training set (a fixed permutation), the official test set."""
    full = load_dataset("fashion_mnist", classes=10, seed=seed)
    order = np.random.default_rng(seed).permutation(len(full.y_train))
    fit, held = order[:train], order[train : train + val]
    return dataclasses.replace(
        full, x_train=full.x_train[fit], y_train=full.y_train[fit], x_val=full.x_train[held], y_val=full.y_train[held]
    )


def network(dataset, seed: int) -> torch.nn.Module:
    family, options = NETWORK
    torch.manual_seed(seed)
    return build_model(family, options, input_shape=dataset.input_shape, classes=10, mean=dataset.mean, std=dataset.std)


def base_config(space: dict[str, Domain], epochs: int | None = None) -> dict:
    """The train pass's options with the domains of `space` in place."""
    config = {o.name: o.default for o in TrainPass.options}
    lr = space.get("optimizer.lr", 0.003)
    decay = space.get("optimizer.weight_decay", 0.0)
    config["optimizer"] = CallValue("adam", (("lr", lr), ("weight_decay", decay)))
    for path, domain in space.items():
        if "." not in path:
            config[path] = domain
    if epochs is not None:
        config["epochs"] = epochs
    return config


def hand_picked_config() -> dict:
    config = {o.name: o.default for o in TrainPass.options}
    config.update(epochs=HAND_PICKED["epochs"], batch_size=HAND_PICKED["batch_size"], schedule=HAND_PICKED["schedule"])
    config["optimizer"] = CallValue("adam", (("lr", HAND_PICKED["lr"]), ("weight_decay", HAND_PICKED["weight_decay"])))
    return config


def study(dataset, model, space, config, executor, *, trials: int, sampler: str, pruner: str, seed: int, folder: Path):
    """One study of `trials` on `executor`; returns (study, seconds from the executor's start)."""
    started = time.perf_counter()
    result = run_search(
        folder / "study.db",
        space,
        config,
        executor,
        TrialShared(dataset, model, threads=1),
        budget=Budget(trials),
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        state_folder=folder / "trials",
    )
    return result, time.perf_counter() - started


def retrain(dataset, config: dict, seed: int) -> dict:
    """The `train` loop on `config` from the seed's initial weights: validation and test accuracy."""
    with tempfile.TemporaryDirectory() as state:
        result = train_model(
            network(dataset, seed),
            dataset,
            config,
            seed=seed,
            state_dir=Path(state),
            progress=SilentProgress(),
            threads=1,
            log=lambda message: None,
        )
    return {"val_accuracy": result.history[-1]["val_accuracy"], "test_accuracy": result.test_accuracy}


def chosen_config(params: dict) -> dict:
    """The train options a study's winner trains with: the space with its values in place."""
    return substitute(base_config(SPACE), params)


def search_comparison(dataset, seeds: int, trials: int, work: Path) -> dict:
    runs: dict[str, list[dict]] = {"tpe": [], "random": [], "hand_picked": []}
    for seed in range(seeds):
        model = network(dataset, seed)
        for sampler in ("tpe", "random"):
            log(f"seed {seed}: {sampler} study of {trials} trials")
            result, seconds = study(
                dataset,
                model,
                SPACE,
                base_config(SPACE),
                LocalExecutor(jobs=2, threads=1),
                trials=trials,
                sampler=sampler,
                pruner="median",
                seed=seed,
                folder=work / f"{sampler}-{seed}",
            )
            best = best_trial(result)
            records = trial_records(result)
            winner = retrain(dataset, chosen_config(best.params), seed)
            runs[sampler].append(
                {
                    "seed": seed,
                    "best_val_accuracy": best.value,
                    "best_trial": best.number,
                    "best_params": best.params,
                    "retrained": winner,
                    "seconds": seconds,
                    "states": {s: sum(r["state"] == s for r in records) for s in {r["state"] for r in records}},
                    "epochs_run": sum(len(r["val_accuracy_per_epoch"]) for r in records),
                    "trials": records,
                }
            )
            test = winner["test_accuracy"]
            log(f"  best validation {best.value:.4f} (trial {best.number}), retrained test {test:.4f}")
        log(f"seed {seed}: hand-picked defaults")
        runs["hand_picked"].append({"seed": seed, **retrain(dataset, hand_picked_config(), seed)})
    return runs


def summary(runs: dict) -> dict:
    out = {}
    for method in ("tpe", "random"):
        best = [r["best_val_accuracy"] for r in runs[method]]
        test = [r["retrained"]["test_accuracy"] for r in runs[method]]
        out[method] = {
            "best_val_mean": statistics.mean(best),
            "best_val_sd": _sd(best),
            "test_mean": statistics.mean(test),
        }
    val = [r["val_accuracy"] for r in runs["hand_picked"]]
    test = [r["test_accuracy"] for r in runs["hand_picked"]]
    out["hand_picked"] = {"val_mean": statistics.mean(val), "val_sd": _sd(val), "test_mean": statistics.mean(test)}
    paired = [t["best_val_accuracy"] - r["best_val_accuracy"] for t, r in zip(runs["tpe"], runs["random"])]
    out["tpe_minus_random"] = {"mean": statistics.mean(paired), "sd": _sd(paired), "per_seed": paired}
    return out


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


# -- throughput ----------------------------------------------------------------------------------


def throughput(dataset, trials: int, rounds: int, work: Path) -> dict:
    model = network(dataset, 0)
    config = base_config(THROUGHPUT_SPACE, epochs=THROUGHPUT_EPOCHS)
    cluster = LocalRayCluster(cpus=2)
    figures: dict[str, list[float]] = {"local_1": [], "local_2": [], "ray_2cpu": []}
    try:
        for round_ in range(rounds):
            for name, make in (
                ("local_1", lambda: LocalExecutor(jobs=1, threads=1)),
                ("local_2", lambda: LocalExecutor(jobs=2, threads=1)),
                ("ray_2cpu", lambda: RayExecutor(address=cluster.address, cpus=1)),
            ):
                _, seconds = study(
                    dataset,
                    model,
                    THROUGHPUT_SPACE,
                    config,
                    make(),
                    trials=trials,
                    sampler="random",
                    pruner="none",
                    seed=100 + round_,
                    folder=work / f"throughput-{name}-{round_}",
                )
                figures[name].append(trials / seconds * 3600)
                log(f"round {round_}: {name} {figures[name][-1]:.0f} trials/hour ({seconds:.1f} s)")
    finally:
        cluster.stop()
    ratios = [two / one for one, two in zip(figures["local_1"], figures["local_2"])]
    ray_ratios = [r / one for one, r in zip(figures["local_1"], figures["ray_2cpu"])]
    return {
        "trials": trials,
        "epochs_per_trial": THROUGHPUT_EPOCHS,
        "trials_per_hour": figures,
        "median_trials_per_hour": {k: statistics.median(v) for k, v in figures.items()},
        "local_2_over_local_1": ratios,
        "speedup_2_workers": statistics.median(ratios),
        "ray_2cpu_over_local_1": statistics.median(ray_ratios),
    }


def goals(report: dict) -> dict:
    s = report["summary"]
    return {
        "tpe_at_least_random": {
            "value": round(s["tpe"]["best_val_mean"] - s["random"]["best_val_mean"], 5),
            "target": ">= 0 (mean best validation accuracy, TPE minus random, equal trials)",
            "met": s["tpe"]["best_val_mean"] >= s["random"]["best_val_mean"],
        },
        "two_workers_speedup": {
            "value": round(report["throughput"]["speedup_2_workers"], 3),
            "target": f">= {SPEEDUP_TARGET} (trials per hour, 2 local workers over 1)",
            "met": report["throughput"]["speedup_2_workers"] >= SPEEDUP_TARGET,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, few trials, small data (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/hpo.json"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--train", type=int, default=12_000)
    parser.add_argument("--val", type=int, default=3_000)
    parser.add_argument("--throughput-trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials, args.train, args.val, args.throughput_trials, args.rounds = 1, 4, 2000, 500, 4, 1
    torch.set_num_threads(1)
    dataset = fashion_subset(args.train, args.val)
    report: dict = {
        "provenance": provenance(
            f"Fashion-MNIST: {args.train} training images and {args.val} validation images from the official "
            f"training set (fixed permutation, seed 0), the official {len(dataset.y_test)} test images"
        ),
        "goals": {},
        "setup": {
            "network": f"{NETWORK[0]}{NETWORK[1]}",
            "space": {path: format_value(domain) for path, domain in SPACE.items()},
            "hand_picked": HAND_PICKED,
            "trials_per_study": args.trials,
            "seeds": args.seeds,
            "pruner": "median",
            "search_executor": "local(jobs=2, threads=1)",
            "cpu_count": os.cpu_count(),
        },
    }
    work = Path(tempfile.mkdtemp(prefix="adl-hpo-bench-"))
    try:
        runs = search_comparison(dataset, args.seeds, args.trials, work)
        report["runs"] = runs
        report["summary"] = summary(runs)
        report["throughput"] = throughput(dataset, args.throughput_trials, args.rounds, work)
        report["goals"] = goals(report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for goal, verdict in report["goals"].items():
        log(f"{goal}: {verdict['value']} (target {verdict['target']}): {'met' if verdict['met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
