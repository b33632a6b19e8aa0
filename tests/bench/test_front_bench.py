"""bench/front.py: its specs check, its hand-built networks are torchvision's with the stem it
says, its budgets span the range, and its goals can miss. Hand-written rows: no training, no
compile, no timing."""

from __future__ import annotations

import argparse
import json

import front  # bench/front.py (tests/bench/conftest.py puts bench/ on the path)
import pytest
import torch

from adl.driver.check import load_spec


def settings(**changes: int) -> argparse.Namespace:
    return front.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in changes.items()])


def test_every_budget_gets_the_same_spec_but_its_latency_budget():
    args = settings()
    specs = [load_spec(front.spec_text(i, budget, args), f"front_{i}.adl") for i, budget in enumerate((0.1, 0.35))]
    for spec, budget in zip(specs, (0.1, 0.35), strict=True):
        assert [stage.pass_name for stage in spec.pipeline] == ["nas", "train", "amc", "haq", "lower"]
        latency = spec.budget("latency")
        assert len(latency) == 1 and latency[0].value == pytest.approx(budget * 1e-3)
    assert specs[0].pipeline == specs[1].pipeline
    assert dict(specs[0].pipeline[1].options)["epochs"] == args.epochs  # the hand-built networks' epochs


@pytest.mark.parametrize("arch", ["mobilenet_v2_0.35", "resnet18"])
def test_the_hand_built_networks_take_gray_28x28_with_torchvision_strides(arch):
    model = front.hand_network(arch, mean=(72.9,), std=(90.0,)).eval()
    normalize, net = model
    stem = net.features[0][0] if arch.startswith("mobilenet") else net.conv1
    assert stem.in_channels == 1
    assert stem.stride == (2, 2) and stem.kernel_size == ((3, 3) if arch.startswith("mobilenet") else (7, 7))
    x = torch.full((1, 1, 28, 28), 72.9)
    assert torch.allclose(normalize(x), torch.zeros_like(x))
    with torch.no_grad():
        assert model(x).shape == (1, 10)


def test_mobilenet_widths_are_torchvisions_width_mult():
    small = front.hand_network("mobilenet_v2_0.35", (0.0,), (1.0,))
    full = front.hand_network("mobilenet_v2_1.0", (0.0,), (1.0,))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters()) / 3
    assert full[1].last_channel == 1280


def test_derived_budgets_are_log_spaced_over_the_hand_built_range():
    budgets = front.derived_budgets([0.05, 0.4, 0.11, 0.2])
    assert budgets == [0.05, 0.1, 0.2, 0.4]
    assert front.derived_budgets([0.3, 0.3]) == [0.3]


def test_a_tie_is_one_standard_error_of_the_difference():
    assert front.tie(0.9, 0.9, 10_000) == pytest.approx((2 * 0.09 / 10_000) ** 0.5)
    assert front.tie(1.0, 1.0, 100) == 0.0


def hand(accuracy: float, latency: float, rounds: list[float] | None = None) -> dict:
    return {"accuracy": accuracy, "latency_ms": latency, "rounds_ms": rounds or [latency] * 3}


def point(budget: float, accuracy: float, latency: float) -> dict:
    return {"budget_ms": budget, **hand(accuracy, latency)}


HAND = {
    "mnv2_0.35/ort_int8": hand(0.870, 0.09),
    "mnv2_1.0/ort_fp32": hand(0.890, 0.20),
    "resnet18/ort_fp32": hand(0.905, 0.40),
}


def test_an_adl_front_above_the_hand_built_one_meets_every_goal():
    adl = {"adl/0.1": point(0.1, 0.895, 0.08), "adl/0.4": point(0.4, 0.907, 0.15)}
    rows = front.front_rows(adl, HAND, 10_000)
    assert rows["adl/0.1"]["best_meeting_budget"] == "mnv2_0.35/ort_int8"
    assert rows["adl/0.1"]["margin_points"] == pytest.approx(2.5)
    assert rows["adl/0.4"]["fastest_as_accurate"] == "resnet18/ort_fp32"
    assert rows["adl/0.4"]["speedup_vs_fastest_as_accurate"] == pytest.approx(0.40 / 0.15)
    goals = front.goals(rows, adl)
    assert all(g["met"] for g in goals.values()), goals
    assert front.undominated(adl, HAND, 10_000) == []


