"""MetaSchedule tuning: persistent database, reuse, deadline, torn-file repair, in the compiler."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

TARGET = {"kind": "llvm", "num-cores": 2}


def _tiny_module():
    """Two tuning tasks (matmul+add+relu, matmul+add): a Flatten in front would add a third,
    a reshape with a single schedule, and with it a builder pool per tuning session."""
    from tvm.relax.frontend.torch import from_exported_program

    from adl.backends.tvm import tuning

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    exported = torch.export.export(model, (torch.zeros(1, 16),))
    return model, tuning.prepare_for_tuning(from_exported_program(exported, keep_params_as_input=False))


@pytest.fixture
def torch_free_workers(tmp_path, monkeypatch):
    """MetaSchedule's builder and runner workers, started per build batch, start without torch.

    Every worker imports TVM, whose FFI imports torch when it can: ~2.5 of a worker's ~4 s start,
    paid for each of the ~10 workers of this test's two tuning sessions. The workers only build
    and time TIR, so hiding torch from them (as `servers` hides it from the RPC servers) changes
    nothing they compute; a worker that needed it would fail its candidates, which the test
    counts. The tuned compile (test_a_spec_with_tuning_records_it_in_the_manifest) runs the
    workers as `adl compile` starts them, torch included.
    """
    stub = tmp_path / "no_torch"
    stub.mkdir()
    (stub / "torch.py").write_text('raise ImportError("torch is hidden in this tuning worker")\n')
    paths = [str(stub), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))  # tune() adds its own folder in front


@pytest.mark.slow
def test_tuning_is_stored_reused_and_applied(tmp_path, torch_free_workers):
    from adl.backends.runtime import CompiledLibrary
    from adl.backends.tvm import tuning

    model, mod = _tiny_module()
    cut_short = tuning.tune(mod, TARGET, trials_per_task=2, minutes=0.0, root=tmp_path)
    assert cut_short.stopped_by_deadline and 0 < cut_short.trials < 2 * cut_short.tasks
    # the same request again: its time budget was spent once, it is not spent twice
    assert tuning.tune(mod, TARGET, trials_per_task=2, minutes=0.0, root=tmp_path).trials == 0

    first = tuning.tune(mod, TARGET, trials_per_task=4, root=tmp_path)  # more trials: tuned further
    assert not first.stopped_by_deadline and first.trials > 0 and first.failed == 0, first.first_failure
    folder = tuning.database_dir(TARGET, tmp_path)
    records = (folder / tuning.RECORD_FILE).read_text().splitlines()
    assert len(records) == cut_short.trials + first.trials

    again = tuning.tune(mod, TARGET, trials_per_task=4, root=tmp_path)
    assert (again.tasks_reused, again.tasks_tuned, again.trials) == (again.tasks, 0, 0)
    assert again.seconds < 0.1 * first.seconds

    executable = tuning.build_with_database(mod, TARGET, root=tmp_path)
    executable.export_library(str(tmp_path / "tuned.so"))
    library = CompiledLibrary(tmp_path / "tuned.so", (1, 16))
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    with torch.no_grad():  # outputs |z| < 0.8 of two small layers: ~6e-8 of float32 rounding
        assert np.abs(library.run(x) - model(torch.from_numpy(x)).numpy()).max() <= 1e-5


def test_a_torn_database_line_is_dropped_with_a_warning(tmp_path):
    from adl.backends.tvm.tuning import RECORD_FILE, WORKLOAD_FILE, repair_database

    (tmp_path / WORKLOAD_FILE).write_text('["hash", "mod"]\n')
    (tmp_path / RECORD_FILE).write_text('[0, ["trace"]]\n[0, ["tra')  # killed mid-write
    with pytest.warns(UserWarning, match="dropped 1 torn line"):
        assert repair_database(tmp_path) == 1
    assert (tmp_path / RECORD_FILE).read_text() == '[0, ["trace"]]\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert repair_database(tmp_path) == 0


@pytest.mark.slow
def test_a_spec_with_tuning_records_it_in_the_manifest(tmp_path):
    # In a fresh process: MetaSchedule builds its loggers from the process's logging setup,
    # which pytest's log capture leaves in a state it cannot parse.
    import os
    import subprocess
    import sys

    spec = tmp_path / "tuned.adl"
    spec.write_text("""
        task classify { classes = 10 }
        data digits
        model mlp(hidden = [16])
        target host { kind = llvm  cores = 2  tune = metaschedule(trials = 2) }
        pipeline { train(epochs = 1) lower(repeats = 10) }
    """)
    env = {**os.environ, "ADL_TUNING_DIR": str(tmp_path / "db")}
    proc = subprocess.run(
        [sys.executable, "-m", "adl", "compile", str(spec), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # TVM's C++ warnings (applying the database) and MetaSchedule's loggers go to the compile's
    # log file, not the terminal (adl.library_log); adl's own lines stay
    assert "Creating JSONDatabase" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    assert "[INFO]" not in proc.stdout and "Total trials" not in proc.stdout
    [log] = (tmp_path / ".adl-cache" / "logs").glob("out-*.log")
    text = log.read_text()
    assert "Creating JSONDatabase" in text and "Total trials" in text
    shown = [line for line in proc.stderr.splitlines() if line.strip()]
    assert all(line.startswith(("compiling ", "  ", "/")) for line in shown), shown  # "/": a wrapped path
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tuning"]["method"] == "metaschedule" and manifest["tuning"]["trials"] == 2
    report = manifest["tuning"]["report"]
    assert report["tasks"] >= 2 and report["tasks_tuned"] == report["tasks"] and report["trials"] > 0
    assert report["failed"] == 0 and report["chosen"] in ("default", "metaschedule")
    # both variants timed at their fastest thread count; the faster one kept
    assert set(report["variant_threads"].values()) <= {1, 2}
    assert report["variant_median_ms"][report["chosen"]] == min(report["variant_median_ms"].values())
    assert report["database"].startswith(str(tmp_path / "db"))
    assert manifest["metrics"]["max_abs_diff"] <= 1e-4
