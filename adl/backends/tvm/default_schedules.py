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
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from adl.backends.tvm.padding_taps import skip_padding_taps
from adl.backends.tvm.register_tiles import largest_divisor, register_tile
from adl.hwmodels.cpu import simd_lanes

if TYPE_CHECKING:  # pragma: no cover
    import tvm
    from tvm import tirx
    from tvm.s_tir.schedule import LoopRV, SBlockRV, Schedule

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
    per element. Its absolute error stays below 1.2e-7 (tested against float64); its relative
    error is a few float32 ulps only above x of about -88: below, the exact value is under
    float32's smallest normal number and ``fast_exp`` clamps its argument."""
    from tvm import topi

    one = 1.0
    return topi.divide(one, topi.add(one, topi.fast_exp(topi.negative(x))))


def fast_sigmoid():
    """A module pass: ``sigmoid(x)`` and ``silu(x) = x * sigmoid(x)`` computed with
    :func:`_vectorizable_sigmoid`. EfficientNet's SiLU epilogues went through scalar ``expf``
    calls: a 16 -> 96 1x1 convolution at 112x112 took 1.66 ms with them and 0.2 ms with ReLU6."""
    import tvm
    from tvm import relax, topi

    kinds = {
        "relax.sigmoid": _vectorizable_sigmoid,
        "relax.nn.silu": lambda x: topi.multiply(x, _vectorizable_sigmoid(x)),
    }

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

        def visit_call_(self, call):  # noqa: N802 (TVM visitor name)
            if _foldable(call):
                self.calls.append(call)
            else:
                super().visit_call_(call)

    @relax.expr_functor.mutator
    class _Replace(relax.PyExprMutator):
        def __init__(self, mod, done):
            super().__init__(mod)
            self.done = done

        def visit_call_(self, call):  # noqa: N802 (TVM visitor name)
            for orig, const in self.done:
                if call.same_as(orig):
                    return const
            return super().visit_call_(call)

    @tvm.transform.module_pass(opt_level=0, name="AdlFoldConstantCalls")
    def _pass(mod, _ctx):
        for _ in range(16):
            calls = []
            for _, func in mod.functions_items():
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
#
# CPUDefaultSchedule().apply(func, target) -> _schedule_prim_func, which sorts a PrimFunc by its
# reduction blocks:
#   one reduction (conv, matmul, mean) -> _schedule_single_reduction: inline the other blocks,
#       register-tile the reduction (the "anchor": _schedule_vnni_anchor for int8 on VNNI targets,
#       else _schedule_anchor), then schedule the blocks left at the root
#   none (elementwise, layout)         -> _schedule_elementwise
#   several (softmax, norms)           -> _fallback
# Nothing here imports TVM at module level: each function imports what it uses.
# ----------------------------------------------------------------------------------------------

#: Function attribute of a PrimFunc whose VNNI schedule failed: it takes the generic int8 kernel.
_GENERIC_INT8_ATTR = "adl.int8_generic"

_T = TypeVar("_T")


def _int(expr) -> int | None:
    """The value of a constant integer expression; None for anything else (a symbolic extent)."""
    from tvm import tirx

    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def _largest_power_of_two_divisor(n: int, limit: int) -> int:
    d = 1
    while d * 2 <= limit and n % (d * 2) == 0:
        d *= 2
    return d


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


# -- target properties ---------------------------------------------------------------------------


def _has_512_bit_vectors(target: tvm.target.Target) -> bool:
    """Whether a vector holds 16 float32 lanes (AVX-512). Such an ISA also has 32 vector registers,
    twice AVX2's 16: room for larger register tiles, and inlined padding measured faster there."""
    return simd_lanes(target, 32) >= 16


def _accumulators(target: tvm.target.Target) -> int:
    """Vector accumulators a register tile may hold on ``target``: more where the ISA has 32
    vector registers (AVX-512) than 16 (AVX2)."""
    return MAX_ACCUMULATORS_32_REGISTERS if _has_512_bit_vectors(target) else MAX_ACCUMULATORS


