"""`nas { samples = N }`: the search's data is a stratified, seeded subset of the training split."""

from __future__ import annotations

import numpy as np

from adl.passes.nas import search_split


def test_all_training_images_by_default_split_80_20_without_overlap():
    y = np.repeat(np.arange(10), 50)
    train, val = search_split(y, None, seed=0)
    assert len(train) == 400 and len(val) == 100
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(500))
    assert np.array_equal(np.concatenate([train, val]), np.random.default_rng(0).permutation(500))  # as before


def test_a_subset_keeps_the_class_proportions_and_depends_on_the_seed():
    y = np.concatenate([np.zeros(900, int), np.ones(100, int)])
    train, val = search_split(y, 200, seed=1)
    chosen = np.concatenate([train, val])
    assert len(chosen) == 200 and len(set(chosen.tolist())) == 200 and len(train) == 160
    assert np.sum(y[chosen] == 1) == 20  # 10 % of the subset, as of the data
    again, _ = search_split(y, 200, seed=1)
    other, _ = search_split(y, 200, seed=2)
    assert np.array_equal(again, train) and not np.array_equal(np.sort(other), np.sort(train))
    assert len(np.concatenate(search_split(y, 5000, seed=1))) == 1000  # more than there are: all of them
