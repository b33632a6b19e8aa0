"""The study: Optuna samples each trial's values and prunes, an executor runs the trials' epochs.

The parent process owns the Optuna study (SQLite in the compile's cache) and every trial's state
between epochs (a file per running trial), so a search killed at any moment resumes where it
stopped: finished trials are in the study, a running trial continues after its last finished
epoch. Sampling is reseeded per trial from (seed, trial number), so a search that runs one trial
at a time asks the same values whether or not it was interrupted.
"""

from __future__ import annotations

import math
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import optuna
from optuna.trial import TrialState

from adl.ir import seal
from adl.ir.domains import Domain, substitute
from adl.ir.passes import PassError
from adl.passes.executor import Executor, ExecutorLost, Outcome
from adl.passes.hpo.trial import EpochResult, EpochTask, TrialShared, run_epoch

STUDY_NAME = "hpo"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "asha", "none")
FAILURES_IN_A_ROW = 3  # trials failing with an error (not a lost worker) one after another stop the search


@dataclass(frozen=True)
class Budget:
    trials: int
    minutes: float = 0.0  # 0: no time limit

    def exhausted(self, trials: int, seconds: float) -> bool:
        return trials >= self.trials or (self.minutes > 0 and seconds >= self.minutes * 60)


def open_study(path: Path) -> optuna.Study:
    """The study stored at `path` (SQLite), created on first use; a rerun loads what is there."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True)


def make_sampler(kind: str, seed: int, startup: int) -> optuna.samplers.BaseSampler:
    """TPE (Bergstra et al. 2011) after `startup` random trials, or random search, seeded."""
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {kind!r}")


def make_pruner(kind: str) -> optuna.pruners.BasePruner:
    """Per-epoch pruning on validation accuracy: the median rule (from a trial's second epoch, once
    three trials have finished: one epoch says little of a slow starter), or asynchronous successive
    halving from the first epoch."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if kind == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {kind!r}")


