"""What several benches share: a timestamped log line and the identical fine-tuning they give
every network they compare (the `train` pass's loop: Adam, cosine schedule, one torch thread)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from adl.ir.progress import SilentProgress
from adl.ir.spec import CallValue
from adl.passes.train.loop import train_model

TRAIN_THREADS = 1  # training and search: on a shared 2-core machine a second torch thread spins and slows it ~5x
_train_threads = TRAIN_THREADS


def set_train_threads(threads: int) -> None:
    """Train (and search) on `threads` torch threads: 2 when the bench has the machine to itself
    (with OMP_WAIT_POLICY=PASSIVE, so an idle thread sleeps instead of spinning)."""
    global _train_threads
    _train_threads = threads
    torch.set_num_threads(threads)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def train(model: torch.nn.Module, dataset, epochs: int, lr: float, seed: int) -> tuple[torch.nn.Module, float]:
    """Train `model` in place for `epochs` (Adam at `lr`, cosine) and return it with its test
    accuracy, on TRAIN_THREADS torch threads or what `set_train_threads` chose."""
    config = {
        "epochs": epochs,
        "batch_size": 64,
        "optimizer": CallValue("adam", (("lr", lr), ("weight_decay", 0.0))),
        "schedule": "cosine",
        "label_smoothing": 0.0,
    }
    with tempfile.TemporaryDirectory() as state:
        result = train_model(
            model,
            dataset,
            config,
            seed=seed,
            state_dir=Path(state),
            progress=SilentProgress(),
            threads=_train_threads,
            log=lambda message: None,
        )
    return result.model, float(result.test_accuracy)


QUANTIZATION_MODEL = ("mobilenet", {"width": 2.0, "head": 256})  # the digits network haq's benches quantize


def trained_quantization_model(dataset, epochs: int) -> tuple[torch.nn.Module, float]:
    """The MobileNetV2-style digits network of bench/haq.py, trained
    (seed 0, Adam 3e-3) in eval mode, and its test accuracy."""
    from adl.models.zoo import build_model

    family, options = QUANTIZATION_MODEL
    torch.manual_seed(0)
    model = build_model(
        family, options, input_shape=tuple(dataset.input_shape), classes=10, mean=dataset.mean, std=dataset.std
    )
    log(f"training the fp32 {family}{options} for {epochs} epochs")
    model, accuracy = train(model, dataset, epochs, 3e-3, seed=0)
    return model.eval(), accuracy
