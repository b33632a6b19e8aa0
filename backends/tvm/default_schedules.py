"""Deterministic default CPU schedules for the untuned (``tune = none``) TVM path.

TVM 0.27's generic CPU pipeline only legalizes and fuses: every kernel is a naive scalar,
single-threaded loop nest. This module replaces that pipeline with one that adds a few
graph rewrites and a rule-based schedule for every fused PrimFunc. The rules are generic
(they look at loop extents, iteration kinds and buffer indices, never at model or layer
names), deterministic (no sampling, no search) and need no tuning records.

Use (this is the whole Relax pipeline; TVM's default TIR pipeline still runs after it)::

    target = tvm.target.Target({"kind": "llvm", "num-cores": 2, "mcpu": "znver3"})
    executable = tvm.compile(mod, target=target, relax_pipeline=default_cpu_pipeline(target))

Graph level (:func:`graph_passes`, before legalization)
    * :func:`fold_batchnorm_into_conv`: conv [+ bias] -> batch_norm becomes a conv with
      numpy-scaled constant weights + a bias add (which fuses into the conv epilogue).
    * clip -> maximum/minimum: ``relax.clip`` has no layout inference, so ConvertLayout would
      wrap every ReLU6 in a transpose pair; max/min with scalar constants are layout-agnostic.
    * ``ConvertLayout`` conv2d to NHWC data / HWIO kernel: output channels become the
      innermost, contiguous axis of outputs *and* weights -- the axis we vectorize over.

Constant folding (:func:`fold_constant_calls`, after LegalizeOps and after scheduling)
    Evaluates weight transposes and weight repacking at compile time, with one LLVM build per
    round instead of FoldConstant's one build per call (MobileNetV2: 35 s -> ~3 s).

TIR level (:func:`CPUDefaultSchedule`, after FuseOps/FuseTIR, via ``dlight.ApplyDefaultSchedule``)
    * PrimFuncs with one reduction block (the "anchor": conv, depthwise conv, matmul, mean):
      register tile = (innermost output axis, split to ``lanes * nv`` lanes, vectorized by
      ``lanes`` and unrolled; an axis that is not a multiple of ``lanes`` uses its largest
      power-of-two divisor as the vector width) x (next non-unit spatial axis, split by a small divisor,
      unrolled); the reduction loops sit *outside* that tile so the accumulators stay in
      vector registers; the outer spatial loops are fused into one parallel loop. The
      accumulators go through a ``cache_write`` block placed per tile, into which the
      epilogue (bias, activation, residual add) is reverse-inlined; ``decompose_reduction``
      hoists the zero-init out of the reduction.
    * Constant operands (weights) indexed by the vectorized axis in their innermost dimension
      are repacked ``[C // tile, ..., C % tile]`` (``layout_rewrite_preproc`` block, split out
      by ``SplitLayoutRewritePreproc`` and folded), so a tile's weights are contiguous.
    * Padding stays a separate (parallel, vectorized) loop nest; other injective producers
      are inlined into the anchor. PrimFuncs without a reduction (layout transforms,
      elementwise chains) are inlined into one block, fused, vectorized (by ``lanes``, or the
      innermost axis's largest power-of-two divisor) and parallelised.
    * Anything else (several reductions, e.g. softmax) only gets its outer loop parallelised.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from adl.backends.tvm.padding_taps import skip_padding_taps
from adl.backends.tvm.register_tiles import largest_divisor, register_tile

if TYPE_CHECKING:  # pragma: no cover
    import tvm

__all__ = [
    "CPUDefaultSchedule",
    "default_cpu_pipeline",
    "fold_batchnorm_into_conv",
    "fast_sigmoid",
    "fold_constant_calls",
    "graph_passes",
    "schedule_passes",
]

_LOG = logging.getLogger(__name__)

#: the int8 kernels scheduled since the last `int8_kernel_counts()` ("vnni" or "generic" each):
#: how `lower` learns which path a library's integer layers took
INT8_KERNELS: list[str] = []


def int8_kernel_counts() -> dict[str, int]:
    """How many int8 reductions were scheduled on each path since the last call (and reset)."""
    counts = {path: INT8_KERNELS.count(path) for path in sorted(set(INT8_KERNELS))}
    INT8_KERNELS.clear()
    return counts

# Knobs of the rules (module constants so experiments can flip them; the defaults are what
# measured best on a Zen 3 (AVX2) and, where they say so, on a Zen 4 (AVX-512)).
#: Inline zero-padding into the convolution (conditional loads) instead of materialising it:
#: "auto" inlines on AVX-512 targets and keeps the padded copy on narrower ones. Measured with
#: torchvision networks at 224x224, batch 1, on a Zen 4 (AVX-512): inlined, MobileNetV2 ran
#: 3.2 ms instead of 3.8 (its depthwise kernels 2-3x faster), MNASNet -13 %, EfficientNet-B0
#: -12 %, ResNet-18 the same; on a Zen 3 (AVX2) the copy had measured faster.
INLINE_PAD: bool | str = "auto"
#: At most this many vector accumulators per register tile with 16 vector registers (AVX2's ymm).
MAX_ACCUMULATORS = 12
#: ... and with 32 (AVX-512's zmm): the tile's buffer must stay under TVM's 1 KiB limit for stack
#: buffers (15 x 64 bytes); a larger one becomes a TVMBackendAllocWorkspace call per tile
MAX_ACCUMULATORS_32_REGISTERS = 15
#: At most this many vectors along the innermost output axis per tile.
MAX_VECTORS = 4
#: Repack constant operands (weights) so each register tile's slice is contiguous.
PACK_WEIGHTS = True
#: Put the vector-axis (output channel) tile loop outermost in the parallel loop nest, so
#: consecutive iterations reuse the same weight slice from cache.
VECTOR_TILE_OUTERMOST = False
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


def _vectorizable_sigmoid(x):
    """``1 / (1 + exp(-x))`` with TOPI's ``fast_exp`` (a polynomial on the float's exponent
    and mantissa: vector code), where ``topi.sigmoid``'s ``exp`` is a call of libm's ``expf``
    per element. Its relative error is a few float32 ulps."""
    from tvm import topi

    one = 1.0
    return topi.divide(one, topi.add(one, topi.fast_exp(topi.negative(x))))


def fast_sigmoid():
    """A module pass: ``sigmoid(x)`` and ``silu(x) = x * sigmoid(x)`` computed with
    :func:`_vectorizable_sigmoid`. EfficientNet's SiLU epilogues went through scalar ``expf``
    calls: a 16 -> 96 1x1 convolution at 112x112 took 1.66 ms with them and 0.2 ms with ReLU6."""
    import tvm
    from tvm import relax, topi

    kinds = {"relax.sigmoid": _vectorizable_sigmoid,
             "relax.nn.silu": lambda x: topi.multiply(x, _vectorizable_sigmoid(x))}

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 (TVM visitor name)
            call = super().visit_call_(call)
            name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
            ty = call.args[0].ty if name in kinds else None
            if ty is None or not isinstance(ty, relax.TensorType) or ty.dtype != "float32":
                return call
            return self.builder_.call_te(kinds[name], call.args[0], primfunc_name_hint=name.split(".")[-1])

    @tvm.transform.module_pass(opt_level=0, name="AdlFastSigmoid")
    def _pass(mod, _ctx):
        rewrite = _Rewrite(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewrite.builder_.update_func(gv, rewrite.visit_expr(func))
        return rewrite.builder_.get()

    return _pass


def fold_constant_calls():
    """A module pass: evaluate every ``call_tir`` whose arguments are all constants.

    Does what ``relax.transform.FoldConstant`` does for ``call_tir``, but compiles all the
    foldable PrimFuncs of a round into ONE module (one LLVM invocation) instead of one build
    per call: FoldConstant spent ~25 s folding MobileNetV2's BN/transposed weights, this takes
    about a second per round. Repeats until nothing is left (chains of folds take a round per
    link).
    """
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    _Const = type(relax.const(0.0))  # relax constants (``GenericConst`` in TVM 0.27)

    def _foldable(call) -> bool:
        if not (isinstance(call, relax.Call) and call.op.same_as(call_tir)):
            return False
        args = call.args[1]
        if not isinstance(args, relax.Tuple) or not all(isinstance(a, _Const) for a in args.fields):
            return False
        ty = call.ty
        return isinstance(ty, relax.TensorType) and all(isinstance(d, tvm.tirx.IntImm) for d in ty.shape)

    @relax.expr_functor.visitor
    class _Collect(relax.PyExprVisitor):
        def __init__(self):
            super().__init__()
            self.calls = []

        def visit_call_(self, call):  # noqa: N802
            if _foldable(call):
                self.calls.append(call)
            else:
                super().visit_call_(call)

    @relax.expr_functor.mutator
    class _Replace(relax.PyExprMutator):
        def __init__(self, mod, done):
            super().__init__(mod)
            self.done = done

        def visit_call_(self, call):  # noqa: N802
            for orig, const in self.done:
                if call.same_as(orig):
                    return const
            return super().visit_call_(call)

    @tvm.transform.module_pass(opt_level=0, name="AdlFoldConstantCalls")
    def _pass(mod, _ctx):
        for _ in range(16):
            calls = []
            for gv, func in mod.functions_items():
                if isinstance(func, relax.Function):
                    collector = _Collect()
                    collector.visit_expr(func)
                    calls.extend(collector.calls)
            if not calls:
                break
            names = sorted({c.args[0].name_hint for c in calls})
            lib_mod = tvm.IRModule({n: mod[n].with_attr("global_symbol", n) for n in names})
            lib = tvm.compile(lib_mod, target=tvm.target.Target("llvm"))
            done = []
            for c in calls:
                out = tvm.runtime.empty([int(d) for d in c.ty.shape], c.ty.dtype, tvm.cpu())
                lib[c.args[0].name_hint](*[a.value for a in c.args[1].fields], out)
                done.append((c, relax.const(out.numpy(), c.ty.dtype)))
            updated = {}
            for gv, func in mod.functions_items():
                if isinstance(func, relax.Function):
                    updated[gv] = _Replace(mod, done).visit_expr(func)
            for gv, func in updated.items():
                mod[gv] = func
            mod = relax.transform.DeadCodeElimination()(mod)
        return mod

    return _pass


def fold_batchnorm_into_conv():
    """A function pass: ``conv2d(x, W) [+ bias] -> batch_norm(...)[0]`` with constant W, bias
    and BN parameters becomes ``conv2d(x, W * s) + (beta - (mean - bias) * s)``, ``s = gamma / sqrt(var + eps)``,
    computed with numpy (float32) so the new weight is a plain constant right away.

    (TVM's ``FoldBatchnormToConv2D`` emits the arithmetic as Relax ops, which ConvertLayout
    then trips over and FoldConstant needs ~25 s of one-build-per-op to evaluate.)
    """
    import numpy as np
    from tvm import relax
    from tvm.relax.dpl import TupleGetItemPattern, is_const, is_op, rewrite_call, wildcard

    x, w = wildcard(), is_const()
    conv = is_op("relax.nn.conv2d")(x, w)
    conv_bias = is_const()  # a conv with bias: add(conv, [reshape](bias))
    biased = is_op("relax.add")(conv, conv_bias | is_op("relax.reshape")(conv_bias, wildcard()))
    gamma, beta, mean, var = is_const(), is_const(), is_const(), is_const()
    bn = is_op("relax.nn.batch_norm")(conv | biased, gamma, beta, mean, var)
    pattern = TupleGetItemPattern(bn, 0)

    def rewriter(expr, m):
        attrs = m[conv].attrs
        if (
            attrs.kernel_layout != "OIHW"
            or attrs.data_layout != "NCHW"
            or attrs.out_layout != "NCHW"
            or int(m[bn].attrs.axis) != 1
        ):
            return expr
        weight = m[w].value.numpy()
        dtype = weight.dtype
        g, b, mu, v = (m[p].value.numpy().astype(np.float64) for p in (gamma, beta, mean, var))
        scale = g / np.sqrt(v + float(m[bn].attrs.epsilon))
        if conv_bias in m:
            cb = m[conv_bias].value.numpy().astype(np.float64)
            if cb.size != scale.size:
                return expr
            mu = mu - cb.reshape(-1)
        new_w = (weight.astype(np.float64) * scale.reshape(-1, 1, 1, 1)).astype(dtype)
        bias = (b - mu * scale).astype(dtype).reshape(1, -1, 1, 1)
        out = relax.Call(m[conv].op, (m[x], relax.const(new_w, str(dtype))), attrs)
        return relax.op.add(out, relax.const(bias, str(dtype)))

    @relax.transform.function_pass(opt_level=0, name="AdlFoldBatchnormIntoConv")
    def _pass(func, mod, ctx):
        if not isinstance(func, relax.Function):
            return func
        return rewrite_call(pattern, rewriter, func)

    return _pass


def graph_passes() -> list:
    """Relax-level preparation: fold BN into conv weights, make conv NHWC/HWIO, fold constants."""
    from tvm import relax

    return [
        fold_batchnorm_into_conv(),
        skip_padding_taps(),  # after the BN fold, which only matches the original convolutions
        relax.transform.DecomposeOpsForInference(),  # any BN left (not after a conv)
        _rewrite_clip(),
        relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}),
        fast_sigmoid(),  # after ConvertLayout, which would not see through its call_tir
    ]


# ----------------------------------------------------------------------------------------------
# TIR schedule rule
# ----------------------------------------------------------------------------------------------


def _int(expr) -> int | None:
    from tvm import tirx

    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def _largest_power_of_two_divisor(n: int, limit: int) -> int:
    d = 1
    while d * 2 <= limit and n % (d * 2) == 0:
        d *= 2
    return d


def _lanes(target, dtype_bits: int) -> int:
    """SIMD lanes of a ``tvm.target.Target`` for ``dtype_bits``: the vector width the default
    schedules tile by. (``llvm_get_vector_width`` says 512 for znver3, which has no AVX-512, so
    x86 is decided by CPU features.)"""
    from tvm.target.codegen import llvm_get_vector_width, target_has_features

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


def _accumulators(target) -> int:
    """Vector accumulators a register tile may hold on ``target``: more where the ISA has 32
    vector registers (AVX-512) than 16 (AVX2)."""
    return MAX_ACCUMULATORS_32_REGISTERS if _lanes(target, 32) >= 16 else MAX_ACCUMULATORS


def float_lanes(target: dict) -> int:
    """float32 SIMD lanes of a target dict (this machine's CPU when it names none): 8 on AVX2,
    16 on AVX-512, 4 on NEON. Channel counts that are multiples of it stay on the default
    schedules' fast path (docs/amc.md: other counts ran 5-20x slower until they were tiled by
    their largest power-of-two divisor, in narrower vectors)."""
    import tvm

    from adl.backends.tvm.build import native_target

    return _lanes(tvm.target.Target(native_target(dict(target))), 32)


def _make_rule():
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.base import ScheduleRule

    from adl.backends.tvm import int8_kernels

    def _is_reduction(sch, block_rv) -> bool:
        return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block_rv).iter_vars)

    def _inline_all(sch, blocks) -> list:
        """compute_inline / reverse_compute_inline until nothing changes; return the rest."""
        remaining = list(blocks)
        changed = True
        while changed:
            changed = False
            for b in list(remaining):
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
        # vectors of the innermost axis: all `lanes` where it is a multiple, else its largest
        # power-of-two divisor (an int8 tensor of 16 channels on AVX-512: 16 of the 64 lanes,
        # not a scalar loop -- requantize-and-pad at 28x28x16 took 40 us scalar)
        vector = _largest_power_of_two_divisor(extents[-1], lanes)
        if vector >= 4 and len(block.writes) == 1 and total >= vector:
            outer, vec = sch.split(fused, factors=[None, vector])
            sch.vectorize(vec)
        else:
            outer = fused
        if total >= MIN_PARALLEL_WORK:
            sch.parallel(outer)

    def _pack_constant_operands(sch, block_rv, var, tile: int, layout_free) -> None:
        """Repack constant operands whose innermost dim is indexed by ``var`` (the vector
        axis) as ``[dim // tile, ..., dim % tile]``: the slice one register tile reads becomes
        contiguous instead of ``tile`` floats every ``dim`` floats (a power-of-two stride that
        maps a whole weight slice onto a few cache sets). The copy is a
        ``layout_rewrite_preproc`` block; SplitLayoutRewritePreproc + FoldConstant run it at
        compile time."""
        block = sch.get(block_rv)
        for idx, region in enumerate(block.reads):
            buf = region.source
            if not any(buf.same_as(b) for b in layout_free):
                continue
            last = region.region[-1]
            if not (isinstance(last.min, tirx.Var) and last.min.same_as(var) and _int(last.extent) == 1):
                continue
            ndim = len(buf.shape)
            if _int(buf.shape[-1]) is None or _int(buf.shape[-1]) % tile:
                continue
            cache = sch.cache_read(block_rv, idx, "global")
            sch.transform_layout(
                block_rv,
                ("read", idx),
                tirx.IndexMap.from_func(
                    lambda *ax: (ax[-1] // tile, *ax[:-1], ax[-1] % tile), ndim=ndim
                ),
            )
            sch.annotate(cache, "meta_schedule.layout_rewrite_preproc", True)

    def _schedule_anchor(sch, block_rv, lanes: int, layout_free=(), accumulators: int = MAX_ACCUMULATORS) -> bool:
        """Register-tile (at most `accumulators` vectors), vectorize and parallelise a
        single-reduction block. False: not applicable."""
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
        # Second register-tile axis: the next non-unit spatial iter outwards.
        w = nonunit[-2] if len(nonunit) >= 2 else None
        width = extents[w] if w is not None else 1
        # vectors of `vector` lanes: the target's width where the axis is a multiple of it, else
        # the axis's largest power-of-two divisor (24 channels on AVX-512: three vectors of 8;
        # one 24-lane vector, which LLVM legalizes element by element, ran 5-10x slower)
        vector = lanes if ext_v % lanes == 0 else _largest_power_of_two_divisor(ext_v, lanes)
        if contiguous and vector >= min(4, lanes):
            nv, w_tile = register_tile(ext_v // vector, width, accumulators, MAX_VECTORS)
            v_tile = vector * nv
        elif contiguous and ext_v <= 2 * lanes:
            nv, v_tile, vector = 1, ext_v, ext_v
            w_tile = largest_divisor(width, accumulators)
        else:
            nv, v_tile, w_tile = 1, 1, 1

        if v_tile > 1 and PACK_WEIGHTS:
            _pack_constant_operands(sch, block_rv, ivs[v].var, v_tile, layout_free)

        # Split spatial loops into outer / inner.
        outer, inner_w, inner_v = [], None, None
        for i in spatial:
            lp = loops[i]
            if i == v and v_tile > 1:
                o, inner_v = sch.split(lp, factors=[None, v_tile])
                outer.insert(0, o) if VECTOR_TILE_OUTERMOST else outer.append(o)
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
            _vector_tail(sch, block_rv, vector, v_tile, unroll_outer=True)
            _vector_tail(sch, wb, vector, v_tile)
        init = sch.decompose_reduction(block_rv, red[0])
        if inner_v is not None and sch.get(sch.get_loops(init)[-1]).kind != tirx.ForKind.VECTORIZED:
            _vector_tail(sch, init, vector, v_tile)
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
            generic_only = func.attrs is not None and "adl.int8_generic" in func.attrs
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
                others = [b for b in blocks if not _is_reduction(sch, b)]
                # u8 x s8 -> s32 on a VNNI target: its data operand must stay a buffer (what
                # vpdpbusd broadcasts from), so the anchor's direct producers are materialised
                vnni = not generic_only and int8_kernels.int8_path(target) == "vnni" and int8_kernels.vnni_candidate(
                    sch, anchor, _layout_free(func))
                keep = {sch.get(b).name_hint for b in sch.get_producers(anchor)} if vnni else set()
                # Inline producers (padding only when INLINE_PAD) into the anchor.
                inline_pad = INLINE_PAD if isinstance(INLINE_PAD, bool) else _lanes(target, 32) >= 16
                leftovers = []
                for b in others:
                    padding = "pad" in sch.get(b).name_hint and not _is_plain_copy(sch, b)
                    if (not inline_pad and padding) or sch.get(b).name_hint in keep:
                        leftovers.append(b)
                        continue
                    try:
                        sch.compute_inline(b)
                    except Exception:  # noqa: BLE001
                        leftovers.append(b)
                # The register tile holds the anchor's accumulators: size it by their type
                # (an int8 convolution accumulates in int32, 4x wider than what it writes).
                try:
                    anchor_lanes = _lanes(target, sch.get(anchor).writes[0].source.dtype.bits)
                except Exception:  # noqa: BLE001
                    anchor_lanes = lanes
                ok = False
                if vnni:
                    try:
                        ok = int8_kernels.schedule_vnni_reduction(sch, anchor, _layout_free(func))
                    except Exception as exc:  # noqa: BLE001 (then the generic int32 schedule, from scratch)
                        _LOG.warning("VNNI schedule failed on %s, generic int8 kernel instead: %s",
                                     sch.get(anchor).name_hint, str(exc).splitlines()[0] if str(exc) else exc)
                        return self.apply(func.with_attr("adl.int8_generic", True), target, tunable)
                    if ok:
                        INT8_KERNELS.append("vnni")
                if not ok:
                    try:
                        ok = _schedule_anchor(sch, anchor, anchor_lanes, _layout_free(func), _accumulators(target))
                    except Exception as exc:  # noqa: BLE001
                        _LOG.debug("anchor rule failed on %s: %s", sch.get(anchor).name_hint, exc)
                        ok = False
                    if ok and _is_int8_reduction(sch, anchor):
                        INT8_KERNELS.append("generic")
                if not ok:
                    return _fallback(func, lanes)
                # Blocks left at the root (materialised padding, a non-inlinable producer):
                # epilogues were reverse-inlined into the write-back, so whatever still has
                # its own serial loop nest gets the elementwise treatment.
                for b in leftovers:
                    try:
                        loops = sch.get_loops(b)
                        if loops and sch.get(loops[0]).kind == tirx.ForKind.SERIAL:
                            _schedule_injective(sch, b, lanes)
                    except Exception as exc:  # noqa: BLE001 (it was inlined/consumed meanwhile)
                        _LOG.debug("leftover block not scheduled: %s", exc)
                return sch
            if not reductions:
                rest = _inline_all(sch, blocks)
                for b in rest:
                    _schedule_injective(sch, b, lanes)
                return sch
            return _fallback(func, lanes)

    def _is_plain_copy(sch, block_rv) -> bool:
        """Whether a "pad" block pads nothing (a 1x1 or unpadded convolution): it reads one buffer
        of the shape it writes, so inlining it costs no conditional load, and materialising it
        copied the whole input (112x112x16 floats before each such MobileNetV2 layer)."""
        block = sch.get(block_rv)
        if len(block.reads) != 1 or len(block.writes) != 1:
            return False
        source, written = block.reads[0].source, block.writes[0].source
        return [_int(d) for d in source.shape] == [_int(d) for d in written.shape]

    def _is_int8_reduction(sch, block_rv) -> bool:
        """Whether the block multiplies 8-bit integers (what the int8 kernel statistics count)."""
        return any(str(r.source.dtype) in ("int8", "uint8") for r in sch.get(block_rv).reads)

    def _layout_free(func) -> list:
        """Buffers of the params that AttachAttrLayoutFreeBuffers marked as constants."""
        attrs = func.attrs
        if attrs is None or "layout_free_buffers" not in attrs:
            return []
        out = []
        for i in attrs["layout_free_buffers"]:
            p = func.params[int(i)]
            out.append(func.buffer_map[p] if hasattr(func, "buffer_map") and p in func.buffer_map else p)
        return out

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
        fold_constant_calls(),  # BN scaling, weight transposes: compile time, in one build
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),  # whatever is left (nothing, normally)
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.AttachAttrLayoutFreeBuffers(),
        dl.ApplyDefaultSchedule(CPUDefaultSchedule()),
        relax.transform.SplitLayoutRewritePreproc(),
        fold_constant_calls(),  # the weight repacking
        relax.transform.CanonicalizeBindings(),
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
