"""bench/int8.py's pure helpers: the network table, the command line, the goals computed from a
report, the percentage of peak and the timing loop. No builds, no peers, no torchvision."""

from __future__ import annotations

import int8  # bench/int8.py (tests/bench/conftest.py puts bench/ on the path)
import numpy as np
import pytest
import torch


def test_network_table():
    assert set(int8.NETWORKS) == {"mobilenet_v2_224", "mobilenet_v2_32", "resnet18_224", "fashion"}
    assert int8.NETWORKS["mobilenet_v2_224"] == int8.Network("torchvision", "mobilenet_v2", (3, 224, 224), 1000)
    assert int8.NETWORKS["mobilenet_v2_32"] == int8.Network("torchvision", "mobilenet_v2", (3, 32, 32), 10)
    assert int8.NETWORKS["resnet18_224"] == int8.Network("torchvision", "resnet18", (3, 224, 224), 1000)
    assert int8.NETWORKS["fashion"] == int8.Network("adl", "mobilenet", (1, 28, 28), 10)
    assert set(int8.PEER_NETWORKS) <= set(int8.NETWORKS)
    assert set(int8.PEERS) <= set(int8.INT8_ENGINES) <= set(int8.ENGINES)


def test_measures_name_the_bench_and_existing_paths():
    from pathlib import Path

    root = Path(int8.__file__).resolve().parents[1]
    assert "bench/int8.py" in int8.MEASURES
    assert [p for p in int8.MEASURES if not (root / p).exists()] == []


def test_defaults_and_quick_settings():
    full = int8.parse_args([])
    assert (full.rounds, full.repeats, full.calibration, full.epochs) == (7, 100, 64, 4)
    assert full.networks == list(int8.NETWORKS) and full.engines == list(int8.ENGINES)
    assert str(full.out) == "bench/results/int8.json"
    quick = int8.parse_args(["--quick"])
    assert (quick.rounds, quick.repeats, quick.calibration, quick.epochs) == (3, 20, 16, 1)


def test_explicit_settings_override_quick():
    args = int8.parse_args(
        [
            "--quick",
            "--rounds",
            "1",
            "--repeats",
            "5",
            "--networks",
            "mobilenet_v2_32",
            "fashion",
            "--engines",
            "ort_int8",
            "adl_fp32",
            "--out",
            "/tmp/x.json",
        ]
    )
    assert (args.rounds, args.repeats, args.calibration) == (1, 5, 16)
    assert args.networks == ["mobilenet_v2_32", "fashion"]
    assert args.engines == ["adl_fp32", "ort_int8"]  # in ENGINES' order
    assert str(args.out) == "/tmp/x.json"


@pytest.mark.parametrize("argv", [["--networks", "vgg16"], ["--engines", "tensorrt"], ["--rounds", "0"]])
def test_bad_arguments_are_rejected(argv, capsys):
    with pytest.raises(SystemExit):
        int8.parse_args(argv)


def engines(**latencies):
    """Engines timed at `latency` in each of three rounds."""
    return {"engines": {name: {"latency_s": value, "rounds_s": [value] * 3} for name, value in latencies.items()}}


def test_goals_speedup_and_peers():
    report = {
        "networks": {
            "mobilenet_v2_224": engines(adl_fp32=4e-3, adl_int8=1.6e-3, ort_int8=2e-3, openvino_int8=1e-3),
            "mobilenet_v2_32": engines(adl_fp32=1e-3, adl_int8=0.8e-3),
        }
    }
    out = int8.goals(report)
    speedup = out["mobilenet_v2_224: adl int8 >= 2.0x faster than adl fp32"]
    assert speedup == {"value": pytest.approx(2.5), "target": 2.0, "met": True}
    small = out["mobilenet_v2_32: adl int8 >= 2.0x faster than adl fp32"]
    assert small["value"] == pytest.approx(1.25) and small["met"] is False
    ort = out["mobilenet_v2_224: adl int8 latency <= ONNX Runtime int8"]
    assert ort == {"value": pytest.approx(0.8), "target": 1.0, "met": True}
    openvino = out["mobilenet_v2_224: adl int8 latency <= OpenVINO int8"]
    assert openvino["value"] == pytest.approx(1.6) and openvino["met"] is False
    assert not any(goal.startswith("mobilenet_v2_32: adl int8 latency <=") for goal in out)  # no peer goals there
    assert len(out) == 4


def test_goals_compare_engines_round_by_round():
    """A slow spell that slows every engine in two rounds leaves the ratio alone; the ratio of the
    engines' medians would have paired adl's slow round with ONNX Runtime's fast one."""
    row = engines(adl_fp32=4e-3, adl_int8=1e-3, ort_int8=1e-3, openvino_int8=1e-3)
    row["engines"]["adl_int8"].update(latency_s=1.9e-3, rounds_s=[1.9e-3, 1.9e-3, 1e-3])
    row["engines"]["ort_int8"].update(latency_s=1.0e-3, rounds_s=[2e-3, 2e-3, 1e-3])
    out = int8.goals({"networks": {"mobilenet_v2_224": row}})
    assert out["mobilenet_v2_224: adl int8 latency <= ONNX Runtime int8"]["value"] == pytest.approx(0.95)


