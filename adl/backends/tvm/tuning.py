"""MetaSchedule tuning with a persistent database, shared by every compile for a target.

One database per (target, TVM version) under the tuning root. A task — one fused TIR
function, identified structurally (shapes and computation, not weights) — once tuned for the
requested number of trials (or as far as a time budget allowed) is never tuned again, so a layer
configuration tuned once serves every later
model, every recompile and the measured latency tables. Records are appended to the
database as they are measured, so a killed tuning session keeps what it finished (a torn
last line is repaired on the next open).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adl.backends.tvm.intrinsics import install, install_for_workers
from adl.ir.files import atomic_write_text
from adl.ir.progress import Progress, SilentProgress

DEFAULT_ROOT_ENV = "ADL_TUNING_DIR"
WORKLOAD_FILE, RECORD_FILE = "database_workload.json", "database_tuning_record.json"


@dataclass(frozen=True)
class TuningReport:
    database: str
    tasks: int  # distinct tuning tasks in the model
    tasks_reused: int  # tasks the database already held the requested trials for: not tuned again
    tasks_tuned: int  # tasks tuned (further) in this session
    trials: int  # candidates measured in this session
    seconds: float
    stopped_by_deadline: bool = False
    failed: int = 0  # candidates that failed to build or run (counted in `trials`)
    first_failure: str | None = None
    task_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_root() -> Path:
    env = os.environ.get(DEFAULT_ROOT_ENV)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "adl" / "tuning"


def database_dir(target: dict[str, Any], root: Path | None = None) -> Path:
    """The database folder for `target` (a TVM target dict) and the installed TVM version."""
    import tvm

    canonical = json.dumps(target, sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    readable = "-".join(str(target.get(k)) for k in ("kind", "mcpu", "mtriple") if target.get(k))
    return (root or default_root()) / f"{readable}-{digest}-tvm{tvm.__version__}"


def repair_database(folder: Path) -> int:
    """Drop torn or unparsable lines (a tuning session killed mid-write); returns how many."""
    dropped = 0
    for name in (WORKLOAD_FILE, RECORD_FILE):
        path = folder / name
        if not path.exists():
            continue
        lines = path.read_text().splitlines()
        good = []
        for line in lines:
            try:
                json.loads(line)
                good.append(line)
            except json.JSONDecodeError:
                dropped += 1
        if dropped:
            workloads = len(good)
            if name == RECORD_FILE:
                workloads = _count_lines(folder / WORKLOAD_FILE)
                good = [g for g in good if json.loads(g)[0] < workloads]
            atomic_write_text(path, "".join(f"{g}\n" for g in good))
    if dropped:
        warnings.warn(f"adl: repaired tuning database {folder}: dropped {dropped} torn line(s)", stacklevel=2)
    return dropped


def _count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def open_database(folder: Path):
    from tvm.s_tir import meta_schedule as ms

    folder.mkdir(parents=True, exist_ok=True)
    repair_database(folder)
    return ms.database.JSONDatabase(work_dir=str(folder), module_equality="structural")


def prepare_for_tuning(mod):
    """The Relax preparation MetaSchedule expects: inference decompositions, then legalize + fuse."""
    from tvm import relax

    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = relax.transform.CanonicalizeBindings()(mod)
    return relax.pipeline.zero_pipeline()(mod)


def tune(
    mod,
    target: dict[str, Any],
    *,
    trials_per_task: int,
    minutes: float | None = None,
    root: Path | None = None,
    progress: Progress | None = None,
    seed: int = 0,
) -> TuningReport:
    """Tune the tasks of a prepared Relax module that the database has no record for."""
    install()
    install_for_workers()
    import tvm
    from tvm.s_tir import meta_schedule as ms

    folder = database_dir(target, root)
    database = open_database(folder)
    tvm_target = tvm.target.Target(target)
    tasks = ms.relax_integration.extract_tasks(mod, tvm_target, module_equality="structural")
    ledger = _Ledger(folder)
    remaining = {
        t.task_name: 0
        if ledger.requested(t.dispatched[0]) >= trials_per_task
        else trials_per_task - measured_trials(database, t.dispatched[0], trials_per_task)
        for t in tasks
    }
    todo = [t for t in tasks if remaining[t.task_name] > 0]
    started = time.perf_counter()
    budget = sum(remaining[t.task_name] for t in todo)
    callback = _ProgressCallback(
        progress or SilentProgress(), budget, None if minutes is None else started + 60 * minutes
    )
    if todo:
        cores = int(target.get("num-cores", os.cpu_count() or 1))
        # MetaSchedule's defaults spend 20-34 s per task generating candidates on 2 cores; these
        # settings take ~7 s (shared/notes), and small trial counts need even fewer.
        most = max(remaining.values())
        strategy = ms.search_strategy.EvolutionarySearch(
            population_size=64 if most >= 16 else 16, init_min_unmeasured=min(16, most), genetic_num_iters=1
        )
        contexts, weights = tune_contexts(todo, folder, strategy=strategy, num_threads=cores, seed=seed)
        with callback:
            try:
                ms.tune.tune_tasks(
                    tasks=contexts,
                    task_weights=weights,
                    work_dir=str(folder),
                    max_trials_global=budget,
                    max_trials_per_task=max(remaining[t.task_name] for t in todo),
                    num_trials_per_iter=min(16, trials_per_task),
                    database=database,
                    measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), callback.tvm_object()],
                    builder=ms.builder.LocalBuilder(max_workers=cores),
                    runner=ms.runner.LocalRunner(),
                )
            except Exception:  # TuningDeadline, as TVM re-raises it through its C++ loop
                if not callback.stopped:
                    raise
        if callback.measured and callback.failed == callback.measured:
            # MetaSchedule's silent failure mode (e.g. builder workers timing out): say so loudly,
            # and do not mark the tasks as tuned.
            warnings.warn(
                f"adl: every one of {callback.measured} tuning candidates failed "
                f"(first: {callback.first_failure}); the library uses untuned code",
                stacklevel=2,
            )
        else:
            # The request is served: tasks whose design space is smaller than the trials, and
            # tasks a time budget cut short, are not tuned again for the same request (tuning
            # time is never spent twice); asking for more trials tunes them further.
            ledger.record([t.dispatched[0] for t in todo], trials_per_task)
    return TuningReport(
        database=str(folder),
        tasks=len(tasks),
        tasks_reused=len(tasks) - len(todo),
        tasks_tuned=len(todo),
        trials=callback.measured,
        seconds=time.perf_counter() - started,
        stopped_by_deadline=callback.stopped,
        failed=callback.failed,
        first_failure=callback.first_failure,
        task_names=[t.task_name for t in tasks],
    )


class _Stderr:
    """A stream that writes to whatever `sys.stderr` is at the time (the CLI points it at a log file)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def tune_contexts(tasks, folder: Path, **options):
    """MetaSchedule's tuning contexts (and task weights) for `tasks`. Making them configures
    MetaSchedule's loggers, whose console handler prints every step of the tuning, at DEBUG
    level, to ``sys.stdout`` as it is then -- where adl's results go: here it gets stderr."""
    from tvm.s_tir import meta_schedule as ms

    with contextlib.redirect_stdout(_Stderr()):
        return ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, work_dir=str(folder), **options)


