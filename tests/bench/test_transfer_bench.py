"""bench/transfer.py: its goals can miss, the target split is stratified and disjoint and its draws
repeat for a (seed, size), every size gets about the same number of steps, and the new head is the
only thing that differs from the source.

Hand-written result rows and an untrained network: no training.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transfer  # bench/transfer.py (tests/bench/conftest.py puts bench/ on the path)

from adl.models import build_model


def runs(accuracy: dict[str, dict[int, list[float]]]) -> dict:
    """{method: {size: rows}} as `compare` writes them, from test accuracies (fractions) per seed."""
    return {
        method: {
            str(n): [{"seed": s, "test_accuracy": a, "seconds": 2.0} for s, a in enumerate(values)]
            for n, values in sizes.items()
        }
        for method, sizes in accuracy.items()
    }


def test_goals_are_met_and_missed_by_the_figures():
    good = runs(
        {
            "finetune": {10: [0.70, 0.72, 0.71], 30: [0.85, 0.86, 0.84], 100: [0.95, 0.95, 0.96]},
            "l2sp": {10: [0.72, 0.73, 0.72], 30: [0.86, 0.86, 0.85], 100: [0.96, 0.95, 0.96]},
            "delta": {10: [0.75, 0.74, 0.73], 30: [0.86, 0.87, 0.85], 100: [0.94, 0.95, 0.95]},
        }
    )
    met = transfer.goals(transfer.summarize(good))
    assert set(met) == {f"delta_vs_{r}_{n}" for r in ("finetune", "l2sp") for n in (10, 30)}
    assert all(g["met"] and g["target"] == 0.0 for g in met.values())
    assert met["delta_vs_finetune_10"]["value"] == pytest.approx(3.0)  # points: (5 + 2 + 2) / 3

    bad = runs(
        {
            "finetune": {10: [0.70, 0.72, 0.71], 30: [0.85, 0.86, 0.84]},
            "l2sp": {10: [0.76, 0.75, 0.74], 30: [0.86, 0.86, 0.85]},
            "delta": {10: [0.75, 0.74, 0.73], 30: [0.84, 0.85, 0.85]},
        }
    )
    missed = transfer.goals(transfer.summarize(bad))
    assert missed["delta_vs_finetune_10"]["met"] and not missed["delta_vs_l2sp_10"]["met"]
    assert not missed["delta_vs_finetune_30"]["met"] and not missed["delta_vs_l2sp_30"]["met"]
    assert missed["delta_vs_l2sp_10"]["value"] == pytest.approx(-1.0)


def test_the_summary_pairs_seeds_and_reports_standard_errors():
    summary = transfer.summarize(
        runs({"finetune": {10: [0.70, 0.80]}, "l2sp": {10: [0.70, 0.70]}, "delta": {10: [0.75, 0.80]}})
    )
    row = summary["accuracy_percent"]["10"]
    assert row["delta_minus_finetune"]["per_seed"] == pytest.approx([5.0, 0.0])
    assert row["delta_minus_l2sp"]["per_seed"] == pytest.approx([5.0, 10.0])
    assert row["finetune"]["mean"] == pytest.approx(75.0)
    assert row["finetune"]["se"] == pytest.approx(row["finetune"]["sd"] / math.sqrt(2))
    assert summary["seconds"] == {"finetune": 4.0, "l2sp": 4.0, "delta": 4.0}
    quick = transfer.goals(summary)  # a run without size 30 has no goal there
    assert set(quick) == {"delta_vs_finetune_10", "delta_vs_l2sp_10"}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return transfer.digits_28()


def test_the_target_images_are_28x28_in_fashion_mnists_range(digits):
    x, y = digits
    assert x.shape == (1797, 1, 28, 28) and x.dtype == np.float32 and len(y) == 1797
    assert x.min() >= 0.0 and x.max() <= 255.0 + 1e-3 and x.max() > 200.0


def test_the_target_split_is_stratified_and_disjoint(digits):
    _, y = digits
    test, pool = transfer.split_test_pool(y)
    assert np.bincount(y[test], minlength=10).tolist() == [transfer.TEST_PER_CLASS] * 10
    assert len(np.intersect1d(test, pool)) == 0 and len(test) + len(pool) == len(y)
    for n in transfer.SIZES:
        draw = transfer.training_draw(y, pool, n, seed=0)
        assert np.bincount(y[draw], minlength=10).tolist() == [n] * 10
        assert len(np.unique(draw)) == len(draw) and np.isin(draw, pool).all()
    fit, val = transfer.tuning_split(y, pool)
    assert np.bincount(y[fit], minlength=10).tolist() == [transfer.TUNE_PER_CLASS] * 10
    assert np.bincount(y[val], minlength=10).tolist() == [transfer.VAL_PER_CLASS] * 10
    assert len(np.intersect1d(fit, val)) == 0 and np.isin(fit, pool).all() and np.isin(val, pool).all()


def test_draws_are_deterministic_per_seed_and_size(digits):
    _, y = digits
    again = transfer.split_test_pool(y)
    test, pool = transfer.split_test_pool(y)
    assert np.array_equal(test, again[0]) and np.array_equal(pool, again[1])
    first = transfer.training_draw(y, pool, 10, seed=3)
    assert np.array_equal(first, transfer.training_draw(y, pool, 10, seed=3))
    assert not np.array_equal(np.sort(first), np.sort(transfer.training_draw(y, pool, 10, seed=4)))
    assert not np.array_equal(np.sort(first), np.sort(transfer.training_draw(y, pool, 30, seed=3)[:100]))
    fit, val = transfer.tuning_split(y, pool)
    assert np.array_equal(fit, transfer.tuning_split(y, pool)[0])


def test_the_epochs_rule_gives_about_300_steps_at_every_size():
    for n in transfer.SIZES:
        epochs = transfer.epochs_for(n)
        per_epoch = math.ceil(10 * n / transfer.BATCH)
        assert epochs >= transfer.MIN_EPOCHS
        assert 300 <= epochs * per_epoch <= 300 * 1.06, (n, epochs, per_epoch)
    assert [transfer.epochs_for(n) for n in transfer.SIZES] == [43, 16, 5]
    assert transfer.epochs_for(10_000) == transfer.MIN_EPOCHS


def test_the_new_head_changes_only_the_last_linear():
    family, options = transfer.SOURCE_NETWORK
    torch.manual_seed(0)
    source = build_model(family, options, input_shape=(1, 28, 28), classes=10, mean=(72.9,), std=(90.0,)).eval()
    before = {k: v.clone() for k, v in source.state_dict().items()}
    target = transfer.with_new_head(source, seed=1)
    head = [name for name, m in target.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    changed = {k for k, v in target.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{head}.weight", f"{head}.bias"}
    assert all(torch.equal(v, before[k]) for k, v in source.state_dict().items())  # the source is untouched
    same = transfer.with_new_head(source, seed=1).state_dict()
    assert all(torch.equal(v, same[k]) for k, v in target.state_dict().items())  # one start per seed
    other = transfer.with_new_head(source, seed=2).state_dict()
    assert not torch.equal(other[f"{head}.weight"], target.state_dict()[f"{head}.weight"])


def test_the_methods_share_the_schedule_and_differ_in_the_regularizer():
    configs = {m: transfer.method_config(m, 0.01, epochs=16) for m in transfer.METHODS}
    assert [c["regularizer"].name for c in configs.values()] == ["none", "l2sp", "delta", "none"]
    for method, config in configs.items():
        sgd = config["optimizer"].as_dict()
        assert config["optimizer"].name == "sgd" and (sgd["lr"], sgd["momentum"], sgd["nesterov"]) == (0.01, 0.9, True)
        assert (config["epochs"], config["batch_size"], config["schedule"]) == (16, 16, "cosine")
        assert sgd["weight_decay"] == (0.01 if method in ("finetune", "scratch") else 0.0)
    delta = configs["delta"]["regularizer"].as_dict()
    assert delta == {"alpha": 0.01, "beta": 0.01, "attention": True, "probe": 10, "samples": 1000}
    assert configs["l2sp"]["regularizer"].as_dict() == {"alpha": 0.01, "beta": 0.01}


def test_tuning_picks_the_best_validation_accuracy_and_the_smaller_value_on_a_tie():
    rows = [{"value": 1e-3, "val_accuracy": 0.80}, {"value": 1e-2, "val_accuracy": 0.85}]
    assert transfer.pick(rows) == 1e-2
    rows.append({"value": 1e-1, "val_accuracy": 0.85})
    assert transfer.pick(rows) == 1e-2


def test_the_scratch_reference_starts_from_fresh_weights_everywhere():
    source = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(2, 3)
    )
    with torch.no_grad():
        source[1].weight.fill_(5.0)
    fresh = transfer.reinitialised(source, seed=3)
    assert not torch.equal(fresh[0].weight, source[0].weight) and not torch.equal(fresh[3].weight, source[3].weight)
    assert torch.equal(fresh[1].weight, torch.ones(2)) and torch.equal(source[1].weight, torch.full((2,), 5.0))
    again = transfer.reinitialised(source, seed=3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_the_fashion_split_setup_keeps_source_and_target_classes_apart():
    pytest.importorskip("sklearn")
    try:
        x, y, test, pool, text = transfer.target_images("fashion_split")
    except Exception as err:  # the data set is a bench extra: `make bench-deps`
        pytest.skip(f"Fashion-MNIST is not installed: {err}")
    assert set(np.unique(y)) == set(transfer.TARGET_CLASSES)
    assert not set(transfer.SOURCE_CLASSES["fashion_split"]) & set(transfer.TARGET_CLASSES)
    assert (len(pool), len(test)) == (30_000, 5_000) and not set(pool) & set(test)
    assert transfer.epochs_for(10, classes=5) == math.ceil(300 / math.ceil(50 / transfer.BATCH))
    assert "classes [5, 6, 7, 8, 9]" in text
