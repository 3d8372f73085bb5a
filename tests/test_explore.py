"""Epsilon schedules against their formulas; epsilon-greedy and Boltzmann action selection."""

from __future__ import annotations

import math

import pytest
import torch

from fastdqn.algos.explore import (
    EpsilonSchedule,
    boltzmann,
    epsilon_greedy,
    exponential_epsilon,
    linear_epsilon,
    per_episode_epsilon,
)


@pytest.mark.parametrize(("step", "expected"), [
    (0, 1.0), (250, 0.7625), (500, 0.525), (999, 1.0 - 0.95 * 999 / 1000),
    (1000, 0.05), (5000, 0.05),
])
def test_linear_epsilon(step, expected):
    assert linear_epsilon(step, 1.0, 0.05, 1000) == pytest.approx(expected, abs=1e-12)


def test_linear_epsilon_zero_decay_steps_is_end():
    assert linear_epsilon(0, 1.0, 0.1, 0) == 0.1


@pytest.mark.parametrize("step", [0, 1, 100, 1000, 7777])
def test_exponential_epsilon(step):
    expected = 0.05 + (0.9 - 0.05) * math.exp(-step / 1000)
    assert exponential_epsilon(step, 0.9, 0.05, 1000) == pytest.approx(expected, abs=1e-12)


def test_exponential_epsilon_points():
    assert exponential_epsilon(0, 1.0, 0.0, 500) == 1.0
    assert exponential_epsilon(500, 1.0, 0.0, 500) == pytest.approx(math.exp(-1))
    assert exponential_epsilon(10**7, 1.0, 0.1, 500) == pytest.approx(0.1)
    assert exponential_epsilon(3, 1.0, 0.2, 0) == 0.2


@pytest.mark.parametrize(("episodes", "expected"), [
    (0, 1.0), (1, 0.9), (2, 0.81), (10, 0.9**10), (21, 0.9**21), (22, 0.1), (1000, 0.1),
])
def test_per_episode_epsilon(episodes, expected):
    # 0.9**21 = 0.109 > 0.1 and 0.9**22 = 0.098 < 0.1: floored from episode 22 on
    assert per_episode_epsilon(episodes, 1.0, 0.1, 0.9) == pytest.approx(expected, abs=1e-12)


def test_schedule_dispatch():
    lin = EpsilonSchedule("linear", 1.0, 0.0, 100, 0.5)
    exp = EpsilonSchedule("exponential", 1.0, 0.0, 100, 0.5)
    epi = EpsilonSchedule("per_episode", 1.0, 0.0, 100, 0.5)
    assert lin(50, 3) == pytest.approx(0.5)
    assert exp(50, 3) == pytest.approx(math.exp(-0.5))
    assert epi(50, 3) == pytest.approx(0.125)
    assert epi(10_000, 0) == 1.0  # per-episode ignores env steps


def test_epsilon_greedy_eps_zero_is_argmax(gen):
    q = torch.randn(500, 6, generator=gen)
    actions = epsilon_greedy(q, torch.zeros(500), gen)
    assert actions.dtype == torch.int64
    assert torch.equal(actions, q.argmax(1))


def test_epsilon_greedy_eps_one_is_uniform(gen):
    n, n_actions = 30_000, 4
    q = torch.zeros(n, n_actions)
    q[:, 2] = 1.0  # greedy would always pick 2
    actions = epsilon_greedy(q, torch.ones(n), gen)
    freq = torch.bincount(actions, minlength=n_actions).float() / n
    assert torch.allclose(freq, torch.full((n_actions,), 0.25), atol=0.015), freq


def test_epsilon_greedy_scalar_like_eps_mix(gen):
    n, n_actions = 40_000, 5
    q = torch.zeros(n, n_actions)
    q[:, 0] = 1.0
    actions = epsilon_greedy(q, torch.full((n,), 0.5), gen)
    # P(a = 0) = 0.5 + 0.5 / 5 = 0.6; others 0.1 each
    freq = torch.bincount(actions, minlength=n_actions).float() / n
    expected = torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1])
    assert torch.allclose(freq, expected, atol=0.015), freq


def test_epsilon_greedy_per_env_eps(gen):
    n, n_actions = 4000, 3
    q = torch.randn(n, n_actions, generator=gen)
    eps = torch.cat([torch.zeros(n // 2), torch.ones(n // 2)])
    actions = epsilon_greedy(q, eps, gen)
    greedy = q.argmax(1)
    assert torch.equal(actions[: n // 2], greedy[: n // 2])
    explored = actions[n // 2:]
    freq = torch.bincount(explored, minlength=n_actions).float() / explored.numel()
    assert torch.allclose(freq, torch.full((n_actions,), 1 / 3), atol=0.04), freq
    # random rows pick the greedy action only about 1/3 of the time
    agree = (explored == greedy[n // 2:]).float().mean().item()
    assert agree == pytest.approx(1 / 3, abs=0.05)


def test_epsilon_greedy_same_seed_same_actions():
    q = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    eps = torch.full((256,), 0.5)
    a = epsilon_greedy(q, eps, torch.Generator().manual_seed(7))
    b = epsilon_greedy(q, eps, torch.Generator().manual_seed(7))
    c = epsilon_greedy(q, eps, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_boltzmann_low_temperature_is_argmax(gen):
    # distinct values at least 1 apart: softmax(q / 1e-3) is exactly one-hot in float32
    q = torch.stack([torch.randperm(5, generator=gen).float() for _ in range(300)])
    actions = boltzmann(q, 1e-3, gen)
    assert actions.dtype == torch.int64
    assert torch.equal(actions, q.argmax(1))


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_boltzmann_frequencies_match_softmax(temperature, gen):
    n = 30_000
    row = torch.tensor([0.0, 1.0, 2.0, -1.0])
    q = row.repeat(n, 1)
    actions = boltzmann(q, temperature, gen)
    freq = torch.bincount(actions, minlength=4).float() / n
    probs = torch.softmax(row / temperature, 0)
    assert torch.allclose(freq, probs, atol=0.015), (freq, probs)


def test_boltzmann_per_row(gen):
    n = 20_000
    q = torch.zeros(2 * n, 3)
    q[:n, 0] = 50.0  # first half: almost surely action 0
    q[n:, 2] = 50.0  # second half: almost surely action 2
    actions = boltzmann(q, 1.0, gen)
    assert (actions[:n] == 0).all()
    assert (actions[n:] == 2).all()


def test_boltzmann_same_seed_same_actions():
    q = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    a = boltzmann(q, 1.0, torch.Generator().manual_seed(3))
    b = boltzmann(q, 1.0, torch.Generator().manual_seed(3))
    c = boltzmann(q, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
