"""Exploration: epsilon schedules (host scalars) and batched action selection on the device."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fastdqn.core import cuda_capture
from fastdqn.core.selfcheck import check_route, warn_fallback
from fastdqn.nets.mlp import MLP, preprocess


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


QFunction = Callable[[torch.Tensor], torch.Tensor]
"""obs -> Q-values: the plain forward pass or a graph's replay."""


def decoy_obs(obs: torch.Tensor) -> torch.Tensor:
    """An input unlike `obs` (zeros, or ones where obs is all zero) for the acting graph to be
    captured on: replayed on `obs`, a working graph gives Q(obs), while one that replays
    nothing still holds the output of its capture."""
    return torch.zeros_like(obs) if bool(obs.any()) else torch.ones_like(obs)


class ActingQ:
    """Q-values of the acting batch (one row per env) under the online parameters.

    On CUDA with `graph`, the forward pass is captured once as a CUDA graph over a static
    observation tensor: each act step is then one copy and one replay instead of a kernel
    launch per layer. The graph reads the live parameter storage, so it always sees the
    latest update. It is used only if it passes a self-check at construction (see
    `prove_fast_route`); elsewhere, or after a fallback, it is the plain forward pass.
    """

    def __init__(self, net: MLP, views: list, example_obs: torch.Tensor, graph: bool,
                 native=None) -> None:
        self.net, self.views = net, views
        self.graph: torch.cuda.CUDAGraph | None = None
        self.fallbacks: list[str] = []
        self._fast: QFunction | None = None
        self.native = None  # the native actor (native.NativeActor) once it proved itself
        if graph and example_obs.device.type == "cuda":
            self.prove_fast_route(self._capture, example_obs)
        elif native is not None and example_obs.device.type == "cpu":
            if self.prove_fast_route(lambda decoy: native.q, example_obs,
                                     "the native acting step", "acting native"):
                self.native = native

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The plain (eager) forward pass."""
        return self.net.forward(self.views, preprocess(obs))

    @torch.no_grad()
    def prove_fast_route(self, capture: Callable[[torch.Tensor], QFunction],
                         example_obs: torch.Tensor, what: str = "acting CUDA graph",
                         tag: str = "acting cuda-graph") -> bool:
        """Build the fast route with `capture` (given a decoy input, it returns the function
        that maps obs to Q) and keep it if its Q on `example_obs` matches the plain forward
        pass; otherwise warn once, record why in `fallbacks`, and stay on the plain forward.
        Returns whether the fast route is in use."""
        if self.fallbacks:
            return False
        built: list[QFunction] = []

        def fast() -> dict[str, torch.Tensor]:
            built.append(capture(decoy_obs(example_obs)))
            return {"q": built[0](example_obs)}

        reason = check_route(fast, lambda: {"q": self.forward(example_obs)})
        if reason is None:
            self._fast = built[0]
            return True
        self._fast, self.graph = None, None
        self.fallbacks.append(f"{tag}: {reason}")
        warn_fallback(what, "the plain forward pass", reason)
        return False

    @torch.no_grad()
    def _capture(self, obs: torch.Tensor) -> QFunction:
        """The forward pass captured as a CUDA graph on `obs`'s device (every CUDA call under
        that device, whichever one is current), and its replay."""
        dev = obs.device
        with torch.cuda.device(dev):
            static_obs = obs.clone()
            cuda_capture.warm_up(torch.cuda.Stream(device=dev), lambda: self.forward(static_obs), 3)
            graph = torch.cuda.CUDAGraph()
            static_q = cuda_capture.capture(graph, torch.cuda.Stream(device=dev),
                                            lambda: self.forward(static_obs))
        self.graph = graph

        def replay(obs: torch.Tensor) -> torch.Tensor:
            with torch.cuda.device(dev):
                static_obs.copy_(obs)
                graph.replay()
            return static_q

        return replay

    @torch.no_grad()
    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        if self._fast is None:
            return self.forward(obs)
        return self._fast(obs)
