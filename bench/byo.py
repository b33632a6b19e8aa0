"""Bring your own network: torchvision's MobileNetV2 and ResNet-18 on Fashion-MNIST, written as an
`.adl` spec (`model torchvision(...)`) and compiled by adl -- train, then `amc { flops = 50 % }`,
then `haq` -- each stage's library against the same network in ONNX Runtime.

    python bench/byo.py [--quick] [--archs NAME ...] [--epochs N] [--out FILE]

The networks: torchvision's own builders (`model torchvision(name = ...)`), trained from scratch
here (no pretrained weights are reachable). The input: Fashion-MNIST at its own 28x28, not
resized: the stem is *adapted* -- `stem = replace` swaps torchvision's first convolution for one
taking the single gray channel, with its kernel and stride kept -- and `normalize = true` puts the
data's mean/std normalisation in front (compiled into the library). With torchvision's strides a
28x28 image reaches the classifier as a 1x1 map (MobileNetV2: 28 -> 14 -> 7 -> 4 -> 2 -> 1;
ResNet-18 the same after its max-pool).

Each architecture is one spec; three compiles of it share one cache, so each later stage starts
from the earlier stage's checkpoint (the same trained network):
  train   pipeline { train lower }
  amc     pipeline { train amc lower }          amc { flops = 50 % }: DDPG channel pruning + fine-tuning
  haq     pipeline { train amc haq lower }      haq: mixed-precision, integer kernels in the library
The peers, on ONNX Runtime (2 threads, every graph optimisation):
  train   the trained network exported to ONNX, fp32
  amc     the pruned network exported to ONNX, fp32
  haq     `quantize_static` (QDQ, per-channel, u8 activations, s8 weights, MinMax) of the pruned
          network, calibrated on the first training images -- what a user of ONNX Runtime picks
          to quantize (bench/int8.py's `ort_int8`)
Accuracy: every engine on the 10,000 test images. Latency: batch 1, every engine of an architecture
in interleaved rounds in one process (bench/peers.py's `time_interleaved`, a 0.5 s pause before
each engine), each call through its
Python API (adl: `CompiledLibrary.run`; ONNX Runtime: `InferenceSession.run`), so the figures include
each API's per-call overhead (tens of microseconds, against 0.1-0.7 ms networks); an engine's latency
is the median over rounds of each round's median call, adl's libraries at the thread count their
manifest chose. Ratios are same-run: the median over rounds of the two engines' ratio in each round
(this shared VM has slow spells that slow every engine of a round alike).

Goals (per architecture; each can miss):
  <arch>_haq_vs_ort_int8    adl's haq library latency / ONNX Runtime int8's of the pruned network <= 1
  <arch>_train_vs_ort       adl's float library latency / ONNX Runtime fp32's of the same network <= 1
  <arch>_amc_speedup        the train stage's library latency / the amc stage's >= 1.3 (50 % FLOPs)
  <arch>_haq_accuracy_drop  train stage's accuracy - haq stage's, in points <= 1.5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from common import log
from int8 import ort_int8
from peers import (
    WARMUP,
    export_onnx,
    first_line,
    goal,
    guarded,
    ort_engine,
    ort_session,
    same_run_ratio,
    time_interleaved,
    versions,
)
from provenance import provenance

# what the figures depend on (`python -m bench.status`)
MEASURES = (
    "bench/byo.py",
    "bench/int8.py",
    "bench/peers.py",
    "adl/models",
    "adl/driver",
    "adl/passes/train",
    "adl/passes/amc",
    "adl/passes/channels.py",
    "adl/passes/haq",
    "adl/passes/rl",
    "adl/backends/tvm",
    "adl/backends/runtime.py",
    "adl/ir/layers.py",
    "adl/data",
)

THREADS = 2
# Idle seconds before each engine's calls: ONNX Runtime's and TVM's worker threads spin for longer
# than peers.PAUSE_S (0.05 s) after their last call, and slowed whichever ~0.1-0.4 ms network came
# next by up to 2x (ONNX Runtime's MobileNetV2 read 0.42 ms in one run, 0.20 ms in the one before).
PAUSE_S = 0.5
ARCHS = ("mobilenet_v2", "resnet18")
STAGES = {"train": "train lower", "amc": "train amc lower", "haq": "train amc haq lower"}
FASHION_DATA = "Fashion-MNIST (official split: 60,000 training images, 10 % held out for validation; 10,000 tests)"

# goals
HAQ_VS_ORT_INT8 = 1.0
TRAIN_VS_ORT = 1.0
AMC_SPEEDUP = 1.3
HAQ_ACCURACY_DROP = 1.5  # points

# the defaults of the settings `--quick` shrinks: (full, quick)
DEFAULTS = {
    "epochs": (3, 1),
    "amc_episodes": (40, 6),
    "amc_warmup": (10, 2),
    "amc_finetune": (1, 1),
    "haq_episodes": (40, 6),
    "haq_warmup": (10, 2),
    "haq_finetune": (1, 1),
    "rounds": (21, 3),
    "repeats": (200, 20),
    "calibration": (64, 16),
    "test_samples": (10_000, 1000),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; settings not given take their `DEFAULTS` (the quick ones with --quick)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small budgets, 1,000 test images")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--out", type=Path, default=Path("bench/results/byo.json"))
    parser.add_argument("--work", type=Path, default=None, help="folder for specs, caches, artifacts (default: temp)")
    for name in DEFAULTS:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    args = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def spec_text(arch: str, stage: str, args: argparse.Namespace) -> str:
    """The spec of `arch` whose pipeline stops after `stage` (then lowers)."""
    passes = {
        "train": f"train {{ epochs = {args.epochs} }}",
        "amc": f"amc {{ flops = 50 %  episodes = {args.amc_episodes}  warmup = {args.amc_warmup}  "
        f"finetune = {args.amc_finetune} }}",
        "haq": f"haq {{ bits = 2..8  budget = size  fraction = 0.6  episodes = {args.haq_episodes}  "
        f"warmup = {args.haq_warmup}  finetune = {args.haq_finetune} }}",
        "lower": "lower",
    }
    pipeline = "\n  ".join(passes[name] for name in STAGES[stage].split())
    return f"""spec byo_{arch}
