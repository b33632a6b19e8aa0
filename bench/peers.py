"""What the benches that put adl beside other engines share (bench/int8.py, bench/lowering.py):
torchvision's model builders, the MAC count, the peer engines (ONNX Runtime, OpenVINO), the
interleaved timing loop and this CPU's peaks.

Peaks (`peaks`, `gemm_peak`):

  fp32 FMA   a C microbenchmark compiled here (`cc -O2 -pthread` and the vector flags the CPU's
             /proc/cpuinfo flags allow: `-mavx512f` with avx512f, else `-mavx2 -mfma` with avx2
             and fma) times 12 independent chains of `_mm512_fmadd_ps` (32 FLOPs each) or
             `_mm256_fmadd_ps` (16 FLOPs each) on 1 and `threads` threads;
  int8 MAC   the same program's 12 chains of `_mm512_dpbusd_epi32` (64 int8 MACs each), only
             where the CPU has avx512_vnni (`-mavx512vnni`);
  fp32 GEMM  torch.mm of two 4096x4096 float32 matrices on `threads` torch threads, best of 3
             after a warm-up: 2 n^3 FLOPs over the time -- what a real kernel library reaches.

Standard library, numpy and torch at import; onnxruntime, openvino and torchvision when used.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from common import log

THREADS = 2  # the default thread count of every engine and peak
WARMUP = 10  # untimed calls before each engine's timed calls in a round
PAUSE_S = 0.05  # idle time before each engine's calls: the previous engine's spinning worker threads go to sleep


# -- networks ---------------------------------------------------------------------------------


def import_torchvision() -> types.ModuleType:
    """torchvision, with its compiled-op registrations stubbed out: they are CUDA-built here, and
    the model builders never use them."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torchvision

    return torchvision


