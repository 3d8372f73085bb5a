"""The reference learner's update replayed as a CUDA graph: the route a CNN trains on on CUDA.

A Nature-CNN step is about 60 kernel launches (three convolutions and two fc layers forward for
the online and target nets, the backward, the clip, Adam); at batch 32 on a GPU each is a few
microseconds of work behind as long a launch. Captured once, a step is one copy of the sampled
batch into static tensors (uint8 frames, scaled to [0, 1] inside the graph) and one replay.

What is captured is `ReferenceLearner.update` itself, on static inputs (`StaticUpdate`), so the
graph runs the same torch code as the reference route. The target network's periodic copy and
the step counter stay on the host, outside the graph. A graph is captured per batch layout the
first time it is seen (after the first step, which creates the optimizer state and gradients
eagerly) and must pass the self-check before it replaces eager steps: captured, restored to the
state before its warm-up, replayed on the batch, then compared tensor by tensor with the eager
update of the same batch from the same state (`prove`). The eager result is what stays, so a
run follows the eager trajectory whatever the graph did; a graph that raises or disagrees turns
the route off for good with one warning, and the reason goes into summary.json.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from fastdqn.core import cuda_capture
from fastdqn.core.selfcheck import check_route, warn_fallback
from fastdqn.replay.rows import FIELDS, Batch

WARMUP = 3
"""Eager runs on a side stream before capture (torch's rule for capturing autograd and
optimizer steps: lazy allocations and cuDNN's algorithm choice must happen outside the graph)."""


class GraphedLearner(Protocol):
    """What the graphs need of their learner (`reference.ReferenceLearner`): its update and its
    state (to capture, restore and compare), and where a failed self-check turns them off."""

    device: torch.device
    optimizer: torch.optim.Optimizer
    fallbacks: list[str]
    graphs: GraphedUpdates | None

    def update(self, batch: Batch, weights: torch.Tensor | None) -> torch.Tensor: ...

    def snapshot(self) -> dict[str, torch.Tensor]: ...

    def restore(self, snap: dict[str, torch.Tensor]) -> None: ...


class StaticUpdate:
    """A learner's `update` on input tensors that never move: what a graph captures."""

    def __init__(self, learner: GraphedLearner, batch: Batch,
                 weights: torch.Tensor | None) -> None:
        self.learner = learner
        self.batch = Batch(*(getattr(batch, f).clone() for f in FIELDS))
        self.weights = None if weights is None else weights.clone()
        self.td = torch.zeros(0)

    @torch.no_grad()
    def load(self, batch: Batch, weights: torch.Tensor | None) -> None:
        """Copy a sampled batch (and its importance weights) into the static inputs."""
        for f in FIELDS:
            getattr(self.batch, f).copy_(getattr(batch, f))
        if self.weights is not None:
            self.weights.copy_(weights)

    def run(self) -> torch.Tensor:
        """The update on the static inputs; its |TD error| stays in `td` for the replays."""
        self.td = self.learner.update(self.batch, self.weights)
        return self.td


def layout(batch: Batch, weights: torch.Tensor | None) -> tuple:
    """What a graph is specific to: each field's shape and dtype, and whether rows are weighted."""
    return (tuple((tuple(getattr(batch, f).shape), getattr(batch, f).dtype) for f in FIELDS),
            weights is not None)


class GraphedUpdates:
    """The graphs of one learner, one per batch layout, each proven before it is used."""

    def __init__(self, learner: GraphedLearner) -> None:
        self.learner = learner
        self.graphs: dict[tuple, tuple[StaticUpdate, torch.cuda.CUDAGraph]] = {}
        # The warm-up and capture streams, made at the first capture (on the learner's device).
        self.streams: tuple[torch.cuda.Stream, torch.cuda.Stream] | None = None

    def __call__(self, batch: Batch, weights: torch.Tensor | None) -> torch.Tensor | None:
        """|TD error| of the update done on this batch, or None when the caller must run it
        eagerly (the first step: the optimizer has no state to capture yet)."""
        if not self.learner.optimizer.state:
            return None
        key = layout(batch, weights)
        if key not in self.graphs:
            return self.prove(batch, weights, lambda: self.capture_and_replay(key, batch, weights))
        static, graph = self.graphs[key]
        with torch.cuda.device(self.learner.device):
            static.load(batch, weights)
            graph.replay()
        return static.td.clone()

    def capture_and_replay(self, key: tuple, batch: Batch,
                           weights: torch.Tensor | None) -> torch.Tensor:
        """Capture the update on `learner.device` (whichever device is current), put the
        learner back where it was before the warm-up, whether the capture worked or raised, and
        replay the graph once on `batch`."""
        learner = self.learner
        before = learner.snapshot()
        static = StaticUpdate(learner, batch, weights)
        try:
            graph = self.capture(static)
        finally:  # the warm-up runs were real updates: undone however the capture ended
            learner.restore(before)
        with torch.cuda.device(learner.device):
            static.load(batch, weights)
            graph.replay()
        self.graphs[key] = (static, graph)
        return static.td

    def capture(self, static: StaticUpdate) -> torch.cuda.CUDAGraph:
        """WARMUP eager runs of `static` on a side stream, then its capture on an explicit
        stream, both of the learner's device and under it (cuda_capture.py)."""
        dev = self.learner.device
        with torch.cuda.device(dev):
            if self.streams is None:
                self.streams = torch.cuda.Stream(device=dev), torch.cuda.Stream(device=dev)
            side, stream = self.streams
            cuda_capture.warm_up(side, static.run, WARMUP)
            graph = torch.cuda.CUDAGraph()
            cuda_capture.capture(graph, stream, static.run)
        return graph

    def prove(self, batch: Batch, weights: torch.Tensor | None,
              fast: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run the update on `fast`, then eagerly from the same state, and compare every tensor
        it changes and the |TD error|; the eager result stays either way and its |TD error| is
        returned. On disagreement (or if `fast` raised) the graphs are off for good."""
        learner = self.learner
        before = {**learner.snapshot(), "td": torch.zeros_like(batch.rewards)}
        eager_td: list[torch.Tensor] = []

        def run(route: Callable[[], torch.Tensor], keep: list | None = None) -> dict:
            td = route()
            if keep is not None:
                keep.append(td)
            return {**learner.snapshot(), "td": td.clone()}

        reason = check_route(lambda: run(fast),
                             lambda: run(lambda: learner.update(batch, weights), eager_td),
                             lambda: learner.restore(before), before)
        if reason is not None:
            self.graphs.clear()
            learner.graphs = None
            learner.fallbacks.append(f"learner cuda-graphs: {reason}")
            warn_fallback("learner CUDA graphs", "the eager reference step", reason)
        return eager_td[0]
