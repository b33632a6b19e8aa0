"""Differentiable, hardware-aware architecture search over a `Supernet`, in JAX + optax.

Strategies (each its paper's mechanism; all see the same number of training steps):

* ``darts`` (Liu et al., 2019): softmax-relaxed architecture weights alpha per block; every
  candidate runs (`mixed_block`); alternating bilevel updates -- alpha on a validation batch,
  the weights on a training batch. ``order = "second"`` uses the unrolled gradient
  grad_a L_val(w - xi grad_w L_train(w, a), a) with the Hessian-vector product by finite
  differences (DARTS eq. 7-8); ``"first"`` drops it.
* ``gdas`` (Dong & Yang, 2019): one candidate per block, sampled with Gumbel-max; the
  straight-through one-hot (hard sample minus stop-gradient soft sample plus soft sample)
  gates it, so only it runs and alpha gets the soft sample's gradient (dL/dgate, from the
  path's backward pass, times dgate/dalpha); the temperature anneals linearly from
  `tau_max` to `tau_min`.
* ``proxyless`` (Cai et al., 2019): binarized paths. Weight steps run one sampled path per
  block. Architecture steps use the two-path trick (sample two candidates, activate one,
  d L / d alpha_i = sum_j d L / d g_j p_j (delta_ij - p_i) over the pair, with p renormalised
  over the pair) or REINFORCE (one sampled path per block, (reward - moving baseline) x
  grad log p). Only the sampled paths are ever computed or held in memory.
* ``random`` (Li & Talwalkar, 2019): the supernet is trained with uniformly sampled paths for
  the same steps, then `random_samples` architectures (within the latency budget, if any) are
  scored on validation data with the shared weights, and the best is kept.

Every strategy may start with `warmup` epochs that train the weights alone, on uniformly
sampled single paths (darts: the evenly weighted mixture), as ProxylessNAS warms its
supernet up before any architecture step: an architecture gradient taken through untrained
shared weights only ranks noise.

Latency enters every strategy's architecture loss through the expected latency of the
relaxed network, E[lat] = fixed + sum_b sum_i p_bi lat_bi, priced per candidate by the
target's cost model: ``latency_weight x log(E[lat])``; with a `budget` also a hinge
``10 x relu(E[lat] / budget - 1)`` (a hard budget).

`darts` compiles whole steps (every candidate is in the graph anyway); the single-path
strategies run their sampled paths through `paths.PathRunner`, block by block.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adl.ir import seal
from adl.passes.nas.cells import CellSupernet
from adl.passes.nas.paths import PathRunner
from adl.passes.nas.supernet import Params, Supernet, cross_entropy, probabilities

STRATEGIES = ("darts", "gdas", "proxyless", "random")
STATE_FILE = "search.pkl"  # the resume state, a sealed pickle


def default_lr(strategy: str) -> float:
    """The supernet weights' Adam learning rate: darts trains every op on every step, the
    single-path strategies an op only on the steps that sample it (measured on digits: 0.03
    brings the shared weights to 0.96 validation accuracy in 15 epochs, 0.01 to 0.90)."""
    return 0.01 if strategy == "darts" else 0.03


def default_warmup(strategy: str, epochs: int) -> int:
    """Weight-only epochs before the first architecture step: a third for the single-path
    strategies (ProxylessNAS warms its supernet up), none for darts (its mixture trains every op)."""
    return 0 if strategy == "darts" else epochs // 3


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
    warmup: int = 0  # epochs training the weights alone (uniform single paths; darts: the even mixture)
    seed: int = 0


@dataclass
class LatencyTable:
    """Per-candidate latency (s) of every block, and the latency of what is always there."""

    per_op: list[list[float]]
    fixed: float

    def expected(self, probs: Sequence[jax.Array]) -> jax.Array:
        return self.fixed + sum(jnp.dot(p, jnp.asarray(lat)) for p, lat in zip(probs, self.per_op))

    def of(self, indices: Sequence[int]) -> float:
        """Latency of a derived network; a negative index is an edge the derivation dropped."""
        return self.fixed + sum(lat[int(i)] for lat, i in zip(self.per_op, indices) if int(i) >= 0)


@dataclass
class SearchResult:
    indices: list[int]
    params: Params
    alphas: list[np.ndarray]
    history: list[dict[str, Any]] = field(default_factory=list)  # per epoch: accuracy, E[lat], probs

    @property
    def probabilities(self) -> list[list[float]]:
        return [p.tolist() for p in probabilities(self.alphas)]


_STEP_NAMES = (
    "_darts_weight_step",
    "_darts_arch_step",
    "_arch_apply",
    "_gumbel_indices",
    "_gumbel_alpha_grads",
    "_mixed_accuracy",
)
_COMPILED_STEPS: dict[tuple, dict[str, Callable]] = {}
_RUNNERS: dict[tuple, PathRunner] = {}


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


class Search:
    """One search run; `run` trains and derives, resuming from `state_dir` after a kill."""

    def __init__(self, supernet: Supernet | CellSupernet, latency: LatencyTable, config: SearchConfig) -> None:
        if config.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {config.strategy!r}; known: {', '.join(STRATEGIES)}")
        if config.strategy != "darts" and not supernet.chain:
            raise ValueError(
                f"{config.strategy} runs single paths through a chain of blocks (the mobilenet space); "
                f"{supernet.space} is searched by darts"
            )
        self.net, self.latency, self.config = supernet, latency, config
        self.sizes = [len(c) for c in supernet.choices]
        self.w_opt = optax.adam(config.lr)
        self.a_opt = optax.adam(config.arch_lr, b1=0.5, b2=0.999)
        # XLA compiles each jitted function on first use (tens of seconds for darts' whole steps):
        # searches that differ only in seed, epochs or sample count share the compiled functions
        runner_key = (supernet, config.lr)
        if supernet.chain and runner_key not in _RUNNERS:
            _RUNNERS[runner_key] = PathRunner(supernet, self.w_opt)
            while len(_RUNNERS) > 4:
                _RUNNERS.pop(next(iter(_RUNNERS)))
        self.paths = _RUNNERS[runner_key] if supernet.chain else None
        key = (
            supernet,
            tuple(map(tuple, latency.per_op)),
            latency.fixed,
            dataclasses.replace(config, seed=0, epochs=0, random_samples=0),
        )
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
        return cross_entropy(self.net.mixed_forward(params, x, [jax.nn.softmax(a) for a in alphas]), y)

    # -- sampling (on the host: the sampled indices pick which compiled ops run) ------------

    def _sample(self, sampler: np.random.Generator, alphas: Sequence[jax.Array]) -> list[int]:
        return [int(sampler.choice(len(p), p=p)) for p in probabilities(alphas)]

    def _sample_uniform(self, sampler: np.random.Generator) -> list[int]:
        return [int(sampler.integers(n)) for n in self.sizes]

    # -- steps -----------------------------------------------------------------------------

    def _build_steps(self) -> None:
        cfg = self.config

        def weight_update(params, w_state, grads):
            updates, w_state = self.w_opt.update(grads, w_state, params)
            return optax.apply_updates(params, updates), w_state

        def arch_apply(alphas, a_state, grads):
            """One architecture step on `grads` plus the latency loss's gradient."""
            grads = jax.tree.map(jnp.add, list(grads), jax.grad(self.latency_loss)(alphas))
            updates, a_state = self.a_opt.update(grads, a_state, alphas)
            return optax.apply_updates(alphas, updates), a_state

        self._arch_apply = jax.jit(arch_apply)

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
            norm = jnp.sqrt(sum(jnp.sum(t**2) for t in jax.tree.leaves(v)))
            eps = 0.01 / (norm + 1e-12)
            plus = jax.tree.map(lambda p, t: p + eps * t, params, v)
            minus = jax.tree.map(lambda p, t: p - eps * t, params, v)
            g_plus = jax.grad(self._mixed_loss, argnums=1)(plus, alphas, xt, yt)
            g_minus = jax.grad(self._mixed_loss, argnums=1)(minus, alphas, xt, yt)
            return jax.tree.map(lambda g, gp, gm: g - xi * (gp - gm) / (2 * eps), g_alpha, g_plus, g_minus)

        def darts_arch_step(params, alphas, a_state, xt, yt, xv, yv):
            return arch_apply(alphas, a_state, darts_arch_grad(params, alphas, xt, yt, xv, yv))

        self._darts_weight_step = jax.jit(darts_weight_step)
        self._darts_arch_step = jax.jit(darts_arch_step)

        self._gumbel_indices = jax.jit(lambda alphas, key, tau: gumbel_gates(alphas, key, tau)[0])

        def gumbel_alpha_grads(alphas, key, tau, gate_grads):
            """dL/dalpha = dL/dgate x dgate/dalpha through GDAS's straight-through gates."""
            _, vjp = jax.vjp(lambda al: gumbel_gates(al, key, tau)[1], alphas)
            return vjp(list(gate_grads))[0]

        self._gumbel_alpha_grads = jax.jit(gumbel_alpha_grads)

        def mixed_accuracy(params, weights, x, y):
            return jnp.mean(jnp.argmax(self.net.mixed_forward(params, x, weights), -1) == y)

        self._mixed_accuracy = jax.jit(mixed_accuracy)

    # -- the run ---------------------------------------------------------------------------

    def run(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        *,
        state_dir: Path | None = None,
        on_epoch: Callable[[dict[str, Any]], None] = lambda row: None,
    ) -> SearchResult:
        cfg = self.config
        state = self._load(state_dir) or self._fresh()
        steps = max(1, len(x_train) // cfg.batch_size)
        for epoch in range(state["epoch"], cfg.epochs):
            rng = np.random.default_rng([cfg.seed, epoch])
            order_t, order_v = rng.permutation(len(x_train)), rng.permutation(len(x_val))
            tau = cfg.tau_max - (cfg.tau_max - cfg.tau_min) * epoch / max(1, cfg.epochs - 1)
            key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), epoch)
            sampler = np.random.default_rng([cfg.seed, epoch, 1])
            for step in range(steps):
                bt = order_t[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                bv = np.take(order_v, np.arange(step * cfg.batch_size, (step + 1) * cfg.batch_size), mode="wrap")
                xt, yt = jnp.asarray(x_train[bt]), jnp.asarray(y_train[bt])
                xv, yv = jnp.asarray(x_val[bv]), jnp.asarray(y_val[bv])
                key, step_key = jax.random.split(key)
                if epoch < cfg.warmup:
                    self._warmup_step(state, sampler, xt, yt)
                else:
                    self._step(state, step_key, sampler, tau, xt, yt, xv, yv)
            row = self._epoch_row(state, epoch, x_val, y_val)
            state["history"].append(row)
            state["epoch"] = epoch + 1
            self._save(state_dir, state)
            on_epoch(row)
        indices = self._derive(state, x_val, y_val)
        return SearchResult(indices, state["params"], [np.asarray(a) for a in state["alphas"]], state["history"])

    def _step(self, state: dict, key: jax.Array, sampler: np.random.Generator, tau: float, xt, yt, xv, yv) -> None:
        s, cfg = state, self.config
        if cfg.strategy == "darts":
            s["alphas"], s["a_state"] = self._darts_arch_step(s["params"], s["alphas"], s["a_state"], xt, yt, xv, yv)
            s["params"], s["w_state"], _ = self._darts_weight_step(s["params"], s["w_state"], s["alphas"], xt, yt)
            return
        if cfg.strategy == "gdas":
            k1, k2 = jax.random.split(key)
            indices = np.asarray(self._gumbel_indices(s["alphas"], k1, tau))
            path = self.paths.gradients(s["params"], [[i] for i in indices], [0] * len(indices), xv, yv)
            grads = self._gumbel_alpha_grads(s["alphas"], k1, tau, [jnp.asarray(g[0]) for g in path.gates])
            s["alphas"], s["a_state"] = self._arch_apply(s["alphas"], s["a_state"], grads)
            indices = [int(i) for i in np.asarray(self._gumbel_indices(s["alphas"], k2, tau))]
        elif cfg.strategy == "proxyless":
            if cfg.estimator == "two_path":
                self._two_path_arch_step(s, sampler, xv, yv)
            else:
                self._reinforce_arch_step(s, sampler, xv, yv)
            indices = self._sample(sampler, s["alphas"])
        else:  # random: uniform single paths, no architecture parameters
            indices = self._sample_uniform(sampler)
        self._path_weight_step(s, indices, xt, yt)

    def _path_weight_step(self, state: dict, indices: Sequence[int], xt, yt) -> None:
        """Train the weights of the single path `indices` on one batch."""
        path = self.paths.gradients(state["params"], [[i] for i in indices], [0] * len(indices), xt, yt)
        state["params"], state["w_state"] = self.paths.apply(state["params"], state["w_state"], path.params)

    def _warmup_step(self, state: dict, sampler: np.random.Generator, xt, yt) -> None:
        """A weight step with the architecture untouched (ProxylessNAS's warm-up): a uniformly
        sampled single path, or for darts the mixed network at its initial, even weights."""
        s = state
        if self.config.strategy == "darts":
            s["params"], s["w_state"], _ = self._darts_weight_step(s["params"], s["w_state"], s["alphas"], xt, yt)
        else:
            self._path_weight_step(s, self._sample_uniform(sampler), xt, yt)

    def _two_path_arch_step(self, s: dict, sampler: np.random.Generator, xv, yv) -> None:
        """Sample two candidates per block by p, activate one of them by p renormalised over the
        pair, and move alpha by the binary-gate gradient of the pair."""
        pairs, actives = [], []
        for p in probabilities(s["alphas"]):
            pair = sampler.choice(len(p), size=min(2, len(p)), replace=False, p=p)
            pairs.append([int(i) for i in pair])
            actives.append(int(sampler.choice(len(pair), p=p[pair] / p[pair].sum())))
        path = self.paths.gradients(s["params"], pairs, actives, xv, yv)
        grads = [
            jnp.zeros_like(a).at[jnp.asarray(pair)].add(pair_gradient(a[jnp.asarray(pair)], jnp.asarray(g)))
            for a, pair, g in zip(s["alphas"], pairs, path.gates)
        ]
        s["alphas"], s["a_state"] = self._arch_apply(s["alphas"], s["a_state"], grads)

    def _reinforce_arch_step(self, s: dict, sampler: np.random.Generator, xv, yv) -> None:
        """REINFORCE with a moving-average baseline: reward = -validation loss of a sampled path."""
        probs = probabilities(s["alphas"])
        indices = [int(sampler.choice(len(p), p=p)) for p in probs]
        reward = -self.paths.loss(s["params"], indices, xv, yv)
        advantage = reward - float(s["baseline"])
        grads = [jnp.asarray(-advantage * (np.eye(len(p))[i] - p), jnp.float32) for p, i in zip(probs, indices)]
        s["alphas"], s["a_state"] = self._arch_apply(s["alphas"], s["a_state"], grads)
        s["baseline"] = 0.9 * float(s["baseline"]) + 0.1 * reward

    def _accuracy(self, params: Params, indices: Sequence[int], x: np.ndarray, y: np.ndarray) -> float:
        if self.paths is not None:
            return self.paths.accuracy(params, indices, x, y, self.config.batch_size)
        return float(self._mixed_accuracy(params, self.net.derived_weights(indices), jnp.asarray(x), jnp.asarray(y)))

    def _epoch_row(self, state: dict, epoch: int, x_val, y_val) -> dict[str, Any]:
        probs = probabilities(state["alphas"])
        indices = self.net.derive(state["alphas"])
        return {
            "epoch": epoch + 1,
            "val_accuracy": self._accuracy(state["params"], indices, x_val, y_val),
            "expected_latency_s": float(self.latency.expected(probs)),
            "derived": indices,
            "probabilities": [p.tolist() for p in probs],
        }

    def _derive(self, state: dict, x_val: np.ndarray, y_val: np.ndarray) -> list[int]:
        cfg = self.config
        if cfg.strategy != "random":
            return self.net.derive(state["alphas"])
        rng = np.random.default_rng([cfg.seed, 1 << 20])
        best, best_acc, scored = None, -1.0, 0
        for _ in range(cfg.random_samples * 20):  # draws; those over the budget are not scored
            indices = [int(rng.integers(n)) for n in self.sizes]
            if cfg.budget_s and self.latency.of(indices) > cfg.budget_s:
                continue
            acc = self._accuracy(state["params"], indices, x_val, y_val)
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
        params = self.net.init(self.config.seed)
        alphas = [jnp.zeros((n,)) for n in self.sizes]
        init_state = self.w_opt.init if self.config.strategy == "darts" else self.paths.init_state
        w_state = jax.jit(init_state)(params)  # eagerly, every parameter shape compiles its own zeros
        return {
            "epoch": 0,
            "params": params,
            "w_state": w_state,
            "alphas": alphas,
            "a_state": self.a_opt.init(alphas),
            "baseline": 0.0,
            "history": [],
        }

    @staticmethod
    def _save(state_dir: Path | None, state: dict) -> None:
        """The resume state, as a sealed pickle (optax states are namedtuples; see `adl.ir.seal`)."""
        if state_dir is not None:
            seal.dump(jax.device_get(state), state_dir / STATE_FILE)

    @staticmethod
    def _load(state_dir: Path | None) -> dict | None:
        """The saved resume state; None if there is none, or (with a warning) if this user's adl did
        not write it (refused before unpickling) or it cannot be read."""
        path = state_dir / STATE_FILE if state_dir is not None else None
        if path is None or not path.exists():
            return None
        try:
            state = seal.load(path)
        except seal.BadSeal:
            warnings.warn(f"adl: refusing search state {path}: not written by this user's adl (bad seal)", stacklevel=2)
            return None
        except Exception as err:
            warnings.warn(f"adl: ignoring unreadable search state {path} ({type(err).__name__}: {err})", stacklevel=2)
            return None
        return jax.tree.map(lambda v: jnp.asarray(v) if isinstance(v, np.ndarray) else v, state)
