from __future__ import annotations

import pytest

from adl.dsl.errors import AdlError
from adl.ir.passes import Pass, PassRegistry, default_registry
from adl.ir.pipeline import Pipeline
from adl.ir.spec import CallValue


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("train,lower", "train,lower"),
        ("train{ epochs = 3 }, lower", "train{epochs=3},lower"),
        ("train{batch_size=32,epochs=3}", "train{epochs=3,batch_size=32}"),  # declaration order
        ("train{optimizer=sgd(lr=0.1)}", "train{optimizer=sgd(lr=0.1,momentum=0.9,weight_decay=0.0005,nesterov=true)}"),
        ("train{optimizer=adam}", "train{optimizer=adam(lr=0.003,weight_decay=0.0)}"),
        ("train{label_smoothing=10%}", "train{label_smoothing=0.1}"),
        (
            "train{schedule=constant},lower{repeats=20,tolerance=1e-5}",
            "train{schedule=constant},lower{repeats=20,tolerance=1e-05}",
        ),
    ],
)
def test_pipeline_text_round_trips(text, canonical):
    pipeline = Pipeline.parse(text)
    assert str(pipeline) == canonical
    assert str(Pipeline.parse(str(pipeline))) == canonical  # printing is a fixed point
    assert Pipeline.parse(canonical) == pipeline


def test_parsed_options_are_typed():
    (train,) = Pipeline.parse("train{epochs=3,optimizer=sgd(lr=0.2,nesterov=false)}")
    assert train.config["epochs"] == 3
    assert train.config["batch_size"] == 64  # default filled in
    assert train.config["optimizer"] == CallValue(
        "sgd", (("lr", 0.2), ("momentum", 0.9), ("weight_decay", 0.0005), ("nesterov", False))
    )
    assert train.explicit.keys() == {"epochs", "optimizer"}


@pytest.mark.parametrize(
    "text, message, column",
    [
        ("train,prune", "unknown pass 'prune'", 7),
        ("train{epoch=3}", "unknown setting 'epoch' for pass 'train'", 7),
        ("train{epochs=x}", "'epochs' must be a number", 14),
        ("train{epochs=3", "unexpected end of input", 15),
    ],
)
def test_pipeline_errors_point_at_the_problem(text, message, column):
    with pytest.raises(AdlError) as info:
        Pipeline.parse(text, filename="--pipeline")
    rendered = info.value.render()
    assert rendered.startswith(f"--pipeline:1:{column}: error: {message}")
    assert "^" in rendered.splitlines()[2]


def test_registry_lists_builtins_through_entry_points():
    registry = default_registry()
    assert {"train", "lower"} <= set(registry.names())
    assert issubclass(registry.get("train"), Pass)


def test_a_custom_registry_and_pass():
    class Scale(Pass):
        name = "scale"

        def run(self, module, ctx):
            return module

    registry = PassRegistry({"scale": Scale})
    assert str(Pipeline.parse("scale,scale", registry)) == "scale,scale"
    with pytest.raises(AdlError, match="registered passes: scale"):
        Pipeline.parse("train", registry)


def test_broken_plugin_warns_and_is_skipped(monkeypatch):
    from importlib import metadata

    from adl.ir import passes
    from adl.ir import registry as plugin_registry

    broken = metadata.EntryPoint(name="broken", value="adl_no_such_module:Pass", group=passes.ENTRY_POINT_GROUP)
    real = metadata.entry_points

    def fake_entry_points(**kwargs):
        return list(real(**kwargs)) + [broken]

    monkeypatch.setattr(plugin_registry.metadata, "entry_points", fake_entry_points)
    with pytest.warns(UserWarning, match="skipping pass plug-in 'broken'"):
        registry = PassRegistry.from_entry_points()
    assert "train" in registry and "broken" not in registry
