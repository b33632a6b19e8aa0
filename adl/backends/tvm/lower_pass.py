"""The `lower` pass: the trained PyTorch model -> a TVM library, verified and measured.

Verification is part of lowering: the library's outputs on the test split must agree
with the PyTorch model, and its accuracy, batch-1 latency and file size are measured into
the module's metrics (and from there into the manifest and the budgets) -- on this machine,
or, for ``target { rpc = ... }``, on the device through TVM RPC (built here, uploaded, run
and timed there). With `profile`, every kernel of a local library is also timed alone; the
report lays each beside the cost model's prediction for its layer.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from adl.ir.module import Module
from adl.ir.options import Option
from adl.ir.passes import Pass, PassContext, PassError, SettingInvalid
from adl.ir.source_spans import stage_setting_span
from adl.ir.spec import Spec, available_cores


class LowerPass(Pass):
    name = "lower"
    summary = "lower through TVM Relax to a shared library; verify it against PyTorch; measure it"
    options = (
        Option("repeats", "int", 50, "timed batch-1 runs for the latency median", low=10, high=1_000_000),
        Option("warmup", "int", 10, "untimed runs before timing", low=0, high=1_000_000),
        Option(
            "tolerance",
            "float",
            1e-4,
            "max abs difference allowed between library and PyTorch outputs",
            low=0.0,
            high=1e6,
        ),
        Option(
            "rounding_flips",
            "fraction",
            0.01,
            "libraries with integer layers: the fraction of test samples "
            "whose outputs may exceed `tolerance` through float rounding between integer layers (residual "
            "additions, means), if their top-1 class agrees",
            low=0.0,
            high=1.0,
        ),
        Option(
            "threads",
            "int",
            0,
            "threads the library runs with; 0: time 1..cores and keep the fastest "
            "(small networks often run faster on one)",
            low=0,
            high=1024,
        ),
        Option(
            "profile",
            "bool",
            True,
            "also time every kernel of the library alone (per-layer measured latency in the report)",
        ),
    )
    requires = ("model",)
    ensures = ("library",)

    def run(self, module: Module, ctx: PassContext) -> Module:
        import numpy as np

        from adl.backends.runtime import CompiledLibrary
        from adl.backends.tvm.build import LoweringError, TuneRequest, build_library, output_agreement

        dataset = ctx.dataset()
        path = ctx.output_dir() / "model.so"
        target = ctx.spec.target.tvm_target()
        tune_spec = ctx.spec.target.tune
        tune = (
            TuneRequest(tune_spec.get("trials"), tune_spec.get("minutes")) if tune_spec.name == "metaschedule" else None
        )
        with ctx.progress.task("lower", total=3) as bar:
            try:
                info = build_library(module.model, dataset.x_test[:1], target, path, tune=tune, progress=ctx.progress)
            except LoweringError as err:
                raise PassError(str(err)) from err
            for note in info.notes:
                ctx.log(f"lower: {note}")
            if info.int8_kernels:
                paths = ", ".join(f"{count} {path}" for path, count in sorted(info.int8_kernels.items()))
                ctx.log(f"lower: int8 kernels: {paths} (vnni: vpdpbusd; generic: int32 lanes)")
            bar.advance(1, step="built")
            if ctx.spec.target.remote:
                return self._run_remote(module, ctx, path, info, bar)
            if info.cross_compiled:
                ctx.log(
                    f"lower: cross-compiled for {target['mtriple']}: the library cannot run here, so it is "
                    "neither verified nor measured"
                )
                return (
                    module.with_files(library=str(path))
                    .with_metrics(
                        size_bytes=info.library_bytes,
                        library=asdict(info) | {"file": "model.so"},
                    )
                    .establish("library")
                )
            agreement = output_agreement(module.model, path, dataset.x_test)
            difference, flips = agreement.max, self._check_agreement(agreement, module.model, ctx)
            bar.advance(1, step="verified")
            threads, thread_timings = self._choose_threads(path, info.input_shape, ctx)
            library = CompiledLibrary(path, info.input_shape, num_threads=threads)
            accuracy = float(np.mean(library.predict(dataset.x_test) == dataset.y_test))
            latency = library.latency(repeats=self.config["repeats"], warmup=self.config["warmup"])
            kernels = self._profile(path, info.input_shape, threads, ctx) if self.config["profile"] else None
            bar.advance(1, step="measured")
        return (
            module.with_files(library=str(path))
            .with_metrics(
                accuracy=accuracy,
                latency_s=latency.median_s,
                latency=asdict(latency),
                size_bytes=info.library_bytes,
                max_abs_diff=difference,
                **({"rounding_flips": flips} if flips else {}),
                runtime_threads=threads,
                **({"threads_median_s": thread_timings} if thread_timings else {}),
                **({"kernels": kernels} if kernels else {}),
                library=asdict(info) | {"file": "model.so"},
            )
            .establish("library")
        )

    def check_feasible(self, spec: Spec, data: Any, cost_model: Any) -> None:
        """`threads` above the target's `cores` is a spec error at `threads`."""
        threads, cores = self.config["threads"], spec.target.cores
        if threads > cores:
            written = any(s.pass_name == self.name and s.as_dict().get("threads") == threads for s in spec.pipeline)
            raise SettingInvalid(
                f"lower: threads = {threads} exceeds the target's cores = {cores}",
                stage_setting_span(spec, self.name, "threads") if written else None,
                note=f"use at most {cores}, or 0 to time 1..{cores} threads and keep the fastest",
            )

    def _choose_threads(self, path, input_shape, ctx: PassContext) -> tuple[int, dict[str, float] | None]:
        """The library's thread count, and each count's median when `threads = 0` timed them.

        Never more than this machine's cores: more TVM workers than cores gain nothing, and as the
        workers spin-wait (TVM_THREAD_POOL_SPIN_COUNT) they starve each other: on 2 cores a pool of
        64 workers took 23 s to shut down at exit, one of 1000 over 2 minutes."""
        from adl.backends.runtime import fastest_thread_count

        cores, here = ctx.spec.target.cores, available_cores()
        limit = min(cores, here)
        if limit < cores:
            ctx.log(
                f"lower: the target has {cores} cores but this machine {here}: the library runs and is timed "
                f"here with at most {limit} threads"
            )
        if self.config["threads"] or limit == 1:
            return min(self.config["threads"] or limit, limit), None
        choice = fastest_thread_count(path, input_shape, limit)
        return choice.threads, {str(n): s for n, s in choice.median_s.items()}

    def _check_agreement(self, agreement, model, ctx: PassContext) -> dict | None:
        """Refuse a library that disagrees with PyTorch beyond `tolerance`, except, in a library
        with integer layers, a few samples whose top-1 class agrees (`rounding_flips`):
        integer layers that hand codes to each other agree bit for bit, but where a float32
        operation sits between them (a residual addition, a mean) the library may sum in another
        order, and an activation within an ulp of a rounding tie can land one code apart and
        carry that through the next layers (docs/passes.md, `rounding_flips`).
        Returns what was let through (for the manifest), or None."""
        from adl.models.integer import IntegerConv2d, IntegerLinear

        tolerance, n = self.config["tolerance"], len(agreement.max_abs_diff)
        over = agreement.over(tolerance)
        if not over:
            return None
        integer = any(isinstance(m, (IntegerConv2d, IntegerLinear)) for m in model.modules())
        changed = int((~agreement.same_top1[agreement.beyond(tolerance)]).sum())
        top1_agrees = changed == 0
        if integer and top1_agrees and over <= self.config["rounding_flips"] * n:
            ctx.log(
                f"lower: {over} of {n} test samples differ from PyTorch by up to {agreement.max:.3g} (requantization "
                f"rounding in the integer layers); their top-1 class agrees"
            )
            return {"samples": over, "of": n, "max_abs_diff": agreement.max}
        detail = (
            f"{over} of {n} test samples exceed the tolerance {tolerance:.3g} (max abs difference {agreement.max:.3g})"
        )
        if integer:
            detail += "; " + (
                f"{changed} of them change the top-1 class"
                if not top1_agrees
                else f"more than rounding_flips = {self.config['rounding_flips']:.3g} of the samples"
            )
        raise PassError(f"the library disagrees with the PyTorch model: {detail}")

    @staticmethod
    def _profile(path, input_shape, threads: int, ctx: PassContext) -> list[dict] | None:
        """Every kernel of the library timed alone; None (logged) if the VM could not be instrumented."""
        from adl.backends.tvm.kernel_profile import profile_library

        try:
            return [k.as_dict() for k in profile_library(path, input_shape, threads=threads)]
        except Exception as err:  # the report loses its per-layer measurements, the library is fine
            ctx.log(
                f"lower: per-kernel timing failed ({type(err).__name__}: {err}); the report shows "
                "predicted per-layer latency only"
            )
            return None

    def _run_remote(self, module: Module, ctx: PassContext, path, info, bar) -> Module:
        """Verify, score and time the library on the RPC device."""
        import numpy as np
        import torch

        from adl.backends.tvm.build import _eval_mode
        from adl.backends.tvm.remote import RemoteError, library_latency, rpc_session

        target, dataset = ctx.spec.target, ctx.dataset()
        x = np.ascontiguousarray(dataset.x_test, dtype=np.float32)
        try:
            with rpc_session(target.rpc, target.key) as session:
                logits = session.run_library(path, x)
                latency = library_latency(
                    session,
                    path,
                    info.input_shape,
                    threads=target.cores,
                    repeats=self.config["repeats"],
                    warmup=self.config["warmup"],
                )
                where = session.where
        except RemoteError as err:
            raise PassError(f"lower: {err}") from err
        with _eval_mode(module.model), torch.no_grad():
            expected = module.model(torch.from_numpy(x.copy())).numpy()
        difference = float(np.max(np.abs(expected.astype(np.float64) - logits.astype(np.float64))))
        if not difference <= self.config["tolerance"]:
            raise PassError(
                f"the library on {where} disagrees with the PyTorch model: max abs difference "
                f"{difference:.3g} exceeds the tolerance {self.config['tolerance']:.3g}"
            )
        bar.advance(2, step=f"verified and measured on {where}")
        accuracy = float(np.mean(np.argmax(logits, axis=-1) == dataset.y_test))
        return (
            module.with_files(library=str(path))
            .with_metrics(
                accuracy=accuracy,
                latency_s=latency.median_s,
                latency=asdict(latency) | {"where": where},
                size_bytes=info.library_bytes,
                max_abs_diff=difference,
                library=asdict(info) | {"file": "model.so"},
            )
            .establish("library")
        )
