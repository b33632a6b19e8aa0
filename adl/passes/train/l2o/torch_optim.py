"""The learned update rule as a torch.optim.Optimizer: the same LSTM, weights and preprocessing as rule.py.

State per parameter: the LSTM's hidden and cell states, (LAYERS, numel, hidden) float32
tensors, saved and restored by `state_dict`/`load_state_dict` like any optimizer state.
A parameter group's `lr` multiplies the learned update (1 = as meta-trained), so the usual
learning-rate schedulers anneal the step.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Iterable

import torch

from adl.passes.train.l2o.weights import ARRAYS, LAYERS, LOG_MAGNITUDE_RANGE, L2OWeights, load_weights


def preprocess(g: torch.Tensor, p: float) -> torch.Tensor:
    """(n,) gradients -> (n, 2) inputs, as rule.preprocess: NaN reads as 0, +-inf as the largest finite float."""
    g = torch.nan_to_num(g.float(), nan=0.0)
    floor = torch.tensor(math.exp(-p), dtype=torch.float32)
    big = g.abs() >= floor
    log_mag = torch.log(torch.maximum(g.abs(), floor)) / p
    first = torch.where(big, log_mag, torch.full_like(g, -1.0))
    second = torch.where(big, torch.sign(g), torch.clamp(torch.tensor(math.exp(p), dtype=torch.float32) * g, -1.0, 1.0))
    return torch.stack([first, second], dim=-1)


def _cell(x, h, c, wx, wh, b):
    gates = x @ wx + h @ wh + b
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def lstm_step(
    theta: dict[str, torch.Tensor],
    g: torch.Tensor,
    hidden: torch.Tensor,
    cell: torch.Tensor,
    p: float,
    output_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat gradients (n,) and states (LAYERS, n, h) -> updates (n,) and the next states."""
    x = preprocess(g, p)
    hs, cs = [], []
    for layer in range(LAYERS):
        h, c = _cell(x, hidden[layer], cell[layer], theta[f"l{layer}_wx"], theta[f"l{layer}_wh"], theta[f"l{layer}_b"])
        hs.append(h)
        cs.append(c)
        x = h
    out = x @ theta["out_w"] + theta["out_b"]
    magnitude = torch.exp(torch.clamp(out[..., 1], *LOG_MAGNITUDE_RANGE))
    return output_scale * out[..., 0] * magnitude, torch.stack(hs), torch.stack(cs)


class L2O(torch.optim.Optimizer):
    """Andrychowicz et al.'s coordinatewise LSTM optimizer with meta-trained weights (default: the shipped ones).

    `weights`: an L2OWeights, a path to a weights .npz, or None. `lr` multiplies the learned update.
    """

    def __init__(
        self, params: Iterable, weights: L2OWeights | str | os.PathLike[str] | None = None, lr: float = 1.0
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr (the multiplier of the learned update) must be >= 0, got {lr}")
        self.weights = weights if isinstance(weights, L2OWeights) else load_weights(weights)
        self._theta = {name: torch.from_numpy(self.weights.arrays[name].copy()) for name in ARRAYS}
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        hidden_size, p = self.weights.hidden, self.weights.p
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            if not params:
                continue
            for param in params:
                if param.grad.is_sparse:
                    raise RuntimeError("L2O does not support sparse gradients")
                state = self.state[param]
                if not state:
                    state["hidden"] = torch.zeros(LAYERS, param.numel(), hidden_size)
                    state["cell"] = torch.zeros(LAYERS, param.numel(), hidden_size)
            # the rule is coordinatewise: one LSTM call over all of the group's coordinates
            sizes = [param.numel() for param in params]
            grads = torch.cat([param.grad.reshape(-1).float() for param in params])
            hidden = torch.cat([self.state[param]["hidden"].float() for param in params], dim=1)
            cell = torch.cat([self.state[param]["cell"].float() for param in params], dim=1)
            update, hidden, cell = lstm_step(
                self._theta, grads, hidden, cell, p, self.weights.output_scale * group["lr"]
            )
            for param, u, h, c in zip(
                params, update.split(sizes), hidden.split(sizes, dim=1), cell.split(sizes, dim=1)
            ):
                self.state[param]["hidden"], self.state[param]["cell"] = h.contiguous(), c.contiguous()
                param.add_(u.view_as(param).to(param.dtype))
        return loss
