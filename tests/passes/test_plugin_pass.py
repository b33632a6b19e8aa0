"""examples/plugin_pass: pip-installed into this venv, the `temperature` pass is found through
the `adl.passes` entry point, listed, checked with carets, run in a compile (its report
section included) and named in the depfile."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ADL = [sys.executable, "-m", "adl"]

SPEC = """spec calibrated
task classify { classes = 10 }
data digits
model mlp(hidden = [32])
target host { kind = llvm  cores = 1 }
pipeline {
  train { epochs = 3 }
  temperature { bins = 10 }
  lower { repeats = 10 }
}
"""


@pytest.fixture(scope="module")
def installed_pass(install_example):
    return install_example("plugin_pass", "adl-plugin-temperature")


def test_the_plugin_pass_is_listed_and_its_options_are_checked_with_a_caret(installed_pass, tmp_path):
    listed = subprocess.run([*ADL, "passes"], capture_output=True, text=True)
    assert listed.returncode == 0 and "temperature" in listed.stdout and "bins" in listed.stdout
    bad = tmp_path / "bad.adl"
    bad.write_text(SPEC.replace("bins = 10", "bins = 1"))
    proc = subprocess.run([*ADL, "check", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{bad}:8:24: error:" in proc.stderr and "bins" in proc.stderr and "^" in proc.stderr


@pytest.mark.slow
def test_a_compile_runs_the_plugin_pass_between_train_and_lower(installed_pass, tmp_path):
    spec = tmp_path / "calibrated.adl"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    proc = subprocess.run(
        [*ADL, "compile", "-q", str(spec), "-o", str(out), "--depfile", str(tmp_path / "out.d")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [p["name"] for p in manifest["passes"]] == ["train", "temperature", "lower"]
    t = manifest["metrics"]["temperature"]
    assert t["t"] > 0 and t["fitted_on"] + t["judged_on"] == manifest["data"]["test_samples"]
    assert manifest["metrics"]["max_abs_diff"] <= 1e-4  # the folded temperature is in the library
    # the library's logits are within max_abs_diff of PyTorch's, so a sample's class can differ only where
    # its two top logits are within 2e-4 of each other: allow one such near-tie among the test samples
    one_sample = 1 / manifest["data"]["test_samples"]
    assert abs(manifest["metrics"]["accuracy"] - manifest["metrics"]["torch_accuracy"]) <= one_sample + 1e-12
    assert "## Calibration (`temperature`)" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    body = page.split("<h2>Calibration (<code>temperature</code>)</h2>", 1)[1].split("<h2>", 1)[0]
    assert '<img alt="Reliability: accuracy against confidence' in body and "<th>mean confidence</th>" in body
    carried = json.loads((out / "calibration.json").read_text())  # the pass's artifact file
    assert carried["t"] == t["t"] and sum(b["count"] for b in carried["after"]["bins"]) == t["judged_on"]
    assert t["after"]["nll"] <= t["before"]["nll"] + 1e-3  # one parameter fitted on 180 samples generalises
    assert "adl_temperature.py" in (tmp_path / "out.d").read_text()  # a plug-in's source is a dependency
