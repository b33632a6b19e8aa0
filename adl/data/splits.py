"""Splitting labelled samples in two, deterministically for a seed: how adl holds data out.

One primitive, `shuffled_split` (a seeded shuffle cut in two), draws every split adl makes:

- `stratified_split` cuts each class: the train/test split of digits, npz and images, and the
  validation split of the spec's ``data { validation = 10 % }`` (`Dataset.with_validation`);
- `Dataset.scoring_sample` and haq's scoring images (`adl.passes.haq.search.SearchData`) take
  the head of a shuffle of the validation split, or of the training split without one;
- `held_out` gives a search the samples it learns from and the samples it judges on (nas: the
  supernet's weights and its architecture): the training and the validation split when the
  spec sets `validation`, else a cut of the training split.

The test split is never part of any of them: it judges only the finished network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .dataset import Dataset

Seed = int | np.random.Generator


def shuffled_split(pool: int | np.ndarray, first: int, seed: Seed) -> tuple[np.ndarray, np.ndarray]:
    """`pool` (indices, or ``range(pool)`` for an int) in a seeded random order, cut after
    `first`: the first `first` indices and the rest. `seed` may be a Generator, to draw several
    splits from one stream (as `stratified_split` draws one per class)."""
    order = np.random.default_rng(seed).permutation(pool)
    return order[:first], order[first:]


def stratified_split(y: np.ndarray, split: float, seed: Seed) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices into `y`, split class by class in the proportion `split`.

    Each class with at least 2 samples keeps at least one sample on each side; a class with a
    single sample goes to training. The result depends only on (y, split, seed). Both index
    arrays are shuffled, so neither split comes out sorted by class.
    """
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        train, test = shuffled_split(members, _class_share(len(members), split), rng)
        train_parts.append(train)
        test_parts.append(test)
    empty = np.empty(0, dtype=np.int64)
    train = rng.permutation(np.concatenate(train_parts)) if train_parts else empty
    test = rng.permutation(np.concatenate(test_parts)) if test_parts else empty
    return train, test


def _class_share(n: int, split: float) -> int:
    """How many of a class's `n` samples go to the first part: `split` of them, rounded, and at
    least one on each side when there are two or more."""
    return n if n < 2 else min(max(math.floor(n * split + 0.5), 1), n - 1)


@dataclass(frozen=True, eq=False)
class HeldOut:
    """Labelled samples in two disjoint parts: `x_fit`/`y_fit` to learn from, `x_val`/`y_val`
    to judge on (never learned from). Copies: indexing picked only the samples used."""

    x_fit: np.ndarray
    y_fit: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def held_out(dataset: "Dataset", seed: int, *, fraction: float = 0.2, samples: int | None = None) -> HeldOut:
    """The samples a search learns from and the samples it judges on, drawn by `seed`.

    With a validation split (the spec's ``validation = ...``) the search learns from the training
    split and judges on the validation split; without one, `fraction` of the training split is
    held out (the end of a seeded shuffle). `samples` caps the training images used: a
    stratified, seeded subset of the training split, of which `fraction` is held out -- or, with
    a validation split, matched by the same share of the validation split.
    """
    if dataset.has_validation:
        return _from_validation_split(dataset, seed, samples)
    return _cut_from_training(dataset, seed, fraction, samples)


def _cut_from_training(dataset: "Dataset", seed: int, fraction: float, samples: int | None) -> HeldOut:
    x, y = dataset.x_train, dataset.y_train
    pool = np.arange(len(y)) if samples is None or samples >= len(y) else stratified_split(y, samples / len(y), seed)[0]
    fit, val = shuffled_split(pool, int((1 - fraction) * len(pool)), seed)
    return HeldOut(x[fit], y[fit], x[val], y[val])


def _from_validation_split(dataset: "Dataset", seed: int, samples: int | None) -> HeldOut:
    share = 1.0 if samples is None else samples / len(dataset.y_train)
    fit, val = _stratified_share(dataset.y_train, share, seed), _stratified_share(dataset.y_val, share, seed)
    return HeldOut(dataset.x_train[fit], dataset.y_train[fit], dataset.x_val[val], dataset.y_val[val])


def _stratified_share(y: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Indices of a stratified, seeded `share` of `y`, shuffled: all of them when `share` >= 1."""
    if share >= 1:
        return shuffled_split(len(y), len(y), seed)[0]
    return stratified_split(y, share, seed)[0]
