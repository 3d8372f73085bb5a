"""The scalar head's loss: the TD error of one Q per action (Mnih et al. 2015; double DQN, van
Hasselt et al. 2016), Huber (delta 1) or squared, and |TD error| as the priority.

    y = R + discount * (1 - terminated) * Q_target(s', a*),  a* = argmax_a Q_online(s', a) (double)
                                                                  or argmax_a Q_target(s', a)

`discount` is the replay's column: gamma^k of the row's n-step window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdqn.learners.losses.contract import Loss
from fastdqn.nets.mlp import preprocess
from fastdqn.replay.rows import Batch


@torch.no_grad()
def td_targets(online: torch.nn.Module, target: torch.nn.Module, batch: Batch,
               double: bool) -> torch.Tensor:
    """y for each row, a* chosen by the online net (double DQN) or the target net."""
    x_next = preprocess(batch.next_obs)
    q_next_all = target(x_next)
    chooser = online(x_next) if double else q_next_all
    q_next = q_next_all.gather(1, chooser.argmax(1, keepdim=True)).squeeze(1)
    return batch.rewards + batch.discounts * (1.0 - batch.dones) * q_next


def q_taken(net: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Q(s, a) of each row's own action (with the graph, where gradients are on)."""
    return net(preprocess(batch.obs)).gather(1, batch.actions.unsqueeze(1)).squeeze(1)


def loss(online: torch.nn.Module, target: torch.nn.Module, batch: Batch, double: bool,
         td_loss: str) -> Loss:
    """Huber (`td_loss` "huber") or squared TD error per row; |TD error| as the priority."""
    q_a = q_taken(online, batch)
    y = td_targets(online, target, batch, double)
    per_row = (F.smooth_l1_loss(q_a, y, reduction="none") if td_loss == "huber"
               else F.mse_loss(q_a, y, reduction="none"))
    q = q_a.detach()
    return Loss(per_row, (q - y).abs(), q)
