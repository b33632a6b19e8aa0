"""Tests of the TVM lowering (adl.backends.tvm.build) and the torch-free runtime (adl.backends.runtime)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from adl.backends.runtime import CompiledLibrary, LatencyStats, ThreadChoice, fastest_thread_count

torch = pytest.importorskip("torch")
pytest.importorskip("tvm")

from adl.backends.tvm.build import BuildInfo, LoweringError, build_library, max_abs_difference

INPUT_SHAPE = (1, 1, 8, 8)
CLASSES = 10
TARGET = {"kind": "llvm", "num-cores": 2}


class SmallCNN(torch.nn.Module):
    """conv+BN+ReLU, pool, linear, with input normalisation inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(0.4))
        self.register_buffer("std", torch.tensor(0.3))
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8 * 4 * 4, CLASSES)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        x = (x - self.mean) / self.std
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_model() -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial BN statistics, so eval-mode BN matters
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.2, 0.2)
    return model


def random_inputs(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *INPUT_SHAPE[1:]), dtype=np.float32)


def torch_outputs(model: SmallCNN, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[SmallCNN, Path, BuildInfo]:
    model = make_model()
    model.train()  # build_library must export in eval mode and restore this flag
    out_dir = tmp_path_factory.mktemp("tvm_build")
    out_path = out_dir / "cnn.so"
    info = build_library(model, random_inputs(4), TARGET, out_path)
    assert model.training and model.bn.training, "training flags restored after the build"
    return model, out_path, info


# ---------------------------------------------------------------------------------------------
# Build, run, compare (compiles: slow)


def test_library_built_for_a_batch(tmp_path: Path) -> None:
    """`batch=3`: one call takes three samples; `run` splits a batch of 7 into calls of 3, the
    last filled up with zeros, and returns exactly the 7 outputs torch computes."""
    model = make_model()
    info = build_library(model, random_inputs(1), {"kind": "llvm", "num-cores": 1}, tmp_path / "b3.so", batch=3)
    assert info.input_shape == (3, *INPUT_SHAPE[1:]) and info.output_shape == (3, CLASSES)
    library = CompiledLibrary(tmp_path / "b3.so", info.input_shape)
    x = random_inputs(7, seed=5)
    got = library.run(x)
    assert got.shape == (7, CLASSES)
    assert np.max(np.abs(got - torch_outputs(model, x))) <= 1e-4
    assert library.output_shape == (3, CLASSES)


@pytest.mark.slow
def test_build_info_and_files(built: tuple[SmallCNN, Path, BuildInfo]) -> None:
    _, out_path, info = built
    assert out_path.is_file()
    assert sorted(p.name for p in out_path.parent.iterdir()) == ["cnn.so"], "no temporary file left behind"
    assert info.input_name == "x"
    assert info.input_shape == INPUT_SHAPE
    assert info.input_dtype == "float32"
    assert info.output_shape == (1, CLASSES)
    import tvm

    assert info.tvm_version == tvm.__version__
    assert info.build_seconds > 0
    assert info.library_bytes == out_path.stat().st_size > 0


@pytest.mark.slow
def test_outputs_match_torch(built: tuple[SmallCNN, Path, BuildInfo]) -> None:
    model, out_path, info = built
    x = random_inputs(20, seed=2)
    library = CompiledLibrary(out_path, info.input_shape)
    got = library.run(x)
    assert got.shape == (20, CLASSES) and got.dtype == np.float32
    expected = torch_outputs(model, x)
    # logits |z| < 2 carry < 1e-6 of float32 rounding (measured against float64), whatever the order
    assert np.max(np.abs(got - expected)) <= 1e-4
    assert max_abs_difference(model, out_path, x) <= 1e-4
    # float64 inputs are cast; a single sample gives a batch of one
    np.testing.assert_allclose(library.run(x.astype(np.float64)), got, atol=1e-6)
    single = library.run(x[3])
    assert single.shape == (1, CLASSES)
    np.testing.assert_allclose(single[0], got[3], atol=1e-6)
    assert library.output_shape == (1, CLASSES)
    assert library.run(np.zeros((0, *INPUT_SHAPE[1:]), np.float32)).shape == (0, CLASSES)


@pytest.mark.slow
def test_batch_one_calls_reuse_the_input_tensor_and_threads_take_turns(
    built: tuple[SmallCNN, Path, BuildInfo],
) -> None:
    """`run` on one sample copies it into the library's reused input tensor: each call answers for
    its own input; threads calling one library at once take turns (the VM is not thread-safe:
    without the lock this crashed the process)."""
    model, out_path, info = built
    library = CompiledLibrary(out_path, info.input_shape)
    x = random_inputs(12, seed=7)
    expected = torch_outputs(model, x)
    one_by_one = np.concatenate([library.run(x[i : i + 1]) for i in range(len(x))])
    assert one_by_one.dtype == np.float32 and one_by_one.shape == (12, CLASSES)
    assert np.max(np.abs(one_by_one - expected)) <= 1e-4  # the float32 bound of test_outputs_match_torch

    barrier = threading.Barrier(3)

    def worker(offset: int) -> np.ndarray:
        barrier.wait()
        return np.concatenate([library.run(x[i : i + 1]) for _ in range(20) for i in range(offset, 12, 3)])

    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, worker(k))) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(3):
        np.testing.assert_array_equal(results[k], np.tile(one_by_one[k::3], (20, 1)))


