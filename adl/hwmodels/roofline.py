"""`roofline`: an analytic CPU model, per layer the slower of compute and memory plus a fixed cost.

    t_compute = FLOPs / peak                  peak = gflops * 1e9 FLOP/s
    t_memory  = bytes / bandwidth             bytes = weights at weight_bits + activations
                                              (input(s) and output) at act_bits; bandwidth * 1e9 B/s
    latency   = max(t_compute, t_memory) + overhead

(Williams, Waterman & Patterson, "Roofline", CACM 2009.) FLOPs are `LayerDesc.flops`: 2 x MACs
for conv/linear, one per output element for pooling and additions. Compute does not speed up
with fewer bits (an fp32 CPU model); memory traffic does. Energy is not modelled (None).

Options left unset come from `adl hw calibrate` when the target was calibrated (stored per
target, see :mod:`adl.hwmodels.calibration`); otherwise from built-in defaults that describe
this project's build machine and are *uncalibrated*: the peak is
2.445 GHz x 32 FP32 FLOP/cycle (two 256-bit FMA pipes of an AMD Zen 3 core) = 78.24 GFLOP/s
per core, times the target's `cores`; 20 GB/s is a typical two-core DRAM stream bandwidth;
10 us per layer is what one measured compile of examples/digits_fixed.adl works out to
(72 us for 7 layers, nearly all of it fixed cost: dispatch, threading, the un-described
BN/ReLU work). Set them in the spec, or calibrate them on the target.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from adl.hwmodels.base import Cost, CostModel, LayerCost, activation_bytes
from adl.hwmodels.calibration import load_calibration
from adl.ir.layers import LayerDesc
from adl.ir.options import Option
from adl.ir.spec import TargetSpec

GFLOPS_PER_CORE = 2.445 * 32  # GHz x FP32 FLOP/cycle of this machine's cores
DEFAULT_BANDWIDTH = 20.0  # GB/s
DEFAULT_OVERHEAD = 10e-6  # s per layer


class RooflineModel(CostModel):
    name: ClassVar[str] = "roofline"
    summary: ClassVar[str] = "per layer max(FLOPs / peak, bytes / bandwidth) + overhead (analytic, CPU)"
    options: ClassVar[tuple[Option, ...]] = (
        Option(
            "gflops",
            "float",
            None,
            f"peak GFLOP/s (default: calibrated, else {GFLOPS_PER_CORE:.2f} x the target's cores)",
            low=1e-6,
        ),
        Option(
            "bandwidth",
            "float",
            None,
            f"memory bandwidth in GB/s, 1e9 B/s (default: calibrated, else {DEFAULT_BANDWIDTH:g})",
            low=1e-6,
        ),
        Option(
            "overhead",
            "time",
            None,
            f"fixed cost per layer: dispatch, synchronisation (default: calibrated, "
            f"else {DEFAULT_OVERHEAD * 1e6:g} us)",
            low=0.0,
        ),
    )

    def resolved(self, target: TargetSpec) -> dict[str, Any]:
        """gflops, bandwidth, overhead as used for `target` (spec, else calibration, else
        built-in) and where each came from."""
        calibration = load_calibration(target) or {}
        builtin = {
            "gflops": GFLOPS_PER_CORE * target.cores,
            "bandwidth": DEFAULT_BANDWIDTH,
            "overhead": DEFAULT_OVERHEAD,
        }
        values, sources = {}, {}
        for name, default in builtin.items():
            for source, value in (
                ("spec", self.config[name]),
                ("calibrated", calibration.get(name)),
                ("uncalibrated default", default),
            ):
                if value is not None:
                    values[name], sources[name] = float(value), source
                    break
        return {**values, "sources": sources}

    def peak_flops(self, target: TargetSpec) -> float:
        return self.resolved(target)["gflops"] * 1e9

    def parameters(self, target: TargetSpec) -> dict[str, Any]:
        return self.resolved(target)

    def estimate(self, layers: Sequence[LayerDesc], target: TargetSpec) -> Cost:
        params = self.resolved(target)  # read the calibration once per network
        return Cost.from_layers(str(self), [self._layer(layer, params) for layer in layers])

    def estimate_layer(self, layer: LayerDesc, target: TargetSpec) -> LayerCost:
        return self._layer(layer, self.resolved(target))

    def _layer(self, layer: LayerDesc, params: dict[str, Any]) -> LayerCost:
        compute_s = layer.flops / (params["gflops"] * 1e9)
        memory_s = (layer.weight_bytes + activation_bytes(layer)) / (params["bandwidth"] * 1e9)
        latency = max(compute_s, memory_s) + params["overhead"]
        return self.layer_cost(
            layer,
            latency,
            None,
            "compute" if compute_s >= memory_s else "memory",
            compute_s=compute_s,
            memory_s=memory_s,
        )
