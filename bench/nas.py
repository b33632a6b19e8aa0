"""Architecture search on digits: proxyless, darts, gdas against random search, at equal steps.

    python bench/nas.py [--quick] [--out FILE] [--seeds N]

For every strategy and seed: search the MobileNet-style space (4 blocks, kernels 3/5/7 x
expansion 1/3/6, identity where allowed) for the same number of epochs (= training steps)
with the latency of every candidate priced by the `measured` table of this machine, under a
latency budget; then retrain the found architecture from scratch the same way for all (the
`train` loop, Adam, fixed epochs) and score it on the test split. Reported: test accuracy and
predicted latency per strategy (mean, std over seeds), whether each meets the budget; the
peak resident memory of `proxyless` and `darts` search steps for 3 and 9 candidates per
block (measured in fresh processes, see `memory_probe`); the validation accuracy the derived network
reaches with the supernet's shared weights (per epoch: does the supernet learn?); random
search again at the latency each hardware-aware search found (same seed: the equal-latency comparison); and sweeps of
`proxyless`'s latency weight and of its hard latency budget (accuracy vs latency, plot).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "2")

import jax  # noqa: E402 (after TVM_NUM_THREADS is set above)
import jax.numpy as jnp  # noqa: E402 (after TVM_NUM_THREADS is set above)
import numpy as np  # noqa: E402 (after TVM_NUM_THREADS is set above)
import torch  # noqa: E402 (after TVM_NUM_THREADS is set above)
from provenance import provenance  # noqa: E402 (after TVM_NUM_THREADS is set above)

from adl.data import load_dataset  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.hwmodels.measured import MeasuredModel  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.ir.progress import SilentProgress  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.ir.spec import CallValue, TargetSpec  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.models.space import MobileNetSpace  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.models.zoo import Normalize  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.passes.nas.pricing import price_candidates  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.passes.nas.search import LatencyTable, Search, SearchConfig, default_lr, default_warmup  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.passes.nas.supernet import Supernet  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.passes.train.loop import train_model  # noqa: E402 (after TVM_NUM_THREADS is set above)

# what the figures depend on (`python -m bench.status`): search, pricing by the measured table (timed through
# the TVM lowering), retraining, the space, the data
MEASURES = (
    "bench/nas.py",
    "adl/passes/nas",
    "adl/passes/train/loop.py",
    "adl/hwmodels/measured.py",
    "adl/hwmodels/base.py",
    "adl/hwmodels/calibration.py",
    "adl/models",
    "adl/data",
    "adl/ir/layers.py",
    "adl/backends/tvm",
)
STRATEGIES = ("proxyless", "darts", "gdas", "random")
HARDWARE_AWARE = ("proxyless", "darts", "gdas")
LAMBDAS = {False: (0.0, 0.01, 0.03, 0.1, 0.3, 1.0), True: (0.0, 1.0)}  # --quick: True
BUDGET_FRACTIONS = {False: (0.1, 0.25, 0.5, 0.75, 1.0), True: (0.25, 1.0)}  # of (slowest - fastest), above fastest


def retrain(space: MobileNetSpace, arch, dataset, epochs: int, seed: int) -> float:
    """Train the found architecture from scratch (the train pass's loop) and return test accuracy."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(Normalize(dataset.mean, dataset.std, channel_dims=2), space.build(arch))
    config = {
        "epochs": epochs,
        "batch_size": 64,
        "optimizer": CallValue("adam", (("lr", 0.003), ("weight_decay", 0.0))),
        "schedule": "cosine",
        "label_smoothing": 0.0,
    }
    with tempfile.TemporaryDirectory() as state_dir:
        result = train_model(
            model,
            dataset,
            config,
            seed=seed,
            state_dir=Path(state_dir),
            progress=SilentProgress(),
            threads=2,
            log=lambda message: None,
        )
    return float(result.test_accuracy)


MEMORY_SPACES = {3: {"kernels": (3, 5, 7), "expand": (6,)}, 9: {"kernels": (3, 5, 7), "expand": (1, 3, 6)}}


def memory_probe(strategy: str, candidates: int, batch: int = 64, steps: int = 3) -> dict:
    """Peak resident memory of search steps on 3x16x16 inputs, in this (fresh) process.

    Compilation happens in two warm-up steps; then freed memory is handed back to the OS
    (`malloc_trim`), the kernel's high-water mark is reset (`/proc/self/clear_refs` = 5) and
    `steps` more steps run. Reported: the high-water mark minus the resident size before them
    -- the memory the steps themselves need on top of weights and optimizer state. Both
    strategies run their largest path: darts every candidate (its relaxation), proxyless the
    two-path architecture step (k7 e6 and k5 e6 in every block) and the weight step on k7 e6.
    """
    import ctypes

    space = MobileNetSpace((3, 16, 16), 10, blocks=4, widths=(1.0,), skip=False, **MEMORY_SPACES[candidates])
    net = Supernet(space, 1.0)
    table = LatencyTable([[1e-5] * len(c) for c in net.choices], 1e-5)
    search = Search(net, table, SearchConfig(strategy=strategy, batch_size=batch))
    state = search._fresh()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, 3, 16, 16)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
    heavy = [[i for i, c in enumerate(cs) if (c.kernel, c.expand) == (7, 6)][0] for cs in net.choices]
    second = [[i for i, c in enumerate(cs) if (c.kernel, c.expand) == (5, 6)][0] for cs in net.choices]

    def step() -> None:
        if strategy == "darts":
            search._step(state, jax.random.PRNGKey(0), rng, 1.0, x, y, x, y)
        else:
            search.paths.gradients(state["params"], [[h, s] for h, s in zip(heavy, second)], [0] * len(heavy), x, y)
            path = search.paths.gradients(state["params"], [[h] for h in heavy], [0] * len(heavy), x, y)
            state["params"], state["w_state"] = search.paths.apply(state["params"], state["w_state"], path.params)
        jax.block_until_ready(state["params"])

    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{field} not in /proc/self/status")

    for _ in range(2):
        step()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    for _ in range(steps):
        step()
    peak = status("VmHWM")
    params_bytes = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(state["params"]))
    return {
        "strategy": strategy,
        "candidates": candidates,
        "batch": batch,
        "rss_before_bytes": before,
        "peak_bytes": peak,
        "step_bytes": peak - before,
        "params_bytes": params_bytes,
    }


