"""Architecture search on digits: proxyless, darts, gdas against random search, at equal steps.

    python bench/nas.py [--quick] [--out FILE] [--seeds N]

For every strategy and seed: search the MobileNet-style space (4 blocks, kernels 3/5/7 x
expansion 1/3/6, identity where allowed) for the same number of epochs (= training steps)
with the latency of every candidate priced by the `measured` table of this machine, under a
latency budget; then retrain the found architecture from scratch the same way for all (the
`train` loop, Adam, fixed epochs) and score it on the test split. Reported: test accuracy and
predicted latency per strategy (mean, std over seeds), whether each meets the budget; the
peak resident memory of `proxyless` and `darts` search steps for 3 and 9 candidates per
block (measured in fresh processes, see `memory_probe`); and a lambda sweep of `proxyless`
(accuracy vs latency, plot).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from adl.compiler.progress import SilentProgress  # noqa: E402
from adl.compiler.spec import CallValue, TargetSpec  # noqa: E402
from adl.data import load_dataset  # noqa: E402
from adl.hwmodels.measured import MeasuredModel  # noqa: E402
from adl.models.space import MobileNetSpace  # noqa: E402
from adl.models.zoo import Normalize  # noqa: E402
from adl.passes.nas.pricing import price_candidates  # noqa: E402
from adl.passes.nas.search import LatencyTable, Search, SearchConfig  # noqa: E402
from adl.passes.nas.supernet import Supernet  # noqa: E402
from adl.passes.train.loop import train_model  # noqa: E402

STRATEGIES = ("proxyless", "darts", "gdas", "random")


def retrain(space: MobileNetSpace, arch, dataset, epochs: int, seed: int) -> float:
    """Train the found architecture from scratch (the train pass's loop) and return test accuracy."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(Normalize(dataset.mean, dataset.std, channel_dims=2), space.build(arch))
    config = {"epochs": epochs, "batch_size": 64, "optimizer": CallValue("adam", (("lr", 0.003), ("weight_decay", 0.0))),
              "schedule": "cosine", "label_smoothing": 0.0}
    with tempfile.TemporaryDirectory() as state_dir:
        result = train_model(model, dataset, config, seed=seed, state_dir=Path(state_dir), progress=SilentProgress(),
                             threads=2, log=lambda message: None)
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
    return {"strategy": strategy, "candidates": candidates, "batch": batch, "rss_before_bytes": before,
            "peak_bytes": peak, "step_bytes": peak - before, "params_bytes": params_bytes}


def measure_memory(strategy: str, candidates: int) -> dict:
    """`memory_probe` in a fresh interpreter; large buffers mmapped so frees reach the OS."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, __file__, "--memory-probe", strategy, str(candidates)], env=env,
                         capture_output=True, text=True, check=True).stdout
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
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = 3 if args.quick else 15
    retrain_epochs = 3 if args.quick else 20
    blocks = 2 if args.quick else 4

    # first: the memory probes, each in a fresh process
    memory = {f"{strategy}_{n}": measure_memory(strategy, n) for strategy in ("proxyless", "darts") for n in (3, 9)}
    for key, row in memory.items():
        print(f"memory {key}: step {row['step_bytes'] / 2**20:.1f} MiB (params {row['params_bytes'] / 2**20:.2f} MiB)",
              flush=True)
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
    print(f"priced {sum(len(c) for c in supernet.choices)} candidates in {pricing_s:.0f} s; "
          f"fastest {fastest * 1e6:.0f} us, slowest {slowest * 1e6:.0f} us, budget {budget * 1e6:.0f} us", flush=True)

    mean = np.asarray(dataset.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(dataset.std, np.float32).reshape(-1, 1, 1)
    x = ((dataset.x_train - mean) / std).astype(np.float32)
    y = dataset.y_train.astype(np.int32)

    runs = []
    for strategy in STRATEGIES:
        for seed in range(seeds):
            order = np.random.default_rng(seed).permutation(len(x))
            cut = int(0.8 * len(x))
            config = SearchConfig(strategy=strategy, epochs=epochs, budget_s=budget, seed=seed,
                                  latency_weight=0.1)
            t = time.perf_counter()
            result = Search(supernet, latency, config).run(x[order[:cut]], y[order[:cut]], x[order[cut:]],
                                                           y[order[cut:]])
            search_s = time.perf_counter() - t
            arch = supernet.architecture(result.indices)
            accuracy = retrain(space, arch, dataset, retrain_epochs, seed)
            predicted = latency.of(result.indices)
            runs.append({"strategy": strategy, "seed": seed, "genotype": [str(c) for c in arch.blocks],
                         "test_accuracy": accuracy, "predicted_latency_s": predicted, "meets_budget": predicted <= budget,
                         "search_s": search_s})
            print(f"{strategy:9s} seed {seed}: acc {accuracy:.4f}  lat {predicted * 1e6:6.1f} us  "
                  f"{'ok' if predicted <= budget else 'OVER'}  {arch}  ({search_s:.0f} s)", flush=True)

    summary = {}
    for strategy in STRATEGIES:
        rows = [r for r in runs if r["strategy"] == strategy]
        accs = [r["test_accuracy"] for r in rows]
        lats = [r["predicted_latency_s"] for r in rows]
        summary[strategy] = {"accuracy_mean": statistics.mean(accs), "accuracy_std": statistics.pstdev(accs),
                             "latency_mean_s": statistics.mean(lats), "latency_std_s": statistics.pstdev(lats),
                             "all_meet_budget": all(r["meets_budget"] for r in rows)}

    sweep = []
    for weight in ((0.0, 1.0) if args.quick else (0.0, 0.3, 1.0, 3.0)):
        order = np.random.default_rng(0).permutation(len(x))
        cut = int(0.8 * len(x))
        result = Search(supernet, latency, SearchConfig(strategy="proxyless", epochs=epochs, latency_weight=weight,
                                                        seed=0)).run(x[order[:cut]], y[order[:cut]],
                                                                     x[order[cut:]], y[order[cut:]])
        arch = supernet.architecture(result.indices)
        sweep.append({"latency_weight": weight, "predicted_latency_s": latency.of(result.indices),
                      "test_accuracy": retrain(space, arch, dataset, retrain_epochs, 0), "genotype": str(arch)})
        print(f"lambda {weight}: {sweep[-1]}", flush=True)
    latencies = [s["predicted_latency_s"] for s in sweep]
    monotone = all(a >= b for a, b in zip(latencies, latencies[1:]))

    hw_aware_best = max(("proxyless", "darts", "gdas"), key=lambda s: summary[s]["accuracy_mean"])
    beats_random = (summary[hw_aware_best]["accuracy_mean"] > summary["random"]["accuracy_mean"]
                    and summary[hw_aware_best]["latency_mean_s"] <= summary["random"]["latency_mean_s"] * 1.0001)
    results = {
        "space": {"blocks": blocks, "kernels": space.kernels, "expand": space.expand, "skip": space.skip},
        "search_epochs": epochs, "retrain_epochs": retrain_epochs, "seeds": seeds,
        "latency_budget_s": budget, "fastest_s": fastest, "slowest_s": slowest, "pricing_s": pricing_s,
        "runs": runs, "summary": summary, "memory": memory, "lambda_sweep": sweep,
        "goals": {
            "hardware_aware_beats_random": {"value": f"{hw_aware_best}: {summary[hw_aware_best]['accuracy_mean']:.4f} "
                                                     f"vs random {summary['random']['accuracy_mean']:.4f}",
                                            "target": "higher accuracy at equal or lower latency", "met": beats_random},
            "every_architecture_meets_budget": {"value": all(r["meets_budget"] for r in runs), "target": True,
                                                "met": all(r["meets_budget"] for r in runs)},
            "proxyless_memory_growth_3_to_9": {"value": proxyless_growth, "target": "<= 1.3",
                                               "met": proxyless_growth <= 1.3},
            "darts_memory_growth_3_to_9": {"value": darts_growth, "target": "grows (> proxyless)",
                                           "met": darts_growth > proxyless_growth},
            "lambda_sweep_monotone": {"value": latencies, "target": "non-increasing latency as lambda grows",
                                      "met": monotone},
        },
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.plot([s["predicted_latency_s"] * 1e6 for s in sweep], [s["test_accuracy"] for s in sweep], "o-")
            for s in sweep:
                ax.annotate(f"λ={s['latency_weight']:g}", (s["predicted_latency_s"] * 1e6, s["test_accuracy"]))
            ax.set_xlabel("predicted latency (us, measured table)")
            ax.set_ylabel("test accuracy (retrained)")
            ax.set_title("proxyless: latency weight sweep")
            fig.tight_layout()
            fig.savefig(args.out.with_suffix(".png"), dpi=120)
        except ImportError:
            print("matplotlib not installed: no plot", file=sys.stderr)
    print(json.dumps(results["goals"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
