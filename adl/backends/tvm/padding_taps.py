"""Convolution taps that only ever see padding, removed before the convolution is scheduled.

A 3x3 convolution with padding 1 on a 1x1 feature map (ResNet-18's last stage at 32x32
inputs) multiplies eight of its nine taps by padding zeros for every output: it reads nine
times the weights it needs (9.4 MB instead of 1 MB for 512 -> 512 channels), and reading
weights is all such a layer does. ONNX Runtime's MLAS skips taps outside the input while it
convolves; here the weight is sliced to the taps that touch the input for some output and the
padding shrunk to match, so the convolution computes exactly the same sums without them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AxisTrim", "skip_padding_taps", "trim_axis"]


@dataclass(frozen=True)
class AxisTrim:
    """One spatial axis of a convolution after trimming: keep taps `first`..`first + taps - 1`
    of the kernel and pad the input by `before` and `after`."""

    first: int
    taps: int
    before: int
    after: int


def _output_size(size: int, kernel: int, stride: int, dilation: int, before: int, after: int) -> int:
    return (size + before + after - dilation * (kernel - 1) - 1) // stride + 1


def trim_axis(size: int, kernel: int, stride: int, dilation: int, before: int, after: int) -> AxisTrim | None:
    """The taps of one axis that read the input (not padding) for at least one output position,
    as an `AxisTrim` with the padding that keeps every output's window where it was; None when
    every tap is used, the used taps are not contiguous, or the trimmed window would need the
    input cropped (negative padding) or would change the output size."""
    out = _output_size(size, kernel, stride, dilation, before, after)
    if out < 1:
        return None
    used = [k for k in range(kernel) if any(0 <= o * stride + k * dilation - before < size for o in range(out))]
    if not used or len(used) == kernel or used != list(range(used[0], used[-1] + 1)):
        return None
    first, taps = used[0], len(used)
    new_before = before - first * dilation
    if new_before < 0:
        return None
    new_after = max(0, (out - 1) * stride + dilation * (taps - 1) + 1 - size - new_before)
    if _output_size(size, taps, stride, dilation, new_before, new_after) != out:
        return None
    return AxisTrim(first, taps, new_before, new_after)


def skip_padding_taps():
    """A Relax function pass: every NCHW/OIHW ``conv2d`` with a constant weight and a static input
    shape whose kernel has taps that only see padding gets the sliced weight and the smaller
    padding (`trim_axis` per spatial axis). Run it before ``ConvertLayout``."""
    import tvm
    from tvm import relax

    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    _Const = type(relax.const(0.0))

    def _ints(values) -> list[int]:
        return [int(v) for v in values]

    def _rewrite(call):
        data, weight = call.args
        attrs = call.attrs
        if not isinstance(weight, _Const) or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW":
            return None
        shape = getattr(data.ty, "shape", None)
        if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
            return None
        sizes = _ints(shape)[2:]
        top, left, bottom, right = _ints(attrs.padding)
        strides, dilation = _ints(attrs.strides), _ints(attrs.dilation)
        kernel = weight.value.numpy()
        rows = trim_axis(sizes[0], kernel.shape[2], strides[0], dilation[0], top, bottom)
        cols = trim_axis(sizes[1], kernel.shape[3], strides[1], dilation[1], left, right)
        if rows is None and cols is None:
            return None
        rows = rows or AxisTrim(0, kernel.shape[2], top, bottom)
        cols = cols or AxisTrim(0, kernel.shape[3], left, right)
        sliced = kernel[:, :, rows.first : rows.first + rows.taps, cols.first : cols.first + cols.taps].copy()
        return relax.op.nn.conv2d(
            data,
            relax.const(sliced, str(kernel.dtype)),
            strides=strides,
            padding=(rows.before, cols.before, rows.after, cols.after),
            dilation=dilation,
            groups=int(attrs.groups),
            data_layout="NCHW",
            kernel_layout="OIHW",
            out_layout=attrs.out_layout,
            out_dtype=attrs.out_dtype or None,
        )

    @relax.expr_functor.mutator
    class _Trim(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 (TVM visitor name)
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.same_as(conv2d):
                trimmed = _rewrite(call)
                if trimmed is not None:
                    return trimmed
            return call

    @relax.transform.function_pass(opt_level=0, name="AdlSkipPaddingTaps")
    def _pass(func, mod, ctx):
        if not isinstance(func, relax.Function):
            return func
        return _Trim(mod).visit_expr(func)

    return _pass
