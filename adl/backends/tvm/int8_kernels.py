"""int8 convolutions and dense layers on x86 VNNI: the reduction mapped onto ``vpdpbusd``.

``vpdpbusd`` multiplies 64 unsigned bytes by 64 signed bytes and adds each group of four
products into one of 16 int32 lanes: 64 multiply-adds per instruction, 4x an fp32 FMA's 16.
adl's integer layers compute exactly that operand order (uint8 activation codes x int8 weight
codes -> int32, `adl.models.integer`), so a convolution (regular or 1x1) or a dense layer
whose output channels come in 16s (or 8s: the 256-bit form, AVX512-VL) and whose input
channels come in 4s is scheduled as

    for each parallel tile (output rows x 16*nv channels):
      for kh, kw, ci // 4:                      # the reduction, outside the register tile
        for w in tile (unrolled), for v in nv (unrolled):
          acc[w, v, 0:16] = vpdpbusd(acc[w, v, 0:16], broadcast(x[w, ci:ci+4]), W[v, ci//4, 0:16, 0:4])

with the weights repacked at compile time to ``[co // 16, kh, kw, ci // 4, co % 16, ci % 4]``
(64 contiguous bytes per instruction) and the epilogue (zero-point correction, requantization
or float rescale) applied per tile. TVM's own ``dot_16x4_vnni`` intrinsic passes the
operands as ``<16 x i32>``, which LLVM 20+ rejects (it takes ``<64 x i8>``), so adl
registers its own, with the operand types this TVM's LLVM accepts.

Everything else (depthwise convolutions, channels that are not multiples, targets without
VNNI) keeps the generic int32 schedule of `adl.backends.tvm.default_schedules`: correct,
widening each byte to an int32 lane. :func:`int8_path` says which one a target gets; the
`lower` pass records it in the manifest.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from adl.backends.tvm.register_tiles import register_tile

__all__ = ["INTRINSICS", "int8_path", "schedule_vnni_reduction", "vnni_candidate"]

_LOG = logging.getLogger(__name__)

#: the tensor intrinsics by the int32 lanes they accumulate: a zmm register (16) or a ymm one (8,
#: AVX512-VL), for output channels that come in 16s or only in 8s (24, 40, ...)
INTRINSICS = {16: "adl_dot_16x4_u8i8i32_vnni", 8: "adl_dot_8x4_u8i8i32_vnni"}
#: int32 accumulator vectors per register tile: 15 x 64 bytes stays under TVM's 1 KiB limit for
#: stack buffers (a larger tile becomes a TVMBackendAllocWorkspace call per tile, which cost more
#: than the tile's arithmetic), and leaves zmm registers for the weights and the broadcast input
MAX_ACCUMULATORS = 15
#: at most this many vectors of output channels per tile
MAX_VECTORS = 4
#: do not parallelise tiles doing fewer multiply-adds than this in all (thread launch cost)
MIN_PARALLEL_WORK = 4096


def int8_path(target: Any) -> str:
    """``"vnni"`` (vpdpbusd, AVX-512 VNNI) or ``"generic"`` (int32 lanes) for a ``tvm.target.Target``."""
    from tvm.target.codegen import target_has_features

    try:
        if (
            target.kind.name == "llvm"
            and target_has_features("avx512vnni", target)
            and target_has_features("avx512vl", target)
            and _intrinsic_registered()
        ):
            return "vnni"
    except Exception:  # noqa: BLE001 (a target LLVM does not know: no feature query)
        pass
    return "generic"


def _intrinsic_desc(lanes: int):
    """c[i] += sum over k of a[k] * b[i, k] (u8 x s8 -> s32) for `lanes` outputs."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(
        a: T.Buffer((4,), "uint8", offset_factor=1),
        b: T.Buffer((lanes, 4), "int8", offset_factor=1),
        c: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    return desc


