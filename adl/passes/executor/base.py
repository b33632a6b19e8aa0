"""What every executor shares: the outcome of a task, the error for a lost pool, the interface.

An executor runs independent tasks -- ``fn(shared, payload)`` with ``fn`` a module-level
function -- in worker processes. ``shared`` (a dataset, say) is handed to the executor once, in
``start``, and reaches each worker once; ``payload`` travels with each task. Results come back
as `Outcome` values: a task that raised is an outcome with ``error`` set, a task whose worker
process died (SIGKILL, out of memory, a segfault) is retried and, when it keeps dying, an
outcome with ``lost`` set. Only the loss of the whole pool (a Ray cluster gone) is an exception:
`ExecutorLost`.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

from adl.ir.passes import PassError

Task = Callable[[Any, Any], Any]

# Thread pools a worker's numerical libraries read their size from, when they are first imported.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Outcome:
    """How one task ended. ``error`` is ``"ValueError: ..."`` when the task raised (traceback text
    in ``detail``); ``lost`` is set when its worker process died on every attempt."""

    task_id: int
    value: Any = None
    error: str | None = None
    detail: str = ""
    lost: bool = False
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None and not self.lost


class ExecutorLost(PassError):
    """The pool itself is gone (the Ray cluster became unreachable): the caller stops, and a rerun
    resumes from what it saved."""


class Executor(ABC):
    """Runs ``fn(shared, payload)`` tasks in worker processes, ``slots`` at a time.

    Use it as a context manager (or call `close`): ``start(shared)``, then any number of
    ``submit``; ``wait`` returns the tasks that finished, at least one unless it timed out.
    """

    slots: int

    @abstractmethod
    def start(self, shared: Any) -> None:
        """Start the workers; ``shared`` is sent once to each (not with every task)."""

    @abstractmethod
    def submit(self, fn: Task, payload: Any) -> int:
        """Queue ``fn(shared, payload)``; returns the task's id. ``fn`` must be a module-level
        function of an importable module (it travels by reference)."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> list[Outcome]:
        """Block until at least one submitted task finished (or ``timeout`` seconds passed, or
        nothing is pending) and return the outcomes of those that did."""

    @abstractmethod
    def pending(self) -> int:
        """How many submitted tasks have no outcome yet (queued or running)."""

    @abstractmethod
    def close(self) -> None:
        """Stop the workers, or disconnect; safe to call twice."""

    @abstractmethod
    def describe(self) -> str:
        """One line for logs and manifests, e.g. ``local(jobs=2, threads=1)``."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return self.describe()


def limit_threads(threads: int) -> None:
    """In a worker, before a task runs: size the numerical libraries' thread pools. The variables
    reach libraries imported later; torch, when the process already imported it, is told directly
    (torch is never imported here: a task that needs it imports it, and reads the variables)."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def error_text(error: BaseException) -> str:
    """``"ValueError: bad value"``: the form `Outcome.error` takes."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
