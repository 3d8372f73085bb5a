"""QR-DQN's loss (Dabney et al. 2018): N quantiles at the midpoints (2i + 1) / 2N regressed on
the N target samples r + gamma^k (1 - done) theta_j(s', a*) with the quantile Huber loss,
kappa 1 as the paper; the loss is also the row's priority. a* is the argmax of the online
network's Q (double DQN) or the target's, Q being the quantiles' mean.
"""

from __future__ import annotations

import torch

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
    (Dabney et al. 2018, eq. 10): QR-DQN's loss, and its priority. Differentiable in both."""
    return _QuantileHuber.apply(quantiles, targets, float(kappa))


CHUNK = 1 << 18
"""Values of [rows, N, M] worked on at once by the quantile loss (1 MiB of float32 a tensor)."""


class _QuantileHuber(torch.autograd.Function):
    """The loss with its gradient written out: [B, N, M] is large (5M values at B 128, N = M =
    200) and autograd through the elementwise formula keeps several tensors of that size and
    passes over each again backward (measured 4x slower per step); it is also worked through
    in blocks of rows of CHUNK values, which stay in the CPU's cache (4x faster again at those
    sizes on a 2-core EPYC than one pass over all rows). With k = clamp(u, -κ, κ),
    L_κ(u) = k (u - k / 2) and dL_κ/du = k, so the loss needs w·k once and the gradients are
    its sums: dloss/dθ_i = -mean_j w_ij k_ij / κ, dloss/dT_j = Σ_i w_ij k_ij / (M κ)."""

    @staticmethod
    def forward(ctx, quantiles: torch.Tensor, targets: torch.Tensor, kappa: float
                ) -> torch.Tensor:
        q, t = quantiles.detach(), targets.detach()
        (b, n), m = q.shape, t.shape[1]
        tau = quantile_midpoints(n, q.device).to(q.dtype).reshape(1, -1, 1)
        per_row, d_q, d_t = q.new_empty(b), q.new_empty(b, n), t.new_empty(b, m)
        step = max(1, CHUNK // (n * m))
        for lo in range(0, b, step):
            rows = slice(lo, lo + step)
            u = t[rows].unsqueeze(1) - q[rows].unsqueeze(2)
            k = u.clamp(-kappa, kappa)
            wk = torch.where(u < 0, 1.0 - tau, tau).mul_(k)
            torch.sum(torch.linalg.vecdot(wk, u.sub_(k, alpha=0.5), dim=2), 1, out=per_row[rows])
            torch.sum(wk, 2, out=d_q[rows])
            torch.sum(wk, 1, out=d_t[rows])
        scale = 1.0 / (kappa * m)
        ctx.save_for_backward(d_q.mul_(-scale), d_t.mul_(scale))
        return per_row.mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        d_quantiles, d_targets = ctx.saved_tensors
        g = grad.unsqueeze(1)
        return (None if d_quantiles is None else d_quantiles * g,
                None if d_targets is None else d_targets * g, None)


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
