"""Integer code that is faster: adl's int8 libraries against adl's fp32 libraries and against
ONNX Runtime int8 and OpenVINO int8, batch 1, 2 threads, on this CPU.

    python bench/int8.py [--quick] [--networks NAME ...] [--engines NAME ...] [--out FILE]
                         [--rounds N] [--repeats N] [--calibration N] [--epochs N]

Networks (`NETWORKS`): torchvision's MobileNetV2 at 224x224 (1000 classes) and at 32x32 (10
classes), torchvision's ResNet-18 at 224x224 -- random weights (weights=None, torch seed 0):
latency only -- and adl's own MobileNetV2-style network on Fashion-MNIST, trained (`--epochs`),
the one network with real data: the accuracy of every engine on the 10,000 test images.

Engines (`ENGINES`), each optional (a missing package or an error is recorded as the engine's
"error" and the bench goes on):

  adl_fp32       `build_library` of the fp32 model (default schedules, untuned)
  adl_int8       the `haq` pass's deployment at 8 bits everywhere (`quantize_model`: BatchNorm folded,
                 per-channel weights, percentile-calibrated activations; `deployable_model`: integer
                 layers and int8 -> int8 hand-offs), post-training (no fine-tuning, like the peers)
  ort_fp32       ONNX Runtime on the model exported to ONNX (opset 17)
  ort_int8       `onnxruntime.quantization.quantize_static` (QDQ, per-channel, u8 activations, s8 weights)
  openvino_fp32  `openvino.convert_model`, compiled with an f32 inference precision hint
  openvino_int8  `nncf.quantize` of that model (defaults)

Every quantizer sees the same calibration images (`--calibration`): for the torchvision
networks random uniform [0, 1) images normalised with ImageNet's mean and std (seed 0), for
Fashion-MNIST the first training images.

Timing: all engines of a network in one process, in interleaved rounds (`--rounds`); in each
round every engine makes 10 warm-up calls and `--repeats` timed calls (time.perf_counter around
each) on one fixed batch-1 input, after a pause (`PAUSE_S`) that lets the previous engine's
spinning worker threads go idle, and the round's figure is the median call; an engine's latency
is the median over rounds (the rounds are kept, `rounds_s`). The goals compare engines by
same-run ratios (`peers.same_run_ratio`: the median over rounds of each round's ratio), since this
shared VM's speed changes between rounds and a ratio of two medians can pair unlike rounds.

Peaks (`peers.peaks`): a C microbenchmark compiled here (`cc -O2 -pthread` with the vector flags
the CPU's flags allow) times 12 independent chains of `_mm512_dpbusd_epi32` (64 int8 MACs each,
only with avx512_vnni) and of `_mm512_fmadd_ps` (32 FLOPs each; `_mm256_fmadd_ps`, 16 FLOPs, on
a CPU without AVX-512) on 1 and 2 threads; each engine's MACs / latency is reported as a
percentage of the 2-thread int8 MAC peak (int8 engines) or fp32 FLOP peak (fp32 engines, 2
FLOPs a MAC). The peer engines, the MAC count and the timing loop are bench/peers.py's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from common import log, train
from peers import (
    WARMUP,
    Engine,
    _with,
    count_macs,
    export_onnx,
    first_line,
    goal,
    guarded,
    import_torchvision,
    openvino_compiled,
    ort_engine,
    ort_session,
    peaks,
    same_run_ratio,
    time_interleaved,
    versions,
)
from provenance import provenance

# what the figures depend on (`python -m bench.status`)
MEASURES = (
    "bench/int8.py",
    "bench/peers.py",
    "bench/common.py",
    "adl/models",
    "adl/passes/haq",
    "adl/backends/tvm",
    "adl/backends/runtime.py",
    "adl/ir/layers.py",
    "adl/models/folding.py",
    "adl/data",
)

THREADS = 2
TARGET = {"kind": "llvm", "num-cores": THREADS}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_OPTIONS = {"width": 1.0, "head": 128, "kernels": (3,) * 6, "expand": (1, 6, 6, 6, 6, 6)}
FASHION_DATA = "Fashion-MNIST (official split: 60,000 training, 10,000 test images)"
RANDOM_NOTE = "random weights: not an accuracy"


@dataclasses.dataclass(frozen=True)
class Network:
    """One network of the bench: where it comes from, its per-sample input shape and its classes."""

    source: str  # "torchvision" (random weights) or "adl" (trained on Fashion-MNIST)
    builder: str  # torchvision.models.<builder>, or the adl model family
    input_shape: tuple[int, ...]  # (C, H, W)
    classes: int


NETWORKS: dict[str, Network] = {
    "mobilenet_v2_224": Network("torchvision", "mobilenet_v2", (3, 224, 224), 1000),
    "mobilenet_v2_32": Network("torchvision", "mobilenet_v2", (3, 32, 32), 10),
    "resnet18_224": Network("torchvision", "resnet18", (3, 224, 224), 1000),
    "fashion": Network("adl", "mobilenet", (1, 28, 28), 10),
}
ENGINES = ("adl_fp32", "adl_int8", "ort_fp32", "ort_int8", "openvino_fp32", "openvino_int8")
INT8_ENGINES = tuple(e for e in ENGINES if e.endswith("_int8"))

# goals
SPEEDUP_TARGET = 2.0  # adl int8 at least this many times faster than adl fp32
PEER_NETWORKS = ("mobilenet_v2_224", "resnet18_224")
PEERS = {"ort_int8": "ONNX Runtime int8", "openvino_int8": "OpenVINO int8"}
ACCURACY_POINTS = 1.0  # fashion: adl int8 within this many points of fp32

# the defaults of the settings `--quick` shrinks: (full, quick)
DEFAULTS = {"rounds": (7, 3), "repeats": (100, 20), "calibration": (64, 16), "epochs": (4, 1)}


# -- settings ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; settings not given take their `DEFAULTS` (the quick ones with --quick)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, calls, images and epochs (a smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/int8.json"))
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=list(NETWORKS))
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    for name, (full, quick) in DEFAULTS.items():
        parser.add_argument(f"--{name}", type=int, default=None, help=f"default {full} ({quick} with --quick)")
    args = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    args.networks = list(dict.fromkeys(args.networks))
    args.engines = [e for e in ENGINES if e in args.engines]
    return args


# -- networks ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    """A network ready for the engines: the fp32 model (eval mode), the calibration images, the
    images its engines are evaluated on (with labels for Fashion-MNIST) and its fp32 accuracy."""

    model: torch.nn.Module
    input_shape: tuple[int, ...]
    calibration: np.ndarray  # (N, C, H, W) float32
    eval_x: np.ndarray
    eval_y: np.ndarray | None = None  # None: random weights, no labels
    fp32_accuracy: float | None = None

    @property
    def example(self) -> np.ndarray:
        """The fixed batch-1 input every engine is built for and timed on."""
        return np.ascontiguousarray(self.calibration[:1])


def synthetic_images(count: int, shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """`count` uniform [0, 1) RGB images of `shape` (C, H, W), normalised with ImageNet's mean and std."""
    rng = np.random.default_rng(seed)
    x = rng.random((count, *shape), dtype=np.float32)
    mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(IMAGENET_STD, np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def prepare(name: str, args: argparse.Namespace) -> Prepared:
    """Build (and for Fashion-MNIST train) network `name` and its calibration images."""
    network = NETWORKS[name]
    if network.source == "torchvision":
        torchvision = import_torchvision()
        torch.manual_seed(0)
        model = getattr(torchvision.models, network.builder)(weights=None, num_classes=network.classes).eval()
        calibration = synthetic_images(args.calibration, network.input_shape)
        return Prepared(model, network.input_shape, calibration, calibration)
    from adl.data import load_dataset
    from adl.models.zoo import build_model

    dataset = load_dataset("fashion_mnist")
    torch.manual_seed(0)
    model = build_model(
        network.builder,
        FASHION_OPTIONS,
        input_shape=tuple(dataset.input_shape),
        classes=dataset.classes,
        mean=dataset.mean,
        std=dataset.std,
    )
    log(f"{name}: training the fp32 network for {args.epochs} epochs")
    model, accuracy = train(model, dataset, args.epochs, 0.003, seed=0)
    torch.set_num_threads(THREADS)  # training chose its own
    calibration = np.ascontiguousarray(dataset.x_train[: args.calibration], dtype=np.float32)
    return Prepared(
        model.eval(),
        tuple(dataset.input_shape),
        calibration,
        np.ascontiguousarray(dataset.x_test, dtype=np.float32),
        dataset.y_test,
        float(accuracy),
    )


def torch_logits(model: torch.nn.Module, x: np.ndarray, chunk: int = 500) -> np.ndarray:
    """`model`'s logits (float32) for the batch `x`, `chunk` images at a time."""
    with torch.inference_mode():
        parts = [
            model(torch.from_numpy(np.ascontiguousarray(x[i : i + chunk]))).float().numpy()
            for i in range(0, len(x), chunk)
        ]
    return np.concatenate(parts)


# -- engines ----------------------------------------------------------------------------------


def adl_library(model: torch.nn.Module, prepared: Prepared, path: Path) -> Engine:
    """`model` built by adl for TARGET at `path` and loaded with THREADS runtime threads."""
    from adl.backends.runtime import CompiledLibrary
    from adl.backends.tvm.build import build_library

    info = build_library(model, prepared.example, TARGET, path)
    library = CompiledLibrary(path, (1, *prepared.input_shape), num_threads=THREADS)
    return Engine(
        library.run,
        {"build_seconds": info.build_seconds, "library_bytes": info.library_bytes, "int8_kernels": info.int8_kernels},
    )


def adl_fp32(prepared: Prepared, folder: Path) -> Engine:
    """adl's fp32 library (default schedules)."""
    return adl_library(prepared.model, prepared, folder / "adl_fp32.so")


def adl_int8(prepared: Prepared, folder: Path) -> Engine:
    """adl's int8 library: the haq pass's deployment with every layer at 8 bits, post-training."""
    from adl.passes.haq.budget import BitPolicy, quantized_layers
    from adl.passes.haq.lowering import deployable_model
    from adl.passes.haq.model import quantize_model
    from adl.passes.haq.search import deployed_layers

    n = len(quantized_layers(deployed_layers(prepared.model, prepared.input_shape)))
    fake = quantize_model(prepared.model, BitPolicy.uniform(n, 8), torch.from_numpy(prepared.calibration)).eval()
    deployment = deployable_model(fake, "llvm")
    engine = adl_library(deployment.model, prepared, folder / "adl_int8.so")  # info: int8_kernels by path
    engine.info.update(
        quantized_layers=n,
        integer_layers=sum(d.arithmetic == "int8" for d in deployment.layers),
        layers=len(deployment.layers),
        handoffs=len(deployment.handoffs),
        handoff_note=deployment.handoff_note,
    )
    fallbacks = sorted({d.reason for d in deployment.layers if d.arithmetic != "int8"})
    if fallbacks:
        engine.info["fallback_reasons"] = fallbacks
    engine.references = {"integer": deployment.model.eval(), "fake": fake}
    return engine


class CalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol (`get_next`, None at the end): the
    calibration images one at a time, as input "x"."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        self.rewind()

    def get_next(self) -> dict | None:
        return next(self.batches, None)

    def rewind(self) -> None:
        self.batches = iter([{"x": np.ascontiguousarray(self.images[i : i + 1])} for i in range(len(self.images))])


def integer_op_counts(path: Path) -> dict[str, int]:
    """The integer operators (QLinear*, *Integer, QGemm) of an ONNX model and how many of each."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type.startswith("QLinear") or node.op_type.endswith("Integer") or node.op_type == "QGemm":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def ort_engines(prepared: Prepared, folder: Path, wanted: Sequence[str]) -> dict[str, Engine | dict]:
    """ONNX Runtime fp32 and/or int8 (static QDQ quantization) engines, by name; an error dict where one failed."""
    import onnxruntime as ort

    out: dict[str, Engine | dict] = {}
    fp32_path = folder / "ort_fp32.onnx"
    exporter = export_onnx(prepared.model, prepared.example, fp32_path)
    base = {"version": ort.__version__, "exporter": exporter}
    if "ort_fp32" in wanted:
        out["ort_fp32"] = guarded(lambda: Engine(ort_engine(ort_session(fp32_path, THREADS)), dict(base)))
    if "ort_int8" in wanted:
        out["ort_int8"] = guarded(lambda: ort_int8(prepared, folder, fp32_path, base))
    return out


def ort_int8(prepared: Prepared, folder: Path, fp32_path: Path, base: dict) -> Engine:
    """`quantize_static` (QDQ, per-channel, u8 activations, s8 weights, MinMax calibration) after
    `quant_pre_process` (where that fails, on the exported model as is)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    info = dict(base)
    source = folder / "ort_pre.onnx"
    try:
        quant_pre_process(str(fp32_path), str(source))
        info["quant_pre_process"] = True
    except Exception as err:  # noqa: BLE001 - optional step
        info["quant_pre_process"] = f"failed: {first_line(err)}"
        source = fp32_path
    int8_path = folder / "ort_int8.onnx"
    quantize_static(
        str(source),
        str(int8_path),
        CalibrationReader(prepared.calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    optimized = folder / "ort_int8_optimized.onnx"
    session = ort_session(int8_path, THREADS, optimized_model_filepath=str(optimized))
    try:
        info["integer_ops"] = integer_op_counts(optimized)  # what the session runs after fusing the QDQ pairs
    except Exception as err:  # noqa: BLE001 - a diagnostic only
        info["integer_ops"] = f"unknown: {first_line(err)}"
    return Engine(ort_engine(session), info)


def openvino_engines(prepared: Prepared, wanted: Sequence[str]) -> dict[str, Engine | dict]:
    """OpenVINO fp32 and/or int8 (NNCF post-training quantization, defaults) engines, by name."""
    import openvino as ov

    core = ov.Core()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(prepared.model, example_input=torch.from_numpy(prepared.example))
    out: dict[str, Engine | dict] = {}
    if "openvino_fp32" in wanted:  # compiled first: nncf.quantize must not change what it runs
        out["openvino_fp32"] = guarded(lambda: _with(openvino_compiled(core, model, THREADS), version=ov.__version__))
    if "openvino_int8" in wanted:
        out["openvino_int8"] = guarded(lambda: openvino_int8(core, model, prepared))
    return out


def openvino_int8(core, model, prepared: Prepared) -> Engine:
    """`nncf.quantize` of the converted model on every calibration image, then compiled."""
    import nncf
    import openvino as ov

    images = [np.ascontiguousarray(prepared.calibration[i : i + 1]) for i in range(len(prepared.calibration))]
    quantized = nncf.quantize(model.clone(), nncf.Dataset(images), subset_size=len(images))
    return _with(openvino_compiled(core, quantized, THREADS), version=ov.__version__, nncf_version=nncf.__version__)


def make_engines(prepared: Prepared, folder: Path, wanted: Sequence[str]) -> dict[str, Engine | dict]:
    """The engines of `wanted` for one network, in ENGINES' order; a failed one is {"error": ...}."""
    out: dict[str, Engine | dict] = {}
    groups: list[tuple[tuple[str, ...], Callable[[], dict[str, Engine | dict]]]] = [
        (("adl_fp32",), lambda: {"adl_fp32": adl_fp32(prepared, folder)}),
        (("adl_int8",), lambda: {"adl_int8": adl_int8(prepared, folder)}),
        (("ort_fp32", "ort_int8"), lambda: ort_engines(prepared, folder, wanted)),
        (("openvino_fp32", "openvino_int8"), lambda: openvino_engines(prepared, wanted)),
    ]
    for names, make in groups:
        names = tuple(n for n in names if n in wanted)
        if not names:
            continue
        log(f"building {', '.join(names)}")
        started = time.perf_counter()
        try:
            made = make()
        except Exception as err:  # noqa: BLE001 - a missing package or a failed export: those engines fail
            made = {n: {"error": first_line(err)} for n in names}
        for name in names:
            out[name] = made.get(name, {"error": "not built"})
            state = out[name]["error"] if isinstance(out[name], dict) else "ok"
            log(f"  {name}: {state}")
        log(f"  ({time.perf_counter() - started:.1f} s)")
    return {name: out[name] for name in ENGINES if name in out}


# -- measuring --------------------------------------------------------------------------------


def run_all(call: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """An engine's logits (N, classes) for the batch `x`, one batch-1 call per image."""
    return np.concatenate(
        [np.asarray(call(np.ascontiguousarray(x[i : i + 1])), np.float32).reshape(1, -1) for i in range(len(x))]
    )


def evaluate(name: str, engine: Engine, prepared: Prepared, fp32_classes: np.ndarray) -> dict:
    """An engine's accuracy figures: on Fashion-MNIST its test accuracy (and an int8 engine's drop
    from the fp32 network's); on random weights its top-1 agreement with the PyTorch fp32 model
    on the calibration images; for adl_int8 also its agreement with the PyTorch integer model
    (bit-identical logits, top-1) and the fake-quantized model's accuracy."""
    logits = run_all(engine.call, prepared.eval_x)
    classes = logits.argmax(1)
    row: dict = {"top1_agreement_with_torch_fp32": float(np.mean(classes == fp32_classes))}
    if prepared.eval_y is None:
        row["note"] = RANDOM_NOTE + f" (top-1 agreement on the {len(classes)} calibration images)"
    else:
        row["test_accuracy"] = float(np.mean(classes == prepared.eval_y))
        if name in INT8_ENGINES and prepared.fp32_accuracy is not None:
            row["accuracy_drop_points"] = 100.0 * (prepared.fp32_accuracy - row["test_accuracy"])
    if "integer" in engine.references:
        reference = torch_logits(engine.references["integer"], prepared.eval_x)
        identical = [np.array_equal(a, b) for a, b in zip(logits, reference)]
        row["bit_identical_to_integer_model"] = float(np.mean(identical))
        row["top1_agreement_with_integer_model"] = float(np.mean(classes == reference.argmax(1)))
        row["max_abs_difference_to_integer_model"] = float(np.max(np.abs(logits - reference)))
    if "fake" in engine.references and prepared.eval_y is not None:
        fake = torch_logits(engine.references["fake"], prepared.eval_x).argmax(1)
        row["fake_quant_test_accuracy"] = float(np.mean(fake == prepared.eval_y))
    return row


def percent_of_peak(engine: str, macs: int, latency_s: float | None, peaks: Mapping) -> float | None:
    """An engine's MACs per second as a percentage of this CPU's THREADS-thread peak: the int8 MAC
    peak for int8 engines, the fp32 FLOP peak (2 FLOPs a MAC) for the others; None without one."""
    key = "int8_macs_per_s" if engine.endswith("_int8") else "fp32_flops_per_s"
    peak = (peaks.get(key) or {}).get(str(THREADS))
    if not peak or not latency_s:
        return None
    work = macs if engine.endswith("_int8") else 2 * macs
    return 100.0 * work / latency_s / peak


# -- goals ------------------------------------------------------------------------------------


def _engine(row: Mapping, engine: str) -> Mapping:
    return ((row.get("engines") or {}).get(engine)) or {}


def goals(report: Mapping) -> dict:
    """The bench's goals from its report: for every network, adl int8 >= 2x faster than adl
    fp32; on MobileNetV2 and ResNet-18 at 224x224, adl int8 no slower than ONNX Runtime's and
    OpenVINO's int8; on Fashion-MNIST, the library's logits bit-identical to the PyTorch integer
    model's and adl int8 within a point of fp32's accuracy. A figure that is missing (an engine
    failed or was not run) leaves its goal unmet with value None."""
    out: dict[str, dict] = {}
    for net, row in (report.get("networks") or {}).items():
        int8 = _engine(row, "adl_int8").get("rounds_s")
        speedup = same_run_ratio(_engine(row, "adl_fp32").get("rounds_s"), int8)
        out[f"{net}: adl int8 >= {SPEEDUP_TARGET}x faster than adl fp32"] = goal(speedup, SPEEDUP_TARGET, True)
        if net in PEER_NETWORKS:
            for peer, text in PEERS.items():
                out[f"{net}: adl int8 latency <= {text}"] = goal(
                    same_run_ratio(int8, _engine(row, peer).get("rounds_s")), 1.0, False
                )
        if net == "fashion":
            adl = _engine(row, "adl_int8")
            out["fashion: library logits bit-identical to the PyTorch integer model"] = goal(
                adl.get("bit_identical_to_integer_model"), 1.0, True
            )
            fp32, accuracy = row.get("fp32_accuracy"), adl.get("test_accuracy")
            drop = 100.0 * (fp32 - accuracy) if fp32 is not None and accuracy is not None else None
            out[f"fashion: adl int8 accuracy within {ACCURACY_POINTS:g} point of fp32"] = goal(
                drop, ACCURACY_POINTS, False
            )
    return out


# -- the bench --------------------------------------------------------------------------------


def measure_network(name: str, args: argparse.Namespace, peak: Mapping) -> dict:
    """One network's row: its MACs, input shape, and per engine latency, rounds, % of peak and
    accuracy figures (or {"error": ...})."""
    network = NETWORKS[name]
    log(f"{name}: preparing ({network.source} {network.builder}, {network.input_shape})")
    prepared = prepare(name, args)
    torch.set_num_threads(THREADS)
    row: dict = {
        "source": network.source,
        "input_shape": [1, *prepared.input_shape],
        "macs": count_macs(prepared.model, prepared.input_shape),
        "weights": "trained" if prepared.eval_y is not None else "random (torch seed 0)",
        "calibration_images": len(prepared.calibration),
    }
    if prepared.fp32_accuracy is not None:
        row["fp32_accuracy"] = prepared.fp32_accuracy
    with tempfile.TemporaryDirectory(prefix=f"int8-{name}-") as folder:
        engines = make_engines(prepared, Path(folder), args.engines)
        rows: dict[str, dict] = {}
        fp32_classes = torch_logits(prepared.model, prepared.eval_x).argmax(1)
        for engine, made in engines.items():
            if isinstance(made, dict):
                rows[engine] = made
                continue
            try:
                rows[engine] = {**made.info, **evaluate(engine, made, prepared, fp32_classes)}
            except Exception as err:  # noqa: BLE001 - that engine fails, the others go on
                rows[engine] = {**made.info, "error": first_line(err)}
        calls = {e: m.call for e, m in engines.items() if not isinstance(m, dict) and "error" not in rows[e]}
        log(f"{name}: timing {', '.join(calls)} in {args.rounds} interleaved rounds of {args.repeats} calls")
        timed = time_interleaved(calls, prepared.example, args.rounds, args.repeats)
    for engine, rounds in timed.items():
        if isinstance(rounds, str):
            rows[engine]["error"] = rounds
            continue
        latency = statistics.median(rounds)
        rows[engine].update(
            latency_s=latency, rounds_s=rounds, percent_of_peak=percent_of_peak(engine, row["macs"], latency, peak)
        )
        log(f"  {engine}: {latency * 1e6:.1f} us")
    row["engines"] = rows
    return row


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    uses_fashion = "fashion" in args.networks
    origin = provenance(
        ("Fashion-MNIST for `fashion` (" + FASHION_DATA + "); " if uses_fashion else "")
        + "torchvision networks: random weights (torch seed 0), synthetic inputs (uniform [0, 1) "
        "normalised with ImageNet's mean and std, seed 0)"
    )
    started = time.perf_counter()
    torch.set_num_threads(THREADS)
    log("measuring this CPU's peaks")
    peak = peaks(THREADS)
    log(f"peaks: {peak.get('int8_macs_per_s')} int8 MAC/s, {peak.get('fp32_flops_per_s')} fp32 FLOP/s")
    networks: dict[str, dict] = {}
    for name in args.networks:
        try:
            networks[name] = measure_network(name, args, peak)
        except Exception as err:  # noqa: BLE001 - the next network may still run
            log(f"{name}: failed: {first_line(err)}")
            networks[name] = {"error": first_line(err)}
    report: dict = {
        "provenance": origin,
        "settings": {
            "threads": THREADS,
            "batch": 1,
            "target": TARGET,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "warmup": WARMUP,
            "calibration": args.calibration,
            "epochs": args.epochs,
            "quick": args.quick,
            "networks": args.networks,
            "engines": args.engines,
            "schedules": "adl default (untuned)",
            "adl_int8": "haq pass, 8 bits everywhere, percentile calibration, no fine-tuning",
            "ort": "quantize_static QDQ, per-channel, QUInt8 activations, QInt8 weights, MinMax",
            "openvino": "nncf.quantize defaults; INFERENCE_PRECISION_HINT f32, LATENCY",
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                **versions(("torchvision", "tvm", "onnx", "onnxruntime", "openvino", "nncf")),
            },
        },
        "peaks": peak,
        "networks": networks,
    }
    report = {"goals": goals(report), **report, "seconds": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for name, row in report["goals"].items():
        log(f"{name}: {row['value']} ({'met' if row['met'] else 'not met'})")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
