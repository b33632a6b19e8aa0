"""Relax lowering of adl's integer operators (`adl.models.integer`): int8 x int8 -> int32.

`torch.export` keeps ``adl::int_conv2d`` and ``adl::int_linear`` as single graph nodes; the
Relax importer has no converter for them, so :func:`import_exported` passes these:

* ``int_conv2d(codes, weight, z, stride, padding, dilation, groups)`` ->
  ``pad(codes, value=z)`` (the code of 0.0, so padded positions contribute nothing) ->
  ``conv2d(int8, int8, padding=0, out_dtype="int32")`` -> ``- z * sum(weight)`` per output
  channel (a constant once folded; omitted when z = 0);
* ``int_linear(codes, weight, z)`` -> ``matmul(codes, weight^T, out_dtype="int32") - z * sum(weight)``.

The result is exactly the int32 the eager operator computes; everything after it (the
per-channel float rescale, bias, activation) is ordinary Relax and fuses into the kernel's
epilogue.
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
    if any(padding):
        pad_h, pad_w = int(padding[0]), int(padding[1])
        codes = importer.block_builder.emit(relax.op.nn.pad(
            codes, [0, 0, 0, 0, pad_h, pad_h, pad_w, pad_w], pad_value=float(zero_point)))
    acc = importer.block_builder.emit(relax.op.nn.conv2d(
        codes, weight, strides=[int(s) for s in stride], padding=[0, 0], dilation=[int(d) for d in dilation],
        groups=groups, out_dtype="int32"))
    return _centred(importer, acc, weight, zero_point, [1, 2, 3], [1, -1, 1, 1])


def _int_linear(node: Any, importer: Any) -> Any:
    from tvm import relax

    codes, weight = importer.env[node.args[0]], importer.env[node.args[1]]
    zero_point = int(node.args[2])
    acc = importer.block_builder.emit(relax.op.matmul(codes, importer.block_builder.emit(relax.op.permute_dims(weight)), out_dtype="int32"))
    return _centred(importer, acc, weight, zero_point, [1], [1, -1])


CONVERTERS: dict[str, Callable[[Any, Any], Any]] = {
    "int_conv2d.default": _int_conv2d,
    "int_linear.default": _int_linear,
}


def import_exported(exported: Any, **kwargs: Any) -> Any:
    """`from_exported_program` with adl's integer operators converted (other arguments passed on)."""
    from tvm.relax.frontend.torch import from_exported_program

    return from_exported_program(exported, custom_convert_map=CONVERTERS, **kwargs)
