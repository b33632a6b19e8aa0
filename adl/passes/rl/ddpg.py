"""DDPG as AMC (He et al. 2018) and HAQ (Wang et al. 2019) use it, over any `Environment`.

An episode walks the layers of a network: each step the agent sees a state vector and picks
one continuous action in [low, high]; the environment may change the action (AMC clips it so
the budget stays reachable) and returns the action it took. Following AMC (after Block-QNN),
the reward arrives at the end of the episode and every transition of the episode stores it;
the critic regresses

    y = r - b + gamma * (1 - done) * Q'(s', mu'(s'))

where b is an exponential moving average of the rewards sampled for updates (the baseline
that normalises the reward) and gamma = 1 by default (no preference for early layers).
Exploration: `warmup` episodes of uniform random actions, then the actor's action plus
noise from a normal truncated to [low, high], its sigma decayed by `noise_decay` per episode.
Target networks track the learned ones by soft updates (tau).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Step:
    """What `Environment.step` returns. `action` is the action actually applied (after any clipping)."""

    state: np.ndarray
    reward: float
    done: bool
    action: float
    info: dict[str, Any] = field(default_factory=dict)


class Environment(Protocol):
    """An episodic task with one continuous action per step."""

    state_dim: int

    def reset(self) -> np.ndarray:
        """Start an episode; the first state."""

    def step(self, action: float) -> Step:
        """Apply `action` (in the agent's [low, high]); the reward matters on the last step (done)."""


@dataclass(frozen=True)
class DDPGConfig:
    hidden: tuple[int, ...] = (300, 300)  # AMC's actor and critic: two hidden layers of 300
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01  # soft update of the target networks
    discount: float = 1.0
    batch_size: int = 64
    buffer_size: int = 2000  # transitions kept (the oldest are dropped)
    warmup: int = 100  # episodes of uniform random actions before the actor acts
    noise: float = 0.5  # initial sigma of the truncated-normal exploration
    noise_decay: float = 0.95  # sigma multiplier per episode after the warm-up
    baseline_alpha: float = 0.5  # moving-average step of the reward baseline
    low: float = 0.0  # action bounds
    high: float = 1.0
    seed: int = 0


class Actor(nn.Module):
    """state -> action in [low, high] (a sigmoid output, rescaled)."""

    def __init__(self, state_dim: int, hidden: Sequence[int], low: float, high: float) -> None:
        super().__init__()
        self.body = _mlp(state_dim, hidden, 1)
        self.low, self.high = low, high

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(self.body(state))


class Critic(nn.Module):
    """(state, action) -> Q."""

    def __init__(self, state_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.body = _mlp(state_dim + 1, hidden, 1)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([state, action], dim=-1))


def _mlp(inputs: int, hidden: Sequence[int], outputs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.ReLU()]
        inputs = width
    layers.append(nn.Linear(inputs, outputs))
    return nn.Sequential(*layers)


class ReplayBuffer:
    """A ring buffer of (state, action, reward, next state, done)."""

    def __init__(self, capacity: int, state_dim: int) -> None:
        self.capacity = capacity
        self.states = np.zeros((capacity, state_dim), np.float32)
        self.actions = np.zeros((capacity, 1), np.float32)
        self.rewards = np.zeros((capacity, 1), np.float32)
        self.next_states = np.zeros((capacity, state_dim), np.float32)
        self.dones = np.zeros((capacity, 1), np.float32)
        self.size = 0
        self._next = 0

    def add(self, state: np.ndarray, action: float, reward: float, next_state: np.ndarray, done: bool) -> None:
        i = self._next
        self.states[i], self.actions[i, 0], self.rewards[i, 0] = state, action, reward
        self.next_states[i], self.dones[i, 0] = next_state, float(done)
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        idx = rng.integers(0, self.size, size=batch_size)
        return tuple(
            torch.from_numpy(a[idx]) for a in (self.states, self.actions, self.rewards, self.next_states, self.dones)
        )


def truncated_normal(mean: float, sigma: float, low: float, high: float, rng: np.random.Generator) -> float:
    """One sample of N(mean, sigma^2) restricted to [low, high] (by inverting the CDF)."""
    if sigma <= 0:
        return float(min(max(mean, low), high))
    cdf = lambda x: 0.5 * (1.0 + math.erf((x - mean) / (sigma * math.sqrt(2.0))))  # noqa: E731 -- a one-expression closure, named for what it computes
    a, b = cdf(low), cdf(high)
    if b - a < 1e-12:  # the mean lies far outside the interval: all the mass sits at the near end
        return float(min(max(mean, low), high))
    u = float(rng.uniform(a, b))
    u = min(max(u, 1e-12), 1 - 1e-12)
    x = mean + sigma * float(torch.special.ndtri(torch.tensor(u, dtype=torch.float64)))
    return float(min(max(x, low), high))


class DDPGAgent:
    def __init__(self, state_dim: int, config: DDPGConfig = DDPGConfig()) -> None:
        self.config = config
        self.state_dim = state_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.actor = Actor(state_dim, config.hidden, config.low, config.high)
            self.critic = Critic(state_dim, config.hidden)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.buffer = ReplayBuffer(config.buffer_size, state_dim)
        self.rng = np.random.default_rng(config.seed)
        self.baseline: float | None = None

    def sigma(self, episode: int) -> float:
        """The exploration noise of `episode` (0-based): `noise` at the first episode after the warm-up."""
        return self.config.noise * self.config.noise_decay ** max(episode - self.config.warmup, 0)

    def act(self, state: np.ndarray, episode: int | None = None) -> float:
        """The action for `state`: uniform during the warm-up, actor + truncated noise after it;
        the actor's action alone (exploitation) when `episode` is None."""
        low, high = self.config.low, self.config.high
        if episode is not None and episode < self.config.warmup:
            return float(self.rng.uniform(low, high))
        with torch.no_grad():
            mean = float(self.actor(torch.as_tensor(state, dtype=torch.float32)[None])[0, 0])
        if episode is None:
            return mean
        return truncated_normal(mean, self.sigma(episode), low, high, self.rng)

    def remember(self, transitions: Sequence[tuple[np.ndarray, float, np.ndarray, bool]], reward: float) -> None:
        """Store an episode's (state, action, next state, done) transitions, each with the episode's reward."""
        for state, action, next_state, done in transitions:
            self.buffer.add(state, action, reward, next_state, done)

    def update(self) -> dict[str, float]:
        """One critic and one actor step on a sampled batch, then soft target updates."""
        c = self.config
        states, actions, rewards, next_states, dones = self.buffer.sample(c.batch_size, self.rng)
        batch_mean = float(rewards.mean())
        self.baseline = (
            batch_mean if self.baseline is None else (self.baseline + c.baseline_alpha * (batch_mean - self.baseline))
        )
        with torch.no_grad():
            next_q = self.critic_target(next_states, self.actor_target(next_states))
            target = rewards - self.baseline + c.discount * (1.0 - dones) * next_q
        critic_loss = torch.nn.functional.mse_loss(self.critic(states, actions), target)
        self.critic_optim.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optim.step()

        actor_loss = -self.critic(states, self.actor(states)).mean()
        self.actor_optim.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optim.step()

        for net, target_net in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            with torch.no_grad():
                for p, tp in zip(net.parameters(), target_net.parameters()):
                    tp.mul_(1.0 - c.tau).add_(p, alpha=c.tau)
        return {"critic_loss": float(critic_loss.detach()), "actor_loss": float(actor_loss.detach())}


@dataclass
class Episode:
    """One episode's record: the actions applied, the final reward and the environment's final info."""

    index: int
    actions: list[float]
    reward: float
    info: dict[str, Any]
    sigma: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    best: Episode
    history: list[Episode]


def run_episode(env: Environment, agent: DDPGAgent, episode: int | None) -> tuple[Episode, list[tuple]]:
    """Play one episode (`episode` None: the actor's actions without noise)."""
    state = env.reset()
    transitions: list[tuple[np.ndarray, float, np.ndarray, bool]] = []
    actions: list[float] = []
    while True:
        step = env.step(agent.act(state, episode))
        transitions.append((state, step.action, step.state, step.done))
        actions.append(step.action)
        state = step.state
        if step.done:
            sigma = agent.sigma(episode) if episode is not None and episode >= agent.config.warmup else 0.0
            return Episode(
                -1 if episode is None else episode, actions, float(step.reward), step.info, sigma
            ), transitions


def search(
    env: Environment,
    agent: DDPGAgent,
    episodes: int,
    on_episode: Callable[[Episode, Episode], None] = lambda episode, best: None,
    rank: Callable[[Episode], Any] = lambda episode: episode.reward,
) -> SearchResult:
    """Run `episodes` episodes (the first `agent.config.warmup` random), updating the agent after each
    one past the warm-up (one update per transition, as AMC). The best episode is the first with the
    highest `rank` (default: the reward; a pass breaks ties between equal rewards by its own key)."""
    history: list[Episode] = []
    best: Episode | None = None
    for index in range(episodes):
        record, transitions = run_episode(env, agent, index)
        agent.remember(transitions, record.reward)
        if index >= agent.config.warmup and agent.buffer.size >= agent.config.batch_size:
            for _ in transitions:
                agent.update()
        history.append(record)
        if best is None or rank(record) > rank(best):
            best = record
        on_episode(record, best)
    assert best is not None, "search needs at least one episode"
    return SearchResult(best, history)
