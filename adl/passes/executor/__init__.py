"""Executors: run independent tasks (hyperparameter trials' training, policy evaluations) in
worker processes -- `LocalExecutor` on this machine, `RayExecutor` on a Ray cluster.

    with make_executor("local", {"jobs": 2}, default_threads=8) as executor:
        executor.start(dataset)                        # sent once to each worker
        ids = [executor.submit(train_trial, params) for params in trials]
        while executor.pending():
            for outcome in executor.wait():            # Outcome(task_id, value | error | lost)
                ...

Tasks are module-level functions ``fn(shared, payload)``. This package imports neither torch
nor (unless the Ray executor is asked for) ray.
"""

from __future__ import annotations

from typing import Any, Mapping

from adl.ir.passes import PassError

from .base import Executor, ExecutorLost, Outcome
from .local import LocalExecutor

__all__ = ["Executor", "ExecutorLost", "LocalExecutor", "Outcome", "RayExecutor", "make_executor"]

EXECUTORS = ("local", "ray")


def make_executor(name: str, args: Mapping[str, Any], *, default_threads: int) -> Executor:
    """The executor ``name`` (local or ray) configured from ``args``: local takes ``jobs`` (1) and
    ``threads`` (default: ``default_threads`` shared among the jobs), ray takes ``address``
    ("auto"), ``cpus`` (1) and ``connect_timeout_s`` (60); both take ``retries`` (1)."""
    retries = int(args["retries"]) if args.get("retries") is not None else 1
    if name == "local":
        jobs = int(args.get("jobs") or 1)
        threads = int(args.get("threads") or max(1, default_threads // jobs))
        return LocalExecutor(jobs=jobs, threads=threads, retries=retries)
    if name == "ray":
        from .ray import RayExecutor

        return RayExecutor(
            address=str(args.get("address") or "auto"),
            cpus=int(args.get("cpus") or 1),
            retries=retries,
            connect_timeout_s=float(args.get("connect_timeout_s") or 60),
        )
    raise PassError(f"unknown executor '{name}': one of {', '.join(EXECUTORS)}")


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":  # imported on use: it is the only module that needs ray
        from .ray import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
