"""The transfer-learning terms: L2-SP's and DELTA's penalties and gradients, DELTA's hooks and
attention weights, and which parameters form the head."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from torch import nn

from adl.passes.train.objective import Objective
from adl.passes.train.transfer import L2SP, Delta, head_parameter_names

HEAD = {"8.weight", "8.bias"}


def _cnn(batchnorm: bool = True, seed: int = 0) -> nn.Module:
    """8x8 single-channel images, 3 classes; stage ends (pools) are layers "3" and "6", the head "8"."""
    torch.manual_seed(seed)
    norm = nn.BatchNorm2d(4) if batchnorm else nn.Identity()
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        norm,
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 3),
    )


def _batch(n: int = 5, seed: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _move_away(model: nn.Module, scale: float = 0.1, seed: int = 2) -> None:
    """Take every parameter off its starting value (a few training steps' worth)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _value(penalty: torch.Tensor) -> float:
    return float(penalty.detach())


def _dummy() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(1, 3), torch.zeros(1, dtype=torch.long)


def test_head_is_the_last_linear_else_the_last_conv():
    assert head_parameter_names(_cnn()) == HEAD
    mlp = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2, bias=False))
    assert head_parameter_names(mlp) == {"2.weight"}
    fully_conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert head_parameter_names(fully_conv) == {"2.weight", "2.bias"}
    with pytest.raises(ValueError, match="neither an nn.Linear nor an nn.Conv2d"):
        head_parameter_names(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))


def test_l2sp_value_and_gradient_are_the_analytic_ones():
    model = _cnn().double()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    alpha, beta = 0.3, 0.05
    term = L2SP(alpha, beta)
    term.attach(model)
    _move_away(model)

    penalty = term.penalty(*_dummy())
    penalty.backward()

    with torch.no_grad():
        drift = sum(float((p - start[n]).pow(2).sum()) for n, p in model.named_parameters() if n not in HEAD)
        head = sum(float(p.pow(2).sum()) for n, p in model.named_parameters() if n in HEAD)
    assert _value(penalty) == pytest.approx(alpha / 2 * drift + beta / 2 * head, rel=1e-12)
    for name, p in model.named_parameters():
        expected = beta * p.detach() if name in HEAD else alpha * (p.detach() - start[name])
        torch.testing.assert_close(p.grad, expected, rtol=1e-12, atol=1e-15)
    assert term.epoch_record() == {"l2sp_distance": pytest.approx(drift**0.5, rel=1e-12)}
    term.detach()


def test_l2sp_is_zero_on_the_source_weights_at_the_start():
    model = _cnn().double()
    term = L2SP(1.0, 0.0)
    term.attach(model)
    assert _value(term.penalty(*_dummy())) == 0.0
    assert term.epoch_record() == {"l2sp_distance": 0.0}


def test_delta_default_layers_are_the_stage_ends():
    assert Delta.default_layers(_cnn()) == ["3", "6"]
    no_pool = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    assert Delta.default_layers(no_pool) == ["0", "2"]


