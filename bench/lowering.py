"""Latency of adl's TVM libraries against PyTorch eager, torch.compile and ONNX Runtime.

    python bench/lowering.py [--quick] [--out FILE] [--trials N] [--minutes M]

Batch 1, 32x32 inputs, 2 threads, medians of repeated runs after warm-up, all in one
process and one run so the ratios are comparable on this noisy machine. Writes JSON with
top-level "goals" (value/target/met) and every raw figure. Needs `make bench-deps`
(onnx, onnxruntime) for the ONNX Runtime baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "2")
THREADS = 2

import numpy as np  # noqa: E402
import torch  # noqa: E402

from adl.backends.runtime import CompiledLibrary  # noqa: E402
from adl.backends.tvm.build import TuneRequest, build_library, native_target  # noqa: E402
from adl.compiler.layers import describe_model  # noqa: E402
from adl.models import build_model  # noqa: E402
from adl.models.zoo import MOBILENET_V2_CIFAR, RESNET18_CIFAR  # noqa: E402
from provenance import provenance  # noqa: E402

# what the figures depend on (`python -m bench.status`): the lowering, the runtime, the networks
MEASURES = ("bench/lowering.py", "models", "compiler/layers.py", "compiler/folding.py", "backends/tvm",
            "backends/runtime.py")
MODELS = {
    "mobilenet_v2_1.0": ("mobilenet", MOBILENET_V2_CIFAR),
    "mobilenet_v2_0.5": ("mobilenet", {**MOBILENET_V2_CIFAR, "width": 0.5}),
    "resnet18": ("resnet", RESNET18_CIFAR),
}
TARGET = {"kind": "llvm", "num-cores": THREADS}  # no mcpu: built for this machine's CPU (recorded in the result)


def peak_gflops() -> dict:
    """fp32 peak of this machine: cores x clock x FLOP/cycle from the vector extensions."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    mhz = [float(line.split(":", 1)[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    ghz = max(mhz) / 1000 if mhz else float("nan")
    # two FMA pipes: 2 x (vector lanes) x 2 FLOP per cycle
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags and "fma" in flags else 4
    per_cycle = 2 * lanes * 2
    return {"cores": THREADS, "ghz": ghz, "flop_per_cycle": per_cycle, "gflops": THREADS * ghz * per_cycle,
            "vector": "avx512" if lanes == 16 else "avx2+fma" if lanes == 8 else "sse"}


def time_callable(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float], flops: int, peak: float) -> dict:
    median = statistics.median(times)
    gflops = flops / median / 1e9
    return {"median_ms": median * 1e3, "p10_ms": float(np.percentile(times, 10)) * 1e3,
            "p90_ms": float(np.percentile(times, 90)) * 1e3, "runs": len(times), "gflops": gflops,
            "percent_of_peak": 100 * gflops / peak}


def bench_eager(model, x, repeats, warmup):
    with torch.inference_mode():
        return time_callable(lambda: model(x), repeats, warmup)


def bench_torch_compile(model, x, repeats, warmup):
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    compiled = torch.compile(model)
    with torch.inference_mode():
        compiled(x)
        return time_callable(lambda: compiled(x), repeats, warmup)


def bench_onnxruntime(model, x, repeats, warmup, workdir: Path):
    import onnxruntime as ort

    path = workdir / "model.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    out = session.run(None, feed)[0]
    with torch.inference_mode():
        assert np.abs(out - model(x).numpy()).max() < 1e-3, "ONNX Runtime disagrees with PyTorch"
    return time_callable(lambda: session.run(None, feed), repeats, warmup)


def bench_adl(model, x, repeats, workdir: Path, name: str, tune: TuneRequest | None) -> dict:
    started = time.perf_counter()
    info = build_library(model, x.numpy(), TARGET, workdir / f"{name}.so", tune=tune)
    compile_seconds = time.perf_counter() - started
    library = CompiledLibrary(workdir / f"{name}.so", tuple(x.shape), num_threads=THREADS)
    with torch.inference_mode():
        difference = float(np.abs(library.run(x.numpy()) - model(x).numpy()).max())
    stats = library.latency(repeats=repeats, warmup=10)
    return {"compile_seconds": compile_seconds, "max_abs_diff": difference, "tuning": info.tuning,
            "library_bytes": info.library_bytes, "times_median_s": stats.median_s,
            "p10_ms": stats.p10_s * 1e3, "p90_ms": stats.p90_s * 1e3}


