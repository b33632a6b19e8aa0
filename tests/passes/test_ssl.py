"""Structured Sparsity Learning (`train { regularizer = ssl(...) }`) and the `shrink` pass: the
group-lasso groups, the penalty's gradient, the proximal step, and removing zeroed channels
without changing the output."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.fx")

import numpy as np
from torch import nn

from adl.models import build_model
from adl.passes.channels import ChannelGraph
from adl.passes.shrink.removal import output_change, remove_zeroed, zeroed_channels
from adl.passes.train.ssl import SSL, group_sets

SHAPE = (1, 12, 12)


def lively_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorms that are not the identity at initialisation (no zero bias, no unit statistics)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def small_cnn(double: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [6, 8], "hidden": 10}, input_shape=SHAPE, classes=3, mean=[0.5], std=[0.2])
    return lively_batchnorm(model.double() if double else model)


def small_mobilenet() -> nn.Module:
    """Residual additions and depthwise convolutions: groups spanning several layers."""
    torch.manual_seed(0)
    model = build_model(
        "mobilenet",
        {
            "kernels": [3, 3, 3],
            "expand": [1, 2, 2],
            "channels": [8, 8, 12],
            "strides": [1, 1, 2],
            "stem": 8,
            "head": 16,
        },
        input_shape=SHAPE,
        classes=3,
        mean=[0.5],
        std=[0.2],
    )
    return lively_batchnorm(model)


def sets(model: nn.Module):
    return group_sets(model, ChannelGraph(model, (1, *SHAPE)))


def inputs(n: int = 16, dtype=torch.float32) -> torch.Tensor:
    return torch.rand((n, *SHAPE), generator=torch.Generator().manual_seed(1), dtype=dtype)


def zero_groups(lasso, group: int, channels: list[int]) -> None:
    """Set lasso groups (`channels` of channel group `group`) to exactly zero."""
    with torch.no_grad():
        for s in lasso.slices:
            if s.group == group:
                rows = s.positions.view(s.size, s.unit)[channels].reshape(-1)
                s.param.index_fill_(s.axis, rows, 0.0)


def test_filter_groups_hold_every_producer_and_channel_groups_every_reader():
    model = small_cnn()
    filters, channels = sets(model)
    first = min(filters.sizes)  # the first convolution's six channels
    produced = {(id(s.param), s.axis) for s in filters.slices if s.group == first}
    conv, bn = model[1][0][0], model[1][0][1]
    assert produced == {(id(conv.weight), 0), (id(bn.weight), 0), (id(bn.bias), 0)}  # the conv has no bias
    read = [s for s in channels.slices if s.group == first]
    assert [(s.param is model[1][2][0].weight, s.axis, s.size) for s in read] == [(True, 1, 6)]
    last = max(filters.sizes)  # the hidden Linear's units, read by the classifier's columns
    assert filters.sizes[last] == 10 and channels.sizes[last] == 10
    # the second stage's channels reach the hidden Linear through a flatten: 3 x 3 columns each
    flattened = [s for s in channels.slices if s.group not in (first, last)]
    assert [(s.size, s.unit) for s in flattened] == [(8, 9)]


def test_the_penalty_is_the_sum_of_group_norms_and_its_gradient_is_w_over_the_norm():
    model = small_cnn(double=True)
    for lasso in sets(model):
        model.zero_grad()
        penalty = lasso.penalty()
        expected = sum(float(sq.detach().sqrt().sum()) for sq in lasso.squared_norms().values())
        assert float(penalty.detach()) == pytest.approx(expected, rel=1e-12)
        penalty.backward()
        # analytic gradient of sum_g ||W_g||: each weight's gradient is the sum over the groups it
        # belongs to of w / ||W_g||; one lasso set has each weight in one group at most
        norms = {g: sq.detach().sqrt() for g, sq in lasso.squared_norms().items()}
        for s in lasso.slices:
            per_channel = norms[s.group].repeat_interleave(s.unit)
            shape = [1] * s.param.dim()
            shape[s.axis] = -1
            weights = s.param.detach().index_select(s.axis, s.positions)
            grads = s.param.grad.index_select(s.axis, s.positions)
            torch.testing.assert_close(grads, weights / per_channel.view(shape), rtol=1e-12, atol=0)


def test_the_penalty_gradient_matches_central_differences_in_float64():
    model = small_cnn(double=True)
    filters, channels = sets(model)
    params = [p for p in model.parameters()]

    def value() -> torch.Tensor:
        return 0.3 * filters.penalty() + 0.7 * channels.penalty()

    model.zero_grad()
    value().backward()
    rng = np.random.default_rng(0)
    eps = 1e-6
    for param in params:
        flat = param.data.view(-1)
        for index in rng.choice(flat.numel(), size=min(4, flat.numel()), replace=False):
            old = float(flat[index])
            with torch.no_grad():
                flat[index] = old + eps
                up = float(value())
                flat[index] = old - eps
                down = float(value())
                flat[index] = old
            numeric = (up - down) / (2 * eps)
            if param.grad is None:  # in no lasso group (the classifier's bias)
                assert numeric == 0.0
                continue
            # central differences: truncation O(eps^2 * |f'''|) ~ 1e-12, rounding ~ 1e-16 * |f| / eps ~ 1e-9
            # for a penalty of order 10: the two agree to ~1e-8 absolute
            assert float(param.grad.view(-1)[index]) == pytest.approx(numeric, abs=1e-7, rel=1e-6)


def test_a_zero_group_has_a_zero_subgradient_not_nan():
    model = small_cnn(double=True)
    filters, _ = sets(model)
    group = min(filters.sizes)
    zero_groups(filters, group, [0, 1])
    model.zero_grad()
    filters.penalty().backward()
    for s in filters.slices:
        assert torch.isfinite(s.param.grad).all()
        if s.group == group:
            assert not s.param.grad.index_select(s.axis, s.positions[:2]).any()


def test_the_proximal_step_shrinks_each_group_norm_by_the_threshold_or_to_zero():
    model = small_cnn(double=True)
    filters, _ = sets(model)
    before = {g: n.copy() for g, n in filters.norms().items()}
    directions = {id(s): s.param.detach().index_select(s.axis, s.positions).clone() for s in filters.slices}
    threshold = float(np.median(np.concatenate(list(before.values()))))
    filters.shrink(threshold)
    after = filters.norms()
    for g in before:
        np.testing.assert_allclose(after[g], np.maximum(before[g] - threshold, 0.0), rtol=1e-12, atol=1e-15)
    everything = np.concatenate(list(after.values()))
    assert (everything == 0).any() and (everything > 0).any()
    for s in filters.slices:  # a surviving group keeps its direction: W_g scaled by one factor
        now = s.param.detach().index_select(s.axis, s.positions)
        ratio = (now / directions[id(s)]).nan_to_num(0.0)
        norms = before[s.group]
        expected = np.maximum(1 - threshold / norms, 0).repeat(s.unit)
        shape = [1] * s.param.dim()
        shape[s.axis] = -1
        torch.testing.assert_close(ratio, torch.from_numpy(expected).view(shape).expand_as(ratio), rtol=1e-9, atol=0)


@pytest.mark.parametrize("which", ["filters", "channels"])
@pytest.mark.parametrize("build", [small_cnn, small_mobilenet], ids=["cnn", "mobilenet"])
def test_removing_zeroed_channels_leaves_the_output_unchanged(build, which):
    model = build()
    filters, channels = sets(model)
    lasso = filters if which == "filters" else channels
    graph = ChannelGraph(model, (1, *SHAPE))
    zeroed = 0
    for group in lasso.sizes:
        size = lasso.sizes[group]
        if size >= 4:
            zero_groups(lasso, group, list(range(1, size, 2)))
            zeroed += len(range(1, size, 2))
    assert zeroed
    found = zeroed_channels(model, graph, 0.0)
    assert int(sum(z.sum() for z in found.values())) == zeroed
    removal = remove_zeroed(model, SHAPE, threshold=0.0, multiple=1)
    assert removal.zeroed == zeroed
    assert sum(kept for kept, _, _ in removal.channels.values()) == removal.prunable - zeroed
    x = inputs()
    with torch.no_grad():
        before, after = model(x), removal.model(x)
    # the kept channels compute what they did; only the summation over the removed (zero) terms
    # is gone, which moves float32 sums by a few ulps of their magnitude
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * float(before.abs().max()))
    assert output_change(model, removal.model, x.numpy()) < 1e-5


def test_kept_counts_round_up_to_the_multiple_with_zero_channels():
    model = small_cnn()
    filters, _ = sets(model)
    group = min(filters.sizes)  # 6 channels
    zero_groups(filters, group, [0, 1, 2, 3])
    removal = remove_zeroed(model, SHAPE, threshold=0.0, multiple=4)
    kept, size, zero = removal.channels[next(iter(removal.channels))]
    assert (kept, size, zero) == (4, 6, 4)  # 2 alive, padded to 4 with zero channels
    assert output_change(model, removal.model, inputs().numpy()) < 1e-5


def test_a_threshold_removes_near_zero_groups_and_changes_the_output_a_little():
    model = small_cnn()
    filters, _ = sets(model)
    group = min(filters.sizes)
    with torch.no_grad():
        for s in filters.slices:
            if s.group == group:
                s.param.index_fill_(s.axis, s.positions[:1], 1e-4)
    assert remove_zeroed(model, SHAPE, threshold=0.0, multiple=1).zeroed == 0
    near = remove_zeroed(model, SHAPE, threshold=1e-3, multiple=1)
    assert near.zeroed == 1
    assert 0 < output_change(model, near.model, inputs().numpy()) < 1e-2


def test_training_with_the_proximal_step_zeros_whole_groups(one_torch_thread, tmp_path):
    from adl.data import load_dataset
    from adl.ir.progress import SilentProgress
    from adl.ir.spec import CallValue
    from adl.passes.train.loop import train_model

    dataset = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model(
        "cnn",
        {"channels": [8, 16], "hidden": 16},
        input_shape=dataset.input_shape,
        classes=10,
        mean=dataset.mean,
        std=dataset.std,
    )
    config = {
        "epochs": 3,
        "batch_size": 32,
        "optimizer": CallValue("sgd", (("lr", 0.05), ("momentum", 0.9), ("weight_decay", 0.0), ("nesterov", True))),
        "schedule": "cosine",
        "label_smoothing": 0.0,
        "regularizer": CallValue("ssl", (("filters", 0.5), ("channels", 0.0), ("step", "proximal"))),
    }
    result = train_model(model, dataset, config, seed=0, state_dir=tmp_path, progress=SilentProgress(), log=print)
    last = result.history[-1]
    assert last["ssl_zero_filters"] > 0 and "ssl_zero_channels" not in last  # channels = 0: no such groups
    removal = remove_zeroed(result.model, dataset.input_shape, threshold=0.0, multiple=1)
    assert removal.zeroed == last["ssl_zero_filters"]
    assert output_change(result.model, removal.model, dataset.x_test[:64]) < 1e-4
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in result.model.modules())


def test_ssl_refuses_an_unknown_step():
    with pytest.raises(ValueError, match="unknown ssl step"):
        SSL(0.1, 0.1, "adamw", SHAPE)


SPEC = """spec s
task classify { classes = 10 }
data digits { validation = 20 % }
model cnn(channels = [8, 16], hidden = 16)
target host { kind = llvm  cores = 1 }
pipeline {
  train(epochs = 3, batch_size = 32, optimizer = sgd(lr = 0.05), regularizer = ssl(filters = 0.3, channels = 0.1))
  shrink(multiple = 1)
}
"""


def test_the_shrink_stage_removes_what_ssl_zeroed_and_keeps_the_accuracy(tmp_path, one_torch_thread):
    import adl
    from adl.driver.run import compile_spec

    result = compile_spec(adl.check(SPEC, "s.adl"), out_dir=tmp_path / "out")
    metrics = result.module.metrics
    shrink = metrics["shrink"]
    assert shrink["zeroed"] > 0 and shrink["kept"]["flops"] < 1.0
    assert shrink["output_change"] < 1e-4
    assert metrics["torch_accuracy"] == shrink["finetune"]["test_accuracy"]
    assert result.module.reference is not None  # the network before shrink: a later stage's teacher
    kept = sum(kept for kept, _, _ in shrink["channels"].values())
    assert kept == shrink["prunable"] - shrink["zeroed"]
    assert "Removing zeroed channels" in (tmp_path / "out" / "report.md").read_text()
