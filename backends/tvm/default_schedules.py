"""Deterministic default CPU schedules for the untuned (``tune = none``) TVM path.

TVM 0.27's generic CPU pipeline only legalizes and fuses: every kernel is a naive scalar,
single-threaded loop nest. This module replaces that pipeline with one that adds a few
graph rewrites and a rule-based schedule for every fused PrimFunc. The rules are generic
(they look at loop extents, iteration kinds and buffer indices, never at model or layer
names), deterministic (no sampling, no search) and need no tuning records.

Use::

    target = tvm.target.Target({"kind": "llvm", "num-cores": 2, "mcpu": "znver3"})
    executable = tvm.compile(mod, target=target, relax_pipeline=default_cpu_pipeline(target))

Graph level (:func:`graph_passes`)
    * ``FoldBatchnormToConv2D`` + ``FoldConstant``: conv -> batch_norm becomes conv with
      scaled weights + bias add (the add fuses into the conv epilogue).
    * clip -> maximum/minimum: ``relax.clip`` has no layout inference, so ConvertLayout would
      wrap every ReLU6 in transposes; max/min with scalar constants are layout-agnostic.
    * ``ConvertLayout`` conv2d to NHWC data / HWIO kernel: output channels become the
      innermost, contiguous axis of outputs *and* weights, the axis we vectorize over. The
      weight transposes are folded at compile time by ``FoldConstant``.

TIR level (:class:`CPUDefaultSchedule`, applied after FuseOps/FuseTIR)
    * Blocks with one reduction ("anchor": conv, depthwise conv, matmul, pooling, mean):
      register tile = (innermost output axis, split to ``lanes * nv`` and vectorized) x
      (next spatial axis, split by a small factor and unrolled), with the reduction loops
      *outside* the register tile so accumulators stay in vector registers; outer spatial
      loops fused and parallel; accumulators written through a ``cache_write`` block placed
      at the tile, into which the epilogue (bias, activation, residual add) is
      reverse-inlined; ``decompose_reduction`` hoists the zero-init.
    * Padding and other injective producers of the anchor are inlined when that is legal
      (see :data:`INLINE_PAD`); remaining injective blocks (layout transforms, elementwise
      chains) are inlined into each other, then fused, vectorized and parallelised.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import tvm

__all__ = ["CPUDefaultSchedule", "default_cpu_pipeline", "graph_passes", "schedule_passes"]

_LOG = logging.getLogger(__name__)

#: Inline zero-padding into the convolution (conditional loads) instead of materialising it.
INLINE_PAD = False
#: At most this many vector accumulators per register tile (AVX2 has 16 ymm registers).
MAX_ACCUMULATORS = 12
#: At most this many vectors along the innermost output axis per tile.
MAX_VECTORS = 4
#: Do not parallelise loops with fewer scalar iterations than this (thread launch cost).
MIN_PARALLEL_WORK = 4096


def _scalar(expr) -> float | None:
    """The float value of a constant prim value (``FloatImm``/``IntImm``, possibly wrapped)."""
    value = getattr(expr, "value", None)
    if hasattr(value, "value"):
        value = value.value
    return float(value) if isinstance(value, (int, float)) else None


def _rewrite_clip():
    """A function pass turning ``clip(x, lo, hi)`` into ``minimum(maximum(x, lo), hi)``."""
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class _ClipToMinMax(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 (TVM visitor name)
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.clip"):
                return call
            x, lo, hi = call.args
            dtype = x.ty.dtype
            lo_v, hi_v = _scalar(lo), _scalar(hi)
            if lo_v is None or hi_v is None:
                return call
            lo_c = relax.const(lo_v, dtype)
            hi_c = relax.const(hi_v, dtype)
            return relax.op.minimum(relax.op.maximum(x, lo_c), hi_c)

    @relax.transform.function_pass(opt_level=0, name="ClipToMinMax")
    def _pass(func, mod, ctx):
        if not isinstance(func, relax.Function):
            return func
        return _ClipToMinMax(mod).visit_expr(func)

    return _pass


def graph_passes() -> list:
    """Relax-level preparation: fold BN into conv weights, make conv NHWC/HWIO, fold constants."""
    from tvm import relax

    return [
        relax.transform.FoldBatchnormToConv2D(),
        relax.transform.DecomposeOpsForInference(),  # any BN left (not after a conv)
        relax.transform.FoldConstant(),
        _rewrite_clip(),
        relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}),
        relax.transform.FoldConstant(),
    ]


# ----------------------------------------------------------------------------------------------
# TIR schedule rule
# ----------------------------------------------------------------------------------------------


def _int(expr) -> int | None:
    from tvm import tirx

    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def _largest_divisor(n: int, limit: int) -> int:
    for d in range(max(1, min(n, limit)), 0, -1):
        if n % d == 0:
            return d
    return 1


def _make_rule():
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.base import ScheduleRule
    from tvm.target.codegen import llvm_get_vector_width, target_has_features

    def _lanes(target, dtype_bits: int) -> int:
        """SIMD lanes for ``dtype_bits``. (``llvm_get_vector_width`` says 512 for znver3,
        which has no AVX-512, so x86 is decided by CPU features.)"""
        try:
            if target_has_features("avx512f", target):
                bits = 512
            elif target_has_features("avx", target):
                bits = 256
            else:
                bits = min(llvm_get_vector_width(target), 128)
        except Exception:  # noqa: BLE001
            bits = 128
        return max(1, (bits if bits > 0 else 128) // dtype_bits)

    def _is_reduction(sch, block_rv) -> bool:
        return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block_rv).iter_vars)

    def _trivially_bound(sch, block_rv) -> bool:
        """Each loop around the block binds exactly one block iter, in order (TOPI/TE form)."""
        block = sch.get(block_rv)
        loops = sch.get_loops(block_rv)
        realize = sch.get_sref(block_rv).stmt  # the block itself
        del realize
        if len(loops) != len(block.iter_vars):
            return False
        # sblock realize values are the loop vars
        parent = sch.get_sref(block_rv).parent
        del parent
        return True

    def _inline_all(sch, blocks, keep) -> list:
        """compute_inline / reverse_compute_inline until nothing changes; return the rest."""
        remaining = [b for b in blocks]
        changed = True
        while changed:
            changed = False
            for b in list(remaining):
                if any(sch.same_as(b, k) if hasattr(sch, "same_as") else False for k in keep):
                    continue
                if _is_reduction(sch, b):
                    continue
                for prim in (sch.compute_inline, sch.reverse_compute_inline):
                    try:
                        prim(b)
                    except Exception:  # noqa: BLE001 (TVM raises ScheduleError subclasses)
                        continue
                    remaining.remove(b)
                    changed = True
                    break
        return remaining

    def _schedule_injective(sch, block_rv, lanes: int) -> None:
        """Fuse all loops, vectorize ``lanes`` innermost iterations, parallelise the rest."""
        loops = sch.get_loops(block_rv)
        if not loops:
            return
        block = sch.get(block_rv)
        extents = [_int(sch.get(lp).extent) for lp in loops]
        if any(e is None for e in extents):
            sch.parallel(loops[0])
            return
        total = 1
        for e in extents:
            total *= e
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        inner_ok = extents[-1] % lanes == 0 and len(block.writes) == 1
        if inner_ok and total >= lanes:
            outer, vec = sch.split(fused, factors=[None, lanes])
            sch.vectorize(vec)
        else:
            outer = fused
        if total >= MIN_PARALLEL_WORK:
            sch.parallel(outer)

    def _schedule_anchor(sch, block_rv, lanes: int) -> bool:
        """Register-tile, vectorize and parallelise a single-reduction block. False: not applicable."""
        block = sch.get(block_rv)
        loops = sch.get_loops(block_rv)
        ivs = list(block.iter_vars)
        if len(loops) != len(ivs) or len(block.writes) != 1:
            return False
        extents = [_int(iv.dom.extent) for iv in ivs]
        if any(e is None for e in extents):
            return False
        spatial = [i for i, iv in enumerate(ivs) if iv.iter_type == tirx.IterVar.DataPar]
        reduce = [i for i, iv in enumerate(ivs) if iv.iter_type == tirx.IterVar.CommReduce]
        if len(spatial) + len(reduce) != len(ivs) or not reduce or not spatial:
            return False
        # Loops must be ordered spatial..., reduction... and bound 1:1 (true for TOPI output).
        if spatial != list(range(len(spatial))):
            return False

        # The vector axis: the innermost non-unit spatial iter, if it indexes the innermost
        # non-unit dimension of the output (so vector stores are contiguous).
        nonunit = [i for i in spatial if extents[i] > 1]
        if not nonunit:
            return False
        v = nonunit[-1]
        write = block.writes[0]
        out_idx = [r.min for r in write.region]
        out_shape = [_int(d) for d in write.source.shape]
        last_dim = max((d for d, s in enumerate(out_shape) if s != 1), default=None)
        contiguous = (
            last_dim is not None
            and isinstance(out_idx[last_dim], tirx.Var)
            and out_idx[last_dim].same_as(ivs[v].var)
        )
        ext_v = extents[v]
        if contiguous and ext_v % lanes == 0:
            nv = max(d for d in range(1, MAX_VECTORS + 1) if (ext_v // lanes) % d == 0)
            v_tile = lanes * nv
        elif contiguous and ext_v <= 2 * lanes:
            nv, v_tile = 1, ext_v
        else:
            nv, v_tile = 1, 1
        # Second register-tile axis: the next non-unit spatial iter outwards.
        w = nonunit[-2] if len(nonunit) >= 2 else None
        w_tile = 1
        if w is not None and v_tile > 1:
            w_tile = _largest_divisor(extents[w], max(1, MAX_ACCUMULATORS // nv))

        # Split spatial loops into outer / inner.
        outer, inner_w, inner_v = [], None, None
        for i in spatial:
            lp = loops[i]
            if i == v and v_tile > 1:
                o, inner_v = sch.split(lp, factors=[None, v_tile])
                outer.append(o)
            elif i == w and w_tile > 1:
                o, inner_w = sch.split(lp, factors=[None, w_tile])
                outer.append(o)
            else:
                outer.append(lp)
        red = [loops[i] for i in reduce]
        tile = [x for x in (inner_w, inner_v) if x is not None]
        sch.reorder(*outer, *red, *tile)

        # Accumulate in a per-tile buffer, write back (with the fused epilogue) per tile.
        work = 1
        for i in spatial:
            work *= extents[i]
        par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        wb = sch.cache_write(block_rv, 0, "global")
        # Epilogue blocks (bias, activation, residual) fold into the write-back.
        _inline_consumers(sch, wb)
        sch.reverse_compute_at(wb, par, preserve_unit_loops=True)
        if work * max(1, _reduce_size(extents, reduce)) >= MIN_PARALLEL_WORK:
            sch.parallel(par)
        if inner_v is not None:
            _vector_tail(sch, block_rv, lanes, v_tile, unroll_outer=True)
            _vector_tail(sch, wb, lanes, v_tile)
        init = sch.decompose_reduction(block_rv, red[0])
        if inner_v is not None and sch.get(sch.get_loops(init)[-1]).kind != tirx.ForKind.VECTORIZED:
            _vector_tail(sch, init, lanes, v_tile)
        return True

    def _reduce_size(extents, reduce) -> int:
        n = 1
        for i in reduce:
            n *= extents[i]
        return n

    def _inline_consumers(sch, block_rv) -> None:
        while True:
            consumers = sch.get_consumers(block_rv)
            done = False
            for c in consumers:
                try:
                    sch.reverse_compute_inline(c)
                    done = True
                    break
                except Exception:  # noqa: BLE001
                    continue
            if not done:
                return

    def _vector_tail(sch, block_rv, lanes, v_tile, unroll_outer=False) -> None:
        """Innermost loop (extent ``v_tile``): vectorize ``lanes`` of it, unroll the rest."""
        loops = sch.get_loops(block_rv)
        inner = loops[-1]
        if _int(sch.get(inner).extent) != v_tile:
            return
        if v_tile > lanes and v_tile % lanes == 0:
            o, inner = sch.split(inner, factors=[None, lanes])
            sch.unroll(o)
        sch.vectorize(inner)
        if unroll_outer and len(loops) >= 2 and sch.get(loops[-2]).kind == tirx.ForKind.SERIAL:
            # the register-tile loop along the second axis (unit loops are harmless to unroll)
            ext = _int(sch.get(loops[-2]).extent)
            if ext is not None and ext <= MAX_ACCUMULATORS:
                sch.unroll(loops[-2])

    class CPUDefaultSchedule(ScheduleRule):
        """Generic CPU schedule: see the module docstring. Returns None for non-LLVM targets."""

        def apply(self, func, target, tunable):  # noqa: D401
            if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
                return None
            sch = s_tir.Schedule(func)
            try:
                root = sch.get_sblock("root")
            except Exception:  # noqa: BLE001
                return None
            blocks = list(sch.get_child_blocks(root))
            if not blocks:
                return None
            bits = 32
            try:
                bits = sch.get(blocks[-1]).writes[0].source.dtype.bits
            except Exception:  # noqa: BLE001
                pass
            lanes = _lanes(target, bits)
            reductions = [b for b in blocks if _is_reduction(sch, b)]
            if len(reductions) == 1:
                anchor = reductions[0]
                producers = [b for b in blocks if not _is_reduction(sch, b)]
                # Inline producers (padding when INLINE_PAD) into the anchor.
                for b in producers:
                    if not INLINE_PAD and "pad" in sch.get(b).name_hint:
                        continue
                    try:
                        sch.compute_inline(b)
                    except Exception:  # noqa: BLE001
                        pass
                try:
                    ok = _schedule_anchor(sch, anchor, lanes)
                except Exception as exc:  # noqa: BLE001
                    _LOG.debug("anchor rule failed on %s: %s", sch.get(anchor).name_hint, exc)
                    ok = False
                if not ok:
                    return _fallback(func, lanes)
                for b in sch.get_child_blocks(root):
                    if not _is_reduction(sch, b) and not sch.get_loops(b) == []:
                        if sch.get(sch.get_loops(b)[0]).kind == tirx.ForKind.SERIAL and _top_level(sch, b, root):
                            _schedule_injective(sch, b, lanes)
                return sch
            if not reductions:
                rest = _inline_all(sch, blocks, keep=[])
                for b in rest:
                    _schedule_injective(sch, b, lanes)
                return sch
            return _fallback(func, lanes)

    def _top_level(sch, block_rv, root) -> bool:
        return any(sch.get(b).same_as(sch.get(block_rv)) for b in sch.get_child_blocks(root))

    def _fallback(func, lanes):
        """Several reductions (softmax, norms) or odd loop nests: parallelise outer spatial loops."""
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        for b in sch.get_child_blocks(root):
            loops = sch.get_loops(b)
            if not loops:
                continue
            ivs = sch.get(b).iter_vars
            if len(loops) == len(ivs) and ivs[0].iter_type == tirx.IterVar.DataPar:
                ext = _int(ivs[0].dom.extent)
                if ext is not None and ext > 1:
                    sch.parallel(loops[0])
        return sch

    return CPUDefaultSchedule


_RULE_CLASS = None


def CPUDefaultSchedule():  # noqa: N802 (class-like factory; TVM imported lazily)
    """The rule-based CPU schedule as a ``tvm.s_tir.dlight`` ``ScheduleRule`` instance."""
    global _RULE_CLASS
    if _RULE_CLASS is None:
        _RULE_CLASS = _make_rule()
    return _RULE_CLASS()


def schedule_passes() -> list:
    """Legalize, fuse and apply :func:`CPUDefaultSchedule` to every PrimFunc."""
    from tvm import relax
    from tvm.s_tir import dlight as dl

    return [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        dl.ApplyDefaultSchedule(CPUDefaultSchedule()),
    ]


def default_cpu_pipeline(target: "tvm.target.Target") -> "tvm.transform.Pass":
    """The whole Relax pipeline for ``tvm.compile(mod, target, relax_pipeline=...)``.

    Same as TVM's ``cpu_generic`` default pipeline (library dispatch, legalize, fuse, lower,
    finalize) plus :func:`graph_passes` before legalization and :func:`CPUDefaultSchedule`
    after fusion.
    """
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="AdlDefaultCPUPipeline")
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential(
                cpu.library_dispatch_passes(target)
                + graph_passes()
                + schedule_passes()
                + cpu.dataflow_lower_passes(target)
                + cpu.finalize_passes(target)
            )
            mod = seq(mod)
        return mod

    return _pipeline
