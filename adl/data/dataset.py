"""The `Dataset` record, the `DataError` exception, and the helpers and settings every source shares."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from adl.ir.options import Option

from .splits import shuffled_split, stratified_split

# A split must leave at least this many samples on each side: a one-sample test set gives a
# meaningless accuracy and a one-sample training batch breaks batch statistics.
MIN_SPLIT_SAMPLES = 2
# Sources whose files decide the train/test division: `split` does not apply to them.
OFFICIAL_SPLITS = frozenset({"cifar10", "fashion_mnist", "idx"})
MAX_SEED = 2**32 - 1  # what numpy's and torch's seeds take

# The settings of the `data` block that several sources share (each source's schema lists its own).
SPLIT = Option(
    "split", "fraction", 0.8, "fraction of samples used for training (the rest is the test split)", low=0.0, high=1.0
)
SEED = Option("seed", "int", 0, "seed of the train/test and validation splits", low=0, high=MAX_SEED)
VALIDATION = Option(
    "validation",
    "fraction",
    0.0,
    "fraction of the training split held out, never trained on: nas chooses its architecture "
    "on it, amc and haq score their policies on it (0: nas holds out 20 % of the training split, "
    "amc and haq score on training images)",
    low=0.0,
    high=1.0,
)
PATH = Option("path", "path", doc='where the data lies, e.g. `path = "data/x.npz"` (relative to the spec)')


class DataError(Exception):
    """A user-facing data problem.

    `message` is one line meant to be shown as is (no traceback needed); `key` names the spec
    option it relates to ("path", "split", "source", "classes", ...) so the compiler can point
    at it, or is None when no single option is to blame.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.message = message
        self.key = key


def require_file(path: Path, what: str) -> None:
    """A DataError at the spec's `path` unless `path` is an existing file; `what` names it
    in the message, e.g. "npz file 'x.npz'"."""
    if not path.exists():
        raise DataError(f"{what} does not exist", key="path")
    if not path.is_file():
        raise DataError(f"{what} is not a file", key="path")


