"""Channel counts and strides of the MobileNet-style families, shared by the PyTorch models
(`zoo`) and the torch-free search-space geometry (`space`), so that a searched network and the
`mobilenet` family shrink an image the same way."""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_CHANNELS = (16, 24, 24, 32, 32, 48, 48, 64, 64, 96)
DEFAULT_STRIDES = (1, 2, 1, 2)
MOBILENET_FINAL = 4  # the largest final map (per side) the default strides leave, when the blocks allow


def scaled(channels: int, width: float) -> int:
    """`channels` times the width multiplier, rounded to a multiple of 4 (at least 4)."""
    return max(4, int(round(channels * width / 4)) * 4) if width != 1.0 else channels


def mobilenet_strides(blocks: int, size: int) -> tuple[int, ...]:
    """The default strides of `blocks` MobileNet blocks for images of side `size`: 1, 2, 1, 2, 1,
    1, ... (8x8 digits end at 2x2); while the final map is larger than MOBILENET_FINAL, the
    stride-1 blocks after the first stride-2 one become stride 2 in turn (28x28 or 32x32, four
    blocks: 1, 2, 2, 2 down to 4x4, so that the globally pooled positions see most of the image)."""
    strides = [DEFAULT_STRIDES[i] if i < len(DEFAULT_STRIDES) else 1 for i in range(blocks)]
    for block in range(2, blocks):
        if final_side(size, strides) <= MOBILENET_FINAL:
            break
        strides[block] = 2
    return tuple(strides)


def final_side(size: int, strides: Sequence[int]) -> int:
    """The side of a `size` x `size` map after padded ("same") convolutions with `strides`."""
    for stride in strides:
        size = -(-size // stride)
    return size
