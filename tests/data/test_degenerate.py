"""Degenerate data is a `DataError` with a clear message, never a crash further on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adl.data import DataError, load_dataset
from adl.data.dataset import make_dataset


def npz(tmp_path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    return path


def message(path: Path, **options) -> tuple[str | None, str]:
    with pytest.raises(DataError) as info:
        load_dataset("npz", path=path, **options)
    return info.value.key, info.value.message.replace(str(path), "D")


@pytest.mark.parametrize("shape, shown", [((20, 0), "(0,)"), ((20, 1, 0, 0), "(1, 0, 0)"), ((20, 3, 0), "(1, 3, 0)")])
def test_samples_without_features(tmp_path, shape, shown):
    path = npz(tmp_path, np.zeros(shape, np.float32), np.arange(20) % 2)
    assert message(path) == (
        "path",
        f"npz file 'D' has samples of shape {shown}: no features to learn from "
        "(every axis after the first must be at least 1)",
    )


def test_no_samples(tmp_path):
    path = npz(tmp_path, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert message(path) == ("path", "npz file 'D' has no samples (x has shape (0, 4))")


def test_one_class_only(tmp_path):
    path = npz(tmp_path, np.random.default_rng(0).random((20, 4), np.float32), np.full(20, 3))
    assert message(path, classes=10) == (
        "path",
        "npz file 'D' has samples of one class only (label 3): a classifier needs samples of 2 classes at least",
    )


def test_labels_out_of_range_for_classes(tmp_path):
    path = npz(tmp_path, np.random.default_rng(0).random((20, 4), np.float32), np.arange(20) % 12)
    assert message(path, classes=10) == (
        "classes",
        "npz file 'D' has labels outside [0, 10): label 10 (1 sample), label 11 (1 sample)",
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e39])  # 1e39 overflows float32
def test_nan_or_infinite_inputs(tmp_path, bad):
    x = np.ones((20, 4))
    x[5, 2] = bad
    path = npz(tmp_path, x, np.arange(20) % 2)
    assert message(path) == (
        "path",
        "npz file 'D': array 'x' contains NaN or infinite values (after conversion to float32)",
    )


def test_every_source_is_checked_where_splits_are_assembled():
    x, y = np.zeros((4, 0), np.float32), np.array([0, 1, 0, 1])
    with pytest.raises(DataError, match=r"^x has samples of shape \(0,\): no features"):
        make_dataset("t", x, y, x, y, 2, (0.0, 1.0), "x")
    with pytest.raises(DataError, match=r"^x has samples of one class only \(label 0\)"):
        y = np.zeros(2, np.int64)
        make_dataset("t", np.ones((2, 3)), y, np.ones((2, 3)), y, 2, (0.0, 1.0), "x")