def measure_memory(strategy: str, candidates: int) -> dict:
    """`memory_probe` in a fresh interpreter; large buffers mmapped so frees reach the OS."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe", strategy, str(candidates)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--memory-probe", nargs=2, metavar=("STRATEGY", "CANDIDATES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe[0], int(args.memory_probe[1]))))
        return 0
    origin = provenance("digits (scikit-learn 8x8; test split 0.2, seed 0; search: 80/20 of training per seed)")
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = 3 if args.quick else 15
    retrain_epochs = 3 if args.quick else 20
    blocks = 2 if args.quick else 4

    # first: the memory probes, each in a fresh process
    memory = {f"{strategy}_{n}": measure_memory(strategy, n) for strategy in ("proxyless", "darts") for n in (3, 9)}
    for key, row in memory.items():
        print(
            f"memory {key}: step {row['step_bytes'] / 2**20:.1f} MiB (params {row['params_bytes'] / 2**20:.2f} MiB)",
            flush=True,
        )
    proxyless_growth = memory["proxyless_9"]["step_bytes"] / memory["proxyless_3"]["step_bytes"]
    darts_growth = memory["darts_9"]["step_bytes"] / memory["darts_3"]["step_bytes"]

    dataset = load_dataset("digits", split=0.8, seed=0, classes=10)
    space = MobileNetSpace((1, 8, 8), 10, blocks=blocks, kernels=(3, 5, 7), expand=(1, 3, 6), widths=(1.0,))
    supernet = Supernet(space, 1.0)
    target = TargetSpec(name="host", cores=2, cost=CallValue("measured"))
    cost_model = MeasuredModel()
    start = time.perf_counter()
    latency = price_candidates(supernet, cost_model, target)
    pricing_s = time.perf_counter() - start
    fastest = latency.of([int(np.argmin(lat)) for lat in latency.per_op])
    slowest = latency.of([int(np.argmax(lat)) for lat in latency.per_op])
    budget = fastest + 0.5 * (slowest - fastest)
    print(
        f"priced {sum(len(c) for c in supernet.choices)} candidates in {pricing_s:.0f} s; "
        f"fastest {fastest * 1e6:.0f} us, slowest {slowest * 1e6:.0f} us, budget {budget * 1e6:.0f} us",
        flush=True,
    )

    mean = np.asarray(dataset.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(dataset.std, np.float32).reshape(-1, 1, 1)
    x = ((dataset.x_train - mean) / std).astype(np.float32)
    y = dataset.y_train.astype(np.int32)

    def search(strategy: str, seed: int, budget_s: float | None, latency_weight: float) -> dict:
        """Search with `strategy`, retrain what it found, and return the run's row."""
        order = np.random.default_rng(seed).permutation(len(x))
        cut = int(0.8 * len(x))
        config = SearchConfig(
            strategy=strategy,
            epochs=epochs,
            budget_s=budget_s,
            seed=seed,
            latency_weight=latency_weight,
            lr=default_lr(strategy),
            warmup=default_warmup(strategy, epochs),
        )
        t = time.perf_counter()
        result = Search(supernet, latency, config).run(x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]])
        search_s = time.perf_counter() - t
        arch = supernet.architecture(result.indices)
        predicted = latency.of(result.indices)
        row = {
            "strategy": strategy,
            "seed": seed,
            "budget_s": budget_s,
            "latency_weight": latency_weight,
            "genotype": [str(c) for c in arch.blocks],
            "test_accuracy": retrain(space, arch, dataset, retrain_epochs, seed),
            "predicted_latency_s": predicted,
            "meets_budget": budget_s is None or predicted <= budget_s,
            "search_s": search_s,
            # the shared weights' validation accuracy of the derived network, per epoch
            "supernet_val_accuracy": [h["val_accuracy"] for h in result.history],
        }
        print(
            f"{strategy:9s} seed {seed} budget {(budget_s or 0) * 1e6:5.1f} us lambda {latency_weight:g}: "
            f"acc {row['test_accuracy']:.4f}  lat {predicted * 1e6:6.1f} us  "
            f"{'ok' if row['meets_budget'] else 'OVER'}  supernet {row['supernet_val_accuracy'][-1]:.3f}  {arch}  "
            f"({search_s:.0f} s)",
            flush=True,
        )
        return row

    runs = [search(strategy, seed, budget, 0.1) for strategy in STRATEGIES for seed in range(seeds)]

    def summarise(rows: list[dict]) -> dict:
        accs = [r["test_accuracy"] for r in rows]
        lats = [r["predicted_latency_s"] for r in rows]
        return {
            "accuracy_mean": statistics.mean(accs),
            "accuracy_std": statistics.pstdev(accs),
            "latency_mean_s": statistics.mean(lats),
            "latency_std_s": statistics.pstdev(lats),
            "all_meet_budget": all(r["meets_budget"] for r in rows),
        }

    summary = {strategy: summarise([r for r in runs if r["strategy"] == strategy]) for strategy in STRATEGIES}

    # random search at the latency each hardware-aware search found (same seed): equal latency,
    # equal training steps -- the comparison the goal asks for
    matched = {}
    for strategy in HARDWARE_AWARE:
        rows = [search("random", r["seed"], r["predicted_latency_s"], 0.0) for r in runs if r["strategy"] == strategy]
        ours = [r for r in runs if r["strategy"] == strategy]
        matched[strategy] = {
            "random": summarise(rows),
            "runs": rows,
            "paired_accuracy_gain": [a["test_accuracy"] - b["test_accuracy"] for a, b in zip(ours, rows)],
        }

    # latency awareness: the latency weight (no budget), then the hard budget (no weight)
    lambda_sweep = [search("proxyless", 0, None, weight) for weight in LAMBDAS[args.quick]]
    budget_sweep = [
        search("proxyless", 0, fastest + f * (slowest - fastest), 0.0) for f in BUDGET_FRACTIONS[args.quick]
    ]
    lambda_latencies = [s["predicted_latency_s"] for s in lambda_sweep]
    budget_latencies = [s["predicted_latency_s"] for s in budget_sweep]

    def non_increasing(values: list[float]) -> bool:
        return all(a >= b for a, b in zip(values, values[1:]))

    gain = summary["proxyless"]["accuracy_mean"] - matched["proxyless"]["random"]["accuracy_mean"]
    supernet = {
        strategy: statistics.mean(r["supernet_val_accuracy"][-1] for r in runs if r["strategy"] == strategy)
        for strategy in STRATEGIES
    }
    single_path = [v for strategy, v in supernet.items() if strategy != "darts"]
    results = {
        "provenance": origin,
        "space": {"blocks": blocks, "kernels": space.kernels, "expand": space.expand, "skip": space.skip},
        "search_epochs": epochs,
        "retrain_epochs": retrain_epochs,
        "seeds": seeds,
        "latency_budget_s": budget,
        "fastest_s": fastest,
        "slowest_s": slowest,
        "pricing_s": pricing_s,
        "runs": runs,
        "summary": summary,
        "random_at_matched_latency": matched,
        "memory": memory,
        "lambda_sweep": lambda_sweep,
        "budget_sweep": budget_sweep,
        "goals": {
            "proxyless_beats_random_at_equal_latency": {
                "value": f"proxyless {summary['proxyless']['accuracy_mean']:.4f} vs random at the same latency "
                f"{matched['proxyless']['random']['accuracy_mean']:.4f} (gain {gain * 100:+.2f} points)",
                "target": "higher mean accuracy at equal or lower latency",
                "met": gain > 0,
            },
            "supernet_shared_weights_learn": {
                "value": supernet,
                "target": ">= 0.8 mean final validation accuracy of the derived network with the "
                "supernet's weights, every single-path strategy (chance: 0.1; darts "
                "trains the mixture, so its derived network is reported, not judged)",
                "met": min(single_path) >= 0.8,
            },
            "every_architecture_meets_budget": {
                "value": all(r["meets_budget"] for r in runs),
                "target": True,
                "met": all(r["meets_budget"] for r in runs),
            },
            "proxyless_memory_growth_3_to_9": {
                "value": proxyless_growth,
                "target": "<= 1.3",
                "met": proxyless_growth <= 1.3,
            },
            "darts_memory_growth_3_to_9": {
                "value": darts_growth,
                "target": "grows (> proxyless)",
                "met": darts_growth > proxyless_growth,
            },
            "lambda_sweep_monotone": {
                "value": lambda_latencies,
                "target": "non-increasing latency as lambda grows",
                "met": non_increasing(lambda_latencies),
            },
            "budget_sweep_monotone": {
                "value": budget_latencies,
                "target": "non-decreasing latency as the budget grows",
                "met": non_increasing(budget_latencies[::-1]),
            },
        },
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, axes = plt.subplots(1, 3, figsize=(14, 4))
            for ax, sweep, key, label in (
                (axes[0], lambda_sweep, "latency_weight", "λ"),
                (axes[1], budget_sweep, "budget_s", "budget"),
            ):
                ax.plot([r["predicted_latency_s"] * 1e6 for r in sweep], [r["test_accuracy"] for r in sweep], "o-")
                for r in sweep:
                    tag = f"λ={r[key]:g}" if key == "latency_weight" else f"≤{r[key] * 1e6:.0f} us"
                    ax.annotate(tag, (r["predicted_latency_s"] * 1e6, r["test_accuracy"]), fontsize=8)
                ax.set_title(f"proxyless: {label} sweep (seed 0)")
            for strategy, marker in zip(STRATEGIES, "os^x"):
                rows = [r for r in runs if r["strategy"] == strategy]
                axes[2].scatter(
                    [r["predicted_latency_s"] * 1e6 for r in rows],
                    [r["test_accuracy"] for r in rows],
                    marker=marker,
                    label=strategy,
                )
            rows = matched["proxyless"]["runs"]
            axes[2].scatter(
                [r["predicted_latency_s"] * 1e6 for r in rows],
                [r["test_accuracy"] for r in rows],
                marker="+",
                label="random at proxyless's latency",
            )
            axes[2].axvline(budget * 1e6, color="grey", linestyle=":", label="budget")
            axes[2].legend(fontsize=7)
            axes[2].set_title("found architectures (3 seeds)")
            for ax in axes:
                ax.set_xlabel("predicted latency (us, measured table)")
                ax.set_ylabel("test accuracy (retrained)")
            fig.tight_layout()
            fig.savefig(args.out.with_suffix(".png"), dpi=120)
        except ImportError:
            print("matplotlib not installed: no plot", file=sys.stderr)
    print(json.dumps(results["goals"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
