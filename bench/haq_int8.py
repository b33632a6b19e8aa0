"""HAQ on the CPU target: the integer library against the float32 one, and its agreement with
the fake-quantized PyTorch model.

    python bench/haq_int8.py [--quick] [--out FILE]

The MobileNetV2-style digits network of bench/haq.py is trained (float32) and lowered as is.
For each policy -- fixed 8-bit, and the mixed policy bench/haq.py found on the bitserial edge
preset (read from bench/results/haq.json when present) -- the network is fake-quantized
(BatchNorm folded, per-channel weights, percentile-calibrated activations), fine-tuned with
quantization-aware training, frozen by the `haq` pass's lowering (every layer at <= 8 bits:
int8 x int8 -> int32 kernels) and lowered with the same default schedules. Reported: the
batch-1 latency of every library at its fastest thread count (all libraries timed in the same
interleaved rounds), test accuracy of each, and the top-1 agreement of each integer library
with the fake-quantized model it was frozen from, on the test split.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from adl.backends.runtime import CompiledLibrary, fastest_thread_counts
from adl.backends.tvm.build import build_library
from adl.data import load_dataset
from adl.passes.haq.budget import BitPolicy, quantized_layers
from adl.passes.haq.lowering import deployable_model
from adl.passes.haq.model import quantize_model
from adl.passes.haq.search import SearchData, deployed_layers

from common import QUANTIZATION_MODEL as MODEL, log, train, trained_quantization_model
from provenance import provenance

# what the figures depend on (`python -m bench.status`): quantization, the integer lowering, training, and
# bench/results/haq.json (the mixed policy it deploys)
MEASURES = ("bench/haq_int8.py", "bench/common.py", "bench/results/haq.json", "passes/haq", "passes/train/loop.py",
            "models", "data", "compiler/layers.py", "compiler/folding.py", "backends/tvm", "backends/runtime.py")
TARGET = {"kind": "llvm", "num-cores": 2}
AGREEMENT = 0.99


def mixed_policy(path: Path, layers: int) -> BitPolicy | None:
    try:
        row = json.loads(path.read_text())["presets"]["edge"]["policies"]["haq"]
    except (OSError, KeyError, ValueError):
        return None
    if len(row["weight_bits"]) != layers:
        return None
    return BitPolicy(tuple(row["weight_bits"]), tuple(row["act_bits"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few epochs and timing rounds (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/haq_int8.json"))
    parser.add_argument("--base-epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    args = parser.parse_args()
    if args.quick:
        args.base_epochs, args.finetune_epochs, args.rounds = 2, 1, 3
    torch.set_num_threads(1)
    origin = provenance("digits (scikit-learn 8x8; test split 0.2, seed 0)")
    started = time.perf_counter()
    dataset = load_dataset("digits")
    shape = tuple(dataset.input_shape)
    base, base_accuracy = trained_quantization_model(dataset, args.base_epochs)
    n = len(quantized_layers(deployed_layers(base, shape)))
    data = SearchData.split(dataset, 500, 256, seed=0)
    policies = {"fixed8": BitPolicy.uniform(n, 8)}
    mixed = mixed_policy(Path("bench/results/haq.json"), n)
    if mixed is not None:
        policies["haq_edge"] = mixed

    folder = Path(tempfile.mkdtemp(prefix="haq_int8-"))
    libraries = {"fp32": folder / "fp32.so"}
    build_seconds = {"fp32": build_library(base, dataset.x_test, TARGET, libraries["fp32"]).build_seconds}
    x_test = torch.from_numpy(dataset.x_test)
    rows: dict = {"fp32": {"test_accuracy": base_accuracy}}
    for name, policy in policies.items():
        torch.manual_seed(0)
        fake, _ = train(quantize_model(base, policy, data.calibration), dataset, args.finetune_epochs, 5e-4, seed=0)
        fake.eval()
        deployed, decisions, packed = deployable_model(fake, "llvm")
        libraries[name] = folder / f"{name}.so"
        build_seconds[name] = build_library(deployed, dataset.x_test, TARGET, libraries[name]).build_seconds
        with torch.inference_mode():
            simulated = fake(x_test).argmax(1).numpy()
        library = CompiledLibrary(libraries[name], (1, *shape), num_threads=1).predict(dataset.x_test)
        rows[name] = {"weight_bits": list(policy.weight_bits), "act_bits": list(policy.act_bits),
                      "integer_layers": sum(d.arithmetic == "int8" for d in decisions), "layers": len(decisions),
                      "simulated_test_accuracy": float(np.mean(simulated == dataset.y_test)),
                      "library_test_accuracy": float(np.mean(library == dataset.y_test)),
                      "agreement_library_vs_simulated": float(np.mean(library == simulated)),
                      "packed_weight_bytes": sum(d.packed_bytes for d in decisions),
                      "float32_weight_bytes": 4 * sum(d.weights for d in decisions)}
        log(f"{name}: {rows[name]['integer_layers']}/{len(decisions)} integer layers, agreement "
            f"{rows[name]['agreement_library_vs_simulated']:.4f}, library accuracy "
            f"{rows[name]['library_test_accuracy']:.4f}")

    log(f"timing {len(libraries)} libraries in {args.rounds} interleaved rounds")
    choices = fastest_thread_counts({k: str(v) for k, v in libraries.items()}, (1, *shape), TARGET["num-cores"],
                                    rounds=args.rounds, repeats=50, warmup=10)
    for name, choice in choices.items():
        rows[name].update(threads=choice.threads, latency_s=choice.median_s[choice.threads],
                          latency_rounds_s=choice.rounds_s[choice.threads],
                          library_bytes=libraries[name].stat().st_size, build_seconds=build_seconds[name])
    fp32 = rows["fp32"]["latency_s"]
    for name in policies:
        rows[name]["speedup_vs_fp32"] = fp32 / rows[name]["latency_s"]
        log(f"{name}: {rows[name]['latency_s'] * 1e6:.1f} us vs fp32 {fp32 * 1e6:.1f} us "
            f"({rows[name]['speedup_vs_fp32']:.2f}x)")
    goals = {}
    for name in policies:
        agreement = rows[name]["agreement_library_vs_simulated"]
        goals[f"{name}: integer library agrees with the fake-quantized model (top-1, test split)"] = {
            "value": agreement, "target": AGREEMENT, "met": agreement >= AGREEMENT}
        goals[f"{name}: int8 library latency vs fp32 (speedup, measured; reported, no target)"] = {
            "value": rows[name]["speedup_vs_fp32"], "target": None, "met": None}
    report = {"goals": goals, "provenance": origin,
              "settings": {"model": {"family": MODEL[0], **MODEL[1]}, "target": TARGET,
                           "base_epochs": args.base_epochs, "finetune_epochs": args.finetune_epochs,
                           "rounds": args.rounds, "schedules": "adl default (untuned)", "quick": args.quick},
              "libraries": rows, "seconds": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
