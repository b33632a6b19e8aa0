"""Float code that is fast: adl's fp32 libraries against PyTorch eager, torch.compile, ONNX Runtime
and OpenVINO on four torchvision networks, batch 1 and 8, 2 threads, on this CPU.

    python bench/lowering.py [--quick] [--out FILE] [--networks NAME ...] [--sizes 224 32]
                             [--batches 1 8] [--rounds N] [--repeats N] [--skip-torch-compile]
                             [--skip-thread-check] [--tune-minutes M ...]

Networks (`ARCHITECTURES`): torchvision's MobileNetV2, ResNet-18, MNASNet 1.0 and EfficientNet-B0,
random weights (weights=None, torch seed 0), eval mode, each at 224x224 (1000 classes) and at
32x32 (10 classes) (`SIZES`); batch 1 (latency) and batch 8 (throughput: images/s too)
(`BATCHES`). The input of a (network, size, batch) case: one fixed standard normal batch (numpy
seed 0), float32.

Engines (`ENGINES`), all in one process; a missing package or an error is recorded as the
engine's "error" and the bench goes on:

  pytorch_eager     the model under torch.inference_mode, torch.set_num_threads(2)
  torch_compile     torch.compile (inductor, `torch._inductor.config.freezing = True`, static
                    shapes), compiled afresh for every case (`--skip-torch-compile`)
  onnxruntime       ONNX Runtime on the model exported to ONNX (opset 17, the case's batch),
                    2 intra-op threads, every graph optimization
  openvino          `openvino.convert_model`, input shape fixed to the case's, compiled with the
                    f32 inference precision hint (this CPU has bf16, OpenVINO's default on it),
                    2 threads, latency mode (batch 8 too)
  adl               `build_library(model, x, {"kind": "llvm", "num-cores": 2}, path, batch=B)`
                    (default schedules, untuned), run through `CompiledLibrary` at the thread
                    count `fastest_thread_count` picks from 1..2 (what the `lower` pass ships);
                    compile seconds (wall time of build_library), library bytes and the target
                    (the host's mcpu filled in) recorded, its logits checked against eager's
  adl_tuned_<M>min  (`--tune-minutes M ...`, MobileNetV2-224 batch 1 only) the same with
                    MetaSchedule tuning (64 trials a task, at most M minutes, a fresh tuning
                    database for every M), timed beside the others

Timing (bench/peers.py's `time_interleaved`): all engines of a case in interleaved rounds
(`--rounds`, default 7); in each round every engine makes warm-up calls and then timed calls
(time.perf_counter around each) on the case's input, after a pause that lets the previous
engine's worker threads go idle; the round's figure is the median call, an engine's latency the
median over rounds (the rounds are kept). Calls a round (`CALLS`): 30 timed, 5 warm-up at 224x224
and 100, 10 at 32x32, divided by the batch (at least 5 and 2); `--repeats` sets the timed calls
of every case.

Peaks (bench/peers.py): the fp32 FMA microbenchmark (`peaks`: AVX-512, or AVX2+FMA on a CPU
without it) and a 4096x4096 float32 torch.mm (`gemm_peak`), both on 2 threads; every engine's
2 x MACs / latency is reported as a percentage of each (`percent_of_peak`; MACs of Conv2d and
Linear layers, `count_macs`, times the batch).

Thread check (MobileNetV2-224 batch 1, `--skip-thread-check`): `fastest_thread_count` on the adl
library twice, once quiet and once while a busy-looping process takes one core.

Goals (`goals`): see GOAL_* and PEER_TARGETS. The JSON (default bench/results/lowering.json) is
rewritten after every case, so a long run that dies keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from common import log
from peers import (
    Engine,
    _with,
    count_macs,
    export_onnx,
    first_line,
    gemm_peak,
    goal,
    guarded,
    import_torchvision,
    openvino_compiled,
    ort_engine,
    ort_session,
    peaks,
    ratio,
    time_interleaved,
    versions,
)
from provenance import provenance

# what the figures depend on (`python -m bench.status`): the bench, the peers, the lowering and the runtime
MEASURES = (
    "bench/lowering.py",
    "bench/peers.py",
    "adl/backends/tvm",
    "adl/backends/runtime.py",
    "adl/models/folding.py",
)

THREADS = 2
TARGET = {"kind": "llvm", "num-cores": THREADS}  # no mcpu: built for this machine's CPU (recorded per library)
ARCHITECTURES = ("mobilenet_v2", "resnet18", "mnasnet1_0", "efficientnet_b0")  # torchvision.models builders
SIZES = {224: 1000, 32: 10}  # input side -> classes
BATCHES = (1, 8)
ENGINES = ("pytorch_eager", "torch_compile", "onnxruntime", "openvino", "adl")
PEERS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
CHANNELS = 3

# settings: (full, --quick)
ROUNDS = (7, 3)
CALLS = {224: (30, 5), 32: (100, 10)}  # (timed, warm-up) calls a round at batch 1; divided by the batch
QUICK_CALLS = (20, 5)
MIN_CALLS = (5, 2)
QUICK = {"networks": ["mobilenet_v2"], "sizes": [32], "batches": [1]}

OUTPUT_TOLERANCE = 1e-2  # max |logit - eager's| over the largest |eager logit|: more is a wrong library
TUNE_TRIALS = 64  # MetaSchedule trials per task with --tune-minutes
SPECIAL_CASE = ("mobilenet_v2", 224, 1)  # the case of the thread check and the tuning
BURNER_START_S = 0.5  # the busy process's head start before the loaded thread choice

# goals (ratios: at most the target)
PEER_TARGETS = {"mobilenet_v2": 1.0, "resnet18": 1.0, "mnasnet1_0": 1.2, "efficientnet_b0": 1.2}
GOAL_EAGER = 0.5  # adl / PyTorch eager
GOAL_COMPILE_SECONDS = 60.0  # MobileNetV2-224, untuned, batch 1
GOAL_TUNED = 0.9  # MobileNetV2-224 b1, best tuned run of at most GOAL_TUNED_MINUTES / min(peers)
GOAL_TUNED_MINUTES = 15.0
PEAK_KINDS = ("fma", "gemm")  # the report's "peaks" entries an engine is compared with


# -- settings ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; what is not given takes the full defaults, or with --quick the smoke
    run's (MobileNetV2 at 32x32, batch 1, 3 rounds of 20 calls, no torch.compile, no thread check)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="mobilenet_v2 at 32x32, batch 1, 3 rounds of 20 calls, no torch.compile, no thread check",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/lowering.json"))
    parser.add_argument("--networks", nargs="+", choices=list(ARCHITECTURES), default=None)
    parser.add_argument("--sizes", nargs="+", type=int, choices=list(SIZES), default=None)
    parser.add_argument("--batches", nargs="+", type=int, default=None, help=f"default {' '.join(map(str, BATCHES))}")
    parser.add_argument("--rounds", type=int, default=None, help=f"default {ROUNDS[0]} ({ROUNDS[1]} with --quick)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls a round in every case (default: by size and batch, see CALLS)",
    )
    parser.add_argument("--skip-torch-compile", action="store_true")
    parser.add_argument("--skip-thread-check", action="store_true")
    parser.add_argument(
        "--tune-minutes",
        nargs="+",
        type=float,
        default=[],
        help="MobileNetV2-224 batch 1 also tuned for each of these minutes (e.g. 5 15 30)",
    )
    args = parser.parse_args(argv)
    defaults = {"networks": list(ARCHITECTURES), "sizes": list(SIZES), "batches": list(BATCHES)}
    for name, full in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else full)
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))
    if args.rounds is None:
        args.rounds = ROUNDS[1] if args.quick else ROUNDS[0]
    if args.quick:
        args.skip_torch_compile = args.skip_thread_check = True
    if args.rounds < 1 or (args.repeats is not None and args.repeats < 1):
        parser.error("--rounds and --repeats must be at least 1")
    if any(b < 1 for b in args.batches):
        parser.error("--batches must be at least 1")
    if any(m <= 0 for m in args.tune_minutes):
        parser.error("--tune-minutes must be positive")
    args.tune_minutes = sorted(set(args.tune_minutes))
    return args


def calls_for(size: int, batch: int, args: argparse.Namespace) -> tuple[int, int]:
    """(timed, warm-up) calls a round for a case: `CALLS[size]` (`QUICK_CALLS` with --quick) divided
    by the batch, at least `MIN_CALLS`; `--repeats` sets the timed calls as given."""
    timed, warmup = QUICK_CALLS if args.quick else CALLS[size]
    timed, warmup = max(MIN_CALLS[0], timed // batch), max(MIN_CALLS[1], warmup // batch)
    return (args.repeats if args.repeats is not None else timed), warmup


# -- networks ---------------------------------------------------------------------------------


def network_name(arch: str, size: int) -> str:
    """The report's key of a network at an input size, e.g. "mobilenet_v2_224"."""
    return f"{arch}_{size}"


