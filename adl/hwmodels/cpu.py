"""What a CPU target's vector unit is: the host's LLVM CPU name filled into a TVM target, and
SIMD lanes per data type. The default schedules tile by these lanes and `amc` keeps channel
counts in multiples of them, so both read them here. TVM is imported inside the functions.
"""

from __future__ import annotations

from typing import Any


def native_target(target: dict) -> dict:
    """`target` with this machine's CPU filled in when it names none and builds for the host:
    the default schedules pick their vector width from the CPU's features."""
    if target.get("kind") != "llvm" or target.get("mcpu") or target.get("mtriple"):
        return target
    from tvm.target import codegen

    return {**target, "mcpu": str(codegen.llvm_get_system_cpu())}


def simd_lanes(target: Any, dtype_bits: int) -> int:
    """SIMD lanes of a ``tvm.target.Target`` for ``dtype_bits``: the vector width the default
    schedules tile by. (``llvm_get_vector_width`` says 512 for znver3, which has no AVX-512, so
    x86 is decided by CPU features.)"""
    from tvm.target.codegen import llvm_get_vector_width, target_has_features

    if target_has_features("avx512f", target):
        bits = 512
    elif target_has_features("avx", target):
        bits = 256
    else:  # -1 when LLVM does not know the target (e.g. kind "c")
        bits = min(llvm_get_vector_width(target), 128)
    return max(1, (bits if bits > 0 else 128) // dtype_bits)


def float_lanes(target: dict) -> int:
    """float32 SIMD lanes of a target dict (this machine's CPU when it names none): 8 on AVX2,
    16 on AVX-512, 4 on NEON. Channel counts that are multiples of it stay on the default
    schedules' fast path (docs/amc.md: other counts ran 5-20x slower until they were tiled by
    their largest power-of-two divisor, in narrower vectors)."""
    import tvm

    return simd_lanes(tvm.target.Target(native_target(dict(target))), 32)
