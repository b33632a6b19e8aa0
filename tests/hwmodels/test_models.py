"""Roofline and bit-serial arithmetic on hand-computed layers, and `Cost`'s memory accounting.

Expected numbers are worked out by hand in each test (not with the models' helpers).
"""

from __future__ import annotations

import pytest

from adl.hwmodels import Cost, LayerCost
from adl.hwmodels.bitserial import BitSerialModel
from adl.hwmodels.roofline import RooflineModel
from adl.ir.layers import LayerDesc
from adl.ir.spec import TargetSpec

HOST = TargetSpec(name="host", cores=2)


def conv(w: int = 32, a: int = 32) -> LayerDesc:
    # 3 -> 16 channels, 3x3, 8x8, no bias: 432 weights, 27648 MACs
    return LayerDesc("conv", "conv2d", (1, 3, 8, 8), (1, 16, 8, 8), (3, 3), weight_bits=w, act_bits=a)


def dwconv(w: int = 32, a: int = 32) -> LayerDesc:
    # 16 channels depthwise, 3x3, 8x8: 144 weights, 9216 MACs
    return LayerDesc("dw", "dwconv2d", (1, 16, 8, 8), (1, 16, 8, 8), (3, 3), groups=16, weight_bits=w, act_bits=a)


def linear(w: int = 32, a: int = 32) -> LayerDesc:
    # 256 -> 10 with bias: 2570 parameters, 2560 MACs
    return LayerDesc("fc", "linear", (1, 256), (1, 10), has_bias=True, weight_bits=w, act_bits=a)


def mid_conv(w: int = 8, a: int = 8) -> LayerDesc:
    # 16 -> 32 channels, 3x3, 4x4: 4608 weights, 73728 MACs
    return LayerDesc("mid", "conv2d", (1, 16, 4, 4), (1, 32, 4, 4), (3, 3), weight_bits=w, act_bits=a)


# -- roofline ---------------------------------------------------------------------------------


def test_roofline_memory_bound_layers():
    model = RooflineModel(gflops=100.0, bandwidth=10.0, overhead=1e-6)
    cost = model.estimate([conv(), dwconv(), linear()], HOST)
    conv_c, dw_c, fc_c = cost.layers
    # conv: 55296 FLOPs / 1e11 = 0.553 us; bytes 432*4 + (192 + 1024)*4 = 6592 -> 0.6592 us
    assert conv_c.latency_s == pytest.approx(6592 / 10e9 + 1e-6)
    assert conv_c.bound == "memory"
    assert dict(conv_c.details)["compute_s"] == pytest.approx(55296 / 100e9)
    # depthwise: 18432 FLOPs; bytes 144*4 + 2*1024*4 = 8768
    assert dw_c.latency_s == pytest.approx(8768 / 10e9 + 1e-6) and dw_c.bound == "memory"
    # linear: 5120 FLOPs; bytes 2570*4 + 266*4 = 11344
    assert fc_c.latency_s == pytest.approx(11344 / 10e9 + 1e-6) and fc_c.bound == "memory"
    assert cost.latency_s == pytest.approx((6592 + 8768 + 11344) / 10e9 + 3e-6)
    assert cost.energy_j is None  # roofline does not model energy


def test_roofline_compute_bound_layer():
    big = LayerDesc("big", "conv2d", (1, 64, 16, 16), (1, 64, 16, 16), (3, 3))
    # 64*256*64*9 = 9437184 MACs = 18874368 FLOPs; bytes 36864*4 + 2*16384*4 = 278528
    (c,) = RooflineModel(gflops=100.0, bandwidth=10.0, overhead=1e-6).estimate([big], HOST).layers
    assert c.bound == "compute"
    assert c.latency_s == pytest.approx(18874368 / 100e9 + 1e-6)


