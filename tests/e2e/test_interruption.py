"""A compile killed at any moment, or a cache file changed behind adl's back, never ships a
broken artifact: the output folder holds a whole artifact or none, and the rerun's artifact
equals an uninterrupted run's."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

pytestmark = pytest.mark.slow

SPEC = """
spec tiny
task classify { classes = 10 }
data digits { split = 0.8  seed = 0 }
model cnn(channels = [8, 16], hidden = 32)
target host { kind = llvm  cores = 2 }
constraints { accuracy >= 50 % }
pipeline {
  train { epochs = 6 }
  lower { repeats = 10  profile = false }
}
"""
ARTIFACT_FILES = {"manifest.json", "model.so", "report.html", "report.md", "spec.adl"}


def _command(spec: Path, out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "adl", "compile", str(spec), "-o", str(out), "--cache", str(cache)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _comparable(manifest: dict) -> dict:
    """The manifest without what legitimately differs between runs: timings and checkpoint reuse."""
    manifest = json.loads(json.dumps(manifest))
    for key in ("latency_s", "latency", "runtime_threads", "threads_median_s"):
        manifest["metrics"].pop(key, None)
    manifest["library"].pop("build_seconds")
    for key in ("measured_latency_s", "measured_over_predicted"):
        manifest["cost_model"].pop(key)
    manifest["passes"] = [(p["name"], p["pass"], p["key"]) for p in manifest["passes"]]
    return manifest


def _whole_or_none(out: Path) -> None:
    """Under the artifact's name: nothing, or every file with the library the manifest names."""
    leftovers = [
        p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and not p.name.endswith(".lock")
    ]
    if out.exists():
        assert {p.name for p in out.iterdir()} == ARTIFACT_FILES
        assert _sha256(out / "model.so") == json.loads((out / "manifest.json").read_text())["library"]["sha256"]
    assert all(".tmp-" in name or ".old-" in name for name in leftovers), leftovers


@dataclass(frozen=True)
class Reference:
    """An uninterrupted compile: its spec, manifest, library sha256 and cache."""

    spec: Path
    manifest: dict
    sha256: str
    cache: Path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    folder = tmp_path_factory.mktemp("interruption")
    spec = folder / "tiny.adl"
    spec.write_text(SPEC)
    proc = subprocess.run(_command(spec, folder / "ref", folder / "cache-ref"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((folder / "ref" / "manifest.json").read_text())
    return Reference(spec, manifest, _sha256(folder / "ref" / "model.so"), folder / "cache-ref")


def _kill_when(spec: Path, out: Path, cache: Path, ready: Callable[[], bool]) -> None:
    victim = subprocess.Popen(
        _command(spec, out, cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while not ready():
        assert victim.poll() is None, f"the compile ended before it could be killed: {victim.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL


def _rerun_equals_reference(out: Path, cache: Path, reference: Reference) -> str:
    """Recompile after the kill; the artifact equals the uninterrupted one. Returns the rerun's log."""
    _whole_or_none(out)
    proc = subprocess.run(_command(reference.spec, out, cache), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    _whole_or_none(out)
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    manifest = json.loads((out / "manifest.json").read_text())
    assert _comparable(manifest) == _comparable(reference.manifest)
    assert _sha256(out / "model.so") == manifest["library"]["sha256"] == reference.sha256
    return proc.stderr


@pytest.mark.parametrize("moment", ["training", "lowering", "writing the artifact"])
def test_sigkill_leaves_no_partial_artifact_and_the_rerun_equals_an_uninterrupted_run(tmp_path, reference, moment):
    out, cache = tmp_path / "out", tmp_path / "cache"
    ready = {
        "training": lambda: any(cache.glob("state/*/train_state.pt")),
        "lowering": lambda: any(cache.glob("outputs/*")),  # lower's output folder: the build has begun
        "writing the artifact": lambda: len(list(cache.glob("checkpoints/*.pkl"))) == 2,
    }[moment]
    _kill_when(reference.spec, out, cache, ready)
    log = _rerun_equals_reference(out, cache, reference)
    if moment == "training":  # resumed from the epoch saved before the kill, not started over
        epoch = int(log.split("train: resuming after epoch ")[1].split()[0])
        assert 1 <= epoch < 6


def test_a_truncated_cached_library_is_rebuilt_not_shipped(tmp_path, reference):
    [library] = reference.cache.glob("outputs/*/model.so")
    library.write_bytes(library.read_bytes()[:1000])

    proc = subprocess.run(_command(reference.spec, tmp_path / "again", reference.cache), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "changed since it was written; rebuilding" in proc.stderr
    manifest = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert [p["reused"] for p in manifest["passes"]] == [True, False]
    assert _sha256(tmp_path / "again" / "model.so") == manifest["library"]["sha256"] == reference.sha256
    assert (tmp_path / "again" / "model.so").stat().st_size == manifest["library"]["library_bytes"]
