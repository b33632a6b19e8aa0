"""The HAQ search end to end: the quantized layers, the environment, the DDPG agent, the chosen policy.

Used by the `haq` pass and by bench/haq.py. Policies are scored on training images held out
from fine-tuning (the test split stays untouched), the activation ranges calibrated on
another disjoint slice of the training split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from adl.data.splits import shuffled_split
from adl.ir.layers import LayerDesc, describe_model
from adl.ir.progress import Progress, SilentProgress
from adl.models.folding import fold_batchnorm
from adl.passes.haq.budget import BitPolicy, enforce_budget, quantized_layers
from adl.passes.haq.env import HaqEnv, episode_rank
from adl.passes.haq.model import quantize_model
from adl.passes.rl.ddpg import DDPGAgent, DDPGConfig, Episode, search
from adl.passes.train.loop import evaluate


@dataclass(frozen=True)
class HaqConfig:
    low: int = 2
    high: int = 8
    episodes: int = 300
    warmup: int = 100
    strategy: str = "ddpg"  # or "fixed": every layer at `high`, lowered until the budget holds
    calibration: str = "percentile"
    mode: str = "linear"
    val_samples: int = 500
    calibration_samples: int = 256
    seed: int = 0


@dataclass
class HaqResult:
    policy: BitPolicy  # within budget
    proposed: BitPolicy  # what the agent proposed before the budget was enforced
    accuracy: float  # validation accuracy of the quantized network, no fine-tuning
    full_precision_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class SearchData:
    """The held-out images that score policies and the ones that calibrate activation ranges."""

    x_val: np.ndarray
    y_val: np.ndarray
    calibration: torch.Tensor

    @classmethod
    def split(cls, dataset: Any, val_samples: int, calibration_samples: int, seed: int) -> "SearchData":
        """Policies are scored on up to `val_samples` images of the data's validation split (never
        trained on) or, without one, of the training split; activation ranges are calibrated on
        other training images. Both drawn by `adl.data.splits.shuffled_split`."""
        if dataset.has_validation:
            x_val, y_val = dataset.scoring_sample(val_samples, seed)
            calibration, _ = shuffled_split(len(dataset.y_train), calibration_samples, seed)
        else:
            val, rest = shuffled_split(len(dataset.y_train), val_samples, seed)
            x_val, y_val = np.ascontiguousarray(dataset.x_train[val]), np.asarray(dataset.y_train[val])
            calibration = (rest if len(rest) else val)[:calibration_samples]  # every image scores: calibrate on some
        return cls(x_val, y_val, torch.from_numpy(np.ascontiguousarray(dataset.x_train[calibration], dtype=np.float32)))


def deployed_layers(model: torch.nn.Module, input_shape: tuple[int, ...]) -> list[LayerDesc]:
    """The layers as deployed (BatchNorm folded): what a policy assigns bits to and the cost model prices."""
    return describe_model(fold_batchnorm(model), (1, *input_shape))


def run_haq(
    model: torch.nn.Module,
    layers: list[LayerDesc],
    data: SearchData,
    config: HaqConfig,
    cost: Callable[[BitPolicy], float],
    budget: float,
    *,
    resource: str = "latency",
    progress: Progress | None = None,
) -> HaqResult:
    """Search a bit policy for `model` (trained, eval mode) whose `cost` stays within `budget`."""
    progress = progress or SilentProgress()
    model = model.eval()
    n = len(quantized_layers(layers))

    def accuracy(policy: BitPolicy) -> float:
        quantized = quantize_model(model, policy, data.calibration, method=config.calibration, mode=config.mode)
        return evaluate(quantized, data.x_val, data.y_val)

    full = evaluate(model, data.x_val, data.y_val)
    if config.strategy == "fixed":
        proposed = BitPolicy.uniform(n, config.high)
        policy = enforce_budget(proposed, cost, budget, config.low, resource)
        return HaqResult(policy, proposed, accuracy(policy), full)

    env = HaqEnv(
        layers,
        accuracy,
        cost,
        budget,
        low=config.low,
        high=config.high,
        full_precision_accuracy=full,
        resource=resource,
        activations=resource != "size",
    )
    agent = DDPGAgent(env.state_dim, DDPGConfig(warmup=min(config.warmup, config.episodes - 1), seed=config.seed))
    history: list[dict[str, Any]] = []
    with progress.task(f"haq search ({resource} <= {budget:.4g})", total=config.episodes) as bar:

        def on_episode(episode: Episode, best: Episode) -> None:
            policy = episode.info["policy"]
            history.append(
                {
                    "episode": episode.index,
                    "reward": episode.reward,
                    "accuracy": episode.info["accuracy"],
                    "cost": episode.info["cost"],
                    "sigma": episode.sigma,
                    "weight_bits": list(policy.weight_bits),
                    "act_bits": list(policy.act_bits),
                }
            )
            bar.advance(1, reward=f"{episode.reward:+.4f}", best=f"{best.reward:+.4f}")

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            result = search(env, agent, config.episodes, on_episode, rank=episode_rank)
    chosen = result.best
    return HaqResult(chosen.info["policy"], chosen.info["proposed"], chosen.info["accuracy"], full, history)
