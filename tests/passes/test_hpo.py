"""The hpo pass: trials that reproduce `train`, a study that resumes, workers that may die."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
optuna = pytest.importorskip("optuna")

from adl.data import load_dataset
from adl.ir.domains import Domain
from adl.ir.progress import SilentProgress
from adl.ir.spec import CallValue
from adl.models import build_model
from adl.passes.executor import LocalExecutor
from adl.passes.hpo.search import Budget, TrialStates, best_trial, run_search, trial_records
from adl.passes.hpo.trial import EpochResult, EpochTask, TrialShared, run_epoch
from adl.passes.train import TrainPass
from adl.passes.train.loop import train_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", split=0.8, seed=0, classes=10, validation=0.2)


def _model(dataset, channels=(4, 8)):
    torch.manual_seed(0)
    return build_model(
        "cnn",
        {"channels": channels, "hidden": 16},
        input_shape=dataset.input_shape,
        classes=10,
        mean=dataset.mean,
        std=dataset.std,
    )


def _config(**changes):
    config = {o.name: o.default for o in TrainPass.options}
    config.update(epochs=3, batch_size=64, optimizer=CallValue("adam", (("lr", 0.01), ("weight_decay", 0.0))))
    config.update(changes)
    return config


def test_a_trial_run_epoch_by_epoch_reproduces_train_model_exactly(digits, tmp_path):
    """The search's epochs are train_model's, so `train` after `hpo` retrains the winner exactly."""
    config = _config()
    shared = TrialShared(digits, _model(digits), threads=1)
    state, curve = None, []
    for epoch in range(1, 4):
        result = run_epoch(shared, EpochTask(0, epoch, config, seed=3, state=state))
        state = result.state
        curve.append(result.row["val_accuracy"])
    reference = train_model(
        _model(digits),
        digits,
        config,
        seed=3,
        state_dir=tmp_path,
        progress=SilentProgress(),
        threads=1,
        log=lambda m: None,
    )
    assert curve == [row["val_accuracy"] for row in reference.history]
    trained = _model(digits)
    trained.load_state_dict(torch.load(io.BytesIO(state), weights_only=True)["model"])
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, trained.state_dict()[name]), name


def test_a_diverging_trial_reports_it_instead_of_raising(digits):
    config = _config(
        optimizer=CallValue("sgd", (("lr", 1e6), ("momentum", 0.9), ("weight_decay", 0.0), ("nesterov", True)))
    )
    result = run_epoch(TrialShared(digits, _model(digits)), EpochTask(0, 1, config, seed=0, state=None))
    assert "diverged" in result.diverged


SPACE = {
    "optimizer.lr": Domain("loguniform", 1e-3, 0.3),
    "epochs": Domain("int", 1, 3),
}


def _base():
    return _config(
        optimizer=CallValue("adam", (("lr", SPACE["optimizer.lr"]), ("weight_decay", 0.0))), epochs=SPACE["epochs"]
    )


def _search(digits, folder: Path, *, trials=5, sampler="tpe", pruner="median", executor=None, seed=0, model=None):
    return run_search(
        folder / "study.db",
        SPACE,
        _base(),
        executor or LocalExecutor(jobs=1, threads=1),
        TrialShared(digits, model or _model(digits)),
        budget=Budget(trials),
        sampler=sampler,
        pruner=pruner,
        seed=seed,
        state_folder=folder / "trials",
    )


def test_a_study_runs_its_budget_and_records_every_trial(digits, tmp_path):
    study = _search(digits, tmp_path, trials=5, pruner="none")
    records = trial_records(study)
    assert [r["number"] for r in records] == [0, 1, 2, 3, 4]
    assert all(r["state"] == "complete" for r in records)
    for r in records:  # every epoch reported, the value is the last epoch's
        assert len(r["val_accuracy_per_epoch"]) == r["params"]["epochs"]
        assert r["value"] == r["val_accuracy_per_epoch"][-1]
        assert 1e-3 <= r["params"]["optimizer.lr"] <= 0.3
    best = best_trial(study)
    assert best.value == max(r["value"] for r in records)
    assert not list((tmp_path / "trials").iterdir())  # finished trials leave no state behind


def test_the_same_seed_asks_the_same_values_and_another_seed_others(digits, tmp_path):
    first = trial_records(_search(digits, tmp_path / "a", trials=3, sampler="random", pruner="none"))
    again = trial_records(_search(digits, tmp_path / "b", trials=3, sampler="random", pruner="none"))
    other = trial_records(_search(digits, tmp_path / "c", trials=3, sampler="random", pruner="none", seed=1))
    assert [r["params"] for r in first] == [r["params"] for r in again]
    assert [r["value"] for r in first] == [r["value"] for r in again]
    assert [r["params"] for r in first] != [r["params"] for r in other]


def test_a_trial_state_planted_in_the_cache_is_never_unpickled(tmp_path, planted, private_key_dir):
    states = TrialStates(tmp_path / "trials")
    states.save(EpochResult(3, 2, b"state", {}))
    assert states.load(3) == (2, b"state")
    marker = tmp_path / "ran"
    (tmp_path / "trials" / "trial-4.pkl").write_bytes(pickle.dumps(planted(marker)))
    assert states.load(4) == (0, None) and not marker.exists()


def test_a_rerun_of_a_finished_study_runs_no_more_trials(digits, tmp_path):
    study = _search(digits, tmp_path, trials=2, pruner="none")
    again = _search(digits, tmp_path, trials=2, pruner="none")
    assert len(again.trials) == 2
    assert [t.params for t in again.trials] == [t.params for t in study.trials]


def _recording(executor):
    """`executor`, keeping every outcome its `wait` returns in `executor.outcomes`."""
    executor.outcomes = []
    wait = executor.wait

    def recording_wait(timeout=None):
        outcomes = wait(timeout)
        executor.outcomes.extend(outcomes)
        return outcomes

    executor.wait = recording_wait
    return executor


def _busy(pids: list[int]) -> list[int]:
    """Of `pids`, the processes that used the CPU in the next 0.1 s (inside an epoch)."""
    psutil = pytest.importorskip("psutil")

    def cpu(pid: int) -> float:
        try:
            times = psutil.Process(pid).cpu_times()
            return times.user + times.system
        except psutil.Error:
            return float("nan")

    before = {pid: cpu(pid) for pid in pids}
    time.sleep(0.1)
    return [pid for pid in pids if cpu(pid) > before[pid]]


def _kill_until_retried(executor, workers) -> threading.Thread:
    """A thread that SIGKILLs a worker busy in an epoch (of the pids `workers()` lists)
    once an epoch has come back (the workers are warm), then waits for the killed epoch's retry;
    if none comes (the kill found the worker between tasks), it tries again."""

    def retried() -> bool:
        return any(o.attempts > 1 for o in executor.outcomes)

    def kill() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not retried() and not thread.stop.is_set():
            pids = _busy(workers())
            if executor.outcomes and pids and executor.pending():
                os.kill(pids[0], signal.SIGKILL)
                thread.kills += 1
                wait_until = time.monotonic() + 10  # a local retry starts a fresh worker first
                while time.monotonic() < wait_until and not retried() and not thread.stop.is_set():
                    time.sleep(0.05)

    thread = threading.Thread(target=kill, daemon=True)
    thread.stop = threading.Event()  # set when the search is over
    thread.kills = 0
    thread.start()
    return thread


def test_a_worker_killed_mid_trial_costs_one_epoch_not_the_search(digits, tmp_path):
    """SIGKILL a worker while it trains: its epoch is retried on a fresh worker, every trial completes."""
    workers = lambda: [p.pid for p in multiprocessing.active_children()]  # noqa: E731
    _search_survives_a_kill(LocalExecutor(jobs=1, threads=1), workers, digits, tmp_path)


def test_trials_run_on_a_ray_cluster(digits, tmp_path):
    """The search on a 2-CPU Ray cluster gives what it gives on a local worker, trial for trial
    (one at a time: the same values asked in the same order; a trial's epochs are deterministic).
    A Ray worker killed mid-task is retried by the executor: tests/passes/test_executor.py."""
    pytest.importorskip("ray")
    from adl.passes.executor import RayExecutor
    from adl.passes.executor.ray import LocalRayCluster

    local = trial_records(_search(digits, tmp_path / "local", trials=3, sampler="random", pruner="none"))
    with LocalRayCluster(cpus=1, object_store_mb=100) as address:
        executor = RayExecutor(address=address, cpus=1)
        remote = trial_records(
            _search(digits, tmp_path / "ray", trials=3, sampler="random", pruner="none", executor=executor)
        )
    assert [(r["params"], r["value"], r["val_accuracy_per_epoch"]) for r in remote] == [
        (r["params"], r["value"], r["val_accuracy_per_epoch"]) for r in local
    ]


def _search_survives_a_kill(executor, workers, digits, folder, channels=(64, 128)):
    """A 6-trial search on `executor` while a thread kills one of its `workers()` mid-epoch: the
    epoch is retried (an outcome of 2 attempts) and every trial completes."""
    executor = _recording(executor)
    killer = _kill_until_retried(executor, workers)
    study = _search(digits, folder, trials=6, pruner="none", executor=executor, model=_model(digits, channels))
    killer.stop.set()
    killer.join()
    assert any(o.attempts == 2 and o.ok for o in executor.outcomes), (
        f"{killer.kills} kills; outcomes {[(o.attempts, o.ok, o.error) for o in executor.outcomes]}"
    )
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    return study


# -- the pass in a compile -----------------------------------------------------------------------

SPEC = """
spec hpo_tiny
task classify {{ classes = 10 }}
data digits {{ split = 0.8  seed = 0  validation = 20 % }}
model cnn(channels = [4, 8], hidden = 16)
target host {{ kind = llvm  cores = 1 }}
constraints {{ accuracy >= 50 % }}
pipeline {{
  hpo(trials = {trials}, pruner = none, executor = local(jobs = 1))
  train(epochs = int(1, 3), optimizer = adam(lr = loguniform(1e-3, 3e-1)))
}}
"""


def _compile(spec: Path, out: Path, cache: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "adl", "compile", str(spec), "-o", str(out), "--cache", str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        **kwargs,
    )


def _finished_trials(cache: Path) -> int:
    finished = 0
    for db in cache.glob("state/*/study.db"):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as connection:
                finished += connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
        except sqlite3.Error:
            pass
    return finished


def _trials(manifest: dict) -> list[tuple]:
    return [(t["number"], t["state"], t["params"], t["value"]) for t in manifest["metrics"]["hpo"]["trials"]]


@pytest.mark.slow
def test_a_compile_killed_mid_search_resumes_with_the_same_trials(tmp_path):
    spec = tmp_path / "hpo.adl"
    spec.write_text(SPEC.format(trials=4))
    reference = _compile(spec, tmp_path / "ref", tmp_path / "ref-cache")
    output = reference.communicate(timeout=600)[0].decode()
    assert reference.returncode == 0, output
    expected = json.loads((tmp_path / "ref" / "manifest.json").read_text())

    cache = tmp_path / "cache"
    killed = _compile(spec, tmp_path / "out", cache, start_new_session=True)
    deadline = time.monotonic() + 300
    while _finished_trials(cache) < 2 and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.1)
    assert killed.poll() is None, "the compile finished before it could be killed"
    os.killpg(killed.pid, signal.SIGKILL)  # the compile and its workers, mid-search
    killed.wait()
    assert 2 <= _finished_trials(cache) < 4
    rerun = _compile(spec, tmp_path / "out", cache)
    output = rerun.communicate(timeout=600)[0].decode()
    assert rerun.returncode == 0, output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert _trials(manifest) == _trials(expected)
    assert manifest["metrics"]["hpo"]["params"] == expected["metrics"]["hpo"]["params"]

    # train ran with the chosen values: its history is the winning trial's, epoch for epoch
    hpo = manifest["metrics"]["hpo"]
    best = next(t for t in hpo["trials"] if t["number"] == hpo["best"]["trial"])
    history = manifest["training"]["history"]
    assert [row["val_accuracy"] for row in history] == best["val_accuracy_per_epoch"]
    assert (tmp_path / "out" / "hpo_study.db").is_file()
    assert "Hyperparameter search (`hpo`)" in (tmp_path / "out" / "report.md").read_text()
    assert "Each trial&#x27;s validation accuracy" in (tmp_path / "out" / "report.html").read_text()
