"""Knowledge distillation in the compression passes' fine-tuning: AMC at 50 % of the FLOPs and HAQ
at a 2-3 bit size budget, fine-tuned with and without the unpruned network as teacher.

    python bench/distill.py [--quick] [--out FILE] [--seeds N] [--epochs N] [--finetune N]

Setup: Fashion-MNIST, 12,000 training and 3,000 validation images from the official training
set (bench/hpo.py's `fashion_subset`), the official 10,000 test images. The network is adl's
`cnn(channels = [32, 64], hidden = 128)`, trained by `train { epochs = 6 }` (Adam 0.003, cosine).
Per seed, four pipelines run through `adl.Pipeline` with one cache, so the trained network is
shared and each compression pass's search runs with the same seed on the same network:

    train{epochs=6},amc{flops=50%,episodes=120,warmup=40,finetune=2}
    train{epochs=6},amc{flops=50%,episodes=120,warmup=40,finetune=2,distill=teacher(temperature=4,weight=0.7)}
    train{epochs=6},haq{bits=2..8,budget=size,fraction=0.3,episodes=60,warmup=20,finetune=2}
    train{epochs=6},haq{...,distill=teacher(temperature=4,weight=0.7)}

The teacher is the trained, uncompressed network (the pass's input). The search is
deterministic for a seed, so each pair fine-tunes the same compressed network (the bench checks
that the kept channels and the bit policy agree and records it); only the fine-tuning's loss
differs. Hinton et al.'s soft targets at T = 4 with 70 % of the loss on them.

Accuracy drop: the trained network's test accuracy minus the compressed one's after
fine-tuning (for HAQ the deployed integer network's). Goal, per method: distillation recovers
at least half of the drop plain fine-tuning leaves, (drop_plain - drop_distill) / drop_plain
>= 0.5, from the means over seeds. Where plain fine-tuning leaves less than 0.1 points there is
nothing to recover and the goal is reported as missed with that reason.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import log
from hpo import fashion_subset
from provenance import provenance

import adl
from adl.models import build_model
from adl.passes.train.loop import evaluate

MEASURES = (
    "bench/distill.py",
    "bench/hpo.py",
    "bench/common.py",
    "adl/passes/train/__init__.py",
    "adl/passes/train/loop.py",
    "adl/passes/train/objective.py",
    "adl/passes/train/regularizers.py",
    "adl/passes/train/distill.py",
    "adl/passes/amc",
    "adl/passes/channels.py",
    "adl/passes/haq",
    "adl/passes/rl",
    "adl/driver",
    "adl/models",
    "adl/data",
)
NETWORK = ("cnn", {"channels": (32, 64), "hidden": 128})
TEACHER = "teacher(temperature=4,weight=0.7)"
RECOVERY_TARGET = 0.5
NOTHING_TO_RECOVER = 0.001  # a drop under 0.1 points: nothing for distillation to recover


def pipelines(epochs: int, finetune: int, amc_episodes: int, haq_episodes: int) -> dict[str, str]:
    """The four compression pipelines of a seed (pipeline strings), by method and fine-tuning."""
    train = f"train{{epochs={epochs}}}"
    amc = f"amc{{flops=50%,episodes={amc_episodes},warmup={amc_episodes // 3},finetune={finetune}"
    haq = (
        f"haq{{bits=2..8,budget=size,fraction=0.3,episodes={haq_episodes},warmup={haq_episodes // 3},"
        f"finetune={finetune}"
    )
    return {
        "amc_plain": f"{train},{amc}}}",
        "amc_distill": f"{train},{amc},distill={TEACHER}}}",
        "haq_plain": f"{train},{haq}}}",
        "haq_distill": f"{train},{haq},distill={TEACHER}}}",
    }


def network(dataset, seed: int) -> torch.nn.Module:
    family, options = NETWORK
    torch.manual_seed(seed)
    return build_model(family, options, input_shape=dataset.input_shape, classes=10, mean=dataset.mean, std=dataset.std)


def run_seed(dataset, seed: int, strings: dict[str, str], work: Path) -> dict:
    """Every pipeline of one seed, sharing a cache: the trained network and its test accuracy,
    and per pipeline the compressed network's accuracy, policy and fine-tuning history."""
    cache = work / f"cache{seed}"
    row: dict = {"seed": seed, "pipelines": {}}
    for name, text in strings.items():
        started = time.perf_counter()
        result = adl.Pipeline.parse(text).run(
            network(dataset, seed), dataset, out_dir=work / f"out{seed}_{name}", cache_dir=cache, seed=seed
        )
        metrics = result.module.metrics
        method = name.split("_")[0]
        record = metrics[method]
        # the pass's input, which it records as the module's reference: the trained, uncompressed network
        row["trained_test_accuracy"] = evaluate(result.module.reference, dataset.x_test, dataset.y_test)
        row["pipelines"][name] = {
            "pipeline": text,
            "test_accuracy": float(metrics["torch_accuracy"]),
            "policy": record["channels"] if method == "amc" else [r["weight_bits"] for r in record["policy"]],
            "kept": record.get("kept"),
            "finetune_history": record["finetune"]["history"],
            "seconds": time.perf_counter() - started,
        }
        log(f"seed {seed} {name}: test {metrics['torch_accuracy']:.4f} ({row['pipelines'][name]['seconds']:.0f} s)")
    for method in ("amc", "haq"):
        plain, distill = row["pipelines"][f"{method}_plain"], row["pipelines"][f"{method}_distill"]
        row[f"{method}_same_policy"] = plain["policy"] == distill["policy"]
    return row


