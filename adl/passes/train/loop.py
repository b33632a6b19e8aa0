"""The training loop: deterministic for a seed, resumable after every epoch."""

from __future__ import annotations

import copy
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from adl.ir.files import atomic_path
from adl.ir.passes import PassError
from adl.ir.progress import Progress
from adl.ir.spec import CallValue

STATE_FILE = "train_state.pt"


@dataclass
class TrainResult:
    model: nn.Module
    test_accuracy: float
    history: list[dict[str, float]]  # one entry per epoch: loss, train accuracy, lr


class TrainingDiverged(PassError):
    """The loss or the weights stopped being finite numbers: the step size is too large."""


DIVERGED = "training diverged; lower the learning rate"


def _diverged(what: str, value: float, epoch: int, lr: float) -> TrainingDiverged:
    kind = "NaN" if math.isnan(value) else "infinite"
    return TrainingDiverged(f"train: the {what} became {kind} at epoch {epoch} (lr = {lr:g}): {DIVERGED}")


def check_finite_loss(loss: float, epoch: int, lr: float) -> float:
    """`loss`, if it is a finite number; else `TrainingDiverged`."""
    if not math.isfinite(loss):
        raise _diverged("loss", loss, epoch, lr)
    return loss


def check_finite_weights(model: nn.Module, epoch: int, lr: float) -> None:
    """`TrainingDiverged` naming the first parameter or buffer (BatchNorm's running statistics
    included) that holds a NaN or an infinity: the loss can stay finite a while after that."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            value = float(tensor[~torch.isfinite(tensor)].flatten()[0])
            raise _diverged(f"weights (in {name})", value, epoch, lr)


def make_optimizer(params, spec: CallValue) -> torch.optim.Optimizer:
    args = spec.as_dict()
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=args["lr"], weight_decay=args["weight_decay"])
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=args["lr"], weight_decay=args["weight_decay"])
    if spec.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=args["lr"],
            momentum=args["momentum"],
            weight_decay=args["weight_decay"],
            nesterov=args["nesterov"],
        )
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
            logits = model(torch.from_numpy(x[start : start + batch_size]))
            correct += int((logits.argmax(1).numpy() == y[start : start + batch_size]).sum())
    return correct / max(len(x), 1)


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    """Save tensors and plain containers only: `_load_state` reads with ``weights_only=True``."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_state(path: Path) -> dict[str, Any]:
    """The saved training state; a file holding anything but tensors and plain containers (a
    pickle planted in the cache) is refused by torch's weights-only unpickler, never run."""
    return torch.load(path, weights_only=True)


