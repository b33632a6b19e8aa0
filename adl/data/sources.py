"""One loader per data source. Each returns a finished `Dataset` or raises `DataError`."""

from __future__ import annotations

import codecs
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np

from adl.ir.options import Option

from .dataset import (
    PATH,
    SEED,
    SPLIT,
    VALIDATION,
    DataError,
    Dataset,
    check_features,
    check_labels,
    make_dataset,
    require_file,
)
from .splits import stratified_split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MAX_IMAGE_SIDE = 8192

# What each source's `data` block accepts (`adl.driver.check` reads them; `load_dataset` takes them).
DIGITS: tuple[Option, ...] = (SPLIT, SEED, VALIDATION)
NPZ: tuple[Option, ...] = (PATH, SPLIT, SEED, VALIDATION)
CIFAR10: tuple[Option, ...] = (PATH, SEED, VALIDATION)
IMAGES: tuple[Option, ...] = (
    PATH,
    SPLIT,
    SEED,
    VALIDATION,
    Option("image_size", "int_list", None, "resize every image to [H, W]", low=1, high=MAX_IMAGE_SIDE),
    Option("grayscale", "bool", False, "read images as one channel"),
)


def _split_dataset(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    classes: int,
    split: float,
    seed: int,
    value_range: tuple[float, float],
    what: str,
) -> Dataset:
    train, test = stratified_split(y, split, seed)
    return make_dataset(name, x[train], y[train], x[test], y[test], classes, value_range, what)


# --- digits -----------------------------------------------------------------------------------


def load_digits(*, split: float, seed: int, classes: int | None) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (bundled with the wheel, no download)."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise DataError(f"source 'digits' needs scikit-learn ({e})", key="source") from None
    bunch = sk_load_digits()
    x = np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    n_classes = check_labels(y, classes, "the digits dataset")
    return _split_dataset("digits", x, y, n_classes, split, seed, (0.0, 16.0), "the digits dataset")


# --- npz --------------------------------------------------------------------------------------


def load_npz(path: Path, *, split: float, seed: int, classes: int | None) -> Dataset:
    """Arrays `x` ((N, D), (N, H, W) or (N, C, H, W)) and `y` ((N,) integer labels)."""
    what = f"npz file '{path}'"
    require_file(path, what)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{what} is not a valid .npz archive ({_one_line(e)})", key="path") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{what} holds a single .npy array, not an .npz archive with 'x' and 'y'", key="path")
    with archive:
        x = _npz_array(archive, "x", what)
        y = _npz_array(archive, "y", what)

    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{what}: array 'x' must be numeric, got dtype {x.dtype}", key="path")
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{what}: array 'x' must have shape (N, D), (N, H, W) or (N, C, H, W), got {x.shape}", key="path"
        )
    if y.ndim != 1:
        raise DataError(f"{what}: array 'y' must have shape (N,), got {y.shape}", key="path")
    if len(x) != len(y):
        raise DataError(f"{what}: x has {len(x)} samples but y has {len(y)} labels", key="path")
    if len(x) == 0:
        raise DataError(f"{what} has no samples (x has shape {x.shape})", key="path")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, reported just below
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{what}: array 'x' contains NaN or infinite values (after conversion to float32)", key="path")
    if x.ndim == 3:
        x = x[:, None]
    y = _integer_labels(y, what)
    n_classes = check_labels(y, classes, what)
    check_features(x, what)  # before x.min(), which an array without values cannot give
    value_range = (float(x.min()), float(x.max()))
    return _split_dataset("npz", x, y, n_classes, split, seed, value_range, what)


def _npz_array(archive: np.lib.npyio.NpzFile, key: str, what: str) -> np.ndarray:
    if key not in archive.files:
        found = ", ".join(f"'{k}'" for k in archive.files) or "no arrays"
        raise DataError(f"{what} has no array '{key}' (found: {found})", key="path")
    try:
        return archive[key]
    except ValueError as e:
        if "allow_pickle" in str(e):  # an object array: saved Python objects, not numbers
            raise DataError(f"{what}: array '{key}' must be numeric, got dtype object", key="path") from None
        raise DataError(f"{what}: array '{key}' cannot be read ({_one_line(e)})", key="path") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{what}: array '{key}' cannot be read ({_one_line(e)})", key="path") from None


def _integer_labels(y: np.ndarray, what: str) -> np.ndarray:
    """y as int64, accepting float arrays only when every value is a whole number."""
    if np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.floating):
        raise DataError(f"{what}: array 'y' must hold integer class labels, got dtype {y.dtype}", key="path")
    bad = y[~np.isfinite(y) | (y != np.round(y))]
    if len(bad):
        raise DataError(
            f"{what}: array 'y' must hold integer class labels, found {bad[0]!r} "
            f"({len(bad)} non-integer value{'s' if len(bad) != 1 else ''})",
            key="path",
        )
    return y.astype(np.int64)


# --- cifar10 ----------------------------------------------------------------------------------


