"""The learned optimizer: preprocessing, the optax rule, the torch adapter, weights, meta-training, the pipeline."""

from __future__ import annotations

import contextlib
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import adl
from adl.driver.run import compile_spec
from adl.dsl.errors import AdlError
from adl.ir.passes import PassError
from adl.ir.pipeline import Pipeline
from adl.ir.progress import SilentProgress
from adl.ir.spec import CallValue
from adl.passes.train.l2o import SHIPPED, L2OWeightsError, load_weights
from adl.passes.train.l2o.config import MetaConfig
from adl.passes.train.l2o.rule import l2o, preprocess
from adl.passes.train.l2o.torch_optim import L2O
from adl.passes.train.l2o.torch_optim import preprocess as torch_preprocess
from adl.passes.train.l2o.weights import LOG_MAGNITUDE_RANGE, L2OWeights, init_weights, save_weights
from adl.passes.train.loop import make_optimizer, train_model

P = 10.0
EDGE = np.array([0.0, -0.0, 1e-30, -1e-6, 3e-5, 1.0, -2.5, 1e30, -1e38, np.inf, -np.inf, np.nan], np.float32)


def test_preprocessing_follows_the_paper_with_cutoff_p():
    x = np.asarray(preprocess(jnp.asarray(EDGE), P))
    assert x.shape == (len(EDGE), 2) and np.all(np.isfinite(x))
    np.testing.assert_allclose(x[0], [-1.0, 0.0])  # zero: below the cut-off, e^p * 0
    np.testing.assert_allclose(x[3], [-1.0, -1e-6 * math.exp(P)], rtol=1e-5)  # small: (-1, e^p g)
    np.testing.assert_allclose(x[5], [0.0, 1.0], atol=1e-7)  # log 1 = 0
    np.testing.assert_allclose(x[6], [math.log(2.5) / P, -1.0], rtol=1e-6)
    np.testing.assert_allclose(x[7], [math.log(1e30) / P, 1.0], rtol=1e-6)  # huge: log-magnitude, no overflow
    assert x[9, 1] == 1.0 and x[10, 1] == -1.0 and x[9, 0] == pytest.approx(math.log(np.finfo(np.float32).max) / P)
    np.testing.assert_array_equal(x[11], x[0])  # NaN reads as a zero gradient


def test_torch_preprocessing_matches_jax_on_edge_cases():
    # two libraries' float32 log and exp(p): within 2 ulps (2.4e-7 relative); rtol 1e-6 is ~8 ulps
    np.testing.assert_allclose(
        torch_preprocess(torch.from_numpy(EDGE), P).numpy(),
        np.asarray(preprocess(jnp.asarray(EDGE), P)),
        rtol=1e-6,
        atol=1e-7,
    )


def test_zero_huge_and_nan_gradients_give_finite_updates_and_states():
    tx = l2o()
    params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(len(EDGE))}
    state = tx.init(params)
    for _ in range(3):
        grads = {"w": jnp.full((3, 4), jnp.nan).at[0].set(jnp.inf), "b": jnp.asarray(EDGE)}
        updates, state = jax.jit(tx.update)(grads, state)
        for leaf in jax.tree.leaves((updates, state)):
            assert np.all(np.isfinite(np.asarray(leaf)))
    opt = L2O([torch.nn.Parameter(torch.zeros(len(EDGE)))])
    opt.param_groups[0]["params"][0].grad = torch.from_numpy(EDGE.copy())
    opt.step()
    assert torch.isfinite(opt.param_groups[0]["params"][0]).all()


def test_state_shapes_follow_the_parameter_leaves():
    weights = load_weights()
    params = {"conv": jnp.zeros((8, 1, 3, 3)), "bias": jnp.zeros(8), "scalar": jnp.zeros(())}
    state = l2o(weights).init(params)
    for part in (state.hidden, state.cell):
        assert jax.tree.map(jnp.shape, part) == {
            "conv": (2, 72, weights.hidden),
            "bias": (2, 8, weights.hidden),
            "scalar": (2, 1, weights.hidden),
        }
    updates, _ = l2o(weights).update(jax.tree.map(jnp.ones_like, params), state)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)


