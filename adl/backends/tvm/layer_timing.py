"""Time single layers as the kernels TVM compiles for them: the measurements behind the
`measured` cost model's latency table (ProxylessNAS's lookup table, measured through the
same compiler that builds the artifact).

A `KernelGroup` (:mod:`adl.ir.layers`) is what one fused kernel of a whole network
computes: a conv/linear layer with its bias (a folded BatchNorm) and activation, plus the residual addition that follows
it when there is one (TVM fuses ``conv -> bias -> [act] -> add -> [act]`` into one kernel),
or a pooling or stand-alone addition layer.

Measuring a group (:func:`compile_group`, then :func:`time_compiled`):

1. A one-layer PyTorch model of the group (NCHW, batch 1, random weights) goes through the
   same lowering as a whole network: ``torch.export`` -> Relax -> adl's default CPU pipeline
   (:func:`adl.backends.tvm.default_schedules.default_cpu_pipeline`). Inside a network, the
   layout transforms between NCHW and NHWC happen once, at its input and output; in a
   one-layer model they surround the layer. So the *boundary* kernels (pure transposes and
   layout transforms) are dropped, and every other PrimFunc, the layer's own work, is built
   into one shared library with its argument shapes recorded.
2. Each kernel of that library is timed alone with ``time_evaluator`` on random arguments
   (median of `repeats`; tiny kernels are batched so a timed run lasts >= 100 us), with the
   target's thread count, locally or over TVM RPC on a device; the group's entry is the sum.

Compiling is the slow part and runs in `jobs` worker processes; timing is serial (it uses
the target's cores itself). torch and TVM are imported inside the functions.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from adl.ir.layers import KernelGroup, LayerDesc
from adl.ir.progress import Progress, SilentProgress

__all__ = [
    "CompiledGroup",
    "KernelSignature",
    "LayerTimer",
    "compile_group",
    "layer_model",
    "network_latency",
    "time_compiled",
]

# PrimFuncs that only move data between layouts: at a network's boundary, not in its layers.
_BOUNDARY_KERNEL = re.compile(r"^(transpose|layout_transform|reshape)\d*$")


def _padding(size: int, out: int, kernel: int, stride: int) -> int:
    """The symmetric padding that makes a `kernel`/`stride` window map `size` to `out`."""
    return max(0, -(-((out - 1) * stride + kernel - size) // 2))


def layer_model(group: KernelGroup) -> Any:
    """A one-layer torch model computing `group` (random weights; a bias stands for a folded BN)."""
    import torch
    from torch import nn

    layer = group.layer
    activations = {"": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6}

    if layer.op in ("conv2d", "dwconv2d"):
        _, cin, h, w = layer.input_shape
        _, cout, oh, ow = layer.output_shape
        (kh, kw), (sh, sw) = layer.kernel, layer.stride
        op: nn.Module = nn.Conv2d(
            cin,
            cout,
            (kh, kw),
            (sh, sw),
            (_padding(h, oh, kh, sh), _padding(w, ow, kw, sw)),
            groups=layer.groups,
            bias=True,
        )
    elif layer.op == "linear":
        op = nn.Linear(layer.input_shape[-1], layer.output_shape[-1], bias=True)
    elif layer.op == "pool":
        op = nn.AvgPool2d(layer.kernel, layer.stride)
    elif layer.op == "add":
        op = nn.Identity()
    else:
        raise ValueError(f"cannot time layer {layer.name!r}: unknown op {layer.op!r}")
    if layer.op in ("conv2d", "dwconv2d", "linear") and layer.weight_bits <= 8 and layer.act_bits <= 8:
        op = _integer_layer(op, layer.weight_bits, layer.act_bits)

    class OneLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.op, self.act = op, activations[layer.activation]()
            residual = group.residual if group.residual is not None else (layer if layer.op == "add" else None)
            self.residual_act = activations[residual.activation if residual is not layer and residual else ""]()
            self.register_buffer("residual", torch.randn(layer.output_shape) if residual is not None else None)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.act(self.op(x))
            if self.residual is not None:
                y = self.residual_act(y + self.residual)
            return y

    return OneLayer().eval()


def _integer_layer(op: Any, weight_bits: int, act_bits: int) -> Any:
    """`op` as the `haq` pass deploys it at <= 8 bits: u8 x s8 -> s32 (random codes)."""
    import torch

    from adl.models.integer import IntegerConv2d, IntegerLinear

    limit = 2 ** (weight_bits - 1) - 1
    codes = torch.randint(-limit, limit + 1, op.weight.shape, dtype=torch.int32)
    scales = torch.full((op.weight.shape[0],), 0.01)
    cls = IntegerConv2d if isinstance(op, torch.nn.Conv2d) else IntegerLinear
    # zero point 0, as after a ReLU (most integer layers' inputs): padding is the convolution's own,
    # fused, not a separate kernel filling in the zero point
    return cls(op, codes, scales, 0.05, 0, act_bits, weight_bits)


@dataclass(frozen=True)
class KernelSignature:
    name: str
    args: tuple[tuple[tuple[int, ...], str], ...]  # (shape, dtype) of each argument, outputs included


@dataclass(frozen=True)
class CompiledGroup:
    """A group's kernels, built into one shared library."""

    key: str
    library: str  # path of the .so
    kernels: tuple[KernelSignature, ...]
    tuned: bool = False  # built with the tuning database's schedules