def test_delta_gradient_matches_central_differences():
    # BatchNorm stays: in training mode it is a deterministic, differentiable function of the batch
    # (its running-statistics updates do not enter the output), so the penalty is too
    model = _cnn(batchnorm=True).double().train()
    generator = torch.Generator().manual_seed(3)
    weights = {"3": 0.5 + torch.rand(4, generator=generator), "6": 0.5 + torch.rand(6, generator=generator)}
    source = copy.deepcopy(model).eval()
    source[1].train()  # DELTA's source normalizes with the batch's statistics, as the student does
    term = Delta(alpha=0.7, beta=0.3, layers=["3", "6"], weights=weights)
    term.attach(model)
    _move_away(model)
    x = _batch()

    def penalty() -> torch.Tensor:
        return term.penalty(model(x), torch.zeros(len(x), dtype=torch.long))

    # the value, by hand: the student's stages in training mode, the source's in eval mode but for BatchNorm
    with torch.no_grad():
        head = sum(float(p.pow(2).sum()) for n, p in model.named_parameters() if n in HEAD)
        distance = 0.0
        for end, layer in ((4, "3"), (7, "6")):
            diff = model[:end](x) - source[:end](x)
            distance += float((weights[layer].double() * diff.pow(2).sum(dim=(2, 3)).mean(dim=0)).sum())
    model.zero_grad()
    value = penalty()
    assert _value(value) == pytest.approx(0.7 * distance + 0.15 * head, rel=1e-12)
    assert term.epoch_record()["delta_feature_distance"] == pytest.approx(distance, rel=1e-12)
    value.backward()

    # Central differences check that the gradient is that of the value (the student's features carry
    # the graph, the source's none). In float64 with eps = 1e-6 the truncation error, eps^2/6 * f''',
    # is ~1e-13; rounding costs ~2**-52 * |f| / eps ~ 2e-10 * |f|, with |f| ~ 13 here: ~3e-9. An
    # absolute 1e-7 and a relative 1e-5 stay over an order of magnitude above both, and far below the
    # gradients (up to ~10; conv "0"'s bias has none, BatchNorm removes it). A step of 1e-6 is
    # unlikely to cross a ReLU or max-pool kink, and the data are fixed by the seeds.
    eps = 1e-6
    checked = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.view(-1)
            for i in range(flat.numel()):
                saved = float(flat[i])
                flat[i] = saved + eps
                up = float(penalty())
                flat[i] = saved - eps
                down = float(penalty())
                flat[i] = saved
                numeric = (up - down) / (2 * eps)
                analytic = float(p.grad.view(-1)[i])
                assert abs(numeric - analytic) <= 1e-7 + 1e-5 * abs(analytic), (name, i, numeric, analytic)
                checked += 1
    assert checked == sum(p.numel() for p in model.parameters())
    term.detach()


@pytest.mark.parametrize("batchnorm", [False, True])
def test_delta_is_zero_with_zero_gradient_at_the_start(batchnorm):
    model = _cnn(batchnorm=batchnorm).double().train()
    term = Delta(alpha=2.0, beta=0.0, layers=Delta.default_layers(model), weights=None)
    term.attach(model)
    penalty = term.penalty(model(_batch()), torch.zeros(5, dtype=torch.long))
    assert _value(penalty) == 0.0
    penalty.backward()
    for name, p in model.named_parameters():  # the head comes after the last regularized layer
        assert (p.grad is None and name in HEAD) or not p.grad.any()
    assert term.epoch_record() == {"delta_feature_distance": 0.0}
    term.detach()

    # with the head term, the penalty at the start is exactly beta/2 ||w_head||^2
    term = Delta(alpha=2.0, beta=0.4, layers=["3", "6"], weights=None)
    term.attach(model)
    head = sum(float(p.detach().pow(2).sum()) for n, p in model.named_parameters() if n in HEAD)
    assert _value(term.penalty(model(_batch()), torch.zeros(5, dtype=torch.long))) == pytest.approx(0.2 * head)
    term.detach()


def test_delta_uniform_weights_equal_no_weights_and_layouts_agree():
    model = _cnn(batchnorm=False).double().train()
    x, labels = _batch(), torch.zeros(5, dtype=torch.long)
    plain = Delta(1.0, 0.1, ["3", "6"], None)
    ones = Delta(1.0, 0.1, ["3", "6"], {"3": torch.ones(4), "6": torch.ones(6)})
    plain.attach(model)
    _move_away(model)
    value = _value(plain.penalty(model(x), labels))
    plain.detach()
    # the training loop feeds channels_last batches to a channels_last model
    channels_last = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        _move_away(channels_last, scale=-0.1)  # back to where `plain` was attached
    ones.attach(channels_last)
    _move_away(channels_last)
    moved = _value(ones.penalty(channels_last(x.contiguous(memory_format=torch.channels_last)), labels))
    ones.detach()
    assert value > 0
    assert moved == pytest.approx(value, rel=1e-10)


