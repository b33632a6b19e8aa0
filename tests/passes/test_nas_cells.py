"""The DARTS cell space: the derivation rule, the PyTorch round trip, pricing, and a tiny search."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp
import torch

from adl.hwmodels.roofline import RooflineModel
from adl.ir.layers import describe_model
from adl.ir.spec import TargetSpec
from adl.passes.nas.cell_modules import build, to_torch
from adl.passes.nas.cells import DROPPED, CellSpace, CellSupernet, _op_apply
from adl.passes.nas.pricing import price_candidates
from adl.passes.nas.search import Search, SearchConfig

SPACE = CellSpace((1, 8, 8), 10, nodes=3, ops=("sep3", "dil3", "max3", "avg3", "skip", "none"), cells=3, channels=4)
NET = CellSupernet(SPACE)
E = len(SPACE.edges)  # 2 + 3 + 4 = 9


def test_the_layout_reduces_at_a_third_and_two_thirds_and_doubles_the_channels():
    layout = SPACE.layout()
    assert [c["reduction"] for c in layout] == [False, True, True]
    assert [c["c"] for c in layout] == [4, 8, 16]
    assert [c["reduced_prev"] for c in layout] == [False, False, True]
    assert [c["hw"] for c in layout] == [(8, 8), (8, 8), (4, 4)]


def test_the_derived_cell_keeps_two_inputs_per_node_with_their_strongest_real_op():
    rng = np.random.default_rng(0)
    alphas = [rng.standard_normal(len(SPACE.ops)) for _ in range(2 * E)]
    alphas[0] = np.array([0, 0, 0, 0, 0, 9.0])  # node 0, input 0: `none` dominates -- still kept, with its best op
    indices = NET.derive(alphas)
    for part in (indices[:E], indices[E:]):
        start = 0
        for node in range(SPACE.nodes):
            chosen = part[start : start + node + 2]
            assert sum(i != DROPPED for i in chosen) == 2
            assert all(SPACE.ops[i] != "none" for i in chosen if i != DROPPED)
            start += node + 2
    # node 2 (edges 5..8) keeps the two edges whose best non-none op weighs most
    probs = [np.exp(a) / np.exp(a).sum() for a in alphas[5:9]]
    strength = [max(p[o] for o in range(len(SPACE.ops)) if SPACE.ops[o] != "none") for p in probs]
    assert {e for e in range(4) if indices[5 + e] != DROPPED} == set(np.argsort(strength)[-2:])
    assert str(NET.architecture(indices)).startswith("normal[n2=")


def test_the_derived_pytorch_network_computes_what_the_supernet_computes():
    params = NET.init(3)
    x = np.random.default_rng(1).standard_normal((4, 1, 8, 8)).astype(np.float32)
    rng = np.random.default_rng(2)
    for _ in range(2):
        indices = NET.derive([rng.standard_normal(len(SPACE.ops)) for _ in range(2 * E)])
        model = to_torch(NET, params, indices, x)
        with torch.no_grad():
            ours = model.train()(torch.from_numpy(x)).numpy()  # batch statistics, as the supernet
        theirs = np.asarray(NET.mixed_forward(params, jnp.asarray(x), NET.derived_weights(indices)))
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    # every op, including skip's factorized reduce on the reduction edges, once
    every = [o % len(SPACE.ops) for o in range(2 * E)]
    every = [i if SPACE.ops[i] != "none" else 0 for i in every]
    with torch.no_grad():
        ours = build(SPACE, params, every).train()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(
        ours, np.asarray(NET.mixed_forward(params, jnp.asarray(x), NET.derived_weights(every))), rtol=1e-4, atol=1e-4
    )


def test_every_convolution_and_pooling_is_normalised_by_its_batch():
    """DARTS's ops: ReLU-conv-BN and pooling-BN, the BatchNorms affine-free in the search, so the
    candidates of an edge reach the mixture at one scale: each conv/pool op's output has per
    channel mean 0 and variance 1 over the batch, whatever the input's scale."""
    edge = NET.init(0)["cells"][0]["edges"][0]  # a normal cell's edge: stride 1
    h = jnp.asarray(np.random.default_rng(4).standard_normal((8, 6, 6, 4)) * 7.0 + 3.0, jnp.float32)
    for o, op in enumerate(SPACE.ops):
        if op in ("skip", "none"):
            continue
        y = np.asarray(_op_apply(op, edge[o], h, 1))
        np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-4, err_msg=op)
        np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1.0, rtol=1e-3, err_msg=op)


