"""bench/lowering.py's pure helpers and bench/peers.py's peak-kernel choice: the command line,
the goals computed from a fabricated report, the percentage of peak, the output check and the
thread check's bookkeeping. No TVM builds, no peers, no timing runs, no C compiler."""

from __future__ import annotations

import subprocess
from pathlib import Path

import lowering  # bench/lowering.py (tests/bench/conftest.py puts bench/ on the path)
import numpy as np
import peers
import pytest

# -- settings ---------------------------------------------------------------------------------


def test_measures_name_the_bench_the_peers_and_existing_paths():
    root = Path(lowering.__file__).resolve().parents[1]
    assert {"bench/lowering.py", "bench/peers.py", "adl/backends/tvm", "adl/backends/runtime.py"} <= set(
        lowering.MEASURES
    )
    assert [p for p in lowering.MEASURES if not (root / p).exists()] == []


def test_peers_is_a_helper_not_a_bench():
    import status

    assert "peers" in status.HELPERS
    assert "peers" not in status.bench_names(Path(lowering.__file__).resolve().parents[1])


def test_full_defaults():
    args = lowering.parse_args([])
    assert args.networks == ["mobilenet_v2", "resnet18", "mnasnet1_0", "efficientnet_b0"]
    assert args.sizes == [224, 32] and args.batches == [1, 8] and args.rounds == 7 and args.repeats is None
    assert not args.skip_torch_compile and not args.skip_thread_check and args.tune_minutes == []
    assert str(args.out) == "bench/results/lowering.json" and not args.quick
    assert lowering.calls_for(224, 1, args) == (30, 5)
    assert lowering.calls_for(32, 1, args) == (100, 10)
    assert lowering.calls_for(224, 8, args) == (5, 2)  # 30 // 8 = 3: at least 5 timed, 2 warm-up
    assert lowering.calls_for(32, 8, args) == (12, 2)


def test_quick_is_a_small_smoke_run():
    args = lowering.parse_args(["--quick", "--out", "/tmp/q.json"])
    assert (args.networks, args.sizes, args.batches, args.rounds) == (["mobilenet_v2"], [32], [1], 3)
    assert args.skip_torch_compile and args.skip_thread_check and args.tune_minutes == []
    assert lowering.calls_for(32, 1, args) == (20, 5)
    assert str(args.out) == "/tmp/q.json"


def test_explicit_settings_override_quick():
    args = lowering.parse_args(
        [
            "--quick",
            "--networks",
            "resnet18",
            "resnet18",
            "--sizes",
            "224",
            "--batches",
            "8",
            "--rounds",
            "2",
            "--repeats",
            "4",
            "--tune-minutes",
            "15",
            "5",
        ]
    )
    assert (args.networks, args.sizes, args.batches, args.rounds) == (["resnet18"], [224], [8], 2)
    assert lowering.calls_for(224, 8, args) == (4, 2)
    assert args.tune_minutes == [5.0, 15.0]


@pytest.mark.parametrize(
    "argv",
    [
        ["--networks", "vgg16"],
        ["--sizes", "64"],
        ["--rounds", "0"],
        ["--repeats", "0"],
        ["--batches", "0"],
        ["--tune-minutes", "0"],
    ],
)
def test_bad_arguments_are_rejected(argv, capsys):
    with pytest.raises(SystemExit):
        lowering.parse_args(argv)


def test_example_input_is_seeded_and_batch_one_is_batch_eights_first_sample():
    one, eight = lowering.example_input(32, 1), lowering.example_input(32, 8)
    assert one.shape == (1, 3, 32, 32) and eight.shape == (8, 3, 32, 32) and one.dtype == np.float32
    assert np.array_equal(one, eight[:1]) and np.array_equal(eight, lowering.example_input(32, 8))


# -- goals ------------------------------------------------------------------------------------


def case(**latencies):
    """A case row: engine -> latency (ms), or -> a full row (dict)."""
    return {
        "engines": {
            name: value if isinstance(value, dict) else {"latency_ms": value} for name, value in latencies.items()
        }
    }