def _resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    log: Callable[[str], None],
) -> tuple[int, list[dict[str, float]]]:
    """Load the state saved at `path` into model, optimizer and scheduler; returns (epochs done,
    history). A torn or foreign file is reported and leaves them as they were: (0, [])."""
    fresh = copy.deepcopy(
        (model.state_dict(), optimizer.state_dict(), scheduler.state_dict() if scheduler is not None else None)
    )
    try:
        state = _load_state(path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        return int(state["epoch"]), list(state["history"])
    except pickle.UnpicklingError:  # torch's weights-only unpickler met a Python object to build
        log(f"train: refusing training state {path}: it holds more than tensors (adl did not write it); starting over")
    except Exception as err:
        log(f"train: ignoring unreadable training state {path} ({type(err).__name__}: {err}); starting over")
    model.load_state_dict(fresh[0])
    optimizer.load_state_dict(fresh[1])
    if scheduler is not None:
        scheduler.load_state_dict(fresh[2])
    return 0, []


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: Mapping[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule `config` names, stepped once per epoch; None for `constant`."""
    if config["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config["epochs"])
    return None


def epoch_order(seed: int, epoch: int, samples: int) -> torch.Tensor:
    """The order in which epoch `epoch` visits the training samples: a function of (seed, epoch) only."""
    return torch.from_numpy(np.random.default_rng((seed, epoch)).permutation(samples))


def _training_layout(input_dims: int) -> torch.memory_format:
    """Channels-last for image batches: oneDNN's convolutions (depthwise above all) train 1.5-2x
    faster in NHWC on the CPU than in NCHW, which would first be reordered on every call. The
    layout changes only the summation order, never what is computed."""
    return torch.channels_last if input_dims == 4 else torch.contiguous_format


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    layout: torch.memory_format,
    epoch: int,
    lr: float,
) -> tuple[float, int]:
    """One pass over (x, y), already in visiting order; returns (summed loss, correct predictions)."""
    model.train()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        inputs, labels = x[start : start + batch_size].contiguous(memory_format=layout), y[start : start + batch_size]
        logits = model(inputs)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += check_finite_loss(float(loss.detach()), epoch, lr) * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
    return total_loss, correct


def train_model(
    model: nn.Module,
    dataset: Any,
    config: Mapping[str, Any],
    *,
    seed: int,
    state_dir: Path,
    progress: Progress,
    threads: int = 1,
    log: Callable[[str], None] = print,
    teacher: nn.Module | None = None,
) -> TrainResult:
    """Train `model` in place on `dataset`'s training split; resumes from `state_dir` if a run was cut off.

    Every epoch reseeds its own shuffling and torch RNG from (seed, epoch), so a run
    resumed after epoch k produces bit-identical weights to an uninterrupted one. The loss is
    the cross-entropy plus what the config's `regularizer` and `distill` add (`teacher`: the
    network `distill` learns from); their terms see the weights as they are before any resumed
    state is loaded: the starting point that `l2sp` and `delta` pull toward.
    """
    from adl.passes.train.regularizers import build_objective

    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    epochs, batch_size = config["epochs"], config["batch_size"]
    layout = _training_layout(dataset.x_train.ndim)
    model.to(memory_format=layout)
    optimizer = make_optimizer(model.parameters(), config["optimizer"])
    scheduler = make_scheduler(optimizer, config)
    try:
        objective = build_objective(model, config, dataset=dataset, teacher=teacher, seed=seed, log=log)
    except ValueError as err:
        raise PassError(f"train: {err}") from err
    objective.attach(model, optimizer)
    history: list[dict[str, float]] = []
    start_epoch = 0

    state_path = state_dir / STATE_FILE
    if state_path.exists():
        start_epoch, history = _resume(state_path, model, optimizer, scheduler, log)
        if start_epoch:
            log(f"train: resuming after epoch {start_epoch} of {epochs}")

    x_train = torch.from_numpy(dataset.x_train)
    y_train = torch.from_numpy(dataset.y_train)
    try:
        with progress.task("train", total=epochs) as bar:
            bar.advance(start_epoch)
            for epoch in range(start_epoch, epochs):
                torch.manual_seed(seed * 100_003 + epoch)
                order = epoch_order(seed, epoch, len(x_train))
                lr = optimizer.param_groups[0]["lr"]
                total_loss, correct = _train_epoch(
                    model, optimizer, objective, x_train[order], y_train[order], batch_size, layout, epoch + 1, lr
                )
                check_finite_weights(model, epoch + 1, lr)
                if scheduler is not None:
                    scheduler.step()
                history.append(
                    {
                        "epoch": epoch + 1,
                        "loss": total_loss / len(order),
                        "train_accuracy": correct / len(order),
                        "lr": lr,
                        **objective.epoch_record(),
                    }
                )
                if dataset.has_validation:
                    history[-1]["val_accuracy"] = evaluate(model, dataset.x_val, dataset.y_val)
                _save_atomic(
                    {
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "history": history,
                    },
                    state_path,
                )
                bar.advance(1, loss=f"{history[-1]['loss']:.3f}", acc=f"{history[-1]['train_accuracy']:.3f}")
    finally:
        objective.detach()
        model.to(memory_format=torch.contiguous_format)  # what every later pass (export, pruning) expects
    accuracy = evaluate(model, dataset.x_test, dataset.y_test)
    model.eval()
    return TrainResult(model=model, test_accuracy=accuracy, history=history)
