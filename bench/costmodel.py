"""How well the cost models predict the latency of whole networks compiled by TVM.

    python bench/costmodel.py [--quick] [--out FILE] [--networks N] [--calibration C]

Random networks from the MobileNet-style search space (per block kernel 3/5/7 x expansion
1/3/6 or identity, width 0.5/0.75/1.0; 32x32x3 inputs) are compiled whole with adl's TVM
lowering and timed (batch 1, 2 threads; median of three rounds over all networks, each round
a median of 100 runs). Their latency is predicted
by `measured` (the per-kernel table built for the whole space, its per-network overhead
calibrated on C *other* random networks) and by `roofline` (as shipped, and as calibrated by
`adl hw calibrate`). Reported: the share of networks predicted within +-10 %, Spearman's
rank correlation, the mean absolute percentage error; and how long building the table takes,
the first time and again with the table on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "2")
THREADS = 2
# what the figures depend on (`python -m bench.status`): the cost models, the lowering they predict, the networks
MEASURES = (
    "bench/costmodel.py",
    "adl/hwmodels/measured.py",
    "adl/hwmodels/roofline.py",
    "adl/hwmodels/calibration.py",
    "adl/hwmodels/base.py",
    "adl/models",
    "adl/ir/layers.py",
    "adl/models/folding.py",
    "adl/backends/tvm",
    "adl/backends/runtime.py",
)

import numpy as np  # noqa: E402 (after TVM_NUM_THREADS is set above)
from provenance import provenance  # noqa: E402 (after TVM_NUM_THREADS is set above)
from scipy.stats import spearmanr  # noqa: E402 (after TVM_NUM_THREADS is set above)

from adl.backends.runtime import CompiledLibrary  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.backends.tvm.build import build_library  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.backends.tvm.calibrate import measure_roofline  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.hwmodels.calibration import save_calibration  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.hwmodels.measured import MeasuredModel, calibrate  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.hwmodels.roofline import DEFAULT_BANDWIDTH, DEFAULT_OVERHEAD, GFLOPS_PER_CORE, RooflineModel  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.ir.layers import describe_model  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.ir.spec import CallValue, TargetSpec  # noqa: E402 (after TVM_NUM_THREADS is set above)
from adl.models.space import MobileNetSpace  # noqa: E402 (after TVM_NUM_THREADS is set above)


def accuracy(predicted: list[float], measured: list[float]) -> dict:
    p, m = np.asarray(predicted), np.asarray(measured)
    errors = (p - m) / m
    return {
        "within_10pct": float(np.mean(np.abs(errors) <= 0.10)),
        "spearman": float(spearmanr(p, m).statistic),
        "mape": float(np.mean(np.abs(errors))),
        "mean_error": float(np.mean(errors)),
        "worst_error": float(errors[np.argmax(np.abs(errors))]),
    }


def build_table(space: MobileNetSpace, target: TargetSpec, cache: Path) -> tuple[float, int]:
    model = MeasuredModel(cache=str(cache))
    start = time.perf_counter()
    measured = model.measure_networks(space.candidate_layers(), target)
    return time.perf_counter() - start, measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small space and 6 networks (a smoke test)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--networks", type=int, default=None, help="networks to evaluate (default 40; quick 6)")
    parser.add_argument(
        "--calibration", type=int, default=None, help="networks to calibrate the overhead on (default 5)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    n_eval = args.networks or (6 if args.quick else 40)
    n_cal = args.calibration or (2 if args.quick else 5)
    space = MobileNetSpace(
        (3, 32, 32), 10, blocks=3 if args.quick else 6, widths=(0.5,) if args.quick else (0.5, 0.75, 1.0)
    )
    target = TargetSpec(name="host", cores=THREADS, cost=CallValue("measured"))
    rng = random.Random(args.seed)
    origin = provenance(f"none: random networks of the MobileNet space, random 1x3x32x32 inputs (seed {args.seed})")
    results: dict = {
        "provenance": origin,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "threads": THREADS},
        "space": {
            "blocks": space.blocks,
            "kernels": space.kernels,
            "expand": space.expand,
            "widths": space.widths,
            "skip": space.skip,
            "input": space.input_shape,
        },
    }

    with (
        tempfile.TemporaryDirectory(prefix="adl-bench-lut-") as cache_dir,
        tempfile.TemporaryDirectory(prefix="adl-bench-nets-") as nets_dir,
    ):
        cache = Path(cache_dir)
        os.environ["ADL_CACHE_DIR"] = str(cache)  # the roofline calibration goes there, not to ~/.cache
        roofline_params = measure_roofline(target.tvm_target(), threads=THREADS)
        save_calibration(target, roofline_params)
        results["roofline_calibration"] = roofline_params
        print(f"roofline calibrated: {roofline_params}", flush=True)
        first_s, first_n = build_table(space, target, cache)
        second_s, second_n = build_table(space, target, cache)
        print(f"table: {first_n} kernels in {first_s:.1f} s; again: {second_n} new in {second_s:.2f} s", flush=True)
        results["table"] = {
            "kernels": first_n,
            "first_build_s": first_s,
            "second_build_s": second_s,
            "second_measured": second_n,
            "second_over_first": second_s / first_s,
        }

        # Build every network first, then time them all: torch's OpenMP workers spin for a
        # while after each export and would slow down a library timed right after its build.
        networks = []
        for i in range(n_cal + n_eval):
            arch = space.sample(rng)
            model = space.build(arch).eval()
            example = np.random.default_rng(i).standard_normal((1, *space.input_shape)).astype(np.float32)
            path = Path(nets_dir) / f"net{i}.so"
            build_library(model, example, target.tvm_target(), path)
            layers = describe_model(model, (1, *space.input_shape))
            networks.append(
                {"arch": str(arch), "layers": layers, "path": path, "macs": sum(layer.macs for layer in layers)}
            )
        # Three rounds over all networks, each a median of 100 runs; a network's latency is the
        # median of its rounds (the machine has slow spells of seconds; see layer_timing.py).
        time.sleep(1.0)
        libraries = [CompiledLibrary(net.pop("path"), (1, *space.input_shape), num_threads=THREADS) for net in networks]
        rounds = [[lib.latency(repeats=100, warmup=20).median_s for lib in libraries] for _ in range(3)]
        for i, net in enumerate(networks):
            net["rounds_s"] = [r[i] for r in rounds]
            net["measured_s"] = float(np.median(net["rounds_s"]))
            print(f"net {i:2d}: {net['measured_s'] * 1e3:7.3f} ms  {net['arch']}", flush=True)

        measured_model = MeasuredModel(cache=str(cache))
        overhead = calibrate(measured_model, target, [(n["layers"], n["measured_s"]) for n in networks[:n_cal]])
        evaluation = networks[n_cal:]
        truth = [n["measured_s"] for n in evaluation]
        models = {
            "measured": measured_model,
            "roofline_calibrated": RooflineModel(),
            "roofline_uncalibrated": RooflineModel(
                gflops=GFLOPS_PER_CORE * THREADS, bandwidth=DEFAULT_BANDWIDTH, overhead=DEFAULT_OVERHEAD
            ),
        }
        predictions = {
            name: [m.estimate(n["layers"], target).latency_s for n in evaluation] for name, m in models.items()
        }
        macs = [float(n["macs"]) for n in evaluation]
        results["overhead"] = vars(overhead)
        results["accuracy"] = {name: accuracy(p, truth) for name, p in predictions.items()}
        results["accuracy"]["macs_spearman"] = float(spearmanr(macs, truth).statistic)
        results["networks"] = [
            {
                "arch": n["arch"],
                "measured_s": n["measured_s"],
                "rounds_s": n["rounds_s"],
                "macs": n["macs"],
                **({name: predictions[name][i - n_cal] for name in models} if i >= n_cal else {"calibration": True}),
            }
            for i, n in enumerate(networks)
        ]

    acc = results["accuracy"]["measured"]
    results["goals"] = {
        "measured_within_10pct": {
            "value": acc["within_10pct"],
            "target": ">= 0.95",
            "met": acc["within_10pct"] >= 0.95,
        },
        "measured_spearman": {"value": acc["spearman"], "target": ">= 0.95", "met": acc["spearman"] >= 0.95},
        "second_table_build_ratio": {
            "value": results["table"]["second_over_first"],
            "target": "< 0.10",
            "met": results["table"]["second_over_first"] < 0.10,
        },
    }
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps({"goals": results["goals"], "accuracy": results["accuracy"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
