"""What every data-parallel worker runs: DDP over gloo with a communication hook.

Deterministic for a seed: epoch e visits the training split in `epoch_order(seed, e)`,
each global batch of `batch_size` samples is dealt to the workers round-robin (worker r
takes samples r, r + W, ...; a tail shorter than W is dropped, as DistributedSampler
does), and every worker's torch RNG and TernGrad's Bernoulli draws are reseeded from
(seed, epoch, rank) at the start of each epoch.

Checkpoints: after every epoch rank 0 saves the shared state (model, optimizer, schedule,
history; identical on all ranks) and every rank its own (hook state such as error feedback
residuals, its byte counts), then all meet at a barrier before the previous epoch's files
are removed; a rerun starts from the newest epoch every rank has (all-reduce MIN).

Faults: a heartbeat thread bumps a counter in the rendezvous store; when a collective
fails (a peer died: gloo sees the connection close, or stops answering: gloo's timeout),
the worker checks whose counter stopped and fails with a message naming that rank.

Run by the launcher as ``python -m adl.passes.train.distributed.worker JOB RANK WORLD HOST PORT``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from adl.ir import seal
from adl.ir.files import atomic_write_text
from adl.ir.progress import Progress, SilentProgress
from adl.passes.train.distributed import hooks
from adl.passes.train.loop import (
    TrainingDiverged,
    check_finite_loss,
    check_finite_weights,
    epoch_order,
    evaluate,
    make_optimizer,
    make_scheduler,
)

HEARTBEAT_S = 0.2
SILENCE_S = 2.0  # a peer whose heartbeat did not move for this long is taken for dead
PROGRESS_KEY = "adl/progress"
_CHECKPOINT_RE = re.compile(r"dist-e(\d+)\.(shared|rank(\d+))\.pt\Z")


class WorkerFailure(Exception):
    """This worker cannot go on; the message says why and names the rank(s) to blame."""


@dataclass
class Job:
    """Everything a worker needs, pickled by the launcher (or built in place under torchrun)."""

    model: nn.Module
    x_train: np.ndarray
    y_train: np.ndarray
    config: dict[str, Any]  # the train pass's configuration, `distributed` included
    seed: int
    state_dir: Path  # per-epoch checkpoints, shared by the ranks of one machine
    timeout_s: float
    x_val: np.ndarray | None = None  # the data's validation split, scored after every epoch
    y_val: np.ndarray | None = None


@dataclass
class WorkerResult:
    model_state: dict[str, Any]
    history: list[dict[str, float]]
    hook: str
    world: int
    bytes_per_step: list[int]  # rank 0's, one entry per step run (resumed runs included)
    step_seconds: list[float]  # slowest rank's median seconds per step, per rank
    resumed_after: int
    per_rank_bytes: list[float] = field(default_factory=list)  # median bytes per step of each rank


class Heartbeat:
    """Bumps `adl/beat/<rank>` in the rendezvous store every HEARTBEAT_S seconds on its own client.

    Also a watchdog: when the training loop has not reported progress (`alive()`) for
    `stall_s` -- stuck outside any collective gloo's timeout covers, e.g. in a deadlock --
    it reports through `on_stall` and ends the process, so that nothing hangs for ever.
    """

    def __init__(
        self,
        host: str,
        port: int,
        rank: int,
        world: int,
        timeout_s: float,
        on_stall: Callable[[str], None] | None = None,
    ) -> None:
        self.store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout_s))
        self.rank, self.world = rank, world
        self.error: Exception | None = None
        self.stall_s = 2 * timeout_s
        self.on_stall = on_stall or (lambda message: print(message, file=sys.stderr, flush=True))
        self.where = "starting"
        self._progress_at = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="adl-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def alive(self, where: str) -> None:
        self.where, self._progress_at = where, time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() - self._progress_at > self.stall_s:
                self.on_stall(
                    f"rank {self.rank}: no progress for {self.stall_s:g} s in {self.where}; "
                    f"the process is stuck (not in a collective: gloo's timeout would have fired); "
                    f"aborting it"
                )
                os._exit(3)
            try:
                with self._lock:
                    self.store.add(f"adl/beat/{self.rank}", 1)
            except Exception as err:  # the store's host is gone: the main loop reports it
                self.error = err
                self._stop.wait(self.stall_s)  # keep watching for a stall until the main loop notices
                continue
            self._stop.wait(HEARTBEAT_S)

    def check(self) -> None:
        if self.error is not None:
            raise WorkerFailure(
                f"rank {self.rank}: lost the rendezvous store (the launcher or the master node is gone): {self.error}"
            )

    def beats(self) -> list[int]:
        with self._lock:
            return [int(self.store.add(f"adl/beat/{r}", 0)) for r in range(self.world)]

    def silent_peers(self) -> list[int]:
        """Ranks whose heartbeat does not move for SILENCE_S seconds."""
        before = self.beats()
        time.sleep(SILENCE_S)
        after = self.beats()
        return [r for r in range(self.world) if r != self.rank and after[r] == before[r]]

    def publish(self, key: str, value: str) -> None:
        with self._lock:
            self.store.set(key, value)


def _derived_seed(seed: int, epoch: int, rank: int, stream: int) -> int:
    return int(np.random.SeedSequence((seed, epoch, rank, stream)).generate_state(1)[0])


def _checkpoints(state_dir: Path, rank: int) -> set[int]:
    """Epochs this rank could resume from: its own file there, and for rank 0 the shared one too."""
    own, shared = set(), set()
    for path in state_dir.glob("dist-e*.pt"):
        match = _CHECKPOINT_RE.match(path.name)
        if match is None:
            continue
        epoch = int(match.group(1))
        if match.group(2) == "shared":
            shared.add(epoch)
        elif int(match.group(3)) == rank:
            own.add(epoch)
    return own & shared if rank == 0 else own


def _paths(state_dir: Path, epoch: int, rank: int) -> tuple[Path, Path]:
    return state_dir / f"dist-e{epoch:04d}.shared.pt", state_dir / f"dist-e{epoch:04d}.rank{rank}.pt"


class Trainer:
    """One rank's training run; `run()` returns its result (the model state is the same on every rank)."""

    def __init__(
        self,
        job: Job,
        rank: int,
        world: int,
        heartbeat: Heartbeat,
        log: Callable[[str], None] = print,
        progress: Progress | None = None,
    ) -> None:
        self.job, self.rank, self.world, self.heartbeat, self.log = job, rank, world, heartbeat, log
        self.progress = progress or SilentProgress()
        self.config = job.config
        self.model = job.model
        self.optimizer = make_optimizer(self.model.parameters(), self.config["optimizer"])
        self.scheduler = make_scheduler(self.optimizer, self.config)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=self.config["label_smoothing"])
        self.history: list[dict[str, float]] = []
        self.counter = hooks.ByteCounter()
        self.step_seconds: list[float] = []
        self.epoch = 0
        self.step = 0

    def run(self) -> WorkerResult:
        resumed = self._resume()
        ddp = nn.parallel.DistributedDataParallel(self.model, **hooks.ddp_options(self.config["distributed"]))
        hook = hooks.register(ddp, self.config["distributed"], seed=self.job.seed)
        if self._hook_state:
            hook.load_state_dict(self._hook_state)
        self.counter.install()
        try:
            with self.progress.task("train", total=self.config["epochs"]) as bar:
                bar.advance(resumed)
                for epoch in range(resumed, self.config["epochs"]):
                    self.epoch = epoch
                    self._epoch(ddp, hook, epoch)
                    self._checkpoint(epoch + 1, hook)
                    bar.advance(
                        1, loss=f"{self.history[-1]['loss']:.3f}", acc=f"{self.history[-1]['train_accuracy']:.3f}"
                    )
        finally:
            self.counter.uninstall()
        return self._result(hook.name, resumed)

    def _resume(self) -> int:
        self._hook_state: dict[str, Any] = {}
        state_dir = self.job.state_dir
        mine = torch.tensor([max(_checkpoints(state_dir, self.rank), default=0)])
        dist.all_reduce(mine, op=dist.ReduceOp.MIN)
        epoch = int(mine)
        if epoch == 0:
            return 0
        shared_path, own_path = _paths(state_dir, epoch, self.rank)
        # sealed (HMAC under this user's key): a file adl did not write is refused before unpickling
        box = [self._load_checkpoint(shared_path) if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        shared, own = box[0], self._load_checkpoint(own_path)
        if shared["world"] != self.world:
            raise WorkerFailure(
                f"rank {self.rank}: checkpoint {shared_path} is of {shared['world']} workers, not {self.world}"
            )
        self.model.load_state_dict(shared["model"])
        self.optimizer.load_state_dict(shared["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(shared["scheduler"])
        self.history = shared["history"]
        self._hook_state = own["hook"]
        self.counter.steps = list(own["bytes"])
        self.step_seconds = list(own["step_seconds"])
        if self.rank == 0:
            self.log(f"train: resuming after epoch {epoch} of {self.config['epochs']} ({self.world} workers)")
        return epoch

    def _epoch(self, ddp: nn.Module, hook: hooks.HookHandle, epoch: int) -> None:
        seed, rank, world = self.job.seed, self.rank, self.world
        torch.manual_seed(_derived_seed(seed, epoch, rank, 0))
        hook.reseed(_derived_seed(seed, epoch, rank, 1))
        x, y = torch.from_numpy(self.job.x_train), torch.from_numpy(self.job.y_train)
        order = epoch_order(seed, epoch, len(x))
        batch = self.config["batch_size"]
        sums = torch.zeros(3, dtype=torch.float64)  # loss * samples, correct, samples
        ddp.train()
        for self.step, start in enumerate(range(0, len(order), batch)):
            batch_idx = order[start : start + batch]
            if len(batch_idx) < world:  # every worker needs a sample
                break
            idx = batch_idx[rank::world]
            self.heartbeat.check()
            self.heartbeat.alive(f"epoch {epoch + 1}, step {self.step + 1}")
            began = time.perf_counter()
            self.counter.active = True
            logits = ddp(x[idx])
            loss = self.loss_fn(logits, y[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # the communication hook runs (and is waited for) in here
            self.optimizer.step()
            self.counter.active = False
            self.step_seconds.append(time.perf_counter() - began)
            self.counter.end_step()
            sums += torch.tensor(
                [float(loss.detach()) * len(idx), float((logits.argmax(1) == y[idx]).sum()), len(idx)],
                dtype=torch.float64,
            )
        self.heartbeat.alive(f"epoch {epoch + 1}, end")
        dist.all_reduce(sums)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step()
        self._check_finite(float(sums[0] / sums[2]), epoch + 1, lr)
        self.history.append(
            {"epoch": epoch + 1, "loss": float(sums[0] / sums[2]), "train_accuracy": float(sums[1] / sums[2]), "lr": lr}
        )
        if self.job.y_val is not None and len(self.job.y_val):  # every rank holds the same weights
            self.history[-1]["val_accuracy"] = evaluate(self.model, self.job.x_val, self.job.y_val)

    def _check_finite(self, loss: float, epoch: int, lr: float) -> None:
        """Divergence ends training on every rank alike: the loss is all-reduced, the weights shared."""
        try:
            check_finite_loss(loss, epoch, lr)
            check_finite_weights(self.model, epoch, lr)
        except TrainingDiverged as err:
            raise WorkerFailure(str(err)) from None

    def _load_checkpoint(self, path: Path) -> dict[str, Any]:
        try:
            return seal.load(path)
        except seal.BadSeal:
            raise WorkerFailure(
                f"rank {self.rank}: refusing checkpoint {path}: not written by this user's adl "
                f"(bad seal); delete {path.parent} to train from the start"
            ) from None

    def _checkpoint(self, epoch: int, hook: hooks.HookHandle) -> None:
        state_dir = self.job.state_dir
        shared_path, own_path = _paths(state_dir, epoch, self.rank)
        if self.rank == 0:
            seal.dump(
                {
                    "epoch": epoch,
                    "world": self.world,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                    "history": self.history,
                },
                shared_path,
            )
        seal.dump(
            {"epoch": epoch, "hook": hook.state_dict(), "bytes": self.counter.steps, "step_seconds": self.step_seconds},
            own_path,
        )
        dist.barrier()  # every rank has epoch `epoch` on disk: older files may go
        for old in range(epoch - 1, 0, -1):
            old_shared, old_own = _paths(state_dir, old, self.rank)
            if not old_own.exists():
                break
            old_own.unlink(missing_ok=True)
            if self.rank == 0:
                old_shared.unlink(missing_ok=True)
        if self.rank == 0:
            last = self.history[-1]
            self.heartbeat.publish(
                PROGRESS_KEY,
                json.dumps({"epoch": epoch, "loss": last["loss"], "train_accuracy": last["train_accuracy"]}),
            )

    def _result(self, hook: str, resumed: int) -> WorkerResult:
        mine = {
            "bytes": float(np.median(self.counter.steps)) if self.counter.steps else 0.0,
            "seconds": float(np.median(self.step_seconds)) if self.step_seconds else 0.0,
        }
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, mine)
        return WorkerResult(
            model_state=self.model.state_dict(),
            history=self.history,
            hook=hook,
            world=self.world,
            bytes_per_step=list(self.counter.steps),
            step_seconds=[e["seconds"] for e in everyone],
            resumed_after=resumed,
            per_rank_bytes=[e["bytes"] for e in everyone],
        )


def run(
    job: Job,
    rank: int,
    world: int,
    host: str,
    port: int,
    store: Any = None,
    log: Callable[[str], None] = print,
    progress: Progress | None = None,
    on_stall: Callable[[str], None] | None = None,
) -> WorkerResult:
    """Join the group (through `store`, or the env:// rendezvous of torchrun when None), train, leave.

    Any failure after joining becomes a `WorkerFailure` naming this rank and, when a peer's
    heartbeat stopped, that peer.
    """
    torch.set_num_threads(1)
    timeout = timedelta(seconds=job.timeout_s)
    if store is not None:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    heartbeat = Heartbeat(host, port, rank, world, job.timeout_s, on_stall).start()
    trainer = Trainer(job, rank, world, heartbeat, log, progress if rank == 0 else None)
    try:
        return trainer.run()
    except WorkerFailure:
        raise
    except Exception as err:
        heartbeat.check()
        silent = heartbeat.silent_peers()
        where = f"epoch {trainer.epoch + 1}, step {trainer.step + 1}"
        if silent:
            names = ", ".join(str(r) for r in silent)
            raise WorkerFailure(
                f"rank {rank}: lost rank {names} in {where} (no heartbeat for {SILENCE_S:g} s; "
                f"the worker died or hangs); gloo: {_one_line(err)}"
            ) from err
        raise WorkerFailure(f"rank {rank} failed in {where}: {type(err).__name__}: {_one_line(err)}") from err
    finally:
        heartbeat.stop()
        dist.destroy_process_group()


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def error_path(run_dir: Path, rank: int) -> Path:
    return run_dir / f"error.rank{rank}.txt"


def result_path(run_dir: Path) -> Path:
    return run_dir / "result.pt"


def main(argv: list[str]) -> int:
    job_path, rank, world, host, port = Path(argv[0]), int(argv[1]), int(argv[2]), argv[3], int(argv[4])
    run_dir = job_path.parent
    job: Job = seal.load(job_path)
    try:
        store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=job.timeout_s))
        result = run(
            job,
            rank,
            world,
            host,
            port,
            store=store,
            log=lambda message: print(message, flush=True),
            on_stall=lambda message: atomic_write_text(error_path(run_dir, rank), message + "\n"),
        )
    except Exception as err:
        message = str(err) if isinstance(err, WorkerFailure) else f"rank {rank}: {type(err).__name__}: {err}"
        atomic_write_text(error_path(run_dir, rank), message + "\n")
        print(message, file=sys.stderr, flush=True)
        return 1
    if rank == 0:
        seal.dump({"result": result}, result_path(run_dir))
    return 0


if __name__ == "__main__":
    # through the module's import name, so that what it pickles (WorkerResult) unpickles in the launcher
    from adl.passes.train.distributed import worker as _worker

    code = _worker.main(sys.argv[1:])
    # Leave without the interpreter's teardown: by now the result and any error are on disk, and
    # destroying torch.distributed's store client and gloo's threads at exit now and then aborts the
    # process (SIGABRT), which the launcher rightly reads as a dead worker.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