def _intrinsic_impl(lanes: int, byte_vectors: bool):
    """vpdpbusd on `lanes` int32 accumulators (zmm: 16, ymm: 8), operands typed as LLVM wants them:
    ``<4*lanes x i8>`` (LLVM 20+) or ``<lanes x i32>`` (before)."""
    from tvm.script import tirx as T

    llvm = f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"
    acc, u8, i8 = f"int32x{lanes}", f"uint8x{4 * lanes}", f"int8x{4 * lanes}"

    @T.prim_func(s_tir=True)
    def impl(
        a: T.Buffer((4,), "uint8", offset_factor=1),
        b: T.Buffer((lanes, 4), "int8", offset_factor=1),
        c: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            # one expression, no temporaries: TVMScript makes each named temporary a buffer, and a
            # buffer inside a parallel loop is a TVMBackendAllocWorkspace call per tile
            if byte_vectors:
                c[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm),
                    c.vload([0], dtype=acc),
                    T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), lanes), dtype=u8),
                    b.vload([0, 0], dtype=i8),
                    dtype=acc,
                )
            else:
                c[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm),
                    c.vload([0], dtype=acc),
                    T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), lanes),
                    T.reinterpret(b.vload([0, 0], dtype=i8), dtype=acc),
                    dtype=acc,
                )

    return impl