def compile_group(
    group: KernelGroup, target: dict, folder: str | Path, *, tuned: bool = False, tuning_root: Path | None = None
) -> CompiledGroup:
    """Lower `group` like a network and build its non-boundary kernels: with adl's default
    schedules, or (`tuned`) with the best schedules the MetaSchedule tuning database of the
    target holds for them (others untuned), as `build_library` builds a tuned library."""
    import torch
    import tvm
    from tvm import tirx

    from adl.backends.tvm.build import _step
    from adl.backends.tvm.default_schedules import default_cpu_pipeline
    from adl.backends.tvm.integer_ops import import_exported
    from adl.hwmodels.cpu import native_target

    native = native_target(target)
    tvm_target = tvm.target.Target(native)
    model = layer_model(group)
    example = torch.randn(group.layer.input_shape)
    with _step("export"), torch.no_grad():
        exported = torch.export.export(model, (example,))
    with _step("import to Relax"):
        mod = import_exported(exported, keep_params_as_input=False)
    with _step("compile"):
        lowered = _tuned_pipeline(mod, native, tuning_root) if tuned else default_cpu_pipeline(tvm_target)(mod)
        kernels = {
            gv.name_hint: func
            for gv, func in lowered.functions.items()
            if isinstance(func, tirx.PrimFunc) and not _BOUNDARY_KERNEL.match(gv.name_hint)
        }
        if not kernels:
            raise RuntimeError(f"layer {group.layer.name!r} ({group.key}) compiled to no kernel")
        built = tvm.compile(tvm.IRModule(kernels), target=tvm_target)
    signatures = tuple(
        KernelSignature(name, tuple((tuple(int(d) for d in p.shape), str(p.dtype)) for p in func.params))
        for name, func in sorted(kernels.items())
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="kernels-", suffix=".so", dir=folder)
    os.close(fd)
    built.export_library(path)
    return CompiledGroup(group.key, path, signatures, tuned)


def _tuned_pipeline(mod: Any, target: dict, tuning_root: Path | None) -> Any:
    """TVM's default pipeline over `mod` with the tuning database's schedules applied."""
    import tvm
    from tvm import relax

    from adl.backends.tvm import tuning

    tuning.install()
    tvm_target = tvm.target.Target(target)
    prepared = tuning.prepare_for_tuning(mod)
    database = tuning.database_dir(target, tuning_root)
    tuning.open_database(database)  # repairs a torn file before TVM reads it
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        applied = relax.transform.MetaScheduleApplyDatabase(str(database))(prepared)
        return relax.get_default_pipeline(tvm_target)(applied)


def _random_argument(shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 4, size=shape).astype(dtype)


def time_compiled(compiled: CompiledGroup, session: Any, *, repeats: int) -> tuple[float, dict[str, float]]:
    """Median seconds of the group's kernels on `session` (a :mod:`adl.backends.tvm.remote`
    session, threads already set): their sum and each kernel's."""
    from adl.backends.tvm.remote import kernel_latency

    module = session.load_module(Path(compiled.library))
    rng = np.random.default_rng(0)
    per_kernel = {}
    for kernel in compiled.kernels:
        args = [session.tensor(_random_argument(shape, dtype, rng)) for shape, dtype in kernel.args]
        per_kernel[kernel.name] = kernel_latency(session, module, kernel.name, args, repeats=repeats)
    return float(sum(per_kernel.values())), per_kernel


def network_latency(
    model: Any,
    input_shape: Sequence[int],
    target: dict,
    *,
    threads: int | None,
    repeats: int = 100,
    session_factory: Callable[[], Any] | None = None,
) -> float:
    """Median seconds of a whole network compiled by adl's lowering (untuned) and timed like
    the library the compiler ships: what the table's per-network overhead is calibrated on."""
    from adl.backends.tvm.build import build_library
    from adl.backends.tvm.remote import library_latency, local_session

    with tempfile.TemporaryDirectory(prefix="adl-lut-") as folder:
        path = Path(folder) / "network.so"
        build_library(model, np.zeros(tuple(input_shape), np.float32), target, path)
        _let_compile_threads_settle()
        with (session_factory or local_session)() as session:
            return library_latency(
                session, path, tuple(input_shape), threads=threads, repeats=repeats, warmup=20
            ).median_s


def _let_compile_threads_settle(seconds: float = 1.0) -> None:
    """Wait for torch's OpenMP workers to stop spinning: after torch.export or any torch op in
    this process they busy-wait for a while and, on a 2-core machine, halve the speed of the
    kernels timed next (measured: a table entry 2x too slow right after an in-process compile)."""
    time.sleep(seconds)


