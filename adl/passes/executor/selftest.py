"""Task functions the executor's own checks run (tests, a smoke run on a new cluster).

They live in the package, not in the tests: worker processes import a task's module by name,
and a test module imported by pytest's importlib mode has no name they could import.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any


def echo(shared: Any, payload: Any) -> tuple[Any, Any]:
    """(the shared object, the payload)."""
    return shared, payload


def whoami(shared: Any, payload: Any) -> tuple[int, int]:
    """(this worker's pid, the id of the shared object it holds): equal ids in one worker mean the
    shared object was not sent again with the task."""
    return os.getpid(), id(shared)


def sleep_then_echo(shared: Any, payload: float) -> float:
    """Sleeps ``payload`` seconds, returns it."""
    time.sleep(payload)
    return payload


def fail(shared: Any, payload: Any) -> None:
    raise ValueError(f"failed on purpose: {payload}")


def die(shared: Any, payload: str | None) -> str:
    """SIGKILLs its own worker process. With a marker file path as the payload, only on the first
    attempt: that one creates the marker, a later one finds it and returns "survived"."""
    if payload is not None:
        if Path(payload).exists():
            return "survived"
        Path(payload).touch()
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # not reached
    return "not killed"


def unpicklable(shared: Any, payload: Any) -> Any:
    """A result that cannot be sent back."""
    return threading.Lock()


def threads(shared: Any, payload: bool) -> tuple[str | None, int | None]:
    """(OMP_NUM_THREADS in the worker, torch's thread count -- importing torch when ``payload``)."""
    if payload:
        import torch  # noqa: F401
    torch = sys.modules.get("torch")
    return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads() if torch is not None else None
