"""Differentiable, hardware-aware architecture search over a `Supernet`, in JAX + optax.

Strategies (each its paper's mechanism; all see the same number of training steps):

* ``darts`` (Liu et al., 2019): softmax-relaxed architecture weights alpha per block; every
  candidate runs (`mixed_block`); alternating bilevel updates -- alpha on a validation batch,
  the weights on a training batch. ``order = "second"`` uses the unrolled gradient
  grad_a L_val(w - xi grad_w L_train(w, a), a) with the Hessian-vector product by finite
  differences (DARTS eq. 7-8); ``"first"`` drops it.
* ``gdas`` (Dong & Yang, 2019): one candidate per block, sampled with Gumbel-max; the
  straight-through one-hot (hard sample minus stop-gradient soft sample plus soft sample)
  gates it, so only it runs and alpha gets the soft sample's gradient; the temperature
  anneals linearly from `tau_max` to `tau_min`.
* ``proxyless`` (Cai et al., 2019): binarized paths. Weight steps run one sampled path per
  block. Architecture steps use the two-path trick (sample two candidates, activate one,
  d L / d alpha_i = sum_j d L / d g_j p_j (delta_ij - p_i) over the pair, with p renormalised
  over the pair) or REINFORCE (one sampled path per block, (reward - moving baseline) x
  grad log p). Only the sampled paths are ever in memory.
* ``random`` (Li & Talwalkar, 2019): the supernet is trained with uniformly sampled paths for
  the same steps, then `random_samples` architectures (within the latency budget, if any) are
  scored on validation data with the shared weights, and the best is kept.

Latency enters every strategy's architecture loss through the expected latency of the
relaxed network, E[lat] = fixed + sum_b sum_i p_bi lat_bi, priced per candidate by the
target's cost model: ``latency_weight x log(E[lat])``; with a `budget` also a hinge
``10 x relu(E[lat] / budget - 1)`` (a hard budget).
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adl.passes.nas.supernet import Params, Supernet

STRATEGIES = ("darts", "gdas", "proxyless", "random")


@dataclass(frozen=True)
class SearchConfig:
    strategy: str = "proxyless"
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.01  # weights (Adam)
    arch_lr: float = 0.01  # architecture parameters (Adam, betas 0.5/0.999 as DARTS)
    latency_weight: float = 0.1  # lambda of lambda x log(E[latency])
    budget_s: float | None = None  # a hard latency budget for the search
    order: str = "first"  # darts: first | second
    estimator: str = "two_path"  # proxyless: two_path | reinforce
    tau_max: float = 10.0  # gdas temperature, annealed to tau_min
    tau_min: float = 0.1
    random_samples: int = 50  # random: architectures scored at the end
    seed: int = 0


@dataclass
class LatencyTable:
    """Per-candidate latency (s) of every block, and the latency of what is always there."""

    per_op: list[list[float]]
    fixed: float

    def expected(self, probs: Sequence[jax.Array]) -> jax.Array:
        return self.fixed + sum(jnp.dot(p, jnp.asarray(lat)) for p, lat in zip(probs, self.per_op))

    def of(self, indices: Sequence[int]) -> float:
        return self.fixed + sum(lat[int(i)] for lat, i in zip(self.per_op, indices))


@dataclass
class SearchResult:
    indices: list[int]
    params: Params
    alphas: list[np.ndarray]
    history: list[dict[str, Any]] = field(default_factory=list)  # per epoch: accuracy, E[lat], probs

    @property
    def probabilities(self) -> list[list[float]]:
        return [np.asarray(jax.nn.softmax(a)).tolist() for a in self.alphas]


_STEP_NAMES = ("_single_weight_step", "_darts_weight_step", "_darts_arch_step", "_gdas_step", "_two_path_arch_step",
               "_reinforce_arch_step", "_accuracy")
_COMPILED_STEPS: dict[tuple, dict[str, Callable]] = {}


def gumbel_gates(alphas: Sequence[jax.Array], key: jax.Array, tau: float) -> tuple[jax.Array, list[jax.Array]]:
    """GDAS's sample per block: the Gumbel-max index of log softmax(alpha) and its gate, whose
    value is 1 and whose gradient is the temperature-`tau` Gumbel-softmax's (straight-through)."""
    keys = jax.random.split(key, len(alphas))
    indices, gates = [], []
    for k, a in zip(keys, alphas):
        soft = jax.nn.softmax((jax.nn.log_softmax(a) + jax.random.gumbel(k, a.shape)) / tau)
        index = jnp.argmax(soft)
        straight_through = jax.nn.one_hot(index, a.shape[0]) - jax.lax.stop_gradient(soft) + soft
        indices.append(index)
        gates.append(straight_through[index])
    return jnp.stack(indices), gates


