"""The typed IR of a spec: frozen dataclasses with every unit normalised.

Times are seconds, sizes bytes, ratios fractions in [0, 1], FLOPs plain counts.
Each node keeps the span of the source it came from, so later stages (a pass that
finds a budget infeasible, a data loader that finds a file missing) can still
point at the user's text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from adl.dsl.ast import Span


@dataclass(frozen=True)
class CallValue:
    """A typed call-valued option, e.g. ``optimizer = adam(lr = 0.01)``."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.args).get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.args)


@dataclass(frozen=True)
class TaskSpec:
    kind: str  # only "classify" for now
    classes: int
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class DataSpec:
    source: str  # "digits" | "npz" | "cifar10" | "idx" | "fashion_mnist" | "images"
    path: str | None  # absolute; relative paths are resolved against the spec's folder
    split: float  # fraction of samples used for training; the rest is the test split
    seed: int
    validation: float = 0.0  # fraction of the training split held out (`Dataset.x_val`)
    image_size: tuple[int, int] | None = None  # resize images to (H, W); `images` only
    grayscale: bool = False  # `images` only
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ModelSpec:
    family: str  # a key of adl.models.families.MODEL_FAMILIES: "mlp", "cnn", ..., "onnx", "torchvision"
    options: tuple[tuple[str, Any], ...] = ()
    span: Span | None = field(default=None, compare=False)
    # where each setting's value is written, so an error about a value (a damaged file, a
    # mismatched shape) points at it; not part of what the spec means
    value_spans: tuple[tuple[str, Span], ...] = field(default=(), compare=False)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def value_span(self, key: str) -> Span | None:
        """The span of setting `key`'s value, or the block's span when the setting is not written."""
        return dict(self.value_spans).get(key, self.span)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity): the default of a target's `cores`,
    and the most threads a library is run with here."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class TargetSpec:
    name: str
    kind: str = "llvm"
    cores: int = field(default_factory=available_cores)
    mcpu: str | None = None
    triple: str | None = None  # LLVM target triple for cross-compilation, e.g. "aarch64-linux-gnu"
    tune: CallValue = CallValue("none")  # none | metaschedule(trials = N, minutes = M)
    # the cost model that prices it (a name in adl.hwmodels' registry, its options checked);
    # the checker fills in the model's defaults
    cost: CallValue = CallValue("roofline")
    # TVM RPC: where libraries built here are run and timed ("host:port" of a tracker when
    # `key` is given, of an RPC server otherwise); None = on this machine
    rpc: str | None = None
    key: str | None = None
    span: Span | None = field(default=None, compare=False)

    @property
    def remote(self) -> bool:
        return self.rpc is not None

    def tvm_target(self) -> dict[str, Any]:
        """The dict TVM 0.27 builds a ``tvm.target.Target`` from (the string form raises)."""
        target: dict[str, Any] = {"kind": self.kind, "num-cores": self.cores}
        if self.mcpu:
            target["mcpu"] = self.mcpu
        if self.triple:
            target["mtriple"] = self.triple
        return target


# metric -> the quantity its value is measured in
BUDGET_QUANTITIES: Mapping[str, str] = {
    "latency": "time",
    "size": "bytes",
    "accuracy": "fraction",
    "flops": "flops",
    "params": "count",
}


@dataclass(frozen=True)
class Budget:
    metric: str  # a key of BUDGET_QUANTITIES
    op: str  # "<=", "<", ">=", ">"
    value: float  # normalised: seconds, bytes, fraction, FLOPs, count
    text: str  # as the user wrote it, e.g. "0.2 ms"
    unit: str | None = None  # the unit it was written in, for reporting measurements alike
    span: Span | None = field(default=None, compare=False)

    @property
    def is_upper(self) -> bool:
        return self.op in ("<=", "<")

    def holds(self, measured: float) -> bool:
        return {
            "<=": measured <= self.value,
            "<": measured < self.value,
            ">=": measured >= self.value,
            ">": measured > self.value,
        }[self.op]

    def margin(self, measured: float) -> float:
        """Signed distance to the bound in the metric's unit: >= 0 holds, < 0 misses."""
        return self.value - measured if self.is_upper else measured - self.value


@dataclass(frozen=True)
class StageSpec:
    pass_name: str
    options: tuple[tuple[str, Any], ...] = ()
    span: Span | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class Spec:
    name: str
    task: TaskSpec
    data: DataSpec
    target: TargetSpec
    budgets: tuple[Budget, ...]
    pipeline: tuple[StageSpec, ...]
    model: ModelSpec | None = None
    filename: str = "<spec>"
    source: str = field(default="", compare=False, repr=False)

    def budget(self, metric: str) -> tuple[Budget, ...]:
        return tuple(b for b in self.budgets if b.metric == metric)
