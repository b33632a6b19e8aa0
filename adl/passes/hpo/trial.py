"""One epoch of one hyperparameter trial, as a task a worker process runs.

A trial is the `train` pass's training with the sampled options, stepped one epoch per task:
the search's parent process reports each epoch's validation accuracy to Optuna (which may prune
the trial) and keeps the state between epochs, so a worker that dies costs one epoch, a killed
search resumes a trial after its last finished epoch, and the executor (local processes or a Ray
cluster) needs no state of its own. Each epoch is the same computation as `train_model`'s --
the same per-epoch seeding, visiting order and layout -- so the winner retrained by `train`
reproduces its trial.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from adl.passes.train.loop import (
    TrainingDiverged,
    _train_epoch,
    _training_layout,
    check_finite_weights,
    epoch_order,
    evaluate,
    make_optimizer,
    make_scheduler,
)

# the loop's own epoch and layout: a trial's epoch must be train_model's, bit for bit
from adl.passes.train.regularizers import build_objective


@dataclass(frozen=True)
class TrialShared:
    """What every epoch of every trial needs, sent once to each worker: the data and the untrained
    network (every trial starts from the same initial weights, so trials differ only by their
    hyperparameters)."""

    dataset: Any
    model: nn.Module
    threads: int = 1


@dataclass(frozen=True)
class EpochTask:
    trial: int  # the Optuna trial number
    epoch: int  # the epoch to run, 1-based
    config: Mapping[str, Any]  # the train pass's options, every domain replaced by the trial's value
    seed: int
    state: bytes | None  # `EpochResult.state` of the epoch before; None for the first


@dataclass(frozen=True)
class EpochResult:
    trial: int
    epoch: int
    state: bytes  # model, optimizer and schedule after this epoch (torch.save)
    row: dict[str, float]  # the epoch's history row, with `val_accuracy`
    diverged: str = ""  # TrainingDiverged's message, when the step size made the weights non-finite


def run_epoch(shared: TrialShared, task: EpochTask) -> EpochResult:
    """Train `task.epoch` of a trial from the state the epoch before left (runs in a worker)."""
    torch.set_num_threads(max(1, min(shared.threads, os.cpu_count() or 1)))
    # a Ray worker gets the data as read-only views of its object store; nothing here writes to them
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    dataset, config = shared.dataset, task.config
    model = copy.deepcopy(shared.model)  # a worker runs many trials' epochs on one `shared`
    layout = _training_layout(dataset.x_train.ndim)
    model.to(memory_format=layout)
    optimizer = make_optimizer(model.parameters(), config["optimizer"])
    scheduler = make_scheduler(optimizer, config)
    # as in train_model: the terms see the starting weights, before the trial's state is loaded
    objective = build_objective(model, config, dataset=dataset, teacher=None, seed=task.seed, log=lambda _: None)
    objective.attach(model, optimizer)
    if task.state is not None:
        state = torch.load(io.BytesIO(task.state), weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
    x_train, y_train = torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)
    index = task.epoch - 1  # train_model counts epochs from 0 in its seeds
    torch.manual_seed(task.seed * 100_003 + index)
    order = epoch_order(task.seed, index, len(x_train))
    lr = optimizer.param_groups[0]["lr"]
    try:
        total_loss, correct = _train_epoch(
            model, optimizer, objective, x_train[order], y_train[order], config["batch_size"], layout, task.epoch, lr
        )
        check_finite_weights(model, task.epoch, lr)
    except TrainingDiverged as err:
        objective.detach()
        return EpochResult(task.trial, task.epoch, b"", {"epoch": task.epoch, "lr": lr}, diverged=str(err))
    extra_figures = objective.epoch_record()
    objective.detach()
    if scheduler is not None:
        scheduler.step()
    row = {
        "epoch": task.epoch,
        "loss": total_loss / len(order),
        "train_accuracy": correct / len(order),
        "lr": lr,
        **extra_figures,
        "val_accuracy": evaluate(model, dataset.x_val, dataset.y_val),  # in the training layout, as train_model
    }
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
        },
        buffer,
    )
    return EpochResult(task.trial, task.epoch, buffer.getvalue(), row)
