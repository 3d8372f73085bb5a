"""How every CUDA graph in fastdqn is captured: the learner's K steps (learner.py), the module
learner's update (graphed_update.py) and the acting forward pass (explore.py).

Torch's rules for a capture: the work runs eagerly a few times first on a side stream (lazy
allocations, cuBLAS workspaces and cuDNN's algorithm choice must happen outside the graph), and
the capture itself runs on a stream of the device being captured. Two failure modes are handled
here once rather than at each site: `torch.cuda.graph`'s default capture stream belongs to
whichever device was current at the process's first capture (so a later capture on another
device would record onto a foreign stream), and when `capture_end` raises (a capture that a host
sync invalidated) `torch.cuda.graph` skips putting the current stream back, so every later op of
the run would go to the capture stream, unordered with the rest.

Both functions expect the device of the streams they are given to be current
(`with torch.cuda.device(dev)`), as every caller's is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def warm_up(side: torch.cuda.Stream, run: Callable[[], object], times: int = 1) -> None:
    """Run `run` `times` times eagerly on `side`, after the current stream's pending work and
    before its next, even if `run` raises (the caller then restores state on the current stream,
    which must not overtake the side stream's writes)."""
    current = torch.cuda.current_stream(side.device)
    side.wait_stream(current)
    try:
        with torch.cuda.stream(side):
            for _ in range(times):
                run()
    finally:
        current.wait_stream(side)


def capture(graph: torch.cuda.CUDAGraph, stream: torch.cuda.Stream,
            record: Callable[[], T]) -> T:
    """Capture `record` into `graph` on `stream` (a stream of the device being captured), with
    the current stream put back whether the capture worked or raised. Returns what `record`
    returned: the static output tensors the replays write."""
    current = torch.cuda.current_stream(stream.device)
    try:
        with torch.cuda.graph(graph, stream=stream):
            return record()
    finally:  # a failing capture_end skips torch.cuda.graph's own stream reset
        torch.cuda.set_stream(current)
