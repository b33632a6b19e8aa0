"""The quantizers of the `haq` pass (Wang et al., "HAQ", CVPR 2019), in PyTorch.

Conventions (the integer lowering relies on them):

* **Weights**: symmetric, one scale per output channel (dimension 0), signed codes in
  ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` (the most negative code is left out so the range is
  symmetric), ``w ~= codes * scale[out]``. A channel that is all zeros gets scale 1.0, never
  0 or NaN, so it quantizes to zeros and dequantizes exactly.
* **Activations**: affine, one scale and zero point per tensor, unsigned codes in
  ``[0, 2**b - 1]``, ``x ~= (codes - zero_point) * scale``. The range always contains 0 (so
  zero padding and ReLU's zeros are exact), and a constant or all-zero tensor still gets a
  finite positive scale.
* **k-means** (HAQ's second mode): per layer, ``2**b`` shared centroids found by Lloyd's
  algorithm on the layer's weights; a weight is stored as the index of its centroid.
* **Straight-through estimators** for quantization-aware training: the forward pass rounds,
  the backward pass lets the gradient through where the value was inside the representable
  range and stops it where it was clipped.

BatchNorm is meant to be folded into the preceding convolution *before* quantizing (HAQ
quantizes the deployed weights): that is what an integer library computes with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CALIBRATION_METHODS = ("minmax", "percentile", "kl")


def _check_bits(bits: int, low: int = 1) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not low <= bits <= 16:
        raise ValueError(f"bits must be an integer in [{low}, 16], got {bits!r}")


def weight_code_limit(bits: int) -> int:
    """The largest weight code at `bits` (codes lie in [-limit, limit])."""
    _check_bits(bits, low=2)
    return 2 ** (bits - 1) - 1


def weight_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scales: max |w| of the channel / the largest code (1.0 for an all-zero channel)."""
    limit = weight_code_limit(bits)
    peak = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    return torch.where(peak > 0, peak / limit, torch.ones_like(peak))


def _per_channel(scales: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scales.reshape(-1, *([1] * (like.dim() - 1)))


def quantize_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 codes, per-channel scales) of `weight` at `bits`."""
    limit = weight_code_limit(bits)
    scales = weight_scales(weight, bits)
    codes = torch.clamp(torch.round(weight.detach() / _per_channel(scales, weight)), -limit, limit)
    return codes.to(torch.int32), scales


def dequantize_weight(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return codes.to(scales.dtype) * _per_channel(scales, codes)


class _RoundClip(torch.autograd.Function):
    """round(clamp(x, lo, hi)) forward; gradient 1 inside [lo, hi], 0 outside (clipped STE)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward((x >= lo) & (x <= hi))
        return torch.round(torch.clamp(x, lo, hi))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None


def fake_quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """`weight` quantized and dequantized per channel, differentiable by the straight-through estimator."""
    limit = weight_code_limit(bits)
    scales = _per_channel(weight_scales(weight, bits), weight)
    bound = torch.tensor(float(limit), dtype=weight.dtype)
    return _RoundClip.apply(weight / scales, -bound, bound) * scales


