"""Tests for adl.data.idx: the IDX reader on tiny generated files (raw and gzipped, whole and
damaged), the `idx` and `fashion_mnist` sources, and both through a spec."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import adl.data.idx as idx_module
from adl.data import DataError, default_data_path, known_input_shape, load_dataset
from adl.data.idx import FASHION_MNIST_DIR, read_idx
from adl.driver.check import DATA_SOURCES, load_spec
from adl.driver.depfile import dependencies
from adl.driver.run import load_data
from adl.dsl.errors import AdlError

CODES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(array: np.ndarray, code: int = 0x08, shape: tuple[int, ...] | None = None) -> bytes:
    """An IDX file of `array` as type `code`; `shape` overrides the header's dimensions."""
    shape = array.shape if shape is None else shape
    header = bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    return header + np.ascontiguousarray(array, dtype=CODES[code]).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def message(path: Path) -> str:
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert info.value.key == "path" and "\n" not in info.value.message
    return info.value.message


# --- the reader -------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("code", sorted(CODES), ids=lambda c: f"0x{c:02X}")
def test_every_type_code_round_trips(tmp_path, code, gz):
    rng = np.random.default_rng(code)
    dtype = np.dtype(CODES[code]).newbyteorder("=")
    if dtype.kind == "f":
        array = (rng.normal(size=(3, 2, 5)) * 100).astype(dtype)
    else:  # the type's whole range, both ends included
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=(3, 2, 5), endpoint=True).astype(dtype)
        array.flat[:2] = info.min, info.max
    got = read_idx(write(tmp_path / "a", idx_bytes(array, code), gz))
    assert got.dtype == array.dtype and got.dtype.isnative and got.shape == (3, 2, 5)
    np.testing.assert_array_equal(got, array)
    assert got.flags.writeable


def test_gzip_is_told_by_its_magic_bytes_not_by_the_name(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "plain-name", idx_bytes(array), gz=True)), array)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "raw.gz", idx_bytes(array))), array)


def test_one_dimensional_labels(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "l", idx_bytes(labels))), labels)


def test_missing_empty_and_not_a_file(tmp_path):
    assert message(tmp_path / "nope") == f"IDX file '{tmp_path / 'nope'}' does not exist"
    assert message(tmp_path) == f"IDX file '{tmp_path}' is not a file"
    assert message(write(tmp_path / "e", b"")) == f"IDX file '{tmp_path / 'e'}' is empty"


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_damaged_headers(tmp_path, gz):
    f = tmp_path / "d"
    assert message(write(f, b"PK\x03\x04rest", gz)) == (
        f"IDX file '{f}' does not start with an IDX magic number: found bytes 50 4b 03 04, "
        "expected 00 00 <type> <dimensions>"
    )
    assert message(write(f, b"\0\0", gz)) == (
        f"IDX file '{f}' does not start with an IDX magic number: found bytes 00 00, expected 00 00 <type> <dimensions>"
    )
    assert message(write(f, b"\0\0\x07\x01\0\0\0\x01x", gz)) == (
        f"IDX file '{f}' has unknown data type code 0x07 (known: 0x08 ubyte, 0x09 sbyte, 0x0B int16, "
        "0x0C int32, 0x0D float32, 0x0E float64)"
    )
    assert message(write(f, b"\0\0\x08\x00", gz)) == f"IDX file '{f}' declares 0 dimensions"
    assert message(write(f, b"\0\0\x08\x03\0\0\0\x02\0\0", gz)) == (
        f"IDX file '{f}' ends inside its header: 3 dimensions need 12 bytes, found 6"
    )
    zero = idx_bytes(np.zeros((0, 28, 28), dtype=np.uint8))
    assert message(write(f, zero, gz)) == (f"IDX file '{f}' declares shape (0, 28, 28) of ubyte: a dimension of size 0")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_truncated_and_trailing_data(tmp_path, gz):
    f = tmp_path / "d"
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert message(write(f, idx_bytes(array)[:-1], gz)) == (
        f"IDX file '{f}' holds 5 bytes of data, the header promises 6 (shape (2, 3) of ubyte)"
    )
    assert message(write(f, idx_bytes(array) + b"xyz", gz)) == (
        f"IDX file '{f}' has 3 bytes after the 6 bytes of data its header declares (shape (2, 3) of ubyte)"
    )
    ints = np.arange(6, dtype=np.int32)
    assert message(write(f, idx_bytes(ints, 0x0C)[:-2], gz)) == (
        f"IDX file '{f}' holds 22 bytes of data, the header promises 24 (shape (6,) of int32)"
    )