@pytest.mark.slow
def test_predict_matches_argmax(built: tuple[SmallCNN, Path, BuildInfo]) -> None:
    model, out_path, info = built
    x = random_inputs(20, seed=3)
    labels = CompiledLibrary(out_path, info.input_shape).predict(x)
    assert labels.dtype == np.int64 and labels.shape == (20,)
    np.testing.assert_array_equal(labels, np.argmax(torch_outputs(model, x), axis=1))


@pytest.mark.slow
def test_latency_stats(built: tuple[SmallCNN, Path, BuildInfo]) -> None:
    _, out_path, info = built
    stats = CompiledLibrary(out_path, info.input_shape).latency()
    assert isinstance(stats, LatencyStats)
    assert stats.repeats == 50
    assert stats.median_s > 0
    assert 0 < stats.min_s <= stats.p10_s <= stats.median_s <= stats.p90_s
    assert stats.mean_s > 0
    assert stats.median_s < 1.0  # a tiny CNN, batch 1


@pytest.mark.slow
def test_wrong_input_shape_and_dtype_rejected(built: tuple[SmallCNN, Path, BuildInfo]) -> None:
    _, out_path, info = built
    library = CompiledLibrary(out_path, info.input_shape)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\).*got shape \(2, 1, 8, 9\)"):
        library.run(np.zeros((2, 1, 8, 9), np.float32))
    with pytest.raises(ValueError, match=r"got shape \(3, 8, 8, 1\)"):
        library.run(np.zeros((3, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="int64"):
        library.run(np.zeros((2, 1, 8, 8), np.int64))
    # a declared input shape that does not match the compiled one is caught by the VM
    with pytest.raises(ValueError, match="rejected"):
        CompiledLibrary(out_path, (1, 1, 4, 4)).run(np.zeros((1, 1, 4, 4), np.float32))


def _in_fresh_thread(fn):
    """Run ``fn`` in a new thread: TVM's thread pool is per thread and created on first use."""
    result: list = []
    errors: list = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # pragma: no cover - re-raised below
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


@pytest.mark.slow
def test_num_threads(built: tuple[SmallCNN, Path, BuildInfo], monkeypatch: pytest.MonkeyPatch) -> None:
    model, out_path, info = built
    monkeypatch.setenv("TVM_NUM_THREADS", "unset-me")
    monkeypatch.delenv("TVM_NUM_THREADS")  # undone (removed again) after the test
    x = random_inputs(5, seed=4)
    expected = torch_outputs(model, x)

    def use(n: int) -> tuple[int, np.ndarray]:
        library = CompiledLibrary(out_path, info.input_shape, num_threads=n)
        return library.runtime_threads, library.run(x)

    threads, got = _in_fresh_thread(lambda: use(2))
    assert os.environ["TVM_NUM_THREADS"] == str(max(2, len(os.sched_getaffinity(0))))
    assert threads == 2
    assert np.max(np.abs(got - expected)) <= 1e-4
    threads, got = _in_fresh_thread(lambda: use(1))
    assert threads == 1
    assert np.max(np.abs(got - expected)) <= 1e-4


@pytest.mark.slow
def test_fastest_thread_count_times_every_count(built: tuple[SmallCNN, Path, BuildInfo]) -> None:
    _, out_path, info = built
    choice = _in_fresh_thread(lambda: fastest_thread_count(out_path, info.input_shape, 2, rounds=2, repeats=5))
    assert sorted(choice.median_s) == [1, 2] and all(s > 0 for s in choice.median_s.values())
    assert choice.best_s[choice.threads] == min(choice.best_s.values())
    with pytest.raises(ValueError, match="max_threads"):
        fastest_thread_count(out_path, info.input_shape, 0)


@pytest.mark.slow
def test_loading_and_running_never_imports_torch(built: tuple[SmallCNN, Path, BuildInfo]) -> None:
    _, out_path, info = built
    code = (
        "import sys, numpy as np\n"
        "from adl.backends.runtime import CompiledLibrary\n"
        f"lib = CompiledLibrary({str(out_path)!r}, {info.input_shape!r}, num_threads=1)\n"
        f"assert lib.run(np.zeros({info.input_shape!r}, np.float32)).shape == (1, {CLASSES})\n"
        "assert lib.latency(repeats=5, warmup=1).repeats == 5\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------------------------
# No compilation needed


def test_runtime_import_never_imports_torch() -> None:
    code = (
        "import adl.backends.runtime, sys\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n"
        # importing tvm through the runtime must not pull torch in either (tvm_ffi tries to)
        "adl.backends.runtime._import_tvm()\n"
        "assert 'tvm.runtime.vm' in sys.modules\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:5]\n"
        # ...and torch stays importable afterwards
        "import torch\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class DataDependent(torch.nn.Module):
    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        if x.sum() > 0:  # Python control flow on a tensor value: torch.export cannot trace it
            return x * 2
        return x - 1


def test_export_failure_raises_lowering_error(tmp_path: Path) -> None:
    out_path = tmp_path / "bad.so"
    with pytest.raises(LoweringError, match="export step") as info:
        build_library(DataDependent(), random_inputs(1), TARGET, out_path)
    assert info.value.step == "export"
    assert info.value.__cause__ is not None
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_target_raises_lowering_error(tmp_path: Path) -> None:
    class Flatten(torch.nn.Module):
        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            return torch.flatten(x, 1)

    with pytest.raises(LoweringError, match="compile step") as info:
        build_library(Flatten(), random_inputs(1), {"kind": "no-such-target-kind"}, tmp_path / "x.so")
    assert info.value.step == "compile"
    assert list(tmp_path.iterdir()) == []


def test_thread_choice_goes_by_each_counts_quietest_round() -> None:
    """Load that comes and goes slows 2 threads in most rounds (a stalled worker holds up every
    parallel kernel); the quietest rounds show 2 threads are faster, and that is the choice."""
    choice = ThreadChoice({1: [10.0, 10.2, 10.1, 10.0, 10.3], 2: [5.5, 14.0, 13.0, 5.6, 12.0]})
    assert choice.median_s[1] < choice.median_s[2]  # what the medians would have picked
    assert choice.threads == 2 and choice.best_s == {1: 10.0, 2: 5.5}
    assert ThreadChoice({1: [4.0], 2: [4.0]}).threads == 1  # a tie: fewer threads


def test_compiled_library_argument_checks(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        CompiledLibrary(tmp_path / "missing.so", INPUT_SHAPE)
    with pytest.raises(ValueError, match="positive shape"):
        CompiledLibrary(tmp_path / "missing.so", (0, 1, 8, 8))
    with pytest.raises(ValueError, match="batch must be a positive int"):
        build_library(make_model(), random_inputs(1), {"kind": "llvm"}, tmp_path / "b.so", batch=0)
    with pytest.raises(ValueError, match="num_threads"):
        CompiledLibrary(tmp_path / "missing.so", INPUT_SHAPE, num_threads=0)
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not a library")
    with pytest.raises(RuntimeError, match="cannot load"):
        CompiledLibrary(junk, INPUT_SHAPE)
