"""`adl run` and `adl data` on hostile artifacts and inputs: exit 2 with one `file: error: what`
line for a user's mistake, never exit 3, a signal, a traceback or a hang.

The first tests need no library: every input is refused before the artifact's library (here a
stand-in file) is loaded. The `slow` ones run a real artifact, compiled once for the module.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from adl.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "digits_fixed.adl"
EXPECTED = "expected a NumPy array (.npy) or an .npz holding 'x' (and labels 'y')"


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    """An artifact whose manifest is valid and whose library is never loaded by these tests."""
    folder = tmp_path / "artifact"
    folder.mkdir()
    library = b"not a library"
    (folder / "model.so").write_bytes(library)
    manifest = {
        "schema_version": 1,
        "input": {"shape": [1, 1, 8, 8], "dtype": "float32"},
        "library": {"sha256": hashlib.sha256(library).hexdigest()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def run_error(capsys, artifact: Path, input_path: Path, *extra: str) -> str:
    """The one line `adl run` printed on stderr, having exited 2."""
    capsys.readouterr()
    assert main(["run", str(artifact), "--input", str(input_path), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    return captured.err.rstrip("\n")


def x_batch(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 8, 8)).astype(np.float32) * 16


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    with open(path, "wb") as f:  # np.savez(path) would append .npz to the name
        np.savez(f, **arrays)
    return path


def test_files_that_are_not_readable_arrays(tmp_path: Path, stand_in: Path, capsys) -> None:
    cases: dict[str, tuple[bytes, str]] = {
        "empty.npy": (b"", f"the file is empty: {EXPECTED}"),
        "table.csv": (b"1,2,3\n", f"neither a .npy nor an .npz file: {EXPECTED}"),
        "pickle.npy": (b"\x80\x04K\x01.", f"neither a .npy nor an .npz file: {EXPECTED}"),
        "cut.npz": (
            write_npz(tmp_path / "whole.npz", x=x_batch()).read_bytes()[:300],
            "not a readable .npz file: BadZipFile: File is not a zip file",
        ),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert run_error(capsys, stand_in, tmp_path / name) == f"{tmp_path / name}: error: {message}"
    assert run_error(capsys, stand_in, tmp_path / "none.npy") == f"{tmp_path / 'none.npy'}: error: no such file"
    assert run_error(capsys, stand_in, tmp_path) == f"{tmp_path}: error: not a regular file"


def test_arrays_numpy_reads_only_by_unpickling_or_that_are_cut_short(tmp_path: Path, stand_in: Path, capsys) -> None:
    np.save(tmp_path / "objects.npy", np.array([1, "a", None], dtype=object), allow_pickle=True)
    assert run_error(capsys, stand_in, tmp_path / "objects.npy") == (
        f"{tmp_path / 'objects.npy'}: error: not a readable .npy file: ValueError: Object arrays cannot be loaded "
        "when allow_pickle=False"
    )
    with open(tmp_path / "objects.npz", "wb") as f:
        np.savez(f, x=np.array([None], dtype=object))
    assert run_error(capsys, stand_in, tmp_path / "objects.npz") == (
        f"{tmp_path / 'objects.npz'}: error: not a readable .npz file: ValueError: Object arrays cannot be loaded "
        "when allow_pickle=False"
    )
    np.save(tmp_path / "whole.npy", x_batch())
    (tmp_path / "cut.npy").write_bytes((tmp_path / "whole.npy").read_bytes()[:-100])
    assert run_error(capsys, stand_in, tmp_path / "cut.npy").startswith(
        f"{tmp_path / 'cut.npy'}: error: not a readable .npy file: "
    )


def test_an_npz_without_x(tmp_path: Path, stand_in: Path, capsys) -> None:
    path = write_npz(tmp_path / "d.npz", a=np.zeros(1), y=np.zeros(1))
    assert run_error(capsys, stand_in, path) == f"{path}: error: no array 'x' in the .npz (found: a, y)"
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    assert run_error(capsys, stand_in, tmp_path / "empty.npz").startswith(f"{tmp_path / 'empty.npz'}: error: ")


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (
            np.zeros(3, dtype=[("a", "<f4")]),
            "expected a floating-point input (the library's input dtype is float32), "
            "got dtype [('a', '<f4')] with shape (3,)",
        ),
        (
            np.zeros((2, 8, 8), np.float32),
            "expected input of shape (N, 1, 8, 8) or a single sample (1, 8, 8) (the "
            "library's input shape is (1, 1, 8, 8)); got shape (2, 8, 8)",
        ),
        (
            np.zeros((2, 1, 8, 8), np.complex64),
            "expected a floating-point input (the library's input dtype is float32), "
            "got dtype complex64 with shape (2, 1, 8, 8)",
        ),
        (np.zeros((0, 1, 8, 8), np.float32), "x holds no samples (shape (0, 1, 8, 8))"),
        (
            np.where(np.arange(4)[:, None, None, None] == 1, np.nan, x_batch()),
            "x holds 64 non-finite values (NaN or inf)",
        ),
        (np.full((1, 8, 8), np.inf), "x holds 64 non-finite values (NaN or inf)"),
    ],
)
def test_inputs_that_do_not_fit_the_manifest(tmp_path: Path, stand_in: Path, capsys, x, message) -> None:
    np.save(tmp_path / "x.npy", x)
    assert run_error(capsys, stand_in, tmp_path / "x.npy") == f"{tmp_path / 'x.npy'}: error: {message}"


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (
            np.zeros(3, np.int64),
            "labels 'y' of shape (3,) do not match inputs 'x' of shape (4, 1, 8, 8): expected (4,) or (4, 1)",
        ),
        (
            np.zeros((4, 2), np.int64),
            "labels 'y' of shape (4, 2) do not match inputs 'x' of shape (4, 1, 8, 8): expected (4,) or (4, 1)",
        ),
        (
            np.zeros((1, 4), np.int64),
            "labels 'y' of shape (1, 4) do not match inputs 'x' of shape (4, 1, 8, 8): expected (4,) or (4, 1)",
        ),
        (np.array([0, 1, 2.5, 3]), "labels 'y' must be whole class numbers, got dtype float64"),
        (np.array(["a", "b", "c", "d"]), "labels 'y' must be whole class numbers, got dtype <U1"),
    ],
)
def test_labels_that_do_not_fit_the_inputs(tmp_path: Path, stand_in: Path, capsys, y, message) -> None:
    path = write_npz(tmp_path / "d.npz", x=x_batch(), y=y)
    assert run_error(capsys, stand_in, path) == f"{path}: error: {message}"


def test_an_output_that_cannot_be_written_is_refused_before_running(tmp_path: Path, stand_in: Path, capsys) -> None:
    np.save(tmp_path / "x.npy", x_batch())
    missing = tmp_path / "no" / "pred.npy"
    assert run_error(capsys, stand_in, tmp_path / "x.npy", "--output", str(missing)) == (
        f"{missing}: error: the folder {missing.parent} does not exist"
    )
    assert run_error(capsys, stand_in, tmp_path / "x.npy", "--output", str(tmp_path)) == (
        f"{tmp_path}: error: is a directory: give the file to write"
    )


def test_a_malformed_artifact_is_a_user_error(tmp_path: Path, stand_in: Path, capsys) -> None:
    np.save(tmp_path / "x.npy", x_batch())
    (stand_in / "manifest.json").write_text('{"schema_version": 1, "input": null}')
    assert run_error(capsys, stand_in, tmp_path / "x.npy") == (
        f"{stand_in / 'manifest.json'}: error: 'input' must be an object, got null"
    )
    (stand_in / "manifest.json").write_text('{"schema_version": 1, "input": {"shape": [1, 1, 8, 8]}, "x": Infinity}')
    assert run_error(capsys, stand_in, tmp_path / "x.npy") == (
        f"{stand_in / 'manifest.json'}: error: not valid JSON: Infinity is not a JSON number (a manifest holds finite "
        "numbers only)"
    )
    manifest = {"schema_version": 1, "input": {"shape": [1, 1, 8, 8]}, "library": {"cross_compiled": False}}
    (stand_in / "manifest.json").write_text(json.dumps(manifest))
    assert run_error(capsys, stand_in, tmp_path / "x.npy") == (
        f"{stand_in / 'manifest.json'}: error: no 'library.sha256' to check model.so against: the artifact was "
        "written by an older adl; recompile its spec with this one"
    )
    manifest["library"]["sha256"] = "0" * 64
    (stand_in / "manifest.json").write_text(json.dumps(manifest))
    assert run_error(capsys, stand_in, tmp_path / "x.npy") == (
        f"{stand_in}: error: model.so does not match its manifest (sha256 "
        f"{hashlib.sha256(b'not a library').hexdigest()[:16]}..., the manifest records 0000000000000000...): the "
        "library was modified or comes from another compile"
    )


def test_data_writes_exactly_the_path_given(tmp_path: Path, capsys) -> None:
    out = tmp_path / "test-split"  # no .npz: np.savez(out) would have written test-split.npz
    assert main(["data", str(EXAMPLE), "-o", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote 359 test samples (1, 8, 8) to {out}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-split"]
    with np.load(out) as data:
        assert data["x"].shape == (359, 1, 8, 8) and data["y"].shape == (359,)


def test_data_refuses_a_folder_or_a_path_through_a_file(tmp_path: Path, capsys) -> None:
    assert main(["data", str(EXAMPLE), "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"{tmp_path}: error: is a directory: give the .npz file to write, e.g. test.npz\n"
    (tmp_path / "file").write_text("")
    assert main(["data", str(EXAMPLE), "-o", str(tmp_path / "file" / "t.npz")]) == 2
    assert capsys.readouterr().err == (
        f"{tmp_path / 'file' / 't.npz'}: error: cannot create the folder {tmp_path / 'file'}: File exists\n"
    )


# -- a real artifact -------------------------------------------------------------------------------

SPEC = """
spec hostile
task classify { classes = 10 }
data digits { split = 0.8  seed = 0 }
model cnn(channels = [4], hidden = 8)
target host { kind = llvm  cores = 1 }
constraints { latency <= 1 s }
pipeline {
  train { epochs = 1 }
  lower { repeats = 10  warmup = 0  profile = false  threads = 1 }
}
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(artifact, test split .npz), compiled once for the module (~20 s)."""
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "hostile.adl").write_text(SPEC)
    proc = subprocess.run(
        [sys.executable, "-m", "adl", "compile", "-q", str(folder / "hostile.adl"), "-o", str(folder / "artifact")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert main(["data", str(folder / "hostile.adl"), "-o", str(folder / "test.npz")]) == 0
    return folder / "artifact", folder / "test.npz"


@pytest.fixture
def artifact(compiled: tuple[Path, Path], tmp_path: Path) -> Path:
    """A private copy of the compiled artifact, to damage."""
    return Path(shutil.copytree(compiled[0], tmp_path / "artifact"))


def run_cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`adl run` in a process of its own: a crash there (SIGBUS) must not take the tests down."""
    return subprocess.run(
        [sys.executable, "-m", "adl", "run", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


MISMATCH = "): the library was modified or comes from another compile"


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_library_is_refused_not_loaded(compiled, artifact: Path, damage: str) -> None:
    library = artifact / "model.so"
    content = bytearray(library.read_bytes())
    if damage == "truncate":  # loading it was a SIGBUS (exit 135)
        content = content[: len(content) // 2]
    else:  # a flipped bit in the code: TVM's FFI exited 255
        content[len(content) // 2] ^= 0x10
    library.write_bytes(bytes(content))
    proc = run_cli(artifact, "--input", compiled[1])
    assert proc.returncode == 2, proc
    assert proc.stderr.startswith(f"{artifact}: error: model.so does not match its manifest (sha256 ")
    assert proc.stderr.endswith(MISMATCH + "\n") and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_labels_of_shape_n_by_1_score_like_n(compiled, tmp_path: Path, capsys) -> None:
    artifact, split = compiled
    with np.load(split) as data:
        x, y = data["x"], data["y"]
    assert main(["run", str(artifact), "--input", str(split)]) == 0
    flat = capsys.readouterr().out
    column = write_npz(tmp_path / "column.npz", x=x, y=y[:, None])
    assert main(["run", str(artifact), "--input", str(column)]) == 0
    assert capsys.readouterr().out == flat
    accuracy = json.loads((artifact / "manifest.json").read_text())["metrics"]["accuracy"]
    right = round(accuracy * len(y))
    assert f"accuracy: {100 * right / len(y):.2f} % ({right}/{len(y)})\n" in flat


@pytest.mark.slow
def test_expect_accuracy_passes_on_the_test_split_and_fails_when_the_library_answers_otherwise(
    compiled, artifact: Path, tmp_path: Path, capsys
) -> None:
    _, split = compiled
    with np.load(split) as data:
        x, y = data["x"], data["y"]
    manifest = json.loads((artifact / "manifest.json").read_text())
    accuracy, samples = manifest["metrics"]["accuracy"], manifest["data"]["test_samples"]
    assert main(["run", str(artifact), "--input", str(split), "--expect-accuracy"]) == 0
    assert (
        f"reproduces the manifest's accuracy: {100 * accuracy:.2f} % on {samples} test samples"
        in capsys.readouterr().out
    )
    wrong = write_npz(tmp_path / "wrong.npz", x=x, y=(y + 1) % 10)  # other labels: other right answers
    assert main(["run", str(artifact), "--input", str(wrong), "--expect-accuracy"]) == 1
    assert "differs from the manifest's" in capsys.readouterr().err
    fewer = write_npz(tmp_path / "fewer.npz", x=x[:5], y=y[:5])
    assert run_error(capsys, artifact, fewer, "--expect-accuracy") == (
        f"{fewer}: error: --expect-accuracy compares with the manifest's test split of {samples} samples; "
        "the input holds 5"
    )
    np.save(tmp_path / "x.npy", x)
    assert "needs labels" in run_error(capsys, artifact, tmp_path / "x.npy", "--expect-accuracy")
    manifest["metrics"]["accuracy"] = "most"  # a hand-edited manifest: an error, not a crash
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    assert "the manifest records no test accuracy" in run_error(capsys, artifact, split, "--expect-accuracy")


@pytest.mark.slow
def test_inputs_are_told_apart_by_content_and_cast(compiled, tmp_path: Path, capsys) -> None:
    artifact, split = compiled
    with np.load(split) as data:
        x = data["x"]
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(artifact), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "pred")]) == 0
    expected = capsys.readouterr().out
    predictions = np.load(tmp_path / "pred")  # written as named: np.save(path) would have added .npy
    assert predictions.shape == (len(x),) and predictions.dtype == np.int64
    shutil.copy(split, tmp_path / "split.dat")
    shutil.copy(split, tmp_path / "split.NPZ")
    np.save(tmp_path / "x64.npy", x.astype(np.float64))
    np.save(tmp_path / "ints.npy", x.astype(np.int16))  # digits pixels are whole numbers 0..16
    for name in ("split.dat", "split.NPZ", "x64.npy", "ints.npy"):
        assert main(["run", str(artifact), "--input", str(tmp_path / name)]) == 0
        assert capsys.readouterr().out.splitlines()[0] == expected.splitlines()[0]


@pytest.mark.slow
def test_a_huge_runtime_thread_count_neither_hangs_nor_is_accepted_past_the_bound(compiled, artifact: Path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["metrics"]["runtime_threads"] = 1000  # took minutes to exit: 1000 TVM workers on this machine's cores
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    assert run_cli(artifact, "--input", compiled[1], timeout=60).returncode == 0
    manifest["metrics"]["runtime_threads"] = 1025
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli(artifact, "--input", compiled[1])
    assert (proc.returncode, proc.stderr) == (
        2,
        f"{artifact / 'manifest.json'}: error: 'metrics.runtime_threads' "
        "must be an integer from 1 to 1024 or null, got 1025\n",
    )


@pytest.mark.slow
def test_load_predict_refuses_non_finite_inputs(compiled) -> None:
    import adl

    loaded = adl.load(compiled[0])
    x = np.zeros((2, 1, 8, 8), np.float32)
    assert loaded.predict(x).shape == (2,)
    x[0, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match=r"^x holds 1 non-finite value \(NaN or inf\)$"):
        loaded.predict(x)
