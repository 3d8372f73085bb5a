"""Exploration: epsilon schedules (host scalars) and batched action selection on the device.
The Q-values it selects from come from the learner's acting route (`learners.acting.ActingQ`
for the flat MLP)."""

from __future__ import annotations

import math

import torch


def linear_epsilon(step: int, start: float, end: float, decay_steps: int) -> float:
    """Straight line from start to end over decay_steps env steps, then flat."""
    if decay_steps <= 0 or step >= decay_steps:
        return end
    return start + (end - start) * step / decay_steps


def exponential_epsilon(step: int, start: float, end: float, decay_steps: int) -> float:
    """end + (start - end) * exp(-step / decay_steps), the tutorials' EPS_DECAY form."""
    if decay_steps <= 0:
        return end
    return end + (start - end) * math.exp(-step / decay_steps)


def per_episode_epsilon(episodes: int, start: float, end: float, decay: float) -> float:
    """start * decay**episodes, floored at end (multiplied once per finished episode)."""
    return max(end, start * decay**episodes)


class EpsilonSchedule:
    """The configured schedule as a function of env steps and finished episodes."""

    def __init__(self, kind: str, start: float, end: float, decay_steps: int,
                 episode_decay: float) -> None:
        self.kind, self.start, self.end = kind, start, end
        self.decay_steps, self.episode_decay = decay_steps, episode_decay

    def __call__(self, step: int, episodes: int) -> float:
        if self.kind == "linear":
            return linear_epsilon(step, self.start, self.end, self.decay_steps)
        if self.kind == "exponential":
            return exponential_epsilon(step, self.start, self.end, self.decay_steps)
        return per_episode_epsilon(episodes, self.start, self.end, self.episode_decay)


def epsilon_greedy(q: torch.Tensor, eps: torch.Tensor, generator: torch.Generator
                   ) -> torch.Tensor:
    """Per row i: a uniform random action with probability eps[i], else argmax q[i].

    One draw of [2, n] uniforms u decides both: row i explores if u[0, i] < eps[i] and then
    takes floor(u[1, i] * n_actions). The native actor (csrc/) maps the same uniforms the same
    way, so both routes act alike on the same generator."""
    n, n_actions = q.shape
    u = torch.rand((2, n), generator=generator, device=q.device)
    random_actions = (u[1] * n_actions).long().clamp_(max=n_actions - 1)
    return torch.where(u[0] < eps, random_actions, q.argmax(1))


def boltzmann(q: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Sample actions from softmax(q / temperature), row by row.

    The row maximum is subtracted before dividing: q / temperature alone overflows float32 for
    large |Q| or a small temperature (inf - inf = NaN in the softmax), while (q - max) / T is
    <= 0 everywhere and exactly 0 at the maximum. Non-finite Q-values are the caller's to catch.
    """
    probs = torch.softmax((q - q.amax(1, keepdim=True)) / temperature, dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
