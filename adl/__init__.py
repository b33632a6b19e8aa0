"""adl: a compiler for efficient neural networks.

    >>> import adl
    >>> spec = adl.check(open("examples/digits_fixed.adl").read())
    >>> artifact = adl.compile("examples/digits_fixed.adl")     # -> build/digits_fixed/
    >>> adl.load("build/digits_fixed").predict(x)                # TVM runtime only

Heavy layers (torch, TVM) are imported inside the functions that need them, so
`import adl` and `adl.check` stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adl.ir import ADL_VERSION as __version__

if TYPE_CHECKING:
    from adl.backends.artifact import Artifact
    from adl.dsl.ast import SpecFile
    from adl.ir.spec import Spec


def parse(text: str, filename: str = "<spec>") -> "SpecFile":
    """Parse spec text into its AST (syntax only)."""
    from adl.dsl import parse as parse_text

    return parse_text(text, filename)


def check(text: str, filename: str = "<spec>") -> "Spec":
    """Parse and check spec text into the typed `Spec`; raises `adl.dsl.AdlError`."""
    from adl.driver.check import load_spec

    return load_spec(text, filename)


def compile(
    path_or_text: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    pipeline: str | None = None,
    seed: int = 0,
    dump_ir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> "Artifact":
    """Compile a spec (a path to an .adl file, or spec text) and return the loaded artifact.

    `artifact.manifest["all_budgets_hold"]` tells whether every budget held.
    """
    from adl.backends.artifact import load as load_artifact
    from adl.driver.check import load_spec, load_spec_file
    from adl.driver.run import compile_spec
    from adl.ir.pipeline import Pipeline

    text = str(path_or_text)
    if isinstance(path_or_text, os.PathLike) or ("\n" not in text and Path(text).is_file()):
        spec = load_spec_file(path_or_text)
    else:
        spec = load_spec(text)
    result = compile_spec(
        spec,
        out_dir=Path(out_dir) if out_dir else None,
        pipeline=Pipeline.parse(pipeline) if pipeline else None,
        seed=seed,
        dump_ir=Path(dump_ir) if dump_ir else None,
        cache_dir=Path(cache_dir) if cache_dir else None,
    )
    return load_artifact(result.artifact_dir)


def load(path: str | os.PathLike[str]) -> "Artifact":
    """Load a compiled artifact directory; runs through the TVM runtime only (no torch).

    A missing, malformed or tampered artifact (a manifest of the wrong types, a `model.so` whose
    sha256 is not the manifest's) raises `adl.backends.artifact.ArtifactError`; `predict` raises
    ValueError for inputs that do not fit the manifest's input (shape, dtype, NaN or inf).
    """
    from adl.backends.artifact import load as load_artifact

    return load_artifact(path)


def __getattr__(name: str) -> Any:  # lazy: `import adl` must not import the driver
    if name == "Pipeline":
        from adl.driver.embed import Pipeline

        return Pipeline
    raise AttributeError(f"module 'adl' has no attribute {name!r}")


__all__ = ["Pipeline", "__version__", "check", "compile", "load", "parse"]
