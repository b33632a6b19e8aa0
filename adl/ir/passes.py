"""The pass protocol, the context passes run in, and the registry of passes.

A pass is metadata (name, typed options, requires/ensures) plus ``run(module, ctx) -> module``.
Pass modules must stay cheap to import: ``adl check`` and ``adl passes`` read this metadata
without importing torch, TVM or JAX, so heavy imports belong inside ``run``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Protocol, Sequence

from adl.ir.module import Module
from adl.ir.options import Option, configure, format_option
from adl.ir.progress import Progress, SilentProgress
from adl.ir.registry import Registry
from adl.ir.report import Section
from adl.ir.spec import Spec, TargetSpec

if TYPE_CHECKING:
    from adl.data import Dataset
    from adl.hwmodels import Cost, CostModel
    from adl.ir.layers import LayerDesc

ENTRY_POINT_GROUP = "adl.passes"


class PassError(Exception):
    """A pass failed for a reason the user can act on; the message is shown without a traceback."""


class PassCrash(PassError):
    """A pass raised something other than a `PassError`: a bug in that pass, not the user's
    mistake. The original exception is the `__cause__` (`--debug` shows its traceback)."""

    def __init__(self, pass_name: str, done: Sequence[str], error: BaseException) -> None:
        after = f" (after [{', '.join(done)}])" if done else ""
        super().__init__(
            f"internal error in pass '{pass_name}'{after}: {type(error).__name__}: "
            f"{first_line(error)}; rerun with --debug for the traceback"
        )
        self.pass_name = pass_name
        self.__cause__ = error


def first_line(error: BaseException, limit: int | None = 300) -> str:
    """The first non-empty line of an error's text (TVM's run to pages), cut to `limit`
    characters (None: whole)."""
    line = next((text.strip() for text in str(error).splitlines() if text.strip()), "")
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


class BudgetInfeasible(PassError):
    """No outcome of a pass can meet `budget`: raised by `Pass.check_feasible`, shown by the
    driver as a spec error with a caret at the budget, before any pass runs."""

    def __init__(self, message: str, budget: Any, note: str | None = None) -> None:
        super().__init__(message)
        self.budget = budget
        self.note = note

    @property
    def span(self) -> Any:
        """Where the caret goes: the budget's span."""
        return getattr(self.budget, "span", None)


class SettingInvalid(BudgetInfeasible):
    """A pass's option that cannot work with the spec (e.g. more threads than the target has
    cores): raised by `Pass.check_feasible`, shown like `BudgetInfeasible` with the caret at
    `span` (see `adl.ir.source_spans`), before any pass runs."""

    def __init__(self, message: str, span: Any, note: str | None = None) -> None:
        super().__init__(message, budget=None, note=note)
        self._span = span

    @property
    def span(self) -> Any:
        return self._span


class Pass:
    """Base class of every pass. Subclasses set the class attributes and implement `run`."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()  # facts the input module must provide
    ensures: ClassVar[tuple[str, ...]] = ()  # facts the output module provides
    # A pass that searches against the latency budget gets a share of it (see budget_plan.py).
    searches_latency: ClassVar[bool] = False
    tunable: ClassVar[bool] = False  # its options may hold search domains, which an `hpo` stage before it resolves
    # Files the pass produces that the artifact carries: `Module.files` key -> file name in the artifact.
    artifact_files: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def option_requires(cls, options: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...], str]]:
        """Facts that some option values need on top of `requires` (`train { distill = teacher() }`:
        a compression pass before it): option name -> (facts, hint). `options` are the stage's
        explicit options; the checker reports a missing fact at the option's value."""
        return {}

    def __init__(self, **explicit: Any) -> None:
        self.config: dict[str, Any] = configure(f"pass '{self.name}'", self.options, explicit)
        self.explicit: dict[str, Any] = {o.name: explicit[o.name] for o in self.options if o.name in explicit}
        # metric -> this pass's share of the spec's budget, set by the driver from the budget plan
        self.budget_shares: dict[str, float] = {}

    def latency_factor(self, spec: Spec) -> float:
        """The fraction of the latency this pass expects to leave (a compression pass: < 1), so that
        a search before it can aim at a looser latency; 1.0 by default."""
        return 1.0

    def run(self, module: Module, ctx: "PassContext") -> Module:
        raise NotImplementedError

    def check_feasible(self, spec: Spec, data: Any, cost_model: Any) -> None:
        """Raise `BudgetInfeasible` if the spec's budgets cannot hold whatever this pass does
        (e.g. a latency budget below the fastest network of a search space). The driver calls
        it for every pass before running any -- before even loading the data when the source
        fixes the input shape -- so an impossible spec costs no search time. `data` has only
        `input_shape` (per sample); `self.budget_shares` holds this pass's budget plan."""

    def report(self, metrics: Mapping[str, Any]) -> Sequence[Section]:
        """This pass's sections of the artifact's report.md and report.html (text, tables, plots:
        see `adl.ir.report`), from the final module's metrics (what the pass recorded with
        `Module.with_metrics`); none by default."""
        return []

    def search_space(self, input_shape: tuple[int, ...], classes: int) -> SearchSpace | None:
        """The candidates this pass chooses among, for `adl hw lut --space` to measure ahead of a
        compile (a pass that searches against a measured cost model); None: it searches nothing."""
        return None

    def __str__(self) -> str:
        """The pass in pipeline-string form: explicit options only, in declaration order."""
        if not self.explicit:
            return self.name
        schema = {o.name: o for o in self.options}
        inner = ",".join(f"{k}={format_option(schema[k], v)}" for k, v in self.explicit.items())
        return f"{self.name}{{{inner}}}"

    def key_text(self) -> str:
        """What the pass's checkpoint key hashes of the pass itself: its pipeline string, and for a
        pass whose result depends on more than its options (`hpo`: the stage it searches), that too."""
        return str(self)

    def __repr__(self) -> str:
        return f"<Pass {self}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pass) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


