"""TD targets, loss, gradient step and target-network update; pure tensor code, testable on CPU.

All state lives in a few flat tensors (online params, their grad, target params, Adam moments),
so one update is a fixed sequence of tensor ops on fixed buffers: no host syncs, and on CUDA the
whole K-step update can be captured as a CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .networks import MLP, preprocess
from .replay import Batch


def td_target(net: MLP, online: list, target: list, rewards: torch.Tensor, next_obs: torch.Tensor,
              dones: torch.Tensor, gamma: float, double: bool) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * Q_target(s', a*), a* from the online net if double."""
    x = preprocess(next_obs)
    q_next_target = net.forward(target, x)
    if double:
        a_star = net.forward(online, x).argmax(1, keepdim=True)
        q_next = q_next_target.gather(1, a_star).squeeze(1)
    else:
        q_next = q_next_target.amax(1)
    return rewards + gamma * (1.0 - dones) * q_next


def make_adam(params: torch.Tensor, lr: float, eps: float, capturable: bool = False
              ) -> tuple[torch.optim.Adam, str]:
    """Adam with the fused kernel where this torch supports it on the device, else foreach."""
    try:
        return torch.optim.Adam([params], lr=lr, eps=eps, fused=True,
                                capturable=capturable), "fused"
    except (RuntimeError, ValueError):
        return torch.optim.Adam([params], lr=lr, eps=eps, foreach=True,
                                capturable=capturable), "foreach"


class Learner:
    """Online and target MLP parameters plus Adam, updated by `update(batch)`."""

    def __init__(self, net: MLP, *, lr: float, gamma: float, tau: float,
                 target_update_interval: int, loss: str = "huber", double_dqn: bool = True,
                 max_grad_norm: float = 10.0, adam_eps: float = 1e-8,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None,
                 init: torch.Tensor | None = None, capturable: bool = False) -> None:
        self.net = net
        self.device = torch.device(device)
        flat = init if init is not None else net.init(generator or torch.Generator())
        self.params = torch.nn.Parameter(flat.to(self.device, torch.float32).clone())
        self.params.grad = torch.zeros_like(self.params)
        self.target = self.params.detach().clone()
        self.online_views = net.views(self.params.detach())
        self.target_views = net.views(self.target)
        self.grad_views = net.views(self.params.grad)
        self.optimizer, self.adam_kind = make_adam(self.params, lr, adam_eps, capturable)
        self.gamma, self.tau, self.interval = gamma, tau, target_update_interval
        self.loss_kind, self.double, self.max_grad_norm = loss, double_dqn, max_grad_norm
        self.steps = 0
        # Running sums for logging, read (one host sync) only when the logger asks.
        self.loss_sum = torch.zeros((), device=self.device)
        self.q_sum = torch.zeros((), device=self.device)
        self.stat_count = 0

    @torch.no_grad()
    def update(self, batch: Batch) -> None:
        """One gradient step on `batch`, then the target update when it is due."""
        self.compute_grad(batch)
        self.clip_grad()
        self.optimizer.step()
        self.steps += 1
        if self.steps % self.interval == 0:
            self.update_target()

    @torch.no_grad()
    def compute_grad(self, batch: Batch) -> None:
        """Loss gradient into params.grad (hand-written backward; tested against autograd)."""
        y = td_target(self.net, self.online_views, self.target_views, batch.rewards,
                      batch.next_obs, batch.dones, self.gamma, self.double)
        q, acts = self.net.forward_train(self.online_views, preprocess(batch.obs))
        a = batch.actions.unsqueeze(1)
        q_a = q.gather(1, a).squeeze(1)
        diff = q_a - y
        n = diff.shape[0]
        if self.loss_kind == "huber":
            loss = F.smooth_l1_loss(q_a, y)
            g = diff.clamp(-1.0, 1.0).div_(n)
        else:
            loss = F.mse_loss(q_a, y)
            g = diff.mul(2.0 / n)
        dq = torch.zeros_like(q).scatter_(1, a, g.unsqueeze(1))
        self.net.backward(self.online_views, acts, dq, self.grad_views)
        self.loss_sum += loss
        self.q_sum += q_a.mean()
        self.stat_count += 1

    @torch.no_grad()
    def clip_grad(self) -> None:
        """Scale the flat gradient to norm <= max_grad_norm without a host sync."""
        if self.max_grad_norm > 0:
            g = self.params.grad
            scale = (self.max_grad_norm / (torch.linalg.vector_norm(g) + 1e-6)).clamp_(max=1.0)
            g.mul_(scale)

    @torch.no_grad()
    def update_target(self) -> None:
        """target <- tau*online + (1-tau)*target: one lerp over the flat vector (tau=1 copies)."""
        if self.tau >= 1.0:
            self.target.copy_(self.params.detach())
        else:
            self.target.lerp_(self.params.detach(), self.tau)

    def pop_stats(self) -> tuple[float, float] | None:
        """Mean loss and mean Q(s,a) since the last call (this is the host sync), or None."""
        if self.stat_count == 0:
            return None
        loss = float(self.loss_sum) / self.stat_count
        q = float(self.q_sum) / self.stat_count
        self.loss_sum.zero_()
        self.q_sum.zero_()
        self.stat_count = 0
        return loss, q

    def state_dict(self) -> dict:
        return {"params": self.params.detach().cpu().clone(), "target": self.target.cpu().clone(),
                "optimizer": self.optimizer.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.params.copy_(state["params"].to(self.device))
            self.target.copy_(state["target"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
