"""Starting data-parallel workers: N local processes, or joining the group `torchrun` made.

Local runs (`adl compile` with `distributed = terngrad(workers = N)`): this process hosts
the rendezvous `TCPStore` on a free loopback port and starts N worker processes
(``python -m adl.passes.train.distributed.worker``), gloo bound to the loopback device.
It follows them through the store (rank 0 posts each finished epoch) and their exit codes.
When one fails, the others fail on their own within the gloo timeout (their collectives
break, their heartbeat check names the lost rank); whoever is still running `timeout`
seconds later is killed. The error names the rank that died first and how.

Under `torchrun` (`python -m adl.train`, which sets ADL_DISTRIBUTED=torchrun) the train
pass runs the worker loop in its own process instead, on the rendezvous torchrun set up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch.distributed as dist
from torch import nn

from adl.ir import seal
from adl.ir.files import atomic_write_text
from adl.ir.passes import PassError
from adl.ir.progress import Progress
from adl.passes.train.distributed import worker
from adl.passes.train.loop import DIVERGED, TrainResult, evaluate

ATTACH_ENV = "ADL_DISTRIBUTED"  # "torchrun": join the process group of the surrounding torchrun
POLL_S = 0.1
EXIT_GRACE_S = 10.0  # beyond the gloo timeout, for the survivors to diagnose and exit


@dataclass(frozen=True)
class Placement:
    """Where local workers run: a command prefix and environment per rank, and the address the
    workers reach this process's store at. The default is plain processes on loopback; the
    benchmark puts each worker in its own network namespace."""

    store_host: str = "127.0.0.1"
    prefixes: Sequence[Sequence[str]] = ()
    envs: Sequence[Mapping[str, str]] = ()

    def command(self, rank: int, argv: list[str]) -> list[str]:
        return [*self.prefixes[rank], *argv] if self.prefixes else argv

    def env(self, rank: int) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        if self.envs:
            env.update(self.envs[rank])
        elif "GLOO_SOCKET_IFNAME" not in env and Path("/sys/class/net/lo").exists():
            env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo on loopback, whatever the host name resolves to
        return env


@dataclass
class DistributedResult(TrainResult):
    hook: str = ""
    workers: int = 1
    bytes_per_worker_per_step: float = 0.0  # median over steps of the bytes a worker passed to collectives
    fp32_bytes_per_step: int = 0  # what one fp32 all-reduce of every gradient passes
    step_seconds: float = 0.0  # median seconds per step (slowest rank)
    resumed_after: int = 0

    def metrics(self) -> dict[str, Any]:
        """The manifest's flat metrics of a distributed run."""
        return {
            "distributed_hook": self.hook,
            "distributed_workers": self.workers,
            "bytes_per_worker_per_step": self.bytes_per_worker_per_step,
            "fp32_bytes_per_step": self.fp32_bytes_per_step,
            "compression_vs_fp32": (
                self.bytes_per_worker_per_step / self.fp32_bytes_per_step if self.fp32_bytes_per_step else None
            ),
            "step_seconds": self.step_seconds,
        }


def attached() -> bool:
    return os.environ.get(ATTACH_ENV) == "torchrun"


