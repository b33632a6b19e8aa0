"""TernGrad (issue 9): unbiased ternarization, the 2-bit wire format, scaler sharing, the DDP hook,
data-parallel training through `train { distributed = ... }`, a killed worker, resume, torchrun."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from adl.dsl.errors import AdlError
from adl.ir.passes import PassError
from adl.ir.pipeline import Pipeline
from adl.ir.progress import SilentProgress
from adl.ir.spec import CallValue
from adl.passes.train.distributed import hooks, ternary

# --- ternarization -----------------------------------------------------------------------------


def _draws(grad: torch.Tensor, scaler: float, samples: int, seed: int = 0) -> torch.Tensor:
    """`samples` independent ternarizations s·t of `grad`, one per row."""
    generator = torch.Generator().manual_seed(seed)
    return scaler * ternary.stochastic_ternary(grad.expand(samples, -1), scaler, generator).to(torch.float64)


def _unbiased_within(draws: torch.Tensor, target: torch.Tensor, scaler: float, z: float = 5.0) -> bool:
    """Is the mean of the draws within z standard errors of `target`, elementwise? The variance of
    one draw is s|g| - g², so the tolerance shrinks as 1/sqrt(number of draws)."""
    target = target.to(torch.float64)
    stderr = torch.sqrt((scaler * target.abs() - target**2).clamp_min(0) / draws.shape[0])
    return bool(((draws.mean(0) - target).abs() <= z * stderr + 1e-12).all())


def test_stochastic_ternary_is_unbiased_and_its_error_shrinks_as_one_over_sqrt_n():
    grad = torch.randn(400, generator=torch.Generator().manual_seed(1)) * 0.01
    scaler = float(grad.abs().max())
    errors = {}
    for samples in (1_000, 16_000):
        draws = _draws(grad, scaler, samples)
        assert set(draws.unique().tolist()) <= {-scaler, 0.0, scaler}
        assert _unbiased_within(draws, grad, scaler)
        errors[samples] = float((draws.mean(0) - grad).pow(2).mean().sqrt())
    # 16x the draws: the RMS error falls ~4x (1/sqrt(n)), not to zero and not staying put. Each RMS is over
    # 400 coordinates of unequal variance, so the ratio scatters by sd 0.22 (simulated): 4 +- 5 sd (measured 3.56)
    assert 2.9 < errors[1_000] / errors[16_000] < 5.1


def test_the_unbiasedness_check_rejects_a_biased_ternarizer():
    grad = torch.randn(400, generator=torch.Generator().manual_seed(1)) * 0.01
    scaler = float(grad.abs().max())
    biased = (
        scaler
        * torch.sign(grad)
        * (torch.rand(4_000, 400, generator=torch.Generator().manual_seed(0)) < (grad.abs() / scaler) ** 2)
    )
    assert not _unbiased_within(biased.to(torch.float64), grad, scaler)


def test_clip_bounds_at_c_sigma_and_leaves_degenerate_tensors_alone():
    grad = torch.cat([torch.randn(999, generator=torch.Generator().manual_seed(2)), torch.tensor([50.0])])
    clipped = ternary.clip(grad, 2.5)
    bound = 2.5 * float(grad.std(correction=0))
    assert float(clipped.abs().max()) == pytest.approx(bound)
    assert torch.equal(clipped[grad.abs() <= bound], grad[grad.abs() <= bound])
    assert torch.equal(ternary.clip(grad, 0.0), grad)  # clip = 0: off
    one = torch.tensor([3.0])
    assert torch.equal(ternary.clip(one, 2.5), one)  # sigma = 0 would erase a bias gradient


def test_scaler_sharing_keeps_the_worker_average_unbiased():
    """Each worker ternarizes with the largest scaler of all (what all-reduce MAX gives); the
    average of their decoded codes estimates the average of their gradients without bias."""
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(200, generator=gen) * scale for scale in (0.1, 1.0, 3.0)]
    local = ternary.local_scalers(grads)
    assert torch.equal(local, torch.stack([g.abs().max() for g in grads]))
    shared = float(local.max())
    samples = 8_000
    average = sum(_draws(g, shared, samples, seed=i) for i, g in enumerate(grads)) / len(grads)
    target = sum(grads) / len(grads)
    # each worker's draws are independent: the variance of the average is the sum of theirs / W²
    variance = sum((shared * g.abs() - g**2).to(torch.float64) for g in grads) / len(grads) ** 2
    assert bool(((average.mean(0) - target).abs() <= 5 * torch.sqrt(variance / samples) + 1e-12).all())


# --- the 2-bit wire format ---------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5, 7, 8, 9, 1001])
def test_pack_unpack_round_trip_is_exact(count):
    codes = torch.randint(-1, 2, (count,), generator=torch.Generator().manual_seed(count), dtype=torch.int8)
    packed = ternary.pack(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == ternary.packed_size(count) == math.ceil(count / 4)
    assert torch.equal(ternary.unpack(packed, count), codes)


def test_pack_layout_is_four_two_bit_codes_per_byte():
    # +1 -> 01, -1 -> 11, 0 -> 00 (2-bit two's complement), first code in the low bits
    assert ternary.pack(torch.tensor([1, -1, 0, 1], dtype=torch.int8)).tolist() == [0b01_00_11_01]
    assert ternary.pack(torch.tensor([-1], dtype=torch.int8)).tolist() == [0b11]
    with pytest.raises(ValueError, match="hold at most 4 codes"):
        ternary.unpack(torch.zeros(1, dtype=torch.uint8), 5)


# --- the DDP hook, in one process ----------------------------------------------------------------


@pytest.fixture
def single_process_group():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers; tiny ops on 2 busy cores crawl with more
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    torch.set_num_threads(threads)


def test_terngrad_hook_sends_packed_codes_and_averages_to_the_true_gradient(single_process_group):
    torch.manual_seed(0)
    model = torch.nn.Linear(30, 10)
    x, y = torch.randn(64, 30), torch.randint(0, 10, (64,))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    handle = hooks.register(ddp, CallValue("terngrad", (("clip", 0.0),)), seed=0)
    assert handle.name == "terngrad"
    counter = hooks.ByteCounter().install()
    try:
        reference = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), model.weight)[0]
        samples, total = 1_000, torch.zeros_like(reference, dtype=torch.float64)
        for _ in range(samples):
            counter.active = True
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            counter.active = False
            counter.end_step()
            total += model.weight.grad
            assert len(model.weight.grad.unique()) <= 3  # ternary: -s, 0, s
    finally:
        counter.uninstall()
    scaler = float(reference.abs().max())
    mean = total / samples
    stderr = torch.sqrt((scaler * reference.abs() - reference**2).clamp_min(0).to(torch.float64) / samples)
    assert bool(((mean - reference).abs() <= 5 * stderr + 1e-9).all())
    # per step: the packed codes of 310 gradients (78 bytes) plus one float32 scaler per tensor (2)
    assert counter.steps == [78 + 2 * 4] * samples


def test_error_feedback_carries_what_ternarization_left_out(single_process_group):
    """With error feedback the residual r_k = (g + r_(k-1)) - s_k t_k telescopes: the sum of the
    applied gradients over K steps is K g - r_K exactly."""
    torch.manual_seed(0)
    model = torch.nn.Linear(30, 10)
    x, y = torch.randn(64, 30), torch.randint(0, 10, (64,))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    handle = hooks.register(ddp, CallValue("terngrad", (("clip", 0.0), ("error_feedback", True))), seed=0)
    true = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), model.weight)[0]
    steps, applied = 50, torch.zeros_like(true)
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        applied += model.weight.grad
    weight_residual = handle.state.residuals[0].view_as(true)  # parameter 0: the weight
    # exact up to float32 rounding: 50 accumulations of |applied| <= 7 (ulp 4.8e-7) and of the residual,
    # <= 50 * 4.8e-7 = 2.4e-5 in the worst case (measured 1e-6); without the carried residual it is off by 0.6
    assert torch.allclose(applied, steps * true - weight_residual, atol=1e-4)
    assert float(weight_residual.abs().max()) > 0  # there was something to carry
    assert handle.state_dict()["terngrad"]["residuals"]  # saved with each checkpoint


def test_byte_counter_counts_fp16_and_allreduce_hooks(single_process_group):
    for compress, expected in (("none", 310 * 4), ("fp16", 310 * 2)):
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(30, 10))
        assert hooks.register(ddp, CallValue("ddp", (("compress", compress),)), seed=0).name == (
            "allreduce" if compress == "none" else "fp16"
        )
        counter = hooks.ByteCounter().install()
        counter.active = True
        try:
            ddp(torch.randn(8, 30)).sum().backward()
        finally:
            counter.uninstall()
        counter.end_step()
        assert counter.steps == [expected]


# --- the spec ------------------------------------------------------------------------------------


def test_distributed_option_parses_and_prints_back():
    pipeline = Pipeline.parse("train{epochs=2,distributed=terngrad(workers=4)}")
    (train,) = list(pipeline)
    assert train.config["distributed"].name == "terngrad"
    assert train.config["distributed"].as_dict() == {
        "workers": 4,
        "clip": 2.5,
        "error_feedback": False,
        "timeout": 60.0,
    }
    assert Pipeline.parse(str(pipeline)) == pipeline
    ddp = list(Pipeline.parse("train{distributed=ddp(compress=powersgd,rank=2)}"))[0]
    assert ddp.config["distributed"].as_dict()["compress"] == "powersgd"
    assert list(Pipeline.parse("train"))[0].config["distributed"] == CallValue("none")


@pytest.mark.parametrize(
    "text, message",
    [
        ("train{distributed=terngrad(workers=0)}", "'workers' must be at least 1"),
        ("train{distributed=ddp(compress=int8)}", "unknown compress 'int8'"),
        ("train{distributed=horovod(workers=2)}", "unknown distributed 'horovod'"),
    ],
)
def test_bad_distributed_options_point_at_the_spec(text, message):
    with pytest.raises(AdlError, match=message):
        Pipeline.parse(text)


# --- training with worker processes --------------------------------------------------------------

EPOCHS = 6


def _config() -> dict:
    """What SPEC below spells, as the train pass's configuration."""
    return {
        "epochs": EPOCHS,
        "batch_size": 64,
        "optimizer": CallValue("adam", (("lr", 0.003), ("weight_decay", 0.0))),
        "schedule": "cosine",
        "label_smoothing": 0.0,
        "distributed": TERNGRAD,
    }


