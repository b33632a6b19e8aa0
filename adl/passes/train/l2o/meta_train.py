"""Meta-training of the learned optimizer: unrolled, truncated backpropagation through optimization.

    python -m adl.passes.train.l2o.meta_train [--out weights.npz] [--curves curves.json] [--seed 0] ...
    adl l2o meta-train ...                      (the same command)

Every meta-iteration advances a batch of optimizee instances of each task kind (tasks.py:
sigmoid MLP and CNN on digits mini-batches, random quadratics) by one unroll segment of
`unroll` steps, updated by the LSTM; the meta-loss of a task kind is the mean over the
segment's steps of the log of its instances' mean loss after the step (the log of the mean,
not the mean of the logs: the benchmark judges the mean final loss over problems, dominated
by the hardest, and a mean of logs trains the rule for the typical problem instead), and its
gradient with respect to the LSTM's weights flows
back through the whole segment (the optimizee's gradients are inputs: no second
derivatives, as in the paper). Segments are chained (truncated BPTT) until the optimizees
reach the horizon, then fresh instances are drawn. The horizon grows over training
(`curriculum`), and each instance's loss is multiplied by a random factor so that the rule
cannot rely on one gradient scale. The LSTM's weights are trained with Adam. Every
`validate_every` iterations the weights run fixed validation problems of each kind to the
horizon, and the best validated weights are the result (meta-training is noisy: the last
weights of two seeds can differ several-fold on the problems the rule is judged on).

A checkpoint is written at trajectory boundaries; a rerun with the same arguments resumes
from it and ends with bit-identical weights (all randomness derives from the seed and the
iteration number). The checkpoint is a sealed pickle (`adl.ir.seal`): one this user's
adl did not write is refused before it is unpickled.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from adl.ir import seal
from adl.ir.files import atomic_write_text
from adl.ir.progress import Progress, SilentProgress
from adl.passes.train.l2o.config import MetaConfig, add_arguments, config_from_args
from adl.passes.train.l2o.rule import lstm_step
from adl.passes.train.l2o.tasks import Task, make_task
from adl.passes.train.l2o.weights import ARRAYS, LAYERS, L2OWeights, init_weights, save_weights

LOSS_CAP = 1e4  # losses above this count as this much: a diverging unroll must not blow up the meta-gradient
VALIDATION_STREAM = 2**31 - 1  # folded into the seed for the validation problems, apart from every training draw


@dataclass
class MetaResult:
    weights: L2OWeights
    curves: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _unroll(
    task: Task, unravel: Callable, theta, flat, state, instance, scale, key, steps: int, p: float, output_scale: float
):
    """`steps` updates of one optimizee by the rule; the mini-batch losses after each, and the final carry."""
    loss = lambda flat, k: task.loss(unravel(flat), instance, k)  # noqa: E731 -- a one-expression closure, named for what it computes

    def step(carry, k):
        flat, hidden, cell = carry
        grads = jax.lax.stop_gradient(jax.grad(loss)(jax.lax.stop_gradient(flat), k) * scale)
        updates, hidden, cell = lstm_step(theta, grads, hidden, cell, p, output_scale)
        flat = flat + updates
        return (flat, hidden, cell), loss(flat, k)

    (flat, hidden, cell), losses = jax.lax.scan(step, (flat, *state), jax.random.split(key, steps))
    return losses, (flat, (hidden, cell))


def _unravel(task: Task) -> Callable:
    return ravel_pytree(task.init(jax.random.key(0))[0])[1]


@lru_cache(maxsize=None)
def make_segment(task: Task, unroll: int, p: float, output_scale: float) -> Callable:
    """jit(theta, flat, state, instance, scale, keys) -> (meta-loss, d meta-loss / d theta, (flat, state, losses)),
    batched over instances (leading axis of everything but theta). The optimizee's parameters are one flat
    vector and the LSTM's state one (LAYERS, n, hidden) pair per instance: the rule is coordinatewise, so this
    is the same computation as `apply_rule` per leaf, in fewer, larger matrix products."""
    unravel = _unravel(task)

    def one(theta, flat, state, instance, scale, key):
        losses, (flat, state) = _unroll(
            task, unravel, theta, flat, state, instance, scale, key, unroll, p, output_scale
        )
        capped = jnp.minimum(jnp.nan_to_num(losses, nan=LOSS_CAP), LOSS_CAP)
        return capped, (flat, state, losses)

    def batched(theta, params, state, instance, scale, keys):
        def total(theta):
            capped, aux = jax.vmap(one, in_axes=(None, 0, 0, 0, 0, 0))(theta, params, state, instance, scale, keys)
            return jnp.mean(jnp.log(jnp.mean(capped, axis=0) + 1e-8)), aux

        (meta, aux), grads = jax.value_and_grad(total, has_aux=True)(theta)
        return meta, grads, aux

    return jax.jit(batched)


@lru_cache(maxsize=None)
def make_validation(task: Task, steps: int, instances: int, seed: int, p: float, output_scale: float) -> Callable:
    """jit(theta) -> the mean full-data loss of `instances` fixed problems after `steps` updates by the rule.

    The problems (drawn from the meta-training subset with a key meta-training never uses) and
    their mini-batch sequences are the same at every call, so values are comparable across
    meta-iterations: this is what picks the weights meta-training returns."""
    unravel = _unravel(task)
    key = jax.random.fold_in(jax.random.key(seed), VALIDATION_STREAM)
    flat, instance = _draw(task, jax.random.fold_in(key, 0), instances)
    keys = jax.random.split(jax.random.fold_in(key, 1), instances)

    def one(theta, flat, instance, key):
        zeros = jnp.zeros((LAYERS, flat.shape[0], theta["l0_wh"].shape[0]), jnp.float32)
        _, (flat, _) = _unroll(task, unravel, theta, flat, (zeros, zeros), instance, 1.0, key, steps, p, output_scale)
        return task.full_loss(unravel(flat), instance)

    @jax.jit
    def validate(theta):
        final = jax.vmap(one, in_axes=(None, 0, 0, 0))(theta, flat, instance, keys)
        return jnp.mean(jnp.minimum(jnp.nan_to_num(final, nan=LOSS_CAP), LOSS_CAP))

    return validate


def _draw(task: Task, key: jax.Array, instances: int) -> tuple[jax.Array, Any]:
    """`instances` problems of `task`: their initial parameters as flat vectors (instances, n), and the instances."""
    params, instance = jax.vmap(task.init)(jax.random.split(key, instances))
    return jax.vmap(lambda prm: ravel_pytree(prm)[0])(params), instance


def _fresh(task: Task, key: jax.Array, cfg: MetaConfig) -> tuple[Any, Any, Any, jax.Array]:
    k_init, k_scale = jax.random.split(key)
    instances = cfg.instances_of(task.name)
    flat, instance = _draw(task, k_init, instances)
    zeros = jnp.zeros((instances, LAYERS, flat.shape[1], cfg.hidden), jnp.float32)
    state = (zeros, zeros)
    log_s = math.log(cfg.loss_scale)
    scale = jnp.exp(jax.random.uniform(k_scale, (instances,), minval=-log_s, maxval=log_s))
    return flat, state, instance, scale


def _meta_optimizer(lr: float, iterations: int, clip: float) -> optax.GradientTransformation:
    schedule = optax.cosine_decay_schedule(lr, iterations, alpha=0.1)
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(schedule))


def meta_train(
    cfg: MetaConfig,
    *,
    checkpoint: Path | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> MetaResult:
    """Meta-train the LSTM on cfg.tasks; resume from `checkpoint` (a file) if it exists."""
    progress = progress or SilentProgress()
    tasks = [make_task(name, "meta") for name in cfg.tasks]
    segments = {t.name: make_segment(t, cfg.unroll, cfg.p, cfg.output_scale) for t in tasks}
    meta_opt = _meta_optimizer(cfg.lr, cfg.iterations, cfg.clip)
    theta = init_weights(cfg.seed, cfg.hidden, cfg.p, cfg.output_scale).as_jax()
    opt_state = meta_opt.init(theta)
    curves: dict[str, Any] = {
        "meta_loss": {t.name: [] for t in tasks},
        "horizon": [],
        "final_loss": {t.name: [] for t in tasks},
        "validation": [],
    }
    validate = _validator(tasks, cfg)
    best: tuple[float, Any] = (math.inf, theta)  # the validation value and weights to return
    start, elapsed, last_validation = 0, 0.0, 0
    if checkpoint is not None and checkpoint.exists():
        saved = _load_checkpoint(checkpoint)
        if saved["config"] != asdict(cfg):
            raise ValueError(
                f"checkpoint {checkpoint} was written with another configuration; "
                "delete it or rerun with the same arguments"
            )
        theta = jax.tree.map(jnp.asarray, saved["theta"])
        opt_state = jax.tree.map(jnp.asarray, saved["opt_state"])
        start, curves, elapsed = saved["iteration"], saved["curves"], saved["seconds"]
        best = (saved["best_value"], jax.tree.map(jnp.asarray, saved["best_theta"]))
        last_validation = saved["last_validation"]
        log(f"meta-train: resuming at iteration {start} of {cfg.iterations}")

    update = _update_fn(cfg.lr, cfg.iterations, cfg.clip)
    base = jax.random.key(cfg.seed)
    live: dict[str, Any] = {}
    step_in_trajectory, last_checkpoint = 0, start
    began = time.perf_counter() - elapsed
    with progress.task("meta-train", total=cfg.iterations) as bar:
        bar.advance(start)
        for it in range(start, cfg.iterations):
            horizon = cfg.horizon_at(it)
            if step_in_trajectory == 0 or step_in_trajectory >= horizon:
                if validate is not None and it - last_validation >= cfg.validate_every:
                    best = _validated(validate, theta, it, best, curves)
                    last_validation = it
                if checkpoint is not None and it - last_checkpoint >= cfg.checkpoint_every:
                    _save_checkpoint(
                        checkpoint,
                        cfg,
                        theta,
                        opt_state,
                        it,
                        curves,
                        time.perf_counter() - began,
                        best,
                        last_validation,
                    )
                    last_checkpoint = it
                for i, t in enumerate(tasks):
                    live[t.name] = _fresh(t, jax.random.fold_in(jax.random.fold_in(base, it), i), cfg)
                step_in_trajectory = 0
            total_grads, shown = None, {}
            for i, t in enumerate(tasks):
                params, state, instance, scale = live[t.name]
                keys = jax.random.split(
                    jax.random.fold_in(jax.random.fold_in(base, 10**7 + it), i), cfg.instances_of(t.name)
                )
                meta, grads, (params, state, losses) = segments[t.name](theta, params, state, instance, scale, keys)
                live[t.name] = (params, state, instance, scale)
                meta = float(meta)
                curves["meta_loss"][t.name].append(meta)
                shown[t.name] = f"{meta:.2f}"
                if step_in_trajectory + cfg.unroll >= horizon:
                    curves["final_loss"][t.name].append([it, float(jnp.mean(losses[:, -1]))])
                if math.isfinite(meta) and all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)):
                    total_grads = grads if total_grads is None else jax.tree.map(jnp.add, total_grads, grads)
                else:  # a diverged instance: redraw it next iteration, learn from the others
                    step_in_trajectory = horizon
            curves["horizon"].append(horizon)
            if total_grads is not None:
                theta, opt_state = update(theta, opt_state, total_grads)
            step_in_trajectory += cfg.unroll
            bar.advance(1, **shown)
    if validate is not None:
        best = _validated(validate, theta, cfg.iterations, best, curves)
        theta = best[1]
        curves["chosen_iteration"] = min(curves["validation"], key=lambda row: row["value"])["iteration"]
    seconds = time.perf_counter() - began
    curves["seconds"] = seconds
    weights = L2OWeights({name: np.asarray(theta[name]) for name in ARRAYS}, p=cfg.p, output_scale=cfg.output_scale)
    return MetaResult(weights, curves, seconds)


@lru_cache(maxsize=None)
def _update_fn(lr: float, iterations: int, clip: float) -> Callable:
    meta_opt = _meta_optimizer(lr, iterations, clip)

    def apply(theta, opt_state, grads):
        updates, opt_state = meta_opt.update(grads, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state

    return jax.jit(apply)


def _validator(tasks: Sequence[Task], cfg: MetaConfig) -> Callable[[Any], dict[str, float]] | None:
    """theta -> {task: log of the mean final loss of its validation problems at the horizon}; None if off."""
    if cfg.validate_every <= 0:
        return None
    fns = {
        t.name: make_validation(t, cfg.horizon, cfg.validation_instances, cfg.seed, cfg.p, cfg.output_scale)
        for t in tasks
    }
    return lambda theta: {name: math.log(float(fn(theta)) + 1e-8) for name, fn in fns.items()}


def _validated(validate: Callable, theta, iteration: int, best: tuple[float, Any], curves: dict) -> tuple[float, Any]:
    """Validate `theta`, log it in the curves, and return the better of it and `best`.

    The value is the mean over task kinds of the log of the mean final loss: the mean over
    problems, as the benchmark judges, and the log so that no kind's loss scale dominates."""
    per_task = validate(theta)
    value = float(np.mean(list(per_task.values())))
    curves["validation"].append({"iteration": iteration, "value": value, "log_final_loss": per_task})
    return (value, theta) if value < best[0] else best