def test_goals_met_missed_and_the_peer_targets():
    report = {
        "networks": {
            "mobilenet_v2_224": {
                "batches": {
                    "1": case(
                        pytorch_eager=40.0,
                        onnxruntime=10.0,
                        openvino=12.0,
                        adl={"latency_ms": 9.0, "compile_seconds": 45.0, "output_ok": True},
                        adl_tuned_5min={"latency_ms": 7.0, "tune_minutes": 5.0, "tuning": {"chosen": "default"}},
                        adl_tuned_15min={"latency_ms": 8.0, "tune_minutes": 15.0, "tuning": {"chosen": "metaschedule"}},
                        adl_tuned_30min={"latency_ms": 1.0, "tune_minutes": 30.0, "tuning": {"chosen": "metaschedule"}},
                    ),
                    "8": case(pytorch_eager=100.0, adl=60.0),
                }
            },
            "mnasnet1_0_224": {"batches": {"1": case(pytorch_eager=30.0, onnxruntime=10.0, openvino=9.0, adl=10.5)}},
            "efficientnet_b0_224": {"batches": {"1": case(pytorch_eager=30.0, onnxruntime=10.0, adl=12.5)}},
            "resnet18_224": {"batches": {"1": case(pytorch_eager=30.0, onnxruntime=10.0, openvino=9.0, adl=10.5)}},
        },
        "thread_check": {"quiet": {"threads": 2}, "loaded": {"threads": 2}},
    }
    out = lowering.goals(report)
    peers_text = " / min(ONNX Runtime, OpenVINO)"
    assert out["mobilenet_v2_224 b1: adl" + peers_text] == {"value": pytest.approx(0.9), "target": 1.0, "met": True}
    resnet = out["resnet18_224 b1: adl" + peers_text]  # 10.5 / 9: over 1.0
    assert resnet["value"] == pytest.approx(10.5 / 9) and resnet["target"] == 1.0 and resnet["met"] is False
    mnasnet = out["mnasnet1_0_224 b1: adl" + peers_text]  # the same ratio is within 1.2
    assert mnasnet["value"] == pytest.approx(10.5 / 9) and mnasnet["target"] == 1.2 and mnasnet["met"] is True
    efficient = out["efficientnet_b0_224 b1: adl" + peers_text]  # OpenVINO not measured: ONNX Runtime alone
    assert efficient["value"] == pytest.approx(1.25) and efficient["target"] == 1.2 and efficient["met"] is False
    eager = out["mobilenet_v2_224 b1: adl / PyTorch eager"]
    assert eager == {"value": pytest.approx(9.0 / 40.0), "target": 0.5, "met": True}
    assert out["mobilenet_v2_224 b8: adl / PyTorch eager"]["met"] is False  # 0.6
    assert out["mobilenet_v2_224: untuned compile seconds"] == {"value": 45.0, "target": 60.0, "met": True}
    # the 30-minute run does not count, nor the 5-minute one: tuning lost, the default library shipped
    tuned = out["mobilenet_v2_224 b1: adl tuned <= 15 min" + peers_text]
    assert tuned == {"value": pytest.approx(0.8), "target": 0.9, "met": True}
    threads = out["mobilenet_v2_224 b1: thread count the same quiet and under load of one busy core"]
    assert threads == {"value": 1.0, "target": 1.0, "met": True}
    not_measured = out["resnet18_32 b8: adl / PyTorch eager"]
    assert not_measured == {"value": None, "target": 0.5, "met": False}
    assert len(out) == 4 + 4 * 2 * 2 + 3


def test_goals_without_figures_are_not_met_with_value_none():
    out = lowering.goals({"networks": {}, "thread_check": {"skipped": True}})
    assert len(out) == 23
    assert all(goal["value"] is None and goal["met"] is False for goal in out.values())


def test_goals_ignore_failed_engines_and_wrong_libraries():
    report = {
        "networks": {
            "mobilenet_v2_224": {
                "batches": {
                    "1": case(
                        pytorch_eager=40.0,
                        onnxruntime={"error": "ImportError: no onnxruntime"},
                        openvino=10.0,
                        adl={"latency_ms": 5.0, "compile_seconds": 90.0, "output_ok": False},
                    )
                }
            }
        },
        "thread_check": {"quiet": {"threads": 1}, "loaded": {"threads": 2}},
    }
    out = lowering.goals(report)
    assert out["mobilenet_v2_224 b1: adl / min(ONNX Runtime, OpenVINO)"]["value"] is None  # wrong logits
    assert out["mobilenet_v2_224 b1: adl / PyTorch eager"]["value"] is None
    assert out["mobilenet_v2_224: untuned compile seconds"] == {"value": 90.0, "target": 60.0, "met": False}
    threads = out["mobilenet_v2_224 b1: thread count the same quiet and under load of one busy core"]
    assert threads == {"value": 0.0, "target": 1.0, "met": False}


def test_best_peer_takes_the_faster_measured_peer():
    assert lowering.best_peer_ms({"onnxruntime": {"latency_ms": 3.0}, "openvino": {"latency_ms": 2.0}}) == 2.0
    assert lowering.best_peer_ms({"onnxruntime": {"error": "x"}, "openvino": {"latency_ms": 2.0}}) == 2.0
    assert lowering.best_peer_ms({"pytorch_eager": {"latency_ms": 1.0}}) is None