TERNGRAD = CallValue("terngrad", (("workers", 2), ("clip", 2.5), ("error_feedback", False), ("timeout", 10.0)))


@pytest.fixture(scope="module")
def digits():
    from adl.data import load_dataset

    return load_dataset("digits", split=0.8, seed=0, classes=10, validation=0.1)  # as SPEC


def _model(digits):
    from adl.models import build_model

    torch.manual_seed(0)
    return build_model(
        "mlp", {"hidden": (64,)}, input_shape=digits.input_shape, classes=10, mean=digits.mean, std=digits.std
    )


def _train(digits, state_dir: Path, log=lambda message: None):
    from adl.passes.train.distributed.launch import train_distributed

    return train_distributed(
        _model(digits), digits, _config(), seed=0, state_dir=state_dir, progress=SilentProgress(), log=log
    )


SPEC = """
spec tiny
task classify { classes = 10 }
data digits { split = 0.8  seed = 0  validation = 10 % }
model mlp(hidden = [64])
target host { kind = llvm  cores = 2 }
pipeline {
  train { epochs = 6  distributed = terngrad(workers = 2, timeout = 10 s) }
}
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """`train { distributed = terngrad(workers = 2) }` compiled as `adl compile` does (in process):
    the module after the train pass, whose workers the compile started itself."""
    from adl.driver.check import load_spec
    from adl.driver.run import compile_spec

    folder = tmp_path_factory.mktemp("terngrad")
    return compile_spec(load_spec(SPEC), out_dir=folder / "out", cache_dir=folder / "cache").module


@pytest.mark.slow
def test_two_workers_learn_digits_through_the_terngrad_hook(uninterrupted):
    metrics = uninterrupted.metrics
    # fp32 Adam reaches ~0.95 in these 6 epochs; through TernGrad 0.936..0.942 (held out: 0.944..0.958) over
    # 4 seeds, where the standard errors of 359 and 143 samples are 0.013 and 0.019
    assert metrics["torch_accuracy"] >= 0.90
    history = metrics["train_history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert history[-1]["loss"] < history[0]["loss"] / 2
    assert history[-1]["val_accuracy"] >= 0.85  # scored by the workers on the held-out split
    assert metrics["distributed_hook"] == "terngrad" and metrics["distributed_workers"] == 2
    # 4810 float32 gradients -> 1203 packed bytes + 4 shared scalers, counted at the collectives
    assert metrics["fp32_bytes_per_step"] == 4810 * 4
    assert metrics["bytes_per_worker_per_step"] == 1203 + 4 * 4
    assert metrics["compression_vs_fp32"] < 1 / 12


def _pids(run_dir: Path) -> list[int]:
    return json.loads((run_dir / "workers.json").read_text())["pids"]


@pytest.mark.slow
def test_a_killed_worker_fails_the_run_quickly_naming_its_rank_and_a_rerun_resumes(digits, tmp_path, uninterrupted):
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = _train(digits, tmp_path)
        except PassError as err:
            outcome["error"], outcome["at"] = err, time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while not (tmp_path / "dist-e0002.rank1.pt").exists():  # mid-training: after epoch 2 of 6
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.02)
    killed_at = time.monotonic()
    os.kill(_pids(tmp_path / "run")[1], signal.SIGKILL)
    thread.join(timeout=60)
    assert not thread.is_alive(), "the launcher hangs after a worker was killed"
    error = outcome["error"]
    assert outcome["at"] - killed_at < 10.0  # bounded: well inside the gloo timeout (10 s) plus the grace
    message = str(error)
    assert "worker rank 1" in message and "SIGKILL" in message
    assert "rank 0: lost rank 1" in message  # the survivor's own diagnosis, from the heartbeat

    logs: list[str] = []
    resumed = _train(digits, tmp_path, log=logs.append)
    assert resumed.resumed_after >= 2 and any("resumed after epoch" in line for line in logs)
    assert [h["epoch"] for h in resumed.history] == list(range(1, EPOCHS + 1))
    # resuming is exact: the same weights as the run that was never interrupted (the spec's, same seed)
    for name, value in uninterrupted.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


@pytest.mark.slow
def test_torchrun_runs_the_same_training_as_the_local_launcher(tmp_path, uninterrupted):
    """`torchrun -m adl.train` (2 ranks) trains what `adl compile`'s own workers train."""
    (tmp_path / "tiny.adl").write_text(SPEC)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "adl.train",
            str(tmp_path / "tiny.adl"),
            "-o",
            str(tmp_path / "out"),
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "manifest.json").read_text())["metrics"]
    assert metrics["distributed_hook"] == "terngrad" and metrics["distributed_workers"] == 2
    # the same machine, seeds and one thread per rank: bit-identical training, so the very same test accuracy
    assert metrics["accuracy"] == pytest.approx(uninterrupted.metrics["torch_accuracy"], abs=1e-9)
    assert (tmp_path / ".adl-cache" / "rank1").is_dir()  # rank 1 kept its own checkpoints


STALL_SCRIPT = """
import time, torch.distributed as dist
from adl.passes.train.distributed.worker import Heartbeat
store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
Heartbeat("127.0.0.1", store.port, 0, 1, timeout_s=0.5).start()
time.sleep(30)  # a main loop that never reports progress
"""


def test_the_watchdog_ends_a_worker_stuck_outside_any_collective():
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", STALL_SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "rank 0: no progress for 1 s in starting" in proc.stderr
    assert time.monotonic() - began < 25  # not the 30 s sleep


@pytest.mark.slow
def test_a_planted_worker_checkpoint_is_refused_not_run(digits, tmp_path, planted):
    import pickle

    marker = tmp_path / "ran"
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    for name in ("dist-e0001.shared.pt", "dist-e0001.rank0.pt", "dist-e0001.rank1.pt"):
        (state_dir / name).write_bytes(pickle.dumps(planted(marker)))
    with pytest.raises(PassError, match=r"refusing checkpoint .*dist-e0001\..*not written by this user's adl"):
        _train(digits, state_dir)
    assert not marker.exists()