def _save_checkpoint(
    path: Path,
    cfg: MetaConfig,
    theta,
    opt_state,
    iteration: int,
    curves,
    seconds: float,
    best: tuple[float, Any],
    last_validation: int,
) -> None:
    """The resume state, as a sealed pickle (optax states are namedtuples; see `adl.ir.seal`)."""
    seal.dump(
        {
            "config": asdict(cfg),
            "theta": jax.tree.map(np.asarray, theta),
            "best_value": best[0],
            "best_theta": jax.tree.map(np.asarray, best[1]),
            "last_validation": last_validation,
            "opt_state": jax.tree.map(np.asarray, opt_state),
            "iteration": iteration,
            "curves": curves,
            "seconds": seconds,
        },
        path,
    )


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """The saved resume state; a file this user's adl did not write is refused before unpickling."""
    try:
        return seal.load(path)
    except seal.BadSeal:
        raise ValueError(
            f"refusing checkpoint {path}: not written by this user's adl (bad seal); delete it to start over"
        ) from None


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from adl.ir.progress import RichProgress

    try:
        cfg = config_from_args(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    err = Console(stderr=True, highlight=False)
    checkpoint = args.checkpoint or args.out.with_name(args.out.name + ".ckpt")
    result = meta_train(
        cfg,
        checkpoint=checkpoint,
        progress=None if args.quiet else RichProgress(err),
        log=lambda message: err.print(message),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(result.weights, args.out)
    curves_path = args.curves or args.out.with_suffix(".json")
    atomic_write_text(curves_path, json.dumps({"config": asdict(cfg), **result.curves}, indent=1))
    checkpoint.unlink(missing_ok=True)  # done: a rerun starts afresh
    err.print(f"meta-train: {cfg.iterations} iterations in {result.seconds:.0f} s; wrote {args.out} and {curves_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adl.passes.train.l2o.meta_train", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
