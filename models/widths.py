"""Channel counts of the MobileNet-style families, shared by the PyTorch models (`zoo`) and
the torch-free search-space geometry (`space`)."""

from __future__ import annotations

DEFAULT_CHANNELS = (16, 24, 24, 32, 32, 48, 48, 64, 64, 96)


def scaled(channels: int, width: float) -> int:
    """`channels` times the width multiplier, rounded to a multiple of 4 (at least 4)."""
    return max(4, int(round(channels * width / 4)) * 4) if width != 1.0 else channels
