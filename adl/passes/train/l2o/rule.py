"""The learned update rule in JAX, as an optax `GradientTransformation`.

Andrychowicz et al. 2016: one small two-layer LSTM is shared by every coordinate of every
parameter (coordinates are its batch dimension). Each coordinate's gradient g is
preprocessed into two inputs,

    (log|g| / p, sign g)   if |g| >= e^-p
    (-1, e^p g)            otherwise,

which keeps the magnitude information over many orders while bounding the inputs. The
paper's LSTM outputs the update itself (times a small `output_scale`); here its output layer
gives two numbers per coordinate, a direction d and a log-magnitude s, and the update is
`output_scale * d * exp(s)` (the parametrisation of Metz et al. 2019, "Understanding and
correcting pathologies in the training of learned optimizers"). An additive output spans
its range only linearly: it cannot take steps orders of magnitude smaller than at the start,
so on a problem it could solve exactly (a quadratic) the loss stalls at a floor set by the
output's jitter. The log-magnitude can follow log|g|, one of the inputs, and the steps
shrink with the gradient as gradient descent's do.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adl.passes.train.l2o.weights import LAYERS, LOG_MAGNITUDE_RANGE, L2OWeights

Theta = dict  # the LSTM's arrays by name, as jax arrays (a pytree, what meta-training differentiates)


class L2OState(NamedTuple):
    """Per parameter leaf: hidden and cell states of shape (LAYERS, leaf.size, hidden)."""

    hidden: Any
    cell: Any


def preprocess(g: jax.Array, p: float) -> jax.Array:
    """(..., ) gradients -> (..., 2) LSTM inputs; NaN reads as 0 and +-inf as the largest finite float."""
    g = jnp.nan_to_num(g.astype(jnp.float32), nan=0.0)
    big = jnp.abs(g) >= jnp.exp(-p)
    log_mag = jnp.log(jnp.maximum(jnp.abs(g), jnp.exp(-p))) / p
    first = jnp.where(big, log_mag, -1.0)
    second = jnp.where(big, jnp.sign(g), jnp.clip(jnp.exp(p) * g, -1.0, 1.0))
    return jnp.stack([first, second], axis=-1)


def _cell(x, h, c, wx, wh, b):
    gates = x @ wx + h @ wh + b
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, c


def lstm_step(
    theta: Theta, g: jax.Array, hidden: jax.Array, cell: jax.Array, p: float, output_scale: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Flat gradients (n,) and states (LAYERS, n, h) -> updates (n,) and the next states."""
    x = preprocess(g, p)
    hs, cs = [], []
    for layer in range(LAYERS):
        h, c = _cell(x, hidden[layer], cell[layer], theta[f"l{layer}_wx"], theta[f"l{layer}_wh"], theta[f"l{layer}_b"])
        hs.append(h)
        cs.append(c)
        x = h
    out = x @ theta["out_w"] + theta["out_b"]
    magnitude = jnp.exp(jnp.clip(out[..., 1], *LOG_MAGNITUDE_RANGE))
    return output_scale * out[..., 0] * magnitude, jnp.stack(hs), jnp.stack(cs)


def init_state(params: Any, hidden: int) -> L2OState:
    zeros = lambda leaf: jnp.zeros((LAYERS, leaf.size, hidden), jnp.float32)  # noqa: E731 -- a one-expression closure, named for what it computes
    return L2OState(jax.tree.map(zeros, params), jax.tree.map(zeros, params))


def apply_rule(theta: Theta, grads: Any, state: L2OState, *, p: float, output_scale: float) -> tuple[Any, L2OState]:
    """The update rule over a pytree: differentiable in `theta` (meta-training calls this)."""
    leaves, treedef = jax.tree.flatten(grads)
    hidden, cell = treedef.flatten_up_to(state.hidden), treedef.flatten_up_to(state.cell)
    updates, new_h, new_c = [], [], []
    for g, h, c in zip(leaves, hidden, cell):
        u, h, c = lstm_step(theta, g.reshape(-1), h, c, p, output_scale)
        updates.append(u.reshape(g.shape).astype(g.dtype))
        new_h.append(h)
        new_c.append(c)
    return (treedef.unflatten(updates), L2OState(treedef.unflatten(new_h), treedef.unflatten(new_c)))


def l2o(weights: L2OWeights | None = None, scale: float = 1.0) -> optax.GradientTransformation:
    """The learned optimizer as an optax transformation; its updates are added to the parameters.

    `weights` defaults to the shipped ones; `scale` multiplies every update (1 = as meta-trained).
    """
    if weights is None:
        from adl.passes.train.l2o.weights import load_weights

        weights = load_weights()
    theta, p, out_scale = weights.as_jax(), weights.p, weights.output_scale * scale

    def init_fn(params):
        return init_state(params, weights.hidden)

    def update_fn(updates, state, params=None):
        del params
        return apply_rule(theta, updates, state, p=p, output_scale=out_scale)

    return optax.GradientTransformation(init_fn, update_fn)
