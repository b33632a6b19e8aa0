"""`RayExecutor`: tasks run on a Ray cluster (``ray`` is an optional dependency, imported here only).

``address`` is ``"auto"`` (``RAY_ADDRESS``, else the cluster ``ray start`` last started on this
machine) or the ``host:port`` of a running head (``ray start --head --num-cpus 2``). The cluster's
workers import the tasks' modules by name, so every node needs the same ``adl`` installed (a
local cluster started from adl's own environment has it).

The shared object is put in the object store once; each task gets it as an argument, resolved in
the worker (numpy arrays come zero-copy, as read-only views). A task whose worker process died
(killed, out of memory, its node gone) is submitted again by this executor, ``retries`` times,
so that `Outcome.attempts` counts what happened. When the cluster itself stops answering, `wait`
raises `ExecutorLost`: Ray's own driver exits the process about a minute after it loses the
cluster's control service (GCS), so the caller should stop promptly (`close` is quick).
"""

from __future__ import annotations

import itertools
import logging
import re
import socket
import time
from typing import Any

from adl.ir.passes import PassError

from .base import Executor, ExecutorLost, Outcome, Task, error_text, limit_threads

START_HINT = "start one with `ray start --head --num-cpus 2` and pass its HOST:PORT, or use the local executor"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
POLL_S = 5.0  # how often `wait` checks, while nothing finishes, that the cluster still answers


def _run(fn: Task, shared: Any, payload: Any, threads: int) -> Any:
    """The remote function: ``fn(shared, payload)`` with the worker's thread pools sized."""
    limit_threads(threads)
    return fn(shared, payload)


def _unreachable(address: str | None, timeout: float) -> str | None:
    """Why a TCP connection to ``host:port`` fails, or None when it opens (or cannot be tried)."""
    host, _, port = (address or "").rpartition(":")
    if not host or not port.isdigit() or "://" in host:
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as error:
        return error_text(error)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise PassError("the ray executor needs Ray: pip install 'ray[default]'") from error
    return ray


