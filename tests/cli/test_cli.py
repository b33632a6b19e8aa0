from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from adl.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "digits_fixed.adl"


def test_check_accepts_the_example(capsys):
    assert main(["check", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "ok: spec 'digits_fixed'" in out and "pipeline train,lower" in out


def test_the_full_pipeline_examples_check(capsys, tmp_path):
    assert main(["check", str(ROOT / "examples" / "digits.adl")]) == 0
    assert "pipeline nas,train,amc,haq,lower" in capsys.readouterr().out
    # cifar10.adl names a folder users download; with an (empty) one in place the spec checks
    (tmp_path / "cifar-10-batches-py").mkdir()
    spec = tmp_path / "cifar10.adl"
    spec.write_text((ROOT / "examples" / "cifar10.adl").read_text())
    assert main(["check", str(spec)]) == 0
    assert "cifar10 data" in capsys.readouterr().out


def test_python_dash_m_is_the_same_command():
    a = subprocess.run([sys.executable, "-m", "adl", "check", str(EXAMPLE)], capture_output=True, text=True)
    b = subprocess.run(
        [str(Path(sys.executable).parent / "adl"), "check", str(EXAMPLE)], capture_output=True, text=True
    )
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout


def test_passes_lists_every_pass_with_options(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for text in (
        "train:",
        "lower:",
        "nas:",
        "amc:",
        "haq:",
        "hpo:",
        "options may be search domains",
        "epochs",
        "optimizer",
        "repeats",
        "tolerance",
        "requires: model",
        "range",
        "1..1000000",
    ):
        assert text in out


def test_data_writes_the_test_split(tmp_path, capsys):
    out = tmp_path / "t.npz"
    assert main(["data", str(EXAMPLE), "-o", str(out)]) == 0
    with np.load(out) as d:
        assert d["x"].shape[1:] == (1, 8, 8) and len(d["x"]) == len(d["y"]) == 359


def test_run_on_something_that_is_not_an_artifact(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    assert main(["run", str(tmp_path), "--input", str(tmp_path / "x.npy")]) == 2
    assert "is not an adl artifact (no manifest.json)" in capsys.readouterr().err


def test_a_bad_pipeline_override_is_a_spec_error(capsys):
    assert main(["compile", str(EXAMPLE), "--pipeline", "train{epochs=-1}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("--pipeline:1:14: error: 'epochs' must be at least 1, got -1")


def test_usage_errors_exit_2():
    proc = subprocess.run([sys.executable, "-m", "adl", "compile"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr
