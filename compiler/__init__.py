"""The compiler: spec checking, the pass pipeline, the driver. `adl.compiler.Pipeline` is the
pass pipeline as a library (`Pipeline.parse(text).run(model, data, ...)`)."""

from __future__ import annotations

from typing import Any

__all__ = ["Pipeline"]


def __getattr__(name: str) -> Any:  # lazy: importing a submodule must not import the pipeline machinery
    if name == "Pipeline":
        from adl.compiler.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'adl.compiler' has no attribute {name!r}")