# -- figures ----------------------------------------------------------------------------------


def test_percent_of_peak_against_both_fp32_peaks():
    peak = {"fma": {"fp32_flops_per_s": {"1": 1e11, "2": 4e11}}, "gemm": {"fp32_flops_per_s": {"2": 2e11}}}
    # 10^8 MACs in 1 ms: 2e11 FLOP/s
    assert lowering.percent_of_peak(10**8, 1e-3, peak) == {"fma": pytest.approx(50.0), "gemm": pytest.approx(100.0)}
    assert lowering.percent_of_peak(10**8, 1e-3, peak, threads=1) == {"fma": pytest.approx(200.0), "gemm": None}
    assert lowering.percent_of_peak(10**8, None, peak) == {"fma": None, "gemm": None}
    missing = {"fma": {"fp32_flops_per_s": None, "error": "no cc"}, "gemm": {"fp32_flops_per_s": None}}
    assert lowering.percent_of_peak(10**8, 1e-3, missing) == {"fma": None, "gemm": None}


def test_timing_row_reports_ms_images_per_second_and_peak():
    peak = {"fma": {"fp32_flops_per_s": {"2": 1e11}}}
    row = lowering.timing_row([0.004, 0.002, 0.003], batch=8, macs=10**8, peak=peak)
    assert row["latency_ms"] == pytest.approx(3.0) and row["rounds_ms"] == pytest.approx([4.0, 2.0, 3.0])
    assert row["images_per_s"] == pytest.approx(8 / 0.003)
    assert row["percent_of_peak"]["fma"] == pytest.approx(100.0 * 2e8 / 0.003 / 1e11)


def test_output_check_relative_to_the_logit_scale():
    reference = np.array([[10.0, -20.0, 5.0]], np.float32)
    ok = lowering.output_check(reference + np.float32(0.1), reference)
    assert ok["max_abs_diff"] == pytest.approx(0.1, rel=1e-4) and ok["logit_scale"] == 20.0
    assert ok["relative_diff"] == pytest.approx(0.005, rel=1e-3) and ok["output_ok"] is True
    assert lowering.output_check(reference + np.float32(0.5), reference)["output_ok"] is False
    with pytest.raises(ValueError):
        lowering.output_check(np.zeros((2, 3), np.float32), reference)  # a batch of the wrong size


def test_table_has_a_row_per_case():
    report = {
        "networks": {
            "mobilenet_v2_32": {"batches": {"1": case(pytorch_eager=2.0, adl={"latency_ms": 0.5, "threads": 1})}},
            "resnet18_32": {"error": "ImportError: no torchvision", "batches": {}},
        }
    }
    lines = lowering.table(report)
    assert lines[0].split()[:3] == ["network", "batch", "pytorch_eager"]
    assert "mobilenet_v2_32" in lines[1] and "0.500" in lines[1] and "2.000" in lines[1]
    assert "no torchvision" in lines[2]


def test_thread_check_records_both_choices_and_kills_the_busy_process(monkeypatch):
    import adl.backends.runtime as runtime

    class Choice:
        def __init__(self, threads):
            self.threads, self.median_s = threads, {1: 0.002, 2: 0.001 if threads == 2 else 0.003}

    seen, started = [], []

    def fake(path, input_shape, max_threads):
        seen.append((path, tuple(input_shape), max_threads))
        return Choice(2 if len(seen) == 1 else 1)

    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(runtime, "fastest_thread_count", fake)
    monkeypatch.setattr(lowering.subprocess, "Popen", popen)
    monkeypatch.setattr(lowering, "BURNER_START_S", 0.0)
    out = lowering.thread_check(Path("lib.so"), (1, 3, 224, 224))
    assert seen == [(Path("lib.so"), (1, 3, 224, 224), 2)] * 2
    assert out["quiet"]["threads"] == 2 and out["loaded"]["threads"] == 1 and out["same"] is False
    assert out["quiet"]["median_ms"] == {"1": pytest.approx(2.0), "2": pytest.approx(1.0)}
    assert len(started) == 1 and started[0].poll() is not None  # killed and reaped


# -- bench/peers.py: which peak kernels the CPU's flags allow ----------------------------------