def test_the_derived_network_is_recalibrated_so_that_eval_mode_normalises_like_the_supernet():
    params = NET.init(5)
    x = np.random.default_rng(6).standard_normal((256, 1, 8, 8)).astype(np.float32)
    indices = NET.derive([np.random.default_rng(7).standard_normal(len(SPACE.ops)) for _ in range(2 * E)])
    model = to_torch(NET, params, indices, x, batch_size=256)
    assert not model.training
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    theirs = np.asarray(NET.mixed_forward(params, jnp.asarray(x), NET.derived_weights(indices)))
    # running variances are unbiased (n / (n - 1)), the supernet's batch variances are not: with n >= 256 * 2 * 2
    # values per channel each BatchNorm scales by ~1 - 1/(2n) >= 1 - 5e-4; a few tens of them in a row: ~1e-2
    np.testing.assert_allclose(ours, theirs, rtol=2e-2, atol=2e-2)
    untouched = build(SPACE, params, indices).eval()  # running statistics at their initial values
    with torch.no_grad():
        assert np.max(np.abs(untouched(torch.from_numpy(x)).numpy() - theirs)) > 0.1


def test_pricing_gives_every_edge_op_a_latency_and_sums_to_the_derived_network():
    target = TargetSpec(name="host", cores=2)
    model = RooflineModel(gflops=50.0, bandwidth=10.0, overhead=0.0)
    table = price_candidates(NET, model, target)
    assert len(table.per_op) == 2 * E and all(len(row) == len(SPACE.ops) for row in table.per_op)
    none = SPACE.ops.index("none")
    assert all(row[none] == 0.0 for row in table.per_op)
    sep = SPACE.ops.index("sep3")
    assert all(row[sep] > row[SPACE.ops.index("max3")] for row in table.per_op)
    indices = NET.derive([np.zeros(len(SPACE.ops)) for _ in range(2 * E)])
    whole = model.estimate(describe_model(build(SPACE, None, indices), (1, 1, 8, 8)), target).latency_s
    assert table.of(indices) == pytest.approx(whole, rel=0.15)


def test_a_tiny_darts_search_over_cells_derives_a_genotype_and_single_path_strategies_refuse_cells():
    # XLA compiles darts' whole-supernet steps, and their time grows with the ops in the graph: on
    # SPACE (9 edges x 6 ops per cell) the two steps took ~60 s to compile on 2 cores. This space
    # keeps a convolution (dilated: depthwise + pointwise), a pooling, skip (a factorized reduce on
    # the reduction edges), none, both cell types, and a node with an edge to drop; ~1/5 of the ops.
    space = CellSpace((1, 8, 8), 10, nodes=2, ops=("dil3", "max3", "skip", "none"), cells=3, channels=4)
    net, edges = CellSupernet(space), len(space.edges)  # 2 + 3 = 5
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((96, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 96).astype(np.int32)
    table = price_candidates(net, RooflineModel(gflops=50.0, bandwidth=10.0, overhead=0.0), TargetSpec(name="host"))
    result = Search(net, table, SearchConfig(strategy="darts", epochs=1, batch_size=32)).run(
        x[:64], y[:64], x[64:], y[64:]
    )
    assert len(result.indices) == 2 * edges and sum(i != DROPPED for i in result.indices) == 2 * 2 * space.nodes
    assert all(space.ops[i] != "none" for i in result.indices if i != DROPPED)
    assert any(np.abs(a).sum() > 0 for a in result.alphas)
    assert 0.0 <= result.history[0]["val_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="searched by darts"):
        Search(net, table, SearchConfig(strategy="gdas"))


def test_unknown_ops_are_refused():
    with pytest.raises(ValueError, match="conv9"):
        CellSpace((1, 8, 8), 10, ops=("sep3", "conv9"))