def test_goals_with_missing_figures_are_not_met():
    report = {
        "networks": {
            "resnet18_224": {
                "engines": {
                    "adl_fp32": {"latency_s": 1e-2},
                    "adl_int8": {"error": "LoweringError: boom"},
                    "ort_int8": {"latency_s": 1e-3},
                }
            },
            "mobilenet_v2_224": {"error": "ImportError: no torchvision"},
        }
    }
    out = int8.goals(report)
    assert len(out) == 6
    for goal in out.values():
        assert goal["value"] is None and goal["met"] is False


def test_goals_fashion_accuracy_and_bit_identity():
    row = engines(adl_fp32=1e-4, adl_int8=4e-5)
    row["fp32_accuracy"] = 0.90
    row["engines"]["adl_int8"].update(test_accuracy=0.8925, bit_identical_to_integer_model=1.0)
    out = int8.goals({"networks": {"fashion": row}})
    assert out["fashion: adl int8 >= 2.0x faster than adl fp32"]["met"] is True
    identical = out["fashion: library logits bit-identical to the PyTorch integer model"]
    assert identical == {"value": 1.0, "target": 1.0, "met": True}
    drop = out["fashion: adl int8 accuracy within 1 point of fp32"]
    assert drop["value"] == pytest.approx(0.75) and drop["target"] == 1.0 and drop["met"] is True
    row["engines"]["adl_int8"].update(test_accuracy=0.885, bit_identical_to_integer_model=0.9999)
    out = int8.goals({"networks": {"fashion": row}})
    assert out["fashion: adl int8 accuracy within 1 point of fp32"]["met"] is False
    assert out["fashion: library logits bit-identical to the PyTorch integer model"]["met"] is False


def test_percent_of_peak():
    peaks = {"int8_macs_per_s": {"1": 1e11, "2": 2e11}, "fp32_flops_per_s": {"1": 1e11, "2": 2e11}}
    assert int8.percent_of_peak("adl_int8", 10**8, 1e-3, peaks) == pytest.approx(50.0)  # 1e11 MAC/s of 2e11
    assert int8.percent_of_peak("ort_fp32", 10**8, 1e-3, peaks) == pytest.approx(100.0)  # 2e11 FLOP/s
    assert int8.percent_of_peak("adl_int8", 10**8, None, peaks) is None
    assert int8.percent_of_peak("adl_int8", 10**8, 1e-3, {"int8_macs_per_s": None, "error": "no cc"}) is None


def test_count_macs_of_conv_and_linear():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, padding=1),
        torch.nn.Conv2d(8, 8, 3, groups=8),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 10),
    )
    expected = 6 * 6 * 8 * 4 * 9 + 4 * 4 * 8 * 1 * 9 + 128 * 10
    assert int8.count_macs(model, (4, 6, 6)) == expected


def test_synthetic_images_are_seeded_and_normalised():
    a, b = int8.synthetic_images(4, (3, 8, 8)), int8.synthetic_images(4, (3, 8, 8))
    assert a.shape == (4, 3, 8, 8) and a.dtype == np.float32 and np.array_equal(a, b)
    low = (0 - np.array(int8.IMAGENET_MEAN)) / np.array(int8.IMAGENET_STD)
    high = (1 - np.array(int8.IMAGENET_MEAN)) / np.array(int8.IMAGENET_STD)
    assert np.all(a.min(axis=(0, 2, 3)) >= low - 1e-6) and np.all(a.max(axis=(0, 2, 3)) <= high + 1e-6)


def test_time_interleaved_keeps_a_median_per_round_and_records_errors():
    calls = []

    def good(x):
        calls.append("good")
        return x

    def bad(x):
        raise RuntimeError("engine broke\nmore detail")

    out = int8.time_interleaved({"good": good, "bad": bad}, np.zeros(1), rounds=3, repeats=4, warmup=1, pause_s=0.0)
    assert len(out["good"]) == 3 and all(t >= 0 for t in out["good"])
    assert calls.count("good") == 3 * (4 + 1)
    assert out["bad"] == "RuntimeError: engine broke"


def test_calibration_reader_gives_every_image_once_then_none():
    images = np.arange(3 * 2, dtype=np.float32).reshape(3, 1, 2)
    reader = int8.CalibrationReader(images)
    got = [reader.get_next() for _ in range(4)]
    assert [g["x"].shape for g in got[:3]] == [(1, 1, 2)] * 3 and got[3] is None
    reader.rewind()
    assert np.array_equal(reader.get_next()["x"], images[:1])