@functools.lru_cache(maxsize=1)
def _intrinsic_registered() -> bool:
    """Register the intrinsics (16 and 8 lanes) in the form this TVM's LLVM verifies (probed once);
    False if neither form builds."""
    import tvm
    from tvm.s_tir import TensorIntrin

    for byte_vectors in (True, False):
        impls = {lanes: _intrinsic_impl(lanes, byte_vectors) for lanes in INTRINSICS}
        try:
            probe = tvm.IRModule(
                {f"f{lanes}": impl.with_attr("global_symbol", f"f{lanes}") for lanes, impl in impls.items()}
            )
            tvm.compile(probe, target=tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server"}))
        except Exception as exc:  # noqa: BLE001 (LLVM's verifier rejects the other signature)
            _LOG.debug(
                "vpdpbusd with %s operands does not build: %s",
                "byte" if byte_vectors else "int32",
                str(exc).splitlines()[0] if str(exc) else exc,
            )
            continue
        for lanes, impl in impls.items():
            TensorIntrin.register(INTRINSICS[lanes], _intrinsic_desc(lanes), impl, override=True)
        return True
    return False


def _int(expr) -> int | None:
    from tvm import tirx

    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def _register_tile(vectors: int, width: int) -> tuple[int, int]:
    """`register_tile` within this module's limits. 64 channels x 56 columns: 2 x 7 (14
    accumulators, 9 loads), not 4 x 2 (8, 6): ResNet-18 224 int8 ran 1.44x faster (28.5 -> 19.8 ms,
    measured under load)."""
    return register_tile(vectors, width, MAX_ACCUMULATORS, MAX_VECTORS)


def _operands(sch, block_rv, layout_free) -> tuple[int, int] | None:
    """(index of the uint8 data read, index of the int8 constant weight read) of a u8 x s8 -> s32
    multiply-accumulate block, or None."""
    block = sch.get(block_rv)
    if len(block.writes) != 1 or str(block.writes[0].source.dtype) != "int32":
        return None
    out = block.writes[0].source
    reads = [(i, r) for i, r in enumerate(block.reads) if not r.source.same_as(out)]
    data = [i for i, r in reads if str(r.source.dtype) == "uint8"]
    weight = [i for i, r in reads if str(r.source.dtype) == "int8" and any(r.source.same_as(b) for b in layout_free)]
    if len(reads) != 2 or len(data) != 1 or len(weight) != 1:
        return None
    return data[0], weight[0]


def vnni_candidate(sch, block_rv, layout_free) -> bool:
    """Whether a reduction block multiplies uint8 data by int8 constant weights into int32."""
    return _operands(sch, block_rv, layout_free) is not None


def schedule_vnni_reduction(sch, block_rv, layout_free) -> bool:
    """Schedule a u8 x s8 -> s32 conv/dense block onto vpdpbusd (see the module docstring).
    False, with `sch` untouched, when the block does not have that shape."""
    from tvm import tirx

    operands = _operands(sch, block_rv, layout_free)
    if operands is None:
        return False
    data_idx, weight_idx = operands
    block = sch.get(block_rv)
    ivs = list(block.iter_vars)
    loops = sch.get_loops(block_rv)
    if len(loops) != len(ivs):
        return False
    extents = [_int(iv.dom.extent) for iv in ivs]
    if any(e is None for e in extents):
        return False
    spatial = [i for i, iv in enumerate(ivs) if iv.iter_type == tirx.IterVar.DataPar]
    reduce = [i for i, iv in enumerate(ivs) if iv.iter_type == tirx.IterVar.CommReduce]
    if spatial != list(range(len(spatial))) or len(spatial) + len(reduce) != len(ivs) or not reduce:
        return False
    out_idx = [r.min for r in block.writes[0].region]
    w_idx = [r.min for r in block.reads[weight_idx].region]
    d_idx = [r.min for r in block.reads[data_idx].region]
    if len(w_idx) < 2 or not all(isinstance(e, tirx.Var) for e in (out_idx[-1], w_idx[-1], w_idx[-2], d_idx[-1])):
        return False
    v = next((i for i in spatial if ivs[i].var.same_as(out_idx[-1])), None)
    r = next((i for i in reduce if ivs[i].var.same_as(w_idx[-2])), None)
    if v is None or r is None or not ivs[v].var.same_as(w_idx[-1]) or not ivs[r].var.same_as(d_idx[-1]):
        return False
    lanes = next((n for n in sorted(INTRINSICS, reverse=True) if extents[v] % n == 0), None)
    if lanes is None or extents[r] % 4 or v != spatial[-1]:
        return False
    weight_shape = [_int(d) for d in block.reads[weight_idx].source.shape]
    if any(d is None for d in weight_shape) or weight_shape[-1] != extents[v] or weight_shape[-2] != extents[r]:
        return False

    # weights [..., ci, co] -> [co // lanes, ..., ci // 4, co % lanes, ci % 4]: one instruction's bytes contiguous
    cache = sch.cache_read(block_rv, weight_idx, "global")
    ndim = len(weight_shape)
    sch.transform_layout(
        block_rv,
        ("read", weight_idx),
        tirx.IndexMap.from_func(
            lambda *ax: (ax[-1] // lanes, *ax[:-2], ax[-2] // 4, ax[-1] % lanes, ax[-2] % 4), ndim=ndim
        ),
    )
    sch.annotate(cache, "meta_schedule.layout_rewrite_preproc", True)

    nonunit = [i for i in spatial if extents[i] > 1 and i != v]
    w = nonunit[-1] if nonunit else None
    nv, w_tile = _register_tile(extents[v] // lanes, extents[w] if w is not None else 1)
    outer, tile = [], []
    v_outer, v_vec, v_lane = sch.split(loops[v], factors=[None, nv, lanes])
    for i in spatial:
        if i == v:
            outer.append(v_outer)
        elif i == w and w_tile > 1:
            o, inner = sch.split(loops[i], factors=[None, w_tile])
            outer.append(o)
            tile.append(inner)
        else:
            outer.append(loops[i])
    r_outer, r_lane = sch.split(loops[r], factors=[None, 4])
    red = [loops[i] for i in reduce if i != r] + [r_outer]
    sch.reorder(*outer, *red, *tile, v_vec, v_lane, r_lane)
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]

    # the tile of accumulators: compacted to the tile, under 1 KiB it is a stack array LLVM keeps in
    # registers (1 KiB or more: a TVMBackendAllocWorkspace call per tile, 2-3x the whole kernel;
    # "local" scope is not compacted: a full-size buffer in memory, 2-3x slower again at 112x112)
    write_back = sch.cache_write(block_rv, 0, "global")
    _inline_consumers(sch, write_back)
    sch.reverse_compute_at(write_back, par, preserve_unit_loops=True)
    work = 1
    for e in extents:
        work *= e
    if work >= MIN_PARALLEL_WORK and _int(sch.get(par).extent) not in (None, 1):
        sch.parallel(par)
    init = sch.decompose_reduction(block_rv, red[0])
    sch.tensorize(v_lane, INTRINSICS[lanes])
    for loop in (*tile, v_vec):
        sch.unroll(loop)
    for b in (init, write_back):
        _vectorize_innermost(sch, b, lanes)
    return True


def _inline_consumers(sch, block_rv) -> None:
    """Reverse-inline the epilogue (zero-point correction, requantization, rescale) into `block_rv`."""
    while True:
        for consumer in sch.get_consumers(block_rv):
            try:
                sch.reverse_compute_inline(consumer)
                break
            except Exception:  # noqa: BLE001 (TVM's ScheduleError: not inlinable)
                continue
        else:
            return


def _vectorize_innermost(sch, block_rv, lanes: int) -> None:
    """Vectorize the innermost loop by `lanes` (splitting it when it is longer)."""
    inner = sch.get_loops(block_rv)[-1]
    extent = _int(sch.get(inner).extent)
    if extent is None or extent % lanes:
        return
    if extent > lanes:
        outer, inner = sch.split(inner, factors=[None, lanes])
        sch.unroll(outer)
    sch.vectorize(inner)
