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
from typing import TYPE_CHECKING

from adl.ir.layers import LayerDesc
from adl.models.geometry import DEFAULT_CHANNELS, mobilenet_strides
from adl.models.geometry import scaled as _scaled

if TYPE_CHECKING:  # the geometry below needs no torch: `adl compile` checks budgets with it before importing torch
    from torch import nn

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
    strides: tuple[int, ...] = ()  # per block; () = `mobilenet_strides` for the input size, as the mobilenet family
    stem: int = 16
    head: int = 64

    def _stride(self, block: int) -> int:
        strides = self.strides or mobilenet_strides(self.blocks, min(self.input_shape[1:]))
        return strides[block] if block < len(strides) else 1

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

    def build(self, arch: Architecture) -> "nn.Sequential":
        """The PyTorch model of `arch` (stem, blocks, 1x1 head, pooling, classifier)."""
        from torch import nn

        from adl.models.zoo import InvertedResidual, _conv_bn

        stem = _scaled(self.stem, arch.width)
        layers: list["nn.Module"] = [_conv_bn(self.input_shape[0], stem, 3)]
        for choice, (cin, cout, stride) in zip(arch.blocks, self.block_shapes(arch.width)):
            if not choice.skip:
                layers.append(InvertedResidual(cin, cout, choice.kernel, choice.expand, stride))
        cin = self.block_shapes(arch.width)[-1][1] if self.blocks else stem
        layers += [
            _conv_bn(cin, self.head, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(self.head, self.classes),
        ]
        return nn.Sequential(*layers)

    def candidate_layers(self) -> list[list]:
        """Every layer a network of the space can contain, as lists of `LayerDesc` (each list
        one piece of a network, so an addition is grouped with its conv as in the network):
        per width a whole network (stem, head, classifier) and each block's every op alone."""
        pieces = []
        for width in self.widths:
            pieces.append(network_layers(self, self.first(width)))
            pieces += [layers for block in block_layers(self, width) for layers in block if layers]
        return pieces

    def first(self, width: float) -> Architecture:
        """The network with every block's first candidate op (what the latency tables price whole)."""
        return Architecture(width, tuple(self.choices(b, width)[0] for b in range(self.blocks)))


def _strided(size: tuple[int, ...], stride: int) -> tuple[int, ...]:
    """Spatial size after a stride with padding kernel // 2: ceil(size / stride)."""
    return tuple(-(-d // stride) for d in size)


def _conv(
    name: str,
    cin: int,
    cout: int,
    size: tuple[int, ...],
    kernel: int,
    stride: int,
    groups: int = 1,
    activation: str = "relu6",
) -> LayerDesc:
    return LayerDesc(
        name,
        "dwconv2d" if groups > 1 and groups == cin == cout else "conv2d",
        (1, cin, *size),
        (1, cout, *_strided(size, stride)),
        (kernel, kernel),
        (stride, stride),
        groups,
        activation=activation,
    )


def inverted_residual_layers(
    cin: int, cout: int, kernel: int, expand: int, stride: int, size: tuple[int, ...], prefix: str = ""
) -> list[LayerDesc]:
    """The `LayerDesc`s `describe_model` gives an `InvertedResidual` at input `size`, without
    torch; named `prefix` + expand/depthwise/project/add (names key per-layer costs)."""
    hidden = cin * expand
    layers = [_conv(f"{prefix}expand", cin, hidden, size, 1, 1)] if expand != 1 else []
    layers.append(_conv(f"{prefix}depthwise", hidden, hidden, size, kernel, stride, groups=hidden))
    out_size = _strided(size, stride)
    layers.append(_conv(f"{prefix}project", hidden, cout, out_size, 1, 1, activation=""))
    if stride == 1 and cin == cout:
        layers.append(LayerDesc(f"{prefix}add", "add", (1, cout, *out_size), (1, cout, *out_size)))
    return layers


def block_layers(space: MobileNetSpace, width: float) -> list[list[list[LayerDesc]]]:
    """Per block, per candidate op of `space.choices`: its layers at the block's input size ([] for identity)."""
    size, out = tuple(space.input_shape[1:]), []
    for block, (cin, cout, stride) in enumerate(space.block_shapes(width)):
        out.append(
            [
                []
                if c.skip
                else inverted_residual_layers(cin, cout, c.kernel, c.expand, stride, size, f"block{block}.")
                for c in space.choices(block, width)
            ]
        )
        size = _strided(size, stride)
    return out


def network_layers(space: MobileNetSpace, arch: Architecture) -> list[LayerDesc]:
    """The `LayerDesc`s of `space.build(arch)` (stem, blocks, head, pooling, classifier), without torch."""
    size = tuple(space.input_shape[1:])
    stem = _scaled(space.stem, arch.width)
    layers = [_conv("stem", space.input_shape[0], stem, size, 3, 1)]
    for block, (choice, (cin, cout, stride)) in enumerate(zip(arch.blocks, space.block_shapes(arch.width))):
        if not choice.skip:
            layers += inverted_residual_layers(cin, cout, choice.kernel, choice.expand, stride, size, f"block{block}.")
        size = _strided(size, stride)
    cin = space.block_shapes(arch.width)[-1][1] if space.blocks else stem
    layers.append(_conv("head", cin, space.head, size, 1, 1))
    layers.append(LayerDesc("pool", "pool", (1, space.head, *size), (1, space.head, 1, 1), size, size))
    layers.append(LayerDesc("classifier", "linear", (1, space.head), (1, space.classes), has_bias=True))
    return layers