def count_macs(model: torch.nn.Module, input_shape: Sequence[int], batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass of `batch` samples (`batch` times a batch-1 pass's):
    the Conv2d and Linear layers', counted by forward hooks (conv: out_h * out_w * out_channels *
    in_channels / groups * kh * kw)."""
    total = 0

    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total += (
                output.shape[-1]
                * output.shape[-2]
                * module.out_channels
                * module.in_channels
                // module.groups
                * kh
                * kw
            )
        else:
            total += int(np.prod(output.shape[:-1])) * module.in_features * module.out_features

    counted = (torch.nn.Conv2d, torch.nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return int(total) * int(batch)


def versions(modules: Sequence[str]) -> dict:
    """The versions of `modules` (None: not installed or not importable); torchvision imported
    through `import_torchvision`."""
    out: dict[str, str | None] = {}
    for module in modules:
        try:
            imported = import_torchvision() if module == "torchvision" else __import__(module)
            out[module] = str(imported.__version__)
        except Exception:  # noqa: BLE001 - not installed or not importable
            out[module] = None
    return out


# -- engines ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Engine:
    """One way of running a network: `call` maps a (N, C, H, W) float32 input to its (N, classes)
    logits. `info` goes into the JSON; `references` are PyTorch models to compare it with."""

    call: Callable[[np.ndarray], np.ndarray]
    info: dict = dataclasses.field(default_factory=dict)
    references: dict = dataclasses.field(default_factory=dict)


def first_line(error: BaseException) -> str:
    """An exception's first non-empty message line, prefixed by its type."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _with(engine: Engine, **info: Any) -> Engine:
    """`engine` with `info` added to its info."""
    engine.info.update(info)
    return engine


def guarded(make: Callable[[], Any]) -> Any:
    """`make()`, or {"error": its first line} where it raises (an engine, a diagnostic: each optional)."""
    try:
        return make()
    except Exception as err:  # noqa: BLE001 - every engine and diagnostic is optional: the bench goes on
        return {"error": first_line(err)}


# -- goals ------------------------------------------------------------------------------------


def goal(value: float | None, target: float, at_least: bool = False) -> dict:
    """{"value", "target", "met"}: met when `value` is <= `target` (>= with `at_least`); not without a value."""
    met = value is not None and (value >= target if at_least else value <= target)
    return {"value": value, "target": target, "met": bool(met)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator; None when either is missing (or zero)."""
    return numerator / denominator if numerator and denominator else None


def same_run_ratio(numerator: Sequence[float] | None, denominator: Sequence[float] | None) -> float | None:
    """The median over rounds of each round's ratio numerator / denominator (two engines' per-round
    latencies, timed back to back in every round), so that a slow spell of this shared machine,
    which slows both, cancels out -- a ratio of the two medians can pair a slow round of one with a
    fast round of the other. None when either is missing or they differ in length."""
    if not numerator or not denominator or len(numerator) != len(denominator):
        return None
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def export_onnx(model: torch.nn.Module, example: np.ndarray, path: Path) -> str:
    """Export `model` to ONNX at `path` (input "x", output "y", opset 17): the TorchScript exporter
    (dynamo=False, deprecated), else torch.export's. Returns which."""
    args = (torch.from_numpy(example),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, args, str(path), opset_version=17, dynamo=False, input_names=["x"], output_names=["y"]
            )
            return "torchscript"
        except Exception as err:  # noqa: BLE001 - the legacy exporter may be gone: use the new one
            log(f"TorchScript ONNX export failed ({first_line(err)}); using torch.export's")
            torch.onnx.export(
                model,
                args,
                str(path),
                opset_version=17,
                dynamo=True,
                external_data=False,
                input_names=["x"],
                output_names=["y"],
            )
            return "dynamo"


def ort_session(path: Path, threads: int = THREADS, **options: Any):
    """An ONNX Runtime CPU session on `threads` intra-op threads, every graph optimization on."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in options.items():
        setattr(so, key, value)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_engine(session) -> Callable[[np.ndarray], np.ndarray]:
    """An engine call running `session` on input "x"."""
    return lambda x: session.run(None, {"x": x})[0]


def openvino_config(threads: int = THREADS) -> dict:
    """compile_model's properties: `threads` threads, f32 precision (this CPU has bf16, which OpenVINO
    would otherwise run fp32 models in; int8 layers stay int8), latency mode."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    return dict(
        [
            props.inference_num_threads(threads),
            hints.inference_precision(ov.Type.f32),
            hints.performance_mode(hints.PerformanceMode.LATENCY),
        ]
    )


def openvino_compiled(core, model, threads: int = THREADS) -> Engine:
    """`model` compiled for the CPU with `openvino_config(threads)`, called through one infer request."""
    import openvino.properties as props
    import openvino.properties.hint as hints

    compiled = core.compile_model(model, "CPU", openvino_config(threads))
    request = compiled.create_infer_request()
    output = compiled.output(0)
    precision = compiled.get_property(hints.inference_precision())
    info = {
        "threads": int(compiled.get_property(props.inference_num_threads())),
        "inference_precision": precision.to_string() if hasattr(precision, "to_string") else str(precision),
        "performance_mode": str(compiled.get_property(hints.performance_mode())),
    }
    try:
        info["runtime_precisions"] = runtime_precisions(compiled)
    except Exception as err:  # noqa: BLE001 - a diagnostic only
        info["runtime_precisions"] = f"unknown: {first_line(err)}"
    return Engine(lambda x: request.infer({0: x})[output], info)


def runtime_precisions(compiled) -> dict[str, int]:
    """How many convolution / fully-connected / matmul nodes of the compiled model run at each
    precision (the CPU plugin's runtime graph, rt_info "runtimePrecision")."""
    kinds = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "InnerProduct")
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and str(info["layerType"].astype(str)) in kinds:
            precision = str(info["runtimePrecision"].astype(str)) if "runtimePrecision" in info else "?"
            counts[precision] = counts.get(precision, 0) + 1
    return dict(sorted(counts.items()))


# -- timing -----------------------------------------------------------------------------------


