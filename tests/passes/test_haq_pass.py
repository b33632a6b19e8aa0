"""The `haq` pass: search, budget, fine-tuning, deployment form, refusals, resume, and `adl compile`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adl.hwmodels.base import CostModel, LayerCost
from adl.hwmodels.bitserial import BitSerialModel
from adl.ir.module import Module
from adl.ir.passes import PassContext, PassError
from adl.models.integer import IntegerConv2d, IntegerLinear
from adl.passes.haq import HaqPass
from adl.passes.haq.packing import unpack_codes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = """
spec tiny_haq
task classify { classes = 10 }
data digits { split = 0.8  seed = 0 }
model cnn()
target host { kind = llvm  cores = 1  cost = bitserial(preset = edge) }
BUDGETS
pipeline { train haq }
"""


def pass_context(tmp_path, cost_model=None, budgets: str = "") -> PassContext:
    from adl.data import load_dataset
    from adl.driver.check import load_spec

    spec = load_spec(SPEC.replace("BUDGETS", budgets))
    return PassContext(
        spec=spec,
        work_dir=tmp_path,
        load_dataset=lambda: load_dataset("digits"),
        cost_model=cost_model or BitSerialModel(preset="edge"),
        current_key="0" * 64,
    )


@pytest.fixture
def trained(trained_digits_cnn):
    return trained_digits_cnn[0]


def module_of(ctx: PassContext, model) -> Module:
    return Module(spec=ctx.spec, model=model, facts=frozenset({"trained"}))


def test_the_pass_quantizes_within_budget_fine_tunes_and_deploys_integer_layers(tmp_path, trained):
    ctx = pass_context(tmp_path)
    haq = HaqPass(fraction=0.9, episodes=8, warmup=4, finetune=1, val_samples=100)
    out = haq.run(module_of(ctx, trained), ctx)
    metrics = out.metrics["haq"]
    assert metrics["budget_met"] and metrics["cost"]["chosen"] <= 0.9 * metrics["cost"]["highest_bits"] + 1e-15
    assert metrics["budget_source"].startswith("fraction = 0.9")
    assert len(metrics["history"]) == 8 and {"quantized", "trained"} <= out.facts
    widths = [w for p in metrics["policy"] for w in (p["weight_bits"], p["act_bits"])]
    assert all(2 <= w <= 8 for w in widths) and min(widths) < 8  # the budget forced some layer below 8 bits
    assert metrics["integer_layers"] == 4 == len(metrics["lowering"])
    layers = [m for m in out.model.modules() if isinstance(m, (IntegerConv2d, IntegerLinear))]
    assert [(m.weight_bits, m.act_bits) for m in layers] == [
        (p["weight_bits"], p["act_bits"]) for p in metrics["policy"]
    ]
    assert metrics["test_agreement_deployed_vs_simulated"] >= 0.99
    assert 0.5 < out.metrics["torch_accuracy"] <= 1.0
    assert metrics["weight_bytes"]["packed"] < metrics["weight_bytes"]["int8"] < metrics["weight_bytes"]["float32"]
    packed = np.load(out.files["packed_weights"])
    first = next(m for m in out.model.modules() if isinstance(m, IntegerConv2d))
    name = metrics["lowering"][0]["name"]
    bits = int(packed[f"{name}.bits"][0])
    assert np.array_equal(
        unpack_codes(packed[f"{name}.codes"], bits, first.weight_codes.numel()), first.weight_codes.numpy().reshape(-1)
    )
    json.dumps(metrics)  # goes into the manifest as it is
    lines = "\n".join(line for section in haq.report(out.metrics) for line in section.markdown())
    assert "4 of 4 layers in integer arithmetic" in lines and "| int8 |" in lines

    saved = json.loads((ctx.state_dir() / "haq_policy.json").read_text())
    saved["history"] = "reused"  # a rerun with the same checkpoint key takes the stored policy: no search
    (ctx.state_dir() / "haq_policy.json").write_text(json.dumps(saved))
    again = HaqPass(fraction=0.9, episodes=8, warmup=4, finetune=1, val_samples=100).run(module_of(ctx, trained), ctx)
    assert again.metrics["haq"]["history"] == "reused"
    assert again.metrics["haq"]["policy"] == metrics["policy"]


def test_the_spec_latency_budget_is_the_default_and_an_unreachable_one_is_refused(tmp_path, trained):
    ctx = pass_context(tmp_path, budgets="constraints { latency <= 1 us }")
    with pytest.raises(PassError, match=r"latency budget 1e-06 cannot be met.*spec's budget latency <= 1 us"):
        HaqPass(episodes=2, warmup=1, finetune=0).run(module_of(ctx, trained), ctx)


def test_fixed_search_lowers_the_highest_width_until_it_fits(tmp_path, trained):
    ctx = pass_context(tmp_path)
    out = HaqPass(search="fixed", fraction=0.95, finetune=0, val_samples=100).run(module_of(ctx, trained), ctx)
    metrics = out.metrics["haq"]
    assert metrics["budget_met"] and metrics["episodes"] == 0 and metrics["history"] == []
    assert metrics["cost"]["proposed"] == metrics["cost"]["highest_bits"]


class BitBlind(CostModel):
    """A cost model whose latency does not depend on bit widths."""

    name = "bitblind"

    def estimate_layer(self, layer, target) -> LayerCost:
        return LayerCost(
            layer.name,
            layer.op,
            latency_s=1e-9 * (layer.macs + 1),
            energy_j=None,
            weight_bytes=layer.weight_bytes,
            activation_bytes=0,
        )


def test_a_cost_model_blind_to_bits_is_refused_for_latency_but_size_still_works(tmp_path, trained):
    ctx = pass_context(tmp_path, cost_model=BitBlind())
    with pytest.raises(PassError, match="prices every width in 2..8 the same latency"):
        HaqPass(episodes=2, warmup=1, finetune=0).run(module_of(ctx, trained), ctx)
    out = HaqPass(budget="size", fraction=0.5, episodes=3, warmup=2, finetune=0, val_samples=100).run(
        module_of(ctx, trained), ctx
    )
    assert out.metrics["haq"]["cost"]["chosen"] <= 0.5 * out.metrics["haq"]["cost"]["highest_bits"]


def test_a_quantized_network_is_not_quantized_twice(tmp_path, trained):
    ctx = pass_context(tmp_path)
    module = module_of(ctx, trained).establish("quantized")
    with pytest.raises(PassError, match="already quantized"):
        HaqPass().run(module, ctx)


def test_a_policy_saved_for_another_search_configuration_is_not_reused(tmp_path, trained):
    """The saved policy carries its search's key: a search configured otherwise (fewer scoring images)
    in the same state folder searches again instead of taking it."""
    ctx = pass_context(tmp_path)
    HaqPass(search="fixed", fraction=0.95, finetune=0, val_samples=100).run(module_of(ctx, trained), ctx)
    path = ctx.state_dir() / "haq_policy.json"
    saved = json.loads(path.read_text())
    saved["history"] = "reused"
    path.write_text(json.dumps(saved))
    logs: list[str] = []
    ctx.log = logs.append
    again = HaqPass(search="fixed", fraction=0.95, finetune=0, val_samples=50).run(module_of(ctx, trained), ctx)
    assert again.metrics["haq"]["history"] == [] and not any("reusing" in line for line in logs)


E2E_SPEC = """
spec tiny_haq
task classify { classes = 10 }
data digits { split = 0.8  seed = 0 }
model cnn(channels = [8, 16], hidden = 32)
target host { kind = llvm  cores = 1  cost = bitserial(preset = edge) }
constraints { accuracy >= 80 % }
pipeline {
  train { epochs = 10  optimizer = adam(lr = 0.003) }
  haq { bits = 2..8  fraction = 0.9  episodes = 6  warmup = 3  finetune = 1  val_samples = 100 }
  lower { repeats = 10 }
}
"""


@pytest.mark.slow
def test_adl_compile_with_haq_builds_an_integer_library_with_packed_weights(tmp_path):
    spec = tmp_path / "tiny_haq.adl"
    spec.write_text(E2E_SPEC)
    proc = subprocess.run(
        [sys.executable, "-m", "adl", "compile", "-q", str(spec), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "model.so",
        "report.html",
        "report.md",
        "spec.adl",
        "weights.packed.npz",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    haq = manifest["metrics"]["haq"]
    assert [p["name"] for p in manifest["passes"]] == ["train", "haq", "lower"]
    assert haq["budget_met"] and all(d["arithmetic"] == "int8" for d in haq["lowering"])
    # every integer layer of this CNN hands codes to the next (through ReLU, max pooling, flattening):
    # the library computes the integer model's logits exactly, with no rounding flip let through
    assert haq["integer_handoffs"] and manifest["metrics"]["max_abs_diff"] == 0.0
    assert "rounding_flips" not in manifest["metrics"]
    quantized = [l for l in manifest["layers"] if l["op"] in ("conv2d", "linear")]
    assert [(l["weight_bits"], l["act_bits"]) for l in quantized] == [
        (p["weight_bits"], p["act_bits"]) for p in haq["policy"]
    ]
    assert (out / "weights.packed.npz").stat().st_size < haq["weight_bytes"]["int8"] + 4096
    report = (out / "report.md").read_text()
    assert "## Mixed precision (`haq`)" in report and "integer arithmetic" in report


def test_search_data_scores_on_the_validation_split_and_calibrates_on_training_images():
    from adl.data import load_dataset
    from adl.passes.haq.search import SearchData

    def rows(x):
        return {r.tobytes() for r in np.asarray(x).reshape(len(x), -1)}

    held_out = load_dataset("digits", validation=0.2)
    data = SearchData.split(held_out, 100, 64, seed=0)
    assert len(data.y_val) == 100 and rows(data.x_val) <= rows(held_out.x_val)
    assert len(data.calibration) == 64 and rows(data.calibration.numpy()) <= rows(held_out.x_train)
    plain = load_dataset("digits")  # no validation split: scored on training images, calibrated on others
    data = SearchData.split(plain, 100, 64, seed=0)
    assert rows(data.x_val) <= rows(plain.x_train) and len(data.calibration) == 64
