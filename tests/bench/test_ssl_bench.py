"""bench/ssl_pruning.py: its goals can miss, paired differences pair by seed, the baselines'
pipelines carry the FLOPs fraction SSL reached, and speedups are per-round ratios at the
shipped thread counts.

Hand-written per-seed rows and manifests: no training, no search, no lowering.
"""

from __future__ import annotations

import pytest
import ssl_pruning as bench  # bench/ssl_pruning.py (tests/bench/conftest.py puts bench/ on the path)

from adl import Pipeline


def row(accuracy: float, kept: float, speedup: float | None = None, change: float | None = None) -> dict:
    record: dict = {"library_accuracy": accuracy, "kept_flops": kept}
    if speedup is not None:
        record["speedup"] = speedup
    if change is not None:
        record["shrink"] = {"output_change": change}
    return record


def runs(
    ssl: list[float],
    amc: list[float],
    uniform: list[float],
    *,
    kept: tuple[float, float, float] = (0.40, 0.39, 0.395),
    speedup: float = 1.6,
    change: float = 1e-6,
) -> list[dict]:
    """One run per seed: library accuracies per method, the kept FLOPs of ssl, amc and uniform."""
    return [
        {
            "seed": seed,
            "methods": {
                "unpruned": row(0.91, 1.0),
                "ssl": row(s, kept[0], speedup, change),
                "amc": row(a, kept[1], 1.5),
                "uniform": row(u, kept[2], 1.5),
            },
        }
        for seed, (s, a, u) in enumerate(zip(ssl, amc, uniform))
    ]


def test_goals_are_met_by_good_figures():
    goals = bench.goals(runs([0.90, 0.91, 0.90], [0.89, 0.90, 0.90], [0.88, 0.89, 0.90]))
    assert all(goal["met"] for goal in goals.values()), goals
    assert goals["ssl_vs_amc_accuracy"]["value"] == pytest.approx((1 + 1 + 0) / 3)
    assert goals["ssl_speedup"]["value"] == 1.6
    assert goals["equal_flops"]["value"] == pytest.approx(0.01)


def test_every_goal_can_miss():
    goals = bench.goals(
        runs([0.88, 0.89], [0.90, 0.90], [0.89, 0.90], kept=(0.40, 0.30, 0.35), speedup=1.1, change=1e-2)
    )
    assert not any(goal["met"] for goal in goals.values()), goals
    assert goals["equal_flops"]["value"] == pytest.approx(0.10)
    assert goals["ssl_vs_amc_accuracy"]["flops_unequal_seeds"] == [0, 1]  # flagged beside the accuracy


def test_a_goal_without_figures_is_not_met():
    failed = runs([0.90], [0.89], [0.89])
    failed[0]["methods"]["ssl"] = {"error": "PassError: shrink: ..."}
    goals = bench.goals(failed)
    assert not any(goal["met"] for goal in goals.values())
    assert goals["ssl_vs_amc_accuracy"]["value"] is None and "reason" in goals["equal_flops"]


def test_paired_differences_pair_by_seed():
    rows = runs([0.90, 0.92, 0.94], [0.89, 0.90, 0.91], [0.90, 0.90, 0.90])
    rows[1]["methods"]["amc"] = {"error": "AMC failed on this seed"}
    rows.reverse()  # the order of the runs does not matter, the seed does
    paired = bench.paired(rows, "ssl", "amc")
    assert paired["seeds"] == [0, 2]
    assert paired["differences"] == pytest.approx([1.0, 3.0])  # points: seed 0's and seed 2's own
    assert paired["mean"] == pytest.approx(2.0)
    summary = bench.summary(rows)
    assert summary["ssl_minus_amc"]["differences"] == pytest.approx([1.0, 3.0])
    assert summary["amc"]["library_accuracy"]["n"] == 2 and summary["ssl"]["library_accuracy"]["n"] == 3


@pytest.mark.parametrize("method", ["amc", "uniform"])
def test_the_baselines_prune_to_the_flops_ssl_reached(method):
    recipe = bench.Recipe()
    reached = 0.4123456789  # what shrink kept: carried in full, not rounded up past it
    text = bench.pipeline_text(method, recipe, reached)
    assert f"flops={reached!r}" in text
    stages = Pipeline.parse(text).passes
    assert [p.name for p in stages] == ["train", "amc", "lower"]
    assert stages[1].config["flops"] == reached
    assert stages[1].config["search"] == ("ddpg" if method == "amc" else "uniform")
    assert (stages[1].config["episodes"], stages[1].config["warmup"], stages[1].config["finetune"]) == (120, 40, 2)
    with pytest.raises(ValueError):
        bench.pipeline_text(method, recipe)