def time_round(call: Callable[[np.ndarray], Any], x: np.ndarray, repeats: int, warmup: int = WARMUP) -> float:
    """The median of `repeats` timed calls of `call(x)` after `warmup` untimed ones (seconds)."""
    for _ in range(warmup):
        call(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_interleaved(
    calls: Mapping[str, Callable[[np.ndarray], Any]],
    x: np.ndarray,
    rounds: int,
    repeats: int,
    warmup: int = WARMUP,
    pause_s: float = PAUSE_S,
) -> dict[str, list[float] | str]:
    """Per engine the median call of each round, all engines timed in every round in turn, each
    after `pause_s` idle seconds (ONNX Runtime's, OpenVINO's and TVM's worker threads spin a while
    after their last call, and would take the cores from the next engine); an engine that raises
    is dropped from the later rounds, its entry the error's first line."""
    out: dict[str, list[float] | str] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            if isinstance(out[name], str):
                continue
            time.sleep(pause_s)
            try:
                out[name].append(time_round(call, x, repeats, warmup))
            except Exception as err:  # noqa: BLE001 - that engine fails, the others go on
                out[name] = first_line(err)
    return out


# -- peaks ------------------------------------------------------------------------------------

PEAK_SOURCE = r"""
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* compiled with -DPEAK_AVX512 (-mavx512f: 16 fp32 lanes) or without (-mavx2 -mfma: 8 lanes);
   -DPEAK_VNNI (-mavx512vnni) adds the int8 kernel */
#ifdef PEAK_AVX512
typedef __m512 vec;
#define LANES 16
#define SET1(v) _mm512_set1_ps(v)
#define FMADD(a, b, c) _mm512_fmadd_ps(a, b, c)
#define ADD(a, b) _mm512_add_ps(a, b)
static float reduce(vec v) { return _mm512_reduce_add_ps(v); }
#else
typedef __m256 vec;
#define LANES 8
#define SET1(v) _mm256_set1_ps(v)
#define FMADD(a, b, c) _mm256_fmadd_ps(a, b, c)
#define ADD(a, b) _mm256_add_ps(a, b)
static float reduce(vec v) {
  float lanes[8], s = 0.f;
  _mm256_storeu_ps(lanes, v);
  for (int i = 0; i < 8; i++) s += lanes[i];
  return s;
}
#endif

static long iterations;
static volatile double sinks[64];

#ifdef PEAK_VNNI
static void *vnni(void *arg) {
  long id = (long)arg;
  __m512i x = _mm512_set1_epi8(1), y = _mm512_set1_epi8(3);
  __m512i a0 = _mm512_set1_epi32(0), a1 = _mm512_set1_epi32(1), a2 = _mm512_set1_epi32(2),
          a3 = _mm512_set1_epi32(3), a4 = _mm512_set1_epi32(4), a5 = _mm512_set1_epi32(5),
          a6 = _mm512_set1_epi32(6), a7 = _mm512_set1_epi32(7), a8 = _mm512_set1_epi32(8),
          a9 = _mm512_set1_epi32(9), a10 = _mm512_set1_epi32(10), a11 = _mm512_set1_epi32(11);
  for (long i = 0; i < iterations; i++) {
    __asm__ volatile("" : "+v"(x));
    a0 = _mm512_dpbusd_epi32(a0, x, y); a1 = _mm512_dpbusd_epi32(a1, x, y);
    a2 = _mm512_dpbusd_epi32(a2, x, y); a3 = _mm512_dpbusd_epi32(a3, x, y);
    a4 = _mm512_dpbusd_epi32(a4, x, y); a5 = _mm512_dpbusd_epi32(a5, x, y);
    a6 = _mm512_dpbusd_epi32(a6, x, y); a7 = _mm512_dpbusd_epi32(a7, x, y);
    a8 = _mm512_dpbusd_epi32(a8, x, y); a9 = _mm512_dpbusd_epi32(a9, x, y);
    a10 = _mm512_dpbusd_epi32(a10, x, y); a11 = _mm512_dpbusd_epi32(a11, x, y);
  }
  __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
              _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
  s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)));
  sinks[id] = (double)_mm512_reduce_add_epi32(s);
  return NULL;
}
#endif

static void *fp32_fma(void *arg) {
  long id = (long)arg;
  vec x = SET1(1e-3f), y = SET1(1e-3f);
  vec a0 = SET1(0.f), a1 = SET1(1.f), a2 = SET1(2.f), a3 = SET1(3.f), a4 = SET1(4.f), a5 = SET1(5.f),
      a6 = SET1(6.f), a7 = SET1(7.f), a8 = SET1(8.f), a9 = SET1(9.f), a10 = SET1(10.f), a11 = SET1(11.f);
  for (long i = 0; i < iterations; i++) {
    __asm__ volatile("" : "+v"(x));
    a0 = FMADD(x, y, a0); a1 = FMADD(x, y, a1); a2 = FMADD(x, y, a2); a3 = FMADD(x, y, a3);
    a4 = FMADD(x, y, a4); a5 = FMADD(x, y, a5); a6 = FMADD(x, y, a6); a7 = FMADD(x, y, a7);
    a8 = FMADD(x, y, a8); a9 = FMADD(x, y, a9); a10 = FMADD(x, y, a10); a11 = FMADD(x, y, a11);
  }
  vec s = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));
  s = ADD(s, ADD(ADD(a8, a9), ADD(a10, a11)));
  sinks[id] = (double)reduce(s);
  return NULL;
}

/* usage: peak vnni|fma THREADS ITERATIONS; prints int8 MAC/s (vnni) or fp32 FLOP/s (fma) */
int main(int argc, char **argv) {
  if (argc != 4) return 2;
  int is_vnni = strcmp(argv[1], "vnni") == 0;
  long threads = atol(argv[2]);
  iterations = atol(argv[3]);
  if (threads < 1 || threads > 64 || iterations < 1) return 2;
  void *(*kernel)(void *) = fp32_fma;
  if (is_vnni) {
#ifdef PEAK_VNNI
    kernel = vnni;
#else
    return 3; /* not compiled in */
#endif
  }
  pthread_t ids[64];
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long t = 0; t < threads; t++) pthread_create(&ids[t], NULL, kernel, (void *)t);
  for (long t = 0; t < threads; t++) pthread_join(ids[t], NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double seconds = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  double per_instruction = is_vnni ? 64.0 : 2.0 * LANES;
  printf("%.6e\n", (double)iterations * 12.0 * per_instruction * threads / seconds);
  return 0;
}
"""
PEAK_ITERATIONS = 50_000_000  # 600 M instructions a thread: a few tenths of a second
GEMM_N = 4096  # the GEMM peak's matrices: n x n float32


@dataclasses.dataclass(frozen=True)
class PeakKernels:
    """Which kernels of PEAK_SOURCE this CPU can run, and the compiler flags that build them."""

    fp32: str  # "avx512" (16 lanes) or "avx2" (8 lanes, FMA3)
    lanes: int
    int8: bool  # the VNNI kernel is compiled in
    cflags: tuple[str, ...]


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first processor's flags in `cpuinfo` (empty where there is none)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.split(":", 1)[0].strip() == "flags"), "")
    return set(line.partition(":")[2].split())


def peak_kernels(flags: set[str] | frozenset[str]) -> PeakKernels | None:
    """The peak kernels `flags` allow: the 512-bit FMA kernel with avx512f (and the VNNI one with
    avx512_vnni too), else the 256-bit one with avx2 and fma; None without either."""
    if "avx512f" in flags:
        vnni = "avx512_vnni" in flags
        cflags = ("-mavx512f", "-DPEAK_AVX512") + (("-mavx512vnni", "-DPEAK_VNNI") if vnni else ())
        return PeakKernels("avx512", 16, vnni, cflags)
    if "avx2" in flags and "fma" in flags:
        return PeakKernels("avx2", 8, False, ("-mavx2", "-mfma"))
    return None


def _compile_peak(command: list[str]) -> subprocess.CompletedProcess:
    """Run the C compiler on PEAK_SOURCE (`command` is its full command line)."""
    return subprocess.run(command, capture_output=True, text=True)


def _run_peak(binary: Path, kernel: str, threads: int, iterations: int) -> float:
    """One run of the compiled peak program: `kernel`'s ops per second on `threads` threads."""
    done = subprocess.run(
        [str(binary), kernel, str(threads), str(iterations)], capture_output=True, text=True, check=True
    )
    return float(done.stdout)


def peaks(
    threads: int = THREADS, tries: int = 3, iterations: int = PEAK_ITERATIONS, flags: set[str] | None = None
) -> dict:
    """This CPU's fp32 FLOP/s (FMA) and, with avx512_vnni, int8 MAC/s (VNNI) peaks on 1 and
    `threads` threads, the best of `tries` runs each, keyed by thread count ("1", "2"); a peak
    that cannot be measured is None, with the reason under "error" (both) or "int8_note".
    `flags`: the CPU's flags (default: /proc/cpuinfo's)."""
    kernels = peak_kernels(cpu_flags() if flags is None else flags)
    if kernels is None:
        return {
            "int8_macs_per_s": None,
            "fp32_flops_per_s": None,
            "error": "this CPU lacks avx512f and avx2+fma (or /proc/cpuinfo has no flags)",
        }
    compiler = shutil.which("cc")
    if compiler is None:
        return {
            "int8_macs_per_s": None,
            "fp32_flops_per_s": None,
            "fp32_kernel": kernels.fp32,
            "error": "no C compiler (cc)",
        }
    options = ["-O2", "-pthread", *kernels.cflags]
    out: dict = {
        "method": f"12 independent accumulator chains, {iterations} iterations a thread, best of {tries}",
        "compiler": " ".join([compiler, *options]),
        "fp32_kernel": f"{kernels.fp32} FMA ({kernels.lanes} fp32 lanes)",
        "int8_kernel": "avx512_vnni vpdpbusd" if kernels.int8 else None,
    }
    with tempfile.TemporaryDirectory(prefix="peak-") as folder:
        source, binary = Path(folder) / "peak.c", Path(folder) / "peak"
        source.write_text(PEAK_SOURCE)
        built = _compile_peak([compiler, *options, str(source), "-o", str(binary)])
        if built.returncode != 0:
            return {
                **out,
                "int8_macs_per_s": None,
                "fp32_flops_per_s": None,
                "error": f"cc failed: {(built.stderr.strip().splitlines() or ['?'])[0]}",
            }
        counts = sorted({1, threads})
        wanted = [("fp32_flops_per_s", "fma")] + ([("int8_macs_per_s", "vnni")] if kernels.int8 else [])
        for key, kernel in wanted:
            out[key] = {str(t): max(_run_peak(binary, kernel, t, iterations) for _ in range(tries)) for t in counts}
    if not kernels.int8:
        out["int8_macs_per_s"] = None
        out["int8_note"] = "this CPU lacks avx512_vnni: no int8 peak"
    return out


def gemm_peak(threads: int = THREADS, n: int = GEMM_N, tries: int = 3) -> dict:
    """fp32 FLOP/s of torch.mm on two n x n float32 matrices on `threads` torch threads: 2 n^3
    FLOPs over the best of `tries` timed calls after one warm-up call; {"fp32_flops_per_s": None,
    "error": ...} where it fails."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=generator)
        b = torch.randn(n, n, generator=generator)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)
        best = float("inf")
        for _ in range(tries):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001 - e.g. out of memory: no GEMM peak
        return {"fp32_flops_per_s": None, "error": first_line(err)}
    finally:
        torch.set_num_threads(previous)
    return {
        "fp32_flops_per_s": {str(threads): 2.0 * n**3 / best},
        "seconds": best,
        "method": f"torch.mm of two {n}x{n} float32 matrices, {threads} threads, best of {tries} after a warm-up",
        "torch": torch.__version__,
    }