def build_network(arch: str, size: int) -> torch.nn.Module:
    """torchvision's `arch` with random weights (torch seed 0) and SIZES[size] classes, eval mode."""
    torchvision = import_torchvision()
    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(weights=None, num_classes=SIZES[size]).eval()


def example_input(size: int, batch: int) -> np.ndarray:
    """The fixed input of a case: standard normal (numpy seed 0), (batch, 3, size, size) float32."""
    return np.random.default_rng(0).standard_normal((batch, CHANNELS, size, size), dtype=np.float32)


# -- engines ----------------------------------------------------------------------------------


def torch_call(model: torch.nn.Module):
    """An engine call running `model` under torch.inference_mode on a numpy batch."""

    def call(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return call


def eager_engine(model: torch.nn.Module) -> Engine:
    """PyTorch eager on the torch threads set (THREADS)."""
    return Engine(torch_call(model), {"threads": torch.get_num_threads(), "version": torch.__version__})


def torch_compile_engine(model: torch.nn.Module, x: np.ndarray) -> Engine:
    """torch.compile (inductor, freezing, static shapes) of `model`, compiled by a first call on `x`."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    torch._dynamo.reset()  # every case compiles afresh, for its own batch
    call = torch_call(torch.compile(model, backend="inductor", dynamic=False))
    started = time.perf_counter()
    call(x)
    return Engine(
        call,
        {
            "compile_seconds": time.perf_counter() - started,
            "freezing": True,
            "threads": torch.get_num_threads(),
            "version": torch.__version__,
        },
    )


def onnxruntime_engine(model: torch.nn.Module, x: np.ndarray, folder: Path, threads: int = THREADS) -> Engine:
    """ONNX Runtime on `model` exported at `x`'s shape, `threads` intra-op threads."""
    import onnxruntime as ort

    path = folder / "model.onnx"
    exporter = export_onnx(model, x, path)
    return Engine(
        ort_engine(ort_session(path, threads)), {"version": ort.__version__, "exporter": exporter, "threads": threads}
    )


def openvino_engine(model: torch.nn.Module, x: np.ndarray, threads: int = THREADS) -> Engine:
    """OpenVINO on `model` converted with `x` as example and its input shape fixed to `x`'s, fp32."""
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=torch.from_numpy(x))
    converted.reshape(ov.PartialShape(list(x.shape)))
    return _with(openvino_compiled(ov.Core(), converted, threads), version=ov.__version__, input_shape=list(x.shape))


