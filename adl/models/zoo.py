"""PyTorch implementations of the `model` families: mlp, cnn, mobilenet (MobileNetV2-style).

Every model starts with `Normalize`, so the compiled library takes inputs exactly as the
data source gives them (digits: pixel values 0..16) and deploys without preprocessing.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from adl.models.geometry import DEFAULT_CHANNELS, mobilenet_strides, scaled


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean and std stored as buffers (compiled into the library)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channel_dims: int) -> None:
        super().__init__()
        shape = (1, len(mean)) + (1,) * channel_dims
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU6
):
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> kxk depthwise -> 1x1 project, skip when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers.append(_conv_bn(hidden, hidden, kernel, stride, groups=hidden))
        layers.append(_conv_bn(hidden, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_skip else out


_scaled = scaled


def mlp(input_shape: Sequence[int], classes: int, hidden: Sequence[int] = (64,)) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = 1
    for dim in input_shape:
        width *= dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


CNN_HEADS = ("auto", "flatten", "pool")
FLATTEN_MAX = 8  # the largest final map (per side) a `flatten` head takes: <= 64 inputs per channel


def cnn_channels(size: int) -> tuple[int, ...]:
    """`cnn`'s default stages for images of side `size`: 16 and 32 channels, then one more stage
    (doubling the channels) per halving still needed to bring the final map to FLATTEN_MAX or less."""
    channels, size = [16, 32], size // 4
    while size > FLATTEN_MAX:
        channels.append(2 * channels[-1])
        size //= 2
    return tuple(channels)


def cnn_head(input_shape: Sequence[int], reach: int, final: Sequence[int]) -> str:
    """What `head = auto` means: `pool` (global average) when every position of the `final`
    map already sees the whole image (its receptive field, `reach` pixels, spans it: 8x8 digits
    after two stages) or when the map is too large to flatten; `flatten` otherwise, so that the
    linear layer learns where the features are (a 7x7 map of 28x28 images, 8x8 of 32x32)."""
    if reach >= max(input_shape[1:]) or max(final) > FLATTEN_MAX:
        return "pool"
    return "flatten"


def cnn(
    input_shape: Sequence[int],
    classes: int,
    channels: Sequence[int] | None = None,
    hidden: int = 64,
    kernel: int = 3,
    head: str = "auto",
) -> nn.Sequential:
    """Conv-BN-ReLU-maxpool stages, then a head: `flatten` (the final C x H x W map into the linear
    layer), `pool` (global average pooling: C features) or `auto` (see `cnn_head`)."""
    if head not in CNN_HEADS:
        raise ValueError(f"unknown cnn head {head!r}; known: {', '.join(CNN_HEADS)}")
    cin, height, width = input_shape[0], input_shape[1], input_shape[2]
    channels = cnn_channels(min(height, width)) if channels is None else channels
    layers: list[nn.Module] = []
    reach, step = 1, 1  # the receptive field of one position, and the distance between positions (pixels)
    grow = 2 * (kernel // 2) - kernel + 1  # a padded convolution's growth: 0, or 1 for an even kernel
    for cout in channels:
        layers.append(_conv_bn(cin, cout, kernel, act=nn.ReLU))
        pool = min(height, width) >= 2
        height, width, reach = height + grow, width + grow, reach + (kernel - 1) * step
        if pool:
            layers.append(nn.MaxPool2d(2))
            height, width, reach, step = height // 2, width // 2, reach + step, 2 * step
        cin = cout
    if head == "auto":
        head = cnn_head(input_shape, reach, (height, width))
    if head == "pool":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    else:
        layers.append(nn.Flatten())
        cin *= height * width
    if hidden:
        layers += [nn.Linear(cin, hidden), nn.ReLU()]
        cin = hidden
    layers.append(nn.Linear(cin, classes))
    return nn.Sequential(*layers)


def mobilenet(
    input_shape: Sequence[int],
    classes: int,
    kernels: Sequence[int] = (3, 3, 3, 3),
    expand: Sequence[int] = (1, 6, 6, 6),
    channels: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    width: float = 1.0,
    stem: int = 16,
    head: int = 64,
) -> nn.Sequential:
    """MobileNetV2-style network; `channels`/`strides` default to a schedule as long as `kernels`
    (`mobilenet_strides`: two stride-2 blocks take 8x8 digits down to 2x2, three take 28x28 to 4x4)."""
    blocks = len(kernels)
    channels = channels or tuple(DEFAULT_CHANNELS[min(i, len(DEFAULT_CHANNELS) - 1)] for i in range(blocks))
    strides = strides or mobilenet_strides(blocks, min(input_shape[1:]))
    cin = _scaled(stem, width)
    layers: list[nn.Module] = [_conv_bn(input_shape[0], cin, 3)]
    for k, e, c, s in zip(kernels, expand, channels, strides):
        cout = _scaled(c, width)
        layers.append(InvertedResidual(cin, cout, k, e, s))
        cin = cout
    layers += [_conv_bn(cin, head, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head, classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1-conv-BN shortcut, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride, act=nn.ReLU), _conv_bn(cout, cout, 3, act=None))
        self.shortcut = nn.Sequential() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride, act=None)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def resnet(
    input_shape: Sequence[int],
    classes: int,
    blocks: Sequence[int] = (2, 2, 2, 2),
    widths: Sequence[int] = (64, 128, 256, 512),
) -> nn.Sequential:
    """CIFAR-style ResNet (3x3 stem, no max-pool); the defaults are ResNet-18 (555 M MACs at 32x32)."""
    cin = widths[0]
    layers: list[nn.Module] = [_conv_bn(input_shape[0], cin, 3, act=nn.ReLU)]
    for stage, (count, cout) in enumerate(zip(blocks, widths)):
        for i in range(count):
            layers.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


FAMILIES = {"mlp": mlp, "cnn": cnn, "mobilenet": mobilenet, "resnet": resnet}


def build_model(
    family: str,
    options: Mapping[str, Any],
    *,
    input_shape: Sequence[int],
    classes: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> nn.Sequential:
    """A fresh model of `family`, preceded by input normalisation. Flat inputs need `mlp`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    if len(input_shape) != 3 and family != "mlp":
        raise ValueError(
            f"model '{family}' needs image inputs (C, H, W); this data has shape "
            f"{tuple(input_shape)}: use `model mlp(...)`"
        )
    body = FAMILIES[family](input_shape, classes, **dict(options))
    return nn.Sequential(Normalize(mean, std, channel_dims=len(input_shape) - 1), body)


# Reference networks of the lowering benchmarks (CIFAR-style, 32x32 inputs).
MOBILENET_V2_CIFAR = {
    "kernels": (3,) * 17,
    "expand": (1,) + (6,) * 16,
    "channels": (16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320),
    "strides": (1, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1),
    "stem": 32,
    "head": 1280,
}
RESNET18_CIFAR = {"blocks": (2, 2, 2, 2), "widths": (64, 128, 256, 512)}