class TuningDeadline(Exception):
    """Raised inside MetaSchedule's loop to end a session whose time budget is spent."""


class _Ledger:
    """Which tasks were tuned to how many trials, by structural hash (`adl_tuned.json`).

    MetaSchedule stores only what it measured; a task with a tiny design space (a reshape
    has one schedule) never reaches the requested count, and would be tuned again on every
    compile without this record of what was asked for.
    """

    FILE = "adl_tuned.json"

    def __init__(self, folder: Path) -> None:
        self.path = folder / self.FILE
        try:
            self.entries: dict[str, int] = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (json.JSONDecodeError, OSError):
            warnings.warn(f"adl: ignoring unreadable {self.path}", stacklevel=2)
            self.entries = {}

    @staticmethod
    def _key(task_mod) -> str:
        from tvm_ffi.structural import structural_hash

        return str(structural_hash(task_mod))

    def requested(self, task_mod) -> int:
        return self.entries.get(self._key(task_mod), 0)

    def record(self, task_mods, trials: int) -> None:
        for task_mod in task_mods:
            key = self._key(task_mod)
            self.entries[key] = max(trials, self.entries.get(key, 0))
        atomic_write_text(self.path, json.dumps(self.entries, indent=0, sort_keys=True))


def measured_trials(database, task_mod, cap: int) -> int:
    """How many candidates of this task the database holds (counted up to `cap`)."""
    if not database.has_workload(task_mod):
        return 0
    return len(database.get_top_k(database.commit_workload(task_mod), cap))


class _ProgressCallback:
    """Counts measured candidates into a progress bar; past the deadline, ends every task."""

    def __init__(self, progress: Progress, total: int, deadline: float | None) -> None:
        self.progress, self.total, self.deadline = progress, total, deadline
        self.measured = 0
        self.failed = 0
        self.first_failure: str | None = None
        self.stopped = False
        self._bar = None
        self._context = None

    def __enter__(self):
        self._context = self.progress.task("tune", total=self.total)
        self._bar = self._context.__enter__()
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)

    def tvm_object(self):
        from tvm.ir.utils import derived_object
        from tvm.s_tir import meta_schedule as ms

        outer = self

        @derived_object
        class Callback(ms.measure_callback.PyMeasureCallback):
            def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
                outer.measured += len(runner_results)
                for built, ran in zip(builder_results, runner_results):
                    error = built.error_msg or ran.error_msg
                    if error:
                        outer.failed += 1
                        outer.first_failure = outer.first_failure or str(error).strip().splitlines()[-1][:300]
                if outer._bar is not None:
                    outer._bar.advance(len(runner_results), task=task_id)
                if outer.deadline is not None and time.perf_counter() > outer.deadline:
                    # Terminating tasks from here races with the scheduler's own bookkeeping (TVM
                    # then fails a check), so end the session by raising: the measured records
                    # are already in the database.
                    outer.stopped = True
                    raise TuningDeadline("tuning time budget spent")

        return Callback()


def build_with_database(mod, target: dict[str, Any], root: Path | None = None):
    """Compile a prepared module, taking each task's best schedule from the database (others untuned)."""
    install()
    import tvm
    from tvm import relax

    folder = database_dir(target, root)
    open_database(folder)  # repairs a torn file before TVM reads it
    tvm_target = tvm.target.Target(target)
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        mod = relax.transform.MetaScheduleApplyDatabase(str(folder))(mod)
        return tvm.compile(mod, target=tvm_target)