def adl_engine(model: torch.nn.Module, x: np.ndarray, path: Path, threads: int = THREADS, tune=None) -> Engine:
    """adl's library of `model` for batch len(x) at `path` (tuned with `tune`, a TuneRequest),
    loaded at the thread count `fastest_thread_count` picks from 1..`threads`."""
    from adl.backends.runtime import CompiledLibrary, fastest_thread_count
    from adl.backends.tvm.build import build_library

    started = time.perf_counter()
    info = build_library(model, x, {**TARGET, "num-cores": threads}, path, batch=len(x), tune=tune)
    compile_seconds = time.perf_counter() - started
    choice = fastest_thread_count(path, info.input_shape, threads)
    library = CompiledLibrary(path, info.input_shape, num_threads=choice.threads)
    row = {
        "compile_seconds": compile_seconds,
        "build_seconds": info.build_seconds,
        "library_bytes": info.library_bytes,
        "target": info.target,
        "input_shape": list(info.input_shape),
        "threads": choice.threads,
        "thread_median_ms": thread_medians_ms(choice),
        "tuning": info.tuning,
        "notes": list(info.notes),
        "tvm_version": info.tvm_version,
    }
    return Engine(library.run, row)


def thread_medians_ms(choice) -> dict[str, float]:
    """A ThreadChoice's median latency per thread count, in ms, keyed by the count."""
    return {str(n): seconds * 1e3 for n, seconds in choice.median_s.items()}