def test_updates_are_deterministic_and_the_same_under_jit():
    tx = l2o()
    params = {"w": jax.random.normal(jax.random.key(0), (50,))}
    grads = {"w": jax.random.normal(jax.random.key(1), (50,))}
    a, state_a = tx.update(grads, tx.init(params))
    b, state_b = tx.update(grads, tx.init(params))
    c, _ = jax.jit(tx.update)(grads, tx.init(params))
    np.testing.assert_array_equal(a["w"], b["w"])
    # jit fuses the LSTM's ops differently (FMA contraction): a few ulps of the largest update (0.1, ulp 7e-9)
    np.testing.assert_allclose(a["w"], c["w"], atol=1e-7)
    again, _ = tx.update(grads, state_a)
    assert not np.allclose(again["w"], a["w"])  # the LSTM's state carries over: a second step differs


def test_the_update_is_direction_times_exp_of_the_log_magnitude_output():
    params, grads = {"w": jnp.zeros(20)}, {"w": jnp.linspace(-1, 1, 20)}

    def update(log_magnitude_bias):
        arrays = dict(init_weights(0).arrays)
        arrays["out_w"] = arrays["out_w"].copy()
        arrays["out_w"][:, 1] = 0.0  # s = the bias alone
        arrays["out_b"] = np.array([0.05, log_magnitude_bias], np.float32)
        weights = L2OWeights(arrays)
        tx = l2o(weights)
        torch_param = torch.nn.Parameter(torch.zeros(20))
        torch_param.grad = torch.from_numpy(np.asarray(grads["w"]).copy())
        L2O([torch_param], weights).step()
        return np.asarray(tx.update(grads, tx.init(params))[0]["w"]), torch_param.detach().numpy()

    base, base_torch = update(0.0)
    assert np.abs(base).max() > 0
    np.testing.assert_allclose(update(math.log(4.0))[0], 4.0 * base, rtol=1e-5)
    np.testing.assert_allclose(update(-9.0)[0], math.exp(-9.0) * base, rtol=1e-5)  # steps orders smaller
    high, high_torch = update(1e4)  # clipped, not overflowing
    hi = LOG_MAGNITUDE_RANGE[1]
    np.testing.assert_allclose(high, math.exp(hi) * base, rtol=1e-5)
    np.testing.assert_allclose(high_torch, high, rtol=1e-5)
    np.testing.assert_allclose(base_torch, base, rtol=1e-5, atol=1e-9)


def test_scale_multiplies_the_update():
    params, grads = {"w": jnp.zeros(20)}, {"w": jnp.linspace(-1, 1, 20)}
    one, _ = l2o(scale=1.0).update(grads, l2o().init(params))
    half, _ = l2o(scale=0.5).update(grads, l2o().init(params))
    np.testing.assert_allclose(half["w"], 0.5 * one["w"], rtol=1e-6)
    assert np.abs(one["w"]).max() > 0


@pytest.mark.parametrize("scale", [0.5])
def test_optax_and_torch_produce_the_same_updates(scale):
    shapes = {"a": (16, 8), "b": (8,), "c": (4, 3, 3, 3)}
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    tx = l2o(scale=scale)
    jax_params = {k: jnp.asarray(v) for k, v in params.items()}
    state = tx.init(jax_params)
    update = jax.jit(tx.update)
    torch_params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    opt = L2O(list(torch_params.values()), lr=scale)
    for step in range(5):
        grads = {
            k: (rng.normal(size=s) * 10.0 ** rng.integers(-8, 3, size=s)).astype(np.float32) for k, s in shapes.items()
        }
        grads["b"][:3] = [0.0, np.nan, 1e30]
        updates, state = update({k: jnp.asarray(v) for k, v in grads.items()}, state)
        jax_params = {k: jax_params[k] + updates[k] for k in shapes}
        for k, param in torch_params.items():
            param.grad = torch.from_numpy(grads[k].copy())
        opt.step()
        # Two libraries evaluate the LSTM (SLEEF vs XLA's sigmoid/tanh/exp, their own matmul orders): each
        # step's update (|u| <= 0.6) differs by a few float32 ulps, ~1e-7, and adding it to a parameter
        # (|p| <= 3.3, ulp 2.4e-7) may round the two sums one ulp apart; the hidden state carries both into
        # later steps, so the bound grows by 1e-6 a step (measured 1.2e-7 after step 1, 4.8e-7 after 5).
        for k in shapes:
            np.testing.assert_allclose(
                torch_params[k].detach().numpy(),
                np.asarray(jax_params[k]),
                rtol=0,
                atol=1e-6 * (step + 1),
                err_msg=f"step {step}, leaf {k}",
            )
            assert np.abs(np.asarray(updates[k])).max() > 1e-4  # the comparison is not vacuous


