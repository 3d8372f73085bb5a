"""What every loss gives the learner (the interface of learners/losses/)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from fastdqn.replay.rows import Batch


class Loss(NamedTuple):
    """What one loss evaluation gives the learner, each [B]."""

    per_row: torch.Tensor
    """The loss of each row, with the graph (weighted and averaged by the learner)."""
    priority: torch.Tensor
    """Each row's new priority (no graph)."""
    q_taken: torch.Tensor
    """Q(s, a) of each row's action (no graph), for the logged mean Q."""


LossFn = Callable[[torch.nn.Module, torch.nn.Module, Batch, bool, str], Loss]
"""(online, target, batch, double, td_loss) -> Loss."""