def _inlines_padding(target: tvm.target.Target) -> bool:
    """:data:`INLINE_PAD` for ``target`` ("auto": on AVX-512 targets)."""
    return INLINE_PAD if isinstance(INLINE_PAD, bool) else _has_512_bit_vectors(target)


def _output_lanes(target: tvm.target.Target, sch: Schedule, block_rv: SBlockRV, default: int) -> int:
    """SIMD lanes of the type the block writes (its first written buffer); ``default`` if it writes
    nothing."""
    writes = sch.get(block_rv).writes
    return simd_lanes(target, writes[0].source.dtype.bits) if writes else default


# -- the ONE broad catch, and the narrow ones --------------------------------------------------------


def _attempt(what: str, step: Callable[..., _T], *args: Any) -> tuple[_T | None, Exception | None]:
    """``(step(*args), None)``, or ``(None, the exception)`` if it raised: logged at debug level.

    The only place this module catches every exception. A rule strings many schedule primitives
    together (split, fuse, cache_write, transform_layout, tensorize, ...) over loop nests it did
    not write, and TVM rejects an unsupported shape in more than one way: ``ScheduleError`` from a
    primitive's checks, ``tvm.error.InternalError`` from a failed C++ ``ICHECK``, ``ValueError``
    for a block an earlier primitive removed, plain Python errors from the rule's own arithmetic on
    an unexpected nest. The caller's answer is the same whatever it was -- this rule does not apply,
    take the next one -- so it is logged, not raised.
    """
    try:
        return step(*args), None
    except Exception as exc:  # deliberately broad: see the docstring
        _LOG.debug("%s failed (%s): %s", what, type(exc).__name__, exc)
        return None, exc


def _try_inline(inline: Callable[[SBlockRV], None], block_rv: SBlockRV) -> bool:
    """Whether ``inline`` (``sch.compute_inline`` or ``sch.reverse_compute_inline``) inlined the block.

    A refusal (an output block, a block with several consumers, a non-trivial body) is an expected
    answer, which TVM gives as a ``ScheduleError``: only that is caught."""
    from tvm.s_tir import ScheduleError

    try:
        inline(block_rv)
    except ScheduleError:
        return False
    return True


def _root_blocks(sch: Schedule) -> list[SBlockRV]:
    """The blocks directly under the root block; none for a PrimFunc without a root block (for which
    ``get_sblock`` raises ``ScheduleError``: "Cannot find a block with the name: root")."""
    from tvm.s_tir import ScheduleError

    try:
        root = sch.get_sblock("root")
    except ScheduleError:
        return []
    return list(sch.get_child_blocks(root))


def _loops_unless_removed(sch: Schedule, block_rv: SBlockRV) -> Sequence[LoopRV] | None:
    """The block's loops, or None if an earlier primitive removed the block: TVM answers a removed
    block's random variable with ``ValueError`` ("The block no longer exists in the IRModule")."""
    try:
        return sch.get_loops(block_rv)
    except ValueError as exc:
        _LOG.debug("leftover block not scheduled: %s", exc)
        return None


# -- block classification ------------------------------------------------------------------------


def _is_reduction(sch: Schedule, block_rv: SBlockRV) -> bool:
    from tvm import tirx

    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in sch.get(block_rv).iter_vars)


def _is_plain_copy(sch: Schedule, block_rv: SBlockRV) -> bool:
    """Whether a "pad" block pads nothing (a 1x1 or unpadded convolution): it reads one buffer
    of the shape it writes, so inlining it costs no conditional load, and materialising it
    copied the whole input (112x112x16 floats before each such MobileNetV2 layer)."""
    block = sch.get(block_rv)
    if len(block.reads) != 1 or len(block.writes) != 1:
        return False
    source, written = block.reads[0].source, block.writes[0].source
    return [_int(d) for d in source.shape] == [_int(d) for d in written.shape]


def _is_padding(sch: Schedule, block_rv: SBlockRV) -> bool:
    """A TOPI "pad" block that really pads (see :func:`_is_plain_copy`)."""
    return "pad" in sch.get(block_rv).name_hint and not _is_plain_copy(sch, block_rv)


