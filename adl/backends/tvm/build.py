"""Lower a PyTorch model through Apache TVM (Relax) to a shared library.

Pipeline: ``torch.export`` (eval mode, batch-1 float32 example) -> Relax
(``from_exported_program``, weights embedded as constants) -> ``tvm.compile`` for the target
-> ``export_library``. The result runs with :class:`adl.backends.runtime.CompiledLibrary`,
which needs only numpy and the TVM runtime.

torch and tvm are imported when a build starts, not when this module is imported.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adl.hwmodels.cpu import native_target
from adl.ir.files import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "BuildInfo",
    "LoweringError",
    "OutputAgreement",
    "TuneRequest",
    "build_library",
    "cross_compiler_for",
    "max_abs_difference",
    "output_agreement",
]

STEP_EXPORT = "export"
STEP_IMPORT = "import to Relax"
STEP_COMPILE = "compile"
STEP_EXPORT_LIBRARY = "export_library"


class LoweringError(RuntimeError):
    """Lowering a model to a TVM library failed.

    ``step`` is one of ``"export"`` (torch.export), ``"import to Relax"``, ``"compile"``,
    ``"export_library"``; the message names the step and the first line of the underlying
    error, which is kept as ``__cause__``.
    """

    def __init__(self, message: str, step: str | None = None):
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class BuildInfo:
    input_name: str  # the Relax function's parameter name
    input_shape: tuple[int, ...]  # batch first, e.g. (1, 1, 8, 8)
    input_dtype: str  # "float32"
    output_shape: tuple[int, ...]  # (batch, classes)
    tvm_version: str
    build_seconds: float
    library_bytes: int  # size of the written .so
    tuning: dict | None = None  # TuningReport.as_dict() when MetaSchedule tuning was asked for
    cross_compiled: bool = False  # built for another machine: it cannot run here
    target: dict | None = None  # the TVM target used (the host's mcpu filled in when none was given)
    notes: tuple[str, ...] = ()  # what made the library less than it could be (shown by `lower`)
    #: int8 multiply-accumulate kernels of the default schedules by path: "vnni" (vpdpbusd) or
    #: "generic" (int32 lanes); {} for a float library
    int8_kernels: dict | None = None


@dataclass(frozen=True)
class TuneRequest:
    """MetaSchedule tuning: up to `trials_per_task` measured candidates per new task, and stop
    after `minutes` (what was measured by then is kept and used)."""

    trials_per_task: int
    minutes: float | None = None
    root: Path | None = None  # tuning database root; default adl.backends.tvm.tuning.default_root()


def _summary(exc: BaseException) -> str:
    """First non-empty line of an error, plus torch.export's pointer to the user code if any."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines()]
    first = next((line for line in lines if line), "")
    summary = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    marker = "The following call raised this error:"
    if marker in lines:
        where = [line for line in lines[lines.index(marker) + 1 :] if line][:2]
        if where:
            summary += f" (at {' '.join(where)})"
    return summary


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    try:
        yield
    except LoweringError:
        raise
    except Exception as exc:
        raise LoweringError(f"TVM lowering failed at the {name} step: {_summary(exc)}", step=name) from exc


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """Put ``model`` in eval mode, restoring each submodule's training flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _example_batch(example_input: np.ndarray) -> np.ndarray:
    arr = np.asarray(example_input)
    if arr.ndim < 1 or arr.shape[0] < 1:
        raise ValueError(f"example_input needs a batch axis first with at least one sample, got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise ValueError(f"example_input must be a float array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr[:1], dtype=np.float32)


def _tensor_type_shape(ty: Any) -> tuple[tuple[int, ...], str]:
    return tuple(int(d) for d in ty.shape), str(ty.dtype)


def build_library(
    model: "torch.nn.Module",
    example_input: np.ndarray,
    target: dict,
    out_path: Path,
    *,
    tune: TuneRequest | None = None,
    progress: Any = None,
    batch: int = 1,
) -> BuildInfo:
    """Lower ``model`` to a TVM shared library at ``out_path`` for ``target``.

    ``torch.export`` (model in eval mode, BatchNorm folded, batch-1 example, float32) -> Relax
    (``from_exported_program``, ``keep_params_as_input=False`` so weights are embedded
    constants) -> ``tvm.compile`` for ``tvm.target.Target(target)`` (with MetaSchedule's best
    schedules from the tuning database when ``tune`` is given) -> ``export_library``; with an
    ``mtriple`` in ``target`` the library is linked by that triple's cross compiler.

    ``example_input`` has the batch axis first; only its first sample is used: the library is
    compiled for ``batch`` samples per call (1, what `lower` ships; more for throughput). ``target`` is
    a TVM target dict, e.g. ``{"kind": "llvm", "num-cores": 2}``. The library is written atomically
    (`adl.ir.files.atomic_path`: a temporary file in the same folder, then a rename).
    The model itself is not modified.

    Raises :class:`LoweringError` naming the failed step (the original error is its
    ``__cause__``), and ValueError for an ``example_input`` that is empty or not floating-point.
    """
    import torch  # before tvm: tvm_ffi then enables its torch integration
    import tvm

    from adl.backends.tvm.integer_ops import import_exported
    from adl.models.folding import fold_batchnorm_or_explain

    out_path = Path(out_path)
    target = native_target(target)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    example = np.repeat(_example_batch(example_input), batch, axis=0)
    start = time.perf_counter()
    fcompile = cross_compiler_for(target)
    report = None
    model, unfolded = fold_batchnorm_or_explain(model)

    with _eval_mode(model):
        with _step(STEP_EXPORT):
            exported = torch.export.export(model, (torch.from_numpy(example.copy()),))
        with _step(STEP_IMPORT), warnings.catch_warnings():
            # torch's pytree emits a FutureWarning about LeafSpec while TVM decomposes the program.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            mod = import_exported(exported, keep_params_as_input=False)
            main = mod["main"]
            params = list(main.params)
            if len(params) != 1:
                raise ValueError(f"expected the Relax main function to take 1 input, it takes {len(params)}")
            input_name = str(params[0].name)
            input_shape, input_dtype = _tensor_type_shape(params[0].ty)
            ret = main.ret_ty
            fields = getattr(ret, "fields", None)
            if fields is not None:  # a tuple of outputs: the library's runtime takes the first
                if len(fields) < 1:
                    raise ValueError("the Relax main function returns an empty tuple")
                ret = fields[0]
            output_shape, _ = _tensor_type_shape(ret)

    with _step(STEP_COMPILE):
        from adl.backends.tvm.default_schedules import int8_kernel_counts

        int8_kernel_counts()  # reset: count this build's kernels only
        executable = _compile_default(mod, target)
        int8_kernels = int8_kernel_counts()
        if tune is not None:
            from adl.backends.tvm import tuning

            tuned_mod = tuning.prepare_for_tuning(mod)
            report = tuning.tune(
                tuned_mod,
                target,
                trials_per_task=tune.trials_per_task,
                minutes=tune.minutes,
                root=tune.root,
                progress=progress,
            )
            tuned = tuning.build_with_database(tuned_mod, target, root=tune.root)
            executable, choice = _faster(
                executable, tuned, input_shape, target.get("num-cores"), fcompile is not None, out_path.parent
            )
            report = report.as_dict() | choice

    with _step(STEP_EXPORT_LIBRARY):
        # Same folder (so the rename is atomic), same suffix (export_library picks the format by it).
        with atomic_path(out_path) as tmp:
            if fcompile is None:
                executable.export_library(str(tmp))
            else:
                executable.export_library(str(tmp), fcompile=fcompile)

    return BuildInfo(
        input_name=input_name,
        input_shape=input_shape,
        input_dtype=input_dtype,
        output_shape=output_shape,
        tvm_version=str(tvm.__version__),
        build_seconds=time.perf_counter() - start,
        library_bytes=out_path.stat().st_size,
        tuning=report,
        cross_compiled=fcompile is not None,
        target=target,
        notes=(unfolded,) if unfolded else (),
        int8_kernels=int8_kernels,
    )


def _compile_default(mod, target: dict):
    """The untuned build: adl's rule-based CPU schedules (see default_schedules.py)."""
    import tvm

    from adl.backends.tvm.default_schedules import default_cpu_pipeline

    tvm_target = tvm.target.Target(target)
    if target.get("kind") != "llvm":
        return tvm.compile(mod, target=tvm_target)
    return tvm.compile(mod, target=tvm_target, relax_pipeline=default_cpu_pipeline(tvm_target))


