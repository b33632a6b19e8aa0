"""bench/hpo.py: its goals can miss, the summary pairs seeds, and the configurations it trains
are the ones the space and the hand-picked defaults name.

Hand-written result rows: no training, no search.
"""

from __future__ import annotations

import hpo  # bench/hpo.py (tests/bench/conftest.py puts bench/ on the path)

from adl.ir.domains import domains_in, substitute


def runs(tpe: list[float], random: list[float]) -> dict:
    def study(best: float, seed: int) -> dict:
        return {"seed": seed, "best_val_accuracy": best, "retrained": {"test_accuracy": best - 0.01}}

    return {
        "tpe": [study(b, s) for s, b in enumerate(tpe)],
        "random": [study(b, s) for s, b in enumerate(random)],
        "hand_picked": [{"seed": s, "val_accuracy": 0.85, "test_accuracy": 0.84} for s in range(len(tpe))],
    }


def report(tpe: list[float], random: list[float], speedup: float) -> dict:
    return {"summary": hpo.summary(runs(tpe, random)), "throughput": {"speedup_2_workers": speedup}}


def test_goals_are_met_and_missed_by_the_figures():
    met = hpo.goals(report([0.90, 0.91, 0.92], [0.90, 0.90, 0.91], 1.8))
    assert met["tpe_at_least_random"]["met"] and met["two_workers_speedup"]["met"]
    missed = hpo.goals(report([0.89, 0.90, 0.91], [0.90, 0.90, 0.91], 1.5))
    assert not missed["tpe_at_least_random"]["met"] and not missed["two_workers_speedup"]["met"]


def test_the_summary_pairs_the_methods_by_seed():
    summary = hpo.summary(runs([0.90, 0.92], [0.91, 0.90]))
    assert summary["tpe_minus_random"]["per_seed"] == [0.90 - 0.91, 0.92 - 0.90]
    assert summary["hand_picked"]["val_mean"] == 0.85


def test_a_chosen_configuration_is_the_space_with_the_values_in_place():
    chosen = {"epochs": 4, "batch_size": 128, "schedule": "constant", "optimizer.lr": 0.01}
    chosen |= {"optimizer.weight_decay": 1e-4, "label_smoothing": 0.1}
    assert set(domains_in(hpo.base_config(hpo.SPACE))) == set(hpo.SPACE)
    assert hpo.chosen_config(chosen) == substitute(hpo.base_config(hpo.SPACE), chosen)
    defaults = hpo.hand_picked_config()
    assert (defaults["epochs"], defaults["optimizer"].as_dict()["lr"]) == (6, 0.003)
