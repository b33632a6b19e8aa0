"""Knowledge distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
2015): the network learns the teacher's softened outputs as well as the labels.

    loss = (1 - weight) * CE(student, labels) + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

T^2 keeps the soft term's gradient on the scale of the hard one's as T grows (the paper's
argument). The teacher sees the same (augmented, shuffled) batch through an `InputTap`, in eval
mode and without gradient.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from adl.passes.train.objective import InputTap, Term, frozen_copy


class Distill(Term):
    name = "distill"

    def __init__(self, teacher: nn.Module, temperature: float, weight: float) -> None:
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be positive, not {temperature}")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"distillation weight must lie in [0, 1], not {weight}")
        self.teacher = frozen_copy(teacher)
        self.temperature = temperature
        self.weight = weight
        self.ce_scale = 1.0 - weight
        self._teacher_logits: torch.Tensor | None = None
        self._tap = InputTap(self._run_teacher)
        self._last = 0.0

    def _run_teacher(self, inputs: torch.Tensor) -> None:
        with torch.no_grad():
            self._teacher_logits = self.teacher(inputs.contiguous())

    def attach(self, model: nn.Module) -> None:
        self._tap.attach(model)

    def penalty(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        if self._teacher_logits is None:
            raise RuntimeError("distillation: the teacher saw no batch (the student ran outside training mode?)")
        soft = soft_target_loss(logits, self._teacher_logits, self.temperature)
        self._teacher_logits = None
        self._last = float(soft.detach())
        return self.weight * soft

    def epoch_record(self) -> dict[str, float]:
        return {"distill_loss": self._last}

    def detach(self) -> None:
        self._tap.detach()


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    t = temperature
    log_student = F.log_softmax(student_logits / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits / t, dim=1)
    return (t * t) * F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
