"""Semantic checks: AST -> `Spec`, or an `AdlError` listing every problem with its caret.

What each block accepts (its settings schema) is defined once: here for `task` and `target`,
beside the code each schema describes for the others -- `data` sources in `adl.data`
(`DATA_SOURCES`), `model` families in `adl.models.families`, passes on their `Pass` classes,
cost models on theirs.
"""

from __future__ import annotations

import codecs
import dataclasses
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from adl.data import DATA_SOURCES
from adl.dsl import ast
from adl.dsl.errors import AdlError, Diagnostic
from adl.dsl.parser import MAX_SPEC_BYTES, parse
from adl.ir.domains import domains_in
from adl.ir.options import Option, OptionError, coerce_settings, quantity_of
from adl.ir.passes import PassRegistry, default_registry
from adl.ir.pipeline import resolve_stage
from adl.ir.spec import (
    BUDGET_QUANTITIES,
    Budget,
    CallValue,
    DataSpec,
    ModelSpec,
    Spec,
    StageSpec,
    TargetSpec,
    TaskSpec,
    available_cores,
)
from adl.models.families import MODEL_FAMILIES, arrives_trained

if TYPE_CHECKING:
    from adl.hwmodels.registry import CostModelRegistry


class CostModelCalls(Mapping[str, Sequence[Option]]):
    """The `calls` of the target's `cost` option: each registered cost model's option schema.

    Read from the cost-model registry (adl.hwmodels: built-ins and entry points) on first use,
    so importing this module stays cheap and plug-ins installed later are seen.
    """

    def __init__(self, registry: "CostModelRegistry | None" = None) -> None:
        self._registry = registry

    def registry(self) -> "CostModelRegistry":
        if self._registry is None:
            from adl.hwmodels.registry import default_registry

            return default_registry()
        return self._registry

    def __getitem__(self, name: str) -> Sequence[Option]:
        model_cls = self.registry().get(name)
        if model_cls is None:
            raise KeyError(name)
        return model_cls.options

    def __iter__(self) -> Iterator[str]:
        return iter(self.registry().names())

    def __len__(self) -> int:
        return len(self.registry())


# Upper bound on `classes`: generous, but a network within it can still be built and trained.
MAX_CLASSES = 100_000

TASKS: dict[str, tuple[Option, ...]] = {
    "classify": (Option("classes", "int", doc="number of classes, e.g. `classes = 10`", low=2, high=MAX_CLASSES),),
}

TARGET_OPTIONS: tuple[Option, ...] = (
    Option("kind", "name", "llvm", "TVM target kind", choices=("llvm",)),
    Option(
        "cores", "int", available_cores(), "CPU cores the library may use (default: this process's)", low=1, high=1024
    ),
    Option("mcpu", "string", None, "LLVM CPU name, e.g. znver3 (default: generic for the host)"),
    Option("triple", "string", None, 'LLVM target triple to cross-compile for, e.g. "aarch64-linux-gnu"'),
    Option(
        "tune",
        "call",
        CallValue("none"),
        "none, or metaschedule(trials = N per new task, minutes = M for the whole session)",
        calls={
            "none": (),
            "metaschedule": (
                Option(
                    "trials",
                    "int",
                    64,
                    "measured candidates per task not yet in the tuning database",
                    low=1,
                    high=1_000_000,
                ),
                Option(
                    "minutes",
                    "float",
                    None,
                    "stop tuning after this many minutes (what was measured by then is used)",
                    low=0.0,
                    high=10_080.0,
                ),
            ),
        },
    ),
    Option(
        "cost",
        "call",
        CallValue("roofline"),
        "the cost model that prices the target for passes and the manifest, e.g. "
        "roofline(gflops = 150, bandwidth = 25, overhead = 4 us) or bitserial(preset = edge); "
        "`adl hw list` shows them all",
        calls=CostModelCalls(),
        noun="cost model",
    ),
    Option(
        "rpc",
        "string",
        None,
        'run and time libraries on a device through TVM RPC: "host:port" of an RPC '
        "tracker (with `key`) or of an RPC server",
    ),
    Option("key", "string", None, "the device key to request from the RPC tracker at `rpc`"),
)
DEFAULT_COST_MODEL = "roofline"

