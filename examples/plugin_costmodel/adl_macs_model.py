"""An example adl cost model: every multiply-accumulate costs `ns_per_mac`, every layer `overhead`.

    latency = MACs * ns_per_mac * 1e-9 + overhead        (energy unknown: None)

Registered in pyproject.toml under the ``adl.hwmodels`` entry-point group; once installed,
``adl hw list`` shows it and a spec uses it as ``target host { cost = my_model(ns_per_mac = 2) }``.
Keep the module light (no torch/TVM at import): ``adl check`` loads it to read `options`.
"""

from __future__ import annotations

from adl.hwmodels import CostModel, LayerCost
from adl.ir.layers import LayerDesc
from adl.ir.options import Option
from adl.ir.spec import TargetSpec


class MacsModel(CostModel):
    name = "my_model"
    summary = "latency proportional to multiply-accumulates (example plug-in)"
    targets = "llvm targets"
    options = (
        Option("ns_per_mac", "float", 1.0, "nanoseconds per multiply-accumulate", low=0.0),
        Option("overhead", "time", 0.0, "fixed cost per layer", low=0.0),
    )

    def supports(self, target: TargetSpec) -> bool:
        return target.kind == "llvm"

    def estimate_layer(self, layer: LayerDesc, target: TargetSpec) -> LayerCost:
        latency = layer.macs * self.config["ns_per_mac"] * 1e-9 + self.config["overhead"]
        return self.layer_cost(layer, latency, None, "compute")