def _faster(default, tuned, input_shape, threads: int | None, cross: bool, folder: Path) -> tuple[Any, dict]:
    """Of the default-scheduled and the MetaSchedule-tuned executables, the faster one measured
    here (the tuned one when it cannot run here). Tuning never makes a library slower.

    Each variant is timed as it will run: at its fastest thread count from 1..`threads` (what
    `lower` picks), in interleaved rounds, so a slow spell of the machine hits both alike."""
    if cross:
        return tuned, {"chosen": "metaschedule", "why": "cross-compiled: variants cannot be timed here"}
    from adl.backends.runtime import fastest_thread_counts

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        paths = {}
        for name, executable in (("default", default), ("metaschedule", tuned)):
            paths[name] = Path(tmp) / f"{name}.so"
            executable.export_library(str(paths[name]))
        choices = fastest_thread_counts(paths, input_shape, _local_threads(threads), rounds=3)
    times = {name: c.best_s[c.threads] for name, c in choices.items()}
    chosen_threads = {name: c.threads for name, c in choices.items()}
    chosen = min(times, key=times.get)
    return (default if chosen == "default" else tuned), {
        "chosen": chosen,
        "variant_median_ms": {k: v * 1e3 for k, v in times.items()},
        "variant_threads": chosen_threads,
    }


