"""`bitserial`: an analytic bit-serial accelerator model, in which fewer bits are faster and cheaper.

The hardware is BISMO (Umuroglu et al., "BISMO: A Scalable Bit-Serial Matrix Multiplication
Overlay for Reconfigurable Computing", FPL 2018): a `dm x dn` array of dot-product units, each
taking the AND-popcount of two `dk`-bit slices per cycle. A w-bit x a-bit matrix product is
computed as w*a binary products of its bit planes, so MAC throughput scales with 1/(w*a). This
is the accelerator HAQ (Wang et al., "HAQ: Hardware-Aware Automated Quantization with Mixed
Precision", CVPR 2019) uses for its latency-constrained search (on a Zynq-7020 at the edge, a
VU9P in the cloud); its bit-flexible energy accounting follows BitFusion (Sharma et al.,
"Bit Fusion: Bit-Level Dynamically Composable Architecture for Accelerating Deep Neural
Networks", ISCA 2018), where a MAC's energy grows with the product of its operands' bits.

Each conv/linear layer is lowered to `g` matrix products (M x K) . (K x N), g = groups:

    conv2d/dwconv2d: M = batch*oh*ow, K = (cin/g)*kh*kw, N = cout/g   (depthwise: K = kh*kw, N = 1)
    linear:          g = 1, M = batch (all leading dims), K = in features, N = out features

    cycles    = g * ceil(M/dm) * ceil(N/dn) * ceil(K/dk) * w_bits * a_bits   (tiles are padded)
    t_compute = cycles / (mhz * 1e6)
    bytes     = ceil(params*w_bits/8) + activations (input(s) and output) at a_bits
    t_memory  = bytes / (bandwidth * 1e9)
    latency   = max(t_compute, t_memory) + overhead
    energy    = MACs*w_bits*a_bits * pj_per_bitop*1e-12 + bytes * pj_per_byte*1e-12 + static_w * latency

Pooling and additions do not use the array: they stream their activations (t_compute = 0).
Presets (docs/costmodels.md gives the sources) set every parameter; any of them can be
overridden, e.g. ``bitserial(preset = edge, bandwidth = 3.2)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from adl.hwmodels.base import CostModel, LayerCost, activation_bytes
from adl.ir.layers import LayerDesc
from adl.ir.options import Option
from adl.ir.spec import TargetSpec


@dataclass(frozen=True)
class BitSerialConfig:
    dm: int  # rows of the dot-product-unit array (output pixels in parallel)
    dk: int  # bits of each dot-product unit's AND-popcount per cycle (reduction in parallel)
    dn: int  # columns of the array (output channels in parallel)
    mhz: float  # clock
    bandwidth: float  # DRAM bandwidth, GB/s
    overhead: float  # fixed seconds per layer (instruction generation, pipeline fill, host sync)
    pj_per_bitop: float  # energy of one 1-bit x 1-bit multiply-accumulate, pJ
    pj_per_byte: float  # energy of one DRAM byte moved, pJ
    static_w: float  # static power, W, charged for the layer's latency

    @property
    def binary_tops(self) -> float:
        """Peak binary operations per second / 1e12 (2 ops per binary MAC, as BISMO counts)."""
        return 2 * self.dm * self.dk * self.dn * self.mhz * 1e6 / 1e12


# Energy per bit-op: Horowitz (ISSCC 2014, 45 nm) gives 0.2 pJ for an 8-bit multiply and
# 0.03 pJ for an 8-bit add: 0.23 pJ per 8x8-bit MAC = 64 bit-products -> 0.0036 pJ each.
# DRAM: 1.3-2.6 nJ per 64-bit access -> 160 pJ per byte (the low end).
PRESETS: Mapping[str, BitSerialConfig] = {
    # BISMO's published PYNQ-Z1 (Zynq-7020, HAQ's edge device) instance: 8x256x8 at 200 MHz,
    # 6.5 binary TOPS; one 64-bit AXI HP port at 200 MHz = 1.6 GB/s.
    "edge": BitSerialConfig(
        dm=8,
        dk=256,
        dn=8,
        mhz=200.0,
        bandwidth=1.6,
        overhead=5e-6,
        pj_per_bitop=0.0036,
        pj_per_byte=160.0,
        static_w=0.0,
    ),
    # BISMO scaled to a Xilinx VU9P (HAQ's cloud device): 32x256x32 at 250 MHz = 131 binary TOPS
    # (16x the edge array; the VU9P has 22x the Zynq-7020's LUTs); four DDR4-2400 channels =
    # 76.8 GB/s; a PCIe-attached card pays more per layer to launch.
    "cloud": BitSerialConfig(
        dm=32,
        dk=256,
        dn=32,
        mhz=250.0,
        bandwidth=76.8,
        overhead=10e-6,
        pj_per_bitop=0.0036,
        pj_per_byte=160.0,
        static_w=0.0,
    ),
}


def _preset_doc(doc: str, field: str, scale: float = 1.0, unit: str = "") -> str:
    values = ", ".join(f"{name} {getattr(p, field) * scale:g}{unit}" for name, p in PRESETS.items())
    return f"{doc} (default: the preset's: {values})"


def matmul_shape(layer: LayerDesc) -> tuple[int, int, int, int] | None:
    """(g, M, K, N) of the matrix products a conv/linear layer is computed as; None for others."""
    if layer.op in ("conv2d", "dwconv2d"):
        batch, cout, oh, ow = layer.output_shape
        g = layer.groups
        return g, batch * oh * ow, (layer.input_shape[1] // g) * layer.kernel[0] * layer.kernel[1], cout // g
    if layer.op == "linear":
        return 1, math.prod(layer.output_shape[:-1]), layer.input_shape[-1], layer.output_shape[-1]
    return None


class BitSerialModel(CostModel):
    name: ClassVar[str] = "bitserial"
    summary: ClassVar[str] = (
        "bit-serial accelerator (BISMO/BitFusion, as in HAQ): MAC time x w_bits*a_bits, "
        "traffic at bit width; latency and energy"
    )
    targets: ClassVar[str] = "any target (it prices the accelerator, not the target's CPU)"
    options: ClassVar[tuple[Option, ...]] = (
        Option(
            "preset",
            "name",
            "edge",
            "edge (BISMO on a Zynq-7020) or cloud (BISMO scaled to a VU9P)",
            choices=tuple(PRESETS),
        ),
        Option("dm", "int", None, _preset_doc("rows of the dot-product array", "dm"), low=1),
        Option("dk", "int", None, _preset_doc("bits per dot-product unit per cycle", "dk"), low=1),
        Option("dn", "int", None, _preset_doc("columns of the dot-product array", "dn"), low=1),
        Option("mhz", "float", None, _preset_doc("clock in MHz", "mhz"), low=1e-6),
        Option("bandwidth", "float", None, _preset_doc("DRAM bandwidth in GB/s", "bandwidth"), low=1e-6),
        Option("overhead", "time", None, _preset_doc("fixed cost per layer", "overhead", 1e6, " us"), low=0.0),
        Option("pj_per_bitop", "float", None, _preset_doc("energy of a 1x1-bit MAC in pJ", "pj_per_bitop"), low=0.0),
        Option("pj_per_byte", "float", None, _preset_doc("energy of a DRAM byte in pJ", "pj_per_byte"), low=0.0),
        Option("static_w", "float", None, _preset_doc("static power in W", "static_w"), low=0.0),
    )

    def __init__(self, **explicit: Any) -> None:
        super().__init__(**explicit)
        overrides = {k: v for k, v in self.config.items() if k != "preset" and v is not None}
        self.params: BitSerialConfig = dataclasses.replace(PRESETS[self.config["preset"]], **overrides)

    def estimate_layer(self, layer: LayerDesc, target: TargetSpec) -> LayerCost:
        p = self.params
        w, a = layer.weight_bits, layer.act_bits
        shape = matmul_shape(layer)
        cycles = 0
        if shape is not None:
            g, m, k, n = shape
            cycles = g * math.ceil(m / p.dm) * math.ceil(n / p.dn) * math.ceil(k / p.dk) * w * a
        compute_s = cycles / (p.mhz * 1e6)
        traffic = layer.weight_bytes + activation_bytes(layer)
        memory_s = traffic / (p.bandwidth * 1e9)
        latency = max(compute_s, memory_s) + p.overhead
        energy = (layer.macs * w * a * p.pj_per_bitop + traffic * p.pj_per_byte) * 1e-12 + p.static_w * latency
        return self.layer_cost(
            layer,
            latency,
            energy,
            "compute" if compute_s > memory_s else "memory",
            cycles=cycles,
            compute_s=compute_s,
            memory_s=memory_s,
            traffic_bytes=traffic,
        )

    def parameters(self, target: TargetSpec) -> dict[str, Any]:
        return {"preset": self.config["preset"], **dataclasses.asdict(self.params)}
