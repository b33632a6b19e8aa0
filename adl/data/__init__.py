"""Dataset loading for adl: a source name and its options in, a train/test `Dataset` out.

It imports only `adl.ir.options` of adl (each source's settings schema, `DATA_SOURCES`, is an
`Option` tuple beside its loader), and only numpy at module level (scikit-learn and Pillow are
imported when the source that needs them is loaded).
"""

from __future__ import annotations

import os
from pathlib import Path

from adl.ir.options import Option

from . import idx, sources
from .dataset import DataError, Dataset, check_classes, check_split

__all__ = ["DATA_SOURCES", "DataError", "Dataset", "SOURCES", "default_data_path", "known_input_shape", "load_dataset"]

# Each source's settings schema, in the order the language reference lists them.
DATA_SOURCES: dict[str, tuple[Option, ...]] = {
    "digits": sources.DIGITS,
    "npz": sources.NPZ,
    "cifar10": sources.CIFAR10,
    "idx": idx.IDX,
    "fashion_mnist": idx.FASHION_MNIST,
    "images": sources.IMAGES,
}
SOURCES = tuple(sorted(DATA_SOURCES))


def load_dataset(
    source: str,
    *,
    path: str | os.PathLike[str] | None = None,
    split: float = 0.8,
    seed: int = 0,
    classes: int | None = None,
    image_size: tuple[int, int] | None = None,
    grayscale: bool = False,
    validation: float = 0.0,
) -> Dataset:
    """Load `source` and split it into training and test sets (and a validation split).

    Sources:
      - "digits": scikit-learn's 8x8 digits, x of shape (N, 1, 8, 8), values 0..16. No `path`.
      - "npz": `path` to an .npz with arrays `x` ((N, D), (N, H, W) or (N, C, H, W)) and
        `y` ((N,) integer labels); (N, H, W) gains a channel axis.
      - "cifar10": `path` to the CIFAR-10 "python version" folder (`cifar-10-batches-py`) or
        its parent. The official files decide the division: `data_batch_*` is the training
        set and `test_batch` the test set, so `split` and `seed` are ignored.
      - "idx": `path` to a folder of MNIST-style IDX files (the format of MNIST, Fashion-MNIST,
        KMNIST, EMNIST): `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
        `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each possibly gzipped (`.gz`). The
        train files are the training set and the t10k files the test set (`split` does not
        apply). Images (N, H, W) become x of shape (N, 1, H, W); ubyte pixels keep 0..255.
      - "fashion_mnist": the same files of Fashion-MNIST, in `path` or, without one, in
        `/usr/share/datasets/fashion-mnist` (Debian's package `dataset-fashion-mnist`); 10 classes.
      - "images": `path` to a folder with one subfolder of images per class; class indices
        follow the sorted subfolder names. Images become RGB (L with `grayscale=True`) and are
        resized to `image_size` (H, W) when given, else must all share one size.

    digits, npz and images are split by `split` (the training fraction, in (0, 1)), class by
    class, deterministically for a given `seed`. `classes`, when given, must cover every
    label. `image_size` and `grayscale` apply only to "images". `validation` > 0 holds that
    fraction of the training split out as `x_val`/`y_val` (class by class, seeded by `seed`):
    what `train` never sees, so nas and the passes after train can judge their choices honestly.

    Raises DataError (with `key` naming the offending option) for any problem with the data
    or the options.
    """
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r} (known: {', '.join(SOURCES)})", key="source")
    check_split(split)
    check_classes(classes)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}", key="seed")
    if source != "images":
        # Silently ignoring these would hide a spec mistake, e.g. expecting cifar10 to be resized.
        if image_size is not None:
            raise DataError(f"image_size only applies to source 'images', not {source!r}", key="image_size")
        if grayscale:
            raise DataError(f"grayscale only applies to source 'images', not {source!r}", key="grayscale")
    elif image_size is not None and not _is_size(image_size):
        raise DataError(f"image_size must be two positive integers (H, W), got {image_size!r}", key="image_size")

    if isinstance(validation, bool) or not isinstance(validation, (int, float)) or not 0 <= validation < 1:
        raise DataError(f"validation must be a fraction in [0, 1), got {validation!r}", key="validation")
    dataset = _load(source, path, split, seed, classes, image_size, grayscale)
    return dataset.with_validation(validation, seed) if validation > 0 else dataset


def _load(
    source: str,
    path: str | os.PathLike[str] | None,
    split: float,
    seed: int,
    classes: int | None,
    image_size: tuple[int, int] | None,
    grayscale: bool,
) -> Dataset:
    given = path is not None and str(path) != ""
    if source == "digits":
        if path is not None:
            raise DataError(f"source {source!r} takes no path", key="path")
        return sources.load_digits(split=split, seed=seed, classes=classes)
    if source == "fashion_mnist" and not given:
        return idx.load_fashion_mnist(None, classes=classes)
    if not given:
        raise DataError(f"source {source!r} needs a path", key="path")
    p = Path(os.path.expanduser(os.fspath(path)))
    if source == "npz":
        return sources.load_npz(p, split=split, seed=seed, classes=classes)
    if source == "cifar10":
        return sources.load_cifar10(p, classes=classes)
    if source == "idx":
        return idx.load_idx(p, classes=classes)
    if source == "fashion_mnist":
        return idx.load_fashion_mnist(p, classes=classes)
    return sources.load_images(
        p,
        split=split,
        seed=seed,
        classes=classes,
        image_size=None if image_size is None else (int(image_size[0]), int(image_size[1])),
        grayscale=bool(grayscale),
    )


def _is_size(size: object) -> bool:
    return (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size)
    )


def known_input_shape(
    source: str, *, image_size: tuple[int, int] | None = None, grayscale: bool = False
) -> tuple[int, ...] | None:
    """The per-sample input shape of `source` when it is fixed by the source itself (no file
    read, nothing imported): digits (1, 8, 8), cifar10 (3, 32, 32), fashion_mnist (1, 28, 28),
    images with an `image_size`; None when only the data can tell (npz, idx, images at their
    own size)."""
    fixed = {"digits": (1, 8, 8), "cifar10": (3, 32, 32), "fashion_mnist": (1, 28, 28)}
    if source in fixed:
        return fixed[source]
    if source == "images" and image_size is not None:
        return (1 if grayscale else 3, *image_size)
    return None


def default_data_path(source: str) -> Path | None:
    """Where `source` reads its files when no `path` is given (fashion_mnist: Debian's folder)."""
    return idx.FASHION_MNIST_DIR if source == "fashion_mnist" else None
