"""The validation split: held out of training, stratified, seeded, in the fingerprint; what scores
the policies of the passes after training."""

from __future__ import annotations

import numpy as np
import pytest

from adl.data import DataError, load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def held_out():
    return load_dataset("digits", validation=0.2)


def rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(len(x), -1)}


def test_validation_is_carved_from_training_only(digits, held_out):
    assert not digits.has_validation and digits.x_val is None
    assert held_out.has_validation
    assert len(held_out.y_train) + len(held_out.y_val) == len(digits.y_train)
    assert abs(len(held_out.y_val) / len(digits.y_train) - 0.2) < 0.01
    assert np.array_equal(held_out.x_test, digits.x_test) and np.array_equal(held_out.y_test, digits.y_test)
    # digits has duplicate images, so compare (image, label) multisets rather than sets
    pairs = lambda x, y: sorted(r.tobytes() + bytes([l]) for r, l in zip(x.reshape(len(x), -1), y))  # noqa: E731 -- a one-expression closure, named for what it computes
    assert pairs(
        np.concatenate([held_out.x_train, held_out.x_val]), np.concatenate([held_out.y_train, held_out.y_val])
    ) == pairs(digits.x_train, digits.y_train)
    assert set(held_out.y_val) == set(range(10))  # stratified: every class is held out
    counts = np.bincount(held_out.y_val) / np.bincount(digits.y_train)
    assert counts.min() > 0.15 and counts.max() < 0.25
    assert held_out.x_val.dtype == np.float32 and held_out.y_val.dtype == np.int64


def test_normalisation_statistics_are_the_remaining_training_samples(digits, held_out):
    # the reference is numpy's float32 pairwise sum: relative error ~log2(n) * 2**-24 = 1e-6
    assert held_out.mean[0] == pytest.approx(float(held_out.x_train.mean()), rel=1e-5)
    assert held_out.mean != digits.mean


def test_validation_is_deterministic_per_seed_and_in_the_fingerprint(digits, held_out):
    again = load_dataset("digits", validation=0.2)
    assert np.array_equal(again.y_val, held_out.y_val) and again.fingerprint() == held_out.fingerprint()
    assert held_out.fingerprint() != digits.fingerprint()
    other = load_dataset("digits", validation=0.2, seed=1)
    assert not np.array_equal(other.y_test, held_out.y_test)  # the seed draws both splits
    assert load_dataset("digits", validation=0.3).fingerprint() != held_out.fingerprint()
    assert load_dataset("digits", validation=0.0).fingerprint() == digits.fingerprint()  # 0 is no split
    assert "validation=" in repr(held_out) and "validation=" not in repr(digits)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, True, "0.2"])
def test_validation_must_be_a_fraction(fraction):
    with pytest.raises(DataError) as info:
        load_dataset("digits", validation=fraction)
    assert info.value.key == "validation" and "validation" in info.value.message


def test_a_validation_split_too_small_to_use_is_refused(tmp_path):
    path = tmp_path / "tiny.npz"
    np.savez(path, x=np.arange(10, dtype=np.float32).reshape(5, 2), y=np.array([0, 0, 1, 1, 1]))
    with pytest.raises(DataError) as info:  # training: one 0, two 1s; a single 1 would be held out
        load_dataset("npz", path=path, split=0.6, validation=0.5)
    assert info.value.key == "validation" and "each needs at least 2" in info.value.message


def test_scoring_sample_prefers_the_validation_split(digits, held_out):
    x, y = held_out.scoring_sample(100, seed=3)
    assert len(y) == 100 and rows(x) <= rows(held_out.x_val)
    x_all, y_all = held_out.scoring_sample(10_000, seed=3)  # capped at what there is
    assert len(y_all) == len(held_out.y_val)
    x_train, y_train = digits.scoring_sample(100, seed=3)  # no validation split: training images
    assert rows(x_train) <= rows(digits.x_train) and len(y_train) == 100
    assert np.array_equal(digits.scoring_sample(100, seed=3)[1], y_train)
    assert np.array_equal(digits.training_sample(100, seed=3)[1], y_train)  # the same draw
    assert rows(held_out.training_sample(100, seed=3)[0]) <= rows(held_out.x_train)  # never validation images
    assert not np.array_equal(digits.scoring_sample(100, seed=4)[1], y_train)
