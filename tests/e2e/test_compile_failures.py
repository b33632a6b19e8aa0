"""`adl compile` fails loudly and early: exit 2 with a caret for a spec mistake, 3 for a failed
pass, never a traceback, a hang, or an artifact built from something it silently changed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from adl.cli import main
from adl.ir.passes import Pass, PassCrash, default_registry

SPEC = """spec tiny
task classify { classes = 10 }
data digits { split = 0.8  seed = 0 }
model cnn(channels = [8, 16], hidden = 32)
target host {
  kind = llvm  cores = CORES
  TARGET
}
constraints { accuracy >= 10 % }
pipeline {
  train { epochs = 1 }
  lower { repeats = 10  warmup = 1  profile = false  LOWER }
}
"""


def write(
    folder: Path,
    *,
    cores: int = 2,
    target: str = "",
    lower: str = "",
    pipeline: str | None = None,
    data: str | None = None,
) -> Path:
    text = SPEC.replace("CORES", str(cores)).replace("TARGET", target).replace("LOWER", lower)
    if pipeline is not None:
        text = re.sub(r"pipeline \{.*\}\n", f"pipeline {{ {pipeline} }}\n", text, flags=re.S)
    if data is not None:
        text = text.replace("data digits { split = 0.8  seed = 0 }", data)
    path = folder / "tiny.adl"
    path.write_text(text)
    return path


def compile_cli(spec: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "adl", "compile", "-q", str(spec), "-o", str(spec.parent / "out"), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_threads_beyond_the_targets_cores_is_a_caret_at_threads(tmp_path):
    spec = write(tmp_path, lower="threads = 1000")
    line = spec.read_text().splitlines()[11]
    column = line.index("1000") + 1
    proc = compile_cli(spec)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.endswith(
        f"{spec}:12:{column}: error: lower: threads = 1000 exceeds the target's cores = 2\n"
        f"  12 | {line}\n"
        f"     | {' ' * (column - 1)}^~~~\n"
        "  note: use at most 2, or 0 to time 1..2 threads and keep the fastest\n"
    )
    assert not (tmp_path / "out").exists()


def test_an_unknown_mcpu_is_a_caret_at_mcpu_before_anything_runs(tmp_path):
    proc = compile_cli(write(tmp_path, target='mcpu = "nonsense"'))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if "error:" in line)
    assert re.fullmatch(
        rf'{re.escape(str(tmp_path / "tiny.adl"))}:7:10: error: LLVM does not know the CPU "nonsense" '
        r"for this machine \(\S+\): TVM would build for a generic CPU instead",
        lines[at],
    )
    assert lines[at + 1 : at + 3] == ['   7 |   mcpu = "nonsense"', "     |          ^~~~~~~~~~"]
    assert lines[at + 3].startswith("  note: close matches: ") and "; this machine's CPU is " in lines[at + 3]
    assert not (tmp_path / "out").exists()


def test_a_close_mcpu_is_suggested(tmp_path):
    proc = compile_cli(write(tmp_path, target='mcpu = "skylak"'))
    assert proc.returncode == 2 and "note: close matches: skylake" in proc.stderr, proc.stderr


def test_an_unknown_triple_that_crashes_tvm_is_a_caret_at_triple(tmp_path):
    proc = compile_cli(write(tmp_path, target='triple = "nonsense"'))
    assert proc.returncode == 2, proc.stderr
    assert re.search(
        r':7:12: error: LLVM does not know the target triple "nonsense": TVM crashed on it '
        r"\((signal \d+|exit status \d+)\)\n"
        r'   7 \|   triple = "nonsense"\n'
        r"     \|            \^~~~~~~~~~\n"
        r'  note: a triple is arch-vendor-os, e.g. "aarch64-linux-gnu"; this machine\'s is "\S+"\n$',
        proc.stderr,
    ), proc.stderr


def test_a_triple_without_its_cross_compiler_is_refused_before_training(tmp_path):
    import shutil

    if shutil.which("riscv64-linux-gnu-g++"):
        pytest.skip("the riscv64 cross compiler is installed here")
    proc = compile_cli(write(tmp_path, target='triple = "riscv64-linux-gnu"'))
    assert proc.returncode == 2, proc.stderr
    assert (
        ":7:12: error: cross-compiling for riscv64-linux-gnu needs riscv64-linux-gnu-g++, which is not "
        "installed (Debian: apt-get install g++-riscv64-linux-gnu)\n"
    ) in proc.stderr
    assert proc.stderr.endswith("  note: or drop `triple` to build for this machine\n")


def test_diverging_training_is_a_pass_error_naming_the_learning_rate(tmp_path):
    spec = write(tmp_path, pipeline="train { epochs = 3  optimizer = sgd(lr = 100) }")
    proc = compile_cli(spec)
    assert proc.returncode == 3, proc.stderr
    assert re.fullmatch(
        r"error: while running 'train': train: the (loss|weights \(in [\w.]+\)) became "
        r"(NaN|infinite) at epoch \d \(lr = 100\): training diverged; lower the learning rate",
        proc.stderr.strip().splitlines()[-1],
    ), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("shape", [(40, 0), (40, 1, 0, 0)])
def test_data_without_features_is_a_caret_at_the_data_block(tmp_path, shape):
    np.savez(tmp_path / "empty.npz", x=np.zeros(shape, np.float32), y=np.arange(40) % 10)
    proc = compile_cli(write(tmp_path, data='data npz { path = "empty.npz" }'))
    assert proc.returncode == 2, proc.stderr
    shown = str(shape[1:]) if len(shape) > 2 else f"({shape[1]},)"
    assert proc.stderr.endswith(
        f"{tmp_path / 'tiny.adl'}:3:1: error: npz file '{tmp_path / 'empty.npz'}' has samples of shape {shown}: "
        "no features to learn from (every axis after the first must be at least 1)\n"
        '   3 | data npz { path = "empty.npz" }\n'
        "     | ^~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~\n"
    ), proc.stderr


class Crash(Pass):
    name = "crash"

    def run(self, module, ctx):
        return {}["missing"]


@pytest.fixture
def crash_pass(monkeypatch):
    monkeypatch.setitem(default_registry()._classes, "crash", Crash)


def test_a_bug_in_a_pass_is_an_internal_error_of_that_pass(tmp_path, capsys, crash_pass):
    spec = write(tmp_path, pipeline="train { epochs = 1 }  crash")
    assert main(["compile", "-q", str(spec), "-o", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "internal error in pass 'crash' (after [train]): KeyError: 'missing'; rerun with --debug for the traceback"
    )
    assert "Traceback" not in err


def test_debug_shows_the_original_traceback(tmp_path, crash_pass):
    spec = write(tmp_path, pipeline="crash")
    with pytest.raises(PassCrash) as info:
        main(["--debug", "compile", "-q", str(spec), "-o", str(tmp_path / "out")])
    assert (
        str(info.value) == "internal error in pass 'crash': KeyError: 'missing'; rerun with --debug for the traceback"
    )
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.__cause__.__traceback__.tb_next is not None  # down into Crash.run


@pytest.mark.slow
def test_any_thread_count_the_checker_accepts_exits_promptly(tmp_path):
    """1000 threads on a 2-core machine: TVM's pool of 1000 workers took minutes to shut down at
    exit (64 workers: 23 s). The library now runs with at most this machine's cores."""
    spec = write(tmp_path, cores=1000, lower="threads = 1000")
    started = time.monotonic()
    proc = compile_cli(spec, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 600
    here = len(os.sched_getaffinity(0))
    assert (
        f"lower: the target has 1000 cores but this machine {here}: the library runs and is timed here with at "
        f"most {here} threads"
    ) in " ".join(proc.stderr.split())  # rich wraps the log line
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(), parse_constant=_refuse)
    assert manifest["metrics"]["runtime_threads"] == here
    assert "non_finite" not in manifest


def _refuse(constant: str) -> None:
    raise AssertionError(f"manifest.json holds {constant}, which is not JSON")
