"""The reference learner: any `torch.nn.Module` Q-network, autograd, `torch.optim.Adam` (or
`torch.optim.RMSprop` set as the MinAtar paper's code sets it, `--optimizer rmsprop`).

This is the definition of a DQN update in fastdqn, written as plainly as torch allows. The fast
routes (the flat-MLP torch ops, the Numba-fused CPU step, the CUDA graphs) are optimizations of
it for the networks they support (on CUDA this route's own `update` runs as a CUDA graph,
graphed_update.py), and the tests check each against it for every combination of
options. It is also the route for networks users pass in from Python, and for any option a fast
route does not support.

One update on a batch of rows (s, a, R, s', terminated, discount) with importance weights w:
    loss = mean_i w_i * l_i,  l_i = the value head's loss of row i (learners/losses/):
    for one Q per action, l(Q_online(s_i, a_i) - y_i) with l = Huber(delta 1) or squared error and
    y = R + discount * (1 - terminated) * Q_target(s', a*),  a* = argmax_a Q_online(s', a) (double)
                                                                  or argmax_a Q_target(s', a)
    (C51: the cross-entropy against the projected target distribution; QR: the quantile Huber loss)
then the gradient's global norm is clipped, the optimizer steps, and the target net moves
toward the online one (tau < 1 every step, or a copy every `target_update_interval` steps).
Noisy layers (nets/noisy.py) draw fresh noise in each of the online, selection and target passes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from fastdqn.learners.graphed_update import GraphedUpdates
from fastdqn.learners.losses import LOSSES
from fastdqn.nets.mlp import preprocess
from fastdqn.nets.noisy import noisy_layers, per_row_noise
from fastdqn.replay.prioritized import PrioritizedSampler, TorchPrioritized
from fastdqn.replay.rows import Batch, ReplayBuffer
from fastdqn.replay.uniform import UniformSampler


def _no_lap(stage: str) -> None:
    """The default `lap`: no timing."""


@torch.no_grad()
def all_finite(tensors, optimizer: torch.optim.Optimizer) -> bool:
    """Are the tensors and the optimizer's floating-point state free of NaN and inf? One host
    sync, however many tensors."""
    tensors = list(tensors)
    tensors += [v for state in optimizer.state.values() for v in state.values()
                if torch.is_tensor(v) and v.is_floating_point()]
    ok = torch.ones((), dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok &= torch.isfinite(t).all().to(ok.device)
    return bool(ok)


@torch.no_grad()
def initial_priorities(online: torch.nn.Module, target: torch.nn.Module, batch: Batch,
                       double: bool, head: str = "none", td_loss: str = "huber") -> torch.Tensor:
    """Each row's priority before any learner step has seen it, from the loss the learner
    trains with (|TD error|, or a distributional head's loss): Ape-X actors' for the rows they
    ship."""
    return LOSSES[head](online, target, batch, double, td_loss).priority


RMSPROP = {"alpha": 0.95, "eps": 0.01, "centered": True}
"""torch.optim.RMSprop's settings in the MinAtar paper's DQN (Young & Tian 2019, MinAtar's
examples/dqn.py: SQUARED_GRAD_MOMENTUM 0.95, MIN_SQUARED_GRAD 0.01, centered, no momentum)."""

OPTIMIZERS = {"adam": "Adam", "rmsprop": "RMSprop"}


def uniform_batch(buffer: ReplayBuffer, sampler: UniformSampler, batch_size: int) -> Batch:
    """One step's batch of uniformly drawn rows (the sampler's next draw)."""
    idx = torch.from_numpy(sampler.sample(buffer.size, 1, batch_size)[0])
    return buffer.gather(idx.to(buffer.device))


class ReferenceLearner:
    """Online and target copies of a module, its optimizer, and `step(batch, weights)`."""

    def __init__(self, module: torch.nn.Module, *, lr: float, gamma: float, tau: float,
                 target_update_interval: int, loss: str = "huber", double_dqn: bool = True,
                 max_grad_norm: float = 10.0, adam_eps: float = 1e-8, optimizer: str = "adam",
                 device: torch.device | str = "cpu", cuda_graphs: bool = False,
                 head: str = "none") -> None:
        self.device = torch.device(device)
        self.online = module.to(self.device)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        pairs = [(p, t) for p, t in zip(self.online.parameters(), self.target.parameters())
                 if p.requires_grad]
        self.params = [p for p, _ in pairs]
        self.target_params = [t for _, t in pairs]
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        self.optimizer_kind = optimizer
        # A CUDA graph can capture the optimizer step only with its step count on the device.
        capturable = cuda_graphs and self.device.type == "cuda"
        self.optimizer: torch.optim.Optimizer = (
            torch.optim.Adam(self.params, lr=lr, eps=adam_eps, capturable=capturable)
            if optimizer == "adam"
            else torch.optim.RMSprop(self.params, lr=lr, capturable=capturable, **RMSPROP))
        self.settings = [{k: v for k, v in g.items() if k != "params"}
                         for g in self.optimizer.param_groups]
        self.gamma, self.tau, self.interval = gamma, tau, target_update_interval
        self.loss_kind, self.double, self.max_grad_norm = loss, double_dqn, max_grad_norm
        self.head, self.loss_fn = head, LOSSES[head]
        self.noisy = bool(noisy_layers(self.online))
        self.steps = 0
        self.loss_sum = torch.zeros((), device=self.device)
        self.q_sum = torch.zeros((), device=self.device)
        self.stat_count = 0
        self.per_generator = torch.Generator(self.device).manual_seed(0)
        self.fallbacks: list[str] = []
        self.graphs: GraphedUpdates | None = (GraphedUpdates(self) if capturable else None)

    def learn(self, buffer: ReplayBuffer, sampler, k: int, batch_size: int, beta: float = 1.0,
              lap: Callable[[str], None] = _no_lap) -> None:
        """K steps on batches `sampler` draws from `buffer` (prioritized: priorities written
        back after every step, for exactly the rows it sampled)."""
        for _ in range(k):
            if isinstance(sampler, UniformSampler):
                self.step(uniform_batch(buffer, sampler, batch_size))
            elif isinstance(sampler, PrioritizedSampler):
                idx_np = np.empty(batch_size, dtype=np.int64)
                w_np = np.empty(batch_size, dtype=np.float32)
                sampler.sample(buffer.size, batch_size, beta, idx_np, w_np)
                idx = torch.from_numpy(idx_np).to(buffer.device)
                td_abs = self.step(buffer.gather(idx), torch.from_numpy(w_np).to(buffer.device))
                sampler.update(idx_np, td_abs.cpu().numpy())
            elif isinstance(sampler, TorchPrioritized):
                u = torch.rand(batch_size, generator=self.per_generator, dtype=torch.float64,
                               device=self.device)
                idx, w = sampler.sample_from_uniforms(u, beta)
                sampler.update(idx, self.step(buffer.gather(idx), w))
            else:
                raise TypeError(f"no sampling for {type(sampler).__name__}")
            lap("learn")

    def route(self, device: torch.device) -> str:
        what = f"nn.Module + autograd + torch.optim.{OPTIMIZERS[self.optimizer_kind]}"
        if self.graphs is not None:
            return f"reference under CUDA graphs ({what})"
        fell = [f for f in self.fallbacks if f.startswith("learner cuda-graphs")]
        return f"reference ({what}" + (f"; {fell[0]}" if fell else "") + ")"

    def q_values(self, obs: torch.Tensor, mean_weights: bool = False) -> torch.Tensor:
        """Online Q-values of a batch of raw observations (no gradient): acting's. Noisy layers
        draw a sample per row, or play their mean weights with `mean_weights` (evaluation)."""
        with torch.no_grad():
            if not self.noisy:
                return self.online(preprocess(obs))
            if not mean_weights:
                with per_row_noise(self.online):  # each env explores with its own sample
                    return self.online(preprocess(obs))
            self.online.eval()
            try:
                return self.online(preprocess(obs))
            finally:
                self.online.train()

    def step(self, batch: Batch, weights: torch.Tensor | None = None) -> torch.Tensor:
        """One update on `batch`; returns each row's new PER priority."""
        td = self.graphs(batch, weights) if self.graphs is not None else None
        if td is None:
            td = self.update(batch, weights)
        self.step_done()
        return td

    def step_done(self) -> None:
        """A step's bookkeeping after its update: the count, the target update when due."""
        self.steps += 1
        if self.steps % self.interval == 0:
            self.update_target()
        self.stat_count += 1

    def update(self, batch: Batch, weights: torch.Tensor | None) -> torch.Tensor:
        """The device work of a step (the target's periodic update aside), with no host sync:
        what a CUDA graph captures. Returns each row's new priority (|TD error| for one Q per
        action, the loss itself for a distributional head)."""
        out = self.loss_fn(self.online, self.target, batch, self.double, self.loss_kind)
        per_row = out.per_row
        loss = (per_row * weights).mean() if weights is not None else per_row.mean()
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        self.apply_gradients(loss.detach(), out.q_taken.mean())
        return out.priority

    def apply_gradients(self, loss: torch.Tensor, q_mean: torch.Tensor) -> None:
        """The update from the gradients in the parameters' .grad: clipping, the optimizer's
        step, the logged statistics (what `update` does after its backward pass, and
        `learners.stacked` after its batched one)."""
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            self.loss_sum += loss
            self.q_sum += q_mean

    @torch.no_grad()
    def update_target(self) -> None:
        if self.tau >= 1.0:
            torch._foreach_copy_(self.target_params, self.params)
        else:
            torch._foreach_lerp_(self.target_params, self.params, self.tau)

    def pop_stats(self) -> tuple[float, float] | None:
        """Mean loss and mean Q(s,a) since the last call (one host sync), or None."""
        if self.stat_count == 0:
            return None
        stats = float(self.loss_sum) / self.stat_count, float(self.q_sum) / self.stat_count
        self.loss_sum.zero_()
        self.q_sum.zero_()
        self.stat_count = 0
        return stats

    def all_finite(self) -> bool:
        return all_finite([*self.params, *self.target_params], self.optimizer)

    def state_dict(self) -> dict:
        return {"online": {k: v.cpu().clone() for k, v in self.online.state_dict().items()},
                "target": {k: v.cpu().clone() for k, v in self.target.state_dict().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "steps": self.steps,
                "optimizer_kind": self.optimizer_kind}

    def load_state_dict(self, state: dict) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.keep_own_settings()
        self.steps = int(state["steps"])
        if self.graphs is not None:  # the optimizer's state tensors are new: capture again
            self.graphs = GraphedUpdates(self)

    @torch.no_grad()
    def keep_own_settings(self) -> None:
        """Put this run's optimizer settings back after a load: the file's param_groups hold
        another run's lr, eps and code paths (capturable, foreach), which are data here, not
        orders; the step count goes where this run's setting keeps it."""
        for group, mine in zip(self.optimizer.param_groups, self.settings):
            group.update(mine)
            for p in group["params"]:
                state = self.optimizer.state.get(p, {})
                if torch.is_tensor(state.get("step")):
                    where = p.device if mine["capturable"] else torch.device("cpu")
                    state["step"] = state["step"].to(where, torch.float32)

    @torch.no_grad()
    def live_state(self) -> dict[str, torch.Tensor]:
        """Every tensor a step changes (parameters, gradients, optimizer state, stats)."""
        state = {f"online.{i}": p for i, p in enumerate(self.params)}
        state.update({f"target.{i}": t for i, t in enumerate(self.target_params)})
        state.update({f"grad.{i}": p.grad for i, p in enumerate(self.params)
                      if p.grad is not None})
        for i, p in enumerate(self.params):
            for name, v in self.optimizer.state.get(p, {}).items():
                if torch.is_tensor(v):
                    state[f"optimizer.{i}.{name}"] = v
        state.update(loss_sum=self.loss_sum, q_sum=self.q_sum)
        return state

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Copies of `live_state` (on the device, no host sync)."""
        return {k: v.detach().clone() for k, v in self.live_state().items()}

    @torch.no_grad()
    def restore(self, snap: dict[str, torch.Tensor]) -> None:
        """Back to a `snapshot`, in place: a captured graph keeps pointing at the same storage."""
        for k, v in self.live_state().items():
            v.copy_(snap[k])
