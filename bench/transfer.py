"""Transfer learning on a small target set: DELTA (Li et al., ICLR 2019) against plain fine-tuning and
L2-SP (Li, Grandvalet, Davoine, ICML 2018), a network pretrained on Fashion-MNIST transferred to 28x28
digits with 10, 30 and 100 target images per class.

    python bench/transfer.py [--quick] [--out FILE] [--seeds N] [--sizes 10 30 100] [--steps N] [--threads N]
                             [--setup digits|fashion_split]

Two setups. `digits` (the default, bench/results/transfer.json) is the one below. `fashion_split`
(bench/results/transfer_fashion_split.json) keeps everything else and changes the data: the source
trains on Fashion-MNIST's classes 0-4 (T-shirt, trouser, pullover, dress, coat; 30,000 images), the
target is classes 5-9 (sandal, shirt, sneaker, bag, ankle boot), drawn from their 30,000 official
training images and tested on their 5,000 official test images -- the same domain and new classes,
where pretrained features help (upsampled digits turned out to be a domain where they hurt: training
from scratch beat every transfer method there). Steps per fine-tune stay about 300 (five classes:
half as many images per epoch).

Source: adl's `cnn(channels = [32, 64], hidden = 128)` (the families' `cnn`: two conv-BN-ReLU-maxpool
stages, a 7x7x64 map flattened into a 128-unit hidden layer, then the 10-way classifier), trained once
per run on the full Fashion-MNIST training set (60,000 images) for 4 epochs by the `train` loop: Adam
0.003, cosine schedule, batch 64, torch seed 0. Its Fashion-MNIST test accuracy is recorded.

Target: scikit-learn's digits (`load_digits`: 1,797 8x8 images, values 0..16), upsampled to 28x28
(`torch.nn.functional.interpolate`, bilinear, align_corners=False) and scaled by 255/16 to 0..255, so
the Fashion-MNIST normalisation compiled into the source network fits them. A fixed stratified test set
of 50 images per class (500, seed 0); the other 1,297 images are the pool. For a size n and a seed s,
the training set is n images per class drawn from the pool (numpy rng seeded (s, n)).

The target network: a deep copy of the source with its last Linear (the classifier) re-initialised
(`reset_parameters()` under torch seed s), so all methods start from the same weights for a seed (the
weights at the start of `train_model` are what L2-SP and DELTA pull toward). All three train the same
way at a size -- the `train` loop (`adl.passes.train.loop.train_model`, the product's code path), SGD lr
0.01, momentum 0.9, Nesterov, cosine schedule, batch 16, label smoothing 0, for
max(5, ceil(300 / ceil(10 n / 16))) epochs (about 300 steps at every size) -- and differ in the
`regularizer`:

    finetune   regularizer = none, SGD weight_decay = the tuned value
    l2sp       regularizer = l2sp(alpha = tuned, beta = 0.01), weight_decay 0
    delta      regularizer = delta(alpha = tuned, beta = 0.01, attention = true, probe = 10, samples = 1000),
               weight_decay 0; its layers: the default ones, the outputs of the two MaxPool2d
    scratch    a reference without transfer (no goal): every layer re-initialised, trained as finetune


Tuning, at equal cost: before the comparison each method gets a 4-point grid of its one strength --
finetune's weight_decay in {0, 1e-4, 1e-3, 1e-2}, l2sp's alpha in {1e-3, 1e-2, 1e-1, 1}, delta's alpha in
{1e-6, 1e-5, 1e-4, 1e-3} -- trained (seed 1000) on a tuning split of 30 images per class and scored on a
validation split of 20 per class, both drawn from the pool (rng (1000, 30)), disjoint from each other and
from the test set. The best validation accuracy (the smaller value on a tie) picks each method's value,
which every size and seed then uses; the grid's results are recorded.

Reported per method and size: test accuracy per seed, mean, sd and standard error; the paired
differences delta - finetune and delta - l2sp per seed (same draw, same starting weights) with their mean
and standard error; wall seconds per method. Goals (mean paired difference, accuracy points, >= 0):
DELTA at least as accurate as fine-tuning and as L2-SP at 10 and at 30 images per class. The plot
(accuracy against images per class, standard-error bars; paired differences) goes next to the JSON as
transfer.png. Torch runs on `--threads` threads (2: the bench owns the machine; --quick: 1).

--quick is a smoke run: 1 seed, size 10 only, the source trained 1 epoch on 5,000 images, the middle
2 points of each grid, about 100 steps per fine-tune.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import log, set_train_threads, train
from provenance import provenance

from adl.data import Dataset, load_dataset
from adl.data.dataset import make_dataset
from adl.ir.progress import SilentProgress
from adl.ir.spec import CallValue
from adl.models import build_model
from adl.passes.train.loop import train_model

# what the figures depend on (`python -m bench.status`)
MEASURES = ("bench/transfer.py", "bench/common.py", "adl/passes/train", "adl/models", "adl/data")

SOURCE_NETWORK = ("cnn", {"channels": (32, 64), "hidden": 128})
SOURCE_EPOCHS, SOURCE_LR, SOURCE_SEED = 4, 0.003, 0  # batch 64, cosine: bench/common.py's `train`
SIDE = 28  # target images are upsampled to Fashion-MNIST's size
DIGITS_MAX = 16.0  # load_digits' pixel range is 0..16; x 255/16 gives Fashion-MNIST's 0..255
CLASSES = 10
TEST_PER_CLASS = 50
TEST_SEED = 0
SIZES = (10, 30, 100)  # target training images per class
TUNE_PER_CLASS, VAL_PER_CLASS, TUNE_SEED = 30, 20, 1000
STEPS = 300  # SGD steps per fine-tune, at every size
BATCH = 16
MIN_EPOCHS = 5
LR, MOMENTUM = 0.01, 0.9
BETA = 0.01  # l2sp's and delta's L2 on the new classifier
DELTA_PROBE, DELTA_SAMPLES = 10, 1000
METHODS = ("finetune", "l2sp", "delta", "scratch")  # scratch: no transfer, a reference (no goal)
GRIDS: dict[str, tuple[str, tuple[float, ...]]] = {
    "finetune": ("weight_decay", (0.0, 1e-4, 1e-3, 1e-2)),
    "scratch": ("weight_decay", (0.0, 1e-4, 1e-3, 1e-2)),
    "l2sp": ("alpha", (1e-3, 1e-2, 1e-1, 1.0)),
    # DELTA's distance sums squared differences over every position of 32 14x14 and 64 7x7 maps, so its
    # alpha lives orders of magnitude below L2-SP's; a first run on {1e-4 .. 1e-1} picked its lowest point
    "delta": ("alpha", (1e-6, 1e-5, 1e-4, 1e-3)),
}
GOAL_SIZES = (10, 30)
RIVALS = ("finetune", "l2sp")  # what DELTA is compared with, seed by seed


# -- data ----------------------------------------------------------------------------------------


def digits_28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (N, 1, 28, 28) float32 in 0..255 (bilinear upsampling), and their labels:
    the shape and value range the Fashion-MNIST network and its compiled-in normalisation expect."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8))
    large = torch.nn.functional.interpolate(small, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return (large * (255.0 / DIGITS_MAX)).numpy(), np.asarray(bunch.target, dtype=np.int64)


def per_class_draw(y: np.ndarray, pool: np.ndarray, counts: Sequence[int], key: Any) -> list[np.ndarray]:
    """Disjoint stratified draws from the indices `pool`: for each of `counts`, that many indices of
    every class (one shuffle of each class's pool members, cut in order), each draw shuffled. A
    function of (y, pool, counts, key) only, so a (seed, size) always trains on the same images."""
    rng = np.random.default_rng(key)
    parts: list[list[np.ndarray]] = [[] for _ in counts]
    for label in np.unique(y[pool]):
        members = rng.permutation(pool[y[pool] == label])
        if len(members) < sum(counts):
            raise ValueError(f"class {label} has {len(members)} images in the pool, {sum(counts)} needed")
        start = 0
        for part, count in zip(parts, counts):
            part.append(members[start : start + count])
            start += count
    return [rng.permutation(np.concatenate(part)) for part in parts]


def split_test_pool(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(test indices, pool indices): TEST_PER_CLASS images of every class held out for good (seed 0)."""
    (test,) = per_class_draw(y, np.arange(len(y)), (TEST_PER_CLASS,), TEST_SEED)
    pool = np.setdiff1d(np.arange(len(y)), test)
    return test, pool


def training_draw(y: np.ndarray, pool: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """The `per_class` images of every class that seed `seed` trains on at that size (rng (seed, per_class))."""
    return per_class_draw(y, pool, (per_class,), (seed, per_class))[0]


def tuning_split(y: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices that pick the hyperparameters: disjoint, both from the pool."""
    fit, val = per_class_draw(y, pool, (TUNE_PER_CLASS, VAL_PER_CLASS), (TUNE_SEED, TUNE_PER_CLASS))
    return fit, val


def target_dataset(
    x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, val: np.ndarray | None = None
) -> Dataset:
    """A `Dataset` of the digits' `train` and `test` indices (and `val` as its validation split)."""
    data = make_dataset("target", x[train], y[train], x[test], y[test], CLASSES, (0.0, 255.0), "the target set")
    if val is None:
        return data
    return dataclasses.replace(data, x_val=np.ascontiguousarray(x[val]), y_val=np.ascontiguousarray(y[val]))


def classes_in(y: np.ndarray) -> int:
    return len(np.unique(y))


def fashion(train_images: int | None, classes: Sequence[int] | None = None) -> Dataset:
    """Fashion-MNIST (official split), only the labels in `classes` (all: None); `train_images` keeps
    that many training images (a fixed permutation, seed 0: --quick), with the full set's
    normalisation statistics."""
    full = load_dataset("fashion_mnist", classes=CLASSES, seed=0)
    if classes is not None:
        train, test = np.isin(full.y_train, classes), np.isin(full.y_test, classes)
        full = dataclasses.replace(
            full,
            x_train=full.x_train[train],
            y_train=full.y_train[train],
            x_test=full.x_test[test],
            y_test=full.y_test[test],
        )
    if train_images is None or train_images >= len(full.y_train):
        return full
    keep = np.random.default_rng(0).permutation(len(full.y_train))[:train_images]
    return dataclasses.replace(full, x_train=full.x_train[keep], y_train=full.y_train[keep])


# Two setups. `digits`: the example, Fashion-MNIST -> upsampled digits (another domain).
# `fashion_split`: the source learns Fashion-MNIST's first five classes (T-shirt, trouser, pullover,
# dress, coat), the target is the other five (sandal, shirt, sneaker, bag, ankle boot): the same
# domain, new classes, where pretrained features are known to help.
SOURCE_CLASSES = {"digits": None, "fashion_split": (0, 1, 2, 3, 4)}
TARGET_CLASSES = (5, 6, 7, 8, 9)


def target_images(setup: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(x, y, test indices, pool indices, description) of a setup's target set."""
    if setup == "digits":
        x, y = digits_28()
        test, pool = split_test_pool(y)
        return (
            x,
            y,
            test,
            pool,
            (
                f"target: scikit-learn digits (8x8, 0..16) upsampled to 28x28 (bilinear) and scaled to 0..255, a "
                f"stratified test set of {TEST_PER_CLASS} per class (seed {TEST_SEED}), training draws of n per class "
                f"from the other {len(pool)} (rng (seed, n))"
            ),
        )
    full = fashion(None, TARGET_CLASSES)
    x = np.concatenate([full.x_train, full.x_test])
    y = np.concatenate([full.y_train, full.y_test])
    pool, test = np.arange(len(full.y_train)), np.arange(len(full.y_train), len(y))
    return (
        x,
        y,
        test,
        pool,
        (
            f"target: Fashion-MNIST classes {list(TARGET_CLASSES)} (labels kept), their {len(test)} official test "
            f"images; training draws of n per class from their {len(pool)} official training images (rng (seed, n))"
        ),
    )


# -- networks ------------------------------------------------------------------------------------


def source_network(data: Dataset, epochs: int) -> tuple[torch.nn.Module, float, float]:
    """The pretrained network: (model in eval mode, its Fashion-MNIST test accuracy, seconds)."""
    family, options = SOURCE_NETWORK
    torch.manual_seed(SOURCE_SEED)
    model = build_model(family, options, input_shape=data.input_shape, classes=CLASSES, mean=data.mean, std=data.std)
    started = time.perf_counter()
    model, accuracy = train(model, data, epochs, SOURCE_LR, seed=SOURCE_SEED)
    return model.eval(), accuracy, time.perf_counter() - started


def with_new_head(source: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of `source` whose last Linear (the classifier) is re-initialised under torch seed `seed`:
    the target task's labels mean nothing to the source's classifier, and every method of a seed must
    start from the same weights. `source` is untouched; the global torch RNG is left as it was."""
    model = copy.deepcopy(source)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head.reset_parameters()
    return model


def reinitialised(source: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of `source` with every layer re-initialised under torch seed `seed` (its compiled-in input
    normalisation kept): the `scratch` reference, what 10-100 images per class give without transfer."""
    model = copy.deepcopy(source)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model


# -- fine-tuning ---------------------------------------------------------------------------------


def epochs_for(per_class: int, steps: int = STEPS, classes: int = CLASSES) -> int:
    """Epochs that give about `steps` SGD steps on `per_class` x 10 images in batches of 16 (at least 5):
    every size gets the same optimisation budget, so the sizes differ in data only."""
    per_epoch = math.ceil(per_class * classes / BATCH)
    return max(MIN_EPOCHS, math.ceil(steps / per_epoch))


def method_config(method: str, value: float, epochs: int) -> dict:
    """The `train` options of `method` with its strength at `value` (GRIDS names which option)."""
    decay = value if method in ("finetune", "scratch") else 0.0
    optimizer = CallValue("sgd", (("lr", LR), ("momentum", MOMENTUM), ("weight_decay", decay), ("nesterov", True)))
    if method in ("finetune", "scratch"):
        regularizer = CallValue("none")
    elif method == "l2sp":
        regularizer = CallValue("l2sp", (("alpha", value), ("beta", BETA)))
    elif method == "delta":
        regularizer = CallValue(
            "delta",
            (
                ("alpha", value),
                ("beta", BETA),
                ("attention", True),
                ("probe", DELTA_PROBE),
                ("samples", DELTA_SAMPLES),
            ),
        )
    else:
        raise ValueError(f"unknown method {method!r}")
    return {
        "epochs": epochs,
        "batch_size": BATCH,
        "optimizer": optimizer,
        "schedule": "cosine",
        "label_smoothing": 0.0,
        "regularizer": regularizer,
        "distill": CallValue("none"),
    }


def finetune(
    source: torch.nn.Module, data: Dataset, config: dict, seed: int, threads: int, scratch: bool = False
) -> dict:
    """One transfer run through the `train` loop from the source with a fresh head (seed `seed`), or with
    every layer fresh (`scratch`): test accuracy, validation accuracy (when `data` has a validation split)
    and wall seconds."""
    model = reinitialised(source, seed) if scratch else with_new_head(source, seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adl-transfer-bench-") as state:
        result = train_model(
            model,
            data,
            config,
            seed=seed,
            state_dir=Path(state),
            progress=SilentProgress(),
            threads=threads,
            log=lambda message: None,
        )
    row = {"test_accuracy": float(result.test_accuracy), "seconds": time.perf_counter() - started}
    if data.has_validation:
        row["val_accuracy"] = float(result.history[-1]["val_accuracy"])
    return row


def tune(
    source: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    pool: np.ndarray,
    test: np.ndarray,
    grid_points: Sequence[int],
    steps: int,
    threads: int,
) -> dict:
    """Each method's strength, picked by validation accuracy on the tuning split from the same number of
    grid points (`grid_points`: indices into GRIDS' values). The test split is only carried along."""
    fit, val = tuning_split(y, pool)
    data = target_dataset(x, y, fit, test, val)
    epochs = epochs_for(TUNE_PER_CLASS, steps, classes_in(y))
    out: dict[str, dict] = {}
    for method in METHODS:
        option, values = GRIDS[method]
        rows = []
        for value in (values[i] for i in grid_points):
            config = method_config(method, value, epochs)
            row = finetune(source, data, config, TUNE_SEED, threads, scratch=method == "scratch")
            rows.append({"value": value, "val_accuracy": row["val_accuracy"], "seconds": row["seconds"]})
            log(f"tuning {method} {option}={value:g}: validation {row['val_accuracy']:.3f} ({row['seconds']:.1f} s)")
        out[method] = {"option": option, "grid": rows, "picked": pick(rows)}
    return out


def pick(rows: Sequence[Mapping[str, float]]) -> float:
    """The grid value with the best validation accuracy; on a tie the smaller value (the weaker pull)."""
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["value"]))
    return best["value"]


def compare(
    source: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    pool: np.ndarray,
    test: np.ndarray,
    picked: Mapping[str, float],
    sizes: Sequence[int],
    seeds: int,
    steps: int,
    threads: int,
) -> dict[str, dict[str, list[dict]]]:
    """{method: {size: [one row per seed]}}: every method on the same draw and start weights per seed."""
    runs: dict[str, dict[str, list[dict]]] = {m: {str(n): [] for n in sizes} for m in METHODS}
    for n in sizes:
        epochs = epochs_for(n, steps, classes_in(y))
        for seed in range(seeds):
            data = target_dataset(x, y, training_draw(y, pool, n, seed), test)
            for method in METHODS:
                config = method_config(method, picked[method], epochs)
                row = finetune(source, data, config, seed, threads, scratch=method == "scratch")
                row.update(seed=seed, epochs=epochs, steps=epochs * math.ceil(n * classes_in(y) / BATCH))
                runs[method][str(n)].append(row)
                log(f"n={n} seed {seed} {method}: test {row['test_accuracy']:.3f} ({row['seconds']:.1f} s)")
    return runs


# -- figures -------------------------------------------------------------------------------------


def _stats(values: Sequence[float]) -> dict:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "se": sd / math.sqrt(len(values))}


def summarize(runs: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]]) -> dict:
    """Per size: each method's test accuracy (percent: per seed, mean, sd, standard error) and DELTA's
    paired differences with each rival (accuracy points, seed by seed), and wall seconds per method."""
    sizes = list(runs["delta"])
    methods = [m for m in METHODS if m in runs]
    out: dict[str, Any] = {}
    for n in sizes:
        by_seed = {m: {r["seed"]: 100.0 * r["test_accuracy"] for r in runs[m][n]} for m in methods}
        row: dict[str, Any] = {}
        for method in methods:
            values = [by_seed[method][s] for s in sorted(by_seed[method])]
            row[method] = {"per_seed": values, **_stats(values)}
        for rival in RIVALS:
            seeds = sorted(set(by_seed["delta"]) & set(by_seed[rival]))
            paired = [by_seed["delta"][s] - by_seed[rival][s] for s in seeds]
            row[f"delta_minus_{rival}"] = {"seeds": seeds, "per_seed": paired, **_stats(paired)}
        out[n] = row
    seconds = {m: sum(r.get("seconds", 0.0) for n in runs[m] for r in runs[m][n]) for m in methods}
    return {"accuracy_percent": out, "seconds": seconds}


def goals(summary: Mapping[str, Any]) -> dict:
    """DELTA >= each rival at the two smallest sizes: mean paired difference in points, target 0.
    A size the run skipped (--quick, --sizes) has no goal."""
    out = {}
    for n in GOAL_SIZES:
        row = summary["accuracy_percent"].get(str(n))
        if row is None:
            continue
        for rival in RIVALS:
            value = row[f"delta_minus_{rival}"]["mean"]
            out[f"delta_vs_{rival}_{n}"] = {
                "value": round(value, 3),
                "target": 0.0,
                "met": value >= 0.0,
                "what": f"mean paired test accuracy difference, delta - {rival}, at {n} images per class (points)",
            }
    return out


def plot(summary: Mapping[str, Any], path: Path, title: str) -> None:
    """Accuracy against images per class (log x, standard-error bars) and DELTA's paired differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["accuracy_percent"]
    sizes = sorted(rows, key=int)
    xs = [int(n) for n in sizes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"finetune": "tab:blue", "l2sp": "tab:green", "delta": "tab:red", "scratch": "tab:gray"}
    for i, method in enumerate(m for m in METHODS if m in rows[sizes[0]]):
        shift = 1.0 + 0.03 * (i - 1)  # multiplicative: the bars side by side on the log axis
        left.errorbar(
            [x * shift for x in xs],
            [rows[n][method]["mean"] for n in sizes],
            yerr=[rows[n][method]["se"] for n in sizes],
            marker="o",
            capsize=4,
            color=colors[method],
            label=method,
        )
    _size_axis(left, xs)
    left.set_xlabel("target training images per class")
    left.set_ylabel("test accuracy (%), mean and standard error")
    left.set_title(title, fontsize=9)
    left.legend(fontsize=8)
    for i, rival in enumerate(RIVALS):
        key = f"delta_minus_{rival}"
        right.errorbar(
            [x * (1.0 + 0.03 * (2 * i - 1)) for x in xs],
            [rows[n][key]["mean"] for n in sizes],
            yerr=[rows[n][key]["se"] for n in sizes],
            marker="o",
            capsize=4,
            color=colors[rival],
            label=f"delta - {rival}",
        )
    right.axhline(0.0, color="black", ls=":", label="goal at 10 and 30: >= 0")
    _size_axis(right, xs)
    right.set_xlabel("target training images per class")
    right.set_ylabel("paired difference (accuracy points)")
    right.set_title("DELTA minus each rival, same draw and start, per seed", fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _size_axis(ax: Any, sizes: Sequence[int]) -> None:
    """A log axis of images per class, labelled at the sizes only (no minor labels), with some margin."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_xticks(list(sizes), [str(x) for x in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(min(sizes) / 1.5, max(sizes) * 1.5)


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, size 10, a small source, 2 grid points")
    parser.add_argument("--out", type=Path, default=Path("bench/results/transfer.json"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--steps", type=int, default=STEPS, help="about this many SGD steps per fine-tune")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2; --quick: 1)")
    parser.add_argument(
        "--setup",
        choices=tuple(SOURCE_CLASSES),
        default="digits",
        help="digits: Fashion-MNIST -> upsampled digits; fashion_split: Fashion-MNIST classes 0-4 -> 5-9",
    )
    args = parser.parse_args()
    source_epochs, source_images, grid_points = SOURCE_EPOCHS, None, (0, 1, 2, 3)
    if args.quick:
        args.seeds, args.sizes, args.steps = 1, [10], 100
        source_epochs, source_images, grid_points = 1, 5_000, (1, 2)
    threads = args.threads or (1 if args.quick else 2)
    set_train_threads(threads)

    x, y, test, pool, target_text = target_images(args.setup)
    source_classes = SOURCE_CLASSES[args.setup]
    source_data = fashion(source_images, source_classes)
    classes_text = "" if source_classes is None else f" (classes {list(source_classes)})"
    report: dict[str, Any] = {
        "provenance": provenance(
            f"source: Fashion-MNIST{classes_text}, {len(source_data.y_train)} images of the official training "
            f"set, the official {len(source_data.y_test)} test images of those classes; {target_text}"
        ),
        "goals": {},
        "setup": {
            "setup": args.setup,
            "source_network": f"{SOURCE_NETWORK[0]}{SOURCE_NETWORK[1]}",
            "source_training": {
                "data": f"fashion_mnist{classes_text}",
                "images": len(source_data.y_train),
                "epochs": source_epochs,
                "optimizer": f"adam(lr = {SOURCE_LR})",
                "schedule": "cosine",
                "batch_size": 64,
                "seed": SOURCE_SEED,
            },
            "target": {
                "data": target_text,
                "test_per_class": TEST_PER_CLASS,
                "test_seed": TEST_SEED,
                "test_images": len(test),
                "pool_images": len(pool),
                "sizes_per_class": args.sizes,
                "draw": "n per class from the pool, numpy rng seeded (seed, n)",
            },
            "head": "deep copy of the source, last nn.Linear reset_parameters() under torch seed = the seed",
            "fine_tuning": {
                "loop": "adl.passes.train.loop.train_model",
                "optimizer": f"sgd(lr = {LR}, momentum = {MOMENTUM}, nesterov = true)",
                "schedule": "cosine",
                "batch_size": BATCH,
                "label_smoothing": 0.0,
                "epochs": {str(n): epochs_for(n, args.steps, classes_in(y)) for n in args.sizes},
                "epochs_rule": f"max({MIN_EPOCHS}, ceil({args.steps} / ceil(10 n / {BATCH})))",
            },
            "methods": {
                "finetune": "regularizer = none; SGD weight_decay tuned",
                "l2sp": f"regularizer = l2sp(alpha tuned, beta = {BETA}); weight_decay 0",
                "delta": f"regularizer = delta(alpha tuned, beta = {BETA}, attention = true, probe = {DELTA_PROBE}, "
                f"samples = {DELTA_SAMPLES}), default layers (the MaxPool2d outputs); weight_decay 0",
            },
            "tuning": {
                "grids": {m: {"option": o, "values": [v[i] for i in grid_points]} for m, (o, v) in GRIDS.items()},
                "train_per_class": TUNE_PER_CLASS,
                "val_per_class": VAL_PER_CLASS,
                "seed": TUNE_SEED,
                "draw": f"from the pool, rng ({TUNE_SEED}, {TUNE_PER_CLASS}), train and validation disjoint",
                "choice": "best final validation accuracy; the smaller value on a tie",
            },
            "seeds": args.seeds,
            "threads": threads,
            "quick": args.quick,
            "cpu_count": os.cpu_count(),
        },
    }
    started = time.perf_counter()
    log(
        f"training the source network on {len(source_data.y_train)} Fashion-MNIST{classes_text} images, "
        f"{source_epochs} epochs"
    )
    source, source_accuracy, source_seconds = source_network(source_data, source_epochs)
    log(f"source: Fashion-MNIST test accuracy {source_accuracy:.4f} ({source_seconds:.0f} s)")
    report["source"] = {"fashion_test_accuracy": source_accuracy, "seconds": source_seconds}
    del source_data

    tuning = tune(source, x, y, pool, test, grid_points, args.steps, threads)
    report["tuning"] = tuning
    picked = {m: tuning[m]["picked"] for m in METHODS}
    log(f"picked: {picked}")
    runs = compare(source, x, y, pool, test, picked, args.sizes, args.seeds, args.steps, threads)
    report["runs"] = runs
    report["summary"] = summarize(runs)
    report["goals"] = goals(report["summary"])
    report["seconds_total"] = time.perf_counter() - started

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    target_name = "28x28 digits" if args.setup == "digits" else f"Fashion-MNIST {list(TARGET_CLASSES)}"
    title = (
        f"cnn(32, 64, hidden 128) Fashion-MNIST{classes_text} -> {target_name}, {args.seeds} seed(s), "
        f"source test {100 * source_accuracy:.1f} %"
    )
    plot(report["summary"], args.out.with_suffix(".png"), title)
    for goal, verdict in report["goals"].items():
        log(f"{goal}: {verdict['value']} (target >= {verdict['target']}): {'met' if verdict['met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
