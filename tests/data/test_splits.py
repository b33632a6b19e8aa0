"""`adl.data.splits`: the seeded shuffle every held-out split is drawn by, the stratified split on it,
and `held_out`, which prefers the data's validation split and otherwise cuts the training split."""

from __future__ import annotations

import numpy as np
import pytest

from adl.data import load_dataset
from adl.data.dataset import make_dataset
from adl.data.splits import HeldOut, held_out, shuffled_split, stratified_split


def indexed_dataset(y_train: np.ndarray, validation: float = 0.0):
    """A dataset whose every training image holds its own index, so a split can be read back as indices."""
    x_train = np.arange(len(y_train), dtype=np.float32).reshape(-1, 1, 1, 1)
    dataset = make_dataset(
        "indexed",
        x_train,
        y_train,
        x_train[:2],
        y_train[:2],
        int(y_train.max()) + 1,
        (0.0, float(len(y_train))),
        "indexed",
    )
    return dataset.with_validation(validation, seed=0) if validation else dataset


def indices(x: np.ndarray) -> list[int]:
    return x.reshape(len(x)).astype(int).tolist()


def test_shuffled_split_cuts_one_seeded_permutation():
    first, rest = shuffled_split(10, 3, seed=4)
    assert np.array_equal(np.concatenate([first, rest]), np.random.default_rng(4).permutation(10))
    assert len(first) == 3 and len(rest) == 7
    pool = np.array([5, 7, 11, 13])
    first, rest = shuffled_split(pool, 10, seed=0)  # more than there are: all of them, nothing left
    assert sorted(first.tolist()) == pool.tolist() and len(rest) == 0


def test_shuffled_split_draws_from_a_given_generator_in_turn():
    rng = np.random.default_rng(1)
    a, _ = shuffled_split(6, 3, rng)
    b, _ = shuffled_split(6, 3, rng)
    reference = np.random.default_rng(1)
    assert np.array_equal(a, reference.permutation(6)[:3]) and np.array_equal(b, reference.permutation(6)[:3])


def test_stratified_split_keeps_every_class_on_both_sides_and_a_lone_sample_in_training():
    y = np.array([0] * 10 + [1] * 2 + [2])
    train, test = stratified_split(y, 0.8, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))
    assert np.bincount(y[train]).tolist() == [8, 1, 1] and np.bincount(y[test], minlength=3).tolist() == [2, 1, 0]
    again = stratified_split(y, 0.8, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, test), strict=True))


def test_held_out_without_a_validation_split_cuts_the_end_of_a_shuffle_of_the_training_split():
    dataset = indexed_dataset(np.repeat(np.arange(10), 50))
    split = held_out(dataset, seed=0)
    assert isinstance(split, HeldOut) and len(split.y_fit) == 400 and len(split.y_val) == 100
    order = np.random.default_rng(0).permutation(500)
    assert indices(split.x_fit) == order[:400].tolist() and indices(split.x_val) == order[400:].tolist()
    assert np.array_equal(split.y_fit, dataset.y_train[order[:400]])


def test_held_out_samples_take_a_stratified_subset_of_the_training_split_first():
    y = np.concatenate([np.zeros(900, int), np.ones(100, int)])
    split = held_out(indexed_dataset(y), seed=1, samples=200)
    chosen = indices(split.x_fit) + indices(split.x_val)
    assert len(chosen) == len(set(chosen)) == 200 and len(split.y_fit) == 160
    assert sum(y[chosen]) == 20  # 10 % of the subset, as of the data
    other = held_out(indexed_dataset(y), seed=2, samples=200)
    assert sorted(indices(other.x_fit)) != sorted(indices(split.x_fit))
    everything = held_out(indexed_dataset(y), seed=1, samples=5000)  # more than there are: all of them
    assert len(everything.y_fit) + len(everything.y_val) == 1000


def test_held_out_judges_on_the_validation_split_when_the_data_has_one():
    labels = np.repeat(np.arange(4), 50)
    dataset = indexed_dataset(labels, validation=0.25)
    split = held_out(dataset, seed=0)
    assert sorted(indices(split.x_fit)) == sorted(indices(dataset.x_train))
    assert sorted(indices(split.x_val)) == sorted(indices(dataset.x_val))
    assert np.array_equal(split.y_val, labels[indices(split.x_val)])
    assert np.array_equal(split.y_fit, labels[indices(split.x_fit)])


def test_held_out_samples_thin_both_splits_by_the_same_share_when_the_data_has_a_validation_split():
    dataset = indexed_dataset(np.repeat(np.arange(4), 100), validation=0.2)  # 320 training, 80 validation
    split = held_out(dataset, seed=3, samples=160)
    assert len(split.y_fit) == 160 and len(split.y_val) == 40
    assert set(indices(split.x_fit)) <= set(indices(dataset.x_train))
    assert set(indices(split.x_val)) <= set(indices(dataset.x_val))
    assert np.bincount(split.y_val).tolist() == [10] * 4  # stratified


@pytest.mark.parametrize("validation", [0.0, 0.2])
def test_scoring_and_training_samples_are_the_heads_of_seeded_shuffles(validation):
    digits = load_dataset("digits", validation=validation)
    x_val, y_val = (digits.x_val, digits.y_val) if digits.has_validation else (digits.x_train, digits.y_train)
    first, _ = shuffled_split(len(y_val), 50, seed=7)
    assert np.array_equal(digits.scoring_sample(50, seed=7)[1], y_val[first])
    first, _ = shuffled_split(len(digits.y_train), 50, seed=7)
    assert np.array_equal(digits.training_sample(50, seed=7)[0], digits.x_train[first])
    assert x_val.dtype == np.float32
