"""TernGrad's gradient ternarizer (Wen et al., NeurIPS 2017) and its 2-bit wire format.

A gradient tensor g is first clipped to [-c·σ, c·σ] (σ its standard deviation), then
replaced by s · sign(g) ∘ b with b ~ Bernoulli(|g| / s) and s a scaler at least max|g|.
E[s · sign(g) ∘ b] = g for any such s, which is why workers may all use the largest of
their scalers ("scaler sharing"): the average of their ternary gradients then is an
unbiased estimate of the average (clipped) gradient, and only the ternary codes and one
shared float per tensor need to travel.

Codes travel packed four to a byte, as 2-bit two's complement (0 -> 0b00, +1 -> 0b01,
-1 -> 0b11; 0b10 never occurs), the first code in the lowest bits.
"""

from __future__ import annotations

from typing import Sequence

import torch

CODES_PER_BYTE = 4
_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)


def clip(grad: torch.Tensor, c: float) -> torch.Tensor:
    """`grad` clipped to ±c·σ (σ: its standard deviation); unchanged when c·σ is 0 (c = 0,
    a single element or a constant tensor), where clipping would erase the gradient."""
    if c <= 0 or grad.numel() < 2:
        return grad
    bound = float(c * grad.std(correction=0))
    if bound == 0.0:
        return grad
    return grad.clamp(-bound, bound)


def local_scalers(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """s_i = max|g_i| per (already clipped) tensor, as one float32 vector (what scaler sharing reduces by MAX)."""
    return torch.stack([g.abs().max() if g.numel() else g.new_zeros(()) for g in grads]).to(torch.float32)


def stochastic_ternary(
    grad: torch.Tensor, scaler: float | torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """int8 codes t ∈ {-1, 0, +1} with P(t = sign(g)) = |g| / s, so that E[s·t] = g.

    `scaler` must be at least max|g| (it is, after scaler sharing); a zero scaler gives zeros.
    """
    scaler = torch.as_tensor(scaler, dtype=grad.dtype)
    if float(scaler) == 0.0:
        return torch.zeros(grad.shape, dtype=torch.int8)
    # u·s < |g| with u ~ U[0, 1) is b ~ Bernoulli(|g| / s), without dividing the whole tensor
    keep = (torch.rand(grad.shape, generator=generator, dtype=grad.dtype).mul_(scaler) < grad.abs()).to(torch.int8)
    return keep - 2 * (keep & (grad < 0))


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Flat int8 ternary codes -> uint8, four 2-bit codes per byte (the last byte zero-padded)."""
    two_bit = codes.reshape(-1).to(torch.int8).view(torch.uint8) & 3  # the low bits of two's complement
    pad = (-two_bit.numel()) % CODES_PER_BYTE
    if pad:
        two_bit = torch.cat([two_bit, two_bit.new_zeros(pad)])
    quads = two_bit.view(-1, CODES_PER_BYTE)
    return (quads[:, 0] | (quads[:, 1] << 2)) | ((quads[:, 2] << 4) | (quads[:, 3] << 6))


def unpack(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of `pack`: the first `count` int8 codes of a packed uint8 stream."""
    if packed.numel() * CODES_PER_BYTE < count:
        raise ValueError(
            f"{packed.numel()} packed bytes hold at most {packed.numel() * CODES_PER_BYTE} codes, not {count}"
        )
    two_bit = (packed.reshape(-1, 1) >> _SHIFTS) & 3
    return ((two_bit << 6).view(torch.int8) >> 6).reshape(-1)[:count]  # sign-extend the 2 bits


def packed_size(count: int) -> int:
    """Bytes `pack` produces for `count` codes."""
    return -(-count // CODES_PER_BYTE)
