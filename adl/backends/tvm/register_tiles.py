"""The register tile of a CPU reduction kernel: how many output vectors it accumulates at once.

A tile of `nv` vectors of output channels by `w` output positions keeps `nv * w` accumulators
in vector registers while the reduction runs; each reduction step loads `nv` weight vectors
and `w` inputs (broadcast scalars for a convolution, vectors for a depthwise one) and does
`nv * w` multiply-adds. Shared by the float schedules (default_schedules) and the int8 ones
(int8_kernels), which differ only in how many accumulators they can afford.
"""

from __future__ import annotations

__all__ = ["largest_divisor", "register_tile"]


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of `n` that is at most `limit` (1 at least)."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def register_tile(vectors: int, width: int, max_accumulators: int, max_vectors: int) -> tuple[int, int]:
    """(vectors of output channels, output positions) of a register tile for an axis of `vectors`
    channel vectors and one of `width` positions, each extent dividing its axis, at most
    `max_accumulators` accumulators and `max_vectors` channel vectors: the most multiply-adds per
    load (`nv * w / (nv + w)`), then the most accumulators. 64 channels x 56 columns with 15
    accumulators: 2 x 7 (14 multiply-adds for 9 loads), not 4 x 2 (8 for 6) nor 1 x 14 (14 for
    15); 24 channels (3 vectors of 8) x 56: 3 x 4 (12 for 7), not 1 x 14."""
    best: tuple[float, int, int, int] = (0.0, 0, 1, 1)
    for nv in range(1, min(vectors, max_vectors) + 1):
        if vectors % nv:
            continue
        w_tile = largest_divisor(width, max(1, max_accumulators // nv))
        best = max(best, (nv * w_tile / (nv + w_tile), nv * w_tile, nv, w_tile))
    return best[2], best[3]