def startup_trials(budget: int) -> int:
    """Random trials before TPE models the results: a quarter of the budget, 3 to 10."""
    return max(3, min(10, budget // 4))


def suggest(trial: optuna.trial.BaseTrial, path: str, domain: Domain) -> Any:
    """The trial's value for one domain (Optuna records it under `path`)."""
    if domain.kind == "uniform":
        return trial.suggest_float(path, domain.low, domain.high)
    if domain.kind == "loguniform":
        return trial.suggest_float(path, domain.low, domain.high, log=True)
    if domain.kind == "int":
        return trial.suggest_int(path, int(domain.low), int(domain.high), log=domain.log)
    if domain.kind == "choice":
        if all(isinstance(c, _OPTUNA_CATEGORIES) for c in domain.choices):
            return trial.suggest_categorical(path, list(domain.choices))
        return trial.suggest_categorical(path, [repr(c) for c in domain.choices])  # lists: by their text
    raise ValueError(f"unknown domain kind {domain.kind!r}")


_OPTUNA_CATEGORIES = (bool, int, float, str)


def decode(space: Mapping[str, Domain], params: Mapping[str, Any]) -> dict[str, Any]:
    """The options' values from Optuna's record of a trial (`suggest` stores list choices as text)."""
    values = dict(params)
    for path, domain in space.items():
        if domain.kind == "choice" and path in values:
            values[path] = next(
                (c for c in domain.choices if c == values[path] or repr(c) == values[path]), values[path]
            )
    return values


class TrialStates:
    """Each running trial's state after its last finished epoch, one sealed file per trial (see
    `adl.ir.seal`: the cache is a folder on disk), so that a killed search continues its trials
    instead of restarting them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, number: int) -> Path:
        return self.folder / f"trial-{number}.pkl"

    def save(self, result: EpochResult) -> None:
        seal.dump({"epoch": result.epoch, "state": result.state}, self._path(result.trial))

    def load(self, number: int) -> tuple[int, bytes | None]:
        """(last finished epoch, its state); (0, None) when there is none, or a file this user's adl
        did not write (never unpickled) or cannot read: the trial then starts over."""
        try:
            saved = seal.load(self._path(number))
            return int(saved["epoch"]), bytes(saved["state"])
        except (OSError, seal.BadSeal, pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError):
            return 0, None

    def drop(self, number: int) -> None:
        self._path(number).unlink(missing_ok=True)


@dataclass
class _Running:
    trial: optuna.trial.Trial
    config: dict[str, Any]
    epochs: int
    retried: int = 0


@dataclass
class Search:
    """One run of the study's search loop (`run`); a rerun on the same study continues it."""

    study: optuna.Study
    space: Mapping[str, Domain]
    base_config: Mapping[str, Any]  # the searched pass's options, domains included
    executor: Executor
    budget: Budget
    sampler: str
    seed: int
    states: TrialStates
    log: Callable[[str], None] = lambda message: None
    on_trial: Callable[[optuna.trial.FrozenTrial], None] = lambda trial: None
    _running: dict[int, _Running] = field(default_factory=dict)
    _tasks: dict[int, tuple[int, int]] = field(default_factory=dict)  # task id -> (trial, epoch)
    _failures_in_a_row: int = 0

    def run(self) -> None:
        started = time.monotonic()
        before = float(self.study.user_attrs.get("search_seconds", 0.0))
        try:
            self._resume_running()
            while True:
                seconds = before + time.monotonic() - started
                while self.executor.pending() < self.executor.slots and not self.budget.exhausted(
                    len(self.study.trials), seconds
                ):
                    self._start_trial()
                if not self.executor.pending():
                    break
                for outcome in self.executor.wait(timeout=5.0):
                    self._finished_task(outcome)
                self.study.set_user_attr("search_seconds", before + time.monotonic() - started)
        except ExecutorLost as err:
            done = sum(t.state.is_finished() for t in self.study.trials)
            raise PassError(f"hpo: {err}; the {done} finished trials are kept: a rerun resumes the study") from None
        finally:
            self.study.set_user_attr("search_seconds", before + time.monotonic() - started)

    # -- trials -------------------------------------------------------------------------------

    def _resume_running(self) -> None:
        """Trials a killed search left running continue after their last saved epoch."""
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial = optuna.trial.Trial(self.study, frozen._trial_id)
            params = self._values(trial, frozen.number)  # those a kill cut it off from asking, too
            config = substitute(self.base_config, decode(self.space, params))
            self._running[frozen.number] = _Running(trial, config, config["epochs"])
            epoch, state = self.states.load(frozen.number)
            self.log(f"hpo: continuing trial {frozen.number} after epoch {epoch}")
            self._submit(frozen.number, epoch + 1, state)

    def _start_trial(self) -> None:
        self.study.sampler = self._sampler(len(self.study.trials), 0)
        trial = self.study.ask()
        params = self._values(trial, trial.number)
        config = substitute(self.base_config, decode(self.space, params))
        self._running[trial.number] = _Running(trial, config, config["epochs"])
        self._submit(trial.number, 1, None)

    def _values(self, trial: optuna.trial.Trial, number: int) -> dict[str, Any]:
        """The trial's value of every domain: each asked of a sampler seeded by (seed, trial, domain),
        so a trial resumed after a kill between two of them gets the values an uninterrupted search
        would have (a value already recorded is returned as it is)."""
        values = {}
        for index, (path, domain) in enumerate(self.space.items()):
            self.study.sampler = self._sampler(number, index)
            values[path] = suggest(trial, path, domain)
        return values

    def _sampler(self, number: int, index: int) -> optuna.samplers.BaseSampler:
        seed = int(np.random.SeedSequence([self.seed, number, index]).generate_state(1)[0])
        return make_sampler(self.sampler, seed, startup_trials(self.budget.trials))

    def _submit(self, number: int, epoch: int, state: bytes | None) -> None:
        running = self._running[number]
        task = EpochTask(number, epoch, running.config, self.seed, state)
        self._tasks[self.executor.submit(run_epoch, task)] = (number, epoch)

    def _finished_task(self, outcome: Outcome) -> None:
        number, epoch = self._tasks.pop(outcome.task_id)
        running = self._running[number]
        if not outcome.ok:
            what = "its worker was lost" if outcome.lost else "it raised an error"
            self.log(f"hpo: trial {number} failed in epoch {epoch}: {what}: {outcome.error}")
            self._finish(number, TrialState.FAIL, error=outcome.error or "failed", lost=outcome.lost)
            return
        result: EpochResult = outcome.value
        if result.diverged:
            self._finish(number, TrialState.COMPLETE, value=0.0, diverged=result.diverged)
            return
        accuracy = float(result.row["val_accuracy"])
        running.trial.report(accuracy, step=epoch)
        if epoch >= running.epochs:
            self._finish(number, TrialState.COMPLETE, value=accuracy)
        elif running.trial.should_prune():
            self._finish(number, TrialState.PRUNED)
        else:
            self.states.save(result)
            self._submit(number, epoch + 1, result.state)

    def _finish(
        self,
        number: int,
        state: TrialState,
        *,
        value: float | None = None,
        error: str = "",
        lost: bool = False,
        diverged: str = "",
    ) -> None:
        running = self._running.pop(number)
        if error:
            running.trial.set_user_attr("error", error)
            running.trial.set_user_attr("worker_lost", lost)
        if diverged:
            running.trial.set_user_attr("diverged", diverged)
        frozen = self.study.tell(running.trial, value if state == TrialState.COMPLETE else None, state=state)
        self.states.drop(number)
        self.on_trial(frozen)
        self._failures_in_a_row = self._failures_in_a_row + 1 if error and not lost else 0
        if self._failures_in_a_row >= min(FAILURES_IN_A_ROW, self.budget.trials):
            raise PassError(f"hpo: {self._failures_in_a_row} trials in a row failed; the last: {error}")


def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial of the study, for the manifest: values, per-epoch validation accuracy, timing."""
    records = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if t.user_attrs.get("diverged"):
            state = "diverged"
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete is not None and t.datetime_start is not None
            else None
        )
        record: dict[str, Any] = {
            "number": t.number,
            "state": state,
            "params": dict(t.params),
            "value": t.value if t.value is not None and math.isfinite(t.value) else None,
            "val_accuracy_per_epoch": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
            "seconds": seconds,
        }
        for key in ("error", "worker_lost", "diverged"):
            if key in t.user_attrs:
                record[key] = t.user_attrs[key]
        records.append(record)
    return records


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial of highest validation accuracy (the earliest of ties), None if none completed."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def run_search(
    db: Path,
    space: Mapping[str, Domain],
    base_config: Mapping[str, Any],
    executor: Executor,
    shared: TrialShared,
    *,
    budget: Budget,
    sampler: str,
    pruner: str,
    seed: int,
    state_folder: Path,
    log: Callable[[str], None] = lambda message: None,
    on_trial: Callable[[optuna.trial.FrozenTrial], None] = lambda trial: None,
) -> optuna.Study:
    """Run (or continue) the study stored in `db` until the budget is spent, its trials' epochs on
    `executor` (started with `shared`, closed at the end); returns the study."""
    study = open_study(db)
    study.pruner = make_pruner(pruner)
    search = Search(
        study, space, base_config, executor, budget, sampler, seed, TrialStates(state_folder), log, on_trial
    )
    with executor:
        executor.start(shared)
        search.run()
    return study
