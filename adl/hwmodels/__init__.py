"""Hardware cost models: what a layer costs on the target (latency, energy, memory).

Every optimizing pass is steered by `CostModel.estimate(layers, target) -> Cost`, and the
driver prices the final model with the spec's `target { cost = ... }`. Built-ins and
plug-ins are found through the ``adl.hwmodels`` entry-point group (`registry`).

This package imports only `adl.ir` (LayerDesc, options, spec): no torch, no TVM, so
`adl check` can validate cost-model options cheaply.
"""

from adl.hwmodels.base import Cost, CostModel, LayerCost, activation_bytes, tensor_bytes
from adl.hwmodels.registry import (
    ENTRY_POINT_GROUP,
    CostModelRegistry,
    UnknownCostModel,
    default_registry,
    get_cost_model,
)

__all__ = [
    "Cost",
    "CostModel",
    "LayerCost",
    "activation_bytes",
    "tensor_bytes",
    "ENTRY_POINT_GROUP",
    "CostModelRegistry",
    "UnknownCostModel",
    "default_registry",
    "get_cost_model",
]
