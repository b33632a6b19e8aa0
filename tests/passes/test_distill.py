"""Knowledge distillation: the soft-target loss and its gradient, the term inside the training
objective, and `distill = teacher(...)` in `train`, `amc`, `haq` and `shrink` fine-tuning."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn
from torch.nn import functional as F

import adl
from adl.passes.train.distill import Distill, soft_target_loss
from adl.passes.train.objective import Objective


def test_the_soft_loss_is_t_squared_kl_and_its_gradient_is_t_times_the_probability_gap():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(5, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    teacher = torch.randn(5, 4, dtype=torch.float64, generator=generator)
    t = 3.0
    loss = soft_target_loss(student, teacher, t)
    p_teacher, p_student = F.softmax(teacher / t, 1), F.softmax(student / t, 1)
    kl = (p_teacher * (p_teacher.log() - p_student.log())).sum(1).mean()
    assert float(loss.detach()) == pytest.approx(t * t * float(kl.detach()), rel=1e-12)
    loss.backward()
    # d/ds of T^2 KL(p_t || softmax(s / T)), averaged over the batch: T (p_s - p_t) / N
    expected = t * (p_student - p_teacher).detach() / len(student)
    torch.testing.assert_close(student.grad, expected, rtol=1e-12, atol=1e-15)
    assert torch.autograd.gradcheck(lambda s: soft_target_loss(s, teacher, t), (student.detach().requires_grad_(),))


def test_the_soft_loss_vanishes_when_the_student_is_the_teacher():
    logits = torch.randn(6, 10, dtype=torch.float64)
    assert float(soft_target_loss(logits, logits.clone(), 4.0)) == pytest.approx(0.0, abs=1e-12)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def test_the_objective_mixes_the_hard_and_soft_losses_by_the_weight():
    student, teacher = _net(), _net()
    with torch.no_grad():
        teacher[3].weight.mul_(2.0)  # a teacher that disagrees with the student
    x = torch.randn(7, 1, 2, 2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    term = Distill(teacher, temperature=2.0, weight=0.25)
    objective = Objective(nn.CrossEntropyLoss(), [term])
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    objective.attach(student, optimizer)
    student.train()
    logits = student(x)  # the teacher sees this batch through the input tap
    loss = objective(logits, labels)
    expected = 0.75 * F.cross_entropy(logits, labels) + 0.25 * soft_target_loss(logits, teacher(x), 2.0)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    assert objective.epoch_record()["distill_loss"] > 0
    objective.detach()
    assert not any(m._forward_pre_hooks for m in student.modules())
    assert all(not p.requires_grad for p in term.teacher.parameters())  # a frozen copy
    assert all(p.requires_grad for p in teacher.parameters())  # the network given is left alone


def test_the_term_refuses_a_batch_the_teacher_did_not_see():
    term = Distill(_net(), temperature=2.0, weight=0.5)
    with pytest.raises(RuntimeError, match="the teacher saw no batch"):
        term.penalty(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


SPEC = """spec s
task classify { classes = 10 }
data digits { validation = 20 % }
model cnn(channels = [8, 16], hidden = 16)
target host { kind = llvm  cores = 1 }
pipeline {
  train(epochs = 2)
  amc(flops = 50 %, episodes = 3, warmup = 2, val_samples = 50, finetune = 1, distill = teacher(temperature = 4))
  train(epochs = 1, distill = teacher(weight = 0.5))
}
"""


def test_amc_fine_tunes_and_a_later_train_stage_learns_from_the_unpruned_network(tmp_path, one_torch_thread):
    from adl.driver.run import compile_spec

    result = compile_spec(adl.check(SPEC, "s.adl"), out_dir=tmp_path / "out")
    metrics = result.module.metrics
    assert metrics["amc"]["finetune"]["history"][0]["distill_loss"] > 0
    assert metrics["train_history"][0]["distill_loss"] > 0
    reference = result.module.reference  # the trained, unpruned network: the teacher of both
    widths = [m.out_channels for m in reference.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [8, 16]
    pruned = [m.out_channels for m in result.module.model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(pruned) < sum(widths)