def _is_int8_reduction(sch: Schedule, block_rv: SBlockRV) -> bool:
    """Whether the block multiplies 8-bit integers (what the int8 kernel statistics count)."""
    return any(str(r.source.dtype) in ("int8", "uint8") for r in sch.get(block_rv).reads)


def _is_serial(sch: Schedule, loop: LoopRV) -> bool:
    from tvm import tirx

    return sch.get(loop).kind == tirx.ForKind.SERIAL


def _is_vectorized(sch: Schedule, loop: LoopRV) -> bool:
    from tvm import tirx

    return sch.get(loop).kind == tirx.ForKind.VECTORIZED


def _layout_free(func: tirx.PrimFunc) -> list:
    """Buffers of the params that AttachAttrLayoutFreeBuffers marked as constants."""
    attrs = func.attrs
    if attrs is None or "layout_free_buffers" not in attrs:
        return []
    out = []
    for i in attrs["layout_free_buffers"]:
        p = func.params[int(i)]
        out.append(func.buffer_map[p] if hasattr(func, "buffer_map") and p in func.buffer_map else p)
    return out


# -- the rule's entry point: sort the PrimFunc by its reductions ----------------------------------


def _schedule_prim_func(func: tirx.PrimFunc, target: tvm.target.Target) -> Schedule | None:
    """The schedule of one PrimFunc; None (leave it to the next rule) for a non-LLVM target, a
    function that is not a PrimFunc, or one without blocks."""
    from tvm import s_tir, tirx

    if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
        return None
    sch = s_tir.Schedule(func)
    blocks = _root_blocks(sch)
    if not blocks:
        return None
    lanes = _output_lanes(target, sch, blocks[-1], default=simd_lanes(target, 32))
    reductions = [b for b in blocks if _is_reduction(sch, b)]
    if len(reductions) == 1:
        return _schedule_single_reduction(func, target, sch, blocks, reductions[0], lanes)
    if not reductions:
        return _schedule_elementwise(sch, blocks, lanes)
    return _fallback(func)


# -- PrimFuncs without a reduction ---------------------------------------------------------------


def _schedule_elementwise(sch: Schedule, blocks: list[SBlockRV], lanes: int) -> Schedule:
    """Layout transforms, elementwise chains: inline into as few blocks as possible, then fuse,
    vectorize and parallelise each."""
    for block_rv in _inline_all(sch, blocks):
        _schedule_injective(sch, block_rv, lanes)
    return sch


def _inline_all(sch: Schedule, blocks: list[SBlockRV]) -> list[SBlockRV]:
    """compute_inline / reverse_compute_inline until nothing changes; return the rest."""
    remaining = list(blocks)
    while True:
        kept = [b for b in remaining if _is_reduction(sch, b) or not _inline_either_way(sch, b)]
        if len(kept) == len(remaining):
            return kept
        remaining = kept


def _inline_either_way(sch: Schedule, block_rv: SBlockRV) -> bool:
    """Inline the block into its consumer, else its producer into it; whether either worked."""
    return _try_inline(sch.compute_inline, block_rv) or _try_inline(sch.reverse_compute_inline, block_rv)


def _schedule_injective(sch: Schedule, block_rv: SBlockRV, lanes: int) -> None:
    """Fuse all loops, vectorize ``lanes`` innermost iterations, parallelise the rest."""
    loops = sch.get_loops(block_rv)
    if not loops:
        return
    extents = [_int(sch.get(lp).extent) for lp in loops]
    if any(e is None for e in extents):
        sch.parallel(loops[0])
        return
    total = math.prod(extents)
    fused = _fuse(sch, loops)
    # vectors of the innermost axis: all `lanes` where it is a multiple, else its largest
    # power-of-two divisor (an int8 tensor of 16 channels on AVX-512: 16 of the 64 lanes,
    # not a scalar loop -- requantize-and-pad at 28x28x16 took 40 us scalar)
    vector = _largest_power_of_two_divisor(extents[-1], lanes)
    if vector >= 4 and len(sch.get(block_rv).writes) == 1 and total >= vector:
        fused = _split_off_vector(sch, fused, vector)
    if total >= MIN_PARALLEL_WORK:
        sch.parallel(fused)


