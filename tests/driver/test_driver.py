"""The driver with small custom passes: error context, requires/ensures, checkpoints, data errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import adl
from adl.driver.run import compile_spec
from adl.dsl.errors import AdlError
from adl.ir.passes import Pass, PassError
from adl.ir.pipeline import Pipeline
from adl.ir.report import Section

SPEC = """spec d
task classify { classes = 10 }
data digits
model mlp(hidden = [8])
constraints { accuracy >= 50 %  latency <= 1 s }
pipeline { train }
"""

RUNS: list[str] = []


class Mark(Pass):
    name = "mark"
    ensures = ("marked",)

    def run(self, module, ctx):
        RUNS.append(self.name)
        return module.with_metrics(accuracy=0.75).establish("marked")


class NeedsMark(Pass):
    name = "needs_mark"
    requires = ("marked",)

    def run(self, module, ctx):
        RUNS.append(self.name)
        return module


class Boom(Pass):
    name = "boom"

    def run(self, module, ctx):
        raise ValueError("kaput")


class Liar(Pass):
    name = "liar"
    ensures = ("library",)

    def run(self, module, ctx):
        return module


def test_custom_passes_run_then_are_reused(tmp_path):
    RUNS.clear()
    spec = adl.check(SPEC)
    result = compile_spec(spec, pipeline=Pipeline([Mark(), NeedsMark()]), out_dir=tmp_path / "out")
    assert RUNS == ["mark", "needs_mark"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [b["holds"] for b in manifest["budgets"]] == [True, False]  # latency: nothing measured it
    assert manifest["budgets"][1]["measured_text"] == "not measured"
    assert not (tmp_path / "out" / "model.so").exists()
    assert not result.ok
    compile_spec(spec, pipeline=Pipeline([Mark(), NeedsMark()]), out_dir=tmp_path / "out")
    assert RUNS == ["mark", "needs_mark"], "the second compile must reuse both checkpoints"


def test_missing_requirement_is_reported_before_running(tmp_path):
    with pytest.raises(PassError, match="while running 'needs_mark': it requires marked"):
        compile_spec(adl.check(SPEC), pipeline=Pipeline([NeedsMark()]), out_dir=tmp_path / "o")


def test_failures_name_the_pass_and_what_ran_before(tmp_path):
    with pytest.raises(
        PassError,
        match=r"^internal error in pass 'boom' \(after \[mark\]\): ValueError: kaput; "
        r"rerun with --debug for the traceback$",
    ):
        compile_spec(adl.check(SPEC), pipeline=Pipeline([Mark(), Boom()]), out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_a_pass_that_breaks_its_contract_is_caught(tmp_path):
    with pytest.raises(PassError, match="did not establish library"):
        compile_spec(adl.check(SPEC), pipeline=Pipeline([Liar()]), out_dir=tmp_path / "o")


def test_data_problems_found_at_compile_time_point_at_the_data_block(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((20, 4), np.float32), y=np.full(20, 12))
    spec_file = tmp_path / "s.adl"
    spec_file.write_text(SPEC.replace("data digits", 'data npz { path = "bad.npz" }'))
    from adl.driver.check import load_spec_file

    with pytest.raises(AdlError) as info:
        compile_spec(load_spec_file(spec_file), pipeline=Pipeline([Mark()]), out_dir=tmp_path / "o")
    rendered = info.value.render()
    assert rendered.startswith(f"{spec_file}:3:1: error: npz file")
    assert "labels outside [0, 10)" in rendered and "^~~~" in rendered


class Measure(Pass):
    """Prices a candidate through the context, then reports a measured latency."""

    name = "measure"
    priced: list[float] = []

    def run(self, module, ctx):
        from adl.ir.layers import LayerDesc

        Measure.priced.append(ctx.cost([LayerDesc("fc", "linear", (1, 64), (1, 8))]).latency_s)
        return module.with_metrics(latency_s=4e-3)


def test_manifest_records_the_cost_model_its_prediction_and_the_measured_ratio(tmp_path):
    text = SPEC.replace(
        "model mlp", "target host { cost = roofline(gflops = 1, bandwidth = 1, overhead = 1 ms) }\nmodel mlp"
    )
    Measure.priced.clear()
    compile_spec(adl.check(text), pipeline=Pipeline([Measure()]), out_dir=tmp_path / "out")
    # 64 -> 8 without bias: 1024 FLOPs = 1.024 us < (512 + 72) * 4 B / 1 GB/s = 2.336 us
    assert Measure.priced == [pytest.approx(2.336e-6 + 1e-3)]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    cost = manifest["cost_model"]
    assert [(l["op"], l["input_shape"], l["output_shape"]) for l in manifest["layers"]] == [
        ("linear", [1, 64], [1, 8]),
        ("linear", [1, 8], [1, 10]),
    ]
    # 64 -> 8 + bias: 520 weights + 72 activations, x4 B = 2368 B = 2.368 us (1024 FLOPs: 1.024 us)
    # 8 -> 10 + bias: 90 weights + 18 activations, x4 B = 432 B = 0.432 us (160 FLOPs)
    predicted = 2.368e-6 + 0.432e-6 + 2e-3
    assert cost["name"] == "roofline" and cost["model"] == "roofline(gflops=1.0,bandwidth=1.0,overhead=0.001s)"
    assert cost["options"] == {"gflops": 1.0, "bandwidth": 1.0, "overhead": 1e-3}
    assert cost["predicted_latency_s"] == pytest.approx(predicted)
    assert cost["predicted_energy_j"] is None
    assert cost["predicted_memory_bytes"] == (520 + 90) * 4 + 72 * 4
    assert cost["measured_latency_s"] == 4e-3
    assert cost["measured_over_predicted"] == pytest.approx(4e-3 / predicted)
    assert [c["bound"] for c in cost["per_layer"]] == ["memory", "memory"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Cost model" in report and "(measured / predicted = 2)" in report


class Reporting(Pass):
    """Records a metric and turns it into its own report section."""

    name = "reporting"

    def run(self, module, ctx):
        return module.with_metrics(reporting={"chosen": 7})

    def report(self, metrics):
        return [Section("`reporting`", [f"chose {metrics['reporting']['chosen']}"])]


def test_each_pass_adds_its_own_report_section_after_the_measurements(tmp_path):
    compile_spec(adl.check(SPEC), pipeline=Pipeline([Reporting(), Measure()]), out_dir=tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## `reporting`\n\nchose 7\n" in report
    assert "## `measure`" not in report  # a pass without a report adds no empty section
    assert report.index("## Measurements") < report.index("## `reporting`") < report.index("## Passes")