task classify {{ classes = 10 }}
data fashion_mnist {{ validation = 10 %  seed = 0 }}
model torchvision(name = {arch}, stem = replace, normalize = true)
target host {{ kind = llvm  cores = {THREADS} }}
pipeline {{
  {pipeline}
}}
"""


def compile_stage(arch: str, stage: str, args: argparse.Namespace, work: Path, dataset: Any) -> dict:
    """Compile `arch`'s spec up to `stage` (sharing the architecture's cache): the CompileResult and timings."""
    from adl.driver.check import load_spec
    from adl.driver.run import compile_spec

    path = work / f"{arch}_{stage}.adl"
    path.write_text(spec_text(arch, stage, args))
    spec = load_spec(path.read_text(), str(path))
    started = time.perf_counter()
    result = compile_spec(
        spec, out_dir=work / f"{arch}_{stage}", cache_dir=work / f"{arch}_cache", dataset=dataset, log=log
    )
    seconds = time.perf_counter() - started
    passes = {p["name"]: {"seconds": p.get("seconds"), "reused": p.get("reused")} for p in result.manifest["passes"]}
    metrics = result.manifest["metrics"]
    return {
        "result": result,
        "row": {
            "compile_seconds": seconds,
            "passes": passes,
            "manifest_accuracy": metrics.get("accuracy"),
            "manifest_latency_ms": 1e3 * metrics["latency_s"] if metrics.get("latency_s") else None,
            "flops": metrics.get("flops"),
            "params": metrics.get("params"),
            "library_bytes": (result.manifest.get("library") or {}).get("bytes"),
            "amc": _summary(metrics.get("amc"), ("flops_ratio", "ratios", "accuracy", "finetuned_accuracy")),
            "haq": _summary(metrics.get("haq"), ("bits", "accuracy", "size_bytes", "integer_layers")),
        },
    }


def _summary(metrics: Mapping | None, keys: Sequence[str]) -> dict | None:
    if not metrics:
        return None
    return {k: metrics[k] for k in keys if k in metrics}


def adl_library(artifact_dir: Path):
    """The stage's library, at the thread count its manifest chose."""
    from adl.backends.artifact import load

    artifact = load(artifact_dir)
    return artifact._lib()  # the library itself: the bench times calls without the artifact's input checks


