"""BatchNorm folded into the preceding convolution: before lowering, and before quantizing.

After training, an eval-mode BatchNorm is an affine map per channel; folding it into the
convolution's weights and bias removes a whole elementwise pass over every feature map
(and, after TVM's DecomposeOpsForInference, four elementwise ops per BN) from the library.
Activations need no work here: TVM's FuseOps fuses them into the producing convolution.
Quantization (`haq`) folds first too: an integer library computes with the folded weights,
so those are the ones to quantize.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """A copy of `model` (eval mode) in which every Conv2d -> BatchNorm2d pair is one Conv2d.

    A BatchNorm whose input is not a convolution, or whose convolution output is used
    elsewhere too, is left as it is.
    """
    graph_module = fx.symbolic_trace(copy.deepcopy(model).eval())
    modules = dict(graph_module.named_modules())
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0]
        if not (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules.get(source.target), nn.Conv2d)
            and len(source.users) == 1
        ):
            continue
        conv, bn = modules[source.target], modules[node.target]
        _fold_into(conv, bn)
        node.replace_all_uses_with(source)
        graph_module.graph.erase_node(node)
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module


def fold_batchnorm_or_explain(model: nn.Module) -> tuple[nn.Module, str | None]:
    """`fold_batchnorm(model)`, or, when torch.fx cannot trace the model (torch.export may still
    export it), `model` itself and why its BatchNorm stayed unfolded: a note the caller must
    show, since the library is slower for it. A model without BatchNorm loses nothing: no note."""
    try:
        return fold_batchnorm(model), None
    except Exception as err:  # noqa: BLE001 -- fx raises many types (TraceError, TypeError, ...); reported
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return model, None
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        return model, (
            f"BatchNorm folding failed ({type(err).__name__}: {reason[:200]}); lowering with BatchNorm unfolded: slower"
        )


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
