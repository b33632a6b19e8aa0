"""The amc pass's mechanisms: channel groups on torch.fx graphs, pruning to a dense model equal to
the masked original, refusals naming the layer, exact costs, budget-clipped episodes, least-squares
reconstruction, and the pass end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from adl.hwmodels.roofline import RooflineModel
from adl.ir.layers import describe_model
from adl.ir.module import Module
from adl.ir.passes import PassContext, PassError
from adl.ir.spec import TargetSpec
from adl.models.zoo import BasicBlock, InvertedResidual, _conv_bn, build_model
from adl.passes.amc import AmcPass
from adl.passes.amc.env import AmcEnv, BudgetError, PolicyScore, Resources, keep_grid
from adl.passes.amc.reconstruct import Reconstructor
from adl.passes.channels import ChannelGraph, PruningError

SHAPE = (2, 3, 8, 8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that a BatchNorm sliced wrongly changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=generator) * 0.3)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=generator) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=generator) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=generator) * 0.3)
    return model.eval()


class Chain(nn.Module):
    """A plain conv chain with pooling, a flatten of a 2x2 map (4 features per channel) and an MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(3, 12, 3, act=nn.ReLU),
            nn.MaxPool2d(2),
            _conv_bn(12, 16, 3, act=nn.ReLU),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 4, 20),
            nn.ReLU(),
            nn.Linear(20, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def separable() -> nn.Module:
    return nn.Sequential(
        _conv_bn(3, 16, 3),
        _conv_bn(16, 16, 3, groups=16),
        _conv_bn(16, 24, 1),
        _conv_bn(24, 24, 3, stride=2, groups=24),
        _conv_bn(24, 32, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 5),
    )


def inverted_residual() -> nn.Module:
    return nn.Sequential(
        _conv_bn(3, 16, 3),
        InvertedResidual(16, 16, 3, 6, 1),
        InvertedResidual(16, 24, 3, 6, 2),
        InvertedResidual(24, 24, 3, 6, 1),
        _conv_bn(24, 32, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 5),
    )


def basic_blocks() -> nn.Module:
    return nn.Sequential(
        _conv_bn(3, 8, 3, act=nn.ReLU),
        BasicBlock(8, 8, 1),
        BasicBlock(8, 16, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


class Concat(nn.Module):
    """Two branches concatenated (offsets), then a residual over the concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _conv_bn(3, 6, 3), _conv_bn(3, 10, 1)
        self.c = _conv_bn(16, 16, 3, groups=16)
        self.head = nn.Sequential(_conv_bn(16, 12, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.head(joined + self.c(joined))


STRUCTURES = {
    "chain": Chain,
    "separable": separable,
    "inverted_residual": inverted_residual,
    "basic_blocks": basic_blocks,
    "concat": Concat,
}


def random_keep(graph: ChannelGraph, seed: int) -> dict[int, np.ndarray]:
    """Random channels of every prunable group (not the norm-ranked ones: any subset must work)."""
    rng = np.random.default_rng(seed)
    return {
        g.index: np.sort(rng.choice(g.size, size=int(rng.integers(1, g.size)), replace=False)) for g in graph.prunable
    }


@pytest.mark.parametrize("name", STRUCTURES)
def test_the_pruned_model_computes_the_masked_original(name):
    torch.manual_seed(0)
    model = randomise_batchnorm(STRUCTURES[name]())
    graph = ChannelGraph(model, SHAPE)
    assert graph.prunable, "every structure here has prunable channels"
    x = torch.randn(4, *SHAPE[1:])
    for seed in range(3):
        keep = random_keep(graph, seed)
        pruned, masked = graph.prune(keep), graph.masked(keep)
        with torch.no_grad():
            # the same sums without the masked (zero) terms, which oneDNN may block and order differently:
            # float32 rounding of outputs below 1, ~1e-7 (often exactly equal)
            np.testing.assert_allclose(pruned(x).numpy(), masked(x).numpy(), atol=1e-5, rtol=1e-4)
            assert not np.allclose(masked(x).numpy(), model(x).numpy(), atol=1e-4)  # pruning did change something
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
        # dense: exportable (checked once, it is slow), no masks, and the re-derived costs are exact
        if seed == 0:
            torch.export.export(pruned, (x[:1],))
        table = graph.layer_table()
        counts = table.full_counts.copy()
        for g, kept in keep.items():
            counts[g] = len(kept)
        layers = describe_model(pruned, SHAPE)
        assert table.flops_per_layer(counts).sum() == pytest.approx(sum(l.flops for l in layers))
        assert table.params_per_layer(counts).sum() == pytest.approx(sum(l.params for l in layers))
        assert [(l.input_shape, l.output_shape, l.groups) for l in table.descs(counts)] == [
            (l.input_shape, l.output_shape, l.groups) for l in layers
        ]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_a_flatten_head_loses_a_block_of_h_x_w_features_per_pruned_channel(shape):
    """The default `cnn` head on 28x28 and 32x32 images flattens the last stage's map into the
    Linear: pruning one of that stage's channels must drop its H*W consecutive columns, not one."""
    torch.manual_seed(0)
    model = randomise_batchnorm(
        build_model(
            "cnn",
            {"channels": (8, 12), "hidden": 16},
            input_shape=shape,
            classes=10,
            mean=(0.5,) * shape[0],
            std=(2.0,) * shape[0],
        )
    )
    body, side = model[1], shape[1] // 4
    assert isinstance(body[4], nn.Flatten) and body[5].in_features == 12 * side * side
    graph = ChannelGraph(model, (2, *shape))
    group = next(g for g in graph.prunable if g.name == "1.2.0")  # the last conv's channels
    kept, dropped = np.array([0, 3, 4, 9]), np.array([1, 2, 5, 6, 7, 8, 10, 11])
    # consumer weights on the dropped channels zeroed by hand (the Linear's columns as [out, C, H, W]):
    # the original then computes what the pruned network does
    with torch.no_grad():
        body[5].weight.view(16, 12, side, side)[:, dropped] = 0.0
    graph = ChannelGraph(model, (2, *shape))
    pruned = graph.prune({group.index: kept})
    linear = dict(pruned.named_modules())["1.5"]
    assert linear.in_features == len(kept) * side * side
    expected = body[5].weight.detach().view(16, 12, side * side)[:, kept].reshape(16, -1)
    assert torch.equal(linear.weight.detach(), expected)
    x = torch.rand(4, *shape) * 4
    with torch.no_grad():
        np.testing.assert_allclose(pruned(x).numpy(), model(x).numpy(), atol=1e-5, rtol=1e-4)
    # the costs re-derived without pruning match the pruned network's, both groups pruned
    first = next(g for g in graph.prunable if g.name == "1.0.0")
    keep = {first.index: np.array([1, 2, 6]), group.index: kept}
    table, counts = graph.layer_table(), graph.layer_table().full_counts.copy()
    for g, chosen in keep.items():
        counts[g] = len(chosen)
    layers = describe_model(graph.prune(keep), (2, *shape))
    assert table.flops_per_layer(counts).sum() == pytest.approx(sum(l.flops for l in layers))
    assert table.params_per_layer(counts).sum() == pytest.approx(sum(l.params for l in layers))
    assert [l.input_shape for l in table.descs(counts)] == [l.input_shape for l in layers]


def test_groups_tie_what_must_be_pruned_together():
    # inverted residual with skip: the stem, the first block's depthwise and projection share a group
    graph = ChannelGraph(inverted_residual(), SHAPE)
    sizes = [(g.name, g.size) for g in graph.prunable]
    assert sizes == [
        ("0.0", 16),
        ("1.body.0.0", 96),
        ("2.body.0.0", 96),
        ("2.body.2.0", 24),
        ("3.body.0.0", 144),
        ("4.0", 32),
    ]
    assert sorted(graph.groups[1].producers) == ["0.0", "1.body.2.0"]
    # basic blocks: the downsampling shortcut and the second conv of the block are one group
    graph = ChannelGraph(basic_blocks(), SHAPE)
    tied = [sorted(g.producers) for g in graph.prunable if len(g.producers) > 1]
    assert tied == [["0.0", "1.body.1.0"], ["2.body.1.0", "2.shortcut.0"]]
    # the input and the logits are never pruned
    assert graph.groups[0].fixed == "the network's input" and "output" in graph.groups[-1].fixed


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mixer = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mixer(self.stem(x)).mean((2, 3)))


class Normed(nn.Module):
    """A layer with weights the analysis does not know how to cut (a GroupNorm's per-channel affine)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.stem(x)).mean((2, 3)))


class Shared(nn.Module):
    """One convolution called twice: its weights would have to be cut for two inputs at once."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mixer = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mixer(self.mixer(self.stem(x))).mean((2, 3)))


class Gated(nn.Module):
    """A one-channel gate broadcast over the channels: not a per-channel scale."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = nn.Conv2d(8, 1, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.head((y * self.gate(y).sigmoid()).mean((2, 3)))


@pytest.mark.parametrize(
    "model, words",
    [
        (Grouped, ["'mixer'", "grouped convolution", "groups=2"]),
        (Normed, ["'norm'", "GroupNorm", "not supported"]),
        (Shared, ["'mixer'", "called more than once"]),
        (Gated, ["'mul'", "(2, 1, 8, 8)", "broadcasting"]),
    ],
)
def test_unsupported_structures_are_refused_naming_the_layer(model, words):
    with pytest.raises(PruningError) as info:
        ChannelGraph(model(), SHAPE)
    for word in words:
        assert word in str(info.value)


class Reshaped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8 * 64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x).view(x.shape[0], -1))


class Softmaxed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.attend = nn.Softmax(dim=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attend(self.stem(x)).mean((2, 3)))


class Counted(nn.Module):
    """A size of 'wide' used as a number: its channel count (dim 1) would change with pruning and
    rescale the other branch; its batch or spatial size (dims 0, 2) would not."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.wide = nn.Conv2d(8, 12, 1)
        self.narrow = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.head((self.narrow(y) / self.wide(y).shape[self.dim]).mean((2, 3)))


@pytest.mark.parametrize(
    "model, through",
    [
        (Reshaped, "passes through node 'view' (view), which channel pruning cannot follow"),
        (Softmaxed, "passes through layer 'attend' (Softmax), which channel pruning cannot follow"),
    ],
)
def test_channels_reaching_an_op_the_analysis_cannot_follow_are_fixed_naming_it(model, through):
    """A parameter-free op the analysis cannot follow fixes the channels it reads; its output is a new
    fixed group. Nothing is left prunable here, and the environment says why."""
    graph = ChannelGraph(model(), SHAPE)
    stem = next(g for g in graph.groups if g.name == "stem")
    assert stem.fixed == through
    assert not graph.prunable
    made = graph.groups[stem.index + 1]
    assert made.fixed.startswith("made by ") and made.size == (8 * 64 if model is Reshaped else 8)
    with pytest.raises(BudgetError, match="no prunable channels: .*'stem' \\(8 channels\\): passes through"):
        AmcEnv(graph, Resources(graph.layer_table(), {"flops": 0.5}), lambda m: PolicyScore(0.5, 1.0))


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_a_channel_count_read_as_a_number_fixes_its_channels(dim):
    graph = ChannelGraph(Counted(dim), SHAPE)
    fixed = {g.name: g.fixed for g in graph.groups if g.name in ("wide", "narrow")}
    if dim == 1:
        through = "passes through node 'truediv' (truediv), which channel pruning cannot follow"
        assert fixed == {"wide": through, "narrow": through}
        assert [g.name for g in graph.prunable] == ["stem"]
    else:
        assert fixed == {"wide": "", "narrow": ""}
        assert sorted(g.name for g in graph.prunable) == ["narrow", "stem", "wide"]
    x = torch.randn(4, *SHAPE[1:])
    keep = random_keep(graph, 0)
    with torch.no_grad():  # as in test_the_pruned_model_computes_the_masked_original
        np.testing.assert_allclose(graph.prune(keep)(x).numpy(), graph.masked(keep)(x).numpy(), atol=1e-5, rtol=1e-4)


SPEC = """
spec amc_unit
task classify { classes = 10 }
data digits { split = 0.8  seed = 0 }
target host { kind = llvm  cores = 1 }
pipeline { amc }
"""


def pass_context(tmp_path) -> PassContext:
    from adl.data import load_dataset
    from adl.driver.check import load_spec

    spec = load_spec(SPEC.replace("pipeline { amc }", "model cnn()\npipeline { train amc }"))
    return PassContext(
        spec=spec,
        work_dir=tmp_path,
        load_dataset=lambda: load_dataset("digits"),
        cost_model=RooflineModel(),
        current_key="0" * 64,
    )


def test_the_pass_refuses_an_unsupported_model_with_a_pass_error(tmp_path):
    ctx = pass_context(tmp_path)
    bad = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.Flatten(), nn.Linear(8 * 64, 10)
    )
    with pytest.raises(PassError, match=r"layer '1' is a grouped convolution"):
        AmcPass(flops=0.5).run(Module(spec=ctx.spec, model=bad, facts=frozenset({"trained"})), ctx)


def make_env(model: nn.Module, budgets: dict[str, float], evaluate=lambda m: PolicyScore(0.5, 1.0), **kwargs) -> AmcEnv:
    graph = ChannelGraph(model, (1, *SHAPE[1:]))
    target = TargetSpec("host")
    roofline = RooflineModel(gflops=1.0, bandwidth=1.0, overhead=0.0)  # a compute-bound target
    resources = Resources(graph.layer_table(), budgets, lambda layers: roofline.estimate(layers, target).latency_s)
    return AmcEnv(graph, resources, evaluate, **kwargs)


@pytest.mark.parametrize(
    "budgets", [{"flops": 0.5}, {"flops": 0.3}, {"params": 0.4}, {"latency": 0.6}, {"flops": 0.6, "params": 0.5}]
)
def test_every_episode_ends_within_the_budget_whatever_the_actions(budgets):
    """Property: random actions (uniform, extreme, constant) never break the budget."""
    torch.manual_seed(0)
    env = make_env(inverted_residual().eval(), budgets, multiple=1)
    rng = np.random.default_rng(0)
    policies = [lambda t: rng.uniform(), lambda t: 1.0, lambda t: 0.0, lambda t: float(rng.uniform() > 0.5)]
    landed = []
    for episode in range(60):
        policy = policies[episode % len(policies)]
        env.reset()
        done = False
        while not done:
            step = env.step(policy(env.t))
            assert 0.0 < step.action <= 1.0
            done = step.done
        cost = step.info["cost"]
        for resource, fraction in budgets.items():
            assert cost[resource] <= fraction * env.resources.full[resource] * (1 + 1e-9), (episode, resource)
        landed.append(cost.get("flops", 0) / env.resources.table.flops_full.sum())
    # keep-everything episodes end at the budget, not far under it (the clip takes the largest feasible count)
    if list(budgets) == ["flops"]:
        assert max(landed) > budgets["flops"] * 0.9
    pruned = env.build(env.counts)
    layers = describe_model(pruned, (1, *SHAPE[1:]))
    if "flops" in budgets:
        assert sum(l.flops for l in layers) <= budgets["flops"] * env.resources.full["flops"] * (1 + 1e-9)


def test_an_unreachable_budget_is_refused_and_uniform_pruning_meets_the_budget():
    with pytest.raises(BudgetError, match="cannot be met"):
        make_env(inverted_residual().eval(), {"flops": 0.01}, min_keep=0.5)
    env = make_env(inverted_residual().eval(), {"flops": 0.5}, multiple=1)
    counts = env.uniform_counts()
    assert env.resources.within(counts)
    ratios = [counts[d.group] / d.size for d in env.decisions]
    assert max(ratios) - min(ratios) < 0.15  # one ratio, up to rounding
    assert env.resources.cost(counts)["flops"] > 0.4 * env.resources.full["flops"]


def test_among_policies_of_equal_accuracy_the_one_with_the_lowest_validation_loss_is_kept():
    from adl.passes.amc.search import accuracy_on, policy_rank
    from adl.passes.rl.ddpg import Episode

    def episode(index: int, reward: float, loss: float) -> Episode:
        return Episode(index, [], reward, {"accuracy": reward, "loss": loss, "counts": [index]}, 0.0)

    history = [episode(0, 0.99, 0.02), episode(1, 0.998, 0.09), episode(2, 0.998, 0.04), episode(3, 0.998, 0.07)]
    assert max(history, key=policy_rank).index == 2
    assert max(history + [episode(4, 0.999, 0.5)], key=policy_rank).index == 4  # the reward comes first
    # the pass's evaluator reports both, and the environment records the loss with the reward
    torch.manual_seed(0)
    x = torch.randn(32, *SHAPE[1:]).numpy()
    y = np.arange(32) % 5  # the network has 5 classes
    env = make_env(inverted_residual().eval(), {"flops": 0.5}, evaluate=accuracy_on(x, y), multiple=1)
    score = env.evaluate(env.graph.module)
    assert isinstance(score, PolicyScore) and score.loss > 0
    info = env.finish(env.uniform_counts())
    assert info["reward"] == info["accuracy"] and info["loss"] > 0


def test_the_state_embedding_lies_in_the_unit_interval_and_tracks_the_episode():
    env = make_env(basic_blocks().eval(), {"flops": 0.5})
    state = env.reset()
    assert state.shape == (env.state_dim,)
    states = [state]
    done = False
    while not done:
        step = env.step(0.5)
        done = step.done
        if not done:
            states.append(step.state)
    states = np.array(states)
    assert states.min() >= 0.0 and states.max() <= 1.0
    assert list(states[:, 0]) == sorted(states[:, 0]) and states[-1, 0] == 1.0  # t
    assert states[0, 9] == 0.0 and np.all(np.diff(states[:, 9]) >= 0) and states[-1, 9] > 0  # FLOPs reduced
    assert np.all(np.diff(states[:, 10]) <= 0)  # FLOPs after t
    assert states[0, 11] == 1.0 and states[1, 11] <= 0.75  # previous action


def test_keep_grids_hold_multiples_above_the_minimum_and_the_full_size():
    assert list(keep_grid(16, 0.2, 4)) == [4, 8, 12, 16]
    assert list(keep_grid(10, 0.5, 4)) == [8, 10]
    assert list(keep_grid(6, 0.2, 8)) == [2, 6]
    assert list(keep_grid(24, 0.2, 1))[:2] == [5, 6]


def test_least_squares_reconstruction_refits_the_next_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 6, 3, padding=1)).eval()
    graph = ChannelGraph(model, SHAPE)
    x = torch.randn(64, *SHAPE[1:]).numpy()
    keep = {graph.prunable[0].index: np.array([0, 2, 3, 5, 7, 8, 11])}
    reconstructor = Reconstructor(graph, x, positions=64)
    inputs = torch.from_numpy(x)
    with torch.no_grad():
        target = model(inputs)
        plain = float((graph.prune(keep)(inputs) - target).pow(2).mean())
        refit = float((graph.prune(keep, reconstructor)(inputs) - target).pow(2).mean())
        # the closed form agrees with an explicit least-squares fit on the same patches
        hidden = model[1](model[0](inputs))
        patches = nn.functional.unfold(hidden, 3, padding=1).transpose(1, 2).reshape(-1, 12 * 9).double()
        outputs = patches @ model[2].weight.reshape(6, -1).T.double()
        kept = (torch.tensor([0, 2, 3, 5, 7, 8, 11])[:, None] * 9 + torch.arange(9)).reshape(-1)
        expected = torch.linalg.lstsq(patches[:, kept], outputs).solution.T.reshape(6, 7, 3, 3)
    refitted = reconstructor("2", model[2].weight.detach(), torch.tensor([0, 2, 3, 5, 7, 8, 11]))
    # both solve in float64 (rounding ~1e-13); they differ by the closed form's ridge, 1e-6 x the Gram matrix's
    # mean diagonal, which moves the weights (|w| <= 0.19) by ~1e-6 x the condition: measured 7.8e-7
    np.testing.assert_allclose(refitted.numpy(), expected.float().numpy(), rtol=0, atol=1e-5)
    assert refit < 0.7 * plain


