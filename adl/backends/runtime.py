"""Run a library built by :mod:`adl.backends.tvm` with the TVM runtime only.

This module must never import torch, directly or indirectly: a deployed adl library needs
numpy and the TVM runtime, nothing else. ``tvm_ffi`` (which ``import tvm`` loads) tries
``import torch`` unconditionally when torch is installed, which would cost seconds and pull
torch into the process; :func:`_import_tvm` hides torch from that import (see there).

TVM is imported lazily, on the first :class:`CompiledLibrary`, so importing this module is cheap.

Threads: TVM's CPU thread pool is per calling thread and reads ``TVM_NUM_THREADS`` when the
pool of that thread is created (on first use, not at ``import tvm``); its size is an upper bound
for the threads a kernel may use. ``runtime.config_threadpool(mode, n)`` then sets how many of
those workers are used. ``CompiledLibrary(num_threads=n)`` sets ``TVM_NUM_THREADS`` (if unset)
so the pool is large enough, and applies ``config_threadpool`` in the calling thread before every
run or timing. Note that untuned TVM kernels have no parallel loops; the thread count matters only
for libraries whose kernels are parallelised (tuned or scheduled).
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from adl.ir.spec import available_cores

__all__ = [
    "MAX_THREADS",
    "CompiledLibrary",
    "LatencyStats",
    "ThreadChoice",
    "check_input",
    "fastest_thread_count",
    "fastest_thread_counts",
]

# The most threads a library may be asked to use (the spec's `cores` bound). Each TVM worker beyond
# the machine's cores costs time, at exit too: 64 workers on 2 cores took ~55 s to exit.
MAX_THREADS = 1024

# threading::ThreadGroup::AffinityMode::kBig in TVM's threading_backend (all cores are "big" on
# a homogeneous CPU).
_AFFINITY_BIG = 1
# Modules that tvm_ffi imports opportunistically and that drag torch in.
_TORCH_MODULES = ("torch", "torch_c_dlpack_ext")

_import_lock = threading.Lock()


def _import_tvm() -> ModuleType:
    """Import tvm (and its runtime VM) without importing torch, and return the ``tvm`` module.

    If tvm is already imported (for instance by the build step, which needs torch anyway),
    it is returned as is. Otherwise torch is hidden for the duration of the import by a
    ``None`` entry in ``sys.modules`` (which makes ``import torch`` raise ImportError, the case
    tvm_ffi handles as "torch not installed"); the entries are removed afterwards, so torch
    stays importable for the rest of the process. The only lasting effect is that tvm_ffi's
    optional torch integration (converting torch tensors passed directly to TVM functions,
    torch stream contexts) is off in such a process; DLPack exchange still works.
    """
    with _import_lock:
        if "tvm" in sys.modules and "tvm.runtime.vm" in sys.modules:
            return sys.modules["tvm"]
        hidden = [name for name in _TORCH_MODULES if name not in sys.modules]
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]
        try:
            import tvm
            import tvm.runtime.vm  # noqa: F401 (imported for its registration of the Relax VM's functions)
        finally:
            for name in hidden:
                if name in sys.modules and sys.modules[name] is None:
                    del sys.modules[name]
        return tvm


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


_KINDS = {"f": "floating-point", "i": "signed integer", "u": "unsigned integer", "b": "boolean"}


def check_input(x: Any, input_shape: Sequence[int], input_dtype: np.dtype) -> tuple[np.ndarray, bool]:
    """``(batch, was_single)``: ``x`` as a contiguous batch ``(N, *input_shape[1:])`` of ``input_dtype``.

    ``x`` is a batch or one sample ``input_shape[1:]``. Raises ValueError for a dtype of another
    kind than ``input_dtype`` (any float dtype is cast to a float input), another shape, or
    values that are NaN or infinite (after the cast: a float64 beyond float32's range is inf).
    """
    arr = np.asarray(x)
    input_dtype = np.dtype(input_dtype)
    sample_shape = tuple(input_shape[1:])
    if arr.dtype.kind != input_dtype.kind or arr.dtype.kind not in _KINDS:
        raise ValueError(
            f"expected a {_KINDS.get(input_dtype.kind, str(input_dtype))} input "
            f"(the library's input dtype is {input_dtype}), got dtype {arr.dtype} with shape {arr.shape}"
        )
    if arr.shape == sample_shape:
        arr, single = arr.reshape((1, *sample_shape)), True
    elif arr.ndim == len(input_shape) and arr.shape[1:] == sample_shape:
        single = False
    else:
        raise ValueError(
            f"expected input of shape (N, {', '.join(map(str, sample_shape))}) or a single sample "
            f"{sample_shape} (the library's input shape is {tuple(input_shape)}); got shape {arr.shape}"
        )
    with np.errstate(over="ignore"):
        batch = np.ascontiguousarray(arr, dtype=input_dtype)
    if batch.dtype.kind == "f":
        bad = int(batch.size - np.count_nonzero(np.isfinite(batch)))
        if bad:
            raise ValueError(f"x holds {bad} non-finite value{'s' if bad != 1 else ''} (NaN or inf)")
    return batch, single


@dataclass(frozen=True)
class LatencyStats:
    """Batch-1 latency of one call of the library's ``main``, in seconds."""

    median_s: float
    mean_s: float
    p10_s: float
    p90_s: float
    min_s: float
    repeats: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "LatencyStats":
        """The statistics of timed runs (seconds each)."""
        results = np.asarray(list(seconds), dtype=np.float64)
        return cls(
            median_s=float(np.median(results)),
            mean_s=float(np.mean(results)),
            p10_s=float(np.percentile(results, 10)),
            p90_s=float(np.percentile(results, 90)),
            min_s=float(np.min(results)),
            repeats=int(results.size),
        )


class CompiledLibrary:
    """A built adl library loaded through the TVM runtime only.

    Parameters
    ----------
    path:
        The shared library written by :func:`adl.backends.tvm.build_library`.
    input_shape:
        The library's input shape, batch axis first: ``(1, 1, 8, 8)`` for what `lower` ships
        (batch 1); a library built with ``build_library(..., batch=B)`` takes ``B`` samples a call.
    num_threads:
        Threads the TVM runtime may use for this library's kernels, 1 to :data:`MAX_THREADS`;
        ``None`` leaves the runtime's setting alone (TVM's own default, or ``TVM_NUM_THREADS``).
        More threads than the machine has cores only slow the library down (and the exit).
    input_dtype:
        The library's input dtype (``"float32"`` for everything adl builds). Inputs of the same
        kind (any float dtype for a float input) are cast; other kinds, and NaN or infinite
        values, are rejected (ValueError).
    """

    def __init__(
        self,
        path: str | Path,
        input_shape: Sequence[int],
        *,
        num_threads: int | None = None,
        input_dtype: str = "float32",
    ):
        self.path = Path(path)
        try:
            shape = tuple(int(d) for d in input_shape)
        except (TypeError, ValueError):
            raise ValueError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
        if len(shape) < 1 or any(d <= 0 for d in shape):
            raise ValueError(
                f"input_shape must be a positive shape with the batch axis first, e.g. (1, 1, 8, 8); got {shape}"
            )
        self.input_shape: tuple[int, ...] = shape
        self.input_dtype = np.dtype(input_dtype)
        if num_threads is not None:
            valid = isinstance(num_threads, int) and not isinstance(num_threads, bool)
            if not valid or not 1 <= num_threads <= MAX_THREADS:
                raise ValueError(f"num_threads must be an int from 1 to {MAX_THREADS} or None, got {num_threads!r}")
            # The pool of a thread reads TVM_NUM_THREADS once, when it is created, and caps the
            # usable workers; make it large enough, config_threadpool picks the exact count.
            os.environ.setdefault("TVM_NUM_THREADS", str(max(num_threads, available_cores())))
        self.num_threads = num_threads
        if not self.path.is_file():
            raise FileNotFoundError(f"no compiled library at {self.path}")

        tvm = _import_tvm()
        self._tvm = tvm
        self._device = tvm.cpu(0)
        try:
            self._module = tvm.runtime.load_module(str(self.path))
            self._vm = tvm.runtime.vm.VirtualMachine(self._module, self._device)
            self._main = self._vm["main"]
        except Exception as exc:  # TVM raises its own error types; keep the message short.
            raise RuntimeError(f"cannot load {self.path} as a TVM Relax library: {_first_line(exc)}") from exc
        self._config_threadpool = tvm.get_global_func("runtime.config_threadpool")
        self._warned_threads = False
        self._output_shape: tuple[int, ...] | None = None
        self._input: Any = None  # the VM's input tensor, allocated on the first call and reused
        self._lock = threading.Lock()  # one call of the VM at a time: it is not thread-safe
        self._apply_threads()

    def __repr__(self) -> str:
        return f"CompiledLibrary({str(self.path)!r}, input_shape={self.input_shape}, num_threads={self.num_threads})"

    # -- threads ---------------------------------------------------------------------------

    def _apply_threads(self) -> None:
        """Make the calling thread's TVM pool use ``num_threads`` workers (pools are per thread)."""
        n = self.num_threads
        if n is None:
            return
        runtime = self._tvm.runtime
        if runtime.num_threads() == n:
            return
        self._config_threadpool(_AFFINITY_BIG, n)
        actual = runtime.num_threads()
        if actual != n and not self._warned_threads:
            self._warned_threads = True
            warnings.warn(
                f"TVM runtime uses {actual} threads, not the {n} requested: this thread's pool was "
                f"created before with fewer workers (TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')!r}). "
                f"Set TVM_NUM_THREADS >= {n} before the first TVM use.",
                RuntimeWarning,
                stacklevel=3,
            )

    @property
    def runtime_threads(self) -> int:
        """Threads the TVM runtime uses in the calling thread for this library."""
        self._apply_threads()
        return int(self._tvm.runtime.num_threads())

    # -- running ---------------------------------------------------------------------------

    def _call(self, tensor: Any) -> np.ndarray:
        try:
            out = self._main(tensor)
        except Exception as exc:  # the VM checks the declared shape against the compiled one
            message = _first_line(exc)
            if "match_cast" in str(exc) or "mismatch" in message or "loc=param" in str(exc):
                raise ValueError(
                    f"the library rejected an input of shape {self.input_shape}: is input_shape right? {message}"
                ) from exc
            raise RuntimeError(f"running {self.path.name} failed: {message}") from exc
        if not hasattr(out, "numpy"):  # Relax returns a tuple (an ffi Array) by default.
            out = out[0]
        return out.numpy()

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run the library on ``x``.

        ``x`` is a batch ``(N, *input_shape[1:])`` or one sample ``input_shape[1:]`` (treated as
        N = 1), checked by :func:`check_input`. The library is compiled for ``input_shape[0]``
        samples a call (1 for what `lower` ships), so the batch runs in calls of that many, the
        last one filled up with zeros.
        Returns the outputs stacked along the batch axis, float32, e.g. ``(N, classes)``.
        """
        batch, _ = check_input(x, self.input_shape, self.input_dtype)
        self._apply_threads()
        n, per_call = batch.shape[0], self.input_shape[0]
        with self._lock:
            outputs = self._run_locked(batch, n, per_call)
        if outputs is None:  # empty batch: learn the output shape from one call
            return np.empty((0, *self.output_shape[1:]), dtype=np.float32)
        return outputs

    def _run_locked(self, batch: np.ndarray, n: int, per_call: int) -> np.ndarray | None:
        """`run`'s calls of the VM, under `_lock`: TVM's Relax VM keeps per-call state, and two
        threads calling it at once crashed the process (a segmentation fault in the test suite)."""
        staging = self._staging()
        if n == per_call:  # one call, as a deployed batch-1 library is called: its output as is
            staging.copyfrom(batch)
            y = self._call(staging)
            if self._output_shape is None:
                self._output_shape = tuple(y.shape)
            return y.astype(np.float32, copy=False)
        outputs: np.ndarray | None = None
        for i in range(0, n, per_call):
            chunk = batch[i : i + per_call]
            if len(chunk) < per_call:
                chunk = np.concatenate([chunk, np.zeros((per_call - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            staging.copyfrom(np.ascontiguousarray(chunk))
            y = self._call(staging)
            if outputs is None:
                outputs = np.empty((n, *y.shape[1:]), dtype=np.float32)
                self._output_shape = tuple(y.shape)
            outputs[i : i + per_call] = y[: min(per_call, n - i)]
        return outputs

    def _staging(self) -> Any:
        """The VM's input tensor, allocated on the first call and reused (callers hold `_lock`):
        allocating one costs about 5 us, a tenth of a small network's whole call (issue 28
        measured run() at 58 us around a 21 us network)."""
        if self._input is None:
            self._input = self._tvm.runtime.empty(self.input_shape, str(self.input_dtype), self._device)
        return self._input

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one call's output, e.g. ``(1, classes)`` (found by one call if unknown)."""
        if self._output_shape is None:
            self.run(np.zeros(self.input_shape, dtype=self.input_dtype))
        assert self._output_shape is not None
        return self._output_shape

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Argmax labels (int64) of :meth:`run`'s outputs, shape ``(N,)``."""
        return np.argmax(self.run(x), axis=-1).astype(np.int64)

    def latency(self, *, repeats: int = 50, warmup: int = 10) -> LatencyStats:
        """Latency of one call of ``main`` (``input_shape[0]`` samples) on a random input, via the
        VM's time_evaluator.

        ``warmup`` untimed calls first, then ``repeats`` timed runs of one call each
        (``number=1, repeat=repeats``); the statistics are over those runs.
        """
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive int, got {repeats!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
        self._apply_threads()
        rng = np.random.default_rng(0)
        if self.input_dtype.kind == "f":
            sample = rng.standard_normal(self.input_shape).astype(self.input_dtype)
        else:
            sample = rng.integers(0, 2, size=self.input_shape).astype(self.input_dtype)
        tensor = self._tvm.runtime.tensor(sample, self._device)
        for _ in range(warmup):
            self._call(tensor)
        timer = self._vm.time_evaluator("main", self._device, number=1, repeat=repeats)
        return LatencyStats.of(timer(tensor).results)


@dataclass(frozen=True)
class ThreadChoice:
    """A library's latency (s) per thread count tried, one median per round, and the fastest count.

    The choice goes by each count's quietest round (`best_s`), not by the median over rounds:
    other processes only ever add time, and they hurt the larger counts most (one descheduled
    worker stalls every parallel kernel), so medians taken while other jobs came and went chose
    1 thread for a MobileNetV2 that runs 1.9x faster on 2 (13.7 against 7.3 ms) and 2 threads
    when the machine was quiet: what shipped was chance. The quietest of interleaved rounds is
    what the library does on this machine without them. (A core that stays busy through every
    round still favours fewer threads: that is then the truth about this machine; `lower {
    threads = N }` fixes the count for reproducible builds.)
    """

    rounds_s: dict[int, list[float]]

    @property
    def median_s(self) -> dict[int, float]:
        return {n: float(np.median(times)) for n, times in self.rounds_s.items()}

    @property
    def best_s(self) -> dict[int, float]:
        """Each count's quietest round."""
        return {n: float(min(times)) for n, times in self.rounds_s.items()}

    @property
    def threads(self) -> int:
        """The count with the fastest quietest round (the fewest threads on a tie)."""
        best = self.best_s
        return min(best, key=lambda n: (best[n], n))


def fastest_thread_count(
    path: str | Path,
    input_shape: Sequence[int],
    max_threads: int,
    *,
    rounds: int = 7,
    repeats: int = 20,
    warmup: int = 5,
) -> ThreadChoice:
    """Time the library with 1..`max_threads` threads in interleaved rounds and pick the fastest.

    Small networks (batch 1, a few MFLOPs) often run faster on one thread: every parallel
    kernel pays a fork-join, and on a busy machine a descheduled worker stalls each one
    (measured here: 85 us on one thread against 3.5 ms on two for the same 3-MFLOP network
    while other processes ran). Rounds alternate the counts so a slow spell hits them alike;
    the choice is the count whose quietest round is fastest (`ThreadChoice`).
    """
    return fastest_thread_counts(
        {"library": path}, input_shape, max_threads, rounds=rounds, repeats=repeats, warmup=warmup
    )["library"]


def fastest_thread_counts(
    paths: dict[str, str | Path],
    input_shape: Sequence[int],
    max_threads: int,
    *,
    rounds: int = 7,
    repeats: int = 20,
    warmup: int = 5,
) -> dict[str, ThreadChoice]:
    """`fastest_thread_count` for several libraries at once, every (library, threads) pair in
    the same interleaved rounds, so the libraries can be compared with each other too."""
    if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 1:
        raise ValueError(f"max_threads must be a positive int, got {max_threads!r}")
    libraries = {
        (name, n): CompiledLibrary(path, input_shape, num_threads=n)
        for name, path in paths.items()
        for n in range(1, max_threads + 1)
    }
    per_round: dict[tuple[str, int], list[float]] = {key: [] for key in libraries}
    for _ in range(rounds):
        for key, library in libraries.items():
            per_round[key].append(library.latency(repeats=repeats, warmup=warmup).median_s)
    return {name: ThreadChoice({n: per_round[(name, n)] for n in range(1, max_threads + 1)}) for name in paths}
