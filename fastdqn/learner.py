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


STATS_EVERY = 8
"""Loss and mean Q are recorded on every 8th learner step: the logged means are unbiased
samples, and the other steps skip three ops."""


class FlatAdam:
    """Adam over one flat parameter vector, called without torch.optim's per-step Python work.

    torch.optim.Adam spends ~70 us of Python per step on a single tensor (measured here), more
    than the update itself. This calls the same fused kernel directly where the device has it
    and otherwise runs the textbook update as five in-place ops on the flat vectors. The step
    count is a device tensor, so the update needs no host sync and can be graph-captured.
    """

    def __init__(self, params: torch.Tensor, grad: torch.Tensor, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.grad = params, grad
        self.lr, self.betas, self.eps = lr, betas, eps
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        self.step_count = torch.zeros((), dtype=torch.float32, device=params.device)
        fused = getattr(torch, "_fused_adam_", None)
        self.kind = "fused" if fused is not None and self._fused_works() else "flat"

    def _fused_works(self) -> bool:
        """Try the fused kernel once on scratch tensors of this device."""
        try:
            p = torch.zeros(4, device=self.params.device)
            torch._fused_adam_([p], [torch.ones_like(p)], [torch.zeros_like(p)],
                               [torch.zeros_like(p)], [], [torch.ones((), device=p.device)],
                               lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                               amsgrad=False, maximize=False)
            return True
        except (RuntimeError, NotImplementedError, TypeError):
            return False

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        self.step_count += 1
        if self.kind == "fused":
            torch._fused_adam_([self.params], [self.grad], [self.exp_avg], [self.exp_avg_sq], [],
                               [self.step_count], lr=self.lr, beta1=b1, beta2=b2,
                               weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)
            return
        self.exp_avg.lerp_(self.grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(self.grad, self.grad, value=1 - b2)
        bc1 = 1 - torch.pow(b1, self.step_count)
        bc2_sqrt = (1 - torch.pow(b2, self.step_count)).sqrt_()
        denom = (self.exp_avg_sq.sqrt() / bc2_sqrt).add_(self.eps)
        self.params.addcdiv_(self.exp_avg, denom * (bc1 / self.lr), value=-1.0)

    def state_dict(self) -> dict:
        return {"exp_avg": self.exp_avg.cpu().clone(), "exp_avg_sq": self.exp_avg_sq.cpu().clone(),
                "step": self.step_count.cpu().clone(), "lr": self.lr, "betas": list(self.betas),
                "eps": self.eps}

    def load_state_dict(self, state: dict) -> None:
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.step_count.copy_(state["step"])


class Learner:
    """Online and target MLP parameters plus Adam, updated by `update(batch)`."""

    def __init__(self, net: MLP, *, lr: float, gamma: float, tau: float,
                 target_update_interval: int, loss: str = "huber", double_dqn: bool = True,
                 max_grad_norm: float = 10.0, adam_eps: float = 1e-8,
                 device: torch.device | str = "cpu", generator: torch.Generator | None = None,
                 init: torch.Tensor | None = None) -> None:
        self.net = net
        self.device = torch.device(device)
        flat = init if init is not None else net.init(generator or torch.Generator())
        self.params = flat.to(self.device, torch.float32).clone()
        self.grad = torch.zeros_like(self.params)
        self.target = self.params.clone()
        self.online_views = net.views(self.params)
        self.target_views = net.views(self.target)
        self.grad_views = net.views(self.grad)
        self.optimizer = FlatAdam(self.params, self.grad, lr, eps=adam_eps)
        self.adam_kind = self.optimizer.kind
        self.gamma, self.tau, self.interval = gamma, tau, target_update_interval
        self.loss_kind, self.double, self.max_grad_norm = loss, double_dqn, max_grad_norm
        self.steps = 0
        # Running sums for logging, read (one host sync) only when the logger asks.
        self.loss_sum = torch.zeros((), device=self.device)
        self.q_sum = torch.zeros((), device=self.device)
        self.stat_count = 0

    def update(self, batch: Batch) -> None:
        """One gradient step on `batch`, then the target update when it is due."""
        self.step(batch)
        self.maybe_update_target()

    @torch.no_grad()
    def step(self, batch: Batch) -> None:
        """Loss gradient, clipping and Adam: one learner step (the target is left alone)."""
        self.compute_grad(batch)
        self.clip_grad()
        self.optimizer.step()
        self.steps += 1

    def maybe_update_target(self) -> None:
        """The target update, every `target_update_interval` learner steps."""
        if self.steps % self.interval == 0:
            self.update_target()

    @torch.no_grad()
    def compute_grad(self, batch: Batch) -> None:
        """Loss gradient into self.grad (hand-written backward; tested against autograd)."""
        n = batch.obs.shape[0]
        x, x_next = preprocess(batch.obs), preprocess(batch.next_obs)
        if self.double:
            # One online pass over [s; s'] instead of two: Q(s) for the loss, Q(s') for a*.
            q_both, acts = self.net.forward_train(self.online_views, torch.cat([x, x_next]))
            q, acts = q_both[:n], [h[:n] for h in acts]
            a_star = q_both[n:].argmax(1, keepdim=True)
            q_next = self.net.forward(self.target_views, x_next).gather(1, a_star).squeeze(1)
        else:
            q, acts = self.net.forward_train(self.online_views, x)
            q_next = self.net.forward(self.target_views, x_next).amax(1)
        # y = r + gamma * (1 - done) * q_next, in two fused ops.
        y = torch.addcmul(batch.rewards, batch.dones, q_next, value=-self.gamma)
        y.add_(q_next, alpha=self.gamma)
        a = batch.actions.unsqueeze(1)
        q_a = q.gather(1, a).squeeze(1)
        diff = q_a - y
        huber = self.loss_kind == "huber"
        if self.steps % STATS_EVERY == 0:
            loss = F.smooth_l1_loss(q_a, y) if huber else F.mse_loss(q_a, y)
            self.loss_sum += loss
            self.q_sum += q_a.mean()
            self.stat_count += 1
        g = diff.clamp_(-1.0, 1.0).div_(n) if huber else diff.mul_(2.0 / n)
        dq = torch.zeros_like(q).scatter_(1, a, g.unsqueeze(1))
        self.net.backward(self.online_views, acts, dq, self.grad_views)

    @torch.no_grad()
    def clip_grad(self) -> None:
        """Scale the flat gradient to norm <= max_grad_norm without a host sync."""
        if self.max_grad_norm > 0:
            g = self.grad
            scale = (self.max_grad_norm / (torch.linalg.vector_norm(g) + 1e-6)).clamp_(max=1.0)
            g.mul_(scale)

    @torch.no_grad()
    def update_target(self) -> None:
        """target <- tau*online + (1-tau)*target: one lerp over the flat vector (tau=1 copies)."""
        if self.tau >= 1.0:
            self.target.copy_(self.params)
        else:
            self.target.lerp_(self.params, self.tau)

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

    @torch.no_grad()
    def all_finite(self) -> bool:
        """Are the parameters, target and Adam moments free of NaN and inf? (one host sync)"""
        ok = torch.isfinite(self.params).all()
        for t in (self.target, self.optimizer.exp_avg, self.optimizer.exp_avg_sq):
            ok &= torch.isfinite(t).all()
        return bool(ok)

    def state_dict(self) -> dict:
        return {"params": self.params.cpu().clone(), "target": self.target.cpu().clone(),
                "optimizer": self.optimizer.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.params.copy_(state["params"].to(self.device))
            self.target.copy_(state["target"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