def load_cifar10(path: Path, *, classes: int | None) -> Dataset:
    """The CIFAR-10 "python version": `data_batch_*` files for training, `test_batch` for test.

    The official train/test division is used as is; `split` does not apply. Whatever
    `data_batch_<n>` files exist are loaded (at least one), in numeric order.
    """
    folder = _cifar_folder(path)
    what = f"CIFAR-10 folder '{folder}'"
    batches = sorted(
        (p for p in folder.iterdir() if re.fullmatch(r"data_batch_\d+", p.name) and p.is_file()),
        key=lambda p: int(p.name.rsplit("_", 1)[1]),
    )
    if not batches:
        raise DataError(
            f"{what} has no data_batch_* files (expected the 'cifar-10-batches-py' folder or its parent)",
            key="path",
        )
    test_file = folder / "test_batch"
    if not test_file.is_file():
        raise DataError(f"{what} has no test_batch file", key="path")
    train = [_read_cifar_batch(p) for p in batches]
    x_test, y_test = _read_cifar_batch(test_file)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    # CIFAR-10 has 10 classes; a larger `classes` is allowed (labels then just leave some unused).
    n_classes = 10 if classes is None else classes
    check_labels(np.concatenate([y_train, y_test]), n_classes, what, key="path" if classes is None else "classes")
    return make_dataset("cifar10", x_train, y_train, x_test, y_test, n_classes, (0.0, 255.0), what)


def _cifar_folder(path: Path) -> Path:
    """`path` itself when it holds the batches, else its `cifar-10-batches-py` subfolder."""
    if not path.exists():
        raise DataError(f"CIFAR-10 folder '{path}' does not exist", key="path")
    if not path.is_dir():
        raise DataError(f"CIFAR-10 path '{path}' is not a folder", key="path")
    inner = path / "cifar-10-batches-py"
    has_batches = any(re.fullmatch(r"data_batch_\d+|test_batch", p.name) for p in path.iterdir())
    return inner if not has_batches and inner.is_dir() else path


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds (dicts, lists, bytes, numpy arrays).

    A pickle can run arbitrary code on load; a data path in a spec must not be able to.
    """

    _reconstruct = np.zeros(0).__reduce__()[0]  # numpy's array-rebuilding function
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol 2 spells bytes objects
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load '{module}.{name}'") from None


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    what = f"CIFAR-10 batch file '{file}'"
    try:
        with open(file, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"{what} cannot be read ({_one_line(e)})", key="path") from None
    except Exception as e:  # a corrupt pickle can fail in many ways (EOFError, ValueError, ...)
        raise DataError(f"{what} is not a valid CIFAR-10 pickle ({_one_line(e)})", key="path") from None
    if not isinstance(batch, dict):
        raise DataError(f"{what} does not hold a dict (got {type(batch).__name__})", key="path")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        found = ", ".join(repr(k) for k in batch) or "none"
        raise DataError(f"{what} has no b'data' and b'labels' entries (keys: {found})", key="path")
    try:
        data = np.asarray(data)
        labels = np.asarray(labels)
    except (TypeError, ValueError) as e:
        raise DataError(f"{what} has malformed data or labels ({_one_line(e)})", key="path") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or not np.issubdtype(data.dtype, np.number):
        raise DataError(
            f"{what} has data of shape {data.shape} and dtype {data.dtype}; expected (N, 3072) uint8", key="path"
        )
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{what} has {labels.size} labels (dtype {labels.dtype}) for {len(data)} images", key="path")
    # Rows are channel planes R, G, B of 32x32 each, row-major: exactly (3, 32, 32).
    return data.reshape(-1, 3, 32, 32).astype(np.float32), labels.astype(np.int64)


# --- images -----------------------------------------------------------------------------------


def load_images(
    path: Path,
    *,
    split: float,
    seed: int,
    classes: int | None,
    image_size: tuple[int, int] | None,
    grayscale: bool,
) -> Dataset:
    """A folder with one subfolder per class; the class index follows the sorted folder names."""
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError(f"source 'images' needs Pillow ({e})", key="source") from None
    what = f"image folder '{path}'"
    if not path.exists():
        raise DataError(f"{what} does not exist", key="path")
    if not path.is_dir():
        raise DataError(f"{what} is not a folder", key="path")
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{what} has no class subfolders (expected one subfolder of images per class)", key="path")
    if classes is not None and len(class_dirs) != classes:
        names = ", ".join(p.name for p in class_dirs)
        raise DataError(f"{what} has {len(class_dirs)} class subfolders ({names}) but classes={classes}", key="classes")

    images: list[np.ndarray] = []
    labels: list[int] = []
    first: tuple[Path, tuple[int, int]] | None = None  # the file that fixes the common size
    for label, class_dir in enumerate(class_dirs):
        files = sorted(
            p
            for p in class_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DataError(f"class folder '{class_dir}' has no image files ({', '.join(IMAGE_SUFFIXES)})", key="path")
        for file in files:
            pixels = _read_image(Image, file, image_size, grayscale)
            size = pixels.shape[1:]
            if first is None:
                first = (file, size)
            elif size != first[1]:
                raise DataError(
                    f"image file '{file}' is {size[0]}x{size[1]} (HxW) but '{first[0]}' is "
                    f"{first[1][0]}x{first[1][1]}; set image_size to resize all images",
                    key="path",
                )
            images.append(pixels)
            labels.append(label)
    x = np.stack(images)
    y = np.asarray(labels, dtype=np.int64)
    return _split_dataset("images", x, y, len(class_dirs), split, seed, (0.0, 255.0), what)


def _read_image(Image, file: Path, image_size: tuple[int, int] | None, grayscale: bool) -> np.ndarray:
    """One image as float32 (C, H, W), RGB or L, resized to image_size=(H, W) when given."""
    try:
        with Image.open(file) as im:
            im = im.convert("L" if grayscale else "RGB")
            if image_size is not None:
                im = im.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(im, dtype=np.float32)
    except Exception as e:  # Pillow raises many types for broken files (OSError, SyntaxError, ...)
        raise DataError(f"image file '{file}' cannot be read ({_one_line(e)})", key="path") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
