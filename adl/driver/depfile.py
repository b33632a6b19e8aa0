"""Make/Ninja depfiles: which files a compile read, so a build system reruns it when one changes.

`adl compile spec.adl -o build/x --depfile build/x.d` writes one rule::

    build/x/manifest.json: spec.adl data/train.npz my_plugin/passes.py

naming the artifact's manifest as the output (a file, as Make, Ninja and CMake's DEPFILE
expect) and as prerequisites everything the compile's result depends on that lives outside
adl itself: the spec, the data (every file of a data folder), the model block's files (an
ONNX file, torchvision weights), every file-valued option of the pipeline's passes (e.g.
``optimizer = l2o(weights = "w.npz")``), and the source files of plug-in passes and cost models.
The list is derived from the spec, not from what ran, so a rerun that reuses every checkpoint writes the same depfile.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from adl.ir.files import atomic_write_text
from adl.ir.options import Option
from adl.ir.spec import CallValue, Spec
from adl.models.families import MODEL_FAMILIES


def _path_options(options: Sequence[Option], values: dict[str, Any]) -> Iterator[Path]:
    """Every non-empty value of kind ``path`` in `values`, looking inside call-valued options."""
    for opt in options:
        value = values.get(opt.name)
        if value in (None, ""):
            continue
        if opt.kind == "path":
            yield Path(value)
        elif opt.kind == "call" and opt.calls is not None and isinstance(value, CallValue):
            yield from _path_options(opt.calls.get(value.name, ()), value.as_dict())


def _plugin_source(obj: Any) -> Path | None:
    """The source file defining `obj`'s class, unless it is part of adl (built-ins are not dependencies)."""
    module = type(obj).__module__
    if module == "adl" or module.startswith("adl."):
        return None
    try:
        return Path(inspect.getfile(type(obj))).resolve()
    except (TypeError, OSError):
        return None


def _files_under(path: Path) -> Iterator[Path]:
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            yield from (Path(root) / name for name in sorted(files))
    else:
        yield path


def dependencies(
    spec: Spec, passes: Iterable[Any], cost_model: Any = None, data_path: str | os.PathLike[str] | None = None
) -> list[Path]:
    """The files a compile of `spec` with `passes` (configured Pass objects) depends on, absolute,
    in a stable order, without duplicates. `data_path` is where the data lies when the spec
    names no path (a source's default folder, e.g. fashion_mnist's)."""
    found: list[Path] = []
    if spec.filename and Path(spec.filename).is_file():
        found.append(Path(spec.filename))
    data_path = spec.data.path or data_path
    if data_path:
        found.extend(_files_under(Path(data_path)))
    if spec.model is not None:  # an imported network's file and weights
        found.extend(_path_options(MODEL_FAMILIES.get(spec.model.family, ()), spec.model.as_dict()))
    for p in passes:
        found.extend(_path_options(p.options, p.config))
        found.append(_plugin_source(p))
    if cost_model is not None:
        found.append(_plugin_source(cost_model))
    unique = dict.fromkeys(path.resolve() for path in found if path is not None)
    return list(unique)


def _escape(path: str) -> str:
    """A path as a Make prerequisite: spaces and '#' backslash-escaped, '$' doubled."""
    return path.replace("\\", "\\\\").replace(" ", "\\ ").replace("#", "\\#").replace("$", "$$")


def render_depfile(output: str | os.PathLike[str], deps: Sequence[Path]) -> str:
    return _escape(str(output)) + ":" + "".join(f" \\\n  {_escape(str(d))}" for d in deps) + "\n"


def write_depfile(path: str | os.PathLike[str], output: str | os.PathLike[str], deps: Sequence[Path]) -> None:
    """Write the depfile atomically (a build tool never reads half of one)."""
    atomic_write_text(path, render_depfile(output, deps))
