"""`measured`: a latency lookup table measured on the target through TVM (ProxylessNAS's idea).

Each distinct kernel configuration (a conv/linear layer with its activation and any residual
addition fused into it, a pooling or addition layer: see
:mod:`adl.backends.tvm.layer_timing`) is compiled alone with the same lowering as the final
library and timed on the target (this machine, or a device behind TVM RPC). A network's
latency is

    latency = sum of its kernels' table entries + overhead

where `overhead` is the per-network cost the kernels do not see (the VM's dispatch of each
kernel, the input's layout transform and normalisation, the output copy). It is calibrated
on whole networks compiled and timed: the median of (network latency - sum of its entries),
see :func:`calibrate` (``adl hw lut`` does it on the spec's model). Until a table has a
calibration, the overhead is the cost of a VM call of a one-kernel library (measured and
stored with the table); ``measured(overhead = 20 us)`` fixes it instead.

Tables are JSON files in the cache folder (``$ADL_LUT_DIR``, default ``~/.cache/adl/lut``),
one per (target, where it runs, TVM version, adl version): a second pricing of the same
layers measures nothing. A file that cannot be read back is moved aside with a warning and
the table is rebuilt; writes are atomic and merged under a lock, so concurrent compiles
share a table.

This module imports no TVM: the timing backend is loaded by name (`TIMER`) on first need,
as the pass registry loads `lower`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

from adl.hwmodels.base import Cost, CostModel, LayerCost
from adl.hwmodels.calibration import cache_root, identity_digest, target_identity
from adl.ir.files import atomic_write_text
from adl.ir.layers import LayerDesc, group_layers
from adl.ir.options import Option
from adl.ir.spec import TargetSpec

SCHEMA = 1
TIMER = "adl.backends.tvm.layer_timing"  # LayerTimer
REMOTE = "adl.backends.tvm.remote"  # local_session, rpc_session


def default_cache_dir() -> Path:
    """``$ADL_LUT_DIR``, else the ``lut`` folder of adl's cache (``~/.cache/adl/lut``)."""
    return Path(os.environ.get("ADL_LUT_DIR") or cache_root() / "lut")


@dataclass(frozen=True)
class Overhead:
    """Per-network latency outside the kernels (VM dispatch, the input's layout transform, ...)."""

    seconds: float
    source: str  # "calibrated on N networks ..." | "empty call" | "spec"


