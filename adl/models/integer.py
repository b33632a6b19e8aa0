"""Layers that compute in integer arithmetic, written so that `torch.export` keeps them whole.

A quantized layer (the `haq` pass's output for layers at <= 8 bits) runs

    codes  = clamp(round(x / s_x) + z_x, 0, 2**b - 1)                     uint8
    acc    = sum over the window of (codes - z_x) * w_codes               int32 accumulation
    y      = acc * (s_x * s_w[out]) + bias                                float, per output channel

with ``w_codes`` the int8 per-output-channel weight codes and ``s_w`` their scales. Unsigned
activations times signed weights is the operand order of the CPUs' integer dot products
(x86 VNNI's ``vpdpbusd``: u8 x s8 -> s32), which the default schedules map the reduction onto.
The integer part is one opaque torch operator (``adl::int_conv2d`` / ``adl::int_linear``,
registered below): PyTorch has no int8 convolution on the CPU and its own quantized operators
do not reach TVM, so eager mode computes it exactly in float64 (every partial sum is an
integer below 2**53), `torch.export` records the call as one node, and the TVM lowering
(`adl.backends.tvm.integer_ops`) turns it into ``conv2d``/``matmul`` on u8 x s8 operands with
``out_dtype="int32"`` -- real integer arithmetic in the library. Padding is filled with
``z_x`` (the code of 0.0), so padded positions contribute nothing, and ``z_x * sum(w_codes)``
is subtracted per output channel.

**Requantization.** When a layer's output feeds only integer layers that quantize it the same
way (through ReLU/ReLU6 clamps, max pooling, flattening: see `adl.models.integer_graph`), the
float rescale and the consumer's quantization are replaced by one step on the accumulators
(``adl::requantize``), ONNX's QLinearConv requantization::

    codes' = clamp(round((float32(acc) + b[c]) * m[c]) + z', lo, hi)          uint8

with ``b`` the bias in accumulator units, ``m = s_x * s_w[c] / s'`` (float32), rounding half to
even, and ``[lo, hi]`` the code range the activation leaves (``lo = z'`` for ReLU). Every step
is a single IEEE operation and the add precedes the multiply (a multiply followed by an add is
what a compiler may fuse into one FMA, rounding once), so PyTorch and the library compute the
same codes bit for bit, on any IEEE-754 CPU. (An integer multiplier and shift, as gemmlowp
does, is as exact but needs 64-bit products: on a 1x1 convolution of 16 to 96 channels at
28x28 its epilogue took 2-3x the time of this one on AVX-512. An integer bias, as ONNX's
QLinearConv has, is too coarse for HAQ's narrow weights: with 2-bit weights one accumulator
unit can be most of an output code.)
The elementwise code around the operators (rounding, clamping, the float
rescale at the remaining float boundaries) is plain torch and is lowered as usual; it fuses
into the neighbouring kernels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IntegerConv2d",
    "IntegerLinear",
    "OutputRequantization",
    "SimulatedQuantLayer",
    "int_conv2d",
    "int_linear",
    "is_integer_layer",
    "requantize",
]


def _conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@torch.library.custom_op("adl::int_conv2d", mutates_args=())
def int_conv2d(
    codes: torch.Tensor,
    weight: torch.Tensor,
    zero_point: int,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    """int32 sum of (codes - zero_point) * weight over each window; `codes` uint8 (NCHW), `weight` int8 (OIHW)."""
    centred = codes.to(torch.float64) - zero_point  # zero padding of the centred codes = padding with z
    acc = F.conv2d(centred, weight.to(torch.float64), None, list(stride), list(padding), list(dilation), groups)
    return acc.round().to(torch.int32)


@int_conv2d.register_fake
def _int_conv2d_shape(
    codes: torch.Tensor,
    weight: torch.Tensor,
    zero_point: int,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    n, _, h, w = codes.shape
    out_h = _conv_output_size(h, weight.shape[2], stride[0], padding[0], dilation[0])
    out_w = _conv_output_size(w, weight.shape[3], stride[1], padding[1], dilation[1])
    return codes.new_empty((n, weight.shape[0], out_h, out_w), dtype=torch.int32)


@torch.library.custom_op("adl::int_linear", mutates_args=())
def int_linear(codes: torch.Tensor, weight: torch.Tensor, zero_point: int) -> torch.Tensor:
    """int32 (codes - zero_point) @ weight.T; `codes` (N, in) uint8, `weight` (out, in) int8."""
    acc = (codes.to(torch.float64) - zero_point) @ weight.to(torch.float64).T
    return acc.round().to(torch.int32)


@int_linear.register_fake
def _int_linear_shape(codes: torch.Tensor, weight: torch.Tensor, zero_point: int) -> torch.Tensor:
    return codes.new_empty((*codes.shape[:-1], weight.shape[0]), dtype=torch.int32)


@torch.library.custom_op("adl::requantize", mutates_args=())
def requantize(
    acc: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, zero_point: int, low: int, high: int
) -> torch.Tensor:
    """uint8 codes clamp(round((float32(acc) + bias) * scale) + zero_point, low, high), rounding half to even.

    `acc` int32 (N, C, ...); `bias` (in accumulator units) and `scale`, float32 (1, C, 1, ...), per
    channel. Each step is one IEEE operation, and the add comes before the multiply (a multiply
    followed by an add is what compilers fuse into one FMA), so the library computes the same
    codes bit for bit."""
    y = torch.round((acc.to(torch.float32) + bias) * scale)
    return torch.clamp(y + zero_point, low, high).to(torch.uint8)


@requantize.register_fake
def _requantize_shape(
    acc: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor, zero_point: int, low: int, high: int
) -> torch.Tensor:
    return acc.new_empty(acc.shape, dtype=torch.uint8)


class OutputRequantization(nn.Module):
    """How an integer layer hands uint8 codes to the next integer layers instead of floats: the
    consumers' input quantization (scale, zero point, bits) and the code range ``[low, high]``
    left by the activations in between (ReLU: ``low = zero_point``)."""

    def __init__(
        self,
        acc_scales: torch.Tensor,
        bias: torch.Tensor | None,
        scale: float,
        zero_point: int,
        bits: int,
        low: int,
        high: int,
        offset: torch.Tensor | None = None,
    ) -> None:
        """`offset`: integers (C,) added to the accumulators, folded into the bias (see
        `_IntegerLayer.hand_codes_to`)."""
        super().__init__()
        if not 0 <= low <= high <= 2**bits - 1:
            raise ValueError(f"code range [{low}, {high}] is not within [0, {2**bits - 1}]")
        acc_scales = acc_scales.to(torch.float64).reshape(-1)
        bias = torch.zeros_like(acc_scales) if bias is None else bias.detach().to(torch.float64).reshape(-1)
        # (C,) each, per output channel: the bias in accumulator units (not rounded to them: with
        # 2-bit weights one accumulator unit can be most of an output code), and the accumulator's
        # scale in units of the consumers' scale
        units = bias / acc_scales + (0.0 if offset is None else offset.to(torch.float64).reshape(-1))
        self.register_buffer("bias", units.to(torch.float32))
        self.register_buffer("multiplier", (acc_scales / scale).to(torch.float32))
        self.scale, self.zero_point, self.bits = float(scale), int(zero_point), int(bits)
        self.low, self.high = int(low), int(high)

    def forward(self, acc: torch.Tensor) -> torch.Tensor:
        trailing = (1,) * (acc.dim() - 2)
        return requantize(
            acc,
            self.bias.reshape(1, -1, *trailing),
            self.multiplier.reshape(1, -1, *trailing),
            self.zero_point,
            self.low,
            self.high,
        )

    def extra_repr(self) -> str:
        return (
            f"-> u{self.bits} codes (scale {self.scale:.4g}, zero point {self.zero_point}), [{self.low}, {self.high}]"
        )


class _IntegerLayer(nn.Module):
    """What the integer convolution and linear layers share: input quantization and the rescale."""

    def __init__(
        self,
        weight_codes: torch.Tensor,
        weight_scales: torch.Tensor,
        bias: torch.Tensor | None,
        act_scale: float,
        act_zero_point: int,
        act_bits: int,
        weight_bits: int,
    ) -> None:
        super().__init__()
        if not (1 <= act_bits <= 8 and 2 <= weight_bits <= 8):
            raise ValueError(
                f"integer layers take 1..8-bit activations and 2..8-bit weights, got a{act_bits} w{weight_bits}"
            )
        limit = 2 ** (weight_bits - 1) - 1
        if weight_codes.numel() and int(weight_codes.abs().max()) > limit:
            raise ValueError(f"weight codes exceed the {weight_bits}-bit range [-{limit}, {limit}]")
        self.register_buffer("weight_codes", weight_codes.to(torch.int8))
        out_shape = (1, -1) + (1,) * (weight_codes.dim() - 2)
        self.register_buffer(
            "rescale", (act_scale * weight_scales.to(torch.float64)).to(torch.float32).reshape(out_shape)
        )
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).reshape(out_shape))
        self.act_scale, self.act_bits, self.weight_bits = float(act_scale), int(act_bits), int(weight_bits)
        self.inverse_scale = 1.0 / self.act_scale
        self.zero_point = int(act_zero_point)
        if not 0 <= self.zero_point <= 2**act_bits - 1:
            raise ValueError(f"activation zero point {self.zero_point} is not a {act_bits}-bit code")
        self.weight_scales = weight_scales.detach().to(torch.float64).reshape(-1)
        #: True: the input is already this layer's uint8 codes (the producer requantized into them)
        self.takes_codes = False
        #: set: the output is the next integer layers' uint8 codes, not floats
        self.requantize_output: OutputRequantization | None = None
        #: the zero point the integer kernel subtracts (0 once `hand_codes_to` folded it into the bias)
        self.kernel_zero_point = self.zero_point

    def hand_codes_to(self, scale: float, zero_point: int, bits: int, low: int, high: int) -> None:
        """Output the codes of the next integer layers' input quantization (integer requantization).

        Without padding, sum((codes - z) * w) = sum(codes * w) - z * sum(w), and the constant goes
        into the requantization's bias: the kernel accumulates raw codes and its epilogue has one
        operation less (a zero-point correction per output measured 40-80 % of a 1x1 convolution
        of 16 input channels on AVX-512)."""
        offset = None
        if self.zero_point and not self.pads:
            offset = -self.zero_point * self.weight_codes.to(torch.float64).reshape(len(self.weight_scales), -1).sum(1)
            self.kernel_zero_point = 0
        self.requantize_output = OutputRequantization(
            self.act_scale * self.weight_scales, self.bias, scale, zero_point, bits, low, high, offset
        )

    @property
    def pads(self) -> bool:
        """Whether the kernel pads its input (with the zero point)."""
        return False

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 codes of `x` (or `x` itself, when the producer already requantized into them)."""
        if self.takes_codes:
            if x.dtype != torch.uint8:
                raise TypeError(f"this layer takes uint8 codes from the layer before, got {x.dtype}")
            return x
        # x * (1 / s), not x / s: a vector division costs ~5x a multiplication, and this runs on
        # every element in the previous kernel's epilogue (a depthwise conv does only 9 MACs per output)
        codes = torch.clamp(torch.round(x * self.inverse_scale) + self.zero_point, 0, 2**self.act_bits - 1)
        return codes.to(torch.uint8)

    def finish(self, acc: torch.Tensor) -> torch.Tensor:
        """The layer's output from its int32 accumulators: codes for the next layers, or floats."""
        if self.requantize_output is not None:
            return self.requantize_output(acc)
        return self.rescale_output(acc)

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
        source = "u8 codes in" if self.takes_codes else "float in"
        return f"w{self.weight_bits}a{self.act_bits}, u8 x s8 -> s32, {source}"


