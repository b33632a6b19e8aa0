"""Tests for adl.data: every source on tiny generated files, the split, stats, fingerprint, errors."""

from __future__ import annotations

import ast
import os
import pickle
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from adl.data import SOURCES, DataError, Dataset, load_dataset

DATA_DIR = Path(__file__).resolve().parents[2] / "adl" / "data"


@contextmanager
def raises(key: str | None, *fragments: str):
    """Expect a DataError with this key, a one-line message containing every fragment."""
    with pytest.raises(DataError) as info:
        yield info
    err = info.value
    assert err.key == key, f"key {err.key!r} != {key!r} for: {err.message}"
    assert str(err) == err.message and "\n" not in err.message
    for fragment in fragments:
        assert fragment in err.message, f"{fragment!r} not in {err.message!r}"


# --- file builders ----------------------------------------------------------------------------


def write_npz(tmp_path: Path, name: str = "d.npz", **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def labelled_npz(tmp_path: Path, per_class=(10, 10, 10), feature_dim: int = 4, **extra) -> Path:
    """Flat vectors whose first feature is the sample's index, so samples can be traced."""
    y = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)]).astype(np.int64)
    x = np.random.default_rng(1).normal(size=(len(y), feature_dim)).astype(np.float32)
    x[:, 0] = np.arange(len(y))
    return write_npz(tmp_path, x=x, y=y, **extra)


