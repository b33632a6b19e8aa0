"""The training objective: without terms it is the cross-entropy itself, and terms hook in and out
of the network and the optimizer cleanly."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn

from adl.ir.spec import CallValue
from adl.passes.train.objective import Objective, Term
from adl.passes.train.regularizers import build_objective


def test_without_terms_the_objective_is_the_cross_entropy_bit_for_bit():
    logits = torch.randn(8, 5, requires_grad=True)
    labels = torch.randint(0, 5, (8,))
    plain = nn.CrossEntropyLoss(label_smoothing=0.1)
    config = {"label_smoothing": 0.1, "regularizer": CallValue("none"), "distill": CallValue("none")}
    objective = build_objective(nn.Linear(2, 5), config, dataset=None, teacher=None, seed=0, log=print)
    assert objective.terms == []
    ours = objective(logits, labels)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    reference = plain(logits, labels)
    (grad_reference,) = torch.autograd.grad(reference, logits)
    assert torch.equal(ours, reference) and torch.equal(grad_ours, grad_reference)


class Counting(Term):
    def __init__(self) -> None:
        self.steps: list[float] = []

    def after_step(self, lr: float) -> None:
        self.steps.append(lr)


def test_terms_run_after_every_optimizer_step_until_detached():
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.25)
    term = Counting()
    objective = Objective(nn.CrossEntropyLoss(), [term])
    objective.attach(model, optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        objective(model(torch.randn(4, 3)), torch.tensor([0, 1, 0, 1])).backward()
        optimizer.step()
    objective.detach()
    optimizer.step()
    assert term.steps == [0.25, 0.25, 0.25]


def test_distillation_without_a_teacher_is_refused():
    config = {"label_smoothing": 0.0, "regularizer": CallValue("none"), "distill": CallValue("teacher", ())}
    with pytest.raises(ValueError, match="needs a teacher"):
        build_objective(nn.Linear(2, 2), config, dataset=None, teacher=None, seed=0, log=print)
