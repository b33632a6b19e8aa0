"""HAQ's fake-quantized network and its DDPG environment, on a small trained digits CNN."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adl.hwmodels.bitserial import BitSerialModel
from adl.ir.layers import describe_model
from adl.ir.spec import TargetSpec
from adl.models.folding import fold_batchnorm
from adl.passes.haq.budget import BitPolicy, BudgetUnreachable, cost_function
from adl.passes.haq.env import FEATURES, HaqEnv, bits_of, episode_rank
from adl.passes.haq.model import FakeQuantLayer, quantize_model
from adl.passes.rl.ddpg import DDPGAgent, DDPGConfig, search
from adl.passes.train.loop import evaluate as top1


@pytest.fixture
def trained(trained_digits_cnn):
    return trained_digits_cnn


def test_bits_cover_the_range_evenly():
    actions = np.linspace(0, 1, 7001)
    counts = np.bincount([bits_of(a, 2, 8) for a in actions])[2:]
    assert len(counts) == 7 and counts.min() > 0.9 * counts.max()
    assert bits_of(0.0, 2, 8) == 2 and bits_of(1.0, 2, 8) == 8


def test_eight_bits_agree_with_the_float_network_and_two_bits_hurt(trained):
    model, dataset = trained
    samples = torch.from_numpy(dataset.x_train[:256])
    layers = [
        l
        for l in describe_model(fold_batchnorm(model), (1, *dataset.input_shape))
        if l.op in ("conv2d", "dwconv2d", "linear")
    ]
    eight = quantize_model(model, BitPolicy.uniform(len(layers), 8), samples, method="minmax")
    assert sum(isinstance(m, FakeQuantLayer) for m in eight.modules()) == len(layers)
    with torch.no_grad():
        x = torch.from_numpy(dataset.x_test)
        agree = float((eight(x).argmax(1) == model(x).argmax(1)).float().mean())
    assert agree >= 0.99
    two = quantize_model(model, BitPolicy.uniform(len(layers), 2), samples)
    assert top1(two, dataset.x_test, dataset.y_test) < top1(eight, dataset.x_test, dataset.y_test)
    kmeans = quantize_model(model, BitPolicy.uniform(len(layers), 4), samples, mode="kmeans")
    assert top1(kmeans, dataset.x_test, dataset.y_test) > 0.5
    with pytest.raises(ValueError, match="quantized ones"):
        quantize_model(model, BitPolicy.uniform(len(layers) + 1, 8), samples)


def test_a_short_search_ends_every_episode_within_budget(trained):
    model, dataset = trained
    folded = fold_batchnorm(model)
    layers = describe_model(folded, (1, *dataset.input_shape))
    cost = cost_function(
        layers, lambda ls: BitSerialModel(preset="edge").estimate(ls, TargetSpec(name="fpga")), "latency"
    )
    n = sum(l.op in ("conv2d", "dwconv2d", "linear") for l in layers)
    budget = (cost(BitPolicy.uniform(n, 8)) + cost(BitPolicy.uniform(n, 2))) / 2
    samples = torch.from_numpy(dataset.x_train[:256])
    x_val, y_val = dataset.x_train[-300:], dataset.y_train[-300:]

    def evaluate(policy):
        return top1(quantize_model(model, policy, samples), x_val, y_val)

    full = top1(model, x_val, y_val)
    env = HaqEnv(layers, evaluate, cost, budget, low=2, high=8, full_precision_accuracy=full)
    assert env.state_dim == len(FEATURES) and env.steps == 2 * n
    states = []
    state = env.reset()
    while True:
        states.append(state)
        step = env.step(0.99)
        state = step.state
        if step.done:
            break
    assert np.all(np.stack(states) >= 0) and np.all(np.stack(states) <= 1)
    assert step.info["proposed"] == BitPolicy.uniform(n, 8) and step.info["cost"] <= budget

    agent = DDPGAgent(env.state_dim, DDPGConfig(warmup=3, batch_size=8, hidden=(32, 32), seed=0))
    result = search(env, agent, episodes=6, rank=episode_rank)
    for episode in result.history:
        assert episode.info["cost"] <= budget
        policy = episode.info["policy"]
        assert min(policy.weight_bits + policy.act_bits) >= 2 and max(policy.weight_bits + policy.act_bits) <= 8
        assert episode.reward == pytest.approx(episode.info["accuracy"] - full)
    best = result.best
    assert best.reward == max(e.reward for e in result.history)
    assert best.info["cost"] == max(e.info["cost"] for e in result.history if e.reward == best.reward)
    impossible = HaqEnv(layers, evaluate, cost, 0.99 * cost(BitPolicy.uniform(n, 2)), full_precision_accuracy=full)
    with pytest.raises(BudgetUnreachable):
        for _ in range(impossible.steps):
            impossible.step(0.5)


def test_a_weights_only_search_asks_one_width_per_layer_and_keeps_activations_at_the_top(trained):
    model, dataset = trained
    layers = describe_model(fold_batchnorm(model), (1, *dataset.input_shape))
    n = sum(l.op in ("conv2d", "dwconv2d", "linear") for l in layers)
    size = cost_function(layers, lambda ls: BitSerialModel(preset="edge").estimate(ls, TargetSpec(name="fpga")), "size")
    env = HaqEnv(
        layers,
        lambda policy: 0.9,
        size,
        0.6 * size(BitPolicy.uniform(n, 8)),
        low=2,
        high=8,
        full_precision_accuracy=0.9,
        resource="size",
        activations=False,
    )
    assert env.steps == n
    flags = []
    state = env.reset()
    for _ in range(n):
        flags.append(state[FEATURES.index("is_weight")])
        step = env.step(0.99)
        state = step.state
    assert step.done and flags == [1.0] * n
    assert step.info["proposed"] == BitPolicy((8,) * n, (8,) * n)
    assert step.info["policy"].act_bits == (8,) * n and max(step.info["policy"].weight_bits) < 8
