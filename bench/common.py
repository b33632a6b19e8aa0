"""What several benches share: a timestamped log line and the identical fine-tuning they give
every network they compare (the `train` pass's loop: Adam, cosine schedule, one torch thread)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from adl.compiler.progress import SilentProgress
from adl.compiler.spec import CallValue
from adl.passes.train.loop import train_model

TRAIN_THREADS = 1  # training and search: on a shared 2-core machine a second torch thread spins and slows it ~5x


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def train(model: torch.nn.Module, dataset, epochs: int, lr: float, seed: int) -> tuple[torch.nn.Module, float]:
    """Train `model` in place for `epochs` (Adam at `lr`, cosine) and return it with its test accuracy."""
    config = {"epochs": epochs, "batch_size": 64, "optimizer": CallValue("adam", (("lr", lr), ("weight_decay", 0.0))),
              "schedule": "cosine", "label_smoothing": 0.0}
    with tempfile.TemporaryDirectory() as state:
        result = train_model(model, dataset, config, seed=seed, state_dir=Path(state), progress=SilentProgress(),
                             threads=TRAIN_THREADS, log=lambda message: None)
    return result.model, float(result.test_accuracy)
