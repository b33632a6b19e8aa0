"""bench/haq.py's goals: the latency budget the search is made to meet is reported as a budget
(predicted by the bit-serial model), not as a goal; HAQ is judged on accuracy at that cost.

Hand-written result rows: no training, no search.
"""

from __future__ import annotations

import haq  # bench/haq.py (tests/bench/conftest.py puts bench/ on the path)
import pytest


def policy(latency: float, accuracies: list[float], bits: int) -> dict:
    return {
        "weight_bits": [bits] * 3,
        "act_bits": [bits] * 3,
        "latency_s": latency,
        "accuracy_values": accuracies,
        "accuracy_mean": sum(accuracies) / len(accuracies),
    }


def report(haq_latency: float, haq_accuracy: list[float], budget: float, budget_bits: int | None = None) -> dict:
    presets = {}
    for preset, widths in zip(haq.PRESETS, (4, 5)):
        policies = {
            "haq": policy(haq_latency, haq_accuracy, widths),
            "fixed8": policy(1.4, [0.99, 0.98], 8),
            "fixed6": policy(0.8, [0.985, 0.98], 6),
            "fixed4": policy(0.5, [0.97, 0.97], 4),
        }
        presets[preset] = {"budget_s": budget, "policies": policies}
    return {"presets": presets}


def test_the_budget_is_no_goal():
    result = report(0.99, [0.985, 0.98], 1.0)
    goals = haq.goals(result, None)
    assert not any("speedup" in name for name in goals)
    budgets = haq.budgets(result, None)
    assert budgets["edge"]["haq_predicted_speedup_over_fixed8"] == pytest.approx(1.4 / 0.99)
    assert budgets["edge"]["haq_within_budget"] is True
    assert "predicted by the bit-serial model" in budgets["edge"]["definition"]
    name = "edge: HAQ accuracy within 0.5 points of fixed 8-bit, at 1/1.4 of its predicted (bit-serial model) latency"
    assert goals[name]["met"] is True and goals[name]["value"] == pytest.approx(0.25)
    assert goals[name]["paired_differences"] == pytest.approx([0.5, 0.0])
    assert goals["edge and cloud policies differ (widths that differ)"]["met"] is True


def test_accuracy_goal_can_miss():
    goals = haq.goals(report(0.99, [0.97, 0.97], 1.0), None)
    assert all(not g["met"] for name, g in goals.items() if "within 0.5 points" in name)
    over = haq.goals(report(1.2, [0.99, 0.98], 1.0), None)  # HAQ over its budget: not at the stated cost
    assert all(not g["met"] and "exceeds" in g["reason"] for name, g in over.items() if "within 0.5" in name)


def test_equal_latency_comparison_with_budget_bits():
    goals = haq.goals(report(0.5, [0.975, 0.97], 0.5, budget_bits=4), 4)
    name = "cloud: HAQ - fixed 4-bit accuracy at fixed 4-bit's predicted (bit-serial model) latency (points)"
    assert goals[name]["met"] is True and goals[name]["value"] == pytest.approx(0.25)
    goals = haq.goals(report(0.5, [0.965, 0.97], 0.5, budget_bits=4), 4)
    assert goals[name]["met"] is False
    slower = haq.goals(report(0.6, [0.99, 0.99], 0.5, budget_bits=4), 4)  # better, but slower: no comparison
    assert slower[name]["met"] is False and "not at equal cost" in slower[name]["reason"]
