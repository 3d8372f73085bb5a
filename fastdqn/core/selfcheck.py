"""The self-check a fast route (a CUDA graph) must pass before it replaces the eager torch ops.

A wrong capture fails silently: the graph replays nothing, or replays onto stale memory, while
training goes on. So on first use each fast route is run side by side with the eager route from
the same state and kept only if both agree; otherwise the caller falls back to the eager route
with one warning. This module is plain tensor code, so the CPU tests exercise the logic that
decides on CUDA.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import torch

from fastdqn.errors import RouteFallbackWarning

RTOL = 1e-3
"""Allowed difference per tensor, relative to how far the eager route moved it (or, with no
`before`, to its largest value): graph replay runs the same kernels, so real disagreement is
orders of magnitude above float rounding, and a graph that replays nothing differs by 100%."""
ATOL = 1e-6
"""Absolute slack for tensors the checked steps barely move (float32 rounding of parameters)."""




def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b|; equal values (inf included) and NaN on both sides count as no difference,
    NaN on one side only as NaN, so a fast route that produces NaN never passes."""
    a, b = a.detach().double(), b.detach().double()
    same = (a == b) | (a.isnan() & b.isnan())
    diff = torch.where(same, torch.zeros_like(a), (a - b).abs())
    return float(diff.amax()) if diff.numel() else 0.0


def _largest(t: torch.Tensor) -> float:
    """max |t| over its finite values (0 for an empty tensor)."""
    finite = torch.nan_to_num(t.abs(), nan=0.0, posinf=0.0)
    return float(finite.amax()) if finite.numel() else 0.0


def disagreement(fast: Mapping[str, torch.Tensor], eager: Mapping[str, torch.Tensor],
                 before: Mapping[str, torch.Tensor] | None = None) -> str | None:
    """The first tensor where `fast` and `eager` differ beyond tolerance, as
    'max |diff| 3.0e-02 on params vs eager', or None when they agree.

    With `before` (the state both started from) the tolerance scales with the eager route's
    change of each tensor, so it is as strict for a small learning rate as for a large one.
    """
    for name, want in eager.items():
        diff = max_abs_diff(fast[name], want)
        moved = want.detach().double()
        if before is not None:
            moved = moved - before[name].detach().double()
        if not diff <= ATOL + RTOL * _largest(moved):  # `not <=`: a NaN difference disagrees
            return f"max |diff| {diff:.1e} on {name} vs eager"
    return None


def check_route(fast: Callable[[], Mapping[str, torch.Tensor]],
                eager: Callable[[], Mapping[str, torch.Tensor]],
                restore: Callable[[], None] | None = None,
                before: Mapping[str, torch.Tensor] | None = None) -> str | None:
    """Run `fast`, then `restore` the starting state, then `eager`; the eager result is what
    stays. Returns None if both gave the same tensors, else why the fast route is unusable.

    `eager` always runs (after `restore`, whatever `fast` did or raised), so the caller's state
    ends exactly as if only the eager route had run.
    """
    got, reason = None, None
    try:
        got = fast()
    except Exception as e:  # any failure of the fast route means: use the eager one
        lines = str(e).strip().splitlines()
        reason = f"raised {type(e).__name__}" + (f": {lines[0][:200]}" if lines else "")
    if restore is not None:
        restore()
    want = eager()
    if got is None:
        return reason
    return disagreement(got, want, before)


def fallback_message(what: str, instead: str, reason: str) -> str:
    """The one console line of a fallback."""
    return f"fastdqn: {what} failed the self-check ({reason}); using {instead}"


def warn_fallback(what: str, instead: str, reason: str) -> None:
    """Warn on the console that a fast route is off; callers fall back for good, so once."""
    warnings.warn(fallback_message(what, instead, reason), RouteFallbackWarning, stacklevel=3)
