"""Cost models by name: the built-ins merged with the ``adl.hwmodels`` entry-point group.

The same registry mechanism as passes (`adl.ir.registry`): a plug-in that fails to load (or is
not a `CostModel` subclass) warns and is skipped, a plug-in may not take a built-in's name; a
model is looked up by its name or passed as its class. A third party registers one in its ``pyproject.toml``:

    [project.entry-points."adl.hwmodels"]
    my_model = "my_package.module:MyModel"

(see examples/plugin_costmodel/). Loading the registry imports only the cost-model modules,
which must stay light (no torch/TVM at module level): ``adl check`` reads their options.
"""

from __future__ import annotations

from typing import Any, Mapping

from adl.hwmodels.base import CostModel
from adl.ir.registry import Registry
from adl.ir.spec import CallValue

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


class CostModelRegistry(Registry[type[CostModel]]):
    """Cost-model classes by name (see `adl.ir.registry` for the loading and shadowing rules)."""

    kind = "cost-model"
    group = ENTRY_POINT_GROUP
    builtins = BUILTINS

    base = CostModel

    def get(self, key: str | type[CostModel]) -> type[CostModel] | None:
        """The class registered under a name, or the class itself when given a CostModel subclass."""
        if isinstance(key, type):
            return key if issubclass(key, CostModel) else None
        return super().get(key)

    def create(self, key: str | type[CostModel] | CallValue, **options: Any) -> CostModel:
        """A configured model: by name, by class, or from a spec's ``cost = name(k = v)``."""
        if isinstance(key, CallValue):
            key, options = key.name, {**key.as_dict(), **options}
        model_cls = self.get(key)
        if model_cls is None:
            raise UnknownCostModel(f"unknown cost model {key!r}; registered: {', '.join(self.names()) or 'none'}")
        return model_cls(**options)


def default_registry() -> CostModelRegistry:
    """The process-wide registry (loaded once, on first use)."""
    return CostModelRegistry.default()


def get_cost_model(key: str | type[CostModel] | CallValue, **options: Any) -> CostModel:
    """A configured model from the default registry, e.g. ``get_cost_model("bitserial", preset="cloud")``."""
    return default_registry().create(key, **options)
