"""bench/distill.py: its pipelines are the ones it says, the summary pairs seeds, and the goals
can miss. Hand-written result rows: no training, no search."""

from __future__ import annotations

import distill  # bench/distill.py (tests/bench/conftest.py puts bench/ on the path)
import pytest

import adl


def row(seed: int, trained: float, accuracies: dict[str, float], same: bool = True) -> dict:
    return {
        "seed": seed,
        "trained_test_accuracy": trained,
        "pipelines": {name: {"test_accuracy": acc} for name, acc in accuracies.items()},
        "amc_same_policy": same,
        "haq_same_policy": True,
    }


def test_the_pipelines_parse_and_differ_only_in_distillation():
    strings = distill.pipelines(epochs=6, finetune=2, amc_episodes=120, haq_episodes=60)
    for method in ("amc", "haq"):
        plain, kd = adl.Pipeline.parse(strings[f"{method}_plain"]), adl.Pipeline.parse(strings[f"{method}_distill"])
        assert [p.name for p in plain.passes] == ["train", method] == [p.name for p in kd.passes]
        assert plain.passes[0] == kd.passes[0]
        plain_options, kd_options = dict(plain.passes[1].explicit), dict(kd.passes[1].explicit)
        assert kd_options.pop("distill").as_dict() == {"temperature": 4.0, "weight": 0.7}
        assert plain_options == kd_options


def test_recovering_half_the_drop_is_met_and_less_is_missed():
    accuracies = {"amc_plain": 0.88, "amc_distill": 0.895, "haq_plain": 0.85, "haq_distill": 0.86}
    summary = distill.summary([row(0, 0.90, accuracies), row(1, 0.90, accuracies)])
    assert summary["amc"]["drop_plain"] == pytest.approx(0.02)
    assert summary["amc"]["recovered"] == pytest.approx(0.75)
    assert summary["haq"]["recovered"] == pytest.approx(0.2)
    assert summary["amc"]["distill_gain_points"]["per_seed"] == pytest.approx([1.5, 1.5])
    goals = distill.goals(summary)
    assert goals["amc_distillation_recovers_half_the_drop"]["met"]
    assert not goals["haq_distillation_recovers_half_the_drop"]["met"]


def test_no_drop_means_nothing_to_recover_and_the_goal_is_missed():
    accuracies = {"amc_plain": 0.9, "amc_distill": 0.91, "haq_plain": 0.9, "haq_distill": 0.9}
    goals = distill.goals(distill.summary([row(0, 0.9, accuracies)]))
    goal = goals["amc_distillation_recovers_half_the_drop"]
    assert goal["value"] is None and not goal["met"] and "nothing to recover" in goal["note"]


def test_a_policy_that_differs_between_the_pair_is_reported():
    accuracies = {"amc_plain": 0.88, "amc_distill": 0.89, "haq_plain": 0.85, "haq_distill": 0.86}
    assert not distill.summary([row(0, 0.9, accuracies, same=False)])["amc"]["same_policy"]
