"""The haq quantizers and weight packing: round trips, scale edge cases, calibration, k-means,
straight-through gradients."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from adl.passes.haq.packing import pack_codes, packed_size, unpack_codes
from adl.passes.haq.quantizers import (
    ActivationQuant,
    activation_quant,
    calibrate,
    dequantize_weight,
    fake_quantize_weight,
    kl_threshold,
    kmeans_quantize,
    quantize_weight,
    weight_code_limit,
    weight_scales,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_weight_round_trip_error_is_at_most_half_a_step_per_channel(bits):
    weight = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(bits)) * torch.arange(1, 7).reshape(
        6, 1, 1, 1
    )
    codes, scales = quantize_weight(weight, bits)
    limit = weight_code_limit(bits)
    assert codes.dtype == torch.int32 and codes.abs().max() <= limit and codes.abs().amax(dim=(1, 2, 3)).eq(limit).all()
    error = (dequantize_weight(codes, scales) - weight).abs().amax(dim=(1, 2, 3))
    # half a step, plus float32 rounding of w / s and of code * s: 2**-24 |w| each; |w| reaches ~15 here,
    # where a fixed 1e-6 would be under those two roundings (1.8e-6)
    rounding = 2 * torch.finfo(torch.float32).eps * weight.abs().amax(dim=(1, 2, 3))
    assert torch.all(error <= scales / 2 + rounding)


def test_an_all_zero_channel_gets_scale_one_and_stays_exactly_zero():
    weight = torch.randn(3, 4)
    weight[1] = 0.0
    codes, scales = quantize_weight(weight, 4)
    assert scales[1] == 1.0 and torch.all(codes[1] == 0)
    assert torch.all(dequantize_weight(codes, scales)[1] == 0)
    assert torch.isfinite(fake_quantize_weight(weight, 4)).all()
    with pytest.raises(ValueError, match="bits"):
        weight_scales(weight, 1)  # signed symmetric codes need two bits


def test_activation_range_always_holds_zero_and_constant_inputs_get_a_finite_scale():
    q = activation_quant(0.5, 3.0, 8)  # lifted to [0, 3]
    assert q.zero_point == 0 and q.range[0] == 0.0 and q.range[1] == pytest.approx(3.0)
    assert q.dequantize(q.quantize(torch.zeros(3))).eq(0).all()
    signed = activation_quant(-1.0, 3.0, 8)
    assert 0 < signed.zero_point < 255 and signed.dequantize(signed.quantize(torch.zeros(1))).item() == 0.0
    for constant in (0.0, 2.5, -2.5):
        c = calibrate(torch.full((100,), constant), 8, "minmax")
        assert np.isfinite(c.scale) and c.scale > 0
        assert c.dequantize(c.quantize(torch.tensor([constant]))).item() == pytest.approx(constant, abs=c.scale / 2)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_activation_round_trip_inside_the_range_is_within_half_a_step(bits):
    q = activation_quant(-2.0, 6.0, bits)
    x = torch.linspace(*q.range, 1000)
    codes = q.quantize(x)
    assert codes.min() >= 0 and codes.max() <= 2**bits - 1
    # half a step, plus the roundings of x / s and code * s: 2 * 2**-24 * 6 = 7e-7 for |x| <= 6
    assert torch.all((q.dequantize(codes) - x).abs() <= q.scale / 2 + 1e-6)
    assert torch.allclose(q.fake(x), q.dequantize(codes), atol=1e-6)


def test_percentile_and_kl_calibration_clip_rare_outliers_that_minmax_keeps():
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal(50_000))
    x[:5] = 40.0  # rare outliers, as activations have
    samples = torch.from_numpy(x)
    minmax = calibrate(samples, 8, "minmax")
    percentile = calibrate(samples, 8, "percentile", percentile=99.9)
    kl = calibrate(samples, 8, "kl")
    assert minmax.range[1] == pytest.approx(40.0)
    assert percentile.range[1] < 5.0 and 1.0 < kl.range[1] < 5.0
    # on the bulk of the data, the clipped ranges quantize far more finely
    bulk = samples[samples < 3]
    error = {
        name: float((q.dequantize(q.quantize(bulk)) - bulk).abs().mean())
        for name, q in (("minmax", minmax), ("kl", kl))
    }
    assert error["kl"] < error["minmax"] / 2
    with pytest.raises(ValueError, match="method"):
        calibrate(samples, 8, "mean")


def test_kl_threshold_keeps_the_whole_range_of_a_uniform_distribution():
    x = np.random.default_rng(1).uniform(0, 1, 100_000)
    assert kl_threshold(x, 16, bins=256) > 0.9


def test_kmeans_codes_index_sorted_centroids_and_error_shrinks_with_bits():
    weight = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    errors = []
    for bits in (1, 2, 3, 4):
        codes, centroids = kmeans_quantize(weight, bits)
        assert codes.shape == weight.shape and codes.min() >= 0 and codes.max() < 2**bits
        assert torch.all(centroids[1:] > centroids[:-1])
        errors.append(float((centroids[codes.long()] - weight).pow(2).mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 10
    few = torch.tensor([0.5, -0.5, 0.5, 0.25])  # fewer distinct values than centroids: exact
    codes, centroids = kmeans_quantize(few, 3)
    assert torch.equal(centroids[codes.long()], few)
    assert torch.equal(kmeans_quantize(weight, 3, seed=4)[1], kmeans_quantize(weight, 3, seed=4)[1])


def test_straight_through_gradients_pass_inside_the_range_and_stop_where_clipped():
    q = ActivationQuant(scale=0.1, zero_point=0, bits=4)  # range [0, 1.5]
    x = torch.tensor([-0.5, 0.3, 1.0, 2.0], requires_grad=True)
    q.fake(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    w = torch.randn(4, 5, requires_grad=True)
    (fake_quantize_weight(w, 3) * torch.arange(5.0)).sum().backward()
    assert torch.allclose(w.grad, torch.arange(5.0).expand(4, 5))  # max |w| sets the range: nothing clipped


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [0, 1, 7, 13, 64])
def test_packed_codes_round_trip_at_every_width_and_take_bits_per_code(bits, count):
    rng = np.random.default_rng(bits * 100 + count)
    codes = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=count)
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_size(count, bits) == (count * bits + 7) // 8
    np.testing.assert_array_equal(unpack_codes(packed, bits, count), codes)


def test_packing_refuses_codes_that_do_not_fit():
    with pytest.raises(ValueError, match=r"outside \[-4, 3\]"):
        pack_codes(np.array([4]), 3)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_codes(np.zeros(1, np.uint8), 4, 3)
    with pytest.raises(ValueError, match="bits"):
        pack_codes(np.array([0]), 9)