def test_roofline_default_peak_scales_with_the_targets_cores():
    big = LayerDesc("big", "conv2d", (1, 64, 16, 16), (1, 64, 16, 16), (3, 3))
    model = RooflineModel(bandwidth=1000.0, overhead=0.0)
    one = model.estimate([big], TargetSpec(name="t", cores=1)).latency_s
    two = model.estimate([big], TargetSpec(name="t", cores=2)).latency_s
    assert one == pytest.approx(18874368 / (2.445 * 32 * 1e9))
    assert two == pytest.approx(one / 2)
    assert model.parameters(TargetSpec(name="t", cores=2))["gflops"] == pytest.approx(156.48)


def test_roofline_memory_time_follows_bit_widths():
    model = RooflineModel(gflops=1e6, bandwidth=10.0, overhead=0.0)  # compute is free: pure memory
    fp32 = model.estimate([linear()], HOST).latency_s
    int8 = model.estimate([linear(8, 8)], HOST).latency_s
    assert fp32 == pytest.approx(11344 / 10e9)
    assert int8 == pytest.approx((2570 + 266) / 10e9)


# -- bit-serial -------------------------------------------------------------------------------


def test_bitserial_edge_hand_computed():
    model = BitSerialModel(preset="edge")  # 8x256x8 at 200 MHz, 1.6 GB/s, 5 us/layer
    conv_c, dw_c, fc_c = model.estimate([conv(8, 8), dwconv(8, 8), linear(4, 8)], HOST).layers

    # conv: M = 64, K = 27, N = 16 -> 8 * 2 * 1 tiles * 8*8 bit planes = 1024 cycles = 5.12 us;
    # bytes 432 + 192 + 1024 = 1648 -> 1.03 us: compute-bound
    assert dict(conv_c.details)["cycles"] == 1024
    assert conv_c.bound == "compute"
    assert conv_c.latency_s == pytest.approx(1024 / 200e6 + 5e-6)
    # energy: 27648 MACs * 64 bit-ops * 0.0036 pJ + 1648 B * 160 pJ
    assert conv_c.energy_j == pytest.approx((27648 * 64 * 0.0036 + 1648 * 160) * 1e-12)

    # depthwise: 16 groups of M = 64, K = 9, N = 1 -> 16 * 8 * 1 * 1 * 64 = 8192 cycles = 40.96 us
    assert dict(dw_c.details)["cycles"] == 8192
    assert dw_c.latency_s == pytest.approx(8192 / 200e6 + 5e-6) and dw_c.bound == "compute"
    assert dw_c.energy_j == pytest.approx((9216 * 64 * 0.0036 + (144 + 2048) * 160) * 1e-12)

    # linear, 4-bit weights: M = 1, K = 256, N = 10 -> 1 * 2 * 1 * 4*8 = 64 cycles = 0.32 us;
    # bytes ceil(2570*4/8) = 1285 + 256 + 10 = 1551 -> 0.969 us: memory-bound
    assert dict(fc_c.details)["cycles"] == 64
    assert fc_c.bound == "memory"
    assert fc_c.latency_s == pytest.approx(1551 / 1.6e9 + 5e-6)
    assert fc_c.energy_j == pytest.approx((2560 * 32 * 0.0036 + 1551 * 160) * 1e-12)


def test_bitserial_cloud_hand_computed():
    (c,) = BitSerialModel(preset="cloud").estimate([conv(8, 8)], HOST).layers
    # 32x256x32 at 250 MHz: ceil(64/32) * ceil(16/32) * 1 * 64 = 128 cycles = 0.512 us; 1648 B / 76.8 GB/s
    assert dict(c.details)["cycles"] == 128
    assert c.latency_s == pytest.approx(128 / 250e6 + 10e-6)
    assert c.bound == "compute"


def test_edge_and_cloud_disagree_on_what_limits_a_layer():
    # 16 -> 32, 3x3 on 4x4 at 8 bits: 4608 + 256 + 512 = 5376 bytes.
    # edge: 2 * 4 * 1 * 64 = 512 cycles = 2.56 us < 5376 / 1.6e9 = 3.36 us  -> memory-bound
    # cloud: 1 * 1 * 1 * 64 = 64 cycles = 0.256 us > 5376 / 76.8e9 = 0.07 us -> compute-bound
    (edge,) = BitSerialModel(preset="edge").estimate([mid_conv()], HOST).layers
    (cloud,) = BitSerialModel(preset="cloud").estimate([mid_conv()], HOST).layers
    assert (edge.bound, cloud.bound) == ("memory", "compute")
    assert edge.latency_s == pytest.approx(5376 / 1.6e9 + 5e-6)
    assert cloud.latency_s == pytest.approx(64 / 250e6 + 10e-6)


