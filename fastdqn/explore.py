"""Exploration: epsilon schedules (host scalars) and batched action selection on the device."""

from __future__ import annotations

import math

import torch

from .networks import MLP, preprocess


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
    """Per row i: a uniform random action with probability eps[i], else argmax q[i]."""
    n, n_actions = q.shape
    random_actions = torch.randint(n_actions, (n,), generator=generator, device=q.device)
    explore = torch.rand(n, generator=generator, device=q.device) < eps
    return torch.where(explore, random_actions, q.argmax(1))


def boltzmann(q: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Sample actions from softmax(q / temperature), row by row.

    The row maximum is subtracted before dividing: q / temperature alone overflows float32 for
    large |Q| or a small temperature (inf - inf = NaN in the softmax), while (q - max) / T is
    <= 0 everywhere and exactly 0 at the maximum. Non-finite Q-values are the caller's to catch.
    """
    probs = torch.softmax((q - q.amax(1, keepdim=True)) / temperature, dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class ActingQ:
    """Q-values of the acting batch (one row per env) under the online parameters.

    On CUDA with `graph`, the forward pass is captured once as a CUDA graph over a static
    observation tensor: each act step is then one copy and one replay instead of a kernel
    launch per layer. The graph reads the live parameter storage, so it always sees the
    latest update. Elsewhere it is the plain forward pass.
    """

    def __init__(self, net: MLP, views: list, example_obs: torch.Tensor, graph: bool) -> None:
        self.net, self.views = net, views
        self.graph: torch.cuda.CUDAGraph | None = None
        if graph and example_obs.device.type == "cuda":
            self.static_obs = example_obs.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(3):
                    net.forward(views, preprocess(self.static_obs))
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.no_grad():
                self.static_q = net.forward(views, preprocess(self.static_obs))

    @torch.no_grad()
    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            return self.net.forward(self.views, preprocess(obs))
        self.static_obs.copy_(obs)
        self.graph.replay()
        return self.static_q
