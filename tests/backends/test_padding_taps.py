"""Tests of adl.backends.tvm.padding_taps: convolution taps that only ever see padding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from adl.backends.tvm.padding_taps import AxisTrim, trim_axis


@pytest.mark.parametrize(
    "size, kernel, stride, dilation, before, after, expected",
    [
        (1, 3, 1, 1, 1, 1, AxisTrim(1, 1, 0, 0)),  # 3x3, pad 1 on a 1x1 map: only the centre tap
        (2, 3, 2, 1, 1, 1, AxisTrim(1, 2, 0, 0)),  # stride 2 on 2x2 -> 1x1: taps 1 and 2
        (1, 7, 2, 1, 3, 3, AxisTrim(3, 1, 0, 0)),  # a 7x7 stem on a 1-pixel input
        (1, 3, 1, 2, 2, 2, AxisTrim(1, 1, 0, 0)),  # dilation 2: the outer taps land two pixels out
        (2, 3, 1, 1, 1, 1, None),  # 2x2 map, 3x3 kernel: every tap reads the input for some output
        (7, 3, 1, 1, 1, 1, None),
        (4, 3, 2, 1, 1, 1, None),
        (5, 1, 1, 1, 0, 0, None),  # 1x1 kernel: nothing to trim
    ],
)
def test_trim_axis(size, kernel, stride, dilation, before, after, expected):
    assert trim_axis(size, kernel, stride, dilation, before, after) == expected


def _conv_1d(x, w, stride: int, dilation: int, before: int, after: int) -> np.ndarray:
    """A 1-D convolution over `x` zero-padded by `before` and `after`, by definition."""
    padded = np.concatenate([np.zeros(before), x, np.zeros(after)])
    n = (len(padded) - dilation * (len(w) - 1) - 1) // stride + 1
    return np.array([sum(padded[o * stride + k * dilation] * w[k] for k in range(len(w))) for o in range(n)])


def test_a_trimmed_axis_computes_the_same_sums():
    """Every output of the trimmed 1-D convolution equals the original's, on random data, for every
    small size, kernel, stride, dilation and padding that `trim_axis` trims: the removed taps only
    multiplied zeros. (Most combinations use every tap; the grid holds 53 that do not.)"""
    rng = np.random.default_rng(0)
    trimmed = 0
    for size, kernel, stride, dilation, before, after in itertools.product(
        (1, 2, 3, 5), (1, 3, 5), (1, 2), (1, 2), range(3), range(3)
    ):
        trim = trim_axis(size, kernel, stride, dilation, before, after)
        if trim is None:
            continue
        trimmed += 1
        x, w = rng.standard_normal(size), rng.standard_normal(kernel)
        assert trim.taps < kernel
        np.testing.assert_allclose(
            _conv_1d(x, w[trim.first : trim.first + trim.taps], stride, dilation, trim.before, trim.after),
            _conv_1d(x, w, stride, dilation, before, after),
            rtol=1e-12,
            atol=1e-12,
        )
    assert trimmed == 53  # the combinations of this grid that trim_axis trims


@pytest.mark.slow
def test_a_convolution_on_a_tiny_map_keeps_only_the_taps_that_read_it():
    """ResNet's last stage at 32x32 inputs: a 3x3 convolution (padding 1) on a 1x1 map becomes a
    1x1 one, a strided one on 2x2 keeps 2x2 of its taps; the library computes what PyTorch does
    (float32 sums of <= 64 x 9 products of unit-scale values: ~1e-6 of rounding)."""
    torch = pytest.importorskip("torch")
    tvm = pytest.importorskip("tvm")
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from adl.backends.tvm import default_schedules as ds

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.conv = torch.nn.Conv2d(32, 32, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.relu(self.down(x)))

    torch.manual_seed(0)
    model = Tail().eval()
    x = np.random.default_rng(0).standard_normal((1, 16, 2, 2)).astype(np.float32)
    mod = from_exported_program(torch.export.export(model, (torch.from_numpy(x),)), keep_params_as_input=False)
    trimmed = ds.skip_padding_taps()(mod)
    kernels = sorted(tuple(int(d) for d in call.args[1].ty.shape) for call in _conv_calls(trimmed["main"], relax))
    assert kernels == [(32, 16, 2, 2), (32, 32, 1, 1)]
    target = tvm.target.Target({"kind": "llvm", "num-cores": 1, "mcpu": "znver3"})
    executable = tvm.compile(mod, target=target, relax_pipeline=ds.default_cpu_pipeline(target))
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x))[0].numpy()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert float(np.max(np.abs(got - expected))) <= 1e-5


def _conv_calls(func, relax) -> list:
    calls = []

    @relax.expr_functor.visitor
    class _Find(relax.PyExprVisitor):
        def visit_call_(self, call):  # noqa: N802 (TVM visitor name)
            if getattr(call.op, "name", None) == "relax.nn.conv2d":
                calls.append(call)
            super().visit_call_(call)

    _Find().visit_expr(func)
    return calls
