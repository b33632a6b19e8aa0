"""IDX files, the format of MNIST, Fashion-MNIST, KMNIST and EMNIST, and the two sources on them.

An IDX file is a 4-byte magic (two zero bytes, a data type code, the number of dimensions),
each dimension as a big-endian uint32, then the values, big-endian, in C order. The files are
usually shipped gzipped; the reader tells by the gzip magic bytes, not by the name.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from adl.ir.options import Option

from .dataset import SEED, VALIDATION, DataError, Dataset, check_labels, make_dataset, require_file
from .sources import _one_line

GZIP_MAGIC = b"\x1f\x8b"
DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_TYPE_NAMES = {0x08: "ubyte", 0x09: "sbyte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
# A header is four bytes and a uint32 per dimension, so a damaged one can promise terabytes.
# The largest IDX set known (EMNIST ByClass training images) holds 0.55 GB of data.
MAX_DATA_BYTES = 2 * 1024**3
_CHUNK = 1 << 20

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where Debian's dataset-fashion-mnist puts it
FASHION_MNIST_HINT = "install it with: apt-get install dataset-fashion-mnist (as root), or set path"
# (images, labels) of each official split; each file may also be gzipped, with a .gz suffix.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# What the `data idx` and `data fashion_mnist` blocks accept (`adl.driver.check` reads them). The
# files decide the train/test division, so neither takes `split`.
IDX: tuple[Option, ...] = (
    Option(
        "path",
        "path",
        doc="the folder of the IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        't10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each may be .gz), e.g. `path = "data/mnist"` '
        "(relative to the spec)",
    ),
    SEED,
    VALIDATION,
)
FASHION_MNIST: tuple[Option, ...] = (
    Option(
        "path",
        "path",
        None,
        f"the folder of Fashion-MNIST's IDX files (default: {FASHION_MNIST_DIR}, "
        "from `apt-get install dataset-fashion-mnist`)",
    ),
    SEED,
    VALIDATION,
)


# --- the reader -------------------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """The array an IDX file holds, raw or gzipped, in native byte order.

    Raises DataError (key "path") naming the file for anything that is not a whole, well-formed
    IDX file: a missing file, a bad magic, an unknown type code, a dimension of 0 or data
    beyond `MAX_DATA_BYTES`, data shorter or longer than the header promises, a corrupt gzip.
    """
    path = Path(path)
    what = f"IDX file '{path}'"
    require_file(path, what)
    try:
        with open(path, "rb") as raw:
            if raw.read(2) == GZIP_MAGIC:
                raw.seek(0)
                with gzip.GzipFile(fileobj=raw) as stream:
                    return _read_stream(stream, what, size=None)
            raw.seek(0)
            return _read_stream(raw, what, size=path.stat().st_size)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{what} is not a valid gzip stream ({_one_line(e)})", key="path") from None
    except OSError as e:
        raise DataError(f"{what} cannot be read ({_one_line(e)})", key="path") from None


def _read_stream(stream: BinaryIO, what: str, size: int | None) -> np.ndarray:
    """Header and data from `stream`; `size` is the file's size when it is not compressed."""
    magic = _read_up_to(stream, 4)
    if not magic:
        raise DataError(f"{what} is empty", key="path")
    if len(magic) < 4 or magic[:2] != b"\0\0":
        found = " ".join(f"{b:02x}" for b in magic) or "none"
        raise DataError(
            f"{what} does not start with an IDX magic number: found bytes {found}, expected 00 00 <type> <dimensions>",
            key="path",
        )
    code, ndim = magic[2], magic[3]
    if code not in DTYPES:
        known = ", ".join(f"0x{c:02X} {n}" for c, n in _TYPE_NAMES.items())
        raise DataError(f"{what} has unknown data type code 0x{code:02X} (known: {known})", key="path")
    if ndim == 0:
        raise DataError(f"{what} declares 0 dimensions", key="path")
    dims = _read_up_to(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(
            f"{what} ends inside its header: {ndim} dimensions need {4 * ndim} bytes, found {len(dims)}", key="path"
        )
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    dtype = DTYPES[code]
    described = f"shape {shape} of {_TYPE_NAMES[code]}"
    if 0 in shape:
        raise DataError(f"{what} declares {described}: a dimension of size 0", key="path")
    promised = dtype.itemsize * math.prod(shape)
    if size is not None:  # not compressed: the file's size tells without reading
        _check_length(size - 4 - 4 * ndim, promised, what, described)
    if promised > MAX_DATA_BYTES:
        raise DataError(
            f"{what} declares {described}: {promised} bytes, more than the "
            f"{MAX_DATA_BYTES // 1024**3} GiB this reader accepts (a damaged header?)",
            key="path",
        )
    data = _read_up_to(stream, promised)
    _check_length(len(data) + _count_rest(stream), promised, what, described)
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _check_length(held: int, promised: int, what: str, described: str) -> None:
    if held < promised:
        raise DataError(f"{what} holds {held} bytes of data, the header promises {promised} ({described})", key="path")
    if held > promised:
        raise DataError(
            f"{what} has {held - promised} bytes after the {promised} bytes of data its header declares ({described})",
            key="path",
        )


def _read_up_to(stream: BinaryIO, n: int) -> bytes:
    """Up to `n` bytes, read in chunks so that memory grows with what is there, not with `n`."""
    parts, left = [], n
    while left > 0:
        part = stream.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _count_rest(stream: BinaryIO) -> int:
    """How many bytes are left (up to MAX_DATA_BYTES, so a gzip bomb ends too), none kept."""
    count = 0
    while count <= MAX_DATA_BYTES and (part := stream.read(_CHUNK)):
        count += len(part)
    return count


# --- the sources ------------------------------------------------------------------------------


def load_idx(folder: Path, *, classes: int | None) -> Dataset:
    """A folder of the four MNIST-style IDX files: train-* is the training set, t10k-* the test set."""
    return _load_folder("idx", folder, "IDX folder", classes, default_classes=None)


def load_fashion_mnist(folder: Path | None, *, classes: int | None) -> Dataset:
    """Fashion-MNIST's IDX files: in `folder`, else in FASHION_MNIST_DIR (Debian's package)."""
    if folder is None:
        folder = FASHION_MNIST_DIR
        if not folder.is_dir():
            raise DataError(f"Fashion-MNIST folder '{folder}' does not exist; {FASHION_MNIST_HINT}", key="path")
    return _load_folder("fashion_mnist", folder, "Fashion-MNIST folder", classes, default_classes=10)


def _load_folder(name: str, folder: Path, noun: str, classes: int | None, default_classes: int | None) -> Dataset:
    what = f"{noun} '{folder}'"
    if not folder.exists():
        raise DataError(f"{what} does not exist", key="path")
    if not folder.is_dir():
        raise DataError(f"{what} is not a folder", key="path")
    files = {split: tuple(_find(folder, base, what) for base in bases) for split, bases in SPLIT_FILES.items()}
    x_train, y_train = _read_pair(*files["train"])
    x_test, y_test = _read_pair(*files["test"])
    if x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(f"{what}: test images are {_hw(x_test)} but training images {_hw(x_train)}", key="path")
    y_all = np.concatenate([y_train, y_test])
    # Like cifar10: a known class count blames the labels on the files unless `classes` was given.
    n_classes = check_labels(
        y_all, default_classes if classes is None else classes, what, key="classes" if classes is not None else "path"
    )
    pixels = x_train.dtype == np.uint8
    x_train, x_test = _as_float(x_train, files["train"][0]), _as_float(x_test, files["test"][0])
    value_range = (
        (0.0, 255.0) if pixels else (float(min(x_train.min(), x_test.min())), float(max(x_train.max(), x_test.max())))
    )
    return make_dataset(name, x_train, y_train, x_test, y_test, n_classes, value_range, what)


def _find(folder: Path, base: str, what: str) -> Path:
    """`base` in `folder`, or `base`.gz; the uncompressed file when both exist (faster to read)."""
    for candidate in (folder / base, folder / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{what} has no file {base} or {base}.gz", key="path")


def _read_pair(images_file: Path, labels_file: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images_file), read_idx(labels_file)
    if x.ndim != 3:
        raise DataError(
            f"IDX file '{images_file}' holds an array of shape {x.shape}; images must be "
            "(N, H, W), 3 dimensions (one channel)",
            key="path",
        )
    if y.ndim != 1:
        raise DataError(f"IDX file '{labels_file}' holds an array of shape {y.shape}; labels must be (N,)", key="path")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"IDX file '{labels_file}' holds {y.dtype} values; labels must be integers", key="path")
    if len(x) != len(y):
        raise DataError(
            f"IDX files '{images_file}' and '{labels_file}' hold {len(x)} images but {len(y)} labels", key="path"
        )
    return x, y.astype(np.int64)


def _as_float(x: np.ndarray, file: Path) -> np.ndarray:
    """(N, H, W) as float32 (N, 1, H, W); NaN, or a float64 beyond float32's range, is an error."""
    floats = np.issubdtype(x.dtype, np.floating)
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)[:, None]
    if floats and not np.isfinite(x).all():
        raise DataError(f"IDX file '{file}' contains NaN or infinite values (as float32)", key="path")
    return x


def _hw(x: np.ndarray) -> str:
    return f"{x.shape[1]}x{x.shape[2]}"
