"""The `measured` cost model: kernel grouping, table arithmetic, the on-disk cache and its
repair, overhead calibration. A fake timer stands in for TVM here (tests/backends has the
real one); it prices a kernel at 1 us per 1000 MACs + 1 us, and counts what it measured."""

from __future__ import annotations

import json
import warnings

import pytest

from adl.hwmodels.measured import MeasuredModel, calibrate
from adl.ir.layers import KernelGroup, LayerDesc, group_layers
from adl.ir.spec import TargetSpec

TARGET = TargetSpec(name="host", cores=2)

STEM = LayerDesc("stem", "conv2d", (1, 3, 8, 8), (1, 8, 8, 8), (3, 3), activation="relu6")
DW = LayerDesc("dw", "dwconv2d", (1, 8, 8, 8), (1, 8, 8, 8), (3, 3), groups=8, activation="relu6")
PROJECT = LayerDesc("project", "conv2d", (1, 8, 8, 8), (1, 8, 8, 8))
ADD = LayerDesc("add", "add", (1, 8, 8, 8), (1, 8, 8, 8))
POOL = LayerDesc("pool", "pool", (1, 8, 8, 8), (1, 8, 1, 1), (8, 8), (8, 8))
FC = LayerDesc("fc", "linear", (1, 8), (1, 10), has_bias=True)
NETWORK = [STEM, DW, PROJECT, ADD, POOL, FC]


def fake_seconds(group: KernelGroup) -> float:
    return (group.layer.macs / 1000 + 1) * 1e-6


class FakeTimer:
    def __init__(self) -> None:
        self.measured: list[str] = []

    def measure(self, groups, progress=None):
        self.measured += [g.key for g in groups]
        return {g.key: fake_seconds(g) for g in groups}

    def empty_call_overhead(self):
        return 5e-6


def make_model(tmp_path, timer=None, **options) -> tuple[MeasuredModel, FakeTimer]:
    timer = timer or FakeTimer()
    model = MeasuredModel(cache=str(tmp_path), **options)
    model.timer_factory = lambda target: timer
    return model, timer


def test_an_add_after_a_conv_of_its_shape_fuses_into_the_conv_kernel():
    groups = group_layers(NETWORK)
    assert [g.names for g in groups] == [("stem",), ("dw",), ("project", "add"), ("pool",), ("fc",)]
    # an add that does not follow a conv of its shape stays a kernel of its own
    assert [g.names for g in group_layers([POOL, ADD])] == [("pool",), ("add",)]


def test_the_table_key_is_the_configuration_not_the_name():
    renamed = LayerDesc("other", "dwconv2d", (1, 8, 8, 8), (1, 8, 8, 8), (3, 3), groups=8, activation="relu6")
    assert KernelGroup(DW).key == KernelGroup(renamed).key
    assert (
        KernelGroup(DW).key
        != KernelGroup(
            LayerDesc("dw", "dwconv2d", (1, 8, 8, 8), (1, 8, 8, 8), (5, 5), groups=8, activation="relu6")
        ).key
    )
    assert KernelGroup(PROJECT).key != KernelGroup(PROJECT, ADD).key


def test_network_latency_is_the_sum_of_its_kernels_plus_the_overhead(tmp_path):
    model, _ = make_model(tmp_path)
    cost = model.estimate(NETWORK, TARGET)
    kernels = group_layers(NETWORK)
    expected = sum(fake_seconds(g) for g in kernels) + 5e-6
    assert cost.latency_s == pytest.approx(expected)
    by_name = {c.name: c for c in cost.layers}
    assert by_name["add"].latency_s == 0.0  # fused into `project`
    assert by_name["project"].latency_s == pytest.approx(fake_seconds(KernelGroup(PROJECT, ADD)))
    assert by_name["(network overhead)"].latency_s == pytest.approx(5e-6)
    assert cost.energy_j is None
    assert cost.memory_bytes > 0


def test_a_second_pricing_measures_nothing_new_even_in_a_new_process(tmp_path):
    model, timer = make_model(tmp_path)
    model.estimate(NETWORK, TARGET)
    assert len(timer.measured) == len(group_layers(NETWORK))
    model.estimate(NETWORK, TARGET)
    again, timer2 = make_model(tmp_path)  # a fresh model reads the table from disk
    assert again.estimate(NETWORK, TARGET).latency_s == pytest.approx(model.estimate(NETWORK, TARGET).latency_s)
    assert len(timer.measured) == len(group_layers(NETWORK)) and timer2.measured == []


