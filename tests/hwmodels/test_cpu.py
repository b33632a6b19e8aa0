"""SIMD lanes of CPU targets: what the default schedules tile by and amc keeps channels in multiples of."""

import pytest

pytest.importorskip("tvm")

import tvm  # (after the skip: adl installed without its `full` extra has no TVM)

from adl.hwmodels.cpu import float_lanes, native_target, simd_lanes


@pytest.mark.parametrize(
    "target, lanes",
    [
        ({"kind": "llvm", "mcpu": "znver3"}, 8),  # AVX2 (LLVM reports a 512-bit width for it: features decide)
        ({"kind": "llvm", "mcpu": "skylake-avx512"}, 16),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}, 4),  # NEON
    ],
)
def test_float_lanes_follow_the_targets_vector_unit(target, lanes):
    assert float_lanes(target) == lanes


def test_float_lanes_of_the_host_are_what_the_schedules_tile_by():
    host = {"kind": "llvm", "num-cores": 2}
    assert float_lanes(host) == simd_lanes(tvm.target.Target(native_target(host)), 32) in (4, 8, 16)


def test_a_target_llvm_cannot_describe_gets_128_bit_vectors():
    assert simd_lanes(tvm.target.Target({"kind": "c"}), 32) == 4


def test_native_target_names_the_host_cpu_only_when_none_is_given():
    assert native_target({"kind": "llvm"})["mcpu"]
    assert native_target({"kind": "llvm", "mcpu": "znver3"}) == {"kind": "llvm", "mcpu": "znver3"}
    assert native_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}) == {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
    }
