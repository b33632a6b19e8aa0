"""Training that diverges stops with a `PassError` naming the epoch and the learning rate,
instead of handing NaN weights to the passes after it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adl.data import load_dataset
from adl.ir.passes import PassError
from adl.ir.progress import SilentProgress
from adl.ir.spec import CallValue
from adl.models import build_model
from adl.passes.train.loop import STATE_FILE, TrainingDiverged, check_finite_weights, train_model


def train(tmp_path, optimizer: CallValue, model: nn.Module | None = None):
    dataset = load_dataset("digits")
    torch.manual_seed(0)
    model = model or build_model(
        "cnn",
        {"channels": [4, 8], "hidden": 16},
        input_shape=dataset.input_shape,
        classes=10,
        mean=dataset.mean,
        std=dataset.std,
    )
    config = {"epochs": 2, "batch_size": 64, "optimizer": optimizer, "schedule": "constant", "label_smoothing": 0.0}
    return train_model(
        model, dataset, config, seed=0, state_dir=tmp_path, progress=SilentProgress(), log=lambda message: None
    )


def test_a_nan_loss_stops_training_at_once(tmp_path, one_torch_thread):
    with pytest.raises(TrainingDiverged) as info:
        train(tmp_path, CallValue("adam", (("lr", 1e30), ("weight_decay", 0.0))))
    assert str(info.value) == (
        "train: the loss became NaN at epoch 1 (lr = 1e+30): training diverged; lower the learning rate"
    )
    assert isinstance(info.value, PassError)
    assert not (tmp_path / STATE_FILE).exists(), "a diverged epoch must not be checkpointed"


class Poison(nn.Module):
    """Passes its input through; in training, turns its buffer infinite (as a BatchNorm's running
    variance does under a huge step) while the loss stays finite."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("state", torch.zeros(1))

    def forward(self, x):
        if self.training:
            self.state.fill_(float("inf"))
        return x


def test_infinite_weights_stop_training_while_the_loss_is_still_finite(tmp_path):
    dataset = load_dataset("digits")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), Poison())
    config = {
        "epochs": 2,
        "batch_size": 64,
        "optimizer": CallValue("adam", (("lr", 0.003), ("weight_decay", 0.0))),
        "schedule": "constant",
        "label_smoothing": 0.0,
    }
    with pytest.raises(TrainingDiverged) as info:
        train_model(model, dataset, config, seed=0, state_dir=tmp_path, progress=SilentProgress(), log=print)
    assert str(info.value) == (
        "train: the weights (in 2.state) became infinite at epoch 1 (lr = 0.003): "
        "training diverged; lower the learning rate"
    )


def test_the_first_non_finite_tensor_is_named():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    check_finite_weights(model, 3, 0.1)
    with torch.no_grad():
        model[1].running_var[1] = float("-inf")
    with pytest.raises(TrainingDiverged) as info:
        check_finite_weights(model, 3, 0.1)
    assert str(info.value) == (
        "train: the weights (in 1.running_var) became infinite at epoch 3 (lr = 0.1): "
        "training diverged; lower the learning rate"
    )


def test_distributed_divergence_is_reported_once_not_as_a_failed_worker(tmp_path):
    from adl.passes.train.distributed import launch, worker

    said = "train: the loss became NaN at epoch 2 (lr = 50): training diverged; lower the learning rate"
    for rank in (0, 1):
        worker.error_path(tmp_path, rank).write_text(said + "\n")
    assert launch._failure_message([None, None], [1, 1], tmp_path, 10.0) == said


def _all_contiguous(model: nn.Module) -> bool:
    return all(t.is_contiguous() for t in [*model.parameters(), *model.buffers()])


def test_images_train_channels_last_and_the_model_comes_back_in_the_default_layout(tmp_path, one_torch_thread):
    """Image batches train in NHWC (faster convolutions on the CPU); export and pruning expect
    the default layout afterwards, also when training stops with an error."""
    model = build_model(
        "cnn", {"channels": [4, 8], "hidden": 16}, input_shape=(1, 8, 8), classes=10, mean=[0.0], std=[1.0]
    )
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    conv.register_forward_pre_hook(
        lambda module, args: seen.append(
            (module.training, args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous())
        )
    )
    result = train(tmp_path / "ok", CallValue("adam", (("lr", 0.003), ("weight_decay", 0.0))), model)
    assert {nhwc for training, nhwc in seen if training} == {True}
    assert _all_contiguous(result.model)
    assert any(p.dim() == 4 for p in result.model.parameters())
    model = build_model(
        "cnn", {"channels": [4, 8], "hidden": 16}, input_shape=(1, 8, 8), classes=10, mean=[0.0], std=[1.0]
    )
    with pytest.raises(TrainingDiverged):
        train(tmp_path / "nan", CallValue("adam", (("lr", 1e30), ("weight_decay", 0.0))), model)
    assert _all_contiguous(model)


SGD = CallValue("sgd", (("lr", 0.05), ("momentum", 0.0), ("weight_decay", 0.0), ("nesterov", False)))


def test_the_layout_changes_only_the_summation_order(tmp_path, one_torch_thread, monkeypatch):
    """The same run in NCHW and in NHWC: the weights differ by float32 rounding, not by what is computed."""
    from adl.passes.train import loop

    nhwc = train(tmp_path / "nhwc", SGD)
    monkeypatch.setattr(loop, "_training_layout", lambda dims: torch.contiguous_format)
    nchw = train(tmp_path / "nchw", SGD)
    for (name, a), b in zip(nhwc.model.state_dict().items(), nchw.model.state_dict().values()):
        if a.is_floating_point():
            # two epochs of SGD on a small CNN: rounding differences (~1e-7 relative per op) grow
            # through ~60 steps, staying orders of magnitude below the weights' size
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), name
