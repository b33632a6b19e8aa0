"""Where a setting was written in a spec's text, for errors found after the check.

The `Spec` keeps the span of each block, not of each setting; a check that runs later (the
target's `mcpu` against LLVM's CPU list, a pass's option against the target) finds the
setting's span again by parsing the spec's source, which is cheap and imports nothing heavy.
"""

from __future__ import annotations

from adl.dsl import ast
from adl.dsl.errors import AdlError
from adl.ir.spec import Spec


def _tree(spec: Spec) -> ast.SpecFile | None:
    from adl.dsl.parser import parse

    if not spec.source:
        return None
    try:
        return parse(spec.source, spec.filename)
    except AdlError:  # a spec built by hand, not from this text
        return None


def target_setting_span(spec: Spec, key: str) -> ast.Span | None:
    """The span of the value of `key` in the `target` block (None if it is not written there)."""
    tree = _tree(spec)
    blocks = [item for item in tree.items if isinstance(item, ast.Block) and item.keyword == "target"] if tree else []
    settings = [s for block in blocks for s in block.settings if s.key == key]
    return settings[0].value.span if settings else None


def stage_setting_span(spec: Spec, stage: str, key: str) -> ast.Span | None:
    """The span of the value of option `key` of the first pipeline stage named `stage`
    (None if the spec's pipeline does not write it, e.g. a pipeline given on the command line)."""
    tree = _tree(spec)
    blocks = [item for item in tree.items if isinstance(item, ast.PipelineBlock)] if tree else []
    stages = [s for block in blocks for s in block.stages if s.name == stage]
    settings = [s for s in stages[0].settings if s.key == key] if stages else []
    return settings[0].value.span if settings else None
