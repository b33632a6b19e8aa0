"""Tests of the rule-based default CPU schedules (adl.backends.tvm.default_schedules)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")

from adl.backends.tvm import default_schedules as ds  # noqa: E402

TARGET = {"kind": "llvm", "num-cores": 2, "mcpu": "znver3"}
INPUT_SHAPE = (1, 3, 16, 16)


class SmallMobileNet(torch.nn.Module):
    """Stem conv+BN+ReLU6, inverted residual (1x1, depthwise 3x3, 1x1, residual add),
    a strided conv, global average pooling and a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU6())
        self.block = torch.nn.Sequential(
            torch.nn.Conv2d(16, 48, 1, bias=False),
            torch.nn.BatchNorm2d(48),
            torch.nn.ReLU6(),
            torch.nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False),
            torch.nn.BatchNorm2d(48),
            torch.nn.ReLU6(),
            torch.nn.Conv2d(48, 16, 1, bias=False),
            torch.nn.BatchNorm2d(16),
        )
        self.down = torch.nn.Sequential(torch.nn.Conv2d(16, 24, 3, stride=2, padding=1), torch.nn.BatchNorm2d(24), torch.nn.ReLU())
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(24, 10)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        x = self.stem(x)
        x = x + self.block(x)
        x = self.down(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = SmallMobileNet()
    with torch.no_grad():  # non-trivial BN statistics, so folding them is actually tested
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _relax_module(model: torch.nn.Module):
    from tvm.relax.frontend.torch import from_exported_program

    exported = torch.export.export(model, (torch.randn(*INPUT_SHAPE),))
    return from_exported_program(exported, keep_params_as_input=False)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return _model()


@pytest.fixture(scope="module")
def scheduled(model):
    """The Relax module after the graph passes and the scheduling passes (before lowering)."""
    target = tvm.target.Target(TARGET)
    with target:
        return tvm.transform.Sequential(ds.graph_passes() + ds.schedule_passes())(_relax_module(model))


def _prim_funcs(mod) -> dict:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.mark.slow
def test_matches_pytorch(model):
    from tvm import relax

    target = tvm.target.Target(TARGET)
    executable = tvm.compile(_relax_module(model), target=target, relax_pipeline=ds.default_cpu_pipeline(target))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal(INPUT_SHAPE).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x))[0].numpy()
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert got.shape == expected.shape
        # outputs |z| < 0.4 carry ~3e-8 of float32 rounding (measured against float64), whatever the order
        assert float(np.max(np.abs(got - expected))) <= 1e-4


@pytest.mark.slow
def test_graph_passes_fold_batchnorm_and_use_nhwc(scheduled):
    text = scheduled["main"].script()
    assert "batch_norm" not in text
    assert "R.clip" not in text
    # every convolution got an NHWC kernel with a packed (tile-contiguous) constant weight
    convs = {n: f for n, f in _prim_funcs(scheduled).items() if "conv2d" in n}
    assert len(convs) == 5
    for name, func in convs.items():
        assert name.endswith("_prepacked"), name
        assert "conv2d_nhwc" in func.script() or "group_conv2d_nhwc" in func.script(), name
    # no transposes around activations: only the input (NCHW -> NHWC) and the pooled output
    assert sum(1 for n in _prim_funcs(scheduled) if "transpose" in n) <= 2


@pytest.mark.slow
def test_convolutions_are_parallel_vectorized_and_register_tiled(scheduled):
    convs = {n: f for n, f in _prim_funcs(scheduled).items() if "conv2d" in n}
    for name, func in convs.items():
        text = func.script()
        assert func.attrs["tirx.is_scheduled"], name
        assert "T.parallel(" in text, name
        assert "T.vectorized(T.int64(8))" in text, name
        # the zero-init is decomposed from the update, and the accumulator write-back carries
        # the fused epilogue (bias add from the folded BN)
        assert "_init" in text and "_update" in text, name
        write_back = text.split('_global"):')[-1]
        assert "param_1" in write_back or "+" in write_back, name


@pytest.mark.slow
def test_linear_and_pooling_are_vectorized(scheduled):
    funcs = _prim_funcs(scheduled)
    matmul = [f for n, f in funcs.items() if "matmul" in n]
    assert matmul and "T.vectorized(" in matmul[0].script()
    pool = [f for n, f in funcs.items() if "mean" in n or "pool" in n]
    assert pool and "T.vectorized(" in pool[0].script()


def test_rule_ignores_non_cpu_targets():
    from tvm.script import tirx as T  # noqa: F401  (TVMScript must be importable)

    rule = ds.CPUDefaultSchedule()
    x = tvm.te.placeholder((4, 8), name="x")
    y = tvm.te.compute((4, 8), lambda i, j: x[i, j] * 2.0, name="y")
    func = tvm.te.create_prim_func([x, y])
    assert rule.apply(func, tvm.target.Target({"kind": "cuda"}), False) is None
    sch = rule.apply(func, tvm.target.Target(TARGET), False)
    assert sch is not None
    assert "T.vectorized(T.int64(8))" in sch.mod["main"].script() or "T.vectorized(8)" in sch.mod["main"].script()


@pytest.mark.parametrize("target, lanes", [
    ({"kind": "llvm", "mcpu": "znver3"}, 8),  # AVX2 (LLVM reports a 512-bit width for it: features decide)
    ({"kind": "llvm", "mcpu": "skylake-avx512"}, 16),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}, 4),  # NEON
])
def test_float_lanes_follow_the_targets_vector_unit(target, lanes):
    assert ds.float_lanes(target) == lanes


def test_float_lanes_of_the_host_are_what_the_schedules_tile_by():
    from adl.backends.tvm.build import native_target

    host = {"kind": "llvm", "num-cores": 2}
    assert ds.float_lanes(host) == ds._lanes(tvm.target.Target(native_target(host)), 32) in (4, 8, 16)


@pytest.mark.slow
def test_channel_counts_off_the_vector_width_still_get_whole_vectors():
    """On AVX-512 (16 float lanes) a 24-channel convolution tiles by three 8-lane vectors, not one
    24-lane vector (which LLVM legalized element by element: 40 us instead of 5 for a 1x1
    convolution at 14x14), and an elementwise kernel of 16 int8 channels (a requantize-and-pad)
    is vectorized by 16 of its 64 lanes instead of running scalar (40 us instead of 4 at 28x28)."""

    class OffWidth(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(16, 24, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            codes = torch.clamp(torch.round(x * 4.0), -128, 127).to(torch.int8)
            return self.conv(torch.nn.functional.pad(codes, (1, 1, 1, 1), value=3).to(torch.float32))

    from tvm.relax.frontend.torch import from_exported_program

    exported = torch.export.export(OffWidth().eval(), (torch.randn(1, 16, 14, 14),))
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2, "mcpu": "skylake-avx512"})
    with target:
        scheduled = tvm.transform.Sequential(ds.graph_passes() + ds.schedule_passes())(
            from_exported_program(exported, keep_params_as_input=False))
    funcs = {name: f.script() for name, f in _prim_funcs(scheduled).items()}
    (conv,) = [text for name, text in funcs.items() if "conv2d" in name]
    assert "T.vectorized(T.int64(8))" in conv and "T.vectorized(T.int64(24))" not in conv
    (quantize,) = [text for name, text in funcs.items() if "round" in name]
    assert "T.vectorized(T.int64(16))" in quantize
