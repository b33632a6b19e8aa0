"""Loading an artifact (adl.backends.artifact.load): a missing, malformed or tampered artifact
is an ArtifactError naming the file at fault, never a crash. No TVM here: every check runs before
the library is loaded (the library is a stand-in file, checked by its sha256 only)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adl.backends.artifact import ArtifactError, load, validate_manifest
from adl.backends.runtime import MAX_THREADS, CompiledLibrary, check_input
from adl.ir.spec import available_cores

LIBRARY = b"\x7fELF not really a library, only its bytes are hashed"
SHAPE = (1, 1, 8, 8)


def manifest(**changes: Any) -> dict[str, Any]:
    base = {
        "schema_version": 1,
        "input": {"shape": list(SHAPE), "dtype": "float32"},
        "target": {"kind": "llvm", "num-cores": 2},
        "metrics": {"runtime_threads": 1},
        "library": {"cross_compiled": False, "sha256": hashlib.sha256(LIBRARY).hexdigest()},
    }
    return {**base, **changes}


DEFAULT = object()


def artifact(folder: Path, content: Any = DEFAULT, text: str | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "model.so").write_bytes(LIBRARY)
    if text is None:
        text = json.dumps(manifest() if content is DEFAULT else content)
    (folder / "manifest.json").write_text(text)
    return folder


def load_error(folder: Path) -> str:
    with pytest.raises(ArtifactError) as info:
        load(folder)
    return str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "the manifest must be a JSON object, got null"),
        ([1, 2], "the manifest must be a JSON object, got [1, 2]"),
        ("text", 'the manifest must be a JSON object, got "text"'),
        ({k: v for k, v in manifest().items() if k != "input"}, "'input' is missing"),
        (manifest(input=None), "'input' must be an object, got null"),
        (manifest(input={"dtype": "float32"}), "'input.shape' is missing"),
        (
            manifest(input={"shape": [2, 1, 8, 8]}),
            "'input.shape' must be an array of up to 8 positive integers, batch 1 first, e.g. [1, 1, 8, 8], "
            "got [2, 1, 8, 8]",
        ),
        (
            manifest(input={"shape": [1, True]}),
            "'input.shape' must be an array of up to 8 positive integers, batch 1 first, e.g. [1, 1, 8, 8], "
            "got [1, true]",
        ),
        (
            manifest(input={"shape": [1, 8], "dtype": "object"}),
            '\'input.dtype\' must be "float32" (the input type of every adl library), got "object"',
        ),
        (
            manifest(input={"shape": [1, 8], "dtype": "float16"}),
            '\'input.dtype\' must be "float32" (the input type of every adl library), got "float16"',
        ),
        (manifest(target=[]), "'target' must be an object, got []"),
        (manifest(metrics=3), "'metrics' must be an object, got 3"),
        (manifest(library="model.so"), "'library' must be an object or null, got \"model.so\""),
        (
            manifest(schema_version=True),
            "'schema_version' must be 1 (the schema this adl reads: recompile the spec with this adl), got true",
        ),
        (
            manifest(schema_version=2),
            "'schema_version' must be 1 (the schema this adl reads: recompile the spec with this adl), got 2",
        ),
        (
            manifest(metrics={"runtime_threads": 2000}),
            f"'metrics.runtime_threads' must be an integer from 1 to {MAX_THREADS} or null, got 2000",
        ),
        (
            manifest(metrics={"runtime_threads": 1.5}),
            f"'metrics.runtime_threads' must be an integer from 1 to {MAX_THREADS} or null, got 1.5",
        ),
        (
            manifest(target={"num-cores": 0}),
            f"'target.num-cores' must be an integer from 1 to {MAX_THREADS} or null, got 0",
        ),
        (manifest(library={"sha256": "ABC"}), "'library.sha256' must be 64 lowercase hex digits, got \"ABC\""),
        (manifest(library={"cross_compiled": "no"}), "'library.cross_compiled' must be true or false, got \"no\""),
    ],
)
def test_a_malformed_manifest_names_the_key_and_what_it_holds(tmp_path: Path, content: Any, message: str) -> None:
    folder = artifact(tmp_path / "a", content)
    assert load_error(folder) == f"{folder / 'manifest.json'}: {message}"
    with pytest.raises(ValueError) as info:
        validate_manifest(content)
    assert str(info.value) == message


FINITE = "is not a JSON number (a manifest holds finite numbers only)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"schema_version": 1, "x": NaN}', f"not valid JSON: NaN {FINITE}"),
        ('{"schema_version": Infinity}', f"not valid JSON: Infinity {FINITE}"),
        ('{"a": -Infinity}', f"not valid JSON: -Infinity {FINITE}"),
        (
            '{"schema_version": 1,',
            "not valid JSON: Expecting property name enclosed in double quotes: line 1 column 22 (char 21)",
        ),
        ("[" * 100_000, "not valid JSON: nested too deeply"),
        ("", "not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    ],
)
def test_a_manifest_that_is_not_standard_json_is_refused(tmp_path: Path, text: str, message: str) -> None:
    folder = artifact(tmp_path / "a", text=text)
    assert load_error(folder) == f"{folder / 'manifest.json'}: {message}"


def test_a_manifest_that_is_not_utf8_or_not_a_file_is_refused(tmp_path: Path) -> None:
    folder = artifact(tmp_path / "a")
    (folder / "manifest.json").write_bytes(b'{"a": "\xff"}')
    assert load_error(folder) == f"{folder / 'manifest.json'}: not UTF-8 text (byte 7)"
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").mkdir()
    assert load_error(folder) == f"{folder / 'manifest.json'}: not a regular file"


def test_what_is_not_an_artifact_folder(tmp_path: Path) -> None:
    assert load_error(tmp_path / "missing") == f"{tmp_path / 'missing'}: no such artifact folder"
    assert load_error(tmp_path) == f"{tmp_path}: is not an adl artifact (no manifest.json)"
    (tmp_path / "x.npz").write_bytes(b"PK")
    file = tmp_path / "x.npz"
    assert load_error(file) == f"{file}: is not an adl artifact (a file, not an artifact folder)"


def test_the_folder_its_library_or_its_manifest_load_the_same(tmp_path: Path) -> None:
    folder = artifact(tmp_path / "a")
    for path in (folder, folder / "model.so", folder / "manifest.json"):
        assert load(path).path == folder


def library_error(folder: Path) -> ArtifactError:
    with pytest.raises(ArtifactError) as info:
        load(folder)._verified_library()
    return info.value


def test_a_library_that_does_not_match_its_manifest_is_refused(tmp_path: Path) -> None:
    folder = artifact(tmp_path / "a")
    assert load(folder)._verified_library() == folder / "model.so"
    expected = hashlib.sha256(LIBRARY).hexdigest()
    for damaged in (LIBRARY[:20], LIBRARY[:-1] + b"!", b"another compile's library"):
        (folder / "model.so").write_bytes(damaged)
        error = library_error(folder)
        actual = hashlib.sha256(damaged).hexdigest()
        assert (error.path, error.message) == (
            folder,
            (
                f"model.so does not match its manifest (sha256 {actual[:16]}..., the manifest records "
                f"{expected[:16]}...): "
                "the library was modified or comes from another compile"
            ),
        )


def test_a_manifest_without_the_library_sha256_asks_for_a_recompile(tmp_path: Path) -> None:
    folder = artifact(tmp_path / "a", manifest(library={"cross_compiled": False}))
    error = library_error(folder)
    assert (error.path, error.message) == (
        folder / "manifest.json",
        (
            "no 'library.sha256' to check model.so against: the artifact was written by an older adl; recompile its "
            "spec with this one"
        ),
    )


def test_no_library_and_a_cross_compiled_one(tmp_path: Path) -> None:
    folder = artifact(tmp_path / "a", manifest(library=None))
    (folder / "model.so").unlink()
    assert library_error(folder).message == "no model.so (its pipeline had no `lower` pass)"
    cross = manifest(library={"cross_compiled": True}, target={"mtriple": "aarch64-linux-gnu"})
    folder = artifact(tmp_path / "b", cross)
    assert library_error(folder).message == (
        "cross-compiled for aarch64-linux-gnu: run it there with the TVM runtime (see docs/lowering.md)"
    )


def test_the_manifest_thread_count_is_capped_at_this_machines_cores(tmp_path: Path) -> None:
    cores = available_cores()
    for threads, expected in ((1, 1), (1000, cores), (None, min(2, cores))):
        folder = artifact(tmp_path / f"t{threads}", manifest(metrics={"runtime_threads": threads}))
        assert load(folder)._threads() == expected


def test_compiled_library_threads_are_bounded() -> None:
    for threads in (0, MAX_THREADS + 1, True, 2.0):
        with pytest.raises(ValueError) as info:
            CompiledLibrary("missing.so", SHAPE, num_threads=threads)  # type: ignore[arg-type]
        assert str(info.value) == f"num_threads must be an int from 1 to {MAX_THREADS} or None, got {threads!r}"


def test_check_input_refuses_non_finite_values_and_other_kinds() -> None:
    x = np.zeros((3, 1, 8, 8), np.float64)
    batch, single = check_input(x, SHAPE, np.dtype("float32"))
    assert batch.dtype == np.float32 and batch.shape == (3, 1, 8, 8) and not single
    x[0, 0, 0, 0], x[2, 0, 1, 1], x[2, 0, 1, 2] = np.nan, np.inf, 1e300  # 1e300 is inf in float32
    with pytest.raises(ValueError) as info:
        check_input(x, SHAPE, np.dtype("float32"))
    assert str(info.value) == "x holds 3 non-finite values (NaN or inf)"
    with pytest.raises(ValueError) as info:
        check_input(np.full((1, 8, 8), np.nan, np.float32), SHAPE, np.dtype("float32"))
    assert str(info.value) == "x holds 64 non-finite values (NaN or inf)"
    with pytest.raises(ValueError) as info:
        check_input(np.zeros((2, 1, 8, 8), bool), SHAPE, np.dtype("float32"))
    assert str(info.value) == (
        "expected a floating-point input (the library's input dtype is float32), got dtype bool with shape (2, 1, 8, 8)"
    )


def test_artifact_inputs_are_checked_against_the_manifest_before_the_library_is_loaded(tmp_path: Path) -> None:
    loaded = load(artifact(tmp_path / "a"))
    assert loaded.check_input(np.ones((2, 1, 8, 8), np.uint8)).dtype == np.float32  # whole-number pixels are cast
    x = np.zeros((2, 1, 8, 8), np.float32)
    x[1, 0, 0, 0] = np.nan
    for bad, message in (
        (x, "x holds 1 non-finite value (NaN or inf)"),
        (
            np.zeros((2, 8, 8)),
            "expected input of shape (N, 1, 8, 8) or a single sample (1, 8, 8) (the "
            "library's input shape is (1, 1, 8, 8)); got shape (2, 8, 8)",
        ),
        (
            np.array(["a"], dtype=object),
            "expected a floating-point input (the library's input dtype is float32), got dtype object with shape (1,)",
        ),
    ):
        with pytest.raises(ValueError) as info:
            loaded.predict(bad)  # refused before the (stand-in) library is touched
        assert str(info.value) == message
