"""The `hpo` pass: hyperparameter search over the search domains of the stage after it.

    pipeline {
      hpo(trials = 20, sampler = tpe, pruner = median, executor = local(jobs = 2))
      train(epochs = int(3, 12), optimizer = adam(lr = loguniform(1e-4, 1e-1)))
      lower
    }

Each trial trains the network the way `train` would with the trial's values and is scored by its
validation accuracy after its last epoch (the spec's accuracy budget is the objective; the domains
`train` offers change how the network learns, not its size or latency, so every trial costs the
same in the target's cost model and no constraint separates them). Optuna samples the values (TPE,
or random search as the baseline) and prunes trials per epoch (median rule or ASHA); the trials'
epochs run on an executor: local worker processes or a Ray cluster. The study lives in SQLite in
the compile's cache, so a killed compile resumes its search; the chosen values go to the next stage,
which the driver runs with them (see `adl.driver.run`), and every trial to the manifest and report.
"""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any, ClassVar, Mapping

from adl.ir.domains import domains_in
from adl.ir.module import Module
from adl.ir.options import Option, format_value
from adl.ir.passes import Pass, PassContext, PassError, SettingInvalid
from adl.ir.spec import CallValue, Spec

EXECUTORS: dict[str, tuple[Option, ...]] = {
    "local": (
        Option("jobs", "int", 1, "trials run at once, each in its own worker process", low=1, high=1024),
        Option("threads", "int", 0, "threads per worker (0: the target's cores / jobs)", low=0, high=1024),
    ),
    "ray": (
        Option("address", "string", "auto", 'the Ray cluster: "auto" (RAY_ADDRESS or a local one) or "host:port"'),
        Option("cpus", "int", 1, "CPUs (and threads) per trial", low=1, high=1024),
    ),
}
STUDY_FILE = "study.db"


