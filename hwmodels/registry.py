"""Cost models by name: the built-ins merged with the ``adl.hwmodels`` entry-point group.

As xarray's backend plugins: a plug-in that fails to load (or is not a `CostModel`
subclass) warns and is skipped, it does not break the compiler; a model is looked up by its
name or passed as its class. A third party registers one in its ``pyproject.toml``:

    [project.entry-points."adl.hwmodels"]
    my_model = "my_package.module:MyModel"

(see examples/plugin_costmodel/). Loading the registry imports only the cost-model modules,
which must stay light (no torch/TVM at module level): ``adl check`` reads their options.
"""

from __future__ import annotations

import importlib
import warnings
from importlib import metadata
from typing import Any, Iterable, Iterator, Mapping

from adl.compiler.spec import CallValue
from adl.hwmodels.base import CostModel

ENTRY_POINT_GROUP = "adl.hwmodels"

# The built-ins, also declared as entry points in adl's pyproject.toml; listed here too so
# a source checkout whose installed metadata is stale still has them.
BUILTINS: Mapping[str, str] = {
    "roofline": "adl.hwmodels.roofline:RooflineModel",
    "bitserial": "adl.hwmodels.bitserial:BitSerialModel",
    "measured": "adl.hwmodels.measured:MeasuredModel",
}


class UnknownCostModel(KeyError):
    """A name no registered cost model has; the message lists the registered ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def _load(value: str) -> Any:
    module, _, attr = value.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


class CostModelRegistry:
    """Cost-model classes by name."""

    def __init__(self, models: Mapping[str, type[CostModel]] | None = None) -> None:
        self._models: dict[str, type[CostModel]] = {}
        for name, cls in (models or {}).items():
            self.register(cls, name)

    @classmethod
    def from_entry_points(cls, entry_points: Iterable[metadata.EntryPoint] | None = None,
                          builtins: bool = True) -> "CostModelRegistry":
        """The built-ins plus every loadable entry point of the ``adl.hwmodels`` group.

        A plug-in may not replace a built-in of the same name (it warns and is skipped).
        """
        registry = cls()
        if builtins:
            for value in BUILTINS.values():
                registry.register(_load(value))
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in entry_points:
            try:
                model_cls = ep.load()
            except Exception as err:  # a broken plug-in must not break the compiler
                warnings.warn(f"adl: skipping cost-model plug-in '{ep.name}' ({ep.value}): "
                              f"{type(err).__name__}: {err}", stacklevel=2)
                continue
            if not (isinstance(model_cls, type) and issubclass(model_cls, CostModel)):
                warnings.warn(f"adl: skipping cost-model plug-in '{ep.name}': {ep.value} is not a CostModel "
                              "subclass", stacklevel=2)
                continue
            name = getattr(model_cls, "name", None) or ep.name  # as passes: the class's own name counts
            known = registry._models.get(name)
            if known is not None and known is not model_cls:
                warnings.warn(f"adl: skipping cost-model plug-in '{ep.name}' ({ep.value}): the name '{name}' is "
                              f"taken by {known.__module__}.{known.__qualname__}", stacklevel=2)
                continue
            registry.register(model_cls, name)
        return registry

    def register(self, model_cls: type[CostModel], name: str | None = None) -> type[CostModel]:
        """Register a class under `name` (default: its `name` attribute); usable as a decorator."""
        if not (isinstance(model_cls, type) and issubclass(model_cls, CostModel)):
            raise TypeError(f"{model_cls!r} is not a CostModel subclass")
        name = name or getattr(model_cls, "name", None)
        if not name:
            raise TypeError(f"{model_cls.__qualname__} has no `name`")
        self._models[name] = model_cls
        return model_cls

    def get(self, key: str | type[CostModel]) -> type[CostModel] | None:
        """The class registered under a name, or the class itself when given a CostModel subclass."""
        if isinstance(key, type):
            return key if issubclass(key, CostModel) else None
        return self._models.get(key)

    def name_of(self, model_cls: type[CostModel]) -> str | None:
        """The name a class is registered under, or None."""
        return next((name for name, cls in self._models.items() if cls is model_cls), None)

    def create(self, key: str | type[CostModel] | CallValue, **options: Any) -> CostModel:
        """A configured model: by name, by class, or from a spec's ``cost = name(k = v)``."""
        if isinstance(key, CallValue):
            key, options = key.name, {**key.as_dict(), **options}
        model_cls = self.get(key)
        if model_cls is None:
            raise UnknownCostModel(f"unknown cost model {key!r}; registered: {', '.join(self.names()) or 'none'}")
        return model_cls(**options)

    def names(self) -> list[str]:
        return sorted(self._models)

    def __iter__(self) -> Iterator[type[CostModel]]:
        return iter(self._models[name] for name in self.names())

    def items(self) -> list[tuple[str, type[CostModel]]]:
        return [(name, self._models[name]) for name in self.names()]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, type):
            return key in self._models.values()
        return key in self._models

    def __len__(self) -> int:
        return len(self._models)


_default: CostModelRegistry | None = None


def default_registry() -> CostModelRegistry:
    """The process-wide registry (loaded once, on first use)."""
    global _default
    if _default is None:
        _default = CostModelRegistry.from_entry_points()
    return _default


def get_cost_model(key: str | type[CostModel] | CallValue, **options: Any) -> CostModel:
    """A configured model from the default registry, e.g. ``get_cost_model("bitserial", preset="cloud")``."""
    return default_registry().create(key, **options)