def tuned_name(minutes: float) -> str:
    """The engine name of the library tuned for `minutes`, e.g. "adl_tuned_15min"."""
    return f"adl_tuned_{minutes:g}min"


def make_engines(
    model: torch.nn.Module, x: np.ndarray, folder: Path, args: argparse.Namespace, tune_minutes: Sequence[float] = ()
) -> dict[str, Engine | dict]:
    """The engines of one case, in ENGINES' order, then the tuned libraries (one per minutes in
    `tune_minutes`); a failed one is {"error": ...}."""
    from adl.backends.tvm.build import TuneRequest

    makers = {
        "pytorch_eager": lambda: eager_engine(model),
        "torch_compile": lambda: torch_compile_engine(model, x),
        "onnxruntime": lambda: onnxruntime_engine(model, x, folder),
        "openvino": lambda: openvino_engine(model, x),
        "adl": lambda: adl_engine(model, x, folder / "adl.so"),
    }
    if args.skip_torch_compile:
        del makers["torch_compile"]
    for minutes in tune_minutes:
        request = TuneRequest(trials_per_task=TUNE_TRIALS, minutes=minutes, root=folder / f"tuning-{minutes:g}min")
        makers[tuned_name(minutes)] = lambda m=minutes, r=request: _with(
            adl_engine(model, x, folder / f"{tuned_name(m)}.so", tune=r), tune_minutes=m, trials_per_task=TUNE_TRIALS
        )
    out: dict[str, Engine | dict] = {}
    for name, make in makers.items():
        log(f"  building {name}")
        started = time.perf_counter()
        out[name] = guarded(make)
        state = out[name]["error"] if isinstance(out[name], dict) else "ok"
        log(f"    {name}: {state} ({time.perf_counter() - started:.1f} s)")
        torch.set_num_threads(THREADS)  # a build may have changed it
    return out


def output_check(logits: np.ndarray, reference: np.ndarray, tolerance: float = OUTPUT_TOLERANCE) -> dict:
    """How far an engine's logits are from eager's: the max absolute difference, the same over the
    largest |eager logit| ("relative_diff") and whether that is within `tolerance` ("output_ok")."""
    logits = np.asarray(logits, dtype=np.float32).reshape(reference.shape)
    difference = float(np.max(np.abs(logits - reference)))
    scale = float(np.max(np.abs(reference)))
    relative = difference / scale if scale > 0 else difference
    return {
        "max_abs_diff": difference,
        "logit_scale": scale,
        "relative_diff": relative,
        "output_ok": bool(relative <= tolerance),
    }


# -- measuring --------------------------------------------------------------------------------


def percent_of_peak(macs: int, latency_s: float | None, peak: Mapping, threads: int = THREADS) -> dict:
    """2 x `macs` FLOPs per `latency_s` as a percentage of each fp32 peak of the report's "peaks"
    (`PEAK_KINDS`: FMA microbenchmark, GEMM) on `threads` threads; None where a figure is missing."""
    out: dict[str, float | None] = {}
    for kind in PEAK_KINDS:
        flops = (((peak.get(kind) or {}).get("fp32_flops_per_s")) or {}).get(str(threads))
        out[kind] = 100.0 * 2 * macs / latency_s / flops if flops and latency_s else None
    return out


