"""The executors: results, the shared object, parallelism, task errors, workers that die, cleanup.

The task functions live in `adl.passes.executor.selftest`: worker processes import a task's
module by name, which a test module (imported by path) has not got. The Ray tests start a
2-CPU cluster of their own on this machine (``ray start --head``) and kill exactly its processes
afterwards (``ray stop`` would stop every Ray cluster on the machine).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adl.ir.passes import PassError
from adl.passes.executor import Executor, ExecutorLost, LocalExecutor, Outcome, make_executor
from adl.passes.executor import selftest as tasks


def run_all(executor: Executor, jobs: list[tuple]) -> list[Outcome]:
    """Submits ``(fn, payload)`` jobs, waits for all of them; the outcomes in submission order."""
    ids = [executor.submit(fn, payload) for fn, payload in jobs]
    outcomes: dict[int, Outcome] = {}
    while executor.pending():
        for outcome in executor.wait(timeout=60):
            outcomes[outcome.task_id] = outcome
    return [outcomes[task_id] for task_id in ids]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- LocalExecutor -----------------------------------------------------------------------------


def test_results_and_the_shared_object_sent_once():
    with LocalExecutor(jobs=1) as executor:
        executor.start({"weights": [1, 2, 3]})
        echoed, first, second = run_all(executor, [(tasks.echo, "x"), (tasks.whoami, None), (tasks.whoami, None)])
    assert echoed == Outcome(0, value=({"weights": [1, 2, 3]}, "x"))
    assert echoed.ok and executor.describe() == "local(jobs=1, threads=1)"
    assert first.value == second.value  # one worker, one copy of the shared object


def test_two_jobs_run_in_parallel():
    with LocalExecutor(jobs=2) as executor:
        executor.start(None)
        run_all(executor, [(tasks.echo, 0), (tasks.echo, 1)])  # both workers up
        start = time.monotonic()
        assert [o.value for o in run_all(executor, [(tasks.sleep_then_echo, 1.0)] * 2)] == [1.0, 1.0]
        assert time.monotonic() - start < 1.8


def test_task_errors_are_outcomes_and_the_worker_survives():
    with LocalExecutor(jobs=1) as executor:
        executor.start(None)
        before, failed, unpicklable, after = run_all(
            executor, [(tasks.whoami, None), (tasks.fail, 7), (tasks.unpicklable, None), (tasks.whoami, None)]
        )
    assert failed.error == "ValueError: failed on purpose: 7" and not failed.lost and failed.attempts == 1
    assert "Traceback" in failed.detail and "selftest.py" in failed.detail
    assert "could not be pickled" in unpicklable.error and not unpicklable.ok
    assert before.value[0] == after.value[0]  # the same worker process


def test_a_killed_worker_is_replaced_and_only_its_task_retried(tmp_path):
    with LocalExecutor(jobs=2, retries=1) as executor:
        executor.start(None)
        retried, lost, other = run_all(
            executor, [(tasks.die, str(tmp_path / "marker")), (tasks.die, None), (tasks.sleep_then_echo, 0.5)]
        )
        assert retried == Outcome(0, value="survived", attempts=2)
        assert lost.lost and lost.attempts == 2 and lost.error == "worker process killed by SIGKILL"
        assert other == Outcome(2, value=0.5)
        assert run_all(executor, [(tasks.echo, 1)])[0].value == (None, 1)  # still 2 working workers
        assert len(multiprocessing.active_children()) == 2


def test_close_stops_busy_workers_and_timeouts_return_nothing():
    executor = LocalExecutor(jobs=2, threads=3)
    executor.start(None)
    assert run_all(executor, [(tasks.threads, False)])[0].value == ("3", None)
    executor.submit(tasks.sleep_then_echo, 30)
    assert executor.wait(timeout=0.2) == [] and executor.pending() == 1
    start = time.monotonic()
    executor.close()
    executor.close()
    assert multiprocessing.active_children() == [] and time.monotonic() - start < 3
    with pytest.raises(PassError, match="after close"):
        executor.submit(tasks.echo, None)


def test_workers_exit_with_their_parent():
    """A parent killed outright (no close, no atexit) leaves no workers behind."""
    code = (
        "from adl.passes.executor import LocalExecutor, selftest\n"
        "if __name__ == '__main__':\n"
        "    executor = LocalExecutor(jobs=2); executor.start(None)\n"
        "    for _ in range(2): executor.submit(selftest.whoami, None)\n"
        "    executor.submit(selftest.sleep_then_echo, 30)\n"
        "    pids = set()\n"
        "    while len(pids) < 2: pids |= {o.value[0] for o in executor.wait()}\n"
        "    print(*pids, flush=True)\n"
        "    import time; time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_make_executor():
    local = make_executor("local", {"jobs": 2}, default_threads=8)
    assert local.describe() == "local(jobs=2, threads=4)" and local.slots == 2
    assert make_executor("local", {"jobs": 4, "threads": 1}, default_threads=2).describe() == "local(jobs=4, threads=1)"
    assert make_executor("local", {"jobs": 4}, default_threads=2).describe() == "local(jobs=4, threads=1)"
    with pytest.raises(PassError, match="unknown executor 'dask'"):
        make_executor("dask", {}, default_threads=1)
    with pytest.raises(PassError, match="jobs and threads must be >= 1"):
        LocalExecutor(jobs=0)


def test_importing_the_package_imports_neither_torch_nor_ray():
    code = "import sys, adl.passes.executor; print('torch' in sys.modules, 'ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == [
        "False",
        "False",
    ]


# -- RayExecutor -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    pytest.importorskip("ray")
    from adl.passes.executor.ray import LocalRayCluster

    with LocalRayCluster(cpus=2, object_store_mb=100) as address:
        yield address


@pytest.fixture
def ray_executor(ray_cluster) -> Iterator[Executor]:
    from adl.passes.executor import RayExecutor

    with RayExecutor(address=ray_cluster, cpus=1, retries=1) as executor:
        yield executor


def test_ray_runs_tasks_with_the_shared_object(ray_executor, ray_cluster):
    assert ray_executor.slots == 2 and ray_executor.describe() == f"ray(address={ray_cluster}, cpus=1)"
    ray_executor.start({"weights": [1, 2, 3]})
    echoed, failed, unpicklable, threads = run_all(
        ray_executor, [(tasks.echo, "x"), (tasks.fail, 7), (tasks.unpicklable, None), (tasks.threads, False)]
    )
    assert echoed == Outcome(0, value=({"weights": [1, 2, 3]}, "x"))
    assert failed.error == "ValueError: failed on purpose: 7" and "selftest.py" in failed.detail and not failed.lost
    assert unpicklable.error.startswith("TypeError: cannot pickle") and not unpicklable.lost
    assert threads.value == ("1", None)


def test_ray_retries_a_killed_worker_and_reports_one_that_keeps_dying(ray_executor, tmp_path):
    ray_executor.start(None)
    retried, lost = run_all(ray_executor, [(tasks.die, str(tmp_path / "marker")), (tasks.die, None)])
    assert retried == Outcome(0, value="survived", attempts=2)
    assert lost.lost and lost.attempts == 2 and lost.error.startswith("WorkerCrashedError")
    assert run_all(ray_executor, [(tasks.echo, 1)])[0] == Outcome(2, value=(None, 1))


def test_ray_finds_the_cluster_through_ray_address(ray_cluster, monkeypatch):
    from adl.passes.executor import RayExecutor

    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    with make_executor("ray", {"cpus": 2}, default_threads=1) as executor:
        assert isinstance(executor, RayExecutor) and executor.slots == 1
        executor.start(None)
        assert run_all(executor, [(tasks.threads, False)])[0].value == ("2", None)


def test_ray_without_a_cluster_fails_fast():
    pytest.importorskip("ray")
    from adl.passes.executor import RayExecutor

    start = time.monotonic()
    with pytest.raises(ExecutorLost, match=r"no Ray cluster answers at 127\.0\.0\.1:\d+ .*ray start --head"):
        RayExecutor(address=f"127.0.0.1:{free_port()}", connect_timeout_s=5)
    assert time.monotonic() - start < 5


def test_ray_losing_the_cluster_raises_executor_lost(monkeypatch):
    pytest.importorskip("ray")
    from adl.passes.executor import RayExecutor
    from adl.passes.executor import ray as ray_executor
    from adl.passes.executor.ray import LocalRayCluster

    monkeypatch.setattr(ray_executor, "POLL_S", 1.0)
    cluster = LocalRayCluster(cpus=2, object_store_mb=100)
    try:
        with RayExecutor(address=cluster.address) as executor:
            executor.start(None)
            executor.submit(tasks.sleep_then_echo, 60)
            assert executor.wait(timeout=0.5) == []
            cluster.stop()
            start = time.monotonic()
            with pytest.raises(ExecutorLost, match="lost the Ray cluster at .*Connection refused"):
                executor.wait()
            assert time.monotonic() - start < 5
    finally:
        cluster.stop()