@dataclass(frozen=True)
class ActivationQuant:
    """Affine per-tensor quantization of an activation: x ~= (code - zero_point) * scale."""

    scale: float
    zero_point: int
    bits: int

    @property
    def levels(self) -> int:
        return 2**self.bits - 1

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        codes = torch.round(x.detach() / self.scale) + self.zero_point
        return torch.clamp(codes, 0, self.levels).to(torch.int32)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes.to(torch.float32) - self.zero_point) * self.scale

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize and dequantize with the straight-through estimator (gradient stops where clipped)."""
        lo = torch.tensor(float(-self.zero_point), dtype=x.dtype)
        hi = torch.tensor(float(self.levels - self.zero_point), dtype=x.dtype)
        return _RoundClip.apply(x / self.scale, lo, hi) * self.scale

    @property
    def range(self) -> tuple[float, float]:
        return (-self.zero_point * self.scale, (self.levels - self.zero_point) * self.scale)


def activation_quant(lo: float, hi: float, bits: int) -> ActivationQuant:
    """The quantizer whose range covers [lo, hi] extended to contain 0, zero point rounded to a code."""
    _check_bits(bits)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"activation range [{lo}, {hi}] is not finite")
    levels = 2**bits - 1
    if hi - lo <= 0:  # constant zero activations: any positive scale represents them exactly
        return ActivationQuant(scale=1.0, zero_point=0, bits=bits)
    scale = (hi - lo) / levels
    zero_point = int(np.clip(round(-lo / scale), 0, levels))
    return ActivationQuant(scale=scale, zero_point=zero_point, bits=bits)


def calibrate(
    samples: torch.Tensor,
    bits: int,
    method: str = "percentile",
    percentile: float = 99.99,
    histogram_bins: int | None = None,
) -> ActivationQuant:
    """An activation quantizer for the values in `samples` (activations seen on training batches).

    ``minmax``: the observed range. ``percentile``: the range clipped to the `percentile`-th
    percentile of |x| on each side, which ignores rare outliers. ``kl``: the clipping threshold
    that minimises the KL divergence between the histogram of the values and its quantized
    version (TensorRT's entropy calibration), searched over the histogram's bin edges.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    x = samples.detach().reshape(-1).to(torch.float64).numpy()
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("no finite activation values to calibrate on")
    lo, hi = float(x.min()), float(x.max())
    if method == "percentile":
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        lo = float(np.percentile(x, 100 - percentile)) if lo < 0 else lo
        hi = float(np.percentile(x, percentile)) if hi > 0 else hi
    elif method == "kl":
        if lo >= 0:  # one-sided (after ReLU): clip the top only
            hi = kl_threshold(x, 2**bits, histogram_bins)
        else:  # two-sided: a symmetric threshold on |x|
            t = kl_threshold(np.abs(x), 2 ** (bits - 1), histogram_bins)
            lo, hi = max(lo, -t), min(hi, t)
    return activation_quant(lo, hi, bits)


def kl_threshold(magnitudes: np.ndarray, levels: int, bins: int | None = None) -> float:
    """The clipping threshold t of non-negative values minimising KL(P || Q), where P is their
    histogram up to t (the clipped outliers folded into the last bin) and Q is the histogram up
    to t without them, merged into `levels` quantization bins and spread back over the
    non-empty bins it came from: clipping too much loses mass from Q's last bin, clipping too
    little makes the quantization bins coarse."""
    peak = float(magnitudes.max())
    if peak <= 0:
        return 0.0
    bins = bins or max(2048, 16 * levels)  # thresholds below peak * levels / bins are not tried
    hist, edges = np.histogram(magnitudes, bins=bins, range=(0.0, peak))
    hist = hist.astype(np.float64)
    best_t, best_kl = peak, np.inf
    for stop in range(levels, bins + 1):
        p = hist[:stop].copy()
        p[-1] += hist[stop:].sum()
        nonzero = p > 0
        # the quantizer's bins: `levels` runs of consecutive histogram bins (sizes differ by <= 1)
        sizes = np.full(levels, stop // levels)
        sizes[: stop % levels] += 1
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        mass = np.add.reduceat(hist[:stop], starts)  # the unclipped content, as the quantizer sees it
        used = np.add.reduceat(nonzero.astype(np.float64), starts)
        q = np.repeat(np.divide(mass, used, out=np.zeros(levels), where=used > 0), sizes) * nonzero
        # smoothing: the clipped mass lands in P's last bin where Q may have nothing; a tiny
        # share keeps KL finite and large there instead of skipping the candidate
        q = np.where(nonzero & (q <= 0), 1e-4 * p.sum() / stop, q)
        p_norm, q_norm = p / p.sum(), q / q.sum()
        kl = float(np.sum(p_norm[nonzero] * np.log(p_norm[nonzero] / q_norm[nonzero])))
        if kl < best_kl:
            best_kl, best_t = kl, float(edges[stop])
    return best_t


def kmeans_quantize(
    weight: torch.Tensor, bits: int, iterations: int = 30, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(int32 centroid indices shaped like `weight`, float centroids) of 1-D k-means with
    k = min(2**bits, distinct values), initialised on quantiles (deterministic for a `seed`)."""
    _check_bits(bits)
    values = weight.detach().reshape(-1).to(torch.float64).numpy()
    distinct = np.unique(values)
    k = min(2**bits, len(distinct))
    if k == len(distinct):  # every value its own centroid: exact
        centroids = distinct
    else:
        rng = np.random.default_rng(seed)
        centroids = np.quantile(values, (np.arange(k) + 0.5) / k) + rng.normal(0, 1e-12, k)
        for _ in range(iterations):
            index = np.abs(values[:, None] - centroids[None, :]).argmin(axis=1)
            updated = np.array([values[index == c].mean() if np.any(index == c) else centroids[c] for c in range(k)])
            if np.allclose(updated, centroids):
                break
            centroids = updated
        centroids = np.sort(centroids)
    index = np.abs(values[:, None] - centroids[None, :]).argmin(axis=1)
    codes = torch.from_numpy(index.astype(np.int32)).reshape(weight.shape)
    return codes, torch.from_numpy(centroids.astype(np.float32))
