"""`Pipeline`: an ordered list of configured passes, with a textual form that round-trips.

    >>> str(Pipeline.parse("train{ epochs = 3 },lower"))
    'train{epochs=3},lower'
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence

from adl.compiler.options import OptionError, coerce_settings
from adl.compiler.passes import Pass, PassRegistry, default_registry
from adl.compiler.spec import StageSpec
from adl.dsl import ast
from adl.dsl.errors import AdlError, Diagnostic
from adl.dsl.parser import parse_pipeline_text


class Pipeline:
    def __init__(self, passes: Sequence[Pass]) -> None:
        self.passes: tuple[Pass, ...] = tuple(passes)

    @classmethod
    def parse(cls, text: str, registry: PassRegistry | None = None, *, filename: str = "<pipeline>") -> "Pipeline":
        """Parse ``name{k=v,...},name,...``; unknown passes/options are `AdlError`s with a caret."""
        registry = registry or default_registry()
        stages = parse_pipeline_text(text, filename)
        errors: list[Diagnostic] = []
        specs = [resolve_stage(stage, registry, errors) for stage in stages]
        if errors:
            raise AdlError(errors, filename=filename, source=text)
        return cls.from_stages([s for s in specs if s is not None], registry)

    @classmethod
    def from_stages(cls, stages: Sequence[StageSpec], registry: PassRegistry | None = None) -> "Pipeline":
        registry = registry or default_registry()
        passes = []
        for stage in stages:
            pass_cls = registry.get(stage.pass_name)
            if pass_cls is None:
                raise KeyError(f"unknown pass '{stage.pass_name}'; registered: {', '.join(registry.names())}")
            passes.append(pass_cls(**stage.as_dict()))
        return cls(passes)

    def run(self, model: Any, data: Any, *, classes: int | None = None, trained: bool = False,
            target: str = "kind = llvm  cores = 2", constraints: str = "", name: str = "pipeline",
            out_dir: str | os.PathLike[str] | None = None, seed: int = 0,
            cache_dir: str | os.PathLike[str] | None = None, progress: Any = None,
            log: Callable[[str], None] = lambda message: None) -> Any:
        """Run the passes on a network and data from Python (no .adl file) and write the artifact.

        `model` is a torch module taking raw inputs (its own normalisation included);
        `trained` says it is already trained. `data` is an `adl.data.Dataset`,
        ``(x_train, y_train, x_test, y_test)`` arrays, or ``(train_loader, test_loader)``
        yielding ``(inputs, labels)`` batches. `target` and `constraints` are the bodies of
        the spec blocks of those names (``"kind = llvm  cores = 2"``, ``"latency <= 1 ms"``),
        checked as in a file. Returns the driver's `CompileResult` (`.ok`, `.manifest`,
        `.artifact_dir`); raises `AdlError` for a bad target or constraint and ValueError for
        a pass whose `requires` nothing provides.
        """
        from pathlib import Path

        from adl.compiler.driver import compile_spec
        from adl.compiler.embed import as_dataset, check_requires, spec_for

        dataset = as_dataset(data, classes)
        check_requires(self.passes, {"model", "trained"} if trained else {"model"})
        total = len(dataset.y_train) + len(dataset.y_test)
        spec = spec_for(name, dataset.classes, target, constraints, len(dataset.y_train) / total)
        return compile_spec(spec, out_dir=Path(out_dir) if out_dir else None, pipeline=self, seed=seed,
                            cache_dir=Path(cache_dir) if cache_dir else None, progress=progress, log=log,
                            dataset=dataset, model=model, trained=trained)

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"

    def __iter__(self) -> Iterator[Pass]:
        return iter(self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and str(self) == str(other)


def resolve_stage(stage: ast.Stage, registry: PassRegistry, errors: list[Diagnostic]) -> StageSpec | None:
    """Check one stage against its pass's option schema; append problems to `errors`."""
    pass_cls = registry.get(stage.name)
    if pass_cls is None:
        errors.append(Diagnostic(f"unknown pass '{stage.name}'", stage.name_span,
                                 "registered passes: " + ", ".join(registry.names())))
        return None
    before = len(errors)
    try:
        explicit = coerce_settings(stage.settings, pass_cls.options, what=f"pass '{stage.name}'",
                                   span=stage.name_span, fill_defaults=False, errors=errors)
    except OptionError as err:  # pragma: no cover - coerce_settings collects into `errors`
        errors.append(err.diagnostic)
        return None
    if len(errors) > before:
        return None
    return StageSpec(stage.name, tuple(explicit.items()), stage.span)