def test_peak_kernels_by_cpu_flags():
    zen5 = peers.peak_kernels({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"})
    assert (zen5.fp32, zen5.lanes, zen5.int8) == ("avx512", 16, True)
    assert "-mavx512f" in zen5.cflags and "-mavx512vnni" in zen5.cflags and "-DPEAK_VNNI" in zen5.cflags
    skylake = peers.peak_kernels({"avx2", "fma", "avx512f", "avx512bw"})
    assert (skylake.fp32, skylake.lanes, skylake.int8) == ("avx512", 16, False)
    assert "-DPEAK_AVX512" in skylake.cflags and not any("vnni" in f.lower() for f in skylake.cflags)
    zen3 = peers.peak_kernels({"avx", "avx2", "fma"})
    assert (zen3.fp32, zen3.lanes, zen3.int8, zen3.cflags) == ("avx2", 8, False, ("-mavx2", "-mfma"))
    assert peers.peak_kernels({"avx", "avx2"}) is None  # no FMA3
    assert peers.peak_kernels(set()) is None


def fake_compiler(monkeypatch, rate: float = 1e11):
    """peers' compile and run steps replaced: the command lines and kernel runs are recorded."""
    commands, runs = [], []

    def compile_peak(command):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    def run_peak(binary, kernel, threads, iterations):
        runs.append((kernel, threads))
        return rate * threads

    monkeypatch.setattr(peers.shutil, "which", lambda name: "/usr/bin/cc")
    monkeypatch.setattr(peers, "_compile_peak", compile_peak)
    monkeypatch.setattr(peers, "_run_peak", run_peak)
    return commands, runs


def test_peaks_on_an_avx2_cpu_build_the_256_bit_kernel_and_no_int8(monkeypatch):
    commands, runs = fake_compiler(monkeypatch)
    monkeypatch.setattr(peers, "cpu_flags", lambda: {"avx", "avx2", "fma", "sse4_2"})
    out = peers.peaks(threads=2, tries=2)
    assert commands[0][:5] == ["/usr/bin/cc", "-O2", "-pthread", "-mavx2", "-mfma"]
    assert not any("avx512" in part or "VNNI" in part for part in commands[0])
    assert {kernel for kernel, _ in runs} == {"fma"} and len(runs) == 2 * 2
    assert out["fp32_flops_per_s"] == {"1": 1e11, "2": 2e11} and out["int8_macs_per_s"] is None
    assert out["fp32_kernel"].startswith("avx2") and "int8_note" in out and "error" not in out


def test_peaks_on_an_avx512_cpu_without_vnni_measure_fp32(monkeypatch):
    commands, runs = fake_compiler(monkeypatch)
    out = peers.peaks(threads=2, tries=1, flags={"avx2", "fma", "avx512f"})
    assert "-mavx512f" in commands[0] and "-DPEAK_AVX512" in commands[0] and "-DPEAK_VNNI" not in commands[0]
    assert {kernel for kernel, _ in runs} == {"fma"}
    assert out["fp32_flops_per_s"] == {"1": 1e11, "2": 2e11} and out["int8_macs_per_s"] is None


def test_peaks_with_vnni_measure_both(monkeypatch):
    commands, runs = fake_compiler(monkeypatch)
    out = peers.peaks(threads=1, tries=1, flags={"avx2", "fma", "avx512f", "avx512_vnni"})
    assert "-mavx512vnni" in commands[0]
    assert sorted(runs) == [("fma", 1), ("vnni", 1)]
    assert out["int8_macs_per_s"] == {"1": 1e11} and out["int8_kernel"] and "int8_note" not in out


def test_peaks_without_vector_flags_or_compiler(monkeypatch):
    out = peers.peaks(flags={"sse2"})
    assert out["fp32_flops_per_s"] is None and out["int8_macs_per_s"] is None and "error" in out
    monkeypatch.setattr(peers.shutil, "which", lambda name: None)
    out = peers.peaks(flags={"avx2", "fma"})
    assert out["fp32_flops_per_s"] is None and out["error"] == "no C compiler (cc)"


def test_cpu_flags_reads_the_first_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx512f\n")
    assert peers.cpu_flags(cpuinfo) == {"fpu", "avx2", "fma"}
    assert peers.cpu_flags(tmp_path / "missing") == set()


def test_gemm_peak_formula_on_a_small_matrix():
    out = peers.gemm_peak(threads=1, n=64, tries=2)
    assert out["fp32_flops_per_s"]["1"] == pytest.approx(2 * 64**3 / out["seconds"])
    assert "torch.mm" in out["method"]


def test_count_macs_scales_with_the_batch():
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 2, 5))
    one = 2 * 2 * 4 * 3 * 9 + 16 * 5
    assert peers.count_macs(model, (3, 4, 4)) == one
    assert peers.count_macs(model, (3, 4, 4), batch=8) == 8 * one
