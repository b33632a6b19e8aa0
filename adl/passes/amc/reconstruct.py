"""AMC's weight reconstruction: after a layer loses input channels, refit its weights by least squares.

For a convolution (groups = 1) or Linear layer that reads a pruned group, sample its input
patches X on feature maps of the original model (a few positions per image, as AMC) and its
original outputs Y = X W^T. With the kept input columns K, the new weights solve

    min_W' || X_K W'^T - Y ||^2   =>   (X_K^T X_K) W'^T = X_K^T X W^T

so only the Gram matrix G = X^T X of each layer is kept: every episode's reconstruction is
one small linear solve per layer. A ridge of 1e-6 * mean(diag) keeps it well posed when
there are fewer samples than unknowns.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from adl.passes.channels import ChannelGraph


class Reconstructor:
    def __init__(
        self, graph: ChannelGraph, x: np.ndarray, *, positions: int = 10, seed: int = 0, ridge: float = 1e-6
    ) -> None:
        self.ridge = ridge
        self.grams: dict[str, torch.Tensor] = {}
        modules = dict(graph.module.named_modules())
        prunable = {g.index for g in graph.prunable}
        wanted = {
            name
            for name, layout in graph.layouts.items()
            if layout.kind in ("conv", "linear") and any(s.group in prunable for s in layout.cols)
        }
        generator = torch.Generator().manual_seed(seed)
        sums: dict[str, torch.Tensor] = {}

        def hook(name: str):
            def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                features = _patches(module, inputs[0], positions, generator).double()
                sums[name] = sums.get(name, 0) + features.T @ features

            return record

        handles = [modules[name].register_forward_hook(hook(name)) for name in wanted]
        try:
            with torch.no_grad():
                for start in range(0, len(x), 256):
                    graph.module(torch.from_numpy(np.ascontiguousarray(x[start : start + 256], dtype=np.float32)))
        finally:
            for handle in handles:
                handle.remove()
        self.grams = sums

    def __call__(self, name: str, weight: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """`weight` of layer `name` refitted on its kept input columns `cols` (dim 1 of `weight`)."""
        gram = self.grams.get(name)
        weight = weight.detach()
        if gram is None:
            return weight.index_select(1, cols)
        taps = int(np.prod(weight.shape[2:], dtype=np.int64))  # kh * kw for a conv, 1 for a Linear
        flat = weight.reshape(weight.shape[0], -1).double()  # (out, in * taps), unfold's channel-major order
        kept = (cols[:, None] * taps + torch.arange(taps)[None, :]).reshape(-1)
        g_kk = gram[kept][:, kept]
        rhs = gram[kept] @ flat.T
        g_kk = g_kk + self.ridge * float(torch.diagonal(g_kk).mean().clamp_min(1e-12)) * torch.eye(
            len(kept), dtype=g_kk.dtype
        )
        solution = torch.linalg.solve(g_kk, rhs)  # (kept in * taps, out)
        return solution.T.to(weight.dtype).reshape(weight.shape[0], len(cols), *weight.shape[2:]).contiguous()


def _patches(module: nn.Module, x: torch.Tensor, positions: int, generator: torch.Generator) -> torch.Tensor:
    """Rows of the layer's input as its weights see them: im2col patches for a conv (up to
    `positions` random output positions per image), the features for a Linear."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    assert isinstance(module, nn.Conv2d)
    patches = nn.functional.unfold(
        x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride
    )  # (N, C*kh*kw, L)
    count = patches.shape[-1]
    if count > positions:
        index = torch.stack([torch.randperm(count, generator=generator)[:positions] for _ in range(len(x))])
        patches = torch.gather(patches, 2, index[:, None, :].expand(-1, patches.shape[1], -1))
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def reconstruction_error(
    graph: ChannelGraph, keep: Mapping[int, np.ndarray], x: np.ndarray, reconstructor: Reconstructor | None
) -> float:
    """Mean squared difference of the logits of the pruned model (with or without reconstruction)
    and the original on `x` -- a check that reconstruction helps."""
    pruned = graph.prune(keep, reconstructor)
    with torch.no_grad():
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return float((pruned(inputs) - graph.module(inputs)).pow(2).mean())
