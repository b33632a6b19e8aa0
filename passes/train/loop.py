"""The training loop: deterministic for a seed, resumable after every epoch."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from adl.compiler.progress import Progress
from adl.compiler.spec import CallValue

STATE_FILE = "train_state.pt"


@dataclass
class TrainResult:
    model: nn.Module
    test_accuracy: float
    history: list[dict[str, float]]  # one entry per epoch: loss, train accuracy, lr


def make_optimizer(params, spec: CallValue) -> torch.optim.Optimizer:
    args = spec.as_dict()
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=args["lr"], weight_decay=args["weight_decay"])
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=args["lr"], weight_decay=args["weight_decay"])
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=args["lr"], momentum=args["momentum"],
                               weight_decay=args["weight_decay"], nesterov=args["nesterov"])
    if spec.name == "l2o":
        from adl.passes.train.l2o.torch_optim import L2O

        return L2O(params, weights=args["weights"] or None, lr=args["scale"])
    raise ValueError(f"unknown optimizer {spec.name!r}")


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` on (x, y)."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            logits = model(torch.from_numpy(x[start:start + batch_size]))
            correct += int((logits.argmax(1).numpy() == y[start:start + batch_size]).sum())
    return correct / max(len(x), 1)


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def make_scheduler(optimizer: torch.optim.Optimizer, config: Mapping[str, Any]
                   ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule `config` names, stepped once per epoch; None for `constant`."""
    if config["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config["epochs"])
    return None


def epoch_order(seed: int, epoch: int, samples: int) -> torch.Tensor:
    """The order in which epoch `epoch` visits the training samples: a function of (seed, epoch) only."""
    return torch.from_numpy(np.random.default_rng((seed, epoch)).permutation(samples))


def train_model(model: nn.Module, dataset: Any, config: Mapping[str, Any], *, seed: int, state_dir: Path,
                progress: Progress, threads: int = 1, log: Callable[[str], None] = print) -> TrainResult:
    """Train `model` in place on `dataset`'s training split; resumes from `state_dir` if a run was cut off.

    Every epoch reseeds its own shuffling and torch RNG from (seed, epoch), so a run
    resumed after epoch k produces bit-identical weights to an uninterrupted one.
    """
    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    epochs, batch_size = config["epochs"], config["batch_size"]
    optimizer = make_optimizer(model.parameters(), config["optimizer"])
    scheduler = make_scheduler(optimizer, config)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])
    history: list[dict[str, float]] = []
    start_epoch = 0

    state_path = state_dir / STATE_FILE
    if state_path.exists():
        try:
            state = torch.load(state_path, weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            start_epoch, history = state["epoch"], state["history"]
            log(f"train: resuming after epoch {start_epoch} of {epochs}")
        except Exception as err:  # a torn or foreign file: start over rather than fail
            log(f"train: ignoring unreadable training state {state_path} ({err}); starting over")
            start_epoch, history = 0, []

    x_train = torch.from_numpy(dataset.x_train)
    y_train = torch.from_numpy(dataset.y_train)
    with progress.task("train", total=epochs) as bar:
        bar.advance(start_epoch)
        for epoch in range(start_epoch, epochs):
            torch.manual_seed(seed * 100_003 + epoch)
            order = epoch_order(seed, epoch, len(x_train))
            model.train()
            total_loss, correct = 0.0, 0
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                logits = model(x_train[idx])
                loss = loss_fn(logits, y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == y_train[idx]).sum())
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()
            history.append({"epoch": epoch + 1, "loss": total_loss / len(order),
                            "train_accuracy": correct / len(order), "lr": lr})
            if dataset.has_validation:
                history[-1]["val_accuracy"] = evaluate(model, dataset.x_val, dataset.y_val)
            _save_atomic({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict() if scheduler is not None else None,
                          "history": history}, state_path)
            bar.advance(1, loss=f"{history[-1]['loss']:.3f}", acc=f"{history[-1]['train_accuracy']:.3f}")

    accuracy = evaluate(model, dataset.x_test, dataset.y_test)
    model.eval()
    return TrainResult(model=model, test_accuracy=accuracy, history=history)