def _fuse(sch: Schedule, loops: Sequence[LoopRV]) -> LoopRV:
    return sch.fuse(*loops) if len(loops) > 1 else loops[0]


def _split_off_vector(sch: Schedule, loop: LoopRV, vector: int) -> LoopRV:
    """Split ``vector`` iterations off the loop and vectorize them; returns the outer loop."""
    outer, inner = sch.split(loop, factors=[None, vector])
    sch.vectorize(inner)
    return outer


# -- PrimFuncs with one reduction (the anchor) ---------------------------------------------------


def _schedule_single_reduction(
    func: tirx.PrimFunc,
    target: tvm.target.Target,
    sch: Schedule,
    blocks: list[SBlockRV],
    anchor: SBlockRV,
    lanes: int,
) -> Schedule | None:
    """Inline the other blocks into the anchor, register-tile it (the VNNI kernel or the generic
    one; :func:`_fallback` if neither applies), then schedule the blocks left at the root."""
    vnni = _takes_vnni_path(func, target, sch, anchor)
    keep = _direct_producer_names(sch, anchor) if vnni else set()
    others = [b for b in blocks if not _is_reduction(sch, b)]
    leftovers = _inline_others(sch, others, keep, _inlines_padding(target))
    # The register tile holds the anchor's accumulators: size it by their type
    # (an int8 convolution accumulates in int32, 4x wider than what it writes).
    anchor_lanes = _output_lanes(target, sch, anchor, default=lanes)
    name = sch.get(anchor).name_hint  # read now: a VNNI schedule failing part-way may remove the block
    scheduled, error = False, None
    if vnni:
        scheduled, error = _attempt(f"VNNI schedule of {name}", _schedule_vnni_anchor, func, sch, anchor)
    if error is not None:
        return _retry_with_generic_int8(func, target, name, error)
    if not scheduled and not _schedule_generic_anchor(func, target, sch, anchor, anchor_lanes):
        return _fallback(func)
    _schedule_leftovers(sch, leftovers, lanes)
    return sch


def _takes_vnni_path(func: tirx.PrimFunc, target: tvm.target.Target, sch: Schedule, anchor: SBlockRV) -> bool:
    """Whether the anchor is a u8 x s8 -> s32 reduction to map onto vpdpbusd: the target has AVX-512
    VNNI, and no earlier attempt on this PrimFunc failed (see :func:`_retry_with_generic_int8`)."""
    from adl.backends.tvm import int8_kernels

    if func.attrs is not None and _GENERIC_INT8_ATTR in func.attrs:
        return False
    return int8_kernels.int8_path(target) == "vnni" and int8_kernels.vnni_candidate(sch, anchor, _layout_free(func))


def _direct_producer_names(sch: Schedule, anchor: SBlockRV) -> set[str]:
    """The VNNI path keeps the anchor's direct producers as blocks: vpdpbusd broadcasts its data
    operand from a buffer, so that operand cannot be an inlined expression."""
    return {sch.get(b).name_hint for b in sch.get_producers(anchor)}


def _inline_others(sch: Schedule, others: list[SBlockRV], keep: set[str], inline_padding: bool) -> list[SBlockRV]:
    """compute_inline each non-reduction block: producers disappear into the anchor. Returns the
    blocks left at the root: padding (unless ``inline_padding``), those named in ``keep``, and what
    TVM refused (epilogues, which write the output, are reverse-inlined later instead)."""
    return [
        b for b in others if _stays_materialised(sch, b, keep, inline_padding) or not _try_inline(sch.compute_inline, b)
    ]


def _stays_materialised(sch: Schedule, block_rv: SBlockRV, keep: set[str], inline_padding: bool) -> bool:
    return (not inline_padding and _is_padding(sch, block_rv)) or sch.get(block_rv).name_hint in keep


