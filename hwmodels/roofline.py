"""`roofline`: an analytic CPU model, per layer the slower of compute and memory plus a fixed cost.

    t_compute = FLOPs / peak                  peak = gflops * 1e9 FLOP/s
    t_memory  = bytes / bandwidth             bytes = weights at weight_bits + activations
                                              (input(s) and output) at act_bits; bandwidth * 1e9 B/s
    latency   = max(t_compute, t_memory) + overhead

(Williams, Waterman & Patterson, "Roofline", CACM 2009.) FLOPs are `LayerDesc.flops`: 2 x MACs
for conv/linear, one per output element for pooling and additions. Compute does not speed up
with fewer bits (an fp32 CPU model); memory traffic does. Energy is not modelled (None).

Defaults describe this project's build machine and are *uncalibrated*: the peak is
2.445 GHz x 32 FP32 FLOP/cycle (two 256-bit FMA pipes of an AMD Zen 3 core) = 78.24 GFLOP/s
per core, times the target's `cores`; 20 GB/s is a typical two-core DRAM stream bandwidth;
10 us per layer is what one measured compile of examples/digits_fixed.adl works out to
(72 us for 7 layers, nearly all of it fixed cost: dispatch, threading, the un-described
BN/ReLU work). Set them in the spec, or calibrate them on the target.
"""

from __future__ import annotations

from typing import Any, ClassVar

from adl.compiler.layers import LayerDesc
from adl.compiler.options import Option
from adl.compiler.spec import TargetSpec
from adl.hwmodels.base import CostModel, LayerCost, activation_bytes

GFLOPS_PER_CORE = 2.445 * 32  # GHz x FP32 FLOP/cycle of this machine's cores


class RooflineModel(CostModel):
    name: ClassVar[str] = "roofline"
    summary: ClassVar[str] = "per layer max(FLOPs / peak, bytes / bandwidth) + overhead (analytic, CPU)"
    options: ClassVar[tuple[Option, ...]] = (
        Option("gflops", "float", None, f"peak GFLOP/s (default: {GFLOPS_PER_CORE:.2f} x the target's cores; "
               "uncalibrated)", low=1e-6),
        Option("bandwidth", "float", 20.0, "memory bandwidth in GB/s (1e9 B/s; uncalibrated)", low=1e-6),
        Option("overhead", "time", 10e-6, "fixed cost per layer (dispatch, synchronisation; uncalibrated)",
               low=0.0),
    )

    def peak_flops(self, target: TargetSpec) -> float:
        gflops = self.config["gflops"]
        return (gflops if gflops is not None else GFLOPS_PER_CORE * target.cores) * 1e9

    def parameters(self, target: TargetSpec) -> dict[str, Any]:
        return {**self.config, "gflops": self.peak_flops(target) / 1e9}

    def estimate_layer(self, layer: LayerDesc, target: TargetSpec) -> LayerCost:
        compute_s = layer.flops / self.peak_flops(target)
        memory_s = (layer.weight_bytes + activation_bytes(layer)) / (self.config["bandwidth"] * 1e9)
        latency = max(compute_s, memory_s) + self.config["overhead"]
        return self.layer_cost(layer, latency, None, "compute" if compute_s >= memory_s else "memory",
                               compute_s=compute_s, memory_s=memory_s)
