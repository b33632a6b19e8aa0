"""The cost-model registry (built-ins + entry points; broken plug-ins skipped) and the
`target { cost = ... }` checks of the spec."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import adl
from adl.driver.check import load_spec
from adl.dsl.errors import AdlError
from adl.hwmodels import (
    ENTRY_POINT_GROUP,
    CostModel,
    CostModelRegistry,
    UnknownCostModel,
    default_registry,
    get_cost_model,
)
from adl.hwmodels.bitserial import BitSerialModel
from adl.hwmodels.roofline import RooflineModel
from adl.ir.layers import LayerDesc
from adl.ir.spec import CallValue, TargetSpec

ROOT = Path(__file__).resolve().parents[2]


def ep(name: str, value: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


class NotAModel:
    pass


class FakeRoofline(CostModel):
    name = "roofline"

    def estimate_layer(self, layer, target):
        return self.layer_cost(layer, 0.0, None)


class LoadedEntryPoint:
    """An entry point whose `load` returns a given object (a class defined in this test module)."""

    def __init__(self, name: str, obj: object) -> None:
        self.name, self.value, self.obj = name, f"tests:{getattr(obj, '__name__', obj)}", obj

    def load(self) -> object:
        return self.obj


class CrossOnly(CostModel):
    """Prices only cross-compiled targets: exercises `supports`."""

    name = "cross_only"

    def supports(self, target: TargetSpec) -> bool:
        return target.triple is not None

    def estimate_layer(self, layer, target):
        return self.layer_cost(layer, 1e-6, None)


def test_builtins_are_registered_and_installed_as_entry_points():
    registry = default_registry()
    assert {"roofline", "bitserial"} <= set(registry.names())
    installed = {e.name: e.value for e in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert installed["roofline"] == "adl.hwmodels.roofline:RooflineModel"
    assert installed["bitserial"] == "adl.hwmodels.bitserial:BitSerialModel"


def test_lookup_by_name_and_by_class():
    registry = CostModelRegistry.from_entry_points([])
    assert registry.get("roofline") is RooflineModel
    assert registry.get(BitSerialModel) is BitSerialModel
    assert registry.get(CrossOnly) is CrossOnly  # a class need not be registered to be used
    assert registry.get(NotAModel) is None and registry.get("nope") is None
    assert registry.name_of(BitSerialModel) == "bitserial" and registry.name_of(CrossOnly) is None
    assert RooflineModel in registry and CrossOnly not in registry and "roofline" in registry
    model = registry.create(BitSerialModel, preset="cloud")
    assert model.params.dm == 32
    assert registry.create(CallValue("roofline", (("gflops", 10.0),))).config["gflops"] == 10.0
    assert get_cost_model("bitserial", preset="edge") == BitSerialModel()


def test_unknown_name_lists_the_registered_models():
    with pytest.raises(UnknownCostModel, match=r"unknown cost model 'nope'; registered: bitserial, measured, roofline"):
        CostModelRegistry.from_entry_points([]).create("nope")


def test_bad_options_are_type_errors():
    with pytest.raises(TypeError, match=r"has no option\(s\) \['peak'\]"):
        RooflineModel(peak=3.0)


def test_broken_plugins_warn_and_are_skipped():
    entry_points = [
        ep("broken", "adl_no_such_module:Model"),
        ep("notamodel", "adl.ir.spec:Spec"),
        LoadedEntryPoint("roofline", FakeRoofline),
        ep("bitserial", "adl.hwmodels.bitserial:BitSerialModel"),
        LoadedEntryPoint("extra", CrossOnly),
    ]
    with pytest.warns(UserWarning) as caught:
        registry = CostModelRegistry.from_entry_points(entry_points)
    messages = [str(w.message) for w in caught]
    assert any(
        "skipping cost-model plug-in 'broken' (adl_no_such_module:Model): ModuleNotFoundError" in m for m in messages
    )
    assert any(
        "skipping cost-model plug-in 'notamodel': adl.ir.spec:Spec is not a CostModel subclass" in m for m in messages
    )
    # a plug-in registering another class under a built-in's name does not replace it
    assert registry.get("roofline") is RooflineModel
    assert registry.names() == ["bitserial", "cross_only", "measured", "roofline"]
    assert len(messages) == 3  # broken, notamodel, roofline; the bitserial entry point is the built-in itself
    assert any(
        "skipping cost-model plug-in 'roofline'" in m and "taken by adl.hwmodels.roofline.RooflineModel" in m
        for m in messages
    )


def test_a_broken_installed_plugin_does_not_break_check():
    installed = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    with pytest.warns(UserWarning, match="skipping cost-model plug-in 'broken'"):
        registry = CostModelRegistry.from_entry_points(installed + [ep("broken", "adl_no_such_module:Model")])
    spec = load_spec(SPEC.format(target="target t { cost = bitserial }"), cost_models=registry)
    assert spec.target.cost.name == "bitserial"


SPEC = """task classify {{ classes = 10 }}
data digits
model mlp()
{target}
pipeline {{ train }}
"""


def check_error(target: str, registry: CostModelRegistry | None = None) -> str:
    with pytest.raises(AdlError) as info:
        load_spec(SPEC.format(target=target), "s.adl", cost_models=registry)
    return info.value.render()


def test_spec_cost_defaults_to_roofline_with_its_defaults():
    for target in ("", "target host { cores = 2 }", "target host { cost = roofline }"):
        spec = load_spec(SPEC.format(target=target))
        # unset options stay None: roofline fills them from a calibration or its built-in defaults
        assert spec.target.cost == CallValue("roofline", (("gflops", None), ("bandwidth", None), ("overhead", None)))


def test_spec_cost_with_options():
    spec = load_spec(
        SPEC.format(target="target host { cost = roofline(gflops = 150, bandwidth = 25, overhead = 4 us) }")
    )
    model = default_registry().create(spec.target.cost)
    assert model.config == {"gflops": 150.0, "bandwidth": 25.0, "overhead": pytest.approx(4e-6)}
    spec = load_spec(SPEC.format(target="target acc { cost = bitserial(preset = cloud, mhz = 300) }"))
    assert default_registry().create(spec.target.cost).params.mhz == 300.0


def test_unknown_cost_model_is_an_error_listing_the_registered_ones():
    assert check_error("target t { cost = magic }") == (
        "s.adl:4:19: error: unknown cost model 'magic'\n"
        "   4 | target t { cost = magic }\n"
        "     |                   ^~~~~\n"
        "  note: expected one of: bitserial, measured, roofline"
    )


def test_bad_cost_model_option_is_an_error_at_the_value():
    assert check_error("target t { cost = bitserial(preset = huge) }") == (
        "s.adl:4:38: error: unknown preset 'huge'\n"
        "   4 | target t { cost = bitserial(preset = huge) }\n"
        "     |                                      ^~~~\n"
        "  note: expected one of: edge, cloud"
    )
    assert check_error("target t { cost = roofline(peak = 3) }") == (
        "s.adl:4:28: error: unknown setting 'peak' for roofline(...)\n"
        "   4 | target t { cost = roofline(peak = 3) }\n"
        "     |                            ^~~~\n"
        "  note: known settings: gflops, bandwidth, overhead"
    )


def test_a_cost_model_that_does_not_support_the_target_is_an_error():
    registry = CostModelRegistry.from_entry_points([])
    registry.register(CrossOnly)
    assert check_error("target t { cost = cross_only }", registry) == (
        "s.adl:4:19: error: cost model 'cross_only' does not support target 't'\n"
        "   4 | target t { cost = cross_only }\n"
        "     |                   ^~~~~~~~~~\n"
        "  note: cost models that do: bitserial, measured, roofline"
    )
    spec = load_spec(
        SPEC.format(target='target t { triple = "aarch64-linux-gnu"  cost = cross_only }'), cost_models=registry
    )
    assert spec.target.cost.name == "cross_only"


def test_context_prices_candidates_with_the_targets_model(tmp_path):
    from adl.ir.passes import PassContext, PassError

    spec = load_spec(SPEC.format(target="target t { cost = bitserial(preset = edge, overhead = 0 us) }"))
    layer = LayerDesc("fc", "linear", (1, 256), (1, 10), weight_bits=8, act_bits=8)
    ctx = PassContext(spec=spec, work_dir=tmp_path, cost_model=default_registry().create(spec.target.cost))
    # compute: 1 * 2 * 1 tiles * 64 bit planes = 128 cycles = 0.64 us; memory: (2560 + 266) B / 1.6 GB/s = 1.77 us
    assert ctx.cost([layer]).latency_s == pytest.approx(2826 / 1.6e9)
    with pytest.raises(PassError, match="no cost model"):
        PassContext(spec=spec, work_dir=tmp_path).cost([layer])


def test_hw_list_shows_models_options_and_targets(capsys):
    from adl.cli import main

    assert main(["hw", "list"]) == 0
    out = capsys.readouterr().out
    for text in (
        "roofline:",
        "bitserial:",
        "measured:",
        "gflops",
        "bandwidth",
        "10 us",
        "edge|cloud",
        "supports: any target",
        "edge 8, cloud 32",
        "rpc = ...",
    ):
        assert text in out, text


def test_check_with_a_cost_model_stays_free_of_heavy_imports(tmp_path):
    spec = tmp_path / "s.adl"
    spec.write_text(SPEC.format(target="target t { cost = bitserial(preset = cloud) }"))
    code = (
        f"import sys; from adl.cli import main; rc = main(['check', {str(spec)!r}]); "
        "heavy = [m for m in ('torch', 'tvm', 'jax', 'sklearn') if m in sys.modules]; "
        "assert rc == 0 and not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_adl_check_api_has_the_cost_model():
    assert adl.check(SPEC.format(target="target t { cost = bitserial }")).target.cost.get("preset") == "edge"