def cifar_batch(n: int, labels, seed: int) -> dict:
    data = np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return {
        b"batch_label": b"training batch",
        b"labels": list(labels),
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def make_cifar(root: Path) -> tuple[Path, list[dict], dict]:
    """A cifar-10-batches-py folder with data_batch_1 (3 images), data_batch_2 (2), test_batch (4)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [cifar_batch(3, [3, 0, 9], seed=1), cifar_batch(2, [5, 5], seed=2)]
    for i, batch in enumerate(batches, start=1):
        write_pickle(folder / f"data_batch_{i}", batch)
    test = cifar_batch(4, [1, 2, 7, 0], seed=3)
    write_pickle(folder / "test_batch", test)
    (folder / "batches.meta").write_bytes(b"not read")
    return folder, batches, test


COLORS = {"b_dog": (0, 0, 255), "a_cat": (255, 0, 0), "c_owl": (0, 255, 0)}


def make_images(root: Path, per_class: int = 5, size=(6, 4), suffix: str = ".png") -> Path:
    """One subfolder per class of solid-colour images of PIL size (W, H) = `size`."""
    from PIL import Image

    for name, color in COLORS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, color).save(root / name / f"{i}{suffix}")
    return root


# --- digits -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_digits_shapes_values_and_split(digits):
    assert digits.name == "digits"
    assert digits.x_train.shape[1:] == (1, 8, 8) and digits.x_test.shape[1:] == (1, 8, 8)
    assert digits.x_train.dtype == np.float32 and digits.x_test.dtype == np.float32
    assert digits.y_train.dtype == np.int64 and digits.y_test.dtype == np.int64
    n_train, n_test = len(digits.y_train), len(digits.y_test)
    assert len(digits.x_train) == n_train and len(digits.x_test) == n_test
    assert n_train + n_test == 1797
    assert abs(n_train / 1797 - 0.8) < 0.01
    for x in (digits.x_train, digits.x_test):
        assert x.min() == 0 and x.max() == 16  # raw values, not normalised
        assert np.array_equal(x, np.round(x))
    assert digits.classes == 10 and digits.input_shape == (1, 8, 8)
    assert digits.value_range == (0.0, 16.0)
    assert set(digits.y_train) == set(digits.y_test) == set(range(10))
    assert len(digits.mean) == len(digits.std) == 1
    # the reference is numpy's float32 pairwise sum of 92k values: relative error ~log2(n) * 2**-24 = 1e-6
    assert digits.mean[0] == pytest.approx(float(digits.x_train.mean()), rel=1e-5)


def test_digits_is_deterministic_per_seed(digits):
    again = load_dataset("digits")
    assert np.array_equal(again.x_train, digits.x_train) and np.array_equal(again.y_test, digits.y_test)
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(other.y_train, digits.y_train)
    assert other.fingerprint() != digits.fingerprint()


def test_digits_split_fraction_is_honoured():
    d = load_dataset("digits", split=0.5)
    assert abs(len(d.y_train) - len(d.y_test)) <= 10


def test_digits_labels_checked_against_classes():
    with raises("classes", "label 5 (", "label 9 (", "[0, 5)"):
        load_dataset("digits", classes=5)
    assert load_dataset("digits", classes=12).classes == 12


# --- split ------------------------------------------------------------------------------------


def test_split_is_stratified(tmp_path):
    d = load_dataset("npz", path=labelled_npz(tmp_path, per_class=(10, 20, 2, 1)), split=0.7)
    assert np.bincount(d.y_train).tolist() == [7, 14, 1, 1]  # a lone sample goes to training
    assert np.bincount(d.y_test, minlength=4).tolist() == [3, 6, 1, 0]


def test_split_keeps_one_of_each_class_per_side(tmp_path):
    d = load_dataset("npz", path=labelled_npz(tmp_path, per_class=(5, 5)), split=0.95)
    assert np.bincount(d.y_test).tolist() == [1, 1]
    d = load_dataset("npz", path=labelled_npz(tmp_path, per_class=(5, 5)), split=0.05)
    assert np.bincount(d.y_train).tolist() == [1, 1]


def test_split_partitions_samples_and_keeps_pairs(tmp_path):
    path = labelled_npz(tmp_path, per_class=(6, 9, 5))
    with np.load(path) as f:
        x, y = f["x"], f["y"]
    d = load_dataset("npz", path=path, seed=3)
    ids_train = d.x_train[:, 0].astype(int)
    ids_test = d.x_test[:, 0].astype(int)
    assert sorted(ids_train.tolist() + ids_test.tolist()) == list(range(len(y)))
    assert np.array_equal(d.x_train, x[ids_train]) and np.array_equal(d.x_test, x[ids_test])
    assert np.array_equal(d.y_train, y[ids_train]) and np.array_equal(d.y_test, y[ids_test])
    assert not np.all(np.diff(d.y_train) >= 0), "training set should not come out sorted by class"


def test_split_deterministic_and_seed_dependent(tmp_path):
    path = labelled_npz(tmp_path)
    a, b = load_dataset("npz", path=path, seed=7), load_dataset("npz", path=path, seed=7)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    c = load_dataset("npz", path=path, seed=8)
    assert not np.array_equal(a.x_train, c.x_train)


@pytest.mark.parametrize("split", [0, 1, 1.5, -0.2, float("nan"), True, "0.8"])
def test_split_must_be_a_fraction(tmp_path, split):
    with raises("split", "split", repr(split)):
        load_dataset("digits", split=split)


def test_too_few_samples_per_split(tmp_path):
    with raises("split", "1 test sample", "at least 2"):
        load_dataset("npz", path=labelled_npz(tmp_path, per_class=(10,)), split=0.9)
    with raises("path", "1 training sample"):
        load_dataset("npz", path=labelled_npz(tmp_path, per_class=(3,)), split=0.2)


# --- npz --------------------------------------------------------------------------------------


def test_npz_flat_vectors(tmp_path):
    x = np.linspace(-3, 5, 20 * 3, dtype=np.float64).reshape(20, 3)
    y = np.arange(20) % 2
    d = load_dataset("npz", path=write_npz(tmp_path, x=x, y=y))
    assert d.name == "npz"
    assert d.x_train.shape == (16, 3) and d.x_test.shape == (4, 3)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.input_shape == (3,) and d.classes == 2
    assert d.value_range == (-3.0, 5.0)  # observed min/max of x
    assert len(d.mean) == len(d.std) == 1
    assert d.mean[0] == pytest.approx(d.x_train.astype(np.float64).mean())
    assert d.std[0] == pytest.approx(d.x_train.astype(np.float64).std())


def test_npz_images_gain_channel_axis(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(10, 5, 7)).astype(np.uint8)
    d = load_dataset("npz", path=write_npz(tmp_path, x=x, y=np.arange(10) % 2))
    assert d.x_train.shape == (8, 1, 5, 7) and d.input_shape == (1, 5, 7)
    assert d.value_range == (float(x.min()), float(x.max()))


def test_npz_nchw_kept_with_per_channel_stats(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3, 4, 4)).astype(np.float32)
    x[:, 0] = x[:, 0] * 5 + 100
    x[:, 2] = 7.0  # a constant channel
    d = load_dataset("npz", path=write_npz(tmp_path, x=x, y=np.arange(12) % 3))
    assert d.x_train.shape == (9, 3, 4, 4) and d.input_shape == (3, 4, 4)
    assert len(d.mean) == len(d.std) == 3
    for c in range(2):
        assert d.mean[c] == pytest.approx(d.x_train[:, c].astype(np.float64).mean())
        assert d.std[c] == pytest.approx(d.x_train[:, c].astype(np.float64).std())
    assert d.mean[0] > 50 and d.std[0] > 2
    assert d.mean[2] == pytest.approx(7.0) and d.std[2] == 1.0


def test_npz_integer_valued_float_labels_and_given_classes(tmp_path):
    path = write_npz(tmp_path, x=np.zeros((8, 2)), y=np.array([0, 1, 2, 1, 0, 2, 1, 0], dtype=np.float32))
    d = load_dataset("npz", path=path, classes=4)
    assert d.classes == 4 and d.y_train.dtype == np.int64
    assert sorted(d.y_train.tolist() + d.y_test.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2]


def test_npz_missing_file(tmp_path):
    with raises("path", "npz file", "missing.npz", "does not exist"):
        load_dataset("npz", path=tmp_path / "missing.npz")
    with raises("path", "is not a file"):
        load_dataset("npz", path=tmp_path)


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "bad.npz").write_text("hello, not a zip")
    with raises("path", "bad.npz", "not a valid .npz"):
        load_dataset("npz", path=tmp_path / "bad.npz")
    np.save(tmp_path / "arr.npy", np.zeros(3))
    with raises("path", "arr.npy", "single .npy array"):
        load_dataset("npz", path=tmp_path / "arr.npy")


def test_npz_missing_arrays_are_listed(tmp_path):
    with raises("path", "has no array 'y'", "'a'", "'x'"):
        load_dataset("npz", path=write_npz(tmp_path, x=np.zeros((4, 2)), a=np.zeros(4)))
    with raises("path", "has no array 'x'", "(found: 'b', 'y')"):
        load_dataset("npz", path=write_npz(tmp_path, b=np.zeros((4, 2)), y=np.zeros(4)))


def test_npz_length_mismatch(tmp_path):
    with raises("path", "x has 6 samples but y has 5 labels"):
        load_dataset("npz", path=write_npz(tmp_path, x=np.zeros((6, 2)), y=np.zeros(5, dtype=int)))


def test_npz_labels_must_be_integers(tmp_path):
    y = np.array([0, 1, 0.5, 1, 0, 1, 2.25, 0])
    with raises("path", "integer class labels", "0.5", "2 non-integer values"):
        load_dataset("npz", path=write_npz(tmp_path, x=np.zeros((8, 2)), y=y))
    with raises("path", "integer class labels", "dtype <U"):
        load_dataset("npz", path=write_npz(tmp_path, x=np.zeros((3, 2)), y=np.array(["a", "b", "c"])))
    with raises("path", "'y' must have shape (N,)", "(8, 1)"):
        load_dataset("npz", path=write_npz(tmp_path, x=np.zeros((8, 2)), y=np.zeros((8, 1), dtype=int)))


def test_npz_labels_out_of_range(tmp_path):
    y = np.array([0, 1, 7, 1, 0, 7, 7, 9, 1, 0])
    path = write_npz(tmp_path, x=np.zeros((10, 2)), y=y)
    with raises("classes", "[0, 5)", "label 7 (3 samples)", "label 9 (1 sample)"):
        load_dataset("npz", path=path, classes=5)
    with raises("path", "negative labels", "label -1 (1 sample)"):
        load_dataset("npz", path=write_npz(tmp_path, x=np.zeros((4, 2)), y=np.array([0, -1, 1, 0])))


def test_npz_classes_must_be_valid(tmp_path):
    for bad in (0, 1, 2.5, "3"):
        with raises("classes", "classes must be"):
            load_dataset("digits", classes=bad)


def test_npz_x_must_be_numeric(tmp_path):
    with raises("path", "'x' must be numeric", "<U"):
        load_dataset("npz", path=write_npz(tmp_path, x=np.array([["a"]] * 4), y=np.zeros(4, dtype=int)))
    x = np.array([{"a": 1}, None, 3, 4], dtype=object)
    with raises("path", "'x' must be numeric", "object"):
        load_dataset("npz", path=write_npz(tmp_path, x=x, y=np.zeros(4, dtype=int)))
    with raises("path", "'x' must have shape", "(4,)"):
        load_dataset("npz", path=write_npz(tmp_path, x=np.zeros(4), y=np.zeros(4, dtype=int)))
    x = np.zeros((4, 2))
    x[2, 1] = np.nan
    with raises("path", "NaN"):
        load_dataset("npz", path=write_npz(tmp_path, x=x, y=np.zeros(4, dtype=int)))
    with raises("path", "no samples"):
        load_dataset("npz", path=write_npz(tmp_path, x=np.zeros((0, 2)), y=np.zeros(0, dtype=int)))


# --- cifar10 ----------------------------------------------------------------------------------


def test_cifar10_layout_and_labels(tmp_path):
    folder, batches, test = make_cifar(tmp_path)
    d = load_dataset("cifar10", path=folder)
    assert d.name == "cifar10"
    assert d.x_train.shape == (5, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.y_train.tolist() == [3, 0, 9, 5, 5] and d.y_test.tolist() == [1, 2, 7, 0]
    assert d.classes == 10 and d.input_shape == (3, 32, 32) and d.value_range == (0.0, 255.0)
    train_rows = np.concatenate([b[b"data"] for b in batches])
    rng = np.random.default_rng(0)
    for _ in range(50):  # row = R plane, G plane, B plane, each 32x32 row-major
        i, c, h, w = rng.integers(5), rng.integers(3), rng.integers(32), rng.integers(32)
        assert d.x_train[i, c, h, w] == train_rows[i, c * 1024 + h * 32 + w]
    assert d.x_test[3, 2, 31, 0] == test[b"data"][3, 2 * 1024 + 31 * 32]
    assert len(d.mean) == 3
    for c in range(3):
        assert d.mean[c] == pytest.approx(train_rows[:, c * 1024 : (c + 1) * 1024].astype(np.float64).mean())
        assert d.std[c] == pytest.approx(train_rows[:, c * 1024 : (c + 1) * 1024].astype(np.float64).std())


def test_cifar10_accepts_parent_folder_and_ignores_split(tmp_path):
    folder, _, _ = make_cifar(tmp_path)
    a = load_dataset("cifar10", path=folder)
    b = load_dataset("cifar10", path=str(tmp_path), split=0.3, seed=5)
    assert a.fingerprint() == b.fingerprint()


def test_cifar10_loads_whatever_batches_exist(tmp_path):
    folder, _, _ = make_cifar(tmp_path)
    write_pickle(folder / "data_batch_10", cifar_batch(2, [8, 8], seed=10))
    (folder / "data_batch_1").unlink()
    d = load_dataset("cifar10", path=folder)
    assert d.y_train.tolist() == [5, 5, 8, 8]  # numeric order: 2 before 10


def test_cifar10_reads_official_era_pickles(tmp_path):
    """The official files are protocol-2 pickles naming numpy.core.multiarray._reconstruct."""
    folder, batches, _ = make_cifar(tmp_path)
    blob = pickle.dumps(batches[0], protocol=2)
    if b"numpy._core.multiarray" in blob:
        blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in blob
    (folder / "data_batch_1").write_bytes(blob)
    d = load_dataset("cifar10", path=folder)
    assert d.y_train.tolist() == [3, 0, 9, 5, 5]
    assert np.array_equal(d.x_train[:3].reshape(3, -1), batches[0][b"data"])


def test_cifar10_labels_checked_against_classes(tmp_path):
    folder, _, _ = make_cifar(tmp_path)
    with raises("classes", "[0, 5)", "label 9 (1 sample)", "label 5 (2 samples)", "label 7 (1 sample)"):
        load_dataset("cifar10", path=folder, classes=5)
    write_pickle(folder / "test_batch", cifar_batch(2, [1, 12], seed=4))
    with raises("path", "[0, 10)", "label 12"):
        load_dataset("cifar10", path=folder)


def test_cifar10_missing_folder_and_batches(tmp_path):
    with raises("path", "CIFAR-10 folder", "nope", "does not exist"):
        load_dataset("cifar10", path=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with raises("path", "empty", "no data_batch_* files"):
        load_dataset("cifar10", path=tmp_path / "empty")
    folder, _, _ = make_cifar(tmp_path / "c")
    (folder / "test_batch").unlink()
    with raises("path", "no test_batch"):
        load_dataset("cifar10", path=folder)


def test_cifar10_corrupt_batch_is_named(tmp_path):
    folder, _, _ = make_cifar(tmp_path)
    good = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(good[: len(good) // 2])
    with raises("path", "data_batch_2", "not a valid CIFAR-10 pickle"):
        load_dataset("cifar10", path=folder)
    (folder / "data_batch_2").write_text("just some text")
    with raises("path", "data_batch_2", "not a valid CIFAR-10 pickle"):
        load_dataset("cifar10", path=folder)


def test_cifar10_refuses_code_in_pickles(tmp_path):
    folder, _, _ = make_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    write_pickle(folder / "data_batch_1", {b"data": Evil(), b"labels": []})
    with raises("path", "data_batch_1", "refusing to load"):
        load_dataset("cifar10", path=folder)
    assert not marker.exists()


def test_cifar10_wrong_contents(tmp_path):
    folder, _, _ = make_cifar(tmp_path)
    write_pickle(folder / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with raises("path", "test_batch", "(2, 100)", "(N, 3072)"):
        load_dataset("cifar10", path=folder)
    write_pickle(folder / "test_batch", {b"pixels": np.zeros((2, 3072), np.uint8)})
    with raises("path", "test_batch", "b'pixels'"):
        load_dataset("cifar10", path=folder)
    write_pickle(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    with raises("path", "test_batch", "1 labels", "2 images"):
        load_dataset("cifar10", path=folder)


# --- images -----------------------------------------------------------------------------------


def test_images_layout_and_class_order(tmp_path):
    root = make_images(tmp_path / "imgs")
    (root / "a_cat" / "notes.txt").write_text("ignored")
    (root / ".hidden").mkdir()  # not a class
    d = load_dataset("images", path=root)
    assert d.name == "images" and d.classes == 3
    assert d.x_train.shape == (12, 3, 4, 6) and d.x_test.shape == (3, 3, 4, 6)  # PIL size (6, 4) = W x H
    assert d.x_train.dtype == np.float32 and d.value_range == (0.0, 255.0)
    assert d.input_shape == (3, 4, 6)
    assert np.bincount(d.y_train).tolist() == [4, 4, 4] and np.bincount(d.y_test).tolist() == [1, 1, 1]
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        for label, name in enumerate(sorted(COLORS)):  # a_cat, b_dog, c_owl
            pixels = x[y == label]
            assert np.all(pixels == np.array(COLORS[name], np.float32)[None, :, None, None]), name
    assert d.mean == pytest.approx((85.0, 85.0, 85.0)) and len(d.std) == 3


def test_images_grayscale_and_resize(tmp_path):
    root = make_images(tmp_path / "imgs", per_class=2)
    from PIL import Image

    Image.new("RGB", (9, 3), (255, 0, 0)).save(root / "a_cat" / "wide.PNG")  # upper-case suffix
    d = load_dataset("images", path=root, grayscale=True, image_size=(5, 2))
    assert d.x_train.shape[1:] == (1, 5, 2) and d.input_shape == (1, 5, 2)
    assert len(d.y_train) + len(d.y_test) == 7
    red = np.concatenate([d.x_train[d.y_train == 0], d.x_test[d.y_test == 0]])
    assert np.allclose(red, 76, atol=1)  # L = 0.299 R + 0.587 G + 0.114 B
    assert len(d.mean) == 1


def test_images_jpeg_and_split_seed(tmp_path):
    root = make_images(tmp_path / "imgs", per_class=4, suffix=".JPG")
    a = load_dataset("images", path=root, seed=0)
    b = load_dataset("images", path=root, seed=0)
    assert a.fingerprint() == b.fingerprint()
    assert np.bincount(a.y_train).tolist() == [3, 3, 3]
    assert abs(a.x_train[a.y_train == 0][:, 0].mean() - 255) < 3  # red, within JPEG loss


def test_images_size_mismatch_names_file(tmp_path):
    root = make_images(tmp_path / "imgs", per_class=2)
    from PIL import Image

    Image.new("RGB", (5, 5), (1, 2, 3)).save(root / "b_dog" / "odd.png")
    with raises("path", "odd.png", "5x5", "4x6", "a_cat/0.png", "image_size"):
        load_dataset("images", path=root)
    assert load_dataset("images", path=root, image_size=(4, 6)).x_train.shape[1:] == (3, 4, 6)


def test_images_errors(tmp_path):
    with raises("path", "image folder", "nope", "does not exist"):
        load_dataset("images", path=tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with raises("path", "no class subfolders"):
        load_dataset("images", path=tmp_path / "flat")
    root = make_images(tmp_path / "imgs", per_class=2)
    with raises("classes", "3 class subfolders", "a_cat, b_dog, c_owl", "classes=2"):
        load_dataset("images", path=root, classes=2)
    (root / "d_empty").mkdir()
    (root / "d_empty" / "readme.txt").write_text("no images")
    with raises("path", "d_empty", "no image files"):
        load_dataset("images", path=root)
    (root / "d_empty" / "broken.png").write_bytes(b"\x89PNG not really")
    with raises("path", "broken.png", "cannot be read"):
        load_dataset("images", path=root)


@pytest.mark.parametrize("size", [(0, 4), (4,), (4, 4, 4), (2.0, 3), "8x8", (True, 2)])
def test_images_bad_image_size(tmp_path, size):
    with raises("image_size", "image_size"):
        load_dataset("images", path=tmp_path, image_size=size)


# --- options and the API ----------------------------------------------------------------------


def test_unknown_source_lists_known_ones():
    with raises("source", "'mnist'", "cifar10, digits, fashion_mnist, idx, images, npz"):
        load_dataset("mnist")
    assert set(SOURCES) == {"cifar10", "digits", "fashion_mnist", "idx", "images", "npz"}


def test_path_options(tmp_path):
    for source in ("npz", "cifar10", "idx", "images"):
        with raises("path", source, "needs a path"):
            load_dataset(source)
    with raises("path", "takes no path"):
        load_dataset("digits", path=tmp_path)
    with raises("image_size", "only applies to source 'images'"):
        load_dataset("digits", image_size=(8, 8))
    with raises("grayscale", "only applies to source 'images'"):
        load_dataset("npz", path=tmp_path, grayscale=True)
    with raises("seed", "seed"):
        load_dataset("digits", seed=-1)


def test_npz_path_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    labelled_npz(tmp_path)
    assert load_dataset("npz", path="~/d.npz").classes == 3


def test_data_error_fields():
    err = DataError("something is wrong", key="path")
    assert err.message == str(err) == "something is wrong" and err.key == "path"
    assert DataError("x").key is None


def _fixed_dataset(**changes) -> Dataset:
    fields = dict(
        name="fixed",
        x_train=np.arange(12, dtype=np.float32).reshape(3, 4),
        y_train=np.array([0, 1, 0], dtype=np.int64),
        x_test=np.full((2, 4), 0.5, dtype=np.float32),
        y_test=np.array([1, 0], dtype=np.int64),
        classes=2,
        input_shape=(4,),
        value_range=(0.0, 11.0),
        mean=(5.5,),
        std=(3.45,),
    )
    fields.update(changes)
    return Dataset(**fields)


def test_fingerprint_is_stable_across_runs():
    fp = _fixed_dataset().fingerprint()
    # A golden value: the fingerprint keys checkpoints, so it must never drift between runs,
    # processes or releases without a deliberate change here.
    assert fp == "5ce27bf225133e1dc4c35b1d17823b7369b9e342788a7300ab6f501e12f46812"
    assert _fixed_dataset(name="other").fingerprint() == fp


def test_fingerprint_is_sensitive(tmp_path):
    base = _fixed_dataset().fingerprint()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    x[2, 3] += 1e-3
    assert _fixed_dataset(x_train=x).fingerprint() != base
    assert _fixed_dataset(classes=3).fingerprint() != base
    assert _fixed_dataset(y_test=np.array([0, 1])).fingerprint() != base
    assert _fixed_dataset(x_test=np.full((4, 2), 0.5, dtype=np.float32)).fingerprint() != base  # shape only
    # Moving a sample from test to train changes it even though the union is the same.
    path = labelled_npz(tmp_path)
    assert load_dataset("npz", path=path, split=0.6).fingerprint() != load_dataset("npz", path=path).fingerprint()
    a, b = load_dataset("npz", path=path), load_dataset("npz", path=path)
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64


def test_dataset_is_frozen_and_compact_repr(digits):
    with pytest.raises(AttributeError):
        digits.classes = 3  # type: ignore[misc]
    assert repr(digits).startswith("Dataset(name='digits'") and "\n" not in repr(digits)


def test_data_layer_imports_only_numpy_at_module_level():
    """adl.data imports of adl only the option schema type (`adl.ir.options`, for its sources'
    settings), and nothing heavy at module level."""
    files = sorted(DATA_DIR.glob("*.py"))
    assert files
    for file in files:
        tree = ast.parse(file.read_text(), filename=str(file))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in {"torch", "tvm", "jax"}, f"{file.name} imports {name}"
                assert top != "adl" or name == "adl.ir.options", f"{file.name} imports {name}"
        for node in tree.body:  # module level: sklearn and PIL only inside functions
            if isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "level", 0) == 0:
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for mod in mods:
                    assert mod.split(".")[0] not in {"sklearn", "PIL"}, f"{file.name} imports {mod} eagerly"