def test_torch_state_dict_round_trip_continues_bit_identically():
    def make():
        torch.manual_seed(0)
        return torch.nn.Linear(6, 3)

    def train(model, opt, steps, start):
        for i in range(start, start + steps):
            gen = torch.Generator().manual_seed(i)
            loss = model(torch.randn(5, 6, generator=gen)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    straight = make()
    opt = L2O(straight.parameters())
    train(straight, opt, 6, 0)
    first = make()
    opt1 = L2O(first.parameters())
    train(first, opt1, 3, 0)
    saved_model, saved_opt = first.state_dict(), opt1.state_dict()
    resumed = make()
    resumed.load_state_dict(saved_model)
    opt2 = L2O(resumed.parameters())
    opt2.load_state_dict(saved_opt)
    train(resumed, opt2, 3, 3)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


# -- weights files --------------------------------------------------------------------------------


def test_the_shipped_weights_load():
    weights = load_weights()
    assert weights.hidden == 20 and weights.p == 10.0 and weights.output_scale == 0.1
    assert load_weights(SHIPPED).arrays["l0_wx"].shape == (2, 80)


def test_saved_weights_load_back_equal(tmp_path):
    weights = init_weights(3, hidden=8)
    save_weights(weights, tmp_path / "w.npz")
    back = load_weights(tmp_path / "w.npz")
    assert back.hidden == 8 and back.p == weights.p
    for name, array in weights.arrays.items():
        np.testing.assert_array_equal(back.arrays[name], array)


def test_bad_weights_files_are_errors_naming_the_path(tmp_path):
    with pytest.raises(L2OWeightsError, match=r"l2o weights file '.*missing\.npz' does not exist"):
        load_weights(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(L2OWeightsError, match=r"junk\.npz' is not a valid \.npz"):
        load_weights(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(L2OWeightsError, match=r"other\.npz' lacks l0_wx"):
        load_weights(tmp_path / "other.npz")
    arrays = dict(init_weights(0).arrays)
    arrays["l1_wh"] = np.zeros((3, 3), np.float32)
    np.savez(tmp_path / "shape.npz", format_version=2, p=10.0, output_scale=0.1, **arrays)
    with pytest.raises(L2OWeightsError, match=r"shape\.npz': array 'l1_wh' has shape \(3, 3\), expected \(20, 80\)"):
        load_weights(tmp_path / "shape.npz")
    old = dict(init_weights(0).arrays, out_w=np.zeros((20, 1), np.float32), out_b=np.zeros(1, np.float32))
    np.savez(tmp_path / "v1.npz", format_version=1, p=10.0, output_scale=0.1, **old)
    with pytest.raises(
        L2OWeightsError,
        match=r"v1\.npz' has format version 1, this adl reads version 2; "
        r"meta-train new weights",
    ):
        load_weights(tmp_path / "v1.npz")
    assert issubclass(L2OWeightsError, PassError)


# -- meta-training ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_short_meta_training_lowers_the_meta_loss_and_resumes_bit_identically(tmp_path):
    from adl.passes.train.l2o.meta_train import _fresh, make_segment, meta_train
    from adl.passes.train.l2o.tasks import make_task

    cfg = MetaConfig(
        seed=1,
        iterations=30,
        unroll=10,
        curriculum=(20,),
        instances=4,
        task_instances=(),
        tasks=("quadratic",),
        lr=0.01,
        checkpoint_every=10,
        validate_every=8,
    )
    result = meta_train(cfg)
    task = make_task("quadratic")
    segment = make_segment(task, cfg.unroll, cfg.p, cfg.output_scale)
    # held-out instances (another key) and no loss scaling: mean log-loss over 10 steps, before and after
    flat, state, instance, _ = _fresh(task, jax.random.key(12345), MetaConfig(instances=16, task_instances=()))
    keys = jax.random.split(jax.random.key(0), 16)
    before = float(segment(init_weights(1).as_jax(), flat, state, instance, jnp.ones(16), keys)[0])
    after = float(segment(result.weights.as_jax(), flat, state, instance, jnp.ones(16), keys)[0])
    assert after < before - 0.5, (before, after)
    assert len(result.curves["meta_loss"]["quadratic"]) == 30

    class Interrupt(Exception):
        pass

    class StopAt:  # a progress bar that cuts the run off after 25 iterations
        @contextlib.contextmanager
        def task(self, description, total):
            class Bar:
                done = 0

                def advance(self, steps=1, **fields):
                    Bar.done += steps
                    if Bar.done >= 15:
                        raise Interrupt

            yield Bar()

    ckpt = tmp_path / "meta.ckpt"
    with pytest.raises(Interrupt):
        meta_train(cfg, checkpoint=ckpt, progress=StopAt())
    assert ckpt.exists()
    logs: list[str] = []
    resumed = meta_train(cfg, checkpoint=ckpt, log=logs.append)
    assert logs and "resuming at iteration 10" in logs[0]
    for name, array in result.weights.arrays.items():
        np.testing.assert_array_equal(resumed.weights.arrays[name], array, err_msg=name)


def test_meta_train_command_writes_weights_and_curves(tmp_path):
    from adl.cli import main

    out = tmp_path / "w.npz"
    assert (
        main(
            [
                "l2o",
                "meta-train",
                "--out",
                str(out),
                "--tasks",
                "quadratic",
                "--iterations",
                "3",
                "--unroll",
                "10",
                "--curriculum",
                "20",
                "--instances",
                "4",
                "-q",
            ]
        )
        == 0
    )
    assert load_weights(out).hidden == 20
    curves = json.loads(out.with_suffix(".json").read_text())
    assert curves["config"]["iterations"] == 3 and len(curves["meta_loss"]["quadratic"]) == 3
    assert not out.with_name("w.npz.ckpt").exists()
    assert main(["l2o", "meta-train", "--out", str(out), "--unroll", "7", "--curriculum", "10", "-q"]) == 2
    with pytest.raises(SystemExit):
        main(["l2o", "meta-train", "--out", str(out), "--task-instances", "quadratic=0", "-q"])


def test_task_instances_override_the_default_count():
    cfg = MetaConfig(instances=3, task_instances=(("quadratic", 8),))
    assert cfg.instances_of("quadratic") == 8 and cfg.instances_of("mlp") == 3


def test_the_meta_loss_is_the_log_of_the_mean_loss_over_instances():
    from adl.passes.train.l2o.meta_train import _fresh, make_segment
    from adl.passes.train.l2o.tasks import make_task

    task, cfg = make_task("quadratic"), MetaConfig(instances=6, task_instances=())
    flat, state, instance, scale = _fresh(task, jax.random.key(3), cfg)
    segment = make_segment(task, 5, cfg.p, cfg.output_scale)
    meta, _, (_, _, losses) = segment(
        init_weights(0).as_jax(), flat, state, instance, scale, jax.random.split(jax.random.key(4), 6)
    )
    losses = np.asarray(losses, np.float64)  # (instances, steps), of very different sizes
    assert losses.max() / losses.min() > 3
    assert float(meta) == pytest.approx(np.mean(np.log(losses.mean(axis=0) + 1e-8)), rel=1e-5)
    assert float(meta) != pytest.approx(np.mean(np.log(losses + 1e-8)), rel=1e-2)


@pytest.mark.slow
def test_meta_training_returns_the_best_validated_weights():
    from adl.passes.train.l2o.meta_train import make_validation, meta_train
    from adl.passes.train.l2o.tasks import make_task

    cfg = MetaConfig(
        seed=2,
        iterations=40,
        unroll=10,
        curriculum=(20,),
        instances=4,
        task_instances=(),
        tasks=("quadratic",),
        lr=0.03,
        validate_every=10,
        validation_instances=8,
    )
    result = meta_train(cfg)
    rows = result.curves["validation"]
    assert [row["iteration"] for row in rows] == [10, 20, 30, 40]
    best = min(rows, key=lambda row: row["value"])
    assert result.curves["chosen_iteration"] == best["iteration"]
    validate = make_validation(make_task("quadratic"), cfg.horizon, 8, cfg.seed, cfg.p, cfg.output_scale)
    assert math.log(float(validate(result.weights.as_jax())) + 1e-8) == pytest.approx(best["value"], rel=1e-5)
    # fixed problems: the same weights validate to the same value; different ones do not
    assert float(validate(result.weights.as_jax())) == float(validate(result.weights.as_jax()))
    assert float(validate(init_weights(2).as_jax())) != float(validate(result.weights.as_jax()))


# -- in the pipeline ----------------------------------------------------------------------------

SPEC = """spec d
task classify {{ classes = 10 }}
data digits
target host {{ cost = roofline(gflops = 1, bandwidth = 1, overhead = 1 ms) }}
model mlp(hidden = [16])
constraints {{ accuracy >= 50 % }}
pipeline {{ train {{ epochs = 3  optimizer = {optimizer} }} }}
"""


def test_l2o_in_a_spec_bare_and_called():
    spec = adl.check(SPEC.format(optimizer="l2o"))
    optimizer = spec.pipeline[0].as_dict()["optimizer"]
    assert optimizer == CallValue("l2o", (("weights", ""), ("scale", 1.0)))
    spec = adl.check(SPEC.format(optimizer='l2o(weights = "my.npz", scale = 0.5)'))
    assert spec.pipeline[0].as_dict()["optimizer"] == CallValue("l2o", (("weights", "my.npz"), ("scale", 0.5)))
    text = 'train{optimizer=l2o(weights="my dir/w.npz",scale=0.5)}'
    assert str(Pipeline.parse(str(Pipeline.parse(text)))) == text
    assert str(Pipeline.parse("train{optimizer=l2o}")) == 'train{optimizer=l2o(weights="",scale=1.0)}'
    assert isinstance(make_optimizer([torch.nn.Parameter(torch.zeros(2))], optimizer), L2O)


def test_a_negative_scale_is_a_spec_error():
    with pytest.raises(AdlError, match="'scale' must be at least 0"):
        adl.check(SPEC.format(optimizer="l2o(scale = -1)"))


def test_compile_trains_with_l2o(tmp_path):
    result = compile_spec(adl.check(SPEC.format(optimizer="l2o")), out_dir=tmp_path / "out")
    history = result.module.metrics["train_history"]
    # A run that rounds differently follows another trajectory. Over 15 seeds these 3 epochs ended at losses
    # 0.53..1.03 and test accuracies 0.63..0.91 (mean 0.84, sd 0.07), and the first epoch's mean loss
    # ranged 1.45..2.85 (an L2O start can overshoot): the loss falls below its first epoch's and below
    # ln 10 = 2.30 (uniform guessing), and the accuracy stays far above chance (0.10 +- 0.016 on 359 samples)
    assert history[-1]["loss"] < min(history[0]["loss"], math.log(10))
    assert result.module.metrics["torch_accuracy"] > 0.5
    record = result.module.metrics["l2o_weights"]  # the manifest says which learned optimizer trained it
    assert record["shipped"] and len(record["sha256"]) == 64 and record["file"].endswith("weights.npz")


def test_a_missing_weights_file_fails_the_pass_naming_the_path(tmp_path):
    spec = adl.check(SPEC.format(optimizer=f'l2o(weights = "{tmp_path}/nope.npz")'))
    with pytest.raises(PassError, match=r"while running 'train': l2o weights file '.*nope\.npz' does not exist"):
        compile_spec(spec, out_dir=tmp_path / "out")


def test_training_with_l2o_resumes_bit_identically_after_an_interruption(tmp_path):
    from adl.data import load_dataset
    from adl.driver.run import initial_module

    dataset = load_dataset("digits", split=0.8, seed=0)
    spec = adl.check(SPEC.format(optimizer="l2o"))
    config = {
        "epochs": 3,
        "batch_size": 64,
        "optimizer": CallValue("l2o", (("weights", ""), ("scale", 1.0))),
        "schedule": "cosine",
        "label_smoothing": 0.0,
    }

    def model():
        return initial_module(spec, dataset, seed=0).model

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    straight = train_model(
        model(), dataset, config, seed=0, state_dir=tmp_path / "a", progress=SilentProgress(), log=lambda m: None
    )

    class Interrupt(Exception):
        pass

    class StopAfterFirstEpoch:
        @contextlib.contextmanager
        def task(self, description, total):
            class Bar:
                def advance(self, steps=1, **fields):
                    if steps:
                        raise Interrupt

            yield Bar()

    with pytest.raises(Interrupt):
        train_model(
            model(),
            dataset,
            config,
            seed=0,
            state_dir=tmp_path / "b",
            progress=StopAfterFirstEpoch(),
            log=lambda m: None,
        )
    logs: list[str] = []
    resumed = train_model(
        model(), dataset, config, seed=0, state_dir=tmp_path / "b", progress=SilentProgress(), log=logs.append
    )
    assert logs == ["train: resuming after epoch 1 of 3"]
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert straight.history == resumed.history
