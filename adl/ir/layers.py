"""`LayerDesc`: the one vocabulary of layers shared by models, search candidates and cost models.

`describe_model` extracts it from a PyTorch model with torch.fx shape propagation (torch
is imported lazily, so this module stays importable on the `adl check` path).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

OPS = ("conv2d", "dwconv2d", "linear", "pool", "add")
ACTIVATIONS = ("", "relu", "relu6")  # "" = none; what follows the layer (through a BatchNorm)


@dataclass(frozen=True)
class LayerDesc:
    name: str
    op: str  # one of OPS
    input_shape: tuple[int, ...]  # batch included
    output_shape: tuple[int, ...]
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    has_bias: bool = False
    weight_bits: int = 32
    act_bits: int = 32
    activation: str = ""  # one of ACTIVATIONS: the activation applied to the output (compilers fuse it)

    @property
    def params(self) -> int:
        if self.op in ("conv2d", "dwconv2d"):
            cin, cout = self.input_shape[1], self.output_shape[1]
            weights = cout * (cin // self.groups) * self.kernel[0] * self.kernel[1]
            return weights + (cout if self.has_bias else 0)
        if self.op == "linear":
            return self.input_shape[-1] * self.output_shape[-1] + (self.output_shape[-1] if self.has_bias else 0)
        return 0

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one forward pass (batch included)."""
        if self.op in ("conv2d", "dwconv2d"):
            batch, cout, oh, ow = self.output_shape
            cin = self.input_shape[1]
            return batch * cout * oh * ow * (cin // self.groups) * self.kernel[0] * self.kernel[1]
        if self.op == "linear":
            batch = _prod(self.output_shape[:-1])
            return batch * self.input_shape[-1] * self.output_shape[-1]
        return 0

    @property
    def flops(self) -> int:
        """2 x MACs for conv/linear; one op per output element for pooling and additions."""
        if self.op in ("pool", "add"):
            return _prod(self.output_shape)
        return 2 * self.macs

    @property
    def weight_bytes(self) -> int:
        return (self.params * self.weight_bits + 7) // 8

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(params=self.params, macs=self.macs, flops=self.flops)
        return row


@dataclass(frozen=True)
class KernelGroup:
    """One table entry: a layer and the residual addition fused into its epilogue, if any."""

    layer: LayerDesc
    residual: LayerDesc | None = None  # an `add` right after `layer`, with `layer`'s output shape

    @property
    def key(self) -> str:
        """The configuration that decides the kernel's speed (names excluded), as a stable string."""
        layer = self.layer
        parts = [
            layer.op,
            "x".join(map(str, layer.input_shape)),
            "x".join(map(str, layer.output_shape)),
            f"k{layer.kernel[0]}x{layer.kernel[1]}",
            f"s{layer.stride[0]}x{layer.stride[1]}",
            f"g{layer.groups}",
            f"w{layer.weight_bits}a{layer.act_bits}",
            layer.activation or "linear",
        ]
        if self.residual is not None:
            parts.append(f"+add.{self.residual.activation or 'linear'}")
        return "/".join(parts)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.layer.name,) if self.residual is None else (self.layer.name, self.residual.name)


def group_layers(layers: Sequence[LayerDesc]) -> list[KernelGroup]:
    """Layers in execution order -> the kernels TVM fuses them into (an `add` joins the conv
    or linear layer right before it when that layer produced one of its operands' shape)."""
    groups: list[KernelGroup] = []
    for layer in layers:
        previous = groups[-1] if groups else None
        if (
            layer.op == "add"
            and previous is not None
            and previous.residual is None
            and previous.layer.op in ("conv2d", "dwconv2d", "linear")
            and previous.layer.output_shape == layer.output_shape
        ):
            groups[-1] = KernelGroup(previous.layer, layer)
        else:
            groups.append(KernelGroup(layer))
    return groups


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def describe_model(model: Any, input_shape: Sequence[int]) -> list[LayerDesc]:
    """LayerDescs of a torch model's conv/linear/pool/add nodes, in execution order.

    `input_shape` includes the batch dimension, e.g. (1, 1, 8, 8).
    """
    import operator

    import torch
    from torch import fx, nn
    from torch.fx.passes.shape_prop import ShapeProp

    activation_modules = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
    activation_functions = {torch.relu: "relu", torch.nn.functional.relu: "relu", torch.nn.functional.relu6: "relu6"}

    def activation_after(node: Any) -> str:
        """The activation applied to `node`'s output, looking through one BatchNorm."""
        for _ in range(2):
            users = list(node.users)
            if len(users) != 1:
                return ""
            node = users[0]
            if node.op == "call_module":
                mod = modules[node.target]
                if isinstance(mod, nn.BatchNorm2d):
                    continue
                if isinstance(mod, nn.Hardtanh) and (mod.min_val, mod.max_val) == (0.0, 6.0):
                    return "relu6"
                return activation_modules.get(type(mod), "")
            if node.op == "call_function":
                return activation_functions.get(node.target, "")
            return ""
        return ""

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: Any, qualname: str) -> bool:  # quantized layers are layers
            return hasattr(m, "quantized_template") or super().is_leaf_module(m, qualname)

    graph_module = model if isinstance(model, fx.GraphModule) else fx.GraphModule(model, Tracer().trace(model))
    was_training = graph_module.training
    graph_module.eval()
    with torch.no_grad():
        ShapeProp(graph_module).propagate(torch.zeros(tuple(input_shape)))
    graph_module.train(was_training)
    modules = dict(graph_module.named_modules())

    def shape(node: Any) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape)

    layers: list[LayerDesc] = []
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            mod = modules[node.target]
            src, out = shape(node.args[0]), shape(node)
            bits = {}
            if hasattr(mod, "quantized_template"):  # see adl.models.integer: described as the layer it computes
                bits = {"weight_bits": mod.weight_bits, "act_bits": mod.act_bits}
                mod = mod.quantized_template
            if isinstance(mod, nn.Conv2d):
                depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
                layers.append(
                    LayerDesc(
                        node.target,
                        "dwconv2d" if depthwise else "conv2d",
                        src,
                        out,
                        _pair(mod.kernel_size),
                        _pair(mod.stride),
                        mod.groups,
                        mod.bias is not None,
                        activation=activation_after(node),
                        **bits,
                    )
                )
            elif isinstance(mod, nn.Linear):
                layers.append(
                    LayerDesc(
                        node.target,
                        "linear",
                        src,
                        out,
                        has_bias=mod.bias is not None,
                        activation=activation_after(node),
                        **bits,
                    )
                )
            elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
                layers.append(
                    LayerDesc(
                        node.target, "pool", src, out, _pair(mod.kernel_size), _pair(mod.stride or mod.kernel_size)
                    )
                )
            elif isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                layers.append(
                    LayerDesc(
                        node.target,
                        "pool",
                        src,
                        out,
                        (src[2] // out[2], src[3] // out[3]),
                        (src[2] // out[2], src[3] // out[3]),
                    )
                )
        elif node.op == "call_function" and node.target in (operator.add, torch.add) and "tensor_meta" in node.meta:
            tensor_args = [a for a in node.args if hasattr(a, "meta") and "tensor_meta" in a.meta]
            if len(tensor_args) == 2 and shape(tensor_args[0]) == shape(tensor_args[1]) == shape(node):
                layers.append(LayerDesc(node.name, "add", shape(node), shape(node), activation=activation_after(node)))
    return layers