def pair_gradient(alpha_pair: jax.Array, gate_grads: jax.Array) -> jax.Array:
    """ProxylessNAS's binary-gate gradient over a sampled pair: with p = softmax(alpha_pair),
    dL/d alpha_i = sum_j dL/dg_j p_j (delta_ij - p_i)."""
    p = jax.nn.softmax(alpha_pair)
    n = p.shape[0]
    return jnp.array([jnp.sum(gate_grads * p * (jnp.eye(n)[i] - p[i])) for i in range(n)])


def _cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


class Search:
    """One search run; `run` trains and derives, resuming from `state_dir` after a kill."""

    def __init__(self, supernet: Supernet, latency: LatencyTable, config: SearchConfig) -> None:
        if config.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {config.strategy!r}; known: {', '.join(STRATEGIES)}")
        self.net, self.latency, self.config = supernet, latency, config
        self.sizes = [len(c) for c in supernet.choices]
        self.w_opt = optax.adam(config.lr)
        self.a_opt = optax.adam(config.arch_lr, b1=0.5, b2=0.999)
        # XLA compiles each jitted step on first use (tens of seconds for the lax.switch steps):
        # searches that differ only in seed, epochs or sample count share the compiled steps
        key = (supernet, tuple(map(tuple, latency.per_op)), latency.fixed,
               dataclasses.replace(config, seed=0, epochs=0, random_samples=0))
        steps = _COMPILED_STEPS.get(key)
        if steps is None:
            self._build_steps()
            steps = _COMPILED_STEPS[key] = {name: getattr(self, name) for name in _STEP_NAMES}
            while len(_COMPILED_STEPS) > 8:
                _COMPILED_STEPS.pop(next(iter(_COMPILED_STEPS)))
        else:
            for name, fn in steps.items():
                setattr(self, name, fn)

    # -- losses ----------------------------------------------------------------------------

    def latency_loss(self, alphas: Sequence[jax.Array]) -> jax.Array:
        expected = self.latency.expected([jax.nn.softmax(a) for a in alphas])
        loss = self.config.latency_weight * jnp.log(expected)
        if self.config.budget_s:
            loss = loss + 10.0 * jax.nn.relu(expected / self.config.budget_s - 1.0)
        return loss

    def _mixed_loss(self, params: Params, alphas: Sequence[jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
        weights = [jax.nn.softmax(a) for a in alphas]
        logits = self.net.forward(params, x, lambda b, ops, h: self.net.mixed_block(b, ops, h, weights[b]))
        return _cross_entropy(logits, y)

    def _single_loss(self, params: Params, indices: jax.Array, gates: Sequence[jax.Array], x: jax.Array,
                     y: jax.Array) -> jax.Array:
        logits = self.net.forward(params, x,
                                  lambda b, ops, h: self.net.single_block(b, ops, h, indices[b], gates[b]))
        return _cross_entropy(logits, y)

    def _pair_loss(self, params: Params, pairs: jax.Array, gates: Sequence[jax.Array], x: jax.Array,
                   y: jax.Array) -> jax.Array:
        logits = self.net.forward(params, x, lambda b, ops, h: self.net.pair_block(b, ops, h, pairs[b], gates[b]))
        return _cross_entropy(logits, y)

    # -- sampling --------------------------------------------------------------------------

    def _sample(self, key: jax.Array, alphas: Sequence[jax.Array]) -> jax.Array:
        keys = jax.random.split(key, len(alphas))
        return jnp.stack([jax.random.categorical(k, a) for k, a in zip(keys, alphas)])

    def _sample_uniform(self, key: jax.Array) -> jax.Array:
        keys = jax.random.split(key, len(self.sizes))
        return jnp.stack([jax.random.randint(k, (), 0, n) for k, n in zip(keys, self.sizes)])

    # -- steps -----------------------------------------------------------------------------

    def _build_steps(self) -> None:
        cfg, ones = self.config, [jnp.ones(()) for _ in self.sizes]

        def weight_update(params, w_state, grads):
            updates, w_state = self.w_opt.update(grads, w_state, params)
            return optax.apply_updates(params, updates), w_state

        def arch_update(alphas, a_state, grads):
            updates, a_state = self.a_opt.update(grads, a_state, alphas)
            return optax.apply_updates(alphas, updates), a_state

        def single_weight_step(params, w_state, indices, x, y):
            loss, grads = jax.value_and_grad(self._single_loss)(params, indices, ones, x, y)
            params, w_state = weight_update(params, w_state, grads)
            return params, w_state, loss

        self._single_weight_step = jax.jit(single_weight_step)

        def darts_weight_step(params, w_state, alphas, x, y):
            loss, grads = jax.value_and_grad(self._mixed_loss)(params, alphas, x, y)
            params, w_state = weight_update(params, w_state, grads)
            return params, w_state, loss

        def darts_arch_grad(params, alphas, xt, yt, xv, yv):
            if cfg.order == "first":
                return jax.grad(self._mixed_loss, argnums=1)(params, alphas, xv, yv)
            xi = cfg.lr
            g_w = jax.grad(self._mixed_loss)(params, alphas, xt, yt)
            unrolled = jax.tree.map(lambda p, g: p - xi * g, params, g_w)
            g_alpha = jax.grad(self._mixed_loss, argnums=1)(unrolled, alphas, xv, yv)
            v = jax.grad(self._mixed_loss, argnums=0)(unrolled, alphas, xv, yv)
            norm = jnp.sqrt(sum(jnp.sum(t ** 2) for t in jax.tree.leaves(v)))
            eps = 0.01 / (norm + 1e-12)
            plus = jax.tree.map(lambda p, t: p + eps * t, params, v)
            minus = jax.tree.map(lambda p, t: p - eps * t, params, v)
            g_plus = jax.grad(self._mixed_loss, argnums=1)(plus, alphas, xt, yt)
            g_minus = jax.grad(self._mixed_loss, argnums=1)(minus, alphas, xt, yt)
            return jax.tree.map(lambda g, gp, gm: g - xi * (gp - gm) / (2 * eps), g_alpha, g_plus, g_minus)

        def darts_arch_step(params, alphas, a_state, xt, yt, xv, yv):
            grads = darts_arch_grad(params, alphas, xt, yt, xv, yv)
            grads = jax.tree.map(jnp.add, grads, jax.grad(self.latency_loss)(alphas))
            return arch_update(alphas, a_state, grads)

        self._darts_weight_step = jax.jit(darts_weight_step)
        self._darts_arch_step = jax.jit(darts_arch_step)

        def gdas_step(params, w_state, alphas, a_state, key, tau, xt, yt, xv, yv):
            k1, k2 = jax.random.split(key)

            def arch_loss(al):
                indices, gates = gumbel_gates(al, k1, tau)
                return self._single_loss(params, indices, gates, xv, yv) + self.latency_loss(al)

            alphas, a_state = arch_update(alphas, a_state, jax.grad(arch_loss)(alphas))

            def weight_loss(p):
                indices, gates = gumbel_gates(alphas, k2, tau)
                return self._single_loss(p, indices, [jax.lax.stop_gradient(g) for g in gates], xt, yt)

            loss, grads = jax.value_and_grad(weight_loss)(params)
            params, w_state = weight_update(params, w_state, grads)
            return params, w_state, alphas, a_state, loss

        self._gdas_step = jax.jit(gdas_step)

        def two_path_arch_step(params, alphas, a_state, key, xv, yv):
            keys = jax.random.split(key, 2 * len(alphas))
            pairs, actives = [], []
            for b, a in enumerate(alphas):
                pair = jax.random.choice(keys[2 * b], a.shape[0], (2,), replace=False, p=jax.nn.softmax(a))
                p_pair = jax.nn.softmax(a[pair])
                active = jax.random.categorical(keys[2 * b + 1], jnp.log(p_pair))
                pairs.append(pair)
                actives.append(active)
            pairs_arr = jnp.stack(pairs)
            gates = [jax.nn.one_hot(act, 2) for act in actives]
            g_gates = jax.grad(self._pair_loss, argnums=2)(params, pairs_arr, gates, xv, yv)
            grads = []
            for a, pair, g in zip(alphas, pairs, g_gates):
                grads.append(jnp.zeros_like(a).at[pair].add(pair_gradient(a[pair], g)))
            grads = jax.tree.map(jnp.add, grads, jax.grad(self.latency_loss)(alphas))
            return arch_update(alphas, a_state, grads)

        self._two_path_arch_step = jax.jit(two_path_arch_step)

        def reinforce_arch_step(params, alphas, a_state, baseline, key, xv, yv):
            indices = self._sample(key, alphas)
            loss = self._single_loss(params, indices, ones, xv, yv)
            reward = -loss
            advantage = reward - baseline

            def log_prob(al):
                return sum(jax.nn.log_softmax(a)[i] for a, i in zip(al, indices))

            grads = jax.tree.map(lambda g: -advantage * g, jax.grad(log_prob)(alphas))
            grads = jax.tree.map(jnp.add, grads, jax.grad(self.latency_loss)(alphas))
            alphas, a_state = arch_update(alphas, a_state, grads)
            return alphas, a_state, 0.9 * baseline + 0.1 * reward

        self._reinforce_arch_step = jax.jit(reinforce_arch_step)

        def accuracy(params, indices, x, y):
            logits = self.net.forward(params, x, lambda b, ops, h: self.net.single_block(b, ops, h, indices[b],
                                                                                       jnp.ones(())))
            return jnp.mean(jnp.argmax(logits, -1) == y)

        self._accuracy = jax.jit(accuracy)

    # -- the run ---------------------------------------------------------------------------

    def run(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
            state_dir: Path | None = None, on_epoch: Callable[[dict[str, Any]], None] = lambda row: None
            ) -> SearchResult:
        cfg = self.config
        state = self._load(state_dir) or self._fresh()
        steps = max(1, len(x_train) // cfg.batch_size)
        for epoch in range(state["epoch"], cfg.epochs):
            rng = np.random.default_rng([cfg.seed, epoch])
            order_t, order_v = rng.permutation(len(x_train)), rng.permutation(len(x_val))
            tau = cfg.tau_max - (cfg.tau_max - cfg.tau_min) * epoch / max(1, cfg.epochs - 1)
            key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), epoch)
            for step in range(steps):
                bt = order_t[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                bv = order_v[(step * cfg.batch_size) % len(x_val):][:cfg.batch_size]
                xt, yt = jnp.asarray(x_train[bt]), jnp.asarray(y_train[bt])
                xv, yv = jnp.asarray(x_val[bv]), jnp.asarray(y_val[bv])
                key, k1, k2 = jax.random.split(key, 3)
                self._step(state, k1, k2, tau, xt, yt, xv, yv)
            row = self._epoch_row(state, epoch, x_val, y_val)
            state["history"].append(row)
            state["epoch"] = epoch + 1
            self._save(state_dir, state)
            on_epoch(row)
        indices = self._derive(state, x_val, y_val)
        return SearchResult(indices, state["params"], [np.asarray(a) for a in state["alphas"]], state["history"])

    def _step(self, state: dict, k1, k2, tau, xt, yt, xv, yv) -> None:
        s, cfg = state, self.config
        if cfg.strategy == "darts":
            s["alphas"], s["a_state"] = self._darts_arch_step(s["params"], s["alphas"], s["a_state"], xt, yt, xv, yv)
            s["params"], s["w_state"], _ = self._darts_weight_step(s["params"], s["w_state"], s["alphas"], xt, yt)
        elif cfg.strategy == "gdas":
            (s["params"], s["w_state"], s["alphas"], s["a_state"], _) = self._gdas_step(
                s["params"], s["w_state"], s["alphas"], s["a_state"], k1, tau, xt, yt, xv, yv)
        elif cfg.strategy == "proxyless":
            if cfg.estimator == "two_path":
                s["alphas"], s["a_state"] = self._two_path_arch_step(s["params"], s["alphas"], s["a_state"], k1,
                                                                     xv, yv)
            else:
                s["alphas"], s["a_state"], s["baseline"] = self._reinforce_arch_step(
                    s["params"], s["alphas"], s["a_state"], s["baseline"], k1, xv, yv)
            indices = self._sample(k2, s["alphas"])
            s["params"], s["w_state"], _ = self._single_weight_step(s["params"], s["w_state"], indices, xt, yt)
        else:  # random: uniform single paths, no architecture parameters
            indices = self._sample_uniform(k2)
            s["params"], s["w_state"], _ = self._single_weight_step(s["params"], s["w_state"], indices, xt, yt)

    def _epoch_row(self, state: dict, epoch: int, x_val, y_val) -> dict[str, Any]:
        probs = [np.asarray(jax.nn.softmax(a)) for a in state["alphas"]]
        indices = [int(np.argmax(p)) for p in probs]
        return {"epoch": epoch + 1, "val_accuracy": float(self._accuracy(state["params"], jnp.asarray(indices),
                                                                          jnp.asarray(x_val), jnp.asarray(y_val))),
                "expected_latency_s": float(self.latency.expected(probs)), "argmax": indices,
                "probabilities": [p.tolist() for p in probs]}

    def _derive(self, state: dict, x_val: np.ndarray, y_val: np.ndarray) -> list[int]:
        cfg = self.config
        if cfg.strategy != "random":
            return [int(np.argmax(np.asarray(a))) for a in state["alphas"]]
        rng = np.random.default_rng([cfg.seed, 1 << 20])
        best, best_acc, scored = None, -1.0, 0
        for _ in range(cfg.random_samples * 20):  # draws; those over the budget are not scored
            indices = [int(rng.integers(n)) for n in self.sizes]
            if cfg.budget_s and self.latency.of(indices) > cfg.budget_s:
                continue
            acc = float(self._accuracy(state["params"], jnp.asarray(indices), jnp.asarray(x_val),
                                       jnp.asarray(y_val)))
            if acc > best_acc:
                best, best_acc = indices, acc
            scored += 1
            if scored == cfg.random_samples:
                break
        if best is None:  # nothing met the budget: the fastest architecture
            best = [int(np.argmin(lat)) for lat in self.latency.per_op]
        return best

    # -- state -----------------------------------------------------------------------------

    def _fresh(self) -> dict:
        params = self.net.init(jax.random.PRNGKey(self.config.seed))
        alphas = [jnp.zeros((n,)) for n in self.sizes]
        return {"epoch": 0, "params": params, "w_state": self.w_opt.init(params), "alphas": alphas,
                "a_state": self.a_opt.init(alphas), "baseline": jnp.zeros(()), "history": []}

    @staticmethod
    def _save(state_dir: Path | None, state: dict) -> None:
        if state_dir is None:
            return
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / "search.pkl.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(jax.device_get(state), f)
        tmp.replace(state_dir / "search.pkl")

    @staticmethod
    def _load(state_dir: Path | None) -> dict | None:
        path = state_dir / "search.pkl" if state_dir is not None else None
        if path is None or not path.exists():
            return None
        with open(path, "rb") as f:
            return jax.tree.map(lambda v: jnp.asarray(v) if isinstance(v, np.ndarray) else v, pickle.load(f))
