"""examples/build: Make and CMake build an artifact from a spec as an ordinary rule -- the first
build compiles, a second does nothing, touching the spec (or its data) rebuilds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADL = Path(sys.executable).with_name("adl")  # the venv's console script

SPEC = """spec tiny
task classify { classes = 10 }
data npz { path = "tiny.npz" }
model mlp(hidden = [16])
target host { kind = llvm  cores = 1 }
pipeline { train { epochs = 1 }  lower { repeats = 10 } }
"""

pytestmark = pytest.mark.skipif(not ADL.exists(), reason=f"the adl command is not installed next to {sys.executable}")


@pytest.fixture
def project(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", x=rng.random((60, 1, 4, 4), dtype=np.float32) * 16, y=np.arange(60) % 10)
    (tmp_path / "tiny.adl").write_text(SPEC)
    return tmp_path


def _touch_later(path: Path) -> None:
    """Make `path` newer than anything built so far (file systems with coarse timestamps too)."""
    later = max(p.stat().st_mtime for p in path.parent.rglob("*")) + 5
    os.utime(path, (later, later))


def _build(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _check_rebuild_cycle(build, manifest: Path, project: Path) -> None:
    first = build()
    assert "compiling tiny" in first.stderr and manifest.is_file()
    depfile = manifest.parent.with_suffix(".d").read_text()
    assert str(project / "tiny.adl") in depfile and str(project / "tiny.npz") in depfile
    stamp = manifest.stat().st_mtime_ns

    second = build()
    assert "compiling" not in second.stderr, "a second build must do nothing"
    assert manifest.stat().st_mtime_ns == stamp

    _touch_later(project / "tiny.npz")  # a prerequisite known only from the depfile
    third = build()
    assert "compiling tiny" in third.stderr
    _touch_later(project / "tiny.adl")
    assert "compiling tiny" in build().stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_rule_builds_once_and_rebuilds_when_a_dependency_changes(project):
    makefile = ROOT / "examples" / "build" / "Makefile"
    command = ["make", "-f", str(makefile), f"ADL={ADL}", f"SPEC={project / 'tiny.adl'}", "OUT=out/tiny"]
    _check_rebuild_cycle(lambda: _build(command, project), project / "out" / "tiny" / "manifest.json", project)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_custom_command_builds_once_and_rebuilds_when_a_dependency_changes(project):
    build_dir = project / "cmake-build"
    _build(
        [
            "cmake",
            "-S",
            str(ROOT / "examples" / "build"),
            "-B",
            str(build_dir),
            f"-DADL={ADL}",
            f"-DSPEC={project / 'tiny.adl'}",
        ],
        project,
    )
    _check_rebuild_cycle(
        lambda: _build(["cmake", "--build", str(build_dir)], project), build_dir / "tiny" / "manifest.json", project
    )
