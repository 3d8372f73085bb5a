"""QR-DQN's loss (Dabney et al. 2018): N quantiles at the midpoints (2i + 1) / 2N regressed on
the N target samples r + gamma^k (1 - done) theta_j(s', a*) with the quantile Huber loss,
kappa 1 as the paper; the loss is also the row's priority. a* is the argmax of the online
network's Q (double DQN) or the target's, Q being the quantiles' mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdqn.learners.losses.contract import Loss
from fastdqn.nets.mlp import preprocess
from fastdqn.replay.rows import Batch


def quantile_midpoints(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """τ̂_i = (2i + 1) / 2n, i = 0..n−1: the quantile levels QR-DQN's atoms estimate."""
    return (2 * torch.arange(n, device=device, dtype=torch.float32) + 1) / (2 * n)


def quantile_huber_loss(quantiles: torch.Tensor, targets: torch.Tensor, kappa: float = 1.0
                        ) -> torch.Tensor:
    """Per-row quantile Huber loss [B] of predicted `quantiles` [B, N] against target samples
    [B, M]: Σ_i mean_j |τ̂_i − 1{u_ij < 0}| · L_κ(u_ij) / κ with u_ij = target_j − quantile_i
    (Dabney et al. 2018, eq. 10): QR-DQN's loss, and its priority."""
    u = targets.unsqueeze(1) - quantiles.unsqueeze(2)
    # huber_loss and where, not abs/pow/compare chains: [B, N, M] is large (5M values at
    # B 128, N = M = 200) and each extra pass over it costs more than the network (3.5x measured)
    huber = F.huber_loss(quantiles.unsqueeze(2).expand_as(u), targets.unsqueeze(1).expand_as(u),
                         reduction="none", delta=kappa)
    tau = quantile_midpoints(quantiles.shape[1], quantiles.device).reshape(1, -1, 1)
    weight = torch.where(u.detach() < 0, 1.0 - tau, tau)
    return (weight * huber).mean(2).sum(1) / kappa

def loss(online: torch.nn.Module, target: torch.nn.Module, batch: Batch, double: bool,
         td_loss: str) -> Loss:
    """Quantile Huber loss per row (`td_loss` is the scalar head's and is not read)."""
    rows = torch.arange(batch.actions.shape[0], device=batch.actions.device)
    quantiles = online.dist(preprocess(batch.obs))[rows, batch.actions]
    with torch.no_grad():
        x_next = preprocess(batch.next_obs)
        next_quantiles = target.dist(x_next)
        chooser = online(x_next) if double else next_quantiles.mean(2)
        chosen = next_quantiles[rows, chooser.argmax(1)]
        scale = (batch.discounts * (1.0 - batch.dones)).unsqueeze(1)
        targets = batch.rewards.unsqueeze(1) + scale * chosen
    per_row = quantile_huber_loss(quantiles, targets)
    return Loss(per_row, per_row.detach(), quantiles.detach().mean(1))