def _schedule_vnni_anchor(func: tirx.PrimFunc, sch: Schedule, anchor: SBlockRV) -> bool:
    """The int8 anchor on vpdpbusd (:mod:`adl.backends.tvm.int8_kernels`); False: not applicable."""
    from adl.backends.tvm import int8_kernels

    scheduled = int8_kernels.schedule_vnni_reduction(sch, anchor, _layout_free(func))
    if scheduled:
        INT8_KERNELS.append("vnni")
    return scheduled


def _retry_with_generic_int8(
    func: tirx.PrimFunc, target: tvm.target.Target, anchor_name: str, error: Exception
) -> Schedule | None:
    """The VNNI schedule failed part-way, leaving the schedule half-transformed: start again from the
    PrimFunc, marked so that its anchor takes the generic int32 kernel."""
    _LOG.warning("VNNI schedule failed on %s, generic int8 kernel instead: %s", anchor_name, _first_line(error))
    return _schedule_prim_func(func.with_attr(_GENERIC_INT8_ATTR, True), target)


def _schedule_generic_anchor(
    func: tirx.PrimFunc, target: tvm.target.Target, sch: Schedule, anchor: SBlockRV, lanes: int
) -> bool:
    """:func:`_schedule_anchor` (any dtype; int8 in int32 lanes); False: not applicable or it failed."""
    what = f"anchor rule on {sch.get(anchor).name_hint}"
    scheduled, _ = _attempt(what, _schedule_anchor, sch, anchor, lanes, _layout_free(func), _accumulators(target))
    if scheduled and _is_int8_reduction(sch, anchor):
        INT8_KERNELS.append("generic")
    return bool(scheduled)


def _schedule_leftovers(sch: Schedule, leftovers: list[SBlockRV], lanes: int) -> None:
    """Blocks left at the root (materialised padding, a producer TVM would not inline) that still
    have a serial loop nest of their own get the elementwise schedule. Epilogues left over were
    reverse-inlined into the anchor's write-back meanwhile: they no longer exist."""
    for block_rv in leftovers:
        loops = _loops_unless_removed(sch, block_rv)
        if loops and _is_serial(sch, loops[0]):
            _attempt("elementwise schedule of a leftover block", _schedule_injective, sch, block_rv, lanes)


# -- the generic anchor rule: register tile, weight packing, write-back --------------------------


@dataclass(frozen=True)
class _ReductionNest:
    """A single-reduction block's loop nest in the form the anchor rule handles: one loop per block
    iterator, the spatial ones first, then the reductions, all of constant extent (TOPI's kernels)."""

    loops: list[LoopRV]
    iter_vars: list[tirx.IterVar]
    extents: list[int]
    spatial: list[int]  # indices of the spatial iterators (0, 1, ...)
    reduce: list[int]  # indices of the reduction iterators

    def work(self) -> int:
        """Scalar iterations of the whole nest (what decides whether to parallelise it)."""
        spatial = math.prod(self.extents[i] for i in self.spatial)
        return spatial * max(1, math.prod(self.extents[i] for i in self.reduce))


@dataclass(frozen=True)
class _RegisterTile:
    """``v_tile`` iterations of the vector axis, in vectors of ``vector`` lanes, x ``w_tile``
    iterations of the second axis. A ``v_tile`` of 1: no vector tile."""

    v: int  # the vector axis: the innermost non-unit spatial iterator
    w: int | None  # the second axis: the next non-unit spatial iterator outwards
    vector: int
    v_tile: int
    w_tile: int

    @property
    def vectorized(self) -> bool:
        return self.v_tile > 1