REQUIRED_BLOCKS = ("task", "data", "pipeline")


class _Checker:
    def __init__(
        self, tree: ast.SpecFile, registry: PassRegistry, cost_models: "CostModelRegistry | None" = None
    ) -> None:
        self.tree = tree
        self.registry = registry
        self.cost_calls = CostModelCalls(cost_models)
        self.target_options = tuple(
            dataclasses.replace(o, calls=self.cost_calls) if o.name == "cost" else o for o in TARGET_OPTIONS
        )
        self.errors: list[Diagnostic] = []
        self.base_dir = Path(tree.filename).resolve().parent if os.path.exists(tree.filename) else Path.cwd()

    def error(self, message: str, span: ast.Span | None, note: str | None = None) -> None:
        self.errors.append(Diagnostic(message, span, note))

    # -- blocks --------------------------------------------------------------------------------

    def run(self) -> Spec:
        blocks: dict[str, Any] = {}
        for item in self.tree.items:
            keyword, span = _keyword_of(item)
            if keyword in blocks:
                first = _keyword_of(blocks[keyword])[1]
                self.error(f"duplicate '{keyword}' block", span, f"first defined at {first.line}:{first.column}")
                continue
            blocks[keyword] = item
        for keyword in REQUIRED_BLOCKS:
            if keyword not in blocks:
                self.error(f"missing '{keyword}' block", None, _REQUIRED_HINTS[keyword])
        if self.errors:
            raise self._failure()

        name_item = blocks.get("spec")
        name = name_item.name if name_item else Path(self.tree.filename).stem or "spec"
        task = self.task(blocks["task"])
        data = self.data(blocks["data"])
        model = self.model(blocks["model"]) if "model" in blocks else None
        target = self.target(blocks.get("target"))
        budgets = self.constraints(blocks.get("constraints"))
        # A model block with errors still counts as a model: its errors are reported already.
        facts = {"model"} if "model" in blocks else set()
        if model is not None and arrives_trained(model.family, model.as_dict()):
            facts.add("trained")
        pipeline = self.pipeline(blocks["pipeline"], facts=facts)
        if self.errors:
            raise self._failure()
        assert task and data and target is not None
        return Spec(
            name=name,
            task=task,
            data=data,
            model=model,
            target=target,
            budgets=budgets,
            pipeline=pipeline,
            filename=self.tree.filename,
            source=self.tree.source,
        )

    def _failure(self) -> AdlError:
        return AdlError(self.errors, filename=self.tree.filename, source=self.tree.source)

    def _head_choice(self, block: ast.Block, choices: dict[str, Any], what: str) -> tuple[str | None, tuple]:
        """The block's head names one of `choices`; call arguments join the body's settings."""
        head = block.head
        if head is None:
            self.error(
                f"'{block.keyword}' needs a {what}", block.keyword_span, "expected one of: " + ", ".join(choices)
            )
            return None, ()
        name, span = (head.value, head.span) if isinstance(head, ast.Name) else (head.name, head.name_span)
        if name not in choices:
            self.error(f"unknown {what} '{name}'", span, "expected one of: " + ", ".join(choices))
            return None, ()
        args = head.args if isinstance(head, ast.Call) else ()
        return name, tuple(args) + block.settings

    def _settings(
        self, settings: Sequence[ast.Setting], schema: Sequence[Option], what: str, span: ast.Span
    ) -> dict[str, Any] | None:
        before = len(self.errors)
        values = coerce_settings(settings, schema, what=what, span=span, errors=self.errors)
        return values if len(self.errors) == before else None

    def task(self, block: ast.Block) -> TaskSpec | None:
        kind, settings = self._head_choice(block, TASKS, "task")
        if kind is None:
            return None
        values = self._settings(settings, TASKS[kind], f"task '{kind}'", block.keyword_span)
        return TaskSpec(kind, values["classes"], block.span) if values else None

    def data(self, block: ast.Block) -> DataSpec | None:
        source, settings = self._head_choice(block, DATA_SOURCES, "data source")
        if source is None:
            return None
        values = self._settings(settings, DATA_SOURCES[source], f"data source '{source}'", block.keyword_span)
        if values is None:
            return None
        path = values.get("path")
        if path is not None:
            path = self._data_path(path, next(s for s in settings if s.key == "path").value.span)
            if path is None:
                return None
        size = values.get("image_size")
        if size is not None and len(size) not in (1, 2):
            setting = next(s for s in settings if s.key == "image_size")
            self.error("'image_size' must be [H, W] or [S]", setting.value.span)
            return None
        if size is not None:
            size = (size[0], size[-1])
        if "split" in values and not 0 < values["split"] < 1:
            setting = next(s for s in settings if s.key == "split")
            self.error("'split' must leave samples for both training and testing (0 < split < 1)", setting.value.span)
            return None
        if values.get("validation", 0.0) >= 1:
            setting = next(s for s in settings if s.key == "validation")
            self.error("'validation' must leave samples for training (0 <= validation < 1)", setting.value.span)
            return None
        return DataSpec(
            source=source,
            path=path,
            split=values.get("split", 0.8),
            seed=values.get("seed", 0),
            validation=values.get("validation", 0.0),
            image_size=size,
            grayscale=values.get("grayscale", False),
            span=block.span,
        )

    def _data_path(self, path: str, span: ast.Span) -> str | None:
        """`path` resolved against the spec's folder, if something is there; else an error at `span`."""
        return self._existing_path(path, span, f"data path '{path}'")

    def _existing_path(self, path: str, span: ast.Span, what: str) -> str | None:
        """`path` resolved against the spec's folder, if something is there; else an error at `span`."""
        try:
            resolved = (self.base_dir / path).resolve()
            found = resolved.exists()
        except ValueError:  # a NUL byte
            self.error(f"{what} cannot be used: it contains a NUL byte", span)
            return None
        except (OSError, RuntimeError) as err:  # too long, a symbolic link loop (RuntimeError before 3.13)
            why = err.strerror if isinstance(err, OSError) and err.strerror else os.strerror(errno.ELOOP)
            self.error(f"{what} cannot be used: {why}", span)
            return None
        if not found:
            self.error(f"{what} does not exist", span, f"looked for {resolved}")
            return None
        return str(resolved)

    def model(self, block: ast.Block) -> ModelSpec | None:
        family, settings = self._head_choice(block, MODEL_FAMILIES, "model family")
        if family is None:
            return None
        values = self._settings(settings, MODEL_FAMILIES[family], f"model '{family}'", block.keyword_span)
        if values is None:
            return None
        value_spans = tuple((s.key, s.value.span) for s in settings)
        for opt in MODEL_FAMILIES[family]:
            if opt.kind == "path" and values.get(opt.name):
                span = dict(value_spans)[opt.name]
                resolved = self._existing_path(values[opt.name], span, f"model file '{values[opt.name]}'")
                if resolved is None:
                    return None
                if not os.path.isfile(resolved):
                    self.error(f"model file '{values[opt.name]}' is not a file", span, f"found {resolved}")
                    return None
                values[opt.name] = resolved
        if family == "resnet" and len(values["blocks"]) != len(values["widths"]):
            self.error("resnet's `blocks` and `widths` differ in length", block.head.span)
            return None
        if family == "mobilenet":
            lengths = {k: len(values[k]) for k in ("kernels", "expand", "channels", "strides") if values[k] is not None}
            if len(set(lengths.values())) != 1:
                self.error(
                    "mobilenet's per-block lists differ in length: "
                    + ", ".join(f"{k} has {n}" for k, n in lengths.items()),
                    block.head.span,
                )
                return None
        return ModelSpec(family, tuple(values.items()), block.span, value_spans)

    def target(self, block: ast.Block | None) -> TargetSpec | None:
        if block is None:
            target = TargetSpec(name="host", cores=TARGET_OPTIONS[1].default, cost=self._default_cost())
            return target if self._cost_model_fits(target, None) else None
        if isinstance(block.head, ast.Call):
            self.error("a target's head is a plain name, e.g. `target host { ... }`", block.head.span)
            return None
        name = block.head.value if block.head else "host"
        values = self._settings(block.settings, self.target_options, "target", block.keyword_span)
        if values is None:
            return None
        if not self._rpc_fits(block, values):
            return None
        cost_setting = next((s for s in block.settings if s.key == "cost"), None)
        cost = values["cost"] if cost_setting is not None else self._default_cost()
        target = TargetSpec(
            name=name,
            kind=values["kind"],
            cores=values["cores"],
            mcpu=values["mcpu"],
            triple=values["triple"],
            tune=values["tune"],
            cost=cost,
            rpc=values["rpc"],
            key=values["key"],
            span=block.span,
        )
        where = cost_setting.value.span if cost_setting is not None else block.keyword_span
        return target if self._cost_model_fits(target, where) else None

    def _rpc_fits(self, block: ast.Block, values: dict[str, Any]) -> bool:
        """`rpc` is "host:port"; `key` needs `rpc` (the tracker it is requested from)."""
        settings = {s.key: s for s in block.settings}
        rpc = values["rpc"]
        if rpc is not None:
            host, _, port = rpc.rpartition(":")
            valid_port = port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536
            if not host or not valid_port:
                shown = rpc if len(rpc) <= 60 else rpc[:57] + "..."
                self.error(f'rpc must be "host:port", e.g. "127.0.0.1:9190"; got "{shown}"', settings["rpc"].value.span)
                return False
        elif values["key"] is not None:
            self.error(
                '`key` names a device at an RPC tracker: set `rpc` to the tracker\'s "host:port"',
                settings["key"].value.span,
            )
            return False
        return True

    def _default_cost(self) -> CallValue:
        """`roofline` with its defaults, as if the spec said `cost = roofline`."""
        schema = self.cost_calls.get(DEFAULT_COST_MODEL, ())
        return CallValue(DEFAULT_COST_MODEL, tuple((o.name, o.default) for o in schema))

    def _cost_model_fits(self, target: TargetSpec, span: ast.Span | None) -> bool:
        """The target's cost model can be built from its options and supports the target."""
        registry = self.cost_calls.registry()
        try:
            model = registry.create(target.cost)
        except (KeyError, TypeError, ValueError) as err:
            self.error(f"cost model '{target.cost.name}': {err}", span)
            return False
        if model.supports(target):
            return True
        fitting = []
        for other in registry:
            try:
                if other().supports(target):
                    fitting.append(registry.name_of(other) or other.name)
            except Exception:  # a model that needs options, or a broken plug-in: not offered
                continue
        self.error(
            f"cost model '{target.cost.name}' does not support target '{target.name}'",
            span,
            "cost models that do: " + (", ".join(fitting) or "none"),
        )
        return False

    # -- constraints ---------------------------------------------------------------------------

    def constraints(self, block: ast.ConstraintsBlock | None) -> tuple[Budget, ...]:
        if block is None:
            return ()
        budgets: list[Budget] = []
        for c in block.constraints:
            quantity = BUDGET_QUANTITIES.get(c.metric)
            if quantity is None:
                self.error(
                    f"unknown metric '{c.metric}'",
                    c.metric_span,
                    "constraints can bound: " + ", ".join(BUDGET_QUANTITIES),
                )
                continue
            try:
                value = quantity_of(c.bound, quantity, c.metric)
            except OptionError as err:
                self.errors.append(err.diagnostic)
                continue
            if quantity == "fraction" and not 0 <= value <= 1:
                self.error(f"{c.metric} must lie between 0 % and 100 %, got {c.bound.text}", c.bound.span)
                continue
            if value < 0:
                self.error(f"{c.metric} cannot be negative, got {c.bound.text}", c.bound.span)
                continue
            budget = Budget(c.metric, c.op, value, c.bound.text, c.bound.unit, c.span)
            if self._conflicts(budget, budgets):
                continue
            budgets.append(budget)
        return tuple(budgets)

    def _conflicts(self, new: Budget, budgets: list[Budget]) -> bool:
        for old in budgets:
            if old.metric != new.metric:
                continue
            where = f"{old.span.line}:{old.span.column}" if old.span else "?"
            if old.is_upper == new.is_upper:
                self.error(f"duplicate {new.metric} constraint", new.span, f"already bounded at {where}")
                return True
            upper, lower = (old, new) if old.is_upper else (new, old)
            strict = upper.op == "<" or lower.op == ">"
            if lower.value > upper.value or (strict and lower.value == upper.value):
                self.error(
                    f"contradictory {new.metric} constraints: no value is {lower.op} {lower.text} "
                    f"and {upper.op} {upper.text}",
                    new.span,
                    f"the other bound is at {where}",
                )
                return True
        return False

    # -- pipeline ------------------------------------------------------------------------------

    def pipeline(self, block: ast.PipelineBlock, *, facts: set[str]) -> tuple[StageSpec, ...]:
        """The pipeline's stages, each pass's `requires` checked against the facts before it
        (`facts`: what the `model` block provides: ``model``, and ``trained`` for a network that
        arrives trained)."""
        if not block.stages:
            self.error("empty pipeline", block.keyword_span, "list passes, e.g. `pipeline { train lower }`")
            return ()
        stages = []
        facts = set(facts)
        searcher: ast.Stage | None = None  # the stage before, when it searches the stage after it (hpo)
        for stage in block.stages:
            resolved = resolve_stage(stage, self.registry, self.errors)
            pass_cls = self.registry.get(stage.name)
            self._search_domains(stage, resolved, searcher)
            searcher = stage if getattr(pass_cls, "searches_next_stage", False) else None
            if pass_cls is None:
                continue
            missing = [fact for fact in pass_cls.requires if fact not in facts]
            if missing:
                hint = (
                    "add a `model` block (e.g. `model cnn()`) or a search pass before it"
                    if "model" in missing
                    else "passes run in the order written; move it after the pass that provides it"
                )
                self.error(
                    f"pass '{stage.name}' needs {', '.join(missing)}, which no earlier step provides",
                    stage.name_span,
                    hint,
                )
            if resolved is not None:
                self._option_requires(stage, pass_cls, resolved, facts)
            facts.update(pass_cls.ensures)
            if resolved is not None:
                stages.append(resolved)
        if searcher is not None:
            self._nothing_to_search(searcher, None)
        return tuple(stages)

    def _option_requires(self, stage: ast.Stage, pass_cls: Any, resolved: StageSpec, facts: set[str]) -> None:
        """Option values that need facts no earlier step provides, reported at the value."""
        for option, (needed, hint) in pass_cls.option_requires(resolved.as_dict()).items():
            missing = [fact for fact in needed if fact not in facts]
            if missing:
                setting = next((s for s in stage.settings if s.key == option), None)
                self.error(
                    f"'{option}' of pass '{stage.name}' needs {', '.join(missing)}, which no earlier step provides",
                    setting.value.span if setting is not None else stage.name_span,
                    hint,
                )

    def _search_domains(self, stage: ast.Stage, resolved: StageSpec | None, searcher: ast.Stage | None) -> None:
        """Search domains need an `hpo` stage right before theirs, and an `hpo` stage needs a stage
        with domains right after it."""
        if resolved is None:  # its options were reported already
            return
        domains = domains_in(resolved.as_dict())
        if domains and searcher is None:
            first = next(iter(domains.values()))
            self.error(
                f"search domains in '{stage.name}' need an `hpo` stage right before it",
                first.span or stage.name_span,
                f"e.g. `hpo(trials = 20)` before `{stage.name}(...)`; hpo chooses the values, then '{stage.name}' "
                "runs with them",
            )
        if searcher is not None and not domains:
            self._nothing_to_search(searcher, stage)

    def _nothing_to_search(self, searcher: ast.Stage, stage: ast.Stage | None) -> None:
        what = f"the stage after it, '{stage.name}', has none" if stage else "no stage follows it"
        self.error(
            f"'{searcher.name}' searches the search domains of the next stage, and {what}",
            searcher.name_span,
            "write domains in the next stage's options, e.g. `train(optimizer = adam(lr = loguniform(1e-4, 1e-1)))`",
        )


