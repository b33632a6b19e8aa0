"""Running a pass pipeline on a user's own network and data, without an .adl file.

`Pipeline.run` is the entry point (`adl.Pipeline`: the IR's `Pipeline` plus `run`); this module turns its arguments into
what the driver needs: a `Spec` whose target and constraints are checked exactly as in a
file (same messages, same carets, pointing into the text given), a `Dataset` from arrays or
data loaders, and the facts the user's network provides to the passes' `requires`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from adl.ir import pipeline as ir_pipeline
from adl.ir.spec import DataSpec, Spec

PYTHON_SOURCE = "python"  # the manifest's data source for data handed over from Python


def spec_for(name: str, classes: int, target: str, constraints: str, train_fraction: float) -> Spec:
    """A checked spec for `Pipeline.run`: `target` and `constraints` are the bodies of the
    blocks of those names, e.g. ``"kind = llvm  cores = 2"`` and ``"latency <= 1 ms"``."""
    from adl.driver.check import load_spec

    text = (
        f"spec {name}\ntask classify {{ classes = {classes} }}\ndata digits\nmodel mlp()\n"
        f"target host {{ {target} }}\n"
        + (f"constraints {{ {constraints} }}\n" if constraints.strip() else "")
        + "pipeline { lower }\n"
    )
    spec = load_spec(text, "<Pipeline.run>")
    data = DataSpec(source=PYTHON_SOURCE, path=None, split=train_fraction, seed=0)
    return dataclasses.replace(spec, data=data, model=None, pipeline=())


def _arrays(batches: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for batch in batches:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"a data loader must yield (inputs, labels) pairs, got {type(batch).__name__}")
        x, y = batch
        xs.append(np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32))
        ys.append(np.asarray(y.numpy() if hasattr(y, "numpy") else y).reshape(-1))
    if not xs:
        raise ValueError("a data loader yielded no batches")
    return np.concatenate(xs), np.concatenate(ys)


def as_dataset(data: Any, classes: int | None) -> Any:
    """An `adl.data.Dataset` from a Dataset, ``(x_train, y_train, x_test, y_test)`` arrays, or
    ``(train_loader, test_loader)`` iterables of ``(inputs, labels)`` batches (e.g. torch
    DataLoaders; read once, into memory). `classes` defaults to the largest label + 1."""
    from adl.data import Dataset
    from adl.data.dataset import check_labels, make_dataset

    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 4:
        x_train, y_train, x_test, y_test = (np.asarray(a) for a in data)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        (x_train, y_train), (x_test, y_test) = _arrays(data[0]), _arrays(data[1])
    else:
        raise TypeError(
            "data must be an adl Dataset, (x_train, y_train, x_test, y_test) arrays, or (train_loader, test_loader)"
        )
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if classes is None:
        classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    check_labels(y_train, classes, "training labels")
    check_labels(y_test, classes, "test labels")
    x_train = np.asarray(x_train, dtype=np.float32)
    value_range = (float(x_train.min(initial=0.0)), float(x_train.max(initial=0.0)))
    return make_dataset(PYTHON_SOURCE, x_train, y_train, x_test, y_test, classes, value_range, "the data given")


def check_requires(passes: Sequence[Any], facts: set[str]) -> None:
    """Raise ValueError if a pass needs a fact (e.g. ``trained``) that neither the user's
    network nor an earlier pass provides."""
    facts = set(facts)
    for p in passes:
        missing = [fact for fact in p.requires if fact not in facts]
        if missing:
            hint = " (pass trained=True if the network given is already trained)" if missing == ["trained"] else ""
            raise ValueError(
                f"pass '{p.name}' needs {', '.join(missing)}, which neither the network given nor an "
                f"earlier pass provides{hint}"
            )
        for option, (needed, why) in p.option_requires(p.explicit).items():
            lacking = [fact for fact in needed if fact not in facts]
            if lacking:
                raise ValueError(f"'{option}' of pass '{p.name}' needs {', '.join(lacking)}: {why}")
        facts.update(p.ensures)


class Pipeline(ir_pipeline.Pipeline):
    """A pass pipeline that can also run on a user's own network and data (`adl.Pipeline`)."""

    def run(
        self,
        model: Any,
        data: Any,
        *,
        classes: int | None = None,
        trained: bool = False,
        target: str = "kind = llvm  cores = 2",
        constraints: str = "",
        name: str = "pipeline",
        out_dir: str | os.PathLike[str] | None = None,
        seed: int = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: Any = None,
        log: Callable[[str], None] = lambda message: None,
    ) -> Any:
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
        from adl.driver.run import compile_spec

        dataset = as_dataset(data, classes)
        check_requires(self.passes, {"model", "trained"} if trained else {"model"})
        total = len(dataset.y_train) + len(dataset.y_test)
        spec = spec_for(name, dataset.classes, target, constraints, len(dataset.y_train) / total)
        return compile_spec(
            spec,
            out_dir=Path(out_dir) if out_dir else None,
            pipeline=self,
            seed=seed,
            cache_dir=Path(cache_dir) if cache_dir else None,
            progress=progress,
            log=log,
            dataset=dataset,
            model=model,
            trained=trained,
        )