def summary(rows: list[dict]) -> dict:
    """Per method: the mean drop with plain fine-tuning and with distillation, the recovered share."""
    out: dict = {}
    for method in ("amc", "haq"):
        drops = {
            kind: [r["trained_test_accuracy"] - r["pipelines"][f"{method}_{kind}"]["test_accuracy"] for r in rows]
            for kind in ("plain", "distill")
        }
        plain, distill = statistics.mean(drops["plain"]), statistics.mean(drops["distill"])
        gains = [p - d for p, d in zip(drops["plain"], drops["distill"])]
        out[method] = {
            "drop_plain": plain,
            "drop_distill": distill,
            "drops": drops,
            "distill_gain_points": {
                "per_seed": [100 * g for g in gains],
                "mean": 100 * statistics.mean(gains),
                "standard_error": 100 * (statistics.stdev(gains) / math.sqrt(len(gains)) if len(gains) > 1 else 0.0),
            },
            "recovered": (plain - distill) / plain if plain >= NOTHING_TO_RECOVER else None,
            "same_policy": all(r[f"{method}_same_policy"] for r in rows),
        }
    return out


def goals(summary_: dict) -> dict:
    out = {}
    for method in ("amc", "haq"):
        recovered = summary_[method]["recovered"]
        goal = {"value": recovered, "target": RECOVERY_TARGET, "met": recovered is not None and recovered >= 0.5}
        if recovered is None:
            goal["note"] = (
                f"plain fine-tuning left a drop under {100 * NOTHING_TO_RECOVER:g} points: nothing to recover"
            )
        out[f"{method}_distillation_recovers_half_the_drop"] = goal
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["runs"]
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = ["trained", "amc plain", "amc distill", "haq plain", "haq distill"]
    keys = [None, "amc_plain", "amc_distill", "haq_plain", "haq_distill"]
    for i, key in enumerate(keys):
        values = [
            100 * (r["trained_test_accuracy"] if key is None else r["pipelines"][key]["test_accuracy"]) for r in rows
        ]
        ax.scatter([i] * len(values), values, color="tab:gray", s=12)
        ax.bar(
            i, statistics.mean(values), color="tab:blue" if key is None or "plain" in key else "tab:green", alpha=0.6
        )
    low = min(100 * r["pipelines"][k]["test_accuracy"] for r in rows for k in keys if k) - 2
    ax.set_ylim(low, 100 * max(r["trained_test_accuracy"] for r in rows) + 1)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fine-tuning after compression, with and without distillation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, small data, few episodes (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/distill.json"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--finetune", type=int, default=2)
    parser.add_argument("--train", type=int, default=12_000)
    parser.add_argument("--val", type=int, default=3_000)
    args = parser.parse_args()
    amc_episodes, haq_episodes = 120, 60
    if args.quick:
        args.seeds, args.epochs, args.finetune, args.train, args.val = 1, 1, 1, 2_000, 500
        amc_episodes, haq_episodes = 6, 6
    torch.set_num_threads(2)
    dataset = fashion_subset(args.train, args.val)
    strings = pipelines(args.epochs, args.finetune, amc_episodes, haq_episodes)
    report: dict = {
        "provenance": provenance(
            f"Fashion-MNIST: {args.train} training and {args.val} validation images from the official training "
            f"set (fixed permutation, seed 0), the official {len(dataset.y_test)} test images"
        ),
        "goals": {},
        "setup": {
            "network": f"{NETWORK[0]}{NETWORK[1]}",
            "pipelines": strings,
            "teacher": "the trained, uncompressed network (the compression pass's input)",
            "seeds": args.seeds,
            "drop": "trained network's test accuracy - compressed network's after fine-tuning (haq: deployed)",
        },
    }
    work = Path(tempfile.mkdtemp(prefix="adl-distill-bench-"))
    try:
        report["runs"] = [run_seed(dataset, seed, strings, work) for seed in range(args.seeds)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["summary"] = summary(report["runs"])
    report["goals"] = goals(report["summary"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out.with_suffix(".png"))
    for goal, verdict in report["goals"].items():
        log(f"{goal}: {verdict['value']} (target {verdict['target']}): {'met' if verdict['met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
