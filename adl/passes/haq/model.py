"""A network quantized by a bit policy, simulated in floating point ("fake quantization").

`quantize_model` folds BatchNorm into the convolutions (the deployed weights are what gets
quantized), then replaces every Conv2d and Linear -- in the order `describe_model` lists them,
which is the order of a `BitPolicy` -- by a `FakeQuantLayer` that quantizes its input
activation (affine, calibrated on sample inputs) and its weights (per-channel linear, or
k-means) at the policy's widths. Gradients pass by straight-through estimators, so the same
model is fine-tuned (quantization-aware training) and evaluated for HAQ's reward.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adl.ir.layers import describe_model
from adl.models.folding import fold_batchnorm
from adl.passes.haq.budget import BitPolicy, quantized_layers
from adl.passes.haq.quantizers import ActivationQuant, calibrate, fake_quantize_weight, kmeans_quantize

MODES = ("linear", "kmeans")


class FakeQuantLayer(nn.Module):
    """A Conv2d or Linear whose input and weights are quantized on the fly (STE gradients)."""

    def __init__(self, layer: nn.Module, weight_bits: int, act: ActivationQuant, mode: str = "linear") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.layer, self.weight_bits, self.act, self.mode = layer, weight_bits, act, mode

    @property
    def act_bits(self) -> int:
        return self.act.bits

    @property
    def quantized_template(self) -> nn.Module:
        """The float layer quantized here: `describe_model` describes it, with the widths."""
        return self.layer

    def quantized_weight(self) -> torch.Tensor:
        weight = self.layer.weight
        if self.mode == "linear":
            return fake_quantize_weight(weight, self.weight_bits)
        codes, centroids = kmeans_quantize(weight, self.weight_bits)
        shared = centroids.to(weight.dtype)[codes.long()]
        return weight + (shared - weight).detach()  # straight-through: gradients reach the float weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight = self.act.fake(x), self.quantized_weight()
        if isinstance(self.layer, nn.Conv2d):
            return F.conv2d(
                x,
                weight,
                self.layer.bias,
                self.layer.stride,
                self.layer.padding,
                self.layer.dilation,
                self.layer.groups,
            )
        return F.linear(x, weight, self.layer.bias)

    def extra_repr(self) -> str:
        return f"w{self.weight_bits}a{self.act.bits}, {self.mode}"


def _inputs_of(model: nn.Module, names: Sequence[str], samples: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each named layer receives when `model` runs on `samples`."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: seen.__setitem__(name, args[0].detach())
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            model(samples)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def quantize_model(
    model: nn.Module, policy: BitPolicy, samples: torch.Tensor, *, method: str = "percentile", mode: str = "linear"
) -> nn.Module:
    """A copy of `model` (BatchNorm folded) simulating `policy`; activation ranges calibrated
    by `method` on what each layer receives for `samples` (a batch of raw inputs)."""
    folded = fold_batchnorm(copy.deepcopy(model).eval())
    layers = describe_model(folded, (1, *samples.shape[1:]))
    names = [layers[i].name for i in quantized_layers(layers)]
    if len(names) != len(policy.weight_bits):
        raise ValueError(f"the policy has {len(policy.weight_bits)} layers, the network {len(names)} quantized ones")
    seen = _inputs_of(folded, names, samples)
    for name, w_bits, a_bits in zip(names, policy.weight_bits, policy.act_bits):
        parent_name, _, child = name.rpartition(".")
        parent = folded.get_submodule(parent_name) if parent_name else folded
        layer = getattr(parent, child)
        setattr(parent, child, FakeQuantLayer(layer, w_bits, calibrate(seen[name], a_bits, method), mode))
    return folded
