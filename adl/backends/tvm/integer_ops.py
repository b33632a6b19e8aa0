"""Relax lowering of adl's integer operators (`adl.models.integer`): u8 x s8 -> s32, and requantization.

`torch.export` keeps ``adl::int_conv2d`` and ``adl::int_linear`` as single graph nodes; the
Relax importer has no converter for them, so :func:`import_exported` passes these:

* ``int_conv2d(codes, weight, z, stride, padding, dilation, groups)`` ->
  ``pad(codes, value=z)`` (the code of 0.0, so padded positions contribute nothing; with z = 0,
  the convolution's own zero padding, which the schedules fuse; input channels padded to a
  multiple of 4 with zero weights, the depth VNNI reduces) ->
  ``conv2d(uint8, int8, padding=0, out_dtype="int32")`` -> ``- z * sum(weight)`` per output
  channel (a constant once folded; omitted when z = 0);
* ``int_linear(codes, weight, z)`` -> ``matmul(codes, weight^T, out_dtype="int32") - z * sum(weight)``;
* ``requantize(acc, bias, scale, z, lo, hi)`` -> the same IEEE operations as eager mode:
  ``clip(round((float32(acc) + bias) * scale) + z, lo, hi)`` as uint8.

The u8 x s8 operands are what the default schedules map onto VNNI's ``vpdpbusd``
(`adl.backends.tvm.int8_kernels`).

The result is exactly the integers the eager operators compute; everything after them (the
per-channel float rescale, bias, activation, or the requantization) is ordinary Relax and fuses
into the kernel's epilogue.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["CONVERTERS", "import_exported"]


def _centred(importer: Any, acc: Any, weight: Any, zero_point: int, reduce_axes: list[int], shape: list[int]) -> Any:
    """acc - zero_point * sum(weight over `reduce_axes`), reshaped to broadcast over `acc`."""
    from tvm import relax

    if zero_point == 0:
        return acc
    emit = importer.block_builder.emit
    sums = emit(relax.op.sum(emit(relax.op.astype(weight, "int32")), axis=reduce_axes))
    correction = emit(relax.op.multiply(emit(relax.op.reshape(sums, shape)), relax.const(zero_point, "int32")))
    return emit(relax.op.subtract(acc, correction))


def _int_conv2d(node: Any, importer: Any) -> Any:
    from tvm import relax

    codes, weight = importer.env[node.args[0]], importer.env[node.args[1]]
    zero_point, stride, padding, dilation, groups = (node.args[2:] + (None,) * 5)[:5]
    zero_point, groups = int(zero_point), int(groups if groups is not None else 1)
    conv_padding = [0, 0]
    if any(padding) and zero_point == 0:  # padding with the zero point is the convolution's own zero padding
        conv_padding, padding = [int(p) for p in padding], (0, 0)
    pad_h, pad_w = int(padding[0]), int(padding[1])
    # input channels in 4s, as vpdpbusd reduces them (a 3-channel image: one zero-weight channel more)
    channels = int(codes.ty.shape[1])
    extra = (-channels) % 4 if groups == 1 else 0
    if pad_h or pad_w or extra:
        codes = importer.block_builder.emit(
            relax.op.nn.pad(codes, [0, 0, 0, extra, pad_h, pad_h, pad_w, pad_w], pad_value=float(zero_point))
        )
    kernel = weight
    if extra:
        kernel = importer.block_builder.emit(relax.op.nn.pad(weight, [0, 0, 0, extra, 0, 0, 0, 0], pad_value=0.0))
    acc = importer.block_builder.emit(
        relax.op.nn.conv2d(
            codes,
            kernel,
            strides=[int(s) for s in stride],
            padding=conv_padding,
            dilation=[int(d) for d in dilation],
            groups=groups,
            out_dtype="int32",
        )
    )
    return _centred(importer, acc, weight, zero_point, [1, 2, 3], [1, -1, 1, 1])


def _int_linear(node: Any, importer: Any) -> Any:
    from tvm import relax

    codes, weight = importer.env[node.args[0]], importer.env[node.args[1]]
    zero_point = int(node.args[2])
    acc = importer.block_builder.emit(
        relax.op.matmul(codes, importer.block_builder.emit(relax.op.permute_dims(weight)), out_dtype="int32")
    )
    return _centred(importer, acc, weight, zero_point, [1], [1, -1])


def _requantize(node: Any, importer: Any) -> Any:
    from tvm import relax

    emit = importer.block_builder.emit
    acc, bias, scale = (importer.env[a] for a in node.args[:3])
    zero_point, low, high = (float(a) for a in node.args[3:6])
    y = emit(
        relax.op.round(emit(relax.op.multiply(emit(relax.op.add(emit(relax.op.astype(acc, "float32")), bias)), scale)))
    )
    y = emit(relax.op.add(y, relax.const(zero_point, "float32")))
    y = emit(relax.op.minimum(emit(relax.op.maximum(y, relax.const(low, "float32"))), relax.const(high, "float32")))
    return emit(relax.op.astype(y, "uint8"))


CONVERTERS: dict[str, Callable[[Any, Any], Any]] = {
    "int_conv2d.default": _int_conv2d,
    "int_linear.default": _int_linear,
    "requantize.default": _requantize,
}


def import_exported(exported: Any, **kwargs: Any) -> Any:
    """`from_exported_program` with adl's integer operators converted (other arguments passed on)."""
    from tvm.relax.frontend.torch import from_exported_program

    return from_exported_program(exported, custom_convert_map=CONVERTERS, **kwargs)