class HpoPass(Pass):
    name = "hpo"
    summary = "search the next stage's hyperparameter domains with Optuna (TPE or random), trials on an executor"
    options = (
        Option(
            "trials", "int", 20, "trials in the study (a resumed study counts the ones it has)", low=1, high=100_000
        ),
        Option(
            "minutes", "float", 0.0, "start no trial after this many minutes of search (0: no limit)", low=0.0, high=1e6
        ),
        Option(
            "sampler", "name", "tpe", "tpe (Bergstra et al. 2011) or random (the baseline)", choices=("tpe", "random")
        ),
        Option(
            "pruner",
            "name",
            "median",
            "stop a trial after an epoch whose validation accuracy is below the median of the trials "
            "before it at that epoch (median), by successive halving (asha), or never (none)",
            choices=("median", "asha", "none"),
        ),
        Option(
            "executor",
            "call",
            CallValue("local", (("jobs", 1), ("threads", 0))),
            "where trials run: local(jobs, threads) worker processes or ray(address, cpus)",
            calls=EXECUTORS,
        ),
    )
    requires = ("model",)
    ensures = ("hyperparameters",)
    artifact_files = {"hpo_study": "hpo_study.db"}
    # the driver sets the pass this one searches: the next stage, whose options hold domains
    searches_next_stage: ClassVar[bool] = True

    def __init__(self, **explicit: Any) -> None:
        super().__init__(**explicit)
        self.searched: Pass | None = None

    def key_text(self) -> str:
        """The searched stage is part of what the search's result depends on."""
        return f"{self} searching {self.searched}" if self.searched is not None else str(self)

    def check_feasible(self, spec: Spec, data: Any, cost_model: Any) -> None:
        if spec.data.validation <= 0:
            raise SettingInvalid(
                "hpo scores its trials on the validation split, and the data block holds none out",
                spec.data.span,
                note="add `validation = 15 %` to the data block",
            )
        searched = self.searched
        if searched is not None and searched.config.get("distributed", CallValue("none")).name != "none":
            raise SettingInvalid(
                f"hpo trains each trial in one process; '{searched.name}' is distributed",
                _stage_span(spec, searched.name),
                note="search without `distributed`, then train the chosen values distributed in a second compile",
            )
        if searched is not None and searched.config.get("distill", CallValue("none")).name != "none":
            raise SettingInvalid(
                f"hpo's trials train without a teacher; '{searched.name}' distills",
                _stage_span(spec, searched.name),
                note="search without `distill`, or distill in the compression pass's own fine-tuning",
            )

    def run(self, module: Module, ctx: PassContext) -> Module:
        from adl.passes.executor import make_executor
        from adl.passes.hpo.search import Budget, best_trial, decode, run_search, trial_records
        from adl.passes.hpo.trial import TrialShared

        searched = self.searched
        if searched is None:
            raise PassError("hpo searches the stage after it, and there is none")
        space = domains_in(searched.config)
        if not space:
            raise PassError(f"the stage after hpo, '{searched.name}', has no search domains")
        dataset = ctx.dataset()
        if not dataset.has_validation:
            raise PassError("hpo scores trials on the validation split, and the data has none")
        executor_spec = self.config["executor"]
        executor = make_executor(
            executor_spec.name, executor_spec.as_dict(), default_threads=max(1, ctx.spec.target.cores or 1)
        )
        shared = TrialShared(_without_test_split(dataset), module.model, threads=_threads(executor_spec, ctx))
        state = ctx.state_dir()
        db = state / STUDY_FILE
        budget = Budget(self.config["trials"], self.config["minutes"])
        ctx.log(f"hpo: {len(space)} domains of '{searched.name}', {budget.trials} trials on {executor.describe()}")
        with ctx.progress.task("hpo", total=budget.trials) as bar:

            def on_trial(trial: Any) -> None:
                bar.advance(1, trial=trial.number, state=trial.state.name.lower())

            study = run_search(
                db,
                space,
                searched.config,
                executor,
                shared,
                budget=budget,
                sampler=self.config["sampler"],
                pruner=self.config["pruner"],
                seed=ctx.seed,
                state_folder=state / "trials",
                log=ctx.log,
                on_trial=on_trial,
            )
        best = best_trial(study)
        if best is None:
            raise PassError("hpo: no trial completed; see the trials' errors above")
        shipped = ctx.output_dir() / STUDY_FILE
        shutil.copyfile(db, shipped)
        trials = trial_records(study)
        seconds = float(study.user_attrs.get("search_seconds", 0.0))
        record = {
            "searched": searched.name,
            "space": {path: format_value(domain) for path, domain in space.items()},
            "sampler": self.config["sampler"],
            "pruner": self.config["pruner"],
            "executor": executor.describe(),
            "objective": "validation accuracy after the trial's last epoch (maximised)",
            "budget": {"trials": budget.trials, "minutes": budget.minutes or None},
            "best": {"trial": best.number, "params": decode(space, best.params), "val_accuracy": best.value},
            "params": decode(space, best.params),  # what the driver configures the searched stage with
            "trials": trials,
            "seconds": seconds,
            "trials_per_hour": len(trials) / seconds * 3600 if seconds > 0 else None,
        }
        return module.with_metrics(hpo=record).with_files(hpo_study=str(shipped)).establish("hyperparameters")

    def report(self, metrics: Mapping[str, Any]) -> list[Any]:
        from adl.passes.hpo.report import sections

        return sections(metrics["hpo"]) if metrics.get("hpo") else []


def _threads(executor: CallValue, ctx: PassContext) -> int:
    args = executor.as_dict()
    if executor.name == "ray":
        return int(args["cpus"])
    return int(args["threads"]) or max(1, (ctx.spec.target.cores or 1) // int(args["jobs"]))


def _without_test_split(dataset: Any) -> Any:
    """The dataset the workers get: trials never see the test split, and need not carry it."""
    return dataclasses.replace(dataset, x_test=dataset.x_test[:0], y_test=dataset.y_test[:0])


def _stage_span(spec: Spec, name: str) -> Any:
    """The span of the stage `name` that an `hpo` stage searches: the first one right after an `hpo`."""
    stages = spec.pipeline
    searched = (b for a, b in zip(stages, stages[1:]) if a.pass_name == HpoPass.name and b.pass_name == name)
    return next((stage.span for stage in searched), spec.data.span)