def test_an_absurd_header_allocates_nothing(tmp_path):
    """A damaged header can promise 2^96 bytes: a raw file is judged by its size, a gzip stream
    by the reader's limit, before anything is read."""
    big = (2**32 - 1,) * 3
    f = tmp_path / "d"
    data = idx_bytes(np.zeros(4, dtype=np.uint8), shape=big)
    promised = (2**32 - 1) ** 3
    assert message(write(f, data)) == (
        f"IDX file '{f}' holds 4 bytes of data, the header promises {promised} (shape {big} of ubyte)"
    )
    assert message(write(f, data, gz=True)) == (
        f"IDX file '{f}' declares shape {big} of ubyte: {promised} bytes, more than the 2 GiB this "
        "reader accepts (a damaged header?)"
    )


def test_corrupt_gzip_stream(tmp_path):
    f = tmp_path / "d"
    packed = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    f.write_bytes(packed[: len(packed) // 2])
    assert message(f) == (
        f"IDX file '{f}' is not a valid gzip stream (Compressed file ended before the end-of-stream marker was reached)"
    )
    f.write_bytes(packed[:12] + bytes(b ^ 0xFF for b in packed[12:-8]) + packed[-8:])
    assert message(f).startswith(f"IDX file '{f}' is not a valid gzip stream (")
    f.write_bytes(b"\x1f\x8bnot gzip at all")
    assert message(f).startswith(f"IDX file '{f}' is not a valid gzip stream (")


# --- the sources ------------------------------------------------------------------------------


def idx_folder(folder: Path, train: int = 12, test: int = 6, classes: int = 3, side: int = 4, gz: bool = False) -> Path:
    """The four MNIST files of tiny side x side images, labels cycling through `classes`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        x = rng.integers(0, 256, size=(n, side, side)).astype(np.uint8)
        y = (np.arange(n) % classes).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write(folder / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(x), gz)
        write(folder / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(y), gz)
    return folder


def load_error(source: str, key: str = "path", **options) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(source, **options)
    assert info.value.key == key and "\n" not in info.value.message
    return info.value.message


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_idx_folder_uses_the_official_split(tmp_path, gz):
    folder = idx_folder(tmp_path / "mnist", gz=gz)
    ds = load_dataset("idx", path=folder)
    assert (len(ds.y_train), len(ds.y_test), ds.classes) == (12, 6, 3)
    assert ds.input_shape == (1, 4, 4) and ds.x_train.dtype == np.float32 and ds.value_range == (0.0, 255.0)
    raw = read_idx(folder / f"train-images-idx3-ubyte{'.gz' if gz else ''}")
    np.testing.assert_array_equal(ds.x_train[:, 0], raw.astype(np.float32))  # raw pixels, in file order
    np.testing.assert_array_equal(ds.y_test, np.arange(6) % 3)
    assert load_dataset("idx", path=folder, split=0.3, seed=5).fingerprint() == ds.fingerprint()


def test_idx_validation_is_held_out_of_the_training_files(tmp_path):
    folder = idx_folder(tmp_path / "mnist", train=36)
    ds = load_dataset("idx", path=folder, validation=0.25, seed=1)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (27, 9, 6)
    assert ds.fingerprint() != load_dataset("idx", path=folder, validation=0.25, seed=2).fingerprint()


def test_raw_file_is_preferred_over_gz_and_either_will_do(tmp_path):
    folder = idx_folder(tmp_path / "m")
    labels = folder / "t10k-labels-idx1-ubyte"
    write(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.full(6, 2, dtype=np.uint8)), gz=True)
    np.testing.assert_array_equal(load_dataset("idx", path=folder).y_test, np.arange(6) % 3)
    labels.unlink()
    np.testing.assert_array_equal(load_dataset("idx", path=folder).y_test, np.full(6, 2))


def test_idx_folder_errors(tmp_path):
    folder = idx_folder(tmp_path / "m")
    assert load_error("idx", path=tmp_path / "none") == f"IDX folder '{tmp_path / 'none'}' does not exist"
    file = folder / "train-images-idx3-ubyte"
    assert load_error("idx", path=file) == f"IDX folder '{file}' is not a folder"
    assert load_error("idx") == "source 'idx' needs a path"
    (folder / "t10k-labels-idx1-ubyte").unlink()
    assert load_error("idx", path=folder) == (
        f"IDX folder '{folder}' has no file t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz"
    )


def test_images_and_labels_must_match(tmp_path):
    folder = idx_folder(tmp_path / "m")
    images, labels = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    write(labels, idx_bytes(np.zeros(11, dtype=np.uint8)))
    assert load_error("idx", path=folder) == f"IDX files '{images}' and '{labels}' hold 12 images but 11 labels"
    write(labels, idx_bytes(np.zeros((12, 1), dtype=np.uint8)))
    assert load_error("idx", path=folder) == (
        f"IDX file '{labels}' holds an array of shape (12, 1); labels must be (N,)"
    )
    write(labels, idx_bytes(np.zeros(12), 0x0D))
    assert load_error("idx", path=folder) == f"IDX file '{labels}' holds float32 values; labels must be integers"
    write(images, idx_bytes(np.zeros((12, 4, 4, 3), dtype=np.uint8)))
    assert load_error("idx", path=folder) == (
        f"IDX file '{images}' holds an array of shape (12, 4, 4, 3); images must be (N, H, W), "
        "3 dimensions (one channel)"
    )
    write(images, idx_bytes(np.zeros((12, 5, 5), dtype=np.uint8)))
    write(labels, idx_bytes(np.zeros(12, dtype=np.uint8)))
    assert load_error("idx", path=folder) == f"IDX folder '{folder}': test images are 4x4 but training images 5x5"


def test_labels_and_classes(tmp_path):
    folder = idx_folder(tmp_path / "m", classes=3)
    assert load_dataset("idx", path=folder, classes=5).classes == 5
    assert load_error("idx", "classes", path=folder, classes=2) == (
        f"IDX folder '{folder}' has labels outside [0, 2): label 2 (6 samples)"
    )
    write(folder / "t10k-labels-idx1-ubyte", idx_bytes(np.array([0, 1, -1, 0, 1, 2], dtype=np.int8), 0x09))
    assert "has negative labels: label -1 (1 sample)" in load_error("idx", path=folder)


def test_float_images_keep_their_values_and_refuse_nan(tmp_path):
    folder = idx_folder(tmp_path / "m")
    x = np.linspace(-1, 1, 12 * 16).reshape(12, 4, 4)
    write(folder / "train-images-idx3-ubyte", idx_bytes(x, 0x0D))
    ds = load_dataset("idx", path=folder)
    np.testing.assert_array_equal(ds.x_train[:, 0], x.astype(np.float32))  # taken as they are
    assert ds.value_range == (-1.0, float(ds.x_test.max()))  # the data's own range, not 0..255
    x[3, 1, 1] = np.nan
    write(folder / "train-images-idx3-ubyte", idx_bytes(x, 0x0D))
    assert load_error("idx", path=folder) == (
        f"IDX file '{folder / 'train-images-idx3-ubyte'}' contains NaN or infinite values (as float32)"
    )


def test_too_few_samples_blame_the_files_not_split(tmp_path):
    folder = idx_folder(tmp_path / "m", test=1)
    assert "leaves 1 test sample(s)" in load_error("idx", path=folder)


def test_fashion_mnist_default_folder_missing_gives_the_install_hint(tmp_path, monkeypatch):
    missing = tmp_path / "fashion-mnist"
    monkeypatch.setattr(idx_module, "FASHION_MNIST_DIR", missing)
    assert load_error("fashion_mnist") == (
        f"Fashion-MNIST folder '{missing}' does not exist; install it with: apt-get install "
        "dataset-fashion-mnist (as root), or set path"
    )
    assert default_data_path("fashion_mnist") == missing
    assert load_error("fashion_mnist", path=missing) == f"Fashion-MNIST folder '{missing}' does not exist"


def test_fashion_mnist_from_a_path_has_ten_classes(tmp_path, monkeypatch):
    folder = idx_folder(tmp_path / "f", classes=3, gz=True)
    monkeypatch.setattr(idx_module, "FASHION_MNIST_DIR", folder)
    for ds in (load_dataset("fashion_mnist", path=folder), load_dataset("fashion_mnist")):
        assert (ds.name, ds.classes, len(ds.y_train), len(ds.y_test)) == ("fashion_mnist", 10, 12, 6)
    write(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.array([0, 1, 2, 0, 1, 10], dtype=np.uint8)), gz=True)
    assert load_error("fashion_mnist", path=folder) == (
        f"Fashion-MNIST folder '{folder}' has labels outside [0, 10): label 10 (1 sample)"
    )


def test_shapes_known_without_reading_and_the_spec_schema():
    assert known_input_shape("fashion_mnist") == (1, 28, 28)
    assert known_input_shape("idx") is None
    assert default_data_path("idx") is None
    for source in ("idx", "fashion_mnist"):
        assert [o.name for o in DATA_SOURCES[source]] == ["path", "seed", "validation"]
    path = DATA_SOURCES["fashion_mnist"][0]
    assert not path.required and str(FASHION_MNIST_DIR) in path.doc
    assert DATA_SOURCES["idx"][0].required


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_the_installed_fashion_mnist():
    ds = load_dataset("fashion_mnist")
    assert (len(ds.y_train), len(ds.y_test), ds.classes, ds.input_shape) == (60000, 10000, 10, (1, 28, 28))
    assert sorted(np.unique(ds.y_test)) == list(range(10)) and ds.value_range == (0.0, 255.0)
    assert 0 <= ds.x_train.min() and ds.x_train.max() <= 255


# --- through a spec ---------------------------------------------------------------------------

SPEC = """task classify {{ classes = 3 }}
data {data}
model cnn()
pipeline {{ train lower }}
"""


def spec_in(tmp_path: Path, data: str):
    file = tmp_path / "s.adl"
    file.write_text(SPEC.format(data=data))
    return load_spec(file.read_text(), str(file))


def test_a_spec_reads_an_idx_folder_relative_to_itself(tmp_path):
    idx_folder(tmp_path / "mnist", gz=True)
    spec = spec_in(tmp_path, 'idx(path = "mnist", validation = 25 %)')
    assert spec.data.path == str((tmp_path / "mnist").resolve())
    ds = load_data(spec)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (9, 3, 6)
    deps = dependencies(spec, [])
    assert (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").resolve() in deps


def test_a_missing_idx_folder_is_a_caret_error_at_check_time(tmp_path):
    with pytest.raises(AdlError) as info:
        spec_in(tmp_path, 'idx(path = "mnist")')
    assert info.value.render() == (
        f"{tmp_path / 's.adl'}:2:17: error: data path 'mnist' does not exist\n"
        '   2 | data idx(path = "mnist")\n'
        "     |                 ^~~~~~~\n"
        f"  note: looked for {(tmp_path / 'mnist').resolve()}"
    )


def test_a_damaged_idx_folder_is_a_caret_error_at_the_data_block(tmp_path):
    folder = idx_folder(tmp_path / "mnist")
    (folder / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08")
    spec = spec_in(tmp_path, 'idx { path = "mnist" }')
    with pytest.raises(AdlError) as info:
        load_data(spec)
    file = folder.resolve() / "train-images-idx3-ubyte"
    assert info.value.render().splitlines() == [
        f"{tmp_path / 's.adl'}:2:1: error: IDX file '{file}' does not start with an IDX magic number: "
        "found bytes 00 00 08, expected 00 00 <type> <dimensions>",
        '   2 | data idx { path = "mnist" }',
        "     | ^~~~~~~~~~~~~~~~~~~~~~~~~~~",
    ]


def test_fashion_mnist_without_its_folder_checks_but_fails_to_load_with_the_hint(tmp_path, monkeypatch):
    missing = tmp_path / "absent"
    monkeypatch.setattr(idx_module, "FASHION_MNIST_DIR", missing)
    spec = spec_in(tmp_path, "fashion_mnist")  # it checks: the default folder is the data layer's business
    assert spec.data.path is None
    with pytest.raises(AdlError) as info:
        load_data(spec)
    lines = info.value.render().splitlines()
    assert lines[0] == (
        f"{tmp_path / 's.adl'}:2:1: error: Fashion-MNIST folder '{missing}' does not exist; "
        "install it with: apt-get install dataset-fashion-mnist (as root), or set path"
    )
    assert lines[1:] == ["   2 | data fashion_mnist", "     | ^~~~~~~~~~~~~~~~~~"]
    idx_folder(missing, gz=True)  # once installed, a depfile names the default folder's files
    assert (missing / "t10k-images-idx3-ubyte.gz").resolve() in dependencies(
        spec, [], data_path=default_data_path("fashion_mnist")
    )


def test_split_is_not_a_setting_of_the_official_split_sources(tmp_path):
    idx_folder(tmp_path / "mnist")
    for data in ('idx(path = "mnist", split = 0.5)', "fashion_mnist { split = 0.5 }"):
        with pytest.raises(AdlError) as info:
            spec_in(tmp_path, data)
        assert "unknown setting 'split' for data source" in info.value.render()
