"""manifest.json is JSON: a NaN or an infinity becomes null, and `non_finite` says where."""

from __future__ import annotations

import json

import numpy as np

from adl.driver.manifest import without_non_finite


def test_non_finite_numbers_become_null_and_are_listed():
    manifest = {
        "metrics": {"max_abs_diff": float("nan"), "latency_s": 1e-4, "params": 10},
        "cost_model": {"per_layer": [{"latency_s": np.float32("inf")}, {"latency_s": -float("inf")}]},
        "input": {"shape": (1, 8)},
        "all_budgets_hold": False,
    }
    clean = without_non_finite(manifest)
    assert clean["metrics"] == {"max_abs_diff": None, "latency_s": 1e-4, "params": 10}
    assert clean["cost_model"]["per_layer"] == [{"latency_s": None}, {"latency_s": None}]
    assert clean["input"]["shape"] == (1, 8) and clean["all_budgets_hold"] is False
    assert clean["non_finite"] == {
        "metrics.max_abs_diff": "NaN",
        "cost_model.per_layer[0].latency_s": "Infinity",
        "cost_model.per_layer[1].latency_s": "-Infinity",
    }
    json.dumps(clean, allow_nan=False)


def test_a_finite_manifest_is_unchanged():
    manifest = {"metrics": {"accuracy": 0.97}, "layers": [{"macs": 3}]}
    assert without_non_finite(manifest) == manifest