class SearchSpace(Protocol):
    """What a searching pass chooses among, as `adl hw lut --space` measures it."""

    description: str  # e.g. "mobilenet(blocks=4, ...)", shown to the user

    def price(self, cost_model: "CostModel", target: TargetSpec) -> None:
        """Price every candidate with `cost_model` (a measured model measures what its table lacks)."""

    def reference_network(self) -> Any:
        """One network of the space (a torch module), to calibrate the per-network overhead on."""


class Instrument:
    """Hooks around every pass (TVM's PassInstrument): override what you need."""

    def before_pass(self, p: Pass, module: Module, ctx: "PassContext") -> None:
        pass

    def after_pass(self, p: Pass, module: Module, ctx: "PassContext") -> None:
        pass


@dataclass
class PassContext:
    """What a pass may use besides its input module.

    `work_dir` is where passes put files they produce; `state_dir(key)` gives a pass a
    folder private to one checkpoint key for resumable progress (e.g. per-epoch training
    state), so a killed pass restarts from its last saved step.
    """

    spec: Spec
    work_dir: Path
    seed: int = 0
    progress: Progress = field(default_factory=SilentProgress)
    instruments: Sequence[Instrument] = ()
    load_dataset: Callable[[], "Dataset"] | None = None
    log: Callable[[str], None] = lambda message: None
    current_key: str = ""  # checkpoint key of the running pass, set by the driver
    cost_model: "CostModel | None" = None
    _dataset: Any = field(default=None, repr=False)

    def dataset(self) -> "Dataset":
        if self._dataset is None:
            if self.load_dataset is None:
                raise PassError("no data source available in this context")
            self._dataset = self.load_dataset()
        return self._dataset

    def cost(self, layers: Sequence["LayerDesc"]) -> "Cost":
        """What `layers` cost on the spec's target, by the target's cost model."""
        if self.cost_model is None:
            raise PassError("no cost model available in this context")
        return self.cost_model.estimate(layers, self.spec.target)

    def state_dir(self) -> Path:
        """A folder for the running pass's resumable state, keyed by its checkpoint key."""
        path = self.work_dir / "state" / self.current_key[:16]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def output_dir(self) -> Path:
        """A folder for files the running pass produces (content-addressed by its key)."""
        path = self.work_dir / "outputs" / self.current_key[:16]
        path.mkdir(parents=True, exist_ok=True)
        return path


def stage_key(upstream: str, p: Pass, version: str) -> str:
    return hashlib.sha256(f"{upstream}\n{p.key_text()}\n{version}".encode()).hexdigest()


class PassRegistry(Registry[type[Pass]]):
    """Passes by name: adl's and third parties', all registered through the ``adl.passes``
    entry-point group (see `adl.ir.registry` for the loading and shadowing rules)."""

    kind = "pass"
    group = ENTRY_POINT_GROUP

    base = Pass


def default_registry() -> PassRegistry:
    """The process-wide registry (loaded once, on first use)."""
    return PassRegistry.default()
