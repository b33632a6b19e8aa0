"""Export a small network of "your own" to ONNX, as a user of another framework would hand it to adl.

    python examples/onnx/export.py            # writes examples/onnx/net.onnx
    adl compile examples/onnx/digits_onnx.adl -o build/digits_onnx

The network is ordinary PyTorch, not one of adl's families: a scaling of its raw input (the
digits' pixel values 0..16 -> 0..1: its own input contract, which adl keeps), two residual
stages with depthwise convolutions, a channel concatenation, global pooling and a classifier.
It is exported untrained; the spec fine-tunes it on the digits, prunes it (amc), quantizes it
(haq) and lowers it. Any float32 network with one NCHW input and the operators adl imports
(docs/language.md, `model onnx`) works the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn


class Block(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 project, with a residual connection."""

    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        hidden = channels * expand
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DigitsNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stage1 = Block(16, 4)
        self.side = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(16, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stage2 = Block(32, 4)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x / 16.0)  # the network's own input contract: raw pixel values 0..16
        x = self.stage1(x)
        x = torch.cat([self.side(x), self.down(x)], dim=1)  # 16 + 16 channels at half the size
        return self.head(self.stage2(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("net.onnx"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = DigitsNet().eval()
    example = torch.zeros(1, 1, 8, 8)
    torch.onnx.export(
        model,
        (example,),
        str(args.out),
        input_names=["pixels"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},  # any batch size
        external_data=False,  # the weights inside net.onnx (adl also reads a net.onnx.data beside it)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
