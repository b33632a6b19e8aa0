"""Tests of the rule-based default CPU schedules (adl.backends.tvm.default_schedules)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")

from adl.backends.tvm import default_schedules as ds

TARGET = {"kind": "llvm", "num-cores": 2, "mcpu": "znver3"}
INPUT_SHAPE = (1, 3, 16, 16)


class SmallMobileNet(torch.nn.Module):
    """Stem conv+BN+ReLU6, inverted residual (1x1, depthwise 3x3, 1x1, residual add),
    a strided conv, global average pooling and a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16), torch.nn.ReLU6()
        )
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
        self.down = torch.nn.Sequential(
            torch.nn.Conv2d(16, 24, 3, stride=2, padding=1), torch.nn.BatchNorm2d(24), torch.nn.ReLU()
        )
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
            from_exported_program(exported, keep_params_as_input=False)
        )
    funcs = {name: f.script() for name, f in _prim_funcs(scheduled).items()}
    (conv,) = [text for name, text in funcs.items() if "conv2d" in name]
    assert "T.vectorized(T.int64(8))" in conv and "T.vectorized(T.int64(24))" not in conv
    (quantize,) = [text for name, text in funcs.items() if "round" in name]
    assert "T.vectorized(T.int64(16))" in quantize


def test_fast_sigmoid_is_within_float32_rounding_of_the_true_sigmoid():
    """`_vectorizable_sigmoid` (TOPI's polynomial fast_exp) against float64 over [-100, 100]: its
    absolute error stays at float32's rounding of values near 1 (ulp 1.2e-7; 8.9e-8 measured)."""
    from tvm import te

    x = te.placeholder((1 << 16,), "float32")
    kernel = tvm.compile(te.create_prim_func([x, ds._vectorizable_sigmoid(x)]), target="llvm")
    values = np.linspace(-100, 100, 1 << 16).astype(np.float32)
    out = tvm.runtime.empty((1 << 16,), "float32")
    kernel(tvm.runtime.tensor(values), out)
    exact = 1 / (1 + np.exp(-values.astype(np.float64)))
    assert float(np.max(np.abs(out.numpy() - exact))) <= 1.2e-7


@pytest.mark.slow
def test_sigmoid_and_silu_epilogues_are_vector_code_and_match_pytorch():
    """EfficientNet's SiLU and squeeze-and-excitation sigmoid: fused into the convolution's
    write-back without a call of libm's expf per element (scalar code), and equal to PyTorch's
    within float32 rounding (|SiLU(z)| <= |z| < 8 here: 8 x 1.2e-7 from the sigmoid, plus the
    convolution's summation order)."""

    class Swish(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.gate = torch.nn.Conv2d(16, 16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.silu(self.conv(x))
            return y * torch.sigmoid(self.gate(y))

    from tvm import relax

    torch.manual_seed(0)
    model = Swish().eval()
    target = tvm.target.Target(TARGET)
    with target:
        scheduled = tvm.transform.Sequential(ds.graph_passes() + ds.schedule_passes())(_relax_module(model))
    for name, func in _prim_funcs(scheduled).items():
        assert "T.exp(" not in func.script(), name
    executable = tvm.compile(_relax_module(model), target=target, relax_pipeline=ds.default_cpu_pipeline(target))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    x = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(x))[0].numpy()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert float(np.max(np.abs(expected))) < 8
    assert float(np.max(np.abs(got - expected))) <= 1e-5


@pytest.mark.slow
def test_an_unpadded_convolution_reads_its_input_in_place(scheduled):
    """A 1x1 convolution's "pad" block pads nothing: it is inlined, not a copy of the whole input;
    a 3x3 one (padding 1) keeps its padded copy on this AVX2 target (INLINE_PAD "auto")."""
    convs = [f.script() for name, f in _prim_funcs(scheduled).items() if "conv2d" in name]
    copies = ["pad_temp = T.sblock_alloc_buffer" in text for text in convs]
    assert copies.count(False) == 2  # the block's two 1x1 convolutions
    assert copies.count(True) == 3  # stem, depthwise and strided 3x3 convolutions


@pytest.mark.parametrize(
    "vectors, width, accumulators, expected",
    [
        (4, 56, 15, (2, 7)),  # 14 multiply-adds for 9 loads; not 4 x 2 (8 for 6) nor 1 x 14 (14 for 15)
        (3, 56, 15, (3, 4)),  # 24 channels as 3 vectors of 8: 12 for 7, not 1 x 14
        (80, 7, 15, (2, 7)),  # 1280 channels at 7x7: the whole row
        (4, 7, 12, (1, 7)),  # AVX2's 12: 7 for 8 beats 2 x 3 (6 for 5)
        (1, 13, 15, (1, 13)),  # a prime width divides only by itself
        (5, 1, 15, (5, 1)),  # one position: as many channel vectors as allowed (max_vectors 4 does not divide 5)
    ],
)
def test_register_tile_takes_the_most_multiply_adds_per_load(vectors, width, accumulators, expected):
    from adl.backends.tvm.register_tiles import register_tile

    nv, w = register_tile(vectors, width, accumulators, max_vectors=5 if vectors == 5 else 4)
    assert (nv, w) == expected
    assert nv * w <= accumulators and vectors % nv == 0 and width % w == 0


@pytest.mark.slow
def test_padding_is_inlined_on_avx512_targets(model):
    """INLINE_PAD "auto": on an AVX-512 target no convolution materialises a padded copy of its
    input (its loads are conditional instead: 2-3x faster depthwise kernels on a Zen 4)."""
    target = tvm.target.Target({"kind": "llvm", "num-cores": 2, "mcpu": "skylake-avx512"})
    with target:
        scheduled = tvm.transform.Sequential(ds.graph_passes() + ds.schedule_passes())(_relax_module(model))
    convs = [f.script() for name, f in _prim_funcs(scheduled).items() if "conv2d" in name]
    assert len(convs) == 5
    assert not any("pad_temp = T.sblock_alloc_buffer" in text for text in convs)