_REQUIRED_HINTS = {
    "task": "e.g. `task classify { classes = 10 }`",
    "data": "e.g. `data digits { split = 0.8 }`",
    "pipeline": "e.g. `pipeline { train lower }`",
}


def _keyword_of(item: ast.TopLevel) -> tuple[str, ast.Span]:
    if isinstance(item, ast.SpecName):
        return "spec", item.keyword_span
    if isinstance(item, ast.ConstraintsBlock):
        return "constraints", item.keyword_span
    if isinstance(item, ast.PipelineBlock):
        return "pipeline", item.keyword_span
    return item.keyword, item.keyword_span


def check(
    tree: ast.SpecFile, registry: PassRegistry | None = None, cost_models: "CostModelRegistry | None" = None
) -> Spec:
    """Semantic check of a parsed spec; raises `AdlError` with every problem found.

    `registry` and `cost_models` default to the installed passes and cost models.
    """
    return _Checker(tree, registry or default_registry(), cost_models).run()


def load_spec(
    text: str,
    filename: str = "<spec>",
    registry: PassRegistry | None = None,
    cost_models: "CostModelRegistry | None" = None,
) -> Spec:
    """Parse and check spec text."""
    return check(parse(text, filename), registry, cost_models)


def load_target(
    settings: str, filename: str = "<target>", cost_models: "CostModelRegistry | None" = None
) -> TargetSpec:
    """A target from a target block's settings, e.g. ``cores = 2  rpc = "10.0.0.5:9190"  key = "board"``
    (how `adl hw` commands take one); ``host`` or nothing is this machine with the defaults."""
    body = "" if settings.strip() in ("", "host") else settings
    tree = parse(f"target host {{ {body} }}\n", filename)
    checker = _Checker(tree, default_registry(), cost_models)
    target = checker.target(next(item for item in tree.items if _keyword_of(item)[0] == "target"))
    if checker.errors or target is None:
        raise checker._failure()
    return target


