"""`Module`: the state that flows from pass to pass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from adl.ir.spec import Spec


@dataclass(frozen=True)
class PassRecord:
    """One line of the pass log: what ran, with which options, how long, and whether it was reused."""

    name: str
    pipeline_text: str  # the pass as printed in a pipeline string, options included
    key: str  # checkpoint key (content hash of everything upstream)
    seconds: float
    reused: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Module:
    """Immutable compile state. Passes return a new one with `evolve`.

    `model` is the network once one exists (a `torch.nn.Module`; `torch.fx.GraphModule`
    after graph passes); `metrics` collects what passes measured; `files` names the files
    passes produced (e.g. ``library``: the built shared object); `log` is the pass log.
    `spec` is the spec the module was built for; the dataset is not stored (it is reloaded and
    fingerprinted by the driver), so a checkpoint holds only what passes produced.
    """

    spec: Spec
    model: Any = None
    metrics: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    files: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    log: tuple[PassRecord, ...] = ()
    facts: frozenset[str] = frozenset()  # what passes established: "trained", "library", ...
    # the network before the first compression pass (amc, haq) changed it: distillation's teacher
    reference: Any = None

    def evolve(self, **changes: Any) -> "Module":
        for name in ("metrics", "files"):
            if name in changes:
                changes[name] = MappingProxyType(dict(changes[name]))
        return dataclasses.replace(self, **changes)

    def with_metrics(self, **metrics: Any) -> "Module":
        return self.evolve(metrics={**self.metrics, **metrics})

    def with_files(self, **files: str) -> "Module":
        return self.evolve(files={**self.files, **files})

    def provides(self) -> frozenset[str]:
        """Facts for `Pass.requires`/`ensures`: those recorded, plus ``model`` once one exists."""
        return self.facts | ({"model"} if self.model is not None else set())

    def establish(self, *facts: str) -> "Module":
        return dataclasses.replace(self, facts=self.facts | set(facts))

    def __getstate__(self) -> dict[str, Any]:  # MappingProxyType does not pickle
        state = dict(self.__dict__)
        state["metrics"] = dict(self.metrics)
        state["files"] = dict(self.files)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["metrics"] = MappingProxyType(state["metrics"])
        state["files"] = MappingProxyType(state["files"])
        for key, value in state.items():
            object.__setattr__(self, key, value)
