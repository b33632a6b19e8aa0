"""The learned optimizer on Fashion-MNIST, a task outside its meta-training family, against tuned baselines.

    python bench/l2o_fashion.py [--quick] [--out FILE] [--seeds N] [--images N]

L2O was meta-trained on 8x8 digits (a sigmoid MLP, a 4-channel CNN) and random quadratics.
Here it trains a CNN on 28x28 Fashion-MNIST: conv 3x3 x 8 (ReLU), 4x4 mean pooling, linear
(392 -> 10), on mini-batches of 128 from a fixed subset of the official training split
(`--images`, seeded), the loss measured on that whole subset at every step (the L2O paper's
measure: how well the optimizer minimizes). Everything else is `bench/l2o.py`'s
protocol (`bench_task`): 2x the meta-training horizon, each baseline's learning rate the best
of the grid on separate tuning seeds, chosen once for the horizon and once for 2x the
horizon, before any evaluation seed runs; L2O untuned.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from l2o import LR_GRID, TUNING_SEEDS, bench_task
from provenance import provenance

from adl.data import load_dataset
from adl.passes.train.l2o import load_weights
from adl.passes.train.l2o.config import MetaConfig
from adl.passes.train.l2o.tasks import BATCH, Task

MEASURES = ("bench/l2o_fashion.py", "bench/l2o.py", "adl/passes/train/l2o", "adl/data")
CHANNELS, POOL = 8, 4


def _init(key):
    k1, k2 = jax.random.split(key)
    features = CHANNELS * (28 // POOL) ** 2
    return [
        {"w": jax.random.normal(k1, (CHANNELS, 1, 3, 3)) * jnp.sqrt(1.0 / 9), "b": jnp.zeros(CHANNELS)},
        {"w": jax.random.normal(k2, (features, 10)) * jnp.sqrt(1.0 / features), "b": jnp.zeros(10)},
    ]


def _apply(params, x):
    conv, dense = params
    h = jax.nn.relu(jax.lax.conv_general_dilated(x, conv["w"], (1, 1), "SAME") + conv["b"][None, :, None, None])
    side = 28 // POOL
    h = h.reshape(h.shape[0], CHANNELS, side, POOL, side, POOL).mean(axis=(3, 5))
    return h.reshape(h.shape[0], -1) @ dense["w"] + dense["b"]


def fashion_task(images: int) -> Task:
    """The task on a seeded subset of `images` training images, scaled to [0, 1]."""
    data = load_dataset("fashion_mnist")
    chosen = np.random.default_rng(2017).permutation(len(data.y_train))[:images]
    x_all = jnp.asarray(data.x_train[chosen] / 255.0, jnp.float32)
    y_all = jnp.asarray(data.y_train[chosen], jnp.int32)

    def xent(params, x, y):
        logits = _apply(params, x)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0])

    def loss(params, instance, key):
        idx = jax.random.randint(key, (BATCH,), 0, x_all.shape[0])
        return xent(params, x_all[idx], y_all[idx])

    return Task(
        "fashion_cnn", lambda key: (_init(key), None), loss, lambda params, instance: xent(params, x_all, y_all)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/l2o_fashion.json"))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--images", type=int, default=4096, help="training images the task draws batches from")
    args = parser.parse_args()
    origin = provenance(f"Fashion-MNIST: {args.images} seeded training images of the official training split")
    began = time.perf_counter()
    task = fashion_task(args.images)
    horizon = MetaConfig().horizon
    seeds = list(range(3 if args.quick else args.seeds))
    grid = LR_GRID[1:6] if args.quick else LR_GRID
    tuning = list(TUNING_SEEDS)[:2] if args.quick else list(TUNING_SEEDS)
    result = bench_task("fashion_cnn", load_weights(None), horizon, seeds, grid, tuning, task=task)
    goals = {}
    for t, tag in ((horizon, "horizon"), (2 * horizon, "2x_horizon")):
        f = result["final"][f"step_{t}"]
        goals[f"out_of_family_fashion_cnn_l2o_beats_best_tuned_at_{tag}"] = {
            "value": f["l2o_over_best"],
            "target": "< 1 (L2O mean final loss / best tuned baseline's)",
            "met": f["l2o_beats_best"],
            "best_baseline": f["best_baseline"],
        }
    report = {
        "goals": goals,
        "provenance": origin,
        "quick": args.quick,
        "horizon": horizon,
        "seeds": seeds,
        "tuning_seeds": tuning,
        "lr_grid": list(grid),
        "images": args.images,
        "network": f"conv 3x3 x {CHANNELS}, ReLU, {POOL}x{POOL} mean pool, linear -> 10",
        "loss": f"full-data training loss on the {args.images}-image subset",
        "task": result,
        "seconds": time.perf_counter() - began,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for goal, verdict in goals.items():
        print(
            f"{goal}: {verdict['value']:.3f} (best: {verdict['best_baseline']}) {'met' if verdict['met'] else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