def _schedule_anchor(
    sch: Schedule, block_rv: SBlockRV, lanes: int, layout_free: Sequence[Any] = (), accumulators: int = MAX_ACCUMULATORS
) -> bool:
    """Register-tile (at most ``accumulators`` vectors), vectorize and parallelise a
    single-reduction block. False: not applicable (nothing changed)."""
    nest = _reduction_nest(sch, block_rv)
    tile = _choose_register_tile(sch, block_rv, nest, lanes, accumulators) if nest is not None else None
    if tile is None:
        return False
    if tile.vectorized and PACK_WEIGHTS:
        _pack_constant_operands(sch, block_rv, nest.iter_vars[tile.v].var, tile.v_tile, layout_free)
    parallel_loop, reduction_loops = _tile_loop_nest(sch, nest, tile)
    write_back = _write_back_per_tile(sch, block_rv, parallel_loop)
    if nest.work() >= MIN_PARALLEL_WORK:
        sch.parallel(parallel_loop)
    _vectorize_and_decompose(sch, block_rv, write_back, reduction_loops[0], tile)
    return True


def _reduction_nest(sch: Schedule, block_rv: SBlockRV) -> _ReductionNest | None:
    """The block's nest, or None if it is not in the form :class:`_ReductionNest` describes."""
    from tvm import tirx

    block = sch.get(block_rv)
    loops = sch.get_loops(block_rv)
    ivs = list(block.iter_vars)
    if len(loops) != len(ivs) or len(block.writes) != 1:
        return None
    extents = [_int(iv.dom.extent) for iv in ivs]
    spatial = [i for i, iv in enumerate(ivs) if iv.iter_type == tirx.IterVar.DataPar]
    reduce = [i for i, iv in enumerate(ivs) if iv.iter_type == tirx.IterVar.CommReduce]
    if any(e is None for e in extents) or len(spatial) + len(reduce) != len(ivs) or not reduce:
        return None
    if not spatial or spatial != list(range(len(spatial))):  # spatial..., reduction... (TOPI's order)
        return None
    return _ReductionNest(list(loops), ivs, extents, spatial, reduce)


def _choose_register_tile(
    sch: Schedule, block_rv: SBlockRV, nest: _ReductionNest, lanes: int, accumulators: int
) -> _RegisterTile | None:
    """The tile over the innermost non-unit spatial axis (vectorized if it indexes the output's
    innermost non-unit dimension, so that vector stores are contiguous) and the next one outwards;
    None if every spatial axis is 1 long."""
    nonunit = [i for i in nest.spatial if nest.extents[i] > 1]
    if not nonunit:
        return None
    v, w = nonunit[-1], (nonunit[-2] if len(nonunit) >= 2 else None)
    contiguous = _indexes_innermost_output_dim(sch.get(block_rv).writes[0], nest.iter_vars[v].var)
    width = nest.extents[w] if w is not None else 1
    return _RegisterTile(v, w, *_tile_sizes(nest.extents[v], width, lanes, accumulators, contiguous))


def _indexes_innermost_output_dim(write: tirx.BufferRegion, var: tirx.Var) -> bool:
    """Whether ``var`` alone indexes the innermost non-unit dimension of the written buffer."""
    from tvm import tirx

    out_idx = [r.min for r in write.region]
    out_shape = [_int(d) for d in write.source.shape]
    last_dim = max((d for d, s in enumerate(out_shape) if s != 1), default=None)
    return last_dim is not None and isinstance(out_idx[last_dim], tirx.Var) and out_idx[last_dim].same_as(var)


