"""One registry mechanism for passes and cost models: built-ins first, broken plug-ins skipped
with a warning, and one shadowing rule (a taken name is refused, naming both distributions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from adl.hwmodels.registry import CostModelRegistry
from adl.hwmodels.roofline import RooflineModel
from adl.ir.passes import Pass, PassRegistry
from adl.passes.amc import AmcPass


@dataclass
class Dist:
    name: str
    version: str

    @property
    def metadata(self) -> dict[str, str]:
        return {"Name": self.name}


@dataclass
class EntryPoint:
    """What `importlib.metadata.entry_points` yields, with the class already loaded."""

    name: str
    loaded: Any
    dist: Dist | None
    value: str = "plugin_module:Plugin"

    def load(self) -> Any:
        return self.loaded


class OtherAmc(Pass):
    name = "amc"


class Scale(Pass):
    name = "scale"


class OtherRoofline(RooflineModel):
    name = "roofline"


ADL = Dist("adl", "0.1.0")


def test_a_plugin_pass_may_not_take_a_builtin_name_and_the_warning_names_both_distributions():
    entry_points = [
        EntryPoint("amc", OtherAmc, Dist("acme-prune", "2.0")),
        EntryPoint("amc", AmcPass, ADL),
        EntryPoint("scale", Scale, Dist("acme-prune", "2.0")),
    ]
    with pytest.warns(UserWarning) as caught:
        registry = PassRegistry.from_entry_points(entry_points)
    assert registry.get("amc") is AmcPass and registry.get("scale") is Scale
    (message,) = [str(w.message) for w in caught]
    assert "skipping pass plug-in 'amc'" in message and "from acme-prune 2.0" in message
    assert "taken by adl.passes.amc.AmcPass (from adl 0.1.0)" in message
    assert registry.origin("scale") == "acme-prune 2.0"


def test_between_two_plugins_the_first_distribution_in_name_order_keeps_the_name():
    entry_points = [EntryPoint("scale", OtherAmc, Dist("zeta", "1")), EntryPoint("scale", Scale, Dist("alpha", "1"))]
    OtherAmc.name, Scale.name = "scale", "scale"
    try:
        with pytest.warns(UserWarning, match=r"from zeta 1\): the name 'scale' is taken by .*Scale \(from alpha 1\)"):
            registry = PassRegistry.from_entry_points(entry_points)
    finally:
        OtherAmc.name = "amc"
    assert registry.get("scale") is Scale


def test_cost_models_follow_the_same_rule():
    with pytest.warns(
        UserWarning,
        match=r"skipping cost-model plug-in 'roofline' .*from acme 1\).*taken by "
        r"adl.hwmodels.roofline.RooflineModel \(from adl \(built-in\)\)",
    ):
        registry = CostModelRegistry.from_entry_points([EntryPoint("roofline", OtherRoofline, Dist("acme", "1"))])
    assert registry.get("roofline") is RooflineModel


def test_registering_in_code_replaces_and_checks_the_kind():
    registry = PassRegistry({"amc": AmcPass})
    registry.register(OtherAmc)
    assert registry.get("amc") is OtherAmc and registry.origin("amc") == "registered in code"
    with pytest.raises(TypeError, match="is not a Pass subclass"):
        registry.register(RooflineModel)
