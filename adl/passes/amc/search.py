"""The AMC search end to end: the channel graph, the environment, the DDPG agent, the chosen policy.

Used by the `amc` pass and by bench/amc.py (which also prunes uniformly with the same
machinery, the baseline AMC is measured against).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from adl.ir.layers import LayerDesc
from adl.ir.progress import Progress, SilentProgress
from adl.passes.amc.env import AmcEnv, PolicyScore, Resources
from adl.passes.amc.reconstruct import Reconstructor
from adl.passes.channels import ChannelGraph
from adl.passes.rl.ddpg import DDPGAgent, DDPGConfig, Episode, search


@dataclass(frozen=True)
class AmcConfig:
    budgets: Mapping[str, float]  # resource -> fraction of the unpruned model's cost
    strategy: str = "ddpg"  # or "uniform"
    episodes: int = 300
    warmup: int = 100
    reward: str = "acc"
    criterion: str = "l1"
    reconstruct: bool = True
    min_keep: float = 0.2
    multiple: int = 8
    val_samples: int = 500
    seed: int = 0


@dataclass
class AmcResult:
    counts: np.ndarray
    ratios: dict[str, float]
    model: torch.nn.Module  # pruned, not fine-tuned
    info: dict[str, Any]  # the chosen episode's accuracy, reward and costs
    unpruned_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)  # per episode


def accuracy_on(x: np.ndarray, y: np.ndarray) -> Callable[[torch.nn.Module], PolicyScore]:
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))

    def evaluate(model: torch.nn.Module) -> PolicyScore:
        model.eval()
        with torch.inference_mode():
            logits = model(inputs)
            return PolicyScore(
                float((logits.argmax(1) == labels).float().mean()),
                float(torch.nn.functional.cross_entropy(logits, labels)),
            )

    return evaluate


def policy_rank(episode: Episode) -> tuple[float, float]:
    """What ranks episodes (`ddpg.search(..., rank=policy_rank)`): the highest reward, and among
    equal rewards the lowest validation loss.

    The validation images are training images the network has learned: most good policies
    score the same handful of errors (0.998 on 500 images, reached 10+ times in a 400-episode
    search on digits), and the paper's reward cannot tell them apart. The loss still can: the
    policy that moved the network's outputs least is the better start for fine-tuning. (The
    first of the tied episodes was kept before.)"""
    return episode.reward, -episode.info["loss"]


def make_env(
    model: torch.nn.Module,
    dataset: Any,
    config: AmcConfig,
    latency: Callable[[Sequence[LayerDesc]], float] | None = None,
) -> AmcEnv:
    graph = ChannelGraph(model, (1, *dataset.input_shape))
    x_val, y_val = dataset.scoring_sample(config.val_samples, config.seed)
    resources = Resources(graph.layer_table(), config.budgets, latency)
    reconstructor = (
        Reconstructor(graph, dataset.training_sample(config.val_samples, config.seed)[0], seed=config.seed)
        if config.reconstruct
        else None
    )
    return AmcEnv(
        graph,
        resources,
        accuracy_on(x_val, y_val),
        reward=config.reward,
        min_keep=config.min_keep,
        multiple=config.multiple,
        criterion=config.criterion,
        reconstruct=reconstructor,
    )


def run_amc(
    model: torch.nn.Module,
    dataset: Any,
    config: AmcConfig,
    *,
    latency: Callable[[Sequence[LayerDesc]], float] | None = None,
    progress: Progress | None = None,
    env: AmcEnv | None = None,
) -> AmcResult:
    """Search a policy (DDPG, or the uniform baseline) and prune `model` with it."""
    progress = progress or SilentProgress()
    env = env or make_env(model, dataset, config, latency)
    unpruned = env.evaluate(env.graph.module).accuracy
    history: list[dict[str, Any]] = []
    if config.strategy == "uniform":
        counts = env.uniform_counts()
    else:
        agent = DDPGAgent(
            env.state_dim,
            DDPGConfig(warmup=min(config.warmup, config.episodes - 1), low=config.min_keep, high=1.0, seed=config.seed),
        )
        with progress.task(
            f"amc search ({', '.join(f'{r} {f:.0%}' for r, f in config.budgets.items())})", total=config.episodes
        ) as bar:

            def on_episode(episode: Episode, best: Episode) -> None:
                cost = episode.info["cost"]
                history.append(
                    {
                        "episode": episode.index,
                        "reward": episode.reward,
                        "accuracy": episode.info["accuracy"],
                        "sigma": episode.sigma,
                        "flops_fraction": cost["flops"] / env.total_flops,
                        **{f"{r}_fraction": cost[r] / env.resources.full[r] for r in env.resources.limits},
                    }
                )
                bar.advance(1, reward=f"{episode.reward:.4f}", best=f"{best.reward:.4f}")

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                result = search(env, agent, config.episodes, on_episode, rank=policy_rank)
        counts = np.array(result.best.info["counts"], np.float64)
    info = env.finish(counts)
    return AmcResult(
        counts=counts,
        ratios=env.ratios(counts),
        model=env.build(counts),
        info=info,
        unpruned_accuracy=unpruned,
        history=history,
    )