def test_the_pass_prunes_fine_tunes_and_records_its_policy(tmp_path):
    """A trained small CNN through the pass: budget met, ratios and costs in the metrics, a policy file
    that a resumed run reuses."""
    from adl.data import load_dataset

    torch.manual_seed(0)
    dataset = load_dataset("digits")
    ctx = pass_context(tmp_path)
    model = build_model(
        "cnn",
        {"channels": (8, 16), "hidden": 16},
        input_shape=dataset.input_shape,
        classes=10,
        mean=dataset.mean,
        std=dataset.std,
    )
    module = Module(spec=ctx.spec, model=model, facts=frozenset({"trained"}))
    amc = AmcPass(flops=0.5, episodes=8, warmup=4, finetune=1, val_samples=100)
    out = amc.run(module, ctx)
    metrics = out.metrics["amc"]
    assert metrics["budget_met"] and metrics["kept"]["flops"] <= 0.5
    assert set(metrics["ratios"]) == {"1.0.0", "1.2.0", "1.6"} and len(metrics["history"]) == 8
    assert sum(l.flops for l in describe_model(out.model, (1, 1, 8, 8))) == pytest.approx(metrics["after"]["flops"])
    assert "pruned" in out.facts and 0.0 <= out.metrics["torch_accuracy"] <= 1.0
    assert metrics["after"]["latency"] < metrics["before"]["latency"]
    json.dumps(metrics)  # goes into the manifest as it is
    policy = json.loads((ctx.state_dir() / "amc_policy.json").read_text())
    assert len(policy["counts"]) == len(ChannelGraph(model, (1, 1, 8, 8)).groups)
    policy["history"] = "reused"  # a second run (same checkpoint key) takes the stored policy, no search
    (ctx.state_dir() / "amc_policy.json").write_text(json.dumps(policy))
    again = AmcPass(flops=0.5, episodes=8, warmup=4, finetune=1, val_samples=100).run(module, ctx)
    assert again.metrics["amc"]["ratios"] == metrics["ratios"] and again.metrics["amc"]["history"] == "reused"


