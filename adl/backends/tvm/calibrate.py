"""`adl hw calibrate`: measure the roofline's parameters on the target with small TVM kernels.

Three probes, each a layer compiled and timed like a latency-table entry
(:mod:`adl.backends.tvm.layer_timing`):

* peak: the best FLOP rate of two compute-bound 3x3 convolutions (64 channels at 28x28,
  128 at 14x14) -- what TVM's schedules reach on this target, not the datasheet peak;
* bandwidth: a residual addition over 4 Mi floats (two 16 MiB inputs, one output; the
  bytes are counted as the roofline counts them);
* overhead: what one more layer costs beyond its arithmetic -- two libraries of tiny 1x1
  convolutions (8 channels at 4x4), with 1 and with 9 of them, timed whole:
  (t9 - t1) / 8 (the VM's dispatch, launching a kernel, its loop set-up).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from adl.ir.layers import KernelGroup, LayerDesc
from adl.ir.progress import Progress

COMPUTE_PROBES = (
    LayerDesc("conv64", "conv2d", (1, 64, 28, 28), (1, 64, 28, 28), (3, 3), activation="relu"),
    LayerDesc("conv128", "conv2d", (1, 128, 14, 14), (1, 128, 14, 14), (3, 3), activation="relu"),
)
MEMORY_PROBE = LayerDesc("stream", "add", (1, 64, 256, 256), (1, 64, 256, 256))
OVERHEAD_LAYERS = (1, 9)


def measure_roofline(
    target: dict,
    *,
    threads: int | None,
    repeats: int = 50,
    progress: Progress | None = None,
    session_factory: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """{"gflops", "bandwidth" (GB/s), "overhead" (s), "probes": {name: seconds}} for `target`."""
    from adl.backends.tvm.layer_timing import LayerTimer

    groups = {layer.name: KernelGroup(layer) for layer in (*COMPUTE_PROBES, MEMORY_PROBE)}
    timer = LayerTimer(target, threads=threads, repeats=repeats, session_factory=session_factory)
    seconds = timer.measure(list(groups.values()), progress)
    probe = {name: seconds[group.key] for name, group in groups.items()}
    gflops = max(layer.flops / probe[layer.name] for layer in COMPUTE_PROBES) / 1e9
    streamed = 3 * 4 * math.prod(MEMORY_PROBE.output_shape)  # two float32 inputs and the output
    bandwidth = streamed / probe[MEMORY_PROBE.name] / 1e9
    chain = _chain_latencies(target, threads, repeats, session_factory)
    probe.update({f"chain{n}": t for n, t in chain.items()})
    few, many = OVERHEAD_LAYERS
    overhead = max(0.0, (chain[many] - chain[few]) / (many - few))
    return {"gflops": gflops, "bandwidth": bandwidth, "overhead": overhead, "probes": probe}


def _chain_latencies(
    target: dict, threads: int | None, repeats: int, session_factory: Callable[[], Any] | None
) -> dict[int, float]:
    """Whole-library latency of n tiny conv+ReLU layers, for each n in OVERHEAD_LAYERS."""
    import tempfile
    from pathlib import Path

    import numpy as np
    from torch import nn

    from adl.backends.tvm.build import build_library
    from adl.backends.tvm.layer_timing import _let_compile_threads_settle
    from adl.backends.tvm.remote import library_latency, local_session

    with tempfile.TemporaryDirectory(prefix="adl-calibrate-") as folder:
        paths = {}
        for n in OVERHEAD_LAYERS:
            model = nn.Sequential(*[nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU()) for _ in range(n)]).eval()
            paths[n] = Path(folder) / f"chain{n}.so"
            build_library(model, np.zeros((1, 8, 4, 4), np.float32), target, paths[n])
        _let_compile_threads_settle()
        with (session_factory or local_session)() as session:
            return {
                n: library_latency(session, path, (1, 8, 4, 4), threads=threads, repeats=max(repeats, 100)).median_s
                for n, path in paths.items()
            }
