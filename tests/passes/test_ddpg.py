"""The DDPG agent (adl.passes.rl.ddpg): it learns a small problem, explores within bounds,
decays its noise, soft-updates its targets and normalises rewards with a moving baseline."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from adl.passes.rl.ddpg import DDPGAgent, DDPGConfig, Step, run_episode, search, truncated_normal

TARGETS = (0.25, 0.8, 0.5)


class Targets:
    """Three steps; the state is the step's one-hot; reward 1 - squared distance of the actions
    to `TARGETS` (given at the end). The best policy acts TARGETS[t] at step t."""

    state_dim = 3

    def reset(self) -> np.ndarray:
        self.t, self.actions = 0, []
        return np.eye(3, dtype=np.float32)[0]

    def step(self, action: float) -> Step:
        self.actions.append(action)
        self.t += 1
        if self.t < 3:
            return Step(np.eye(3, dtype=np.float32)[self.t], 0.0, False, action)
        error = float(np.sum((np.array(self.actions) - TARGETS) ** 2))
        return Step(np.zeros(3, np.float32), 1.0 - error, True, action, {"error": error})


def small_config(**changes) -> DDPGConfig:
    base = dict(
        hidden=(64, 64), actor_lr=3e-4, critic_lr=3e-3, warmup=30, noise=0.3, noise_decay=0.98, batch_size=64, seed=0
    )
    return DDPGConfig(**(base | changes))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_agent_learns_a_state_dependent_action():
    torch.manual_seed(0)
    agent = DDPGAgent(3, small_config())
    result = search(Targets(), agent, 200)
    greedy, _ = run_episode(Targets(), agent, None)
    # A run that rounds differently (another CPU's matmuls) follows another trajectory; over 30 seeds
    # 200 episodes end 0.03..0.24 from the targets (mean 0.13, sd 0.05) with rewards 0.91..1.00 (mean
    # 0.97, sd 0.02), always ordered like the targets. The best state-independent policy (0.517 everywhere)
    # earns 0.849 and is unordered: the order and a reward >= 0.88 (mean - 4 sd) tell learning apart.
    a = greedy.actions
    assert a[0] < a[2] < a[1], a  # ordered like TARGETS: the action depends on the state
    np.testing.assert_allclose(greedy.actions, TARGETS, atol=0.3)  # mean + 3 sd
    random_rewards = [e.reward for e in result.history[:30]]  # the warm-up: uniform random actions
    assert greedy.reward >= 0.88 and greedy.reward > np.mean(random_rewards) + 0.2
    assert result.best.reward >= greedy.reward - 0.05


def test_a_rank_key_decides_the_best_episode_and_what_the_progress_callback_sees():
    class Ties(Targets):  # every episode earns reward 1; the info tells them apart
        def step(self, action: float) -> Step:
            step = super().step(action)
            return dataclasses.replace(step, reward=1.0) if step.done else step

    seen = []
    result = search(
        Ties(),
        DDPGAgent(3, small_config(warmup=20)),
        12,
        on_episode=lambda episode, best: seen.append(best.index),
        rank=lambda episode: (episode.reward, -episode.info["error"]),
    )
    errors = [episode.info["error"] for episode in result.history]
    assert result.best.index == int(np.argmin(errors))
    assert seen == [int(np.argmin(errors[: i + 1])) for i in range(12)]
    by_reward = search(Ties(), DDPGAgent(3, small_config(warmup=20)), 3)
    assert by_reward.best.index == 0  # the default rank, the reward: the first of equals


def test_warmup_actions_are_uniform_and_exploration_stays_in_bounds():
    agent = DDPGAgent(3, small_config(low=0.2, high=0.9, warmup=10))
    state = np.eye(3, dtype=np.float32)[0]
    warm = [agent.act(state, 0) for _ in range(2000)]
    assert 0.2 <= min(warm) and max(warm) <= 0.9
    # uniform on [0.2, 0.9]: sd 0.7 / sqrt(12) = 0.20, standard error of 2000 draws 0.0045; 0.02 is 4.4 of them
    assert np.mean(warm) == pytest.approx(0.55, abs=0.02)
    explored = [agent.act(state, 10) for _ in range(500)]
    assert 0.2 <= min(explored) and max(explored) <= 0.9
    assert agent.sigma(10) == pytest.approx(0.3) and agent.sigma(20) == pytest.approx(0.3 * 0.98**10)
    assert agent.act(state, None) == agent.act(state, None)  # exploitation is deterministic


def test_truncated_normal_matches_its_moments_and_bounds():
    rng = np.random.default_rng(0)
    samples = np.array([truncated_normal(0.5, 0.1, 0.0, 1.0, rng) for _ in range(4000)])
    # 5 standard errors: of the mean sigma / sqrt(n) = 0.0016, of the standard deviation sigma / sqrt(2n) = 0.0011
    assert samples.mean() == pytest.approx(0.5, abs=5 * 0.1 / math.sqrt(4000))
    assert samples.std() == pytest.approx(0.1, abs=5 * 0.1 / math.sqrt(2 * 4000))
    edge = np.array([truncated_normal(1.2, 0.2, 0.0, 1.0, rng) for _ in range(2000)])
    # N(1.2, 0.2^2) truncated to [0, 1] has mean mu - sigma (pdf(b) - pdf(a)) / (cdf(b) - cdf(a)) = 0.895 and
    # sd 0.089 (clipping instead of truncating would give 0.98): 5 standard errors of 2000 draws, 0.01
    a, b = (0.0 - 1.2) / 0.2, (1.0 - 1.2) / 0.2
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731 -- a one-expression closure, named for what it computes
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731 -- a one-expression closure, named for what it computes
    assert edge.max() <= 1.0 and edge.min() >= 0.0
    truncated_mean = 1.2 - 0.2 * (pdf(b) - pdf(a)) / (cdf(b) - cdf(a))
    assert edge.mean() == pytest.approx(truncated_mean, abs=5 * 0.089 / math.sqrt(2000))
    assert truncated_normal(7.0, 0.01, 0.0, 1.0, rng) == 1.0


def test_updates_soft_update_targets_and_track_a_reward_baseline():
    agent = DDPGAgent(3, small_config(tau=0.1, baseline_alpha=0.5))
    before = [p.detach().clone() for p in agent.actor_target.parameters()]
    env = Targets()
    for _ in range(4):
        _, transitions = run_episode(env, agent, 0)
        agent.remember(transitions, 2.0)
    agent.update()
    assert agent.baseline == pytest.approx(2.0)  # every stored reward is 2
    learned = list(agent.actor.parameters())
    for old, new, target in zip(before, learned, agent.actor_target.parameters()):
        np.testing.assert_allclose(target.detach().numpy(), (0.9 * old + 0.1 * new.detach()).numpy(), atol=1e-6)
    for _ in range(4):
        _, transitions = run_episode(env, agent, 0)
        agent.remember(transitions, 0.0)
    agent.update()
    assert 0.0 < agent.baseline < 2.0


def test_the_replay_buffer_keeps_the_newest_transitions():
    agent = DDPGAgent(3, small_config(buffer_size=5))
    env = Targets()
    for reward in range(4):  # 12 transitions into a buffer of 5
        _, transitions = run_episode(env, agent, 0)
        agent.remember(transitions, float(reward))
    assert agent.buffer.size == 5
    assert sorted(agent.buffer.rewards[:, 0].tolist()) == [2.0, 2.0, 3.0, 3.0, 3.0]
