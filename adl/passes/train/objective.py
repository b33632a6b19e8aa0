"""What the training loop minimises: the cross-entropy plus the `train` options' extra terms.

A `Term` adds to the loss (a regularizer of the weights, a distance to a teacher's outputs or a
source network's feature maps) and may act after each optimizer step (a proximal step). Terms
see the batch through forward hooks on the network being trained, so the loop's step stays the
same for every objective: `Objective(logits, labels)` is its loss function, and the optimizer's
post-step hook runs the terms' `after_step`. Hooks fire only in training mode: evaluation and
export see the plain network.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn


class Term:
    """One addition to the training objective; subclasses override what they need."""

    name = "term"
    ce_scale = 1.0  # factor on the cross-entropy (distillation moves weight to the teacher)

    def attach(self, model: nn.Module) -> None:
        """Install hooks on `model` (the network being trained); called once before training."""

    def penalty(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """This batch's addition to the loss (None: nothing)."""
        return None

    def after_step(self, lr: float) -> None:
        """Runs after every optimizer step, `lr` the step's learning rate."""

    def epoch_record(self) -> dict[str, float]:
        """Figures for the epoch's training-history entry."""
        return {}

    def detach(self) -> None:
        """Remove every hook `attach` installed."""


class Objective:
    """The loss function of the training loop: `ce_scale` x cross-entropy + the terms' penalties."""

    def __init__(self, cross_entropy: nn.Module, terms: Iterable[Term] = ()) -> None:
        self.cross_entropy = cross_entropy
        self.terms = list(terms)
        self.ce_scale = 1.0
        for term in self.terms:
            self.ce_scale *= term.ce_scale
        self._step_hook: Any = None

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.cross_entropy(logits, labels)
        if self.ce_scale != 1.0:
            loss = self.ce_scale * loss
        for term in self.terms:
            extra = term.penalty(logits, labels)
            if extra is not None:
                loss = loss + extra
        return loss

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for term in self.terms:
            term.attach(model)
        if self.terms:

            def after_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
                lr = float(opt.param_groups[0]["lr"])
                for term in self.terms:
                    term.after_step(lr)

            self._step_hook = optimizer.register_step_post_hook(after_step)

    def detach(self) -> None:
        for term in self.terms:
            term.detach()
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None

    def epoch_record(self) -> dict[str, float]:
        record: dict[str, float] = {}
        for term in self.terms:
            record.update(term.epoch_record())
        return record


class InputTap:
    """A forward pre-hook on the trained network's root that hands each training batch's input to
    `consume` (a teacher's or a source network's forward), before the network itself runs."""

    def __init__(self, consume: Callable[[torch.Tensor], None]) -> None:
        self._consume = consume
        self._handle: Any = None

    def attach(self, model: nn.Module) -> None:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if module.training and args and isinstance(args[0], torch.Tensor):
                self._consume(args[0])

        self._handle = model.register_forward_pre_hook(pre_hook)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode whose parameters take no gradient: a teacher or a source."""
    import copy

    clone = copy.deepcopy(model).eval()
    for param in clone.parameters():
        param.requires_grad_(False)
    return clone