@dataclass
class LatencyTable:
    """Seconds per kernel-group key, for one target identity, kept in one JSON file."""

    path: Path
    identity: dict[str, Any]
    entries: dict[str, float] = field(default_factory=dict)
    overhead: Overhead | None = None

    @classmethod
    def open(cls, folder: Path, target: TargetSpec) -> "LatencyTable":
        table = cls(Path(folder) / f"{target.kind}-{identity_digest(target)}.json", target_identity(target))
        table.reload()
        return table

    def reload(self) -> None:
        """Read the file (a missing one is an empty table; a corrupt one is moved aside with a warning)."""
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or data.get("schema") != SCHEMA or data.get("identity") != self.identity:
                raise ValueError("not a latency table of this target (schema or identity differs)")
            entries = {str(k): float(v) for k, v in data["entries"].items()}
            if any(not math.isfinite(v) or v < 0 for v in entries.values()):
                raise ValueError("an entry is not a non-negative number")
            overhead = data.get("overhead")
            self.overhead = Overhead(float(overhead["seconds"]), str(overhead["source"])) if overhead else self.overhead
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            aside = self.path.with_name(self.path.name + ".corrupt")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            warnings.warn(
                f"adl: latency table {self.path} could not be read ({type(err).__name__}: {err}); "
                f"moved it to {aside.name} and measuring again",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        self.entries.update(entries)

    def save(self) -> None:
        """Merge with what other processes wrote meanwhile, then write atomically (under a lock)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path.with_name(self.path.name + ".lock")):
            mine, overhead = dict(self.entries), self.overhead
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.reload()
            self.entries.update(mine)
            self.overhead = overhead or self.overhead
            data = {
                "schema": SCHEMA,
                "identity": self.identity,
                "entries": dict(sorted(self.entries.items())),
                "overhead": None if self.overhead is None else vars(self.overhead),
            }
            atomic_write_text(self.path, json.dumps(data, indent=1))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class MeasuredModel(CostModel):
    name: ClassVar[str] = "measured"
    summary: ClassVar[str] = (
        "per-kernel latency table measured on the target through TVM (cached on disk) "
        "+ a calibrated per-network overhead"
    )
    targets: ClassVar[str] = "llvm, here or on a device through TVM RPC (rpc = ...)"
    options: ClassVar[tuple[Option, ...]] = (
        Option("repeats", "int", 50, "timed runs per kernel (the median is kept)", low=3),
        Option(
            "overhead", "time", None, "per-network overhead (default: calibrated and stored with the table)", low=0.0
        ),
        Option("cache", "path", None, "folder of the tables (default: $ADL_LUT_DIR or ~/.cache/adl/lut)"),
        Option("jobs", "int", None, "processes compiling layers (default: 2, or 1 on a one-core machine)", low=1),
    )

    def __init__(self, **explicit: Any) -> None:
        super().__init__(**explicit)
        self.timer_factory: Callable[[TargetSpec], Any] | None = None  # tests and embedders may inject one
        self._tables: dict[str, LatencyTable] = {}

    def supports(self, target: TargetSpec) -> bool:
        # something must run the kernels: this machine, or a device over RPC for a cross target
        return target.kind == "llvm" and (
            target.triple is None or target.remote or target.triple.split("-")[0] == platform.machine()
        )

    def table(self, target: TargetSpec) -> LatencyTable:
        folder = Path(self.config["cache"]) if self.config["cache"] else default_cache_dir()
        key = json.dumps([str(folder), target_identity(target)], sort_keys=True)
        if key not in self._tables:
            self._tables[key] = LatencyTable.open(folder, target)
        return self._tables[key]

    def _timer(self, target: TargetSpec) -> Any:
        if self.timer_factory is not None:
            return self.timer_factory(target)
        timing, remote = importlib.import_module(TIMER), importlib.import_module(REMOTE)
        factory = (lambda: remote.rpc_session(target.rpc, target.key)) if target.remote else None
        return timing.LayerTimer(
            target.tvm_target(),
            threads=target.cores,
            repeats=self.config["repeats"],
            jobs=self.config["jobs"],
            session_factory=factory,
            tuned=target.tune.name != "none",
        )

    def measure(self, layers: Sequence[LayerDesc], target: TargetSpec) -> int:
        """Put every kernel of `layers` not yet in the table into it; returns how many were measured."""
        return self.measure_networks([layers], target)

    def measure_networks(self, networks: Sequence[Sequence[LayerDesc]], target: TargetSpec) -> int:
        """`measure` for several networks at once (one round of compiling for all of them)."""
        table = self.table(target)
        missing = {g.key: g for layers in networks for g in group_layers(layers) if g.key not in table.entries}
        if missing:
            table.entries.update(self._timer(target).measure(list(missing.values()), self.progress))
            table.save()
        if table.overhead is None and self.config["overhead"] is None:
            table.overhead = Overhead(self._timer(target).empty_call_overhead(), "empty call")
            table.save()
        return len(missing)

    def overhead(self, target: TargetSpec) -> Overhead:
        if self.config["overhead"] is not None:
            return Overhead(self.config["overhead"], "spec")
        table = self.table(target)
        if table.overhead is None:
            self.measure([], target)
        assert table.overhead is not None
        return table.overhead

    def parameters(self, target: TargetSpec) -> dict[str, Any]:
        table = self.table(target)
        overhead = self.overhead(target)
        return {
            **self.config,
            "table": str(table.path),
            "entries": len(table.entries),
            "overhead_s": overhead.seconds,
            "overhead_source": overhead.source,
        }

    def estimate(self, layers: Sequence[LayerDesc], target: TargetSpec) -> Cost:
        """Each kernel's entry (measured now if new) on its first layer; the overhead is its own row."""
        self.measure(layers, target)
        table = self.table(target)
        groups = group_layers(layers)
        latency = {}
        for group in groups:
            latency[group.layer.name] = table.entries[group.key]
            if group.residual is not None:
                latency[group.residual.name] = 0.0  # fused into the layer before it
        costs = [self.layer_cost(layer, latency[layer.name], None, "measured") for layer in layers]
        overhead = self.overhead(target)
        if layers:
            costs.append(LayerCost("(network overhead)", "overhead", overhead.seconds, None, 0, 0, "measured"))
        return Cost.from_layers(str(self), costs)

    def estimate_layer(self, layer: LayerDesc, target: TargetSpec) -> LayerCost:
        """One layer alone (no fusion with a neighbour, no network overhead): its table entry."""
        group = group_layers([layer])[0]
        self.measure([layer], target)
        return self.layer_cost(layer, self.table(target).entries[group.key], None, "measured")


def calibrate(
    model: MeasuredModel, target: TargetSpec, networks: Sequence[tuple[Sequence[LayerDesc], float]]
) -> Overhead:
    """Calibrate the table's per-network overhead on whole networks: `networks` pairs each
    network's layers with its measured latency; the overhead is the median of (latency - sum of
    its kernels' entries), stored with the table. (A per-kernel term was tried: fitted on a
    handful of networks it is ill-conditioned, and the residuals measured here do not grow
    with the kernel count.)"""
    import statistics

    if not networks:
        raise ValueError("calibrate needs at least one measured network")
    model.measure_networks([layers for layers, _ in networks], target)
    table = model.table(target)
    residuals = [latency_s - sum(table.entries[g.key] for g in group_layers(layers)) for layers, latency_s in networks]
    overhead = Overhead(
        float(statistics.median(residuals)), f"calibrated on {len(networks)} networks at {time.strftime('%Y-%m-%d')}"
    )
    table.overhead = overhead
    table.save()
    return overhead
