"""The artifact is swapped into place atomically: a writer killed at any step leaves the previous
artifact or the new one under the artifact's name, and the next write cleans up after it."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adl.backends import artifact
from adl.backends.artifact import write_artifact

KILLED = 9


def _library(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / f"lib-{hashlib.sha256(content).hexdigest()[:8]}.so"
    path.write_bytes(content)
    return path


def _write(out: Path, library: Path, accuracy: float) -> dict:
    manifest = {"metrics": {"accuracy": accuracy}, "library": {"file": "model.so"}, "passes": []}
    write_artifact(out, library=str(library), manifest=manifest, spec_source="spec s\n", report="r\n")
    return manifest


def _killed_in(step: str, out: Path, library: Path) -> int:
    """Run a write in a child process that dies (os._exit) at `step`; its exit code."""

    def die(*args, **kwargs):
        os._exit(KILLED)

    copyfile, rename = shutil.copyfile, os.rename

    def rename_then_die(a, b) -> None:
        rename(a, b)
        if Path(b).name.startswith(".out.old"):
            die()

    def child() -> None:
        if step == "staging":  # after the library was copied, before the manifest
            shutil.copyfile = lambda src, dst: (copyfile(src, dst), die())
        elif step == "between renames":  # no RENAME_EXCHANGE: killed after moving the old artifact aside
            artifact.exchange = lambda a, b: False
            os.rename = rename_then_die
        elif step == "after the exchange":  # the old artifact is in the temporary folder, not yet removed
            shutil.rmtree = die
        _write(out, library, 0.8)
        os._exit(0)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    return process.exitcode


def _siblings(out: Path) -> list[str]:
    return sorted(
        p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and not p.name.endswith(".lock")
    )


def test_the_manifest_records_the_library_sha256(tmp_path):
    out, library = tmp_path / "out", _library(tmp_path, b"\x7fELF one")
    manifest = _write(out, library, 0.9)
    written = json.loads((out / "manifest.json").read_text())
    digest = hashlib.sha256((out / "model.so").read_bytes()).hexdigest()
    assert written["library"] == {"file": "model.so", "sha256": digest} and manifest["library"]["sha256"] == digest
    assert written["metrics"] == {"accuracy": 0.9}
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700


def _exchange_supported(folder: Path) -> bool:
    (folder / "x1").mkdir()
    (folder / "x2").mkdir()
    try:
        return artifact.exchange(folder / "x1", folder / "x2")
    finally:
        (folder / "x1").rmdir()
        (folder / "x2").rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("step", ["staging", "between renames", "after the exchange"])
def test_a_write_killed_at_any_step_leaves_a_whole_artifact_and_the_next_write_cleans_up(tmp_path, step):
    out = tmp_path / "out"
    old, new = _library(tmp_path, b"\x7fELF old"), _library(tmp_path, b"\x7fELF new")
    _write(out, old, 0.9)
    if step == "after the exchange" and not _exchange_supported(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here")
    assert _killed_in(step, out, new) == KILLED
    assert _siblings(out), "the killed write left its temporary folder"
    if step == "between renames":
        assert not out.exists()  # the one moment without an artifact: the next write restores it
    else:
        whole = {"model.so", "manifest.json", "spec.adl", "report.md"}
        assert {p.name for p in out.iterdir()} == whole
        recorded = json.loads((out / "manifest.json").read_text())["library"]["sha256"]
        assert hashlib.sha256((out / "model.so").read_bytes()).hexdigest() == recorded

    _write(out, new, 0.8)
    assert _siblings(out) == []
    assert (out / "model.so").read_bytes() == b"\x7fELF new"
    assert json.loads((out / "manifest.json").read_text())["metrics"] == {"accuracy": 0.8}


def test_the_next_write_restores_the_previous_artifact_before_anything_else(tmp_path):
    out = tmp_path / "out"
    old, new = _library(tmp_path, b"\x7fELF old"), _library(tmp_path, b"\x7fELF new")
    _write(out, old, 0.9)
    assert _killed_in("between renames", out, new) == KILLED
    [aside] = [tmp_path / name for name in _siblings(out) if name.startswith(".out.old-")]
    stamps = {p.name: p.stat().st_mtime_ns for p in aside.iterdir()}
    _write(out, old, 0.9)  # the content of the previous artifact: restored, then left as it is
    assert _siblings(out) == [] and (out / "model.so").read_bytes() == b"\x7fELF old"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_leftovers_of_a_live_writer_are_left_alone(tmp_path):
    out, library = tmp_path / "out", _library(tmp_path, b"\x7fELF")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".out.tmp-{live.pid}-abc"
        busy.mkdir()
        dead = tmp_path / ".out.tmp-999999999-abc"
        dead.mkdir()
        _write(out, library, 0.9)
        assert busy.exists() and not dead.exists()
    finally:
        live.kill()
        live.wait()


def test_writes_wait_for_the_output_lock(tmp_path):
    from adl.ir.files import output_lock

    out, library = tmp_path / "out", _library(tmp_path, b"\x7fELF")
    context = multiprocessing.get_context("fork")
    waited = context.Event()

    def writer() -> None:
        import adl.ir.files as files

        original = files._acquire
        files._acquire = lambda path, on_wait: original(path, lambda: (waited.set(), on_wait()))
        _write(out, library, 0.9)

    with output_lock(out):
        process = context.Process(target=writer)
        process.start()
        assert waited.wait(30)
        assert not out.exists()
    process.join(30)
    assert process.exitcode == 0 and (out / "manifest.json").exists()