def timing_row(rounds: list[float], batch: int, macs: int, peak: Mapping) -> dict:
    """An engine's figures from its per-round medians (seconds): latency and rounds in ms,
    images/s and % of both peaks."""
    latency = statistics.median(rounds)
    return {
        "latency_ms": latency * 1e3,
        "rounds_ms": [r * 1e3 for r in rounds],
        "images_per_s": batch / latency,
        "percent_of_peak": percent_of_peak(macs, latency, peak),
    }


def thread_check(path: Path, input_shape: Sequence[int], threads: int = THREADS) -> dict:
    """`fastest_thread_count` of the library at `path`, quiet and then while a busy-looping
    process takes one core (killed afterwards): both choices and their per-count medians."""
    from adl.backends.runtime import fastest_thread_count

    quiet = fastest_thread_count(path, input_shape, threads)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(BURNER_START_S)
        loaded = fastest_thread_count(path, input_shape, threads)
    finally:
        burner.kill()
        burner.wait()
    return {
        "quiet": {"threads": quiet.threads, "median_ms": thread_medians_ms(quiet)},
        "loaded": {"threads": loaded.threads, "median_ms": thread_medians_ms(loaded)},
        "same": quiet.threads == loaded.threads,
        "load": "one `while True: pass` Python process",
    }


def measure_case(
    arch: str, size: int, batch: int, model: torch.nn.Module, args: argparse.Namespace, peak: Mapping, folder: Path
) -> tuple[dict, dict | None]:
    """One (network, size, batch) case: its row (MACs, calls, per engine the build figures, the
    output check against eager, latency, rounds, images/s, % of peak) and, for SPECIAL_CASE, the
    thread check (else None)."""
    special = (arch, size, batch) == SPECIAL_CASE
    x = example_input(size, batch)
    repeats, warmup = calls_for(size, batch, args)
    macs = count_macs(model, (CHANNELS, size, size), batch)
    engines = make_engines(model, x, folder, args, args.tune_minutes if special else ())
    reference = torch_call(model)(x)
    rows: dict[str, dict] = {}
    for name, made in engines.items():
        rows[name] = dict(made) if isinstance(made, dict) else dict(made.info)
        if isinstance(made, dict) or name == "pytorch_eager":
            continue
        try:
            rows[name].update(output_check(made.call(x), reference))
        except Exception as err:  # noqa: BLE001 - that engine fails, the others go on
            rows[name]["error"] = first_line(err)
            continue
        if name.startswith("adl") and not rows[name]["output_ok"]:
            log(f"    {name}: WRONG OUTPUT, relative difference {rows[name]['relative_diff']:.3g} > {OUTPUT_TOLERANCE}")
    calls = {
        name: made.call for name, made in engines.items() if isinstance(made, Engine) and "error" not in rows[name]
    }
    log(f"  timing {', '.join(calls)}: {args.rounds} interleaved rounds of {warmup} + {repeats} calls")
    for name, rounds in time_interleaved(calls, x, args.rounds, repeats, warmup).items():
        if isinstance(rounds, str):
            rows[name]["error"] = rounds
            continue
        rows[name].update(timing_row(rounds, batch, macs, peak))
        log(f"    {name}: {rows[name]['latency_ms']:.3f} ms")
    checked = None
    if special and not args.skip_thread_check and "latency_ms" in rows.get("adl", {}):
        log("  thread check: the adl library's thread count quiet and under load")
        checked = guarded(lambda: thread_check(folder / "adl.so", rows["adl"]["input_shape"]))
    row = {
        "batch": batch,
        "input_shape": list(x.shape),
        "macs": macs,
        "rounds": args.rounds,
        "repeats": repeats,
        "warmup": warmup,
        "engines": rows,
    }
    return row, checked


# -- goals ------------------------------------------------------------------------------------


def _engines(report: Mapping, arch: str, size: int, batch: int) -> Mapping:
    network = (report.get("networks") or {}).get(network_name(arch, size)) or {}
    return ((network.get("batches") or {}).get(str(batch)) or {}).get("engines") or {}


def _latency(row: Mapping | None) -> float | None:
    """An engine row's latency (ms); None where it failed, was not timed or gave wrong logits."""
    if not row or row.get("error") or row.get("output_ok") is False:
        return None
    return row.get("latency_ms")


