"""The cost-model interface: `CostModel.estimate(layers, target) -> Cost`.

A cost model prices a list of `LayerDesc` (from a torch.fx graph, or built directly for a
NAS candidate op) on a target. `Cost` keeps one `LayerCost` per layer and the totals:

    latency_s     = sum of the layers' latencies (layers run one after another, batch as given)
    energy_j      = sum of the layers' energies, or None when the model does not know energy
    memory_bytes  = weight_bytes + peak_activation_bytes
    weight_bytes  = sum over layers of ceil(params * weight_bits / 8)
    peak_activation_bytes = max over layers of the layer's activation bytes, i.e. its input(s)
                    and its output at `act_bits` (each layer frees its input when it finishes;
                    tensors kept alive across layers by a skip connection are not counted)

Memory is the same for every model (it depends on the layers, not on the hardware), so a
pass can compare models' latency and energy on equal terms.

A model subclasses `CostModel`, declares its `options` (the same `Option` schema as passes,
so `target { cost = name(k = v) }` is checked with carets by `adl check`) and implements
`estimate_layer`; a model that prices the network as a whole (e.g. a measured lookup table
with fused layers) overrides `estimate` instead.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from adl.ir.layers import LayerDesc
from adl.ir.options import Option, configure, format_option
from adl.ir.progress import Progress, SilentProgress
from adl.ir.spec import CallValue, TargetSpec


def tensor_bytes(shape: Sequence[int], bits: int) -> int:
    """Bytes of a tensor of `shape` (batch included) stored at `bits` per element, rounded up."""
    return (math.prod(shape) * bits + 7) // 8


def activation_bytes(layer: LayerDesc) -> int:
    """Bytes of the activations a layer reads and writes at its `act_bits` (an `add` reads two inputs)."""
    inputs = 2 if layer.op == "add" else 1
    return inputs * tensor_bytes(layer.input_shape, layer.act_bits) + tensor_bytes(layer.output_shape, layer.act_bits)


@dataclass(frozen=True)
class LayerCost:
    """What one layer costs.

    `bound` names what limits the layer: ``compute``, ``memory``, or whatever the model
    reports (a measured model says ``measured``); `details` holds model-specific numbers
    (compute and memory time, cycles, ...) for reports.
    """

    name: str
    op: str
    latency_s: float
    energy_j: float | None
    weight_bytes: int
    activation_bytes: int
    bound: str = ""
    details: tuple[tuple[str, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "latency_s": self.latency_s,
            "energy_j": self.energy_j,
            "weight_bytes": self.weight_bytes,
            "activation_bytes": self.activation_bytes,
            "bound": self.bound,
            **dict(self.details),
        }


@dataclass(frozen=True)
class Cost:
    """Per-layer costs and their totals (see the module docstring for how totals are formed)."""

    model: str  # the model that priced it, with its options, e.g. "roofline(gflops=150.0)"
    layers: tuple[LayerCost, ...]
    latency_s: float
    energy_j: float | None
    memory_bytes: int
    weight_bytes: int
    peak_activation_bytes: int

    @classmethod
    def from_layers(cls, model: str, layers: Sequence[LayerCost]) -> "Cost":
        layers = tuple(layers)
        energies = [c.energy_j for c in layers]
        weights = sum(c.weight_bytes for c in layers)
        peak = max((c.activation_bytes for c in layers), default=0)
        return cls(
            model=model,
            layers=layers,
            latency_s=sum(c.latency_s for c in layers),
            energy_j=None if any(e is None for e in energies) else float(sum(energies)),
            memory_bytes=weights + peak,
            weight_bytes=weights,
            peak_activation_bytes=peak,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "latency_s": self.latency_s,
            "energy_j": self.energy_j,
            "memory_bytes": self.memory_bytes,
            "weight_bytes": self.weight_bytes,
            "peak_activation_bytes": self.peak_activation_bytes,
            "per_layer": [c.as_dict() for c in self.layers],
        }


class CostModel(abc.ABC):
    """Base class of every cost model. Subclasses set the class attributes and implement
    `estimate_layer` (or override `estimate`).

    Instances are configured like passes: ``RooflineModel(gflops=150.0)``; unknown or missing
    options raise `TypeError`, and `config` holds every option with defaults filled in. A
    model whose options are inconsistent in a way the schema cannot say raises `ValueError`
    from `__init__` (``adl check`` shows it at the `cost` setting).
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    targets: ClassVar[str] = "any target"  # in words, for `adl hw list`; `supports` decides
    # where a model that measures shows its progress (the driver sets the compile's)
    progress: Progress = SilentProgress()

    def __init__(self, **explicit: Any) -> None:
        self.config: dict[str, Any] = configure(f"cost model '{self.name}'", self.options, explicit)
        # options that differ from their defaults: what `str(model)` prints
        self.explicit: dict[str, Any] = {
            o.name: explicit[o.name] for o in self.options if o.name in explicit and explicit[o.name] != o.default
        }

    @classmethod
    def from_call(cls, call: CallValue) -> "CostModel":
        """The model a spec's ``cost = name(k = v)`` describes (arguments already type-checked)."""
        return cls(**call.as_dict())

    def parameters(self, target: TargetSpec) -> dict[str, Any]:
        """The numbers the model prices `target` with, defaults resolved (recorded in the manifest)."""
        return dict(self.config)

    def supports(self, target: TargetSpec) -> bool:
        """Whether this model can price `target`; ``adl check`` rejects the spec otherwise."""
        return True

    def estimate(self, layers: Sequence[LayerDesc], target: TargetSpec) -> Cost:
        """Price every layer on `target`; the default sums `estimate_layer` over the layers."""
        return Cost.from_layers(str(self), [self.estimate_layer(layer, target) for layer in layers])

    @abc.abstractmethod
    def estimate_layer(self, layer: LayerDesc, target: TargetSpec) -> LayerCost:
        """What one layer costs on `target`."""

    def layer_cost(
        self, layer: LayerDesc, latency_s: float, energy_j: float | None, bound: str = "", **details: float
    ) -> LayerCost:
        """A `LayerCost` for `layer` with its memory filled in (a helper for `estimate_layer`)."""
        return LayerCost(
            layer.name,
            layer.op,
            float(latency_s),
            None if energy_j is None else float(energy_j),
            layer.weight_bytes,
            activation_bytes(layer),
            bound,
            tuple((k, float(v)) for k, v in details.items()),
        )

    def __str__(self) -> str:
        """The model as a spec writes it, options that differ from their defaults only:
        ``roofline(gflops=150.0)``."""
        schema = {o.name: o for o in self.options}
        inner = ",".join(f"{k}={format_option(schema[k], v)}" for k, v in self.explicit.items())
        return f"{self.name}({inner})" if inner else self.name

    def __repr__(self) -> str:
        return f"<CostModel {self}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CostModel) and type(self) is type(other) and self.config == other.config

    def __hash__(self) -> int:
        return hash(str(self))