def test_a_policy_saved_for_another_search_configuration_is_not_reused(tmp_path):
    """The saved policy carries its search's key: a search configured otherwise (another budget) in the
    same state folder searches again instead of taking it."""
    from adl.data import load_dataset

    torch.manual_seed(0)
    dataset = load_dataset("digits")
    ctx = pass_context(tmp_path)
    model = build_model(
        "cnn",
        {"channels": (8, 16), "hidden": 16},
        input_shape=dataset.input_shape,
        classes=10,
        mean=dataset.mean,
        std=dataset.std,
    )
    module = Module(spec=ctx.spec, model=model, facts=frozenset({"trained"}))
    AmcPass(search="uniform", flops=0.5, finetune=0, val_samples=100).run(module, ctx)
    path = ctx.state_dir() / "amc_policy.json"
    policy = json.loads(path.read_text())
    policy["history"] = "reused"
    path.write_text(json.dumps(policy))
    logs: list[str] = []
    ctx.log = logs.append
    again = AmcPass(search="uniform", flops=0.6, finetune=0, val_samples=100).run(module, ctx)
    assert again.metrics["amc"]["history"] == [] and not any("reusing" in line for line in logs)


E2E_SPEC = """
spec tiny_amc
task classify { classes = 10 }
data digits { split = 0.8  seed = 0  validation = 20 % }
model cnn(channels = [8, 16], hidden = 16)
target host { kind = llvm  cores = 1 }
pipeline {
  train { epochs = 3 }
  amc { flops = 50 %  episodes = 6  warmup = 3  finetune = 1  val_samples = 100  multiple = 4 }
  lower { repeats = 10 }
}
"""