def load_spec_file(
    path: str | os.PathLike[str], registry: PassRegistry | None = None, cost_models: "CostModelRegistry | None" = None
) -> Spec:
    """Read, parse and check a spec file."""
    return load_spec(read_spec_text(path), str(path), registry, cost_models)


def read_spec_text(path: str | os.PathLike[str]) -> str:
    """A spec file's text, or an `AdlError`: unreadable (no position), over MAX_SPEC_BYTES, not UTF-8 (at the byte).

    Reads at most MAX_SPEC_BYTES + 1 bytes, so /dev/zero or a huge file costs nothing.
    """
    filename = str(path)
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SPEC_BYTES + 1)
    except OSError as err:
        raise AdlError.at(f"cannot read spec: {err.strerror or type(err).__name__}", None, filename=filename) from None
    except ValueError:  # open() refuses a NUL byte in a path
        raise AdlError.at("cannot read spec: the path contains a NUL byte", None, filename=filename) from None
    if len(data) > MAX_SPEC_BYTES:
        raise AdlError.at(f"spec is larger than {MAX_SPEC_BYTES >> 20} MiB", None, filename=filename)
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start].decode("utf-8")
        where = ast.Span.point(before.count("\n") + 1, len(before) - before.rfind("\n"))
        raise AdlError.at(
            f"spec is not UTF-8 text: cannot decode byte 0x{data[err.start]:02x}",
            where,
            filename=filename,
            source=data.decode("utf-8", errors="replace"),
        ) from None


__all__ = [
    "check",
    "load_spec",
    "load_spec_file",
    "read_spec_text",
    "load_target",
    "TASKS",
    "DATA_SOURCES",
    "MODEL_FAMILIES",
    "TARGET_OPTIONS",
]
