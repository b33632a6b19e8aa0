"""What a compile trusts in its cache: only private folders, only files this user's adl wrote.

A pickle or training state planted in the cache is refused and recomputed, never run; a cache
folder of another user is refused before anything is read; a new one is created 0700; two
compiles of one output at once both succeed (the second waits for the first).
"""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adl.cli import main
from adl.driver.check import load_spec_file
from adl.driver.run import compile_spec
from adl.dsl.errors import AdlError
from adl.ir.passes import Pass
from adl.ir.pipeline import Pipeline

NOBODY = 65534


pytestmark = pytest.mark.usefixtures("private_key_dir")


class Annotate(Pass):
    name = "annotate"

    def run(self, module, ctx):
        return module.with_metrics(annotated=True)


def _spec(tmp_path: Path, epochs: int = 1) -> Path:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((40, 1, 4, 4), dtype=np.float32), y=np.arange(40) % 10)
    spec = tmp_path / "s.adl"
    spec.write_text(
        'spec s\ntask classify { classes = 10 }\ndata npz { path = "d.npz" }\n'
        f"model mlp(hidden = [8])\npipeline {{ train {{ epochs = {epochs} }} }}\n"
    )
    return spec


def test_a_planted_checkpoint_is_refused_and_the_pass_reruns(tmp_path, planted):
    spec, cache, marker = load_spec_file(_spec(tmp_path)), tmp_path / "cache", tmp_path / "marker"
    compile_spec(spec, out_dir=tmp_path / "out", pipeline=Pipeline([Annotate()]), cache_dir=cache)
    [checkpoint] = (cache / "checkpoints").glob("*.pkl")
    checkpoint.write_bytes(pickle.dumps(planted(marker)))
    with pytest.warns(UserWarning, match="not written by this user's adl \\(bad seal\\)"):
        result = compile_spec(spec, out_dir=tmp_path / "out", pipeline=Pipeline([Annotate()]), cache_dir=cache)
    assert not marker.exists()
    assert [r.reused for r in result.module.log] == [False] and result.module.metrics["annotated"]


def test_a_planted_training_state_is_refused_and_training_starts_over(tmp_path, planted):
    spec, cache, marker = load_spec_file(_spec(tmp_path, epochs=2)), tmp_path / "cache", tmp_path / "marker"
    first = compile_spec(spec, out_dir=tmp_path / "out", cache_dir=cache)
    [state] = cache.glob("state/*/train_state.pt")
    for checkpoint in (cache / "checkpoints").glob("*.pkl"):
        checkpoint.unlink()  # so that `train` runs again and looks for its state
    torch.save({"epoch": 1, "payload": planted(marker)}, state)
    logs: list[str] = []
    again = compile_spec(spec, out_dir=tmp_path / "out", cache_dir=cache, log=logs.append)
    assert not marker.exists()
    assert any("refusing training state" in line and "starting over" in line for line in logs), logs
    assert len(again.manifest["training"]["history"]) == 2
    assert again.manifest["training"]["history"] == first.manifest["training"]["history"]  # a full rerun


def test_a_new_cache_is_private(tmp_path):
    compile_spec(load_spec_file(_spec(tmp_path)), out_dir=tmp_path / "out", pipeline=Pipeline([Annotate()]))
    assert stat.S_IMODE((tmp_path / ".adl-cache").stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_cache_of_another_user_is_refused(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, NOBODY, NOBODY)
    spec = _spec(tmp_path)
    with pytest.raises(AdlError, match="refusing cache directory: it is owned by .*uid 65534"):
        compile_spec(load_spec_file(spec), out_dir=tmp_path / "out", cache_dir=cache)
    assert main(["compile", "-q", str(spec), "-o", str(tmp_path / "out"), "--cache", str(cache)]) == 2
    assert f"{cache}: error: refusing cache directory: it is owned by" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_cache_others_can_write_is_refused(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    assert main(["compile", "-q", str(_spec(tmp_path)), "-o", str(tmp_path / "out"), "--cache", str(cache)]) == 2
    assert "is writable by other users (mode 0777)" in capsys.readouterr().err


@pytest.mark.slow  # two whole `adl compile` processes
def test_two_compiles_of_one_output_at_once_both_succeed(tmp_path):
    spec = _spec(tmp_path, epochs=3)
    command = [sys.executable, "-m", "adl", "compile", str(spec), "-o", str(tmp_path / "out")]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(proc.wait(300), proc.stderr.read()) for proc in procs]
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()
    assert [code for code, _ in results] == [0, 0], results
    logs = "".join(err for _, err in results)
    assert "reused checkpoint" in logs  # the second one waited for the first and reused its work
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary folder, no lock
