"""The two distributional targets and losses Rainbow's heads train with, as plain tensor
functions (the reference every route of a distributional head will be checked against).

C51 (Bellemare et al. 2017) projects the n-step target distribution r + γ^k (1 − done) z onto
the fixed support z in its dense form: each target atom gives each support atom the mass
clamp(1 − |Tz − z_j| / Δz, 0, 1). Unlike the floor/ceil scatter-add form, a target that lands
exactly on an atom keeps all of its mass (floor == ceil there, and the scatter form drops it),
and there is no scatter-add, whose order on CUDA is not deterministic. It costs B·N² multiplies
instead of B·N: for N = 51 that is 2.6k per row, nothing beside the network.

QR-DQN (Dabney et al. 2018) regresses N quantiles at the midpoints τ̂_i = (2i + 1) / 2N with the
quantile Huber loss, κ = 1 by the paper.
"""

from __future__ import annotations

import torch


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
    weights = (1.0 - (target_atoms.unsqueeze(2) - support).abs() / delta).clamp(min=0.0)
    return torch.einsum("bi,bij->bj", next_probs, weights)


def categorical_loss(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy [B] of the predicted atoms' `logits` [B, N] against the projected
    target [B, N]: C51's loss, and Rainbow's priority."""
    return -(target_probs * torch.log_softmax(logits, dim=1)).sum(1)


def quantile_midpoints(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """τ̂_i = (2i + 1) / 2n, i = 0..n−1: the quantile levels QR-DQN's atoms estimate."""
    return (2 * torch.arange(n, device=device, dtype=torch.float32) + 1) / (2 * n)


def quantile_huber_loss(quantiles: torch.Tensor, targets: torch.Tensor, kappa: float = 1.0
                        ) -> torch.Tensor:
    """Per-row quantile Huber loss [B] of predicted `quantiles` [B, N] against target samples
    [B, M]: Σ_i mean_j |τ̂_i − 1{u_ij < 0}| · L_κ(u_ij) / κ with u_ij = target_j − quantile_i
    (Dabney et al. 2018, eq. 10): QR-DQN's loss, and its priority."""
    u = targets.unsqueeze(1) - quantiles.unsqueeze(2)
    huber = torch.where(u.abs() <= kappa, 0.5 * u.pow(2), kappa * (u.abs() - 0.5 * kappa))
    tau = quantile_midpoints(quantiles.shape[1], quantiles.device).reshape(1, -1, 1)
    weight = (tau - (u.detach() < 0).float()).abs()
    return (weight * huber / kappa).mean(2).sum(1)