def _local_threads(cores: int | None) -> int:
    """Threads to time a library with here: the target's cores, at most this machine's (a TVM
    thread pool of more workers than cores gains nothing and is slow to shut down)."""
    from adl.ir.spec import available_cores

    return max(1, min(cores or 1, available_cores()))


def cross_compiler_name(target: dict) -> str | None:
    """The GNU cross compiler a target's triple needs, e.g. ``aarch64-linux-gnu-g++``; None when
    the triple is this machine's architecture (or there is none): linked natively."""
    import platform

    triple = target.get("mtriple")
    if not triple or triple.split("-")[0] == platform.machine():
        return None
    return f"{triple}-g++"


def missing_cross_compiler(target: dict) -> str | None:
    """Why the target cannot be linked here (its cross compiler is not installed), or None.
    Imports nothing: the driver asks before any pass runs."""
    import shutil

    compiler = cross_compiler_name(target)
    if compiler is None or shutil.which(compiler) is not None:
        return None
    return (
        f"cross-compiling for {target['mtriple']} needs {compiler}, which is not installed "
        f"(Debian: apt-get install g++-{target['mtriple']})"
    )


def cross_compiler_for(target: dict) -> Any:
    """The link step for a target triple other than this machine's (None: link natively).

    Uses the GNU cross toolchain named after the triple, e.g. ``aarch64-linux-gnu-g++`` from
    Debian's ``g++-aarch64-linux-gnu``.
    """
    compiler = cross_compiler_name(target)
    if compiler is None:
        return None
    problem = missing_cross_compiler(target)
    if problem is not None:
        raise LoweringError(problem, STEP_EXPORT_LIBRARY)
    from tvm.support import cc

    return cc.cross_compiler(compiler)


@dataclass(frozen=True)
class OutputAgreement:
    """How a library's outputs compare with its PyTorch model's, per sample."""

    max_abs_diff: np.ndarray  # (N,) the largest |model - library| of each sample's outputs
    same_top1: np.ndarray  # (N,) bool: both pick the same class (argmax over the last axis)

    @property
    def max(self) -> float:
        return float(self.max_abs_diff.max())

    def beyond(self, tolerance: float) -> np.ndarray:
        """(N,) bool: the samples whose outputs differ by more than `tolerance` (NaN included)."""
        return ~(self.max_abs_diff <= tolerance)

    def over(self, tolerance: float) -> int:
        """How many samples are `beyond` the tolerance."""
        return int(np.sum(self.beyond(tolerance)))


def output_agreement(model: "torch.nn.Module", library_path: Path, inputs: np.ndarray) -> OutputAgreement:
    """Compare ``model`` (eval mode) with the built library on ``inputs``.

    ``inputs`` holds N samples, batch axis first; the library runs them one at a time through
    :class:`adl.backends.runtime.CompiledLibrary`, the model as one batch.
    """
    import torch

    from adl.backends.runtime import CompiledLibrary

    batch = np.asarray(inputs)
    if batch.ndim < 1 or batch.shape[0] < 1:
        raise ValueError(f"inputs need a batch axis first with at least one sample, got shape {batch.shape}")
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    library = CompiledLibrary(library_path, input_shape=(1, *batch.shape[1:]))
    got = library.run(batch)
    with _eval_mode(model), torch.no_grad():
        expected = model(torch.from_numpy(batch.copy()))
    if isinstance(expected, (tuple, list)):
        expected = expected[0]
    expected = expected.detach().cpu().numpy()
    if expected.shape != got.shape:
        raise ValueError(f"output shapes differ: model {expected.shape}, library {got.shape}")
    difference = np.abs(expected.astype(np.float64) - got.astype(np.float64)).reshape(len(batch), -1)
    if expected.ndim >= 2:
        same = (np.argmax(expected, axis=-1) == np.argmax(got, axis=-1)).reshape(len(batch), -1).all(axis=1)
    else:  # one number per sample: no class to compare
        same = np.ones(len(batch), bool)
    return OutputAgreement(difference.max(axis=1), same)


def max_abs_difference(model: "torch.nn.Module", library_path: Path, inputs: np.ndarray) -> float:
    """Max abs difference between ``model`` (eval mode) and the built library on ``inputs``
    (see `output_agreement`)."""
    return output_agreement(model, library_path, inputs).max
