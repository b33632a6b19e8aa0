"""report.html: self-contained, every plot drawn from the manifest, and it renders in headless Chromium."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from adl.driver.report_html import render_html
from adl.passes.amc import AmcPass
from adl.passes.haq import HaqPass
from adl.passes.nas import NasPass
from adl.passes.nas.report import pareto

pytest.importorskip("matplotlib")

MANIFEST = {
    "spec": {"name": "digits <full>"},
    "pipeline": "nas,train,amc,haq,lower",
    "seed": 0,
    "target": {"name": "host"},
    "all_budgets_hold": False,
    "budgets": [
        {
            "metric": "latency",
            "op": "<=",
            "bound_text": "1 ms",
            "measured_text": "0.1 ms",
            "holds": True,
            "margin": "0.9 ms to spare",
        },
        {
            "metric": "accuracy",
            "op": ">=",
            "bound_text": "99 %",
            "measured_text": "97 %",
            "holds": False,
            "margin": "misses by 2 %",
        },
    ],
    "metrics": {
        "accuracy": 0.97,
        "latency_s": 1e-4,
        "nas": {
            "strategy": "proxyless",
            "space": "mobilenet(blocks=2)",
            "predicted_latency_s": 2e-5,
            "latency_budget_s": 5e-5,
            "budget_met": True,
            "genotype": {"blocks": ["mb3_e3", "skip"]},
            "history": [
                {"epoch": i + 1, "val_accuracy": a, "expected_latency_s": l}
                for i, (a, l) in enumerate([(0.5, 4e-5), (0.8, 3e-5), (0.85, 2.5e-5), (0.84, 2e-5)])
            ],
        },
        "amc": {
            "channels": {"g0": [8, 16], "g1": [24, 32]},
            "ratios": {"g0": 0.5, "g1": 0.75},
            "kept": {"flops": 0.48},
            "budgets": {"flops": 0.5},
            "search": "ddpg",
            "episodes": 20,
            "reward": "acc",
            "budget_met": True,
            "val_accuracy_unpruned": 0.9,
            "val_accuracy_pruned": 0.8,
            "finetune": {
                "test_accuracy": 0.88,
                "epochs": 2,
                "history": [{"epoch": 1, "loss": 0.3}, {"epoch": 2, "loss": 0.2}],
            },
        },
        "haq": {
            "policy": [
                {"layer": "c1", "weight_bits": 4, "act_bits": 8},
                {"layer": "fc", "weight_bits": 6, "act_bits": 5},
            ],
            "lowering": [
                {"name": "c1", "weight_bits": 4, "act_bits": 8, "arithmetic": "int8", "reason": ""},
                {
                    "name": "fc",
                    "weight_bits": 6,
                    "act_bits": 5,
                    "arithmetic": "float32",
                    "reason": "k-means weights are codebook indices, not linear codes",
                },
            ],
            "search": "ddpg",
            "episodes": 20,
            "bits": [2, 8],
            "resource": "latency",
            "budget": 1e-4,
            "budget_source": "spec",
            "cost": {"chosen": 6e-5, "highest_bits": 1e-4},
            "budget_met": True,
            "val_accuracy_full_precision": 0.9,
            "val_accuracy_quantized": 0.85,
            "integer_layers": 1,
            "weight_bytes": {"packed": 100, "float32": 400},
            "test_agreement_deployed_vs_simulated": 0.99,
            "finetune": {"history": [{"epoch": 1, "loss": 0.25}]},
        },
    },
    "training": {"history": [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]},
    "cost_model": {
        "model": "measured",
        "predicted_latency_s": 8e-5,
        "measured_latency_s": 1e-4,
        "per_layer": [
            {"name": "c1", "latency_s": 5e-5, "measured_s": 6e-5},
            {"name": "fc", "latency_s": 3e-5, "measured_s": 1.5e-5},
        ],
        "kernels": {
            "attributed": True,
            "why_not": "",
            "kernels_s": 8e-5,
            "count": 3,
            "other": [{"name": "transpose_in", "args": [], "median_s": 5e-6}],
        },
    },
    "layers": [
        {
            "name": "c1",
            "op": "conv2d",
            "input_shape": [1, 1, 8, 8],
            "output_shape": [1, 8, 8, 8],
            "kernel": [3, 3],
            "params": 80,
            "macs": 4608,
            "weight_bits": 4,
            "act_bits": 8,
        }
    ],
    "passes": [
        {"name": name, "pass": name, "seconds": 1.0, "reused": False}
        for name in ("nas", "train", "amc", "haq", "lower")
    ],
}


def sections(manifest):
    """What the driver hands render_html: each pass's own report sections."""
    return [s for p in (NasPass(), AmcPass(), HaqPass()) for s in p.report(manifest["metrics"])]


def test_the_page_is_self_contained_and_draws_every_plot_it_has_data_for():
    page = render_html(MANIFEST, sections(MANIFEST))
    assert page.count('<img alt="') == 5
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page)  # nothing fetched from a network
    assert "digits &lt;full&gt;: BUDGETS MISSED" in page  # names are escaped
    assert '<tr class="misses"><td>accuracy</td>' in page and "misses by 2 %" in page
    assert "<td>mb3_e3</td>" in page and "codebook indices" in page and "<td>4/8</td>" in page
    assert "1.25x the prediction" in page


def test_per_layer_latency_shows_the_measured_kernel_beside_the_prediction():
    page = render_html(MANIFEST, sections(MANIFEST))
    assert "beside the measured kernel of the library" in page
    assert "<td>c1</td><td>50</td><td>60</td><td>1.20</td>" in page
    assert "<td>fc</td><td>30</td><td>15</td><td>0.50</td>" in page
    assert "<td>transpose_in</td><td>5</td>" in page and "Its 3 kernels" in page
    predicted_only = copy.deepcopy(MANIFEST)
    predicted_only["cost_model"]["per_layer"] = [{"name": "c1", "latency_s": 5e-5}]
    del predicted_only["cost_model"]["kernels"]
    page = render_html(predicted_only, sections(predicted_only))
    assert "the measured figure is the whole library" in page and "measured / predicted" not in page


def test_sections_without_data_are_left_out():
    bare = copy.deepcopy(MANIFEST)
    for name in ("nas", "amc", "haq"):
        del bare["metrics"][name]
    bare["cost_model"] = None
    page = render_html(bare, sections(bare))
    assert page.count("<img") == 1 and "(nas)" not in page and "(haq)" not in page


def test_the_pareto_front_keeps_only_points_nothing_beats():
    points = [(40, 0.5), (30, 0.8), (25, 0.85), (20, 0.84), (35, 0.9), (20, 0.7)]
    assert pareto(points) == [(20, 0.84), (25, 0.85), (35, 0.9)]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render_in_chromium(path: Path) -> dict[str, str]:
    """The <body> attributes of `path` after headless Chromium loaded it (the page's own load check)."""
    proc = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            path.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:500]
    return dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_headless_chromium_loads_the_page_without_errors_and_decodes_every_plot(tmp_path):
    path = tmp_path / "report.html"
    path.write_text(render_html(MANIFEST, sections(MANIFEST)))
    attributes = render_in_chromium(path)
    assert "errors" not in attributes, attributes
    assert attributes.get("loaded") == "5"

    broken = tmp_path / "broken.html"
    broken.write_text(path.read_text().replace("base64,iVBOR", "base64,XXXX", 1))
    assert "did not decode" in render_in_chromium(broken).get("errors", "")
