"""`Pipeline`: an ordered list of configured passes, with a textual form that round-trips.

Running one on a network from Python is the driver's job: `adl.Pipeline` (`adl.driver.embed`)
adds `run` to this class.

    >>> str(Pipeline.parse("train{ epochs = 3 },lower"))
    'train{epochs=3},lower'
"""

from __future__ import annotations

from typing import Iterator, Sequence

from adl.dsl import ast
from adl.dsl.errors import AdlError, Diagnostic
from adl.dsl.parser import parse_pipeline_text
from adl.ir.domains import domains_in
from adl.ir.options import OptionError, coerce_settings
from adl.ir.passes import Pass, PassRegistry, default_registry
from adl.ir.spec import StageSpec


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
        errors.append(
            Diagnostic(
                f"unknown pass '{stage.name}'", stage.name_span, "registered passes: " + ", ".join(registry.names())
            )
        )
        return None
    before = len(errors)
    try:
        explicit = coerce_settings(
            stage.settings,
            pass_cls.options,
            what=f"pass '{stage.name}'",
            span=stage.name_span,
            fill_defaults=False,
            errors=errors,
            domains=True,
        )
    except OptionError as err:  # pragma: no cover - coerce_settings collects into `errors`
        errors.append(err.diagnostic)
        return None
    if len(errors) > before:
        return None
    searched = domains_in(explicit)
    if searched and not pass_cls.tunable:
        domain = next(iter(searched.values()))
        tunable = [name for name, cls in registry.items() if getattr(cls, "tunable", False)]
        where = "search domains are allowed in: " + ", ".join(tunable) if tunable else "no pass takes search domains"
        errors.append(Diagnostic(f"pass '{stage.name}' has no searchable options", domain.span, where))
        return None
    return StageSpec(stage.name, tuple(explicit.items()), stage.span)