# eq=False: numpy arrays make field-wise equality and hashing meaningless (and raise), so a
# Dataset compares and hashes by identity; use `fingerprint()` to compare contents.
@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    name: str
    x_train: np.ndarray  # float32, raw values as the source gives them (not normalised)
    y_train: np.ndarray  # int64 in [0, classes)
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    input_shape: tuple[int, ...]  # per sample: (C, H, W) for images, (D,) for flat vectors
    value_range: tuple[float, float]  # nominal range of raw inputs
    mean: tuple[float, ...]  # per-channel mean of x_train (one value for flat vectors)
    std: tuple[float, ...]  # per-channel std of x_train, 1.0 where a channel is constant
    # Held out of the training split (`with_validation`): never trained on, it scores choices
    # made after training (amc's and haq's policies). Empty unless the spec asks for it.
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    @property
    def has_validation(self) -> bool:
        return self.y_val is not None and len(self.y_val) > 0

    def scoring_sample(self, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Images that score choices made after training (amc's and haq's policies): up to
        `samples` of the validation split, which the network never trained on; without one, a
        seeded subset of the training split (AMC's and HAQ's practice). Never the test split.

        Training images are a weak judge on small data: the network has fit them, so most good
        policies score the same (0.998 on digits) and a reward cannot rank them."""
        if not self.has_validation:
            return self.training_sample(samples, seed)
        chosen, _ = shuffled_split(len(self.y_val), samples, seed)
        return np.ascontiguousarray(self.x_val[chosen]), np.ascontiguousarray(self.y_val[chosen])

    def training_sample(self, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to `samples` training samples, drawn by `seed` (what least-squares reconstruction fits on)."""
        chosen, _ = shuffled_split(len(self.y_train), samples, seed)
        return np.ascontiguousarray(self.x_train[chosen]), np.ascontiguousarray(self.y_train[chosen])

    def with_validation(self, fraction: float, seed: int) -> "Dataset":
        """This dataset with `fraction` of its training split held out as the validation split,
        class by class (a class of one training sample stays in training), deterministically for
        `seed`. The normalisation statistics are those of the remaining training samples."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise DataError(
                f"validation must be a fraction strictly between 0 and 1, got {fraction!r}", key="validation"
            )
        if self.has_validation:
            raise DataError("this dataset already has a validation split", key="validation")
        # The validation draw must not repeat the train/test draw of the same seed.
        train, val = stratified_split(self.y_train, 1 - fraction, seed + 1)
        if len(val) < MIN_SPLIT_SAMPLES or len(train) < MIN_SPLIT_SAMPLES:
            raise DataError(
                f"validation = {fraction:g} of {len(self.y_train)} training samples leaves "
                f"{len(val)} for validation and {len(train)} for training; each needs at least "
                f"{MIN_SPLIT_SAMPLES}",
                key="validation",
            )
        x_train = np.ascontiguousarray(self.x_train[train])
        mean, std = channel_stats(x_train)
        return replace(
            self,
            x_train=x_train,
            y_train=np.ascontiguousarray(self.y_train[train]),
            x_val=np.ascontiguousarray(self.x_train[val]),
            y_val=np.ascontiguousarray(self.y_train[val]),
            mean=mean,
            std=std,
        )

    def fingerprint(self) -> str:
        """sha256 hex digest of the arrays (dtype, shape and bytes) and `classes`.

        Stable across runs and platforms (bytes are hashed little-endian), so it can key a
        checkpoint cache: any change to the data, the split or the class count changes it.
        """
        h = hashlib.sha256()
        h.update(f"classes={self.classes};".encode())
        fields = ("x_train", "y_train", "x_test", "y_test") + (("x_val", "y_val") if self.has_validation else ())
        for field in fields:
            a = getattr(self, field)
            a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
            h.update(f"{field}:{a.dtype.str}:{a.shape};".encode())
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, "
            f"{f'validation={len(self.y_val)}, ' if self.has_validation else ''}test={len(self.y_test)}, "
            f"classes={self.classes}, input_shape={self.input_shape}, "
            f"value_range={self.value_range})"
        )


def check_split(split: float) -> None:
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not math.isfinite(split) or not 0 < split < 1:
        raise DataError(f"split must be a number strictly between 0 and 1, got {split!r}", key="split")


def check_labels(y: np.ndarray, classes: int | None, what: str, key: str = "classes") -> int:
    """Check that integer labels lie in [0, classes); returns the class count.

    When `classes` is None it is inferred as max(label) + 1. `what` names the data in the
    message ("npz file '/x.npz'"); `key` is the option blamed for labels >= classes.
    """
    if classes is None:
        bad = y[y < 0]
        if len(bad):
            raise DataError(f"{what} has negative labels: {_describe_labels(bad)}", key="path")
        return int(y.max()) + 1 if len(y) else 0
    bad = y[(y < 0) | (y >= classes)]
    if len(bad):
        raise DataError(
            f"{what} has labels outside [0, {classes}): {_describe_labels(bad)}",
            key=key,
        )
    return classes


def _describe_labels(bad: np.ndarray, limit: int = 5) -> str:
    """'label 7 (3 samples), label 9 (1 sample)' for the offending label values."""
    values, counts = np.unique(bad, return_counts=True)
    parts = [f"label {v} ({c} sample{'s' if c != 1 else ''})" for v, c in zip(values, counts)]
    if len(parts) > limit:
        parts = parts[:limit] + [f"and {len(parts) - limit} more values"]
    return ", ".join(parts)


def check_classes(classes: int | None) -> None:
    if classes is None:
        return
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 2:
        raise DataError(f"classes must be an integer of at least 2, got {classes!r}", key="classes")


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (N, C, H, W) data, or one overall value for (N, D) data.

    Computed channel by channel in float64 to keep memory bounded and sums accurate. A
    constant channel gets std 1.0 so that normalising by it never divides by zero.
    """
    channels = [x[:, c] for c in range(x.shape[1])] if x.ndim == 4 else [x]
    means, stds = [], []
    for xc in channels:
        means.append(float(np.mean(xc, dtype=np.float64)))
        s = float(np.std(xc, dtype=np.float64))
        stds.append(s if s > 0 and math.isfinite(s) else 1.0)
    return tuple(means), tuple(stds)


def check_features(x: np.ndarray, what: str) -> None:
    """DataError for samples without a single value (a zero-sized axis, e.g. x of shape (N, 0))."""
    if 0 in x.shape[1:]:
        raise DataError(
            f"{what} has samples of shape {tuple(x.shape[1:])}: no features to learn from "
            "(every axis after the first must be at least 1)",
            key="path",
        )


def check_two_classes(y: np.ndarray, what: str) -> None:
    """DataError for labels of fewer than two classes: nothing to tell apart."""
    labels = np.unique(y)
    if len(labels) == 0:
        raise DataError(f"{what} has no samples", key="path")
    if len(labels) < 2:
        raise DataError(
            f"{what} has samples of one class only (label {labels[0]}): a classifier needs samples "
            "of 2 classes at least",
            key="path",
        )


def make_dataset(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: int,
    value_range: tuple[float, float],
    what: str,
) -> Dataset:
    """Assemble a Dataset with the canonical dtypes, after checking that samples have features,
    that neither split is tiny, and that the labels hold two classes at least."""
    check_features(x_train, what)
    for split_name, ys in (("training", y_train), ("test", y_test)):
        if len(ys) < MIN_SPLIT_SAMPLES:
            total = len(y_train) + len(y_test)
            raise DataError(
                f"{what} leaves {len(ys)} {split_name} sample(s) out of {total}; "
                f"each split needs at least {MIN_SPLIT_SAMPLES}",
                # With enough samples a different split fraction fixes it; otherwise the data must grow.
                key="split" if total >= 2 * MIN_SPLIT_SAMPLES and name not in OFFICIAL_SPLITS else "path",
            )
    check_two_classes(np.concatenate([y_train, y_test]), what)
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    mean, std = channel_stats(x_train)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        classes=int(classes),
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        value_range=(float(value_range[0]), float(value_range[1])),
        mean=mean,
        std=std,
    )