def test_one_training_recipe_for_every_pipeline():
    recipe = bench.Recipe(epochs=8, lam=0.05)
    texts = {m: bench.pipeline_text(m, recipe, 0.5) for m in ("unpruned", "amc", "uniform")}
    texts |= {m: bench.pipeline_text(m, recipe) for m in ("ssl", "ssl_train")}
    parsed = {m: Pipeline.parse(t).passes for m, t in texts.items()}
    plain = {str(parsed[m][0]) for m in ("unpruned", "amc", "uniform")}
    assert len(plain) == 1  # the same stage text: one cached `train` for the three
    train = parsed["unpruned"][0].config
    assert (train["epochs"], train["batch_size"], train["schedule"]) == (8, 64, "cosine")
    assert train["optimizer"].as_dict() == {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "nesterov": True}
    ssl = parsed["ssl"][0].config
    assert ssl["regularizer"].as_dict() == {"filters": 0.05, "channels": 0.05, "step": "proximal"}
    assert {k: v for k, v in ssl.items() if k != "regularizer"} == {
        k: v for k, v in train.items() if k != "regularizer"
    }
    assert [p.name for p in parsed["ssl"]] == ["train", "shrink", "lower"] and parsed["ssl"][1].config["finetune"] == 2
    assert str(parsed["ssl_train"][0]) == str(parsed["ssl"][0])  # SSL's training alone is the same stage


def test_speedups_are_per_round_ratios_at_the_shipped_thread_counts():
    def lowered(threads: int) -> dict:
        return {"lower": {"runtime_threads": threads}}

    runs_ = [{"seed": 0, "methods": {"unpruned": lowered(2), "ssl": lowered(1)}}]
    timings = {
        (0, "unpruned"): {"rounds_ms": {1: [1.0, 1.0, 1.0], 2: [0.8, 1.6, 0.9]}, "fastest_threads": 2},
        (0, "ssl"): {"rounds_ms": {1: [0.4, 0.8, 0.6], 2: [0.5, 0.5, 0.5]}, "fastest_threads": 1},
    }
    bench.add_speedups(runs_, timings)
    ssl = runs_[0]["methods"]["ssl"]
    assert ssl["speedup"] == pytest.approx(2.0)  # median of 0.8/0.4, 1.6/0.8, 0.9/0.6 (2 threads over 1)
    assert ssl["speedup_at_fastest_threads"] == pytest.approx(2.0)
    assert ssl["latency"]["shipped_threads"] == 1 and ssl["latency"]["shipped_median_ms"] == 0.6
    assert runs_[0]["methods"]["unpruned"]["speedup"] == pytest.approx(1.0)


def test_a_reused_stage_counts_at_the_seconds_it_took_where_it_was_computed():
    records = {
        "unpruned": {
            "passes": [{"key": "t", "seconds": 100.0, "reused": False}, {"key": "l1", "seconds": 20.0, "reused": False}]
        },
        "amc": {
            "passes": [{"key": "t", "seconds": 0.1, "reused": True}, {"key": "a", "seconds": 50.0, "reused": False}]
        },
        "ssl": {"error": "failed"},
    }
    assert bench.standalone_seconds(records) == {"unpruned": 120.0, "amc": 150.0}


def test_the_method_record_reads_shrink_and_amc_from_the_manifest():
    def manifest(extra: dict) -> dict:
        metrics = {"accuracy": 0.9, "torch_accuracy": 0.905, "flops": 4e6, "params": 2e5, "latency_s": 2e-4}
        return {
            "pipeline": "p",
            "library": {"file": "model.so"},
            "metrics": {**metrics, "runtime_threads": 1, **extra},
            "passes": [],
            "training": {"history": [{"epoch": 1, "ssl_zero_filters": 40.0, "ssl_filters": 224.0}]},
        }

    shrink = {
        "kept": {"flops": 0.45, "params": 0.3},
        "channels": {"1.0.0": [16, 32, 20]},
        "zeroed": 20,
        "prunable": 224,
        "multiple": 16,
        "output_change": 1e-7,
        "finetune": {"test_accuracy": 0.905},
    }
    record = bench.method_record(manifest({"shrink": shrink}), 12.0)
    assert (record["kept_flops"], record["library_accuracy"], record["lower"]["latency_ms"]) == (0.45, 0.9, 0.2)
    assert record["channels"]["1.0.0"] == {"kept": 16, "of": 32, "zeroed": 20}
    assert record["ssl_zeros_after_training"] == {"ssl_zero_filters": 40.0, "ssl_filters": 224.0}
    amc = {
        "kept": {"flops": 0.44, "params": 0.5},
        "channels": {"1.0.0": [16, 32]},
        "search": "ddpg",
        "budgets": {"flops": 0.45},
        "budget_met": True,
        "multiple": 16,
        "ratios": {"1.0.0": 0.5},
        "val_accuracy_unpruned": 0.9,
        "val_accuracy_pruned": 0.7,
        "finetune": {"test_accuracy": 0.88},
    }
    record = bench.method_record(manifest({"amc": amc}), 12.0)
    assert record["kept_flops"] == 0.44 and record["amc"]["val_accuracy_pruned_before_finetune"] == 0.7
    without_library = manifest({})
    without_library["library"] = None  # SSL's training alone: "accuracy" would be torch's
    assert bench.method_record(without_library, 1.0)["library_accuracy"] is None
