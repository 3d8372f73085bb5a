"""C51's loss (Bellemare et al. 2017): the n-step target distribution r + gamma^k (1 - done) z
of the next state's greedy action projected onto the fixed support z, and the cross-entropy of
the predicted distribution against it; the cross-entropy is also the row's priority, as in
Rainbow (Hessel et al. 2018).

The projection is the dense form: each target atom gives each support atom the mass
clamp(1 - |Tz - z_j| / dz, 0, 1). Unlike the floor/ceil scatter-add form, a target that lands
exactly on an atom keeps all of its mass (floor == ceil there, and the scatter form drops it),
and there is no scatter-add, whose order on CUDA is not deterministic. It costs B N^2 multiplies
instead of B N: for N = 51 that is 2.6k per row, nothing beside the network.

The next action is the argmax of the online network's Q (double DQN) or the target's, Q being
each distribution's mean: the same Q acting reads.
"""

from __future__ import annotations

import torch

from fastdqn.learners.losses.contract import Loss
from fastdqn.nets.mlp import preprocess
from fastdqn.replay.rows import Batch


def project_onto_support(next_probs: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor,
                         discounts: torch.Tensor | float, support: torch.Tensor) -> torch.Tensor:
    """The target distribution [B, N] on `support` [N] (evenly spaced, ascending) of
    r + discounts · (1 − dones) · z under `next_probs` [B, N]. Targets beyond the support land
    on its end atoms; a terminal row (dones = 1) puts all its mass at r. `discounts` is γ^k of
    each row's n-step window (the replay's discount column), so a truncated window bootstraps
    with its own k."""
    delta = support[1] - support[0]
    scale = (discounts * (1.0 - dones)).reshape(-1, 1)
    target_atoms = (rewards.reshape(-1, 1) + scale * support).clamp(support[0], support[-1])
    # 1 - |Tz_i - z_j| / dz, clamped at 0, in place: [B, N, N] is the step's largest tensor
    # (relu_ rather than clamp_: the same values, and vmap has a batching rule for it)
    weights = (target_atoms.unsqueeze(2) - support).abs_().div_(-delta).add_(1.0).relu_()
    return torch.einsum("bi,bij->bj", next_probs, weights)


def categorical_loss(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy [B] of the predicted atoms' `logits` [B, N] against the projected
    target [B, N]: C51's loss, and Rainbow's priority."""
    return -(target_probs * torch.log_softmax(logits, dim=1)).sum(1)



def loss(online: torch.nn.Module, target: torch.nn.Module, batch: Batch, double: bool,
         td_loss: str) -> Loss:
    """Cross-entropy per row against the projected target (`td_loss` is the scalar head's and
    is not read: the settings refuse --loss with a distributional head)."""
    rows = torch.arange(batch.actions.shape[0], device=batch.actions.device)
    logits = online.dist(preprocess(batch.obs))[rows, batch.actions]
    support = target.value.support
    with torch.no_grad():
        x_next = preprocess(batch.next_obs)
        next_logits = target.dist(x_next)
        next_probs = torch.softmax(next_logits, 2)
        chooser = online(x_next) if double else (next_probs * support).sum(2)
        chosen = next_probs[rows, chooser.argmax(1)]
        target_probs = project_onto_support(chosen, batch.rewards, batch.dones, batch.discounts,
                                            support)
    per_row = categorical_loss(logits, target_probs)
    q = (torch.softmax(logits.detach(), 1) * support).sum(1)
    return Loss(per_row, per_row.detach(), q)