def test_tables_are_per_target(tmp_path):
    model, timer = make_model(tmp_path)
    model.estimate(NETWORK, TARGET)
    model.estimate(NETWORK, TargetSpec(name="host", cores=1))
    assert len(timer.measured) == 2 * len(group_layers(NETWORK))
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_tables_are_per_version_of_the_lowering_code(tmp_path, monkeypatch):
    """The default schedules decide what a measured kernel costs, and adl's version does not
    change with them: a table measured with other schedules is not reused."""
    from adl.hwmodels import calibration

    code = tmp_path / "code"
    code.mkdir()
    for name in calibration.LOWERING_FILES:
        (code / name).write_text(f"# {name}\n")
    before = calibration.lowering_digest(code)
    (code / "default_schedules.py").write_text("# other schedules\n")
    calibration.lowering_digest.cache_clear()
    assert calibration.lowering_digest(code) != before
    assert calibration.target_identity(TARGET)["lowering"] == calibration.lowering_digest()

    tables = tmp_path / "tables"
    model, timer = make_model(tables)
    model.estimate(NETWORK, TARGET)
    monkeypatch.setattr(calibration, "lowering_digest", lambda: "other-schedules")
    again, timer2 = make_model(tables)
    again.estimate(NETWORK, TARGET)
    assert len(timer2.measured) == len(group_layers(NETWORK))  # measured anew, into its own table
    assert len(list(tables.glob("*.json"))) == 2


@pytest.mark.parametrize(
    "damage", ["{ not json", json.dumps({"schema": 1}), json.dumps([1, 2]), "entries-missing", "negative"]
)
def test_a_corrupt_table_is_moved_aside_rebuilt_and_warned_about(tmp_path, damage):
    model, _ = make_model(tmp_path)
    expected = model.estimate(NETWORK, TARGET).latency_s
    path = model.table(TARGET).path
    data = json.loads(path.read_text())
    if damage == "entries-missing":
        del data["entries"]
        damage = json.dumps(data)
    elif damage == "negative":
        data["entries"][next(iter(data["entries"]))] = -1.0
        damage = json.dumps(data)
    path.write_text(damage)

    fresh, timer = make_model(tmp_path)
    with pytest.warns(RuntimeWarning, match="could not be read.*measuring again"):
        cost = fresh.estimate(NETWORK, TARGET)
    assert cost.latency_s == pytest.approx(expected)
    assert len(timer.measured) == len(group_layers(NETWORK))  # rebuilt
    assert path.with_name(path.name + ".corrupt").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_model(tmp_path)[0].estimate(NETWORK, TARGET)  # the rebuilt table reads back cleanly


def test_the_specs_overhead_replaces_the_calibrated_one(tmp_path):
    model, _ = make_model(tmp_path, overhead=1e-3)
    cost = model.estimate(NETWORK, TARGET)
    assert cost.latency_s == pytest.approx(sum(fake_seconds(g) for g in group_layers(NETWORK)) + 1e-3)
    assert model.parameters(TARGET)["overhead_source"] == "spec"


def test_calibration_takes_the_median_residual_of_whole_networks(tmp_path):
    model, _ = make_model(tmp_path)
    networks = []
    for n, extra in ((2, 20e-6), (4, 22e-6), (6, 90e-6)):  # one outlier (a noisy timing)
        layers = NETWORK[:n]
        networks.append((layers, sum(fake_seconds(g) for g in group_layers(layers)) + extra))
    overhead = calibrate(model, TARGET, networks)
    assert overhead.seconds == pytest.approx(22e-6)
    assert overhead.source.startswith("calibrated on 3 networks")
    # stored with the table: a fresh model uses it
    fresh, _ = make_model(tmp_path)
    assert fresh.overhead(TARGET) == overhead
    assert fresh.estimate(NETWORK[:4], TARGET).latency_s == pytest.approx(networks[1][1])
    assert fresh.parameters(TARGET)["overhead_source"].startswith("calibrated")


def test_calibration_needs_a_network(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        calibrate(make_model(tmp_path)[0], TARGET, [])


def test_measured_supports_llvm_here_or_over_rpc_but_not_an_unreachable_cross_target():
    model = MeasuredModel()
    assert model.supports(TARGET)
    assert not model.supports(TargetSpec(name="board", triple="aarch64-linux-gnu"))
    assert model.supports(TargetSpec(name="board", triple="aarch64-linux-gnu", rpc="10.0.0.5:9190", key="rk"))