def test_delta_hooks_act_only_in_training_and_detach_removes_them():
    model = _cnn(batchnorm=True).double()
    assert _all_hooks(model) == 0
    term = Delta(alpha=1.0, beta=0.0, layers=["3", "6"], weights=None)
    term.attach(model)
    assert _all_hooks(model) > 0
    labels = torch.zeros(5, dtype=torch.long)

    model.eval()
    model(_batch(seed=1))
    assert term.penalty(None, labels) is None  # nothing stored: no feature distance, no head term (beta=0)
    assert term.epoch_record() == {}

    model.train()
    _move_away(model)
    first = _value(term.penalty(model(_batch(seed=1)), labels))
    model.eval()
    model(_batch(seed=4))  # an evaluation batch: neither the student's nor the source's features change
    assert _value(term.penalty(None, labels)) == first

    term.detach()
    assert _all_hooks(model) == 0
    model.train()
    model(_batch())
    assert term._student == {} and term._teacher == {}


def test_delta_rejects_layers_without_feature_maps():
    model = _cnn(batchnorm=False).double().train()
    term = Delta(1.0, 0.0, ["8"], None)
    term.attach(model)
    with pytest.raises(ValueError, match="layer '8'"):
        model(_batch())
    term.detach()
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        Delta(1.0, 0.0, ["nope"], None).attach(model)
    with pytest.raises(ValueError, match="no channel weights"):
        Delta(1.0, 0.0, ["3", "6"], {"3": torch.ones(4)}).attach(model)
    assert _all_hooks(model) == 0


def test_delta_in_an_objective_trains():
    model = _cnn(batchnorm=True).train()
    x, y = _batch(32, dtype=torch.float32), torch.arange(32) % 3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    objective = Objective(nn.CrossEntropyLoss(), [Delta(0.1, 0.01, ["3", "6"], None), L2SP(0.01, 0.01)])
    objective.attach(model, optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        objective(model(x.contiguous(memory_format=torch.channels_last)), y).backward()
        optimizer.step()
    record = objective.epoch_record()
    objective.detach()
    assert set(record) == {"delta_feature_distance", "l2sp_distance"}
    assert record["delta_feature_distance"] > 0 and record["l2sp_distance"] > 0
    assert _all_hooks(model) == 0


def _attention_task() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The CNN with channel 2 of its second conv dead (a zero filter and bias, so 0 after ReLU and
    pooling), and labels the network's own features determine, so the refitted head relies on them."""
    model = _cnn(batchnorm=True, seed=5)
    with torch.no_grad():
        model[4].weight[2] = 0
        model[4].bias[2] = 0
    x = _batch(96, seed=6, dtype=torch.float32)
    with torch.no_grad():
        features = model[:8](x)
        teacher = torch.randn(24, 3, generator=torch.Generator().manual_seed(7))
        y = (features @ teacher).argmax(1)
    return model, x, y


def test_attention_weights_favour_the_channels_the_head_uses():
    model, x, y = _attention_task()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = Delta.attention_weights(model, ["3", "6"], x.numpy(), y.numpy(), probe_epochs=10, samples=80)

    assert set(weights) == {"3", "6"}
    assert weights["3"].shape == (4,) and weights["6"].shape == (6,)
    for w in weights.values():
        assert (w > 0).all()
        assert float(w.mean()) == pytest.approx(1.0, abs=1e-6)
    dead = weights["6"][2]
    assert float(dead) == pytest.approx(float(weights["6"].min()))  # switching it off changes nothing
    assert float(weights["6"].max()) > 1.5 * float(dead)

    # `model` is left as it was, and the weights are a function of the seed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    again = Delta.attention_weights(model, ["3", "6"], x, y, probe_epochs=10, samples=80)
    assert all(torch.equal(weights[k], again[k]) for k in weights)


def test_attention_weights_feed_delta():
    model, x, y = _attention_task()
    weights = Delta.attention_weights(model, ["6"], x, y, probe_epochs=2)
    term = Delta(1.0, 0.0, ["6"], weights)
    model.train()
    term.attach(model)
    _move_away(model, scale=0.05)
    model(x[:8])
    assert _value(term.penalty(None, y[:8])) > 0
    term.detach()