class IntegerConv2d(_IntegerLayer):
    def __init__(
        self,
        conv: nn.Conv2d,
        weight_codes: torch.Tensor,
        weight_scales: torch.Tensor,
        act_scale: float,
        act_zero_point: int,
        act_bits: int,
        weight_bits: int,
    ) -> None:
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(
                f"integer convolution needs explicit zero padding, got padding={conv.padding!r} "
                f"mode={conv.padding_mode!r}"
            )
        super().__init__(weight_codes, weight_scales, conv.bias, act_scale, act_zero_point, act_bits, weight_bits)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), int(conv.groups)

    @property
    def quantized_template(self) -> nn.Conv2d:
        """The float layer this one computes (shapes only, on the meta device): what
        `describe_model` describes, with this layer's bit widths."""
        out_channels, per_group, *kernel = self.weight_codes.shape
        return nn.Conv2d(
            per_group * self.groups,
            out_channels,
            tuple(kernel),
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            bias=self.bias is not None,
            device="meta",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = int_conv2d(
            self.quantize_input(x),
            self.weight_codes,
            self.kernel_zero_point,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        return self.finish(acc)

    @property
    def pads(self) -> bool:
        return any(self.padding)


class IntegerLinear(_IntegerLayer):
    def __init__(
        self,
        linear: nn.Linear,
        weight_codes: torch.Tensor,
        weight_scales: torch.Tensor,
        act_scale: float,
        act_zero_point: int,
        act_bits: int,
        weight_bits: int,
    ) -> None:
        super().__init__(weight_codes, weight_scales, linear.bias, act_scale, act_zero_point, act_bits, weight_bits)

    @property
    def quantized_template(self) -> nn.Linear:
        out_features, in_features = self.weight_codes.shape
        return nn.Linear(in_features, out_features, bias=self.bias is not None, device="meta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(int_linear(self.quantize_input(x), self.weight_codes, self.kernel_zero_point))


class SimulatedQuantLayer(nn.Module):
    """The fallback of a quantized layer that does not run in integer arithmetic (wider than
    8 bits, k-means codebooks, a target without integer lowering): the same quantized values
    -- input rounded to the activation grid, weights replaced by their dequantized codes --
    computed in float32."""

    def __init__(
        self,
        layer: nn.Module,
        weight: torch.Tensor,
        act_scale: float,
        act_zero_point: int,
        act_bits: int,
        weight_bits: int,
    ) -> None:
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
        codes = torch.clamp(torch.round(x / self.act_scale) + self.zero_point, 0, 2**self.act_bits - 1)
        return self.layer((codes - self.zero_point) * self.act_scale)

    def extra_repr(self) -> str:
        return f"w{self.weight_bits}a{self.act_bits}, float32 arithmetic on quantized values"


def is_integer_layer(module: nn.Module) -> bool:
    return isinstance(module, _IntegerLayer)
