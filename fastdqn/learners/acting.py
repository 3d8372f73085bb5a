"""The flat MLP's acting Q-values: the fast routes (a CUDA-graph forward pass on CUDA, the
native actor on a CPU), each kept only once it agrees with the plain forward pass.

Whether a route is tried is route.py's choice (`Route.acting_graphs`, `Route.native`); a route
tried here may still fall back after its self-check, with one warning, and `fallbacks` says why
(summary.json's `route_fallbacks`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastdqn.core import cuda_capture
from fastdqn.core.selfcheck import check_route, warn_fallback
from fastdqn.learners.native import NativeActor
from fastdqn.nets.mlp import MLP, preprocess

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
    latest update. On a CPU with `native` (the learner's native actor), the Q-values, and
    epsilon-greedy's actions, are one native call. Either is used only if it passes a
    self-check at construction (see `prove_fast_route`); elsewhere, or after a fallback, it is
    the plain forward pass.
    """

    def __init__(self, net: MLP, views: list, example_obs: torch.Tensor, graph: bool,
                 native: NativeActor | None = None) -> None:
        self.net, self.views = net, views
        self.graph: torch.cuda.CUDAGraph | None = None
        self.fallbacks: list[str] = []
        self._fast: QFunction | None = None
        self.native: NativeActor | None = None  # the native actor, once it proved itself
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