def run_model(name: str, args, peak: float, workdir: Path, tuning_root: Path) -> dict:
    family, options = MODELS[name]
    torch.manual_seed(0)
    model = build_model(family, options, input_shape=(3, 32, 32), classes=10, mean=(0.5,) * 3,
                        std=(0.25,) * 3).eval()
    x = torch.rand(1, 3, 32, 32)
    macs = sum(layer.macs for layer in describe_model(model, (1, 3, 32, 32)))
    flops = 2 * macs
    row: dict = {"macs": macs, "params": sum(p.numel() for p in model.parameters()), "paths": {}}
    paths = row["paths"]

    def attempt(label, fn):
        print(f"  {name}: {label} ...", file=sys.stderr, flush=True)
        try:
            paths[label] = summary(fn(), flops, peak)
        except Exception as err:  # a baseline that does not work here is reported, not fatal
            paths[label] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
            traceback.print_exc(limit=2)

    attempt("pytorch_eager", lambda: bench_eager(model, x, args.repeats, 10))
    if not args.skip_torch_compile:
        attempt("torch_compile", lambda: bench_torch_compile(model, x, args.repeats, 10))
    attempt("onnxruntime", lambda: bench_onnxruntime(model, x, args.repeats, 10, workdir))

    for label, tune in (("adl_untuned", None),
                        ("adl_tuned", TuneRequest(args.trials, args.minutes, tuning_root))):
        print(f"  {name}: {label} ...", file=sys.stderr, flush=True)
        result = bench_adl(model, x, args.repeats, workdir, f"{name}-{label}", tune)
        paths[label] = {**summary([result.pop("times_median_s")], flops, peak), **result,
                        "runs": args.repeats}
    # The same model compiled again: every task comes from the tuning database.
    print(f"  {name}: adl_tuned again ...", file=sys.stderr, flush=True)
    again = bench_adl(model, x, 20, workdir, f"{name}-again", TuneRequest(args.trials, args.minutes, tuning_root))
    row["second_compile"] = {"compile_seconds": again["compile_seconds"], "tuning": again["tuning"],
                             "fraction_of_first": again["compile_seconds"] / paths["adl_tuned"]["compile_seconds"]}
    return row


def goals(results: dict) -> dict:
    out = {}
    for name, row in results.items():
        paths = row["paths"]
        tuned = paths["adl_tuned"]["median_ms"]
        if "median_ms" in paths.get("onnxruntime", {}):
            ratio = tuned / paths["onnxruntime"]["median_ms"]
            out[f"{name}: adl tuned / ONNX Runtime latency"] = {"value": ratio, "target": 1.0, "met": ratio <= 1.0}
        ratio = paths["adl_untuned"]["median_ms"] / paths["pytorch_eager"]["median_ms"]
        out[f"{name}: adl untuned / PyTorch eager latency"] = {"value": ratio, "target": 1.5, "met": ratio <= 1.5}
        fraction = row["second_compile"]["fraction_of_first"]
        out[f"{name}: second tuned compile time / first"] = {"value": fraction, "target": 0.1, "met": fraction < 0.1}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small model, few trials (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/lowering.json"))
    parser.add_argument("--trials", type=int, default=32, help="MetaSchedule trials per task")
    parser.add_argument("--minutes", type=float, default=None, help="tuning time cap per model")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--skip-torch-compile", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.models, args.trials, args.repeats = ["mobilenet_v2_0.5"], 2, 30
    torch.set_num_threads(THREADS)
    origin = provenance("none: latency of untrained networks on one random 1x3x32x32 input (torch seed 0)")
    peak = peak_gflops()
    results = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="adl-bench-lowering-") as tmp:
        workdir = Path(tmp)
        for name in args.models:
            results[name] = run_model(name, args, peak["gflops"], workdir, workdir / "tuning")
            report = {  # rewritten after every model, so a long run that dies keeps what it measured
                "goals": goals(results),
                "provenance": origin,
                "machine": {"platform": platform.platform(), "peak": peak, "threads": THREADS,
                            "torch": torch.__version__, "tvm": __import__("tvm").__version__},
                "settings": {"trials_per_task": args.trials, "minutes": args.minutes, "repeats": args.repeats,
                             "batch": 1, "input": [1, 3, 32, 32], "target": native_target(TARGET), "quick": args.quick},
                "models": results,
            }
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    for goal, verdict in report["goals"].items():
        print(f"{goal}: {verdict['value']:.3f} (target {verdict['target']}) {'met' if verdict['met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