def train_distributed(
    model: nn.Module,
    dataset: Any,
    config: Mapping[str, Any],
    *,
    seed: int,
    state_dir: Path,
    progress: Progress,
    log: Callable[[str], None] = print,
    placement: Placement | None = None,
) -> DistributedResult:
    """Train `model` in place with the data parallelism `config["distributed"]` names; resumable.

    Raises PassError when a worker fails, naming the rank; a rerun with the same
    `state_dir` resumes from the last epoch every worker checkpointed.
    """
    strategy = config["distributed"]
    job = worker.Job(
        model=model,
        x_train=dataset.x_train,
        y_train=dataset.y_train,
        config=dict(config),
        seed=seed,
        state_dir=Path(state_dir),
        timeout_s=float(strategy.get("timeout", 60.0)),
        x_val=dataset.x_val,
        y_val=dataset.y_val,
    )
    if attached():
        outcome = _run_attached(job, progress, log)
    else:
        outcome = _run_local(job, int(strategy.get("workers", 1)), progress, log, placement or Placement())
    if outcome.resumed_after:
        log(f"train: resumed after epoch {outcome.resumed_after} of {config['epochs']} ({outcome.world} workers)")
    model.load_state_dict(outcome.model_state)
    accuracy = evaluate(model, dataset.x_test, dataset.y_test)
    model.eval()
    fp32 = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    steps = outcome.bytes_per_step
    return DistributedResult(
        model=model,
        test_accuracy=accuracy,
        history=outcome.history,
        hook=outcome.hook,
        workers=outcome.world,
        bytes_per_worker_per_step=float(sorted(steps)[len(steps) // 2]) if steps else 0.0,
        fp32_bytes_per_step=fp32,
        step_seconds=max(outcome.step_seconds, default=0.0),
        resumed_after=outcome.resumed_after,
    )


def _run_attached(job: worker.Job, progress: Progress, log: Callable[[str], None]) -> worker.WorkerResult:
    """Be one rank of the group torchrun started (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment)."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except KeyError as err:
        raise PassError(f"{ATTACH_ENV}=torchrun but {err.args[0]} is not set: start with torchrun") from None
    workers = job.config["distributed"].get("workers")
    if rank == 0 and workers != world:
        log(f"train: torchrun started {world} workers; the spec's workers = {workers} applies to local runs only")
    try:
        return worker.run(job, rank, world, host, port, log=log, progress=progress)
    except worker.WorkerFailure as err:
        raise PassError(str(err)) from None


def _run_local(
    job: worker.Job, workers: int, progress: Progress, log: Callable[[str], None], placement: Placement
) -> worker.WorkerResult:
    run_dir = job.state_dir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    job_path = run_dir / "job.pt"
    seal.dump(job, job_path)
    store = dist.TCPStore(
        "0.0.0.0", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=job.timeout_s)
    )
    procs: list[subprocess.Popen] = []
    try:
        for rank in range(workers):
            argv = [
                sys.executable,
                "-m",
                "adl.passes.train.distributed.worker",
                str(job_path),
                str(rank),
                str(workers),
                placement.store_host,
                str(store.port),
            ]
            with open(run_dir / f"worker{rank}.log", "wb") as out:
                procs.append(
                    subprocess.Popen(
                        placement.command(rank, argv),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=placement.env(rank),
                    )
                )
        atomic_write_text(run_dir / "workers.json", json.dumps({"pids": [p.pid for p in procs]}))
        _follow(procs, store, job, progress, run_dir)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    saved = seal.load(worker.result_path(run_dir))
    return saved["result"]


def _follow(
    procs: list[subprocess.Popen], store: dist.TCPStore, job: worker.Job, progress: Progress, run_dir: Path
) -> None:
    """Wait for every worker; show rank 0's epochs; on a failure, give the rest `timeout` to stop, then raise."""
    epochs = job.config["epochs"]
    failed_at: float | None = None
    shown = 0
    with progress.task("train", total=epochs) as bar:
        while True:
            codes = [p.poll() for p in procs]
            if store.check([worker.PROGRESS_KEY]):
                posted = json.loads(store.get(worker.PROGRESS_KEY))
                if posted["epoch"] > shown:
                    bar.advance(
                        posted["epoch"] - shown, loss=f"{posted['loss']:.3f}", acc=f"{posted['train_accuracy']:.3f}"
                    )
                    shown = posted["epoch"]
            if all(code == 0 for code in codes):
                return
            if failed_at is None and any(code not in (None, 0) for code in codes):
                failed_at = time.monotonic()
            if failed_at is not None and (
                all(code is not None for code in codes) or time.monotonic() - failed_at > job.timeout_s + EXIT_GRACE_S
            ):
                raise PassError(_failure_message(procs, codes, run_dir, job.timeout_s + EXIT_GRACE_S))
            time.sleep(POLL_S)


def _failure_message(procs: list[subprocess.Popen], codes: list[int | None], run_dir: Path, waited: float) -> str:
    """Name the rank(s) that died on their own (a signal, or an exit without a diagnosis) first,
    then what each other rank said."""
    died, reports = [], []
    for rank, code in enumerate(codes):
        error_file = worker.error_path(run_dir, rank)
        if code is None:
            reports.append(f"rank {rank} still ran {waited:g} s after the failure and was killed")
        elif error_file.exists():
            reports.append(error_file.read_text().strip())
        elif code < 0:
            died.append(f"worker rank {rank} (pid {procs[rank].pid}) was killed by {signal.Signals(-code).name}")
        elif code != 0:
            tail = (run_dir / f"worker{rank}.log").read_text(errors="replace").strip().splitlines()[-3:]
            died.append(f"worker rank {rank} exited with status {code}: {' | '.join(tail)}")
    diverged = next((r for r in reports if DIVERGED in r), None)
    if diverged is not None and not died:  # every rank saw the same loss: no rank to blame, nothing to resume
        return diverged
    head = "; ".join(died) if died else "a worker failed"
    return (
        f"distributed training failed: {head}"
        + "".join(f"\n  {r}" for r in reports)
        + f"\n  (worker logs: {run_dir}; rerun to resume from the last completed epoch)"
    )
