"""Integer requantization between integer layers: the float boundaries a network can drop.

After the `haq` pass freezes a network, each integer layer takes floats, quantizes them to its
uint8 codes, and hands floats on (``acc * s + bias``). Where a layer's output reaches *only*
integer layers that quantize it the same way -- directly, or through ReLU/ReLU6/Hardtanh clamps,
max pooling, flattening and identities -- the float detour is pure loss: the producer can
requantize its int32 accumulators straight into the consumers' codes with single IEEE
operations (`adl.models.integer.requantize`), the clamps become a code range, and
max pooling and reshapes work on the codes as they are (quantization is monotone, so the max
of codes is the code of the max). Then PyTorch and the library compute the same integers,
bit for bit, and the library moves one byte per activation instead of four.

:func:`fuse_requantization` finds those hand-offs with `torch.fx` and rewrites the network.
Everything else (residual additions, average pooling, float layers, the network's output)
stays a float boundary. A network `torch.fx` cannot trace is returned unchanged, with the
reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from adl.models.integer import SimulatedQuantLayer, is_integer_layer

__all__ = ["Handoff", "fuse_requantization"]


@dataclass(frozen=True)
class Handoff:
    """One producer whose int32 accumulators are requantized into its consumers' codes."""

    producer: str
    consumers: tuple[str, ...]
    through: tuple[str, ...]  # the ops in between, as fx names them (clamps removed, pools kept)
    low: int
    high: int


class _Tracer(fx.Tracer):
    """Integer and simulated layers stay single calls (their custom operators are not traced into)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (
            is_integer_layer(module)
            or isinstance(module, SimulatedQuantLayer)
            or super().is_leaf_module(module, qualified_name)
        )


_RELU_FUNCTIONS = {torch.relu, F.relu, torch.relu_}
_PASS_FUNCTIONS = {torch.flatten, torch.reshape, F.max_pool2d, F.max_pool1d}
_PASS_METHODS = {"flatten", "view", "reshape", "contiguous"}


def _constant(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _clamp_of(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[float | None, float | None] | None:
    """(low, high) in float when `node` is an elementwise clamp of its only tensor input, else None."""
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, nn.ReLU):
            return 0.0, None
        if isinstance(module, nn.ReLU6):
            return 0.0, 6.0
        if isinstance(module, nn.Hardtanh):
            return float(module.min_val), float(module.max_val)
        return None
    if node.op == "call_function":
        if node.target in _RELU_FUNCTIONS and len(node.args) == 1:
            return 0.0, None
        if node.target is F.relu6 and len(node.args) == 1:
            return 0.0, 6.0
        if node.target in (F.hardtanh, torch.clamp):
            args = list(node.args[1:]) + [None, None]
            low = node.kwargs.get("min_val", node.kwargs.get("min", args[0]))
            high = node.kwargs.get("max_val", node.kwargs.get("max", args[1]))
            if node.target is F.hardtanh and len(node.args) == 1 and not node.kwargs:
                low, high = -1.0, 1.0
            low_v, high_v = _constant(low), _constant(high)
            if (low is None or low_v is not None) and (high is None or high_v is not None):
                return low_v, high_v
        return None
    if node.op == "call_method" and node.target == "relu" and len(node.args) == 1:
        return 0.0, None
    if node.op == "call_method" and node.target == "clamp":
        args = list(node.args[1:]) + [None, None]
        low, high = node.kwargs.get("min", args[0]), node.kwargs.get("max", args[1])
        low_v, high_v = _constant(low), _constant(high)
        if (low is None or low_v is not None) and (high is None or high_v is not None):
            return low_v, high_v
    return None


def _passes_codes(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether `node` computes on codes what it computes on values (a max pool, a reshape, an identity)."""
    if node.op == "call_module":
        module = modules[node.target]
        return isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout, nn.Unflatten))
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS
    return node.op == "call_method" and node.target in _PASS_METHODS


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def _code_of(value: float, scale: float, zero_point: int, bits: int) -> int:
    """The code a float value quantizes to (as the layers' input quantization rounds it)."""
    return int(min(max(round(value / scale) + zero_point, 0), 2**bits - 1))


def fuse_requantization(model: nn.Module) -> tuple[nn.Module, list[Handoff], str]:
    """`model` with integer requantization wherever an integer layer hands its output to integer
    layers only (see the module docstring); the hand-offs made; why none could be ("" if traced).

    Returns `model` itself (not a copy) when nothing was fused; otherwise an `fx.GraphModule`
    sharing `model`'s layers, which are modified in place."""
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 (fx raises many kinds for untraceable code)
        return model, [], f"torch.fx could not trace the network ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    modules = dict(model.named_modules())
    handoffs: list[Handoff] = []
    for node in list(graph.nodes):
        if node.op != "call_module" or not is_integer_layer(modules[node.target]):
            continue
        through, clamps, value = [], [], node
        while len(value.users) == 1:
            user = next(iter(value.users))
            if _tensor_inputs(user) != [value]:
                break
            clamp = _clamp_of(user, modules)
            if clamp is None and not _passes_codes(user, modules):
                break
            (clamps if clamp is not None else through).append((user, clamp))
            value = user
        consumers = list(value.users)
        if not consumers or any(
            c.op != "call_module" or not is_integer_layer(modules[c.target]) or _tensor_inputs(c) != [value]
            for c in consumers
        ):
            continue
        first = modules[consumers[0].target]
        quantizers = {(m.act_scale, m.zero_point, m.act_bits) for m in (modules[c.target] for c in consumers)}
        if len(quantizers) != 1:
            continue
        low, high = 0, 2**first.act_bits - 1
        for _, (lo, hi) in clamps:
            if lo is not None and math.isfinite(lo):
                low = max(low, _code_of(lo, first.act_scale, first.zero_point, first.act_bits))
            if hi is not None and math.isfinite(hi):
                high = min(high, _code_of(hi, first.act_scale, first.zero_point, first.act_bits))
        if low > high:  # a clamp outside the calibrated range: leave the float path alone
            continue
        producer = modules[node.target]
        producer.hand_codes_to(first.act_scale, first.zero_point, first.act_bits, low, high)
        for consumer in consumers:
            modules[consumer.target].takes_codes = True
        for clamp_node, _ in clamps:
            clamp_node.replace_all_uses_with(_tensor_inputs(clamp_node)[0])
            graph.erase_node(clamp_node)
        handoffs.append(
            Handoff(node.target, tuple(c.target for c in consumers), tuple(n.name for n, _ in through), low, high)
        )
    if not handoffs:
        return model, [], ""
    graph.lint()
    return fx.GraphModule(model, graph, class_name=type(model).__name__), handoffs, ""