def test_a_less_accurate_point_or_a_missed_budget_misses():
    adl = {"adl/0.2": point(0.2, 0.880, 0.25), "adl/0.4": point(0.4, 0.9045, 0.39)}
    rows = front.front_rows(adl, HAND, 10_000)
    assert rows["adl/0.2"]["behind"]  # 1 point below MobileNetV2 1.0, which meets 0.2 ms
    assert not rows["adl/0.4"]["behind"]  # 0.05 points below ResNet-18: a tie
    goals = front.goals(rows, adl)
    assert goals["front_at_every_budget"] == {"value": 1, "target": 0, "met": False}
    assert not goals["budget_met_0.2ms"]["met"] and goals["budget_met_0.4ms"]["met"]
    assert not goals["accuracy_margin_points"]["met"]
    assert not goals["speedup_at_equal_accuracy"]["met"]  # 0.40 / 0.39
    assert goals["front_margin"]["met"] is False
    assert front.undominated(adl, HAND, 10_000) == ["mnv2_0.35/ort_int8", "mnv2_1.0/ort_fp32"]


def test_a_failed_compile_counts_against_the_front():
    adl = {"adl/0.1": {"budget_ms": 0.1, "error": "PassError: ..."}}
    rows = front.front_rows(adl, HAND, 10_000)
    goals = front.goals(rows, adl)
    assert goals["front_at_every_budget"]["value"] == 1
    assert goals["budget_met_0.1ms"] == {"value": None, "target": 0.1, "met": False}


def test_adl_runs_accuracy_line_is_parsed():
    found = front.ACCURACY_LINE.search("accuracy: 88.44 % (8844/10000)\n")
    assert found is not None and found.groups() == ("88.44", "8844", "10000")


def test_the_manifest_says_where_accuracy_and_latency_went(tmp_path):
    manifest = {
        "all_budgets_hold": False,
        "budgets": [{"metric": "latency", "bound_text": "0.1 ms", "measured_text": "0.12 ms", "holds": False}],
        "library": {"library_bytes": 5000, "int8_kernels": {"vnni": 3}},
        "training": {"history": [{"val_accuracy": 0.88}, {"val_accuracy": 0.9}]},
        "metrics": {
            "accuracy": 0.89,
            "latency_s": 1.2e-4,
            "nas": {"genotype": {"blocks": ["mb6_k3"]}, "predicted_latency_s": 2e-4, "latency_budget_s": 1.6e-4},
            "amc": {
                "before": {"latency": 2e-4},
                "after": {"latency": 1e-4},
                "val_accuracy_unpruned": 0.9,
                "val_accuracy_pruned": 0.7,
                "finetune": {"history": [{"val_accuracy": 0.89}], "test_accuracy": 0.885},
            },
            "haq": {"val_accuracy_quantized": 0.87},
        },
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    found = front.described(tmp_path)
    assert found["manifest_verdict"] is False and found["verdicts"][0]["measured_text"] == "0.12 ms"
    assert found["manifest_latency_ms"] == pytest.approx(0.12) and found["library_bytes"] == 5000
    stages = found["stages"]
    assert stages["nas"]["predicted_latency_ms"] == pytest.approx(0.2)
    assert stages["train"]["val_accuracy"] == 0.9
    assert stages["amc"]["predicted_latency_ms"] == {"before": pytest.approx(0.2), "after": pytest.approx(0.1)}
    assert stages["amc"]["val_accuracy_finetuned"] == 0.89 and stages["amc"]["test_accuracy_finetuned"] == 0.885
    assert stages["haq"]["val_accuracy_quantized"] == 0.87 and stages["haq"]["val_accuracy_finetuned"] is None
