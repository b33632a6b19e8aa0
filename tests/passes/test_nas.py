"""The nas pass's mechanisms: relaxed and sampled ops, their gradients, Gumbel sampling, a tiny
search per strategy, resuming, and the genotype -> PyTorch round trip."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp
import optax
import torch

from adl.models.space import MobileNetSpace
from adl.passes.nas.paths import PathRunner
from adl.passes.nas.search import STRATEGIES, LatencyTable, Search, SearchConfig, gumbel_gates, pair_gradient
from adl.passes.nas.supernet import Supernet, to_torch

SPACE = MobileNetSpace((1, 8, 8), 10, blocks=2, kernels=(3, 5), expand=(1, 3), widths=(0.5,), stem=8, head=16)
NET = Supernet(SPACE, 0.5)
LATENCY = LatencyTable([[1e-5 * (i + 1) for i in range(len(c))] for c in NET.choices], 2e-5)
# darts trains the whole mixture, which XLA compiles as one program (second order: five gradients of it):
# 30-37 s for NET's four candidates per block on 2 cores. One kernel size halves the candidates and drops
# the 5x5 depthwise convolutions (25 shifted slices each, against 9): a quarter of the slices remain.
DARTS_NET = Supernet(
    MobileNetSpace((1, 8, 8), 10, blocks=2, kernels=(3,), expand=(1, 3), widths=(0.5,), stem=8, head=16), 0.5
)
DARTS_LATENCY = LatencyTable([[1e-5 * (i + 1) for i in range(len(c))] for c in DARTS_NET.choices], 2e-5)


def data(n: int = 96, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)


def test_the_space_offers_identity_only_where_the_shape_is_kept():
    for b, (cin, cout, stride) in enumerate(SPACE.block_shapes(0.5)):
        has_skip = any(c.skip for c in NET.choices[b])
        assert has_skip == (stride == 1 and cin == cout)


def test_the_darts_mixture_gradient_matches_finite_differences():
    """The float32 gradient against float64 central differences of the same function.

    Central differences in float32 are no reference: with f ~ 500 and eps = 1e-3 their
    rounding error is ~|f| * 2**-24 / eps ~ 0.03 per evaluation, and XLA's AVX2 and AVX-512
    code round differently. In float64 (eps = 1e-4) the rounding error is ~|f| * 2**-53 / eps
    ~ 1e-10 and the truncation error eps**2 * |f'''| / 6 ~ 1e-7: the reference is exact far
    below the float32 gradient's own error. That gradient is a sum of ~10^3 products rounded
    at 2**-24: within ~sqrt(n) * 2**-24 ~ 2e-6 of the largest component (worst case
    n * 2**-24 ~ 6e-5). A bound of 1e-3 of the largest component holds for any summation
    order and still fails for a wrong gradient (a dropped term moves it by percents).
    """
    params = NET.init(0)
    x = jnp.asarray(data(4)[0])
    h = NET.stem_apply(params["stem"], x)
    alpha = jnp.array([0.3, -0.2, 0.1, 0.5] + [0.0] * (len(NET.choices[0]) - 4))

    def f(block, inputs, a):
        return jnp.sum(NET.mixed_block(0, block, inputs, jax.nn.softmax(a)) ** 2)

    grad = np.asarray(jax.grad(f, argnums=2)(params["blocks"][0], h, alpha))
    with jax.enable_x64(True):

        def as64(v):
            return jnp.asarray(np.asarray(v), jnp.float64)

        block, inputs, a = jax.tree.map(as64, params["blocks"][0]), as64(h), as64(alpha)
        f64 = jax.jit(f)
        assert f64(block, inputs, a).dtype == jnp.float64
        eps = 1e-4
        numeric = np.array(
            [
                (f64(block, inputs, a.at[i].add(eps)) - f64(block, inputs, a.at[i].add(-eps))) / (2 * eps)
                for i in range(a.shape[0])
            ]
        )
    np.testing.assert_allclose(grad, numeric, rtol=0, atol=1e-3 * np.abs(numeric).max())


def test_gumbel_max_samples_follow_the_softmax_and_the_gate_is_one_with_a_gradient():
    alpha = jnp.array([1.0, 0.0, -1.0, 0.5])
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    indices = np.asarray(jax.vmap(lambda k: gumbel_gates([alpha], k, 1.0)[0][0])(keys))
    frequencies = np.bincount(indices, minlength=4) / len(indices)
    expected = np.asarray(jax.nn.softmax(alpha))
    # each frequency is binomial: standard error sqrt(p (1 - p) / n), 0.008 for p = 0.47 down to 0.004 for
    # p = 0.06 at n = 4000; 4 of them each (a false alarm with probability ~2.5e-4 over the four)
    stderr = np.sqrt(expected * (1 - expected) / len(indices))
    assert np.all(np.abs(frequencies - expected) <= 4 * stderr), (frequencies, expected)

    index, gates = gumbel_gates([alpha], jax.random.PRNGKey(2), 0.5)
    assert float(gates[0]) == pytest.approx(1.0)
    grad = jax.grad(lambda a: gumbel_gates([a], jax.random.PRNGKey(2), 0.5)[1][0])(alpha)
    assert np.abs(np.asarray(grad)).sum() > 0  # the straight-through path reaches alpha


def _path_loss(params, x, y, block_fn):
    logits = NET.forward(params, x, block_fn)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_the_path_runner_gives_the_gradients_of_the_whole_network_for_the_path_it_runs():
    params = NET.init(0)
    x, y = (jnp.asarray(v) for v in data(8))
    runner = PathRunner(NET, optax.adam(0.01))
    indices = [len(NET.choices[0]) - 1, 1]
    # jitted: op by op, each of the reference's few hundred operations compiled on its own (20-30 s)
    reference_loss, reference = jax.jit(
        jax.value_and_grad(
            lambda p, x, y: _path_loss(p, x, y, lambda b, ops, h: NET.op_fn(b, indices[b])(ops[indices[b]], h))
        )
    )(params, x, y)
    path = runner.gradients(params, [[i] for i in indices], [0, 0], x, y)
    assert path.loss == pytest.approx(float(reference_loss), rel=1e-5)
    for name in ("stem", "head", "classifier"):
        for ours, theirs in zip(jax.tree.leaves(path.params[name]), jax.tree.leaves(reference[name])):
            np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-6)
    for b, i in enumerate(indices):
        ours = path.params.get((b, i), {})
        for leaf_ours, leaf_theirs in zip(jax.tree.leaves(ours), jax.tree.leaves(reference["blocks"][b][i])):
            np.testing.assert_allclose(np.asarray(leaf_ours), np.asarray(leaf_theirs), rtol=1e-4, atol=1e-6)
    # only the path's ops got gradients, and an update leaves every other op as it was
    assert {k for k in path.params if isinstance(k, tuple)} == {
        (b, i) for b, i in enumerate(indices) if not NET.choices[b][i].skip
    }
    state = runner.init_state(params)
    updated, _ = runner.apply(params, state, path.params)
    assert all(
        np.array_equal(u, p)
        for u, p in zip(jax.tree.leaves(updated["blocks"][0][0]), jax.tree.leaves(params["blocks"][0][0]))
    )
    assert not np.array_equal(updated["blocks"][1][1]["dw"]["w"], params["blocks"][1][1]["dw"]["w"])


def test_two_path_gate_gradients_are_those_of_the_one_hot_relaxation():
    params = NET.init(1)
    x, y = (jnp.asarray(v) for v in data(8))
    runner = PathRunner(NET, optax.adam(0.01))
    pairs, actives = [[0, 2], [1, 0]], [1, 0]
    gates = [jax.nn.one_hot(pair[a], len(c)) for pair, a, c in zip(pairs, actives, NET.choices)]
    reference = jax.jit(
        jax.grad(  # jitted: one compile, not one per operation
            lambda g, p, x, y: _path_loss(p, x, y, lambda b, ops, h: NET.mixed_block(b, ops, h, g[b]))
        )
    )(gates, params, x, y)
    path = runner.gradients(params, pairs, actives, x, y)
    for b, pair in enumerate(pairs):
        np.testing.assert_allclose(path.gates[b], np.asarray(reference[b])[pair], rtol=1e-4, atol=1e-6)


def test_the_binary_gate_gradient_is_the_proxylessnas_formula():
    alpha_pair = jnp.array([0.4, -0.1])
    g = jnp.array([2.0, -1.0])
    p = np.asarray(jax.nn.softmax(alpha_pair))
    expected = [sum(g[j] * p[j] * ((i == j) - p[i]) for j in range(2)) for i in range(2)]
    np.testing.assert_allclose(np.asarray(pair_gradient(alpha_pair, g)), expected, rtol=1e-6)
    # for a loss linear in the gates it is the exact gradient of the expected loss
    exact = jax.grad(lambda a: jnp.dot(jax.nn.softmax(a), g))(alpha_pair)
    np.testing.assert_allclose(np.asarray(pair_gradient(alpha_pair, g)), np.asarray(exact), rtol=1e-6)


@pytest.mark.parametrize(
    "strategy,extra",
    [
        ("darts", {}),
        ("darts", {"order": "second"}),
        ("gdas", {}),
        ("proxyless", {}),
        ("proxyless", {"estimator": "reinforce"}),
        ("random", {"random_samples": 5}),
    ],
)
def test_a_tiny_search_runs_for_every_strategy(strategy, extra):
    x, y = data()
    net, latency = (DARTS_NET, DARTS_LATENCY) if strategy == "darts" else (NET, LATENCY)
    result = Search(net, latency, SearchConfig(strategy=strategy, epochs=1, batch_size=32, **extra)).run(
        x[:64], y[:64], x[64:], y[64:]
    )
    assert len(result.indices) == net.space.blocks == 2
    assert all(0 <= i < len(c) for i, c in zip(result.indices, net.choices))
    (row,) = result.history
    assert 0.0 <= row["val_accuracy"] <= 1.0 and row["expected_latency_s"] > 0
    assert all(abs(sum(p) - 1) < 1e-5 for p in row["probabilities"])
    if strategy != "random":  # the architecture parameters moved
        assert any(np.abs(a).sum() > 0 for a in result.alphas)
    assert set(STRATEGIES) == {"darts", "gdas", "proxyless", "random"}


def test_the_latency_term_pushes_the_architecture_to_faster_ops():
    x, y = data()
    heavy = Search(
        NET, LATENCY, SearchConfig(strategy="proxyless", epochs=3, batch_size=32, latency_weight=50.0, lr=0.0)
    ).run(x[:64], y[:64], x[64:], y[64:])
    first, last = heavy.history[0]["expected_latency_s"], heavy.history[-1]["expected_latency_s"]
    uniform = LATENCY.expected([jnp.ones(len(c)) / len(c) for c in NET.choices])
    assert last < first <= float(uniform) + 1e-12


def test_a_killed_search_resumes_from_its_last_epoch(tmp_path):
    x, y = data()
    config = SearchConfig(strategy="gdas", epochs=2, batch_size=32)
    whole = Search(NET, LATENCY, config).run(x[:64], y[:64], x[64:], y[64:])
    first = Search(NET, LATENCY, SearchConfig(strategy="gdas", epochs=1, batch_size=32)).run(
        x[:64], y[:64], x[64:], y[64:], state_dir=tmp_path
    )
    resumed = Search(NET, LATENCY, config).run(x[:64], y[:64], x[64:], y[64:], state_dir=tmp_path)
    assert len(first.history) == 1 and len(resumed.history) == 2
    assert resumed.history == whole.history
    np.testing.assert_allclose(resumed.alphas[0], whole.alphas[0], rtol=1e-6)


def _with_random_batch_norms(params, seed: int):
    """`params` with every BatchNorm's scale and shift drawn at random, so that loading them is tested."""
    rng = np.random.default_rng(seed)

    def visit(node):
        if isinstance(node, dict) and "g" in node:
            return {
                **node,
                "g": jnp.asarray(rng.uniform(0.5, 1.5, node["g"].shape), jnp.float32),
                "b": jnp.asarray(rng.normal(0.0, 0.3, node["b"].shape), jnp.float32),
            }
        if isinstance(node, dict):
            return {k: visit(v) for k, v in node.items()}
        if isinstance(node, list):
            return [visit(v) for v in node]
        return node

    return visit(params)


# jitted: op by op, every operation of the network compiles on its own (~10 s for a forward pass)
derived_forward = jax.jit(NET.derived_forward, static_argnums=2)


def test_the_derived_pytorch_module_computes_what_the_supernet_path_computes():
    params = _with_random_batch_norms(NET.init(3), 4)
    x = data(8)[0]
    for indices in ([0, 0], [len(NET.choices[0]) - 1, 1], [2, len(NET.choices[1]) - 1]):
        model = to_torch(NET, params, indices, x)
        with torch.no_grad():
            ours = model.train()(torch.from_numpy(x)).numpy()  # batch statistics, as the supernet
        theirs = np.asarray(derived_forward(params, jnp.asarray(x), tuple(indices)))
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_the_derived_module_is_recalibrated_so_that_eval_mode_normalises_like_the_supernet():
    params = _with_random_batch_norms(NET.init(5), 6)
    x = data(256)[0]
    model = to_torch(NET, params, [1, 2], x, batch_size=256)
    assert not model.training
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    theirs = np.asarray(derived_forward(params, jnp.asarray(x), (1, 2)))
    # running variances are unbiased (n / (n - 1)), the supernet's batch variance is not: with n >= 256 * 4 * 4
    # values per channel each of the 7 BatchNorms scales by ~1 - 1/(2n) = 1 - 1.2e-4, ~1e-3 in all (measured
    # 9.3e-4; float32 rounding adds ~1e-6); statistics left at their initial values are off by > 0.1 (below)
    np.testing.assert_allclose(ours, theirs, rtol=5e-3, atol=5e-3)
    untouched = NET.space.build(NET.architecture([1, 2])).eval()
    with torch.no_grad():
        assert np.max(np.abs(untouched(torch.from_numpy(x)).numpy() - theirs)) > 0.1


def test_every_candidate_normalises_its_output_so_the_shared_layers_see_one_scale():
    """Without BatchNorm the supernet's shared weights never learned (chance accuracy on
    digits): identity and expansion-6 candidates fed the next block outputs of unlike scale."""
    params = NET.init(0)
    h = NET.stem_apply(params["stem"], jnp.asarray(data(32)[0]) * 50.0)
    h = NET.op_fn(0, 0)(params["blocks"][0][0], h) * 20.0
    b = 1  # a block without a skip connection: its output is the projection's BatchNorm
    assert not any(choice.skip for choice in NET.choices[b])
    for i in range(len(NET.choices[b])):
        out = np.asarray(NET.op_fn(b, i)(params["blocks"][b][i], h))
        np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
        np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1.0, rtol=1e-2)


def test_the_shared_weights_learn_under_uniformly_sampled_paths():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = ((digits.images - 8.0) / 6.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int32)
    config = SearchConfig(strategy="random", epochs=10, batch_size=32, lr=0.03, random_samples=1)
    result = Search(NET, LATENCY, config).run(x[:600], y[:600], x[600:900], y[600:900])
    # without BatchNorm the supernet stayed at 0.10, chance (+- 0.017 on 300 samples); a path trained alone
    # reaches 0.74. Over 14 seeds (another CPU's rounding is another trajectory) 0.26..0.55, mean 0.40, sd
    # 0.07: 0.2 is chance + 6 standard errors and the mean - 2.7 sd
    assert result.history[-1]["val_accuracy"] > 0.2


def test_warmup_epochs_train_the_weights_and_leave_the_architecture_alone():
    x, y = data()
    for strategy in ("proxyless", "darts"):
        net, latency = (DARTS_NET, DARTS_LATENCY) if strategy == "darts" else (NET, LATENCY)
        start = net.init(0)
        result = Search(net, latency, SearchConfig(strategy=strategy, epochs=1, warmup=1, batch_size=32)).run(
            x[:64], y[:64], x[64:], y[64:]
        )
        assert all(np.all(np.asarray(a) == 0.0) for a in result.alphas), strategy
        assert not np.allclose(np.asarray(result.params["stem"]["w"]), np.asarray(start["stem"]["w"])), strategy


def test_the_pass_fills_strategy_dependent_learning_rate_and_warmup_and_refuses_an_all_warmup_search():
    from adl.ir.passes import PassError
    from adl.passes.nas import NasPass, search_config

    options = dict(NasPass().config)
    proxyless = search_config({**options, "strategy": "proxyless", "epochs": 15}, None, 0)
    darts = search_config({**options, "strategy": "darts", "epochs": 15}, None, 0)
    assert (proxyless.lr, proxyless.warmup) == (0.03, 5)
    assert (darts.lr, darts.warmup) == (0.01, 0)
    chosen = search_config({**options, "epochs": 15, "lr": 0.002, "warmup": 2}, None, 0)
    assert (chosen.lr, chosen.warmup) == (0.002, 2)
    with pytest.raises(PassError, match="warmup = 15 leaves none of the 15 epochs"):
        search_config({**options, "epochs": 15, "warmup": 15}, None, 0)