class RayExecutor(Executor):
    def __init__(self, address: str = "auto", cpus: int = 1, retries: int = 1, connect_timeout_s: float = 60) -> None:
        if cpus < 1 or retries < 0:
            raise PassError(f"ray executor: cpus must be >= 1 and retries >= 0 (got {cpus}, {retries})")
        self.address = address
        self.cpus = cpus
        self.retries = retries
        self.connect_timeout_s = connect_timeout_s
        self._ray = ray = _import_ray()
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            self._connect()
        self._gcs: str | None = ray.get_runtime_context().gcs_address
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 0) // cpus))
        self._remote = ray.remote(num_cpus=cpus, max_retries=0, retry_exceptions=False)(_run)
        self._shared: Any = None
        self._tasks: dict[int, tuple[Task, Any, int]] = {}  # task id: (fn, payload, attempts)
        self._refs: dict[Any, int] = {}  # running task's ObjectRef: its task id
        self._ids = itertools.count()
        self._closed = False

    def _connect(self) -> None:
        ray = self._ray
        try:
            from ray._private.services import canonicalize_bootstrap_address

            bootstrap = canonicalize_bootstrap_address(self.address)
        except Exception:  # a private helper: when it is gone or fails, ray.init says what is wrong
            bootstrap = self.address
        if bootstrap is None:
            raise ExecutorLost(f"no Ray cluster found for address {self.address!r}; {START_HINT}")
        # ray.init retries an unreachable address for many minutes: try the port first.
        why = _unreachable(bootstrap, self.connect_timeout_s)
        if why is not None:
            raise ExecutorLost(f"no Ray cluster answers at {self.address} ({why}); {START_HINT}")
        try:
            ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
        except Exception as error:
            ray.shutdown()
            raise ExecutorLost(f"cannot connect to the Ray cluster at {self.address}: {error_text(error)}") from error

    def describe(self) -> str:
        return f"ray(address={self.address}, cpus={self.cpus})"

    def start(self, shared: Any) -> None:
        if self._shared is not None:
            raise PassError("ray executor: start() was already called")
        self._shared = self._ray.put(shared)

    def submit(self, fn: Task, payload: Any) -> int:
        if self._shared is None or self._closed:
            raise PassError("ray executor: submit() before start() or after close()")
        task_id = next(self._ids)
        self._tasks[task_id] = (fn, payload, 0)
        self._launch(task_id)
        return task_id

    def _launch(self, task_id: int) -> None:
        fn, payload, attempts = self._tasks[task_id]
        self._tasks[task_id] = (fn, payload, attempts + 1)
        self._refs[self._remote.remote(fn, self._shared, payload, self.cpus)] = task_id

    def pending(self) -> int:
        return len(self._tasks)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        ray = self._ray
        deadline = None if timeout is None else time.monotonic() + timeout
        outcomes: list[Outcome] = []
        while not outcomes and self._refs:
            remaining = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
            try:
                ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=remaining)
                if ready:
                    ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
            except (ray.exceptions.RaySystemError, ConnectionError) as error:
                raise self._lost(error_text(error)) from error
            for ref in ready:
                outcome = self._collect(ref)
                if outcome is not None:
                    outcomes.append(outcome)
            if not ready:
                why = _unreachable(self._gcs, min(POLL_S, self.connect_timeout_s))
                if why is not None:
                    raise self._lost(why)
                if deadline is not None and time.monotonic() >= deadline:
                    break
        return outcomes

    def _lost(self, why: str) -> ExecutorLost:
        return ExecutorLost(f"lost the Ray cluster at {self._gcs or self.address}: {why}")

    def _collect(self, ref: Any) -> Outcome | None:
        """The outcome of a finished task, or None when its worker died and it runs again."""
        errors = self._ray.exceptions
        task_id = self._refs.pop(ref)
        attempts = self._tasks[task_id][2]
        try:
            value = self._ray.get(ref, timeout=self.connect_timeout_s)
        except errors.RayTaskError as error:  # the task raised; `cause` is what it raised
            cause = error.cause if isinstance(error.cause, BaseException) else error
            detail = ANSI.sub("", str(error))  # the worker's traceback, under a colored "ray::_run()"
            outcome = Outcome(task_id, error=error_text(cause), detail=detail, attempts=attempts)
        except (
            errors.WorkerCrashedError,
            errors.NodeDiedError,
            errors.OutOfMemoryError,
            errors.ObjectLostError,
        ) as error:
            if attempts <= self.retries:
                self._launch(task_id)
                return None
            outcome = Outcome(task_id, error=error_text(error), lost=True, attempts=attempts)
        except (errors.RaySystemError, errors.LocalRayletDiedError, errors.GetTimeoutError, ConnectionError) as error:
            raise self._lost(error_text(error)) from error
        except errors.RayError as error:  # cancelled, unschedulable, a runtime environment that failed...
            outcome = Outcome(task_id, error=error_text(error), attempts=attempts)
        else:
            outcome = Outcome(task_id, value=value, attempts=attempts)
        del self._tasks[task_id]
        return outcome

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ref in self._refs:  # a connection this executor did not open outlives it: stop its tasks
            try:
                self._ray.cancel(ref, force=True)
            except Exception:
                pass
        self._tasks.clear()
        self._refs.clear()
        self._shared = None
        if self._owns_connection and self._ray.is_initialized():
            self._ray.shutdown()


class LocalRayCluster:
    """A Ray head on this machine (`ray start --head`), in a process group and temp folder of its
    own, stopped by killing exactly that group (`ray stop` would stop every Ray cluster on the
    machine). For tests and benches; a deployment runs its own cluster.

        with LocalRayCluster(cpus=2) as address:
            executor = RayExecutor(address=address)
    """

    def __init__(self, cpus: int = 2, object_store_mb: int = 200, timeout_s: float = 120) -> None:
        import os
        import subprocess
        import sys
        import tempfile

        self.temp = tempfile.mkdtemp(prefix="adl-ray-")  # short: Ray's socket paths must fit 107 bytes
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        # Ray's CLI run by this interpreter (not the `ray` script beside it, which a venv that reaches
        # its packages through a .pth file lacks): the cluster's workers run this Python too
        command = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
        command += ["start", "--head", "--num-cpus", str(cpus)]
        command += ["--port", str(port), "--node-ip-address", "127.0.0.1", "--include-dashboard=false"]
        command += [
            "--disable-usage-stats",
            "--temp-dir",
            self.temp,
            "--object-store-memory",
            str(object_store_mb << 20),
        ]
        self._starter = subprocess.Popen(
            command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ)
        )
        if self._starter.wait(timeout=timeout_s) != 0:
            error = self._starter.stderr.read().decode(errors="replace")[-2000:] if self._starter.stderr else ""
            self.stop()
            raise PassError(f"ray start failed: {error}")

    def stop(self) -> None:
        import os
        import shutil
        import signal

        try:
            os.killpg(self._starter.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> str:
        return self.address

    def __exit__(self, *exc: object) -> None:
        self.stop()