@pytest.mark.slow
def test_adl_compile_with_amc_builds_a_pruned_library(tmp_path):
    import subprocess
    import sys

    spec = tmp_path / "tiny_amc.adl"
    spec.write_text(E2E_SPEC)
    proc = subprocess.run(
        [sys.executable, "-m", "adl", "compile", "-q", str(spec), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "amc: scoring policies on 100 validation images" in proc.stderr  # held out of training
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [p["name"] for p in manifest["passes"]] == ["train", "amc", "lower"]
    assert manifest["data"]["validation_samples"] == 287 and manifest["data"]["train_samples"] == 1151
    assert all(0 < epoch["val_accuracy"] <= 1 for epoch in manifest["training"]["history"])
    amc = manifest["metrics"]["amc"]
    assert amc["budget_met"] and set(amc["ratios"]) == {"1.0.0", "1.2.0", "1.6"} and amc["multiple"] == 4
    assert manifest["metrics"]["flops"] <= 0.5 * amc["before"]["flops"]
    assert manifest["metrics"]["flops"] == amc["after"]["flops"]
    assert manifest["metrics"]["max_abs_diff"] <= 1e-4  # the pruned network lowers and agrees with PyTorch
    assert "amc" in manifest["pipeline"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Channel pruning (`amc`)" in report and "flops <= 50%" in report
    for group, (kept, size) in amc["channels"].items():
        assert f"| {group} | {kept} | {size} | {amc['ratios'][group]:.3f} |" in report


@pytest.mark.parametrize(
    "target, lanes, logged",
    [
        ({"kind": "llvm", "mcpu": "znver3"}, 8, False),
        ({"kind": "llvm", "mcpu": "skylake-avx512"}, 16, False),
        ({"kind": "no-such-kind"}, 8, True),  # TVM cannot tell: 8, and the log says so
    ],
)
def test_kept_channels_default_to_multiples_of_the_targets_simd_lanes(target, lanes, logged):
    from types import SimpleNamespace

    from adl.passes.amc import simd_lanes

    logs: list[str] = []
    ctx = SimpleNamespace(spec=SimpleNamespace(target=SimpleNamespace(tvm_target=lambda: target)), log=logs.append)
    assert simd_lanes(ctx) == lanes
    assert bool(logs) == logged and all("SIMD width" in line for line in logs)