@pytest.mark.parametrize("preset", ["edge", "cloud"])
@pytest.mark.parametrize("make", [conv, dwconv, linear, mid_conv])
def test_bitserial_fewer_bits_are_strictly_faster_and_cheaper(preset, make):
    model = BitSerialModel(preset=preset)

    def price(w: int, a: int) -> LayerCost:
        return model.estimate([make(w, a)], HOST).layers[0]

    for w in range(2, 9):
        for a in range(2, 9):
            here = price(w, a)
            for fewer in (price(w - 1, a), price(w, a - 1)):
                assert fewer.latency_s < here.latency_s
                assert fewer.energy_j < here.energy_j


def test_bitserial_overrides_replace_preset_values():
    model = BitSerialModel(preset="edge", bandwidth=3.2, overhead=0.0)
    assert model.params.bandwidth == 3.2 and model.params.dm == 8 and model.params.overhead == 0.0
    assert str(model) == "bitserial(bandwidth=3.2,overhead=0.0s)"
    assert model.params.binary_tops == pytest.approx(6.5536)


def test_pool_and_add_only_move_memory():
    pool = LayerDesc("p", "pool", (1, 16, 8, 8), (1, 16, 4, 4), (2, 2), (2, 2), act_bits=8)
    add = LayerDesc("s", "add", (1, 16, 8, 8), (1, 16, 8, 8), act_bits=8)
    p_c, a_c = BitSerialModel(preset="edge", overhead=0.0).estimate([pool, add], HOST).layers
    assert p_c.latency_s == pytest.approx((1024 + 256) / 1.6e9) and p_c.bound == "memory"
    assert a_c.latency_s == pytest.approx((2 * 1024 + 1024) / 1.6e9)  # an add reads two inputs
    r_pool, r_add = RooflineModel(gflops=100.0, bandwidth=10.0, overhead=0.0).estimate([pool, add], HOST).layers
    assert r_pool.latency_s == pytest.approx(1280 / 10e9)  # 256 FLOPs are 2.56 ns, under 128 ns of memory


# -- memory -----------------------------------------------------------------------------------


def test_memory_is_weights_at_their_bits_plus_the_peak_activation():
    layers = [conv(8, 8), dwconv(4, 4), linear(2, 16)]
    # weights: 432*8/8 = 432, 144*4/8 = 72, ceil(2570*2/8) = 643
    # activations: (192 + 1024)*8/8 = 1216, 2048*4/8 = 1024, 266*16/8 = 532 -> peak 1216
    for model in (RooflineModel(), BitSerialModel(preset="cloud")):
        cost = model.estimate(layers, HOST)
        assert cost.weight_bytes == 432 + 72 + 643
        assert cost.peak_activation_bytes == 1216
        assert cost.memory_bytes == 432 + 72 + 643 + 1216
        assert [c.weight_bytes for c in cost.layers] == [432, 72, 643]


def test_cost_totals_and_unknown_energy():
    a = LayerCost("a", "linear", 1e-6, 2e-9, 10, 100)
    b = LayerCost("b", "linear", 3e-6, None, 20, 50)
    assert Cost.from_layers("m", [a]).energy_j == pytest.approx(2e-9)
    both = Cost.from_layers("m", [a, b])
    assert both.latency_s == pytest.approx(4e-6) and both.energy_j is None
    assert both.memory_bytes == 30 + 100
    empty = Cost.from_layers("m", [])
    assert (empty.latency_s, empty.energy_j, empty.memory_bytes) == (0, 0.0, 0)
    row = both.as_dict()
    assert row["per_layer"][0]["name"] == "a" and row["memory_bytes"] == 130
