"""Single-path execution of a supernet, dispatched block by block from the host.

ProxylessNAS's point is that a binarized supernet costs the memory of one network: only the
sampled path runs and only its activations are kept. A whole-graph `jit` cannot give that in
JAX -- differentiating `lax.switch` keeps the residuals of every branch -- so `PathRunner`
compiles each stage on its own (the stem, every candidate op of every block, the head with
the loss) and runs the sampled path stage by stage. The backward pass walks the stages in
reverse and recomputes each from its saved input (rematerialisation at block boundaries), so
what is alive at any time is the boundary activations plus one op's internals, whatever the
number of candidates. Weight updates touch only the ops the path used, as PyTorch's Adam
skips parameters that got no gradient.

A block may also run two candidates (ProxylessNAS's two-path mode): the block's output is
that of the `active` one (binary gates, one-hot), and the backward pass returns, per
candidate run, dL/dg_j = <dL/d output, op_j(h)> -- the binary-gate gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adl.passes.nas.supernet import Params, Supernet, cross_entropy


@dataclass
class PathGradients:
    loss: float
    params: dict[str, Any]  # "stem", "head", "classifier", and (block, candidate) -> grads of that op
    gates: list[list[float]]  # per block, dL/dg_j of every candidate run there


def _op_backward(op: Callable[[Params, jax.Array], jax.Array]) -> Callable:
    def backward(p: Params, h: jax.Array, g: jax.Array) -> tuple[Params, jax.Array, jax.Array]:
        out, vjp = jax.vjp(op, p, h)
        grad_p, grad_h = vjp(g)
        return grad_p, grad_h, jnp.vdot(g, out)

    return backward


class PathRunner:
    """Forward, backward and Adam-style updates of one sampled path of a `Supernet`."""

    def __init__(self, net: Supernet, optimizer: optax.GradientTransformation) -> None:
        self.net, self.optimizer = net, optimizer
        shapes = net.space.block_shapes(net.width)
        compiled: dict[tuple, tuple[Callable, Callable]] = {}
        self._ops: dict[tuple[int, int], tuple[Callable, Callable] | None] = {}
        for b, choices in enumerate(net.choices):
            for i, choice in enumerate(choices):
                if choice.skip:
                    self._ops[b, i] = None
                    continue
                key = (choice, shapes[b])  # blocks of equal shape share the compiled op
                if key not in compiled:
                    op = net.op_fn(b, i)
                    compiled[key] = (jax.jit(op), jax.jit(_op_backward(op)))
                self._ops[b, i] = compiled[key]

        def loss(head: Params, classifier: Params, h: jax.Array, y: jax.Array) -> jax.Array:
            return cross_entropy(net.head_apply(head, classifier, h), y)

        def stem_backward(p: Params, x: jax.Array, g: jax.Array) -> Params:
            return jax.vjp(lambda p_: net.stem_apply(p_, x), p)[1](g)[0]

        def update(p: Params, state: Any, g: Params) -> tuple[Params, Any]:
            updates, state = optimizer.update(g, state, p)
            return optax.apply_updates(p, updates), state

        self._stem = jax.jit(net.stem_apply)
        self._stem_backward = jax.jit(stem_backward)
        self._loss = jax.jit(loss)
        self._loss_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        self._logits = jax.jit(net.head_apply)
        self._update = jax.jit(update)

    # -- forward ---------------------------------------------------------------------------

    def _block(self, params: Params, b: int, i: int, h: jax.Array) -> jax.Array:
        op = self._ops[b, i]
        return h if op is None else op[0](params["blocks"][b][i], h)

    def _features(self, params: Params, indices: Sequence[int], x: jax.Array) -> tuple[list[jax.Array], jax.Array]:
        """The input of every block and the last block's output."""
        inputs, h = [], self._stem(params["stem"], x)
        for b, i in enumerate(indices):
            inputs.append(h)
            h = self._block(params, b, int(i), h)
        return inputs, h

    def loss(self, params: Params, indices: Sequence[int], x: jax.Array, y: jax.Array) -> float:
        h = self._features(params, indices, x)[1]
        return float(self._loss(params["head"], params["classifier"], h, y))

    def accuracy(self, params: Params, indices: Sequence[int], x: np.ndarray, y: np.ndarray, batch: int) -> float:
        """Top-1 accuracy over all of (x, y), in batches of `batch` (the last one padded with
        repeats of its own samples, so the stages compiled for training serve evaluation too
        and the BatchNorms' batch statistics stay those of real inputs)."""
        correct = 0
        for start in range(0, len(x), batch):
            xb = x[start : start + batch]
            n = len(xb)
            if n < batch:
                xb = np.resize(xb, (batch, *xb.shape[1:]))
            h = self._features(params, indices, jnp.asarray(xb))[1]
            predicted = np.asarray(jnp.argmax(self._logits(params["head"], params["classifier"], h), -1))[:n]
            correct += int((predicted == y[start : start + n]).sum())
        return correct / max(1, len(x))

    # -- backward --------------------------------------------------------------------------

    def gradients(
        self, params: Params, candidates: Sequence[Sequence[int]], active: Sequence[int], x: jax.Array, y: jax.Array
    ) -> PathGradients:
        """Loss and gradients of the path that runs `candidates[b]` at block b, of which
        `candidates[b][active[b]]` feeds the next block (a one-hot binary gate)."""
        indices = [int(c[a]) for c, a in zip(candidates, active)]
        inputs, h = self._features(params, indices, x)
        loss, (g_head, g_classifier, g) = self._loss_grads(params["head"], params["classifier"], h, y)
        grads: dict[str, Any] = {"head": g_head, "classifier": g_classifier}
        gates: list[list[float]] = [[] for _ in candidates]
        for b in reversed(range(len(candidates))):
            g_in = g
            for position, i in enumerate(candidates[b]):
                op = self._ops[b, int(i)]
                if op is None:  # identity: its output is its input
                    dot, g_h, g_p = jnp.vdot(g, inputs[b]), g, None
                else:
                    g_p, g_h, dot = op[1](params["blocks"][b][int(i)], inputs[b], g)
                gates[b].append(float(dot))
                if position == active[b]:
                    g_in = g_h
                    if g_p is not None:
                        grads[b, int(i)] = g_p
            g = g_in
        grads["stem"] = self._stem_backward(params["stem"], x, g)
        return PathGradients(float(loss), grads, gates)

    # -- updates ---------------------------------------------------------------------------

    def init_state(self, params: Params) -> dict[str, Any]:
        """Optimizer state per op, so that an update can touch the path's ops alone."""
        return {
            "stem": self.optimizer.init(params["stem"]),
            "head": self.optimizer.init(params["head"]),
            "classifier": self.optimizer.init(params["classifier"]),
            "blocks": [[self.optimizer.init(op) for op in ops] for ops in params["blocks"]],
        }

    def apply(self, params: Params, state: dict[str, Any], grads: dict[str, Any]) -> tuple[Params, dict[str, Any]]:
        """New (params, state) after one optimizer step on the parameters in `grads`."""
        params = {**params, "blocks": [list(ops) for ops in params["blocks"]]}
        state = {**state, "blocks": [list(ops) for ops in state["blocks"]]}
        for key, g in grads.items():
            if isinstance(key, tuple):
                b, i = key
                params["blocks"][b][i], state["blocks"][b][i] = self._update(
                    params["blocks"][b][i], state["blocks"][b][i], g
                )
            else:
                params[key], state[key] = self._update(params[key], state[key], g)
        return params, state