def best_peer_ms(engines: Mapping) -> float | None:
    """The faster of ONNX Runtime's and OpenVINO's latency (the one measured where the other is not)."""
    measured = [v for v in (_latency(engines.get(peer)) for peer in PEERS) if v]
    return min(measured) if measured else None


def goals(report: Mapping) -> dict:
    """The bench's goals from its report, every one always present (value None, not met, where a
    figure was not measured or the engine failed, or the adl library's logits were wrong):
    adl / min(ONNX Runtime, OpenVINO) at 224x224 batch 1 at most PEER_TARGETS; adl / PyTorch
    eager at most GOAL_EAGER for every network, size and batch; MobileNetV2-224's untuned build
    within GOAL_COMPILE_SECONDS; its best library tuned for at most GOAL_TUNED_MINUTES (one the
    tuned schedules made, not the default one kept because it was faster) at most GOAL_TUNED of
    the faster peer; the thread count the same quiet and under load."""
    out: dict[str, dict] = {}
    peers = " / min(ONNX Runtime, OpenVINO)"
    for arch in ARCHITECTURES:
        engines = _engines(report, arch, 224, 1)
        out[f"{network_name(arch, 224)} b1: adl{peers}"] = goal(
            ratio(_latency(engines.get("adl")), best_peer_ms(engines)), PEER_TARGETS[arch]
        )
    for arch in ARCHITECTURES:
        for size in SIZES:
            for batch in BATCHES:
                engines = _engines(report, arch, size, batch)
                out[f"{network_name(arch, size)} b{batch}: adl / PyTorch eager"] = goal(
                    ratio(_latency(engines.get("adl")), _latency(engines.get("pytorch_eager"))), GOAL_EAGER
                )
    arch, size, batch = SPECIAL_CASE
    name = network_name(arch, size)
    engines = _engines(report, arch, size, batch)
    adl = engines.get("adl") or {}
    out[f"{name}: untuned compile seconds"] = goal(
        None if adl.get("error") else adl.get("compile_seconds"), GOAL_COMPILE_SECONDS
    )
    # only libraries that tuning made: where the tuned build lost to the default one, `build_library`
    # shipped the default library, and its latency says nothing about what tuning bought
    tuned = [
        _latency(row)
        for row in engines.values()
        if row.get("tune_minutes") is not None
        and row["tune_minutes"] <= GOAL_TUNED_MINUTES
        and (row.get("tuning") or {}).get("chosen") == "metaschedule"
    ]
    tuned = [t for t in tuned if t]
    out[f"{name} b{batch}: adl tuned <= {GOAL_TUNED_MINUTES:g} min{peers}"] = goal(
        ratio(min(tuned) if tuned else None, best_peer_ms(engines)), GOAL_TUNED
    )
    check = report.get("thread_check") or {}
    quiet, loaded = (check.get("quiet") or {}).get("threads"), (check.get("loaded") or {}).get("threads")
    same = None if quiet is None or loaded is None else float(quiet == loaded)
    out[f"{name} b{batch}: thread count the same quiet and under load of one busy core"] = goal(same, 1.0, True)
    return out


# -- the bench --------------------------------------------------------------------------------


def table(report: Mapping) -> list[str]:
    """The report's latencies (ms) as text lines: a row per case, a column per engine."""
    names = [
        *ENGINES,
        *sorted(
            {
                e
                for n in (report.get("networks") or {}).values()
                for b in (n.get("batches") or {}).values()
                for e in (b.get("engines") or {})
                if e not in ENGINES
            }
        ),
    ]
    lines = [f"{'network':<22}{'batch':>6}" + "".join(f"{n:>16}" for n in names) + f"{'adl threads':>13}"]
    for net, network in (report.get("networks") or {}).items():
        if network.get("error"):
            lines.append(f"{net:<22}{'':>6}  {network['error']}")
        for batch, case in (network.get("batches") or {}).items():
            engines = case.get("engines") or {}
            cells = []
            for name in names:
                row = engines.get(name) or {}
                cells.append(
                    f"{row['latency_ms']:.3f}" if "latency_ms" in row else ("error" if "error" in row else "-")
                )
            threads = (engines.get("adl") or {}).get("threads", "-")
            lines.append(f"{net:<22}{batch:>6}" + "".join(f"{c:>16}" for c in cells) + f"{threads!s:>13}")
    return lines


