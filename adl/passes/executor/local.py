"""`LocalExecutor`: a pool of worker processes on this machine.

Each worker is a ``spawn``-ed process (torch's and TVM's thread pools do not survive ``fork``)
with a duplex pipe to the parent. The parent sends it the shared object once, right after it
starts, then one task at a time; the parent waits on the pipes and on the processes' sentinels.
A worker that dies mid-task is replaced, and its task alone is run again (``retries`` times)
before it is reported lost. Workers ignore SIGINT (Ctrl-C is the parent's to handle), exit when
the parent does, and are stopped by `close`, by garbage collection, or at interpreter exit.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
import weakref
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from adl.ir.passes import PassError

from .base import Executor, Outcome, Task, error_text, limit_threads


def _worker_main(conn: Connection, threads: int) -> None:
    """A worker's loop: the shared object first, then ``(task id, pickled (fn, payload))`` messages
    answered with ``("ok", value)`` or ``("error", text, traceback)``; ends on EOF or ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    limit_threads(threads)  # before the shared object's unpickling imports anything
    try:
        shared = pickle.loads(conn.recv_bytes())
        while (message := conn.recv()) is not None:
            limit_threads(threads)
            try:
                fn, payload = pickle.loads(message[1])
                reply: tuple = ("ok", fn(shared, payload))
            except Exception as error:
                reply = ("error", error_text(error), traceback.format_exc())
            try:
                conn.send(reply)  # pickles the whole reply before it writes a byte
            except Exception as error:
                conn.send(("error", f"the task's result could not be pickled: {error_text(error)}", ""))
    except (EOFError, OSError):
        pass  # the parent closed its end, or died


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _stop(workers: list[_Worker]) -> None:
    """SIGTERM every worker, give them two seconds together, then SIGKILL the rest."""
    for worker in workers:
        if worker.process.is_alive():
            worker.process.terminate()
    deadline = time.monotonic() + 2.0
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
    workers.clear()


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    task: int | None = None


@dataclass
class _Task:
    message: bytes  # pickled (fn, payload)
    attempts: int = 0


class LocalExecutor(Executor):
    def __init__(self, jobs: int = 1, threads: int = 1, retries: int = 1) -> None:
        if jobs < 1 or threads < 1 or retries < 0:
            raise PassError(
                f"local executor: jobs and threads must be >= 1, retries >= 0 (got {jobs}, {threads}, {retries})"
            )
        self.slots = jobs
        self.threads = threads
        self.retries = retries
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._shared: bytes | None = None
        self._tasks: dict[int, _Task] = {}
        self._queue: deque[int] = deque()
        self._ids = itertools.count()
        # Not weakref.finalize's own exit hook: that one may run after multiprocessing's, which
        # joins live child processes -- forever, for workers waiting on their pipe.
        self._finalizer = weakref.finalize(self, _stop, self._workers)
        self._finalizer.atexit = False

    def describe(self) -> str:
        return f"local(jobs={self.slots}, threads={self.threads})"

    def start(self, shared: Any) -> None:
        if self._shared is not None:
            raise PassError("local executor: start() was already called")
        self._shared = pickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL)
        atexit.register(self._finalizer)
        for _ in range(self.slots):
            self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_worker_main, args=(child_end, self.threads), name="adl-executor")
        process.start()
        child_end.close()
        parent_end.send_bytes(self._shared)
        return _Worker(process, parent_end)

    def submit(self, fn: Task, payload: Any) -> int:
        if self._shared is None or not self._finalizer.alive:
            raise PassError("local executor: submit() before start() or after close()")
        task_id = next(self._ids)
        self._tasks[task_id] = _Task(pickle.dumps((fn, payload), protocol=pickle.HIGHEST_PROTOCOL))
        self._queue.append(task_id)
        self._dispatch()
        return task_id

    def pending(self) -> int:
        return len(self._tasks)

    def _dispatch(self) -> None:
        for worker in self._workers:
            if worker.task is None and self._queue:
                task_id = self._queue.popleft()
                worker.task = task_id
                self._tasks[task_id].attempts += 1
                try:
                    worker.conn.send((task_id, self._tasks[task_id].message))
                except OSError:
                    pass  # the worker died; wait() sees its sentinel

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        deadline = None if timeout is None else time.monotonic() + timeout
        outcomes: list[Outcome] = []
        while not outcomes and self._tasks:
            self._dispatch()
            busy = [worker for worker in self._workers if worker.task is not None]
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], remaining))
            if not ready:
                break
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    outcome = self._collect(worker)
                    if outcome is not None:
                        outcomes.append(outcome)
        self._dispatch()
        return outcomes

    def _collect(self, worker: _Worker) -> Outcome | None:
        """The outcome of ``worker``'s task, or None when its worker died and it runs again."""
        task_id, task = worker.task, self._tasks[worker.task]
        try:
            reply = worker.conn.recv() if worker.conn.poll() else None
        except (EOFError, OSError):
            reply = None
        if reply is not None:
            worker.task = None
            del self._tasks[task_id]
            if reply[0] == "ok":
                return Outcome(task_id, value=reply[1], attempts=task.attempts)
            return Outcome(task_id, error=reply[1], detail=reply[2], attempts=task.attempts)
        # The worker died: replace it, and run its task again or give it up.
        worker.process.join(1.0)
        code = worker.process.exitcode
        worker.conn.close()
        self._workers[self._workers.index(worker)] = self._spawn()
        if task.attempts <= self.retries:
            self._queue.appendleft(task_id)
            return None
        del self._tasks[task_id]
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}" if code is not None else "stopped answering"
        return Outcome(task_id, error=f"worker process {how}", lost=True, attempts=task.attempts)

    def close(self) -> None:
        self._finalizer()
        atexit.unregister(self._finalizer)
        self._queue.clear()
        self._tasks.clear()
