"""From the fine-tuned, fake-quantized network to the one that is deployed.

Every `FakeQuantLayer` is frozen: its weights become integer codes (per-channel scales) and
its input quantizer keeps its calibrated scale and zero point. A layer becomes an
`IntegerConv2d`/`IntegerLinear` (u8 x s8 -> s32 in the TVM library, see
`adl.models.integer`) when

* the target can run it: integer lowering is built for CPU (`llvm`) targets;
* its weights and input are at most 8 bits wide (int8 holds the codes);
* its weights are linear codes (a k-means codebook index is not a number to multiply by).

Otherwise it becomes a `SimulatedQuantLayer` -- the same quantized values in float32 -- and
the reason is recorded. Integer layers that hand their output only to integer layers then
requantize into those layers' codes in integer arithmetic (`adl.models.integer_graph`), so the
deployed network and its library compute the same integers. Weight codes at b <= 8 bits are also stored bit-packed
(`packing.pack_codes`), b bits per weight: `packed_weights` is that file's content.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from adl.models.integer import IntegerConv2d, IntegerLinear, SimulatedQuantLayer
from adl.models.integer_graph import Handoff, fuse_requantization
from adl.passes.haq.model import FakeQuantLayer
from adl.passes.haq.packing import pack_codes, packed_size
from adl.passes.haq.quantizers import dequantize_weight, kmeans_quantize, quantize_weight

INTEGER_TARGET_KINDS = ("llvm",)


@dataclass(frozen=True)
class LayerLowering:
    """How one quantized layer is deployed."""

    name: str
    weight_bits: int
    act_bits: int
    arithmetic: str  # "int8" (integer kernels) or "float32" (simulated)
    reason: str  # why float32; "" for int8
    weights: int  # number of weights
    packed_bytes: int  # bytes of its weight codes packed at weight_bits (float32 bytes if not packable)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fallback_reason(layer: FakeQuantLayer, target_kind: str) -> str:
    """Why `layer` cannot compute in integer arithmetic on `target_kind` ("" if it can)."""
    if target_kind not in INTEGER_TARGET_KINDS:
        return f"integer kernels are built for {', '.join(INTEGER_TARGET_KINDS)} targets, not {target_kind}"
    if layer.mode != "linear":
        return "k-means weights are codebook indices, not linear codes"
    if layer.weight_bits > 8 or layer.act.bits > 8:
        return f"w{layer.weight_bits}a{layer.act.bits} is wider than int8"
    return ""


def _freeze(layer: FakeQuantLayer, reason: str) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """The deployed module replacing `layer`, and its weights' packed storage."""
    inner, bits, act = layer.layer, layer.weight_bits, layer.act
    if layer.mode == "linear":
        codes, scales = quantize_weight(inner.weight, bits)
        stored = {"scales": scales.numpy().astype(np.float32)}
        signed = codes
    else:
        indices, centroids = kmeans_quantize(inner.weight, bits)
        stored = {"centroids": centroids.numpy().astype(np.float32)}
        signed = indices.to(torch.int32) - 2 ** (bits - 1)  # codebook index, stored like a signed code
    if bits <= 8:
        stored["codes"] = pack_codes(signed.numpy(), bits)
    else:
        stored["codes"] = signed.numpy().astype(np.int32)
    stored["shape"] = np.asarray(inner.weight.shape, np.int64)
    stored["bits"] = np.asarray([bits, act.bits], np.int64)
    if not reason:
        cls = IntegerConv2d if isinstance(inner, nn.Conv2d) else IntegerLinear
        return cls(inner, codes, scales, act.scale, act.zero_point, act.bits, bits), stored
    weight = (
        dequantize_weight(codes, scales) if layer.mode == "linear" else centroids.to(inner.weight.dtype)[indices.long()]
    )
    return SimulatedQuantLayer(copy.deepcopy(inner), weight, act.scale, act.zero_point, act.bits, bits), stored


@dataclass(frozen=True)
class Deployment:
    """The deployed network and what lowering it decided."""

    model: nn.Module
    layers: list[LayerLowering]
    packed: dict[str, np.ndarray]  # ``"<layer>.codes"``, ``".scales"`` or ``".centroids"``, ``".shape"``, ``".bits"``
    handoffs: list[Handoff]  # integer layers requantizing straight into their consumers' codes
    handoff_note: str  # why the network could not be analysed for hand-offs ("" if it was)

    def __iter__(self):  # (model, layers, packed), as callers unpacked it before hand-offs existed
        return iter((self.model, self.layers, self.packed))


def deployable_model(fake: nn.Module, target_kind: str) -> Deployment:
    """A copy of `fake` with every FakeQuantLayer frozen and integer requantization between integer
    layers where their outputs allow; per-layer lowering decisions; the packed weights."""
    model = copy.deepcopy(fake).eval()
    decisions: list[LayerLowering] = []
    packed: dict[str, np.ndarray] = {}
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, FakeQuantLayer)]
    with torch.no_grad():
        for name, layer in targets:
            reason = fallback_reason(layer, target_kind)
            deployed, stored = _freeze(layer, reason)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, deployed)
            packed.update({f"{name}.{key}": value for key, value in stored.items()})
            count = layer.layer.weight.numel()
            decisions.append(
                LayerLowering(
                    name=name,
                    weight_bits=layer.weight_bits,
                    act_bits=layer.act.bits,
                    arithmetic="float32" if reason else "int8",
                    reason=reason,
                    weights=count,
                    packed_bytes=packed_size(count, layer.weight_bits) if layer.weight_bits <= 8 else 4 * count,
                )
            )
    model, handoffs, note = fuse_requantization(model)
    return Deployment(model, decisions, packed, handoffs, note)
