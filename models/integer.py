"""Layers that compute in integer arithmetic, written so that `torch.export` keeps them whole.

A quantized layer (the `haq` pass's output for layers at <= 8 bits) runs

    codes  = clamp(round(x / s_x) + z_x, 0, 2**b - 1) - 2**(b-1)        int8 (signed storage)
    acc    = sum over the window of (codes - z) * w_codes                 int32 accumulation
    y      = acc * (s_x * s_w[out]) + bias                                float, per output channel

where ``z = z_x - 2**(b-1)`` is the zero point in the signed storage, ``w_codes`` the int8
per-output-channel weight codes and ``s_w`` their scales. The integer part is one opaque
torch operator (``adl::int_conv2d`` / ``adl::int_linear``, registered below): PyTorch has no
int8 convolution on the CPU and its own quantized operators do not reach TVM, so eager mode
computes it exactly in float64 (every partial sum is an integer below 2**53), `torch.export`
records the call as one node, and the TVM lowering (`adl.backends.tvm.integer_ops`) turns it
into ``conv2d``/``matmul`` on int8 operands with ``out_dtype="int32"`` -- real integer
arithmetic in the library. Padding is filled with ``z`` (the code of 0.0), so padded
positions contribute nothing, and ``z * sum(w_codes)`` is subtracted per output channel.

The elementwise code around the operator (rounding, clamping, the float rescale) is plain
torch and is lowered as usual; it fuses into the neighbouring kernels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IntegerConv2d", "IntegerLinear", "SimulatedQuantLayer", "int_conv2d", "int_linear", "is_integer_layer"]


def _conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@torch.library.custom_op("adl::int_conv2d", mutates_args=())
def int_conv2d(codes: torch.Tensor, weight: torch.Tensor, zero_point: int, stride: Sequence[int],
               padding: Sequence[int], dilation: Sequence[int], groups: int) -> torch.Tensor:
    """int32 sum of (codes - zero_point) * weight over each window; `codes`, `weight` int8 (NCHW, OIHW)."""
    centred = codes.to(torch.float64) - zero_point  # zero padding of the centred codes = padding with z
    acc = F.conv2d(centred, weight.to(torch.float64), None, list(stride), list(padding), list(dilation), groups)
    return acc.round().to(torch.int32)


@int_conv2d.register_fake
def _int_conv2d_shape(codes: torch.Tensor, weight: torch.Tensor, zero_point: int, stride: Sequence[int],
                      padding: Sequence[int], dilation: Sequence[int], groups: int) -> torch.Tensor:
    n, _, h, w = codes.shape
    out_h = _conv_output_size(h, weight.shape[2], stride[0], padding[0], dilation[0])
    out_w = _conv_output_size(w, weight.shape[3], stride[1], padding[1], dilation[1])
    return codes.new_empty((n, weight.shape[0], out_h, out_w), dtype=torch.int32)


@torch.library.custom_op("adl::int_linear", mutates_args=())
def int_linear(codes: torch.Tensor, weight: torch.Tensor, zero_point: int) -> torch.Tensor:
    """int32 (codes - zero_point) @ weight.T; `codes` (N, in) and `weight` (out, in) int8."""
    acc = (codes.to(torch.float64) - zero_point) @ weight.to(torch.float64).T
    return acc.round().to(torch.int32)


@int_linear.register_fake
def _int_linear_shape(codes: torch.Tensor, weight: torch.Tensor, zero_point: int) -> torch.Tensor:
    return codes.new_empty((*codes.shape[:-1], weight.shape[0]), dtype=torch.int32)


class _IntegerLayer(nn.Module):
    """What the integer convolution and linear layers share: input quantization and the rescale."""

    def __init__(self, weight_codes: torch.Tensor, weight_scales: torch.Tensor, bias: torch.Tensor | None,
                 act_scale: float, act_zero_point: int, act_bits: int, weight_bits: int) -> None:
        super().__init__()
        if not (1 <= act_bits <= 8 and 2 <= weight_bits <= 8):
            raise ValueError(f"integer layers take 1..8-bit activations and 2..8-bit weights, got "
                             f"a{act_bits} w{weight_bits}")
        limit = 2 ** (weight_bits - 1) - 1
        if weight_codes.numel() and int(weight_codes.abs().max()) > limit:
            raise ValueError(f"weight codes exceed the {weight_bits}-bit range [-{limit}, {limit}]")
        self.register_buffer("weight_codes", weight_codes.to(torch.int8))
        out_shape = (1, -1) + (1,) * (weight_codes.dim() - 2)
        self.register_buffer("rescale", (act_scale * weight_scales.to(torch.float64)).to(torch.float32)
                             .reshape(out_shape))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).reshape(out_shape))
        self.act_scale, self.act_bits, self.weight_bits = float(act_scale), int(act_bits), int(weight_bits)
        self.inverse_scale = 1.0 / self.act_scale
        self.offset = 2 ** (act_bits - 1)  # unsigned codes [0, 2**b - 1] -> signed storage
        self.zero_point = int(act_zero_point) - self.offset

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        # x * (1 / s), not x / s: a vector division costs ~5x a multiplication, and this runs on
        # every element in the previous kernel's epilogue (a depthwise conv does only 9 MACs per output)
        codes = torch.clamp(torch.round(x * self.inverse_scale) + (self.zero_point + self.offset), 0,
                            2 ** self.act_bits - 1)
        return (codes - self.offset).to(torch.int8)

    def rescale_output(self, acc: torch.Tensor) -> torch.Tensor:
        """float32(acc) * rescale + bias, rounded once to float32, as the library computes it.

        The lowering exports a float32 multiply and add, which the kernels' epilogue computes as
        one fused multiply-add (LLVM contracts them on every CPU with FMA: x86-64 since Haswell,
        aarch64). Rounded twice instead, as a float32 multiply then add, the result differs by an
        ulp on many elements, and wherever the next layer rounds to its activation grid near a
        tie, a code lands one apart (on the Fashion-MNIST demo: 193 of 10,000 samples beyond
        1e-4, two top-1 classes changed; with this, 6 and none). Eager mode computes it in
        float64: the product of two float32 values is exact there, so only the sum rounds, and
        rounding that to float32 differs from one rounding only when the float64 sum falls on a
        float32 tie it was not on (about 2**-29 of elements).
        """
        scaled = acc.to(torch.float32)
        if torch.compiler.is_exporting():
            y = scaled * self.rescale
            return y if self.bias is None else y + self.bias
        y = scaled.to(torch.float64) * self.rescale.to(torch.float64)
        return (y if self.bias is None else y + self.bias.to(torch.float64)).to(torch.float32)

    def extra_repr(self) -> str:
        return f"w{self.weight_bits}a{self.act_bits}, int8 x int8 -> int32"


class IntegerConv2d(_IntegerLayer):
    def __init__(self, conv: nn.Conv2d, weight_codes: torch.Tensor, weight_scales: torch.Tensor,
                 act_scale: float, act_zero_point: int, act_bits: int, weight_bits: int) -> None:
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(f"integer convolution needs explicit zero padding, got padding={conv.padding!r} "
                             f"mode={conv.padding_mode!r}")
        super().__init__(weight_codes, weight_scales, conv.bias, act_scale, act_zero_point, act_bits, weight_bits)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), int(conv.groups)

    @property
    def quantized_template(self) -> nn.Conv2d:
        """The float layer this one computes (shapes only, on the meta device): what
        `describe_model` describes, with this layer's bit widths."""
        out_channels, per_group, *kernel = self.weight_codes.shape
        return nn.Conv2d(per_group * self.groups, out_channels, tuple(kernel), self.stride, self.padding,
                         self.dilation, self.groups, bias=self.bias is not None, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = int_conv2d(self.quantize_input(x), self.weight_codes, self.zero_point, self.stride, self.padding,
                         self.dilation, self.groups)
        return self.rescale_output(acc)


class IntegerLinear(_IntegerLayer):
    def __init__(self, linear: nn.Linear, weight_codes: torch.Tensor, weight_scales: torch.Tensor,
                 act_scale: float, act_zero_point: int, act_bits: int, weight_bits: int) -> None:
        super().__init__(weight_codes, weight_scales, linear.bias, act_scale, act_zero_point, act_bits, weight_bits)

    @property
    def quantized_template(self) -> nn.Linear:
        out_features, in_features = self.weight_codes.shape
        return nn.Linear(in_features, out_features, bias=self.bias is not None, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rescale_output(int_linear(self.quantize_input(x), self.weight_codes, self.zero_point))


class SimulatedQuantLayer(nn.Module):
    """The fallback of a quantized layer that does not run in integer arithmetic (wider than
    8 bits, k-means codebooks, a target without integer lowering): the same quantized values
    -- input rounded to the activation grid, weights replaced by their dequantized codes --
    computed in float32."""

    def __init__(self, layer: nn.Module, weight: torch.Tensor, act_scale: float, act_zero_point: int,
                 act_bits: int, weight_bits: int) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"expected a Conv2d or Linear, got {type(layer).__name__}")
        self.layer = layer
        self.layer.weight = nn.Parameter(weight.detach().to(layer.weight.dtype), requires_grad=False)
        self.act_scale, self.act_bits, self.weight_bits = float(act_scale), int(act_bits), int(weight_bits)
        self.zero_point = int(act_zero_point)

    @property
    def quantized_template(self) -> nn.Module:
        return self.layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = torch.clamp(torch.round(x / self.act_scale) + self.zero_point, 0, 2 ** self.act_bits - 1)
        return self.layer((codes - self.zero_point) * self.act_scale)

    def extra_repr(self) -> str:
        return f"w{self.weight_bits}a{self.act_bits}, float32 arithmetic on quantized values"


def is_integer_layer(module: nn.Module) -> bool:
    return isinstance(module, _IntegerLayer)