def _tile_sizes(ext_v: int, width: int, lanes: int, accumulators: int, contiguous: bool) -> tuple[int, int, int]:
    """(vector, v_tile, w_tile) for a vector axis of ``ext_v`` and a second axis of ``width``."""
    # vectors of `vector` lanes: the target's width where the axis is a multiple of it, else
    # the axis's largest power-of-two divisor (24 channels on AVX-512: three vectors of 8;
    # one 24-lane vector, which LLVM legalizes element by element, ran 5-10x slower)
    vector = lanes if ext_v % lanes == 0 else _largest_power_of_two_divisor(ext_v, lanes)
    if not contiguous:
        return vector, 1, 1
    if vector >= min(4, lanes):
        nv, w_tile = register_tile(ext_v // vector, width, accumulators, MAX_VECTORS)
        return vector, vector * nv, w_tile
    if ext_v <= 2 * lanes:  # a short axis with no good vector width: one vector of all of it
        return ext_v, ext_v, largest_divisor(width, accumulators)
    return vector, 1, 1


def _pack_constant_operands(
    sch: Schedule, block_rv: SBlockRV, var: tirx.Var, tile: int, layout_free: Sequence[Any]
) -> None:
    """Repack constant operands whose innermost dim is indexed by ``var`` (the vector
    axis) as ``[dim // tile, ..., dim % tile]``: the slice one register tile reads becomes
    contiguous instead of ``tile`` floats every ``dim`` floats (a power-of-two stride that
    maps a whole weight slice onto a few cache sets). The copy is a
    ``layout_rewrite_preproc`` block; SplitLayoutRewritePreproc + FoldConstant run it at
    compile time."""
    block = sch.get(block_rv)  # the reads as they were before any repacking
    packable = [(i, len(r.source.shape)) for i, r in enumerate(block.reads) if _packable(r, var, tile, layout_free)]
    for index, ndim in packable:
        _repack_read(sch, block_rv, index, ndim, tile)


def _packable(read: tirx.BufferRegion, var: tirx.Var, tile: int, layout_free: Sequence[Any]) -> bool:
    """A constant operand whose innermost dimension is indexed by ``var`` alone and is a multiple of
    ``tile`` long."""
    from tvm import tirx

    buf = read.source
    if not any(buf.same_as(b) for b in layout_free):
        return False
    last = read.region[-1]
    if not (isinstance(last.min, tirx.Var) and last.min.same_as(var) and _int(last.extent) == 1):
        return False
    innermost = _int(buf.shape[-1])
    return innermost is not None and innermost % tile == 0


def _repack_read(sch: Schedule, block_rv: SBlockRV, index: int, ndim: int, tile: int) -> None:
    from tvm import tirx

    cache = sch.cache_read(block_rv, index, "global")
    layout = tirx.IndexMap.from_func(lambda *ax: (ax[-1] // tile, *ax[:-1], ax[-1] % tile), ndim=ndim)
    sch.transform_layout(block_rv, ("read", index), layout)
    sch.annotate(cache, "meta_schedule.layout_rewrite_preproc", True)


def _tile_loop_nest(sch: Schedule, nest: _ReductionNest, tile: _RegisterTile) -> tuple[LoopRV, list[LoopRV]]:
    """Split the tile's two axes, order the loops (outer spatial..., reductions..., tile) and fuse the
    outer spatial loops: the reduction runs inside one tile, whose accumulators stay in registers.
    Returns (the fused outer loop, the reduction loops)."""
    outer, tile_loops = _split_spatial_loops(sch, nest, tile)
    reduction = [nest.loops[i] for i in nest.reduce]
    sch.reorder(*outer, *reduction, *tile_loops)
    return _fuse(sch, outer), reduction


def _split_spatial_loops(sch: Schedule, nest: _ReductionNest, tile: _RegisterTile) -> tuple[list[LoopRV], list[LoopRV]]:
    """(the outer spatial loops, the tile's loops: second axis, vector axis)."""
    outer, inner_w, inner_v = [], [], []
    for i in nest.spatial:
        if i == tile.v and tile.v_tile > 1:
            loop, inner = sch.split(nest.loops[i], factors=[None, tile.v_tile])
            outer.insert(0 if VECTOR_TILE_OUTERMOST else len(outer), loop)
            inner_v.append(inner)
        elif i == tile.w and tile.w_tile > 1:
            loop, inner = sch.split(nest.loops[i], factors=[None, tile.w_tile])
            outer.append(loop)
            inner_w.append(inner)
        else:
            outer.append(nest.loops[i])
    return outer, inner_w + inner_v


def _write_back_per_tile(sch: Schedule, block_rv: SBlockRV, tile_loop: LoopRV) -> SBlockRV:
    """Accumulate into a per-tile buffer, written back once per tile (under ``tile_loop``) with the
    epilogue (bias, activation, residual add) reverse-inlined into the write-back."""
    write_back = sch.cache_write(block_rv, 0, "global")
    _inline_consumers(sch, write_back)
    sch.reverse_compute_at(write_back, tile_loop, preserve_unit_loops=True)
    return write_back


def _inline_consumers(sch: Schedule, block_rv: SBlockRV) -> None:
    """reverse_compute_inline the block's consumers into it, one at a time, until none will."""
    inlined_one = True
    while inlined_one:
        inlined_one = any(_try_inline(sch.reverse_compute_inline, c) for c in sch.get_consumers(block_rv))


def _vectorize_and_decompose(
    sch: Schedule, block_rv: SBlockRV, write_back: SBlockRV, first_reduction_loop: LoopRV, tile: _RegisterTile
) -> None:
    """Vectorize the tile in the update and write-back blocks, hoist the zero-init out of the
    reduction (``decompose_reduction``) and vectorize it too, unless TVM already did."""
    if tile.vectorized:
        _vector_tail(sch, block_rv, tile.vector, tile.v_tile, unroll_outer=True)
        _vector_tail(sch, write_back, tile.vector, tile.v_tile)
    init = sch.decompose_reduction(block_rv, first_reduction_loop)
    if tile.vectorized and not _is_vectorized(sch, sch.get_loops(init)[-1]):
        _vector_tail(sch, init, tile.vector, tile.v_tile)


def _vector_tail(sch: Schedule, block_rv: SBlockRV, lanes: int, v_tile: int, unroll_outer: bool = False) -> None:
    """Innermost loop (extent ``v_tile``): vectorize ``lanes`` of it, unroll the rest; with
    ``unroll_outer``, also the loop around it (the register tile's second axis)."""
    loops = sch.get_loops(block_rv)
    if _int(sch.get(loops[-1]).extent) != v_tile:
        return
    if v_tile > lanes and v_tile % lanes == 0:
        unrolled, vectorized = sch.split(loops[-1], factors=[None, lanes])
        sch.unroll(unrolled)
    else:
        vectorized = loops[-1]
    sch.vectorize(vectorized)
    if unroll_outer and len(loops) >= 2:
        _unroll_second_tile_axis(sch, loops[-2])


def _unroll_second_tile_axis(sch: Schedule, loop: LoopRV) -> None:
    """Unroll the register tile's loop along the second axis (unit loops are harmless to unroll)."""
    if not _is_serial(sch, loop):
        return
    extent = _int(sch.get(loop).extent)
    if extent is not None and extent <= MAX_ACCUMULATORS:
        sch.unroll(loop)


# -- several reductions ----------------------------------------------------------------------------


def _fallback(func: tirx.PrimFunc) -> Schedule:
    """Several reductions (softmax, norms) or odd loop nests: parallelise outer spatial loops."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    for block_rv in sch.get_child_blocks(sch.get_sblock("root")):
        _parallelize_outer_spatial_loop(sch, block_rv)
    return sch


def _parallelize_outer_spatial_loop(sch: Schedule, block_rv: SBlockRV) -> None:
    from tvm import tirx

    loops = sch.get_loops(block_rv)
    ivs = sch.get(block_rv).iter_vars
    if not loops or len(loops) != len(ivs) or ivs[0].iter_type != tirx.IterVar.DataPar:
        return
    extent = _int(ivs[0].dom.extent)
    if extent is not None and extent > 1:
        sch.parallel(loops[0])


# -- the rule class ------------------------------------------------------------------------------


def _make_rule() -> type:
    """The ``ScheduleRule`` subclass, made on first use (subclassing a TVM class at import time
    would import TVM with this module)."""
    from tvm.s_tir.dlight.base import ScheduleRule

    class CPUDefaultSchedule(ScheduleRule):
        """Generic CPU schedule: see the module docstring. Returns None for non-LLVM targets."""

        def apply(self, func, target, tunable):
            return _schedule_prim_func(func, target)

    return CPUDefaultSchedule


_RULE_CLASS = None


def CPUDefaultSchedule() -> tvm.s_tir.dlight.base.ScheduleRule:  # noqa: N802 (class-like factory; TVM imported lazily)
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