def settings(args: argparse.Namespace) -> dict:
    """The run's settings for the report."""
    return {
        "threads": THREADS,
        "target": TARGET,
        "networks": args.networks,
        "sizes": args.sizes,
        "batches": args.batches,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "calls": {str(s): {str(b): list(calls_for(s, b, args)) for b in args.batches} for s in args.sizes},
        "quick": args.quick,
        "torch_compile_ran": not args.skip_torch_compile,
        "thread_check": not args.skip_thread_check,
        "tune_minutes": args.tune_minutes,
        "tune_trials_per_task": TUNE_TRIALS,
        "output_tolerance": OUTPUT_TOLERANCE,
        "input": "standard normal, numpy seed 0, float32",
        "weights": "random (torch seed 0)",
        "adl": "build_library default schedules (untuned), fastest_thread_count 1..threads",
        "onnxruntime": "opset 17, ORT_ENABLE_ALL, 2 intra-op threads",
        "openvino": "INFERENCE_PRECISION_HINT f32, LATENCY, 2 threads, static input shape",
        "torch_compile": "inductor, freezing, dynamic=False",
    }


def write(path: Path, report: dict) -> None:
    """The report with its goals first, written to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"goals": goals(report), **report}, indent=1, default=str) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    origin = provenance(
        "none: latency of torchvision architectures with random weights (torch seed 0) on fixed "
        "standard normal inputs (numpy seed 0)"
    )
    started = time.perf_counter()
    torch.set_num_threads(THREADS)
    log("measuring this CPU's fp32 peaks (FMA microbenchmark, 4096x4096 GEMM)")
    peak = {"fma": peaks(THREADS), "gemm": gemm_peak(THREADS)}
    torch.set_num_threads(THREADS)
    log(f"peaks: FMA {peak['fma'].get('fp32_flops_per_s')}, GEMM {peak['gemm'].get('fp32_flops_per_s')} FLOP/s")
    report: dict = {
        "provenance": origin,
        "settings": settings(args),
        "versions": versions(("torch", "torchvision", "tvm", "onnx", "onnxruntime", "openvino")),
        "peaks": peak,
        "networks": {},
        "thread_check": None,
    }
    if args.skip_thread_check:
        report["thread_check"] = {"skipped": True}
    with tempfile.TemporaryDirectory(prefix="adl-bench-lowering-") as tmp:
        for arch in args.networks:
            for size in args.sizes:
                name = network_name(arch, size)
                network: dict = {
                    "architecture": arch,
                    "input_shape": [CHANNELS, size, size],
                    "classes": SIZES[size],
                    "batches": {},
                }
                report["networks"][name] = network
                try:
                    model = build_network(arch, size)
                except Exception as err:  # noqa: BLE001 - the next network may still run
                    network["error"] = first_line(err)
                    continue
                for batch in args.batches:
                    log(f"{name} batch {batch}")
                    folder = Path(tmp) / f"{name}-b{batch}"
                    folder.mkdir()
                    try:
                        network["batches"][str(batch)], checked = measure_case(
                            arch, size, batch, model, args, peak, folder
                        )
                    except Exception as err:  # noqa: BLE001 - the next case may still run
                        log(f"{name} batch {batch}: failed: {first_line(err)}")
                        network["batches"][str(batch)], checked = {"error": first_line(err)}, None
                    if checked is not None:
                        report["thread_check"] = checked
                    report["seconds"] = time.perf_counter() - started
                    write(args.out, report)  # after every case: a run that dies keeps what it measured
    write(args.out, report)
    for line in table(report):
        print(line)
    for name, row in goals(report).items():
        value = "-" if row["value"] is None else f"{row['value']:.3f}"
        print(f"{name}: {value} (target {row['target']:g}) {'met' if row['met'] else 'NOT MET'}")
    log(f"wrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