def accuracy(call, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of `call` (a batch-1 engine) over every sample of `x`."""
    hits = sum(int(np.argmax(call(x[i : i + 1])[0]) == y[i]) for i in range(len(x)))
    return hits / len(x)


def measure_arch(arch: str, args: argparse.Namespace, work: Path, dataset: Any) -> dict:
    """Compile `arch`'s three stages, build the ONNX Runtime peers, and measure every engine."""
    stages: dict[str, dict] = {}
    for stage in STAGES:
        log(f"{arch}: compiling up to {stage}")
        stages[stage] = compile_stage(arch, stage, args, work, dataset)
    example = np.ascontiguousarray(dataset.x_test[:1], dtype=np.float32)
    engines: dict[str, Any] = {}
    info: dict[str, dict] = {}
    for stage, compiled in stages.items():
        library = adl_library(compiled["result"].artifact_dir)
        engines[f"adl_{stage}"] = library.run
        info[f"adl_{stage}"] = {"threads": library.num_threads, **compiled["row"]}
    folder = work / f"{arch}_onnx"
    folder.mkdir(exist_ok=True)
    for stage in ("train", "amc"):
        model = stages[stage]["result"].module.model.eval()
        path = folder / f"{stage}.onnx"
        exporter = export_onnx(model, example, path)
        engines[f"ort_{stage}"] = ort_engine(ort_session(path, THREADS))
        info[f"ort_{stage}"] = {"exporter": exporter, "precision": "fp32"}
    calibration = np.ascontiguousarray(dataset.x_train[: args.calibration], dtype=np.float32)
    int8 = guarded(
        lambda: ort_int8(argparse.Namespace(calibration=calibration), folder, folder / "amc.onnx", {"of": "amc"})
    )
    if isinstance(int8, dict):
        info["ort_int8"] = int8
    else:
        engines["ort_int8"] = int8.call
        info["ort_int8"] = int8.info
    x_test = np.ascontiguousarray(dataset.x_test[: args.test_samples], dtype=np.float32)
    y_test = dataset.y_test[: args.test_samples]
    for name, call in engines.items():
        log(f"{arch}: accuracy of {name} on {len(x_test)} test images")
        info[name]["accuracy"] = guarded(lambda call=call: accuracy(call, x_test, y_test))
    log(f"{arch}: timing {len(engines)} engines, {args.rounds} interleaved rounds")
    rounds = time_interleaved(engines, example, args.rounds, args.repeats, pause_s=PAUSE_S)
    for name, seconds in rounds.items():
        if isinstance(seconds, str):
            info[name]["latency_error"] = seconds
            continue
        info[name]["rounds_ms"] = [1e3 * s for s in seconds]
        info[name]["latency_ms"] = 1e3 * statistics.median(seconds)
    return {"engines": info}


def _value(report: Mapping, arch: str, engine: str, key: str) -> float | None:
    value = report["archs"].get(arch, {}).get("engines", {}).get(engine, {}).get(key)
    return value if isinstance(value, (int, float)) else None


def engines_ratio(report: Mapping, arch: str, numerator: str, denominator: str) -> float | None:
    """Two engines' same-run latency ratio (`peers.same_run_ratio` of their per-round medians)."""
    engines = report["archs"].get(arch, {}).get("engines", {})
    return same_run_ratio(engines.get(numerator, {}).get("rounds_ms"), engines.get(denominator, {}).get("rounds_ms"))


def goals(report: Mapping) -> dict:
    out = {}
    for arch in report["archs"]:
        out[f"{arch}_haq_vs_ort_int8"] = goal(engines_ratio(report, arch, "adl_haq", "ort_int8"), HAQ_VS_ORT_INT8)
        out[f"{arch}_train_vs_ort"] = goal(engines_ratio(report, arch, "adl_train", "ort_train"), TRAIN_VS_ORT)
        out[f"{arch}_amc_speedup"] = goal(
            engines_ratio(report, arch, "adl_train", "adl_amc"), AMC_SPEEDUP, at_least=True
        )
        trained, quantized = (_value(report, arch, e, "accuracy") for e in ("adl_train", "adl_haq"))
        drop = None if trained is None or quantized is None else 100 * (trained - quantized)
        out[f"{arch}_haq_accuracy_drop"] = goal(drop, HAQ_ACCURACY_DROP)
    return out


def table(report: Mapping) -> list[str]:
    lines = ["arch          engine      accuracy  latency_ms  (adl: manifest accuracy, compile s)"]
    for arch, row in report["archs"].items():
        for name, engine in row.get("engines", {}).items():
            acc = engine.get("accuracy")
            lat = engine.get("latency_ms")
            extra = ""
            if name.startswith("adl_"):
                extra = f"  ({engine.get('manifest_accuracy')}, {engine.get('compile_seconds', 0):.0f} s)"
            acc_text = f"{100 * acc:7.2f} %" if isinstance(acc, float) else f"{acc!s:>9}"
            lat_text = f"{lat:10.3f}" if isinstance(lat, float) else f"{'-':>10}"
            lines.append(f"{arch:13s} {name:10s} {acc_text} {lat_text}{extra}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    origin = provenance(FASHION_DATA)
    started = time.perf_counter()
    torch.set_num_threads(THREADS)
    from adl.data import load_dataset

    dataset = load_dataset("fashion_mnist", classes=10, validation=0.1, seed=0)
    with tempfile.TemporaryDirectory(prefix="adl-byo-") as temp:
        work = args.work or Path(temp)
        work.mkdir(parents=True, exist_ok=True)
        archs: dict[str, dict] = {}
        for arch in args.archs:
            try:
                archs[arch] = measure_arch(arch, args, work, dataset)
            except Exception as err:  # noqa: BLE001 - the next architecture may still run
                log(f"{arch}: failed: {first_line(err)}")
                archs[arch] = {"error": first_line(err)}
    report: dict = {
        "provenance": origin,
        "settings": {
            "threads": THREADS,
            "batch": 1,
            "stem": "adapted, not resized: stem = replace (1 input channel, torchvision's kernel and stride), "
            "normalize = true, 28x28 inputs",
            "specs": {arch: spec_text(arch, "haq", args) for arch in args.archs},
            "stages": STAGES,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "warmup": WARMUP,
            "pause_s": PAUSE_S,
            "calibration": args.calibration,
            "test_samples": args.test_samples,
            "quick": args.quick,
            "ort_int8": "quantize_static QDQ, per-channel, QUInt8 activations, QInt8 weights, MinMax, "
            "of the amc stage's (pruned) network",
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                **versions(("tvm", "onnx", "onnxruntime")),
            },
        },
        "archs": archs,
    }
    report = {"goals": goals(report), **report, "seconds": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    for line in table(report):
        log(line)
    for name, row in report["goals"].items():
        log(f"{name}: {row['value']} ({'met' if row['met'] else 'not met'})")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