def _compile_in_worker(
    group: KernelGroup, target: dict, folder: str, tuned: bool, tuning_root: Path | None
) -> CompiledGroup:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    return compile_group(group, target, folder, tuned=tuned, tuning_root=tuning_root)


class LayerTimer:
    """Measures kernel groups on a target: compiles in `jobs` processes, times serially.

    Each kernel is timed in `passes` rounds over all of them (median of `repeats` runs each)
    and its entry is the median of the rounds: this machine has slow spells of seconds (right
    after a burst of load a kernel can take twice as long), which one round would bake into
    the table.

    `session_factory` opens where the kernels run (default: this machine); the measured
    cost model passes an RPC session for ``target { rpc = ... }``. With `tuned`, each group
    is also built with the target's tuning database and the faster variant counts, as the
    compiler keeps the faster of the default and the tuned library.
    """

    def __init__(
        self,
        target: dict,
        *,
        threads: int | None,
        repeats: int = 50,
        jobs: int | None = None,
        session_factory: Callable[[], Any] | None = None,
        tuned: bool = False,
        tuning_root: Path | None = None,
        passes: int = 3,
    ) -> None:
        self.target = target
        self.passes = passes
        self.tuned = tuned
        self.tuning_root = tuning_root
        self.threads = threads
        self.repeats = repeats
        self.jobs = jobs or min(2, os.cpu_count() or 1)
        self.session_factory = session_factory

    def measure(self, groups: Sequence[KernelGroup], progress: Progress | None = None) -> dict[str, float]:
        """Seconds per group key (each distinct key compiled once)."""
        from adl.backends.tvm.remote import local_session

        progress = progress or SilentProgress()
        unique = list({g.key: g for g in groups}.values())
        if not unique:
            return {}
        with tempfile.TemporaryDirectory(prefix="adl-lut-") as folder:
            compiled = self._compile_all(unique, folder, progress)
            _let_compile_threads_settle()
            session = (self.session_factory or local_session)()
            try:
                session.set_threads(self.threads)
                samples: dict[str, list[float]] = {}
                with progress.task("timing layers", total=len(compiled) * self.passes) as task:
                    for round_ in range(self.passes):
                        # alternate the order, so a slow spell of the machine hits different kernels
                        for item in compiled if round_ % 2 == 0 else reversed(compiled):
                            seconds, _ = time_compiled(item, session, repeats=self.repeats)
                            samples.setdefault(f"{item.key}|{item.tuned}", []).append(seconds)
                            task.advance()
            finally:
                session.close()
        results: dict[str, float] = {}
        for item in compiled:  # median over the rounds; the faster of the default and the tuned kernels
            seconds = float(np.median(samples[f"{item.key}|{item.tuned}"]))
            results[item.key] = min(seconds, results.get(item.key, seconds))
        return results

    def empty_call_overhead(self) -> float:
        """Seconds of a VM call that does (almost) nothing: a library whose one kernel applies
        a ReLU to 4 numbers, timed whole, minus that kernel's time."""
        from adl.backends.tvm.build import build_library
        from adl.backends.tvm.remote import library_latency, local_session

        tiny = KernelGroup(LayerDesc("tiny", "add", (1, 4), (1, 4), activation="relu"))
        with tempfile.TemporaryDirectory(prefix="adl-lut-") as folder:
            compiled = compile_group(tiny, self.target, folder)
            path = Path(folder) / "tiny.so"
            build_library(layer_model(tiny), np.zeros((1, 4), np.float32), self.target, path)
            _let_compile_threads_settle()
            session = (self.session_factory or local_session)()
            try:
                session.set_threads(self.threads)
                kernel, _ = time_compiled(compiled, session, repeats=self.repeats)
                call = library_latency(
                    session, path, (1, 4), threads=self.threads, repeats=max(self.repeats, 50)
                ).median_s
            finally:
                session.close()
        return max(0.0, call - kernel)

    def _compile_all(self, groups: list[KernelGroup], folder: str, progress: Progress) -> list[CompiledGroup]:
        jobs = [(g, tuned) for g in groups for tuned in ((False, True) if self.tuned else (False,))]
        with progress.task("compiling layers", total=len(jobs)) as task:
            if self.jobs <= 1 or len(jobs) == 1:
                out = []
                for group, tuned in jobs:
                    out.append(compile_group(group, self.target, folder, tuned=tuned, tuning_root=self.tuning_root))
                    task.advance()
                return out
            # spawn: TVM's and torch's thread pools do not survive fork
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(self.jobs, mp_context=context) as pool:
                futures = {
                    pool.submit(_compile_in_worker, group, self.target, folder, tuned, self.tuning_root): i
                    for i, (group, tuned) in enumerate(jobs)
                }
                out_by_index: dict[int, CompiledGroup] = {}
                for future in concurrent.futures.as_completed(futures):
                    out_by_index[futures[future]] = future.result()
                    task.advance()
            return [out_by_index[i] for i in range(len(jobs))]
