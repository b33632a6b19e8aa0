"""Optimizees for meta-training and benchmarking the learned optimizer (all in JAX).

The family it is meta-trained on: a sigmoid MLP (64-20-10) and a small CNN (conv 3x3 x4,
ReLU, 2x2 mean pool, linear) classifying digits mini-batches, and random quadratics
||W theta - y||^2 (10 dimensions), as in Andrychowicz et al. 2016. Out-of-family tasks for
the generalization study: a deeper, wider ReLU MLP (64-64-64-10) and a tanh MLP.

The digits are split once (fixed permutation) into a `meta` subset, the only one
meta-training sees, and a `heldout` subset for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adl.passes.train.l2o.config import IN_FAMILY, OUT_OF_FAMILY, TASKS

__all__ = ["BATCH", "IN_FAMILY", "OUT_OF_FAMILY", "TASKS", "Task", "digits", "make_task", "rollout"]

BATCH = 128


@dataclass(frozen=True)
class Task:
    """`init(key) -> (params, instance)`; `loss(params, instance, key)` a mini-batch loss;
    `full_loss(params, instance)` the loss on all of the task's data (for curves)."""

    name: str
    init: Callable[[jax.Array], tuple[Any, Any]]
    loss: Callable[[Any, Any, jax.Array], jax.Array]
    full_loss: Callable[[Any, Any], jax.Array]


@lru_cache(maxsize=None)
def digits(subset: str) -> tuple[np.ndarray, np.ndarray]:
    """x (N, 1, 8, 8) scaled to [0, 1] and y (N,), of the `meta` (60 %) or `heldout` (40 %) subset."""
    from adl.data import load_dataset

    data = load_dataset("digits", split=0.5, seed=0)
    x = np.concatenate([data.x_train, data.x_test]) / 16.0
    y = np.concatenate([data.y_train, data.y_test])
    order = np.random.default_rng(20160606).permutation(len(x))
    cut = int(0.6 * len(x))
    idx = {"meta": order[:cut], "heldout": order[cut:]}[subset]
    return x[idx].astype(np.float32), y[idx].astype(np.int32)


def _dense(key, n_in, n_out):
    return {"w": jax.random.normal(key, (n_in, n_out)) * jnp.sqrt(1.0 / n_in), "b": jnp.zeros(n_out)}


def _mlp(sizes: tuple[int, ...], act: Callable) -> tuple[Callable, Callable]:
    def init(key):
        keys = jax.random.split(key, len(sizes) - 1)
        return [_dense(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

    def apply(params, x):
        x = x.reshape(x.shape[0], -1)
        for layer in params[:-1]:
            x = act(x @ layer["w"] + layer["b"])
        return x @ params[-1]["w"] + params[-1]["b"]

    return init, apply


def _cnn(channels: int = 4) -> tuple[Callable, Callable]:
    def init(key):
        k1, k2 = jax.random.split(key)
        conv = {"w": jax.random.normal(k1, (channels, 1, 3, 3)) * jnp.sqrt(1.0 / 9), "b": jnp.zeros(channels)}
        return [conv, _dense(k2, channels * 16, 10)]

    def apply(params, x):
        conv, dense = params
        h = jax.lax.conv_general_dilated(x, conv["w"], (1, 1), "SAME") + conv["b"][None, :, None, None]
        h = jax.nn.relu(h)
        h = h.reshape(h.shape[0], channels, 4, 2, 4, 2).mean(axis=(3, 5))
        return h.reshape(h.shape[0], -1) @ dense["w"] + dense["b"]

    return init, apply


def _classifier(name: str, init_apply: tuple[Callable, Callable], subset: str) -> Task:
    init_params, apply = init_apply
    x_all, y_all = (jnp.asarray(a) for a in digits(subset))

    def xent(params, x, y):
        logits = apply(params, x)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0])

    def loss(params, instance, key):
        idx = jax.random.randint(key, (BATCH,), 0, x_all.shape[0])
        return xent(params, x_all[idx], y_all[idx])

    return Task(name, lambda key: (init_params(key), None), loss, lambda params, instance: xent(params, x_all, y_all))


def _quadratic(dim: int = 10) -> Task:
    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        return jax.random.normal(k1, (dim,)), (jax.random.normal(k2, (dim, dim)), jax.random.normal(k3, (dim,)))

    def full_loss(theta, instance):
        w, y = instance
        return jnp.sum((w @ theta - y) ** 2)

    return Task("quadratic", init, lambda theta, instance, key: full_loss(theta, instance), full_loss)


@lru_cache(maxsize=None)  # one Task object per (name, subset), so that jitted functions of it are reused
def make_task(name: str, subset: str = "meta") -> Task:
    """A task by name (see TASKS); digits tasks draw their mini-batches from `subset`."""
    if name == "mlp":
        return _classifier(name, _mlp((64, 20, 10), jax.nn.sigmoid), subset)
    if name == "cnn":
        return _classifier(name, _cnn(), subset)
    if name == "quadratic":
        return _quadratic()
    if name == "mlp_relu_wide":
        return _classifier(name, _mlp((64, 64, 64, 10), jax.nn.relu), subset)
    if name == "mlp_tanh":
        return _classifier(name, _mlp((64, 20, 10), jnp.tanh), subset)
    raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})")


def rollout(
    task: Task, make_tx: Callable[[Any], Any], hparams: Sequence[float], seeds: Sequence[int], steps: int
) -> np.ndarray:
    """Optimize one instance of `task` per seed with `make_tx(h)` (an optax transformation) for each h in `hparams`.

    Returns the full-data losses, shape (len(hparams), len(seeds), steps + 1), column 0 at
    initialization. The seed alone decides the instance (initialization, quadratic) and the
    mini-batch sequence, so every optimizer sees the same problems. `h` (e.g. a learning
    rate) is traced: one compilation serves the whole grid.
    """
    import optax

    def run(h, seed):
        tx = make_tx(h)
        key = jax.random.key(seed)
        params, instance = task.init(jax.random.fold_in(key, 0))

        def step(carry, k):
            params, state = carry
            grads = jax.grad(task.loss)(params, instance, k)
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), task.full_loss(params, instance)

        keys = jax.random.split(jax.random.fold_in(key, 1), steps)
        _, losses = jax.lax.scan(step, (params, tx.init(params)), keys)
        return jnp.concatenate([task.full_loss(params, instance)[None], losses])

    grid = jax.vmap(jax.vmap(run, in_axes=(None, 0)), in_axes=(0, None))
    return np.asarray(jax.jit(grid)(jnp.asarray(hparams, jnp.float32), jnp.asarray(list(seeds))))
