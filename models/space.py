"""The MobileNet-style search space: per block an inverted-residual op (kernel x expansion) or
identity, and one width multiplier for the network (ProxylessNAS / FBNet style).

A network of the space is an `Architecture`: the width and one `Choice` per block.
`MobileNetSpace.build` makes the PyTorch model (the `adl.models.zoo.mobilenet` layers), and
`candidate_layers` lists every layer any network of the space can contain, which is what a
measured latency table for the space must hold.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from torch import nn

from adl.models.zoo import DEFAULT_CHANNELS, InvertedResidual, _conv_bn, _scaled

SKIP = "skip"


@dataclass(frozen=True)
class Choice:
    """One block's op: an inverted residual with `kernel` x `expand`, or identity (`skip`)."""

    kernel: int = 0
    expand: int = 0

    @property
    def skip(self) -> bool:
        return self.kernel == 0

    def __str__(self) -> str:
        return SKIP if self.skip else f"mb{self.expand}_k{self.kernel}"


@dataclass(frozen=True)
class Architecture:
    width: float
    blocks: tuple[Choice, ...]

    def __str__(self) -> str:
        return f"width {self.width:g}: " + " ".join(map(str, self.blocks))


@dataclass(frozen=True)
class MobileNetSpace:
    input_shape: tuple[int, ...]  # (C, H, W)
    classes: int
    blocks: int = 6
    kernels: tuple[int, ...] = (3, 5, 7)
    expand: tuple[int, ...] = (1, 3, 6)
    widths: tuple[float, ...] = (1.0,)
    skip: bool = True  # blocks that keep their shape may be identity (depth search)
    channels: tuple[int, ...] = DEFAULT_CHANNELS
    strides: tuple[int, ...] = (1, 2, 1, 2)
    stem: int = 16
    head: int = 64

    def _stride(self, block: int) -> int:
        return self.strides[block] if block < len(self.strides) else 1

    def _channels(self, block: int, width: float) -> int:
        return _scaled(self.channels[min(block, len(self.channels) - 1)], width)

    def block_shapes(self, width: float) -> list[tuple[int, int, int]]:
        """(in channels, out channels, stride) of every block at `width`."""
        cin, shapes = _scaled(self.stem, width), []
        for b in range(self.blocks):
            cout = self._channels(b, width)
            shapes.append((cin, cout, self._stride(b)))
            cin = cout
        return shapes

    def choices(self, block: int, width: float) -> list[Choice]:
        """The ops block `block` may take (identity only where the block keeps its shape)."""
        cin, cout, stride = self.block_shapes(width)[block]
        ops = [Choice(k, e) for e in self.expand for k in self.kernels]
        return ops + ([Choice()] if self.skip and stride == 1 and cin == cout else [])

    def sample(self, rng: random.Random) -> Architecture:
        width = rng.choice(self.widths)
        return Architecture(width, tuple(rng.choice(self.choices(b, width)) for b in range(self.blocks)))

    def build(self, arch: Architecture) -> nn.Sequential:
        """The PyTorch model of `arch` (stem, blocks, 1x1 head, pooling, classifier)."""
        stem = _scaled(self.stem, arch.width)
        layers: list[nn.Module] = [_conv_bn(self.input_shape[0], stem, 3)]
        for choice, (cin, cout, stride) in zip(arch.blocks, self.block_shapes(arch.width)):
            if not choice.skip:
                layers.append(InvertedResidual(cin, cout, choice.kernel, choice.expand, stride))
        cin = self.block_shapes(arch.width)[-1][1] if self.blocks else stem
        layers += [_conv_bn(cin, self.head, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(self.head, self.classes)]
        return nn.Sequential(*layers)

    def candidate_layers(self) -> list[list]:
        """Every layer a network of the space can contain, as lists of `LayerDesc` (each list
        one piece of a network, so an addition is grouped with its conv as in the network):
        per width a whole network (stem, head, classifier) and each block's every op alone."""
        from adl.compiler.layers import describe_model

        pieces = []
        for width in self.widths:
            first = Architecture(width, tuple(self.choices(b, width)[0] for b in range(self.blocks)))
            pieces.append(describe_model(self.build(first), (1, *self.input_shape)))
            height, width_px = self.input_shape[1:]
            for block, (cin, cout, stride) in enumerate(self.block_shapes(width)):
                for choice in self.choices(block, width):
                    if not choice.skip:
                        module = InvertedResidual(cin, cout, choice.kernel, choice.expand, stride)
                        pieces.append(describe_model(module, (1, cin, height, width_px)))
                height, width_px = -(-height // stride), -(-width_px // stride)
        return pieces
