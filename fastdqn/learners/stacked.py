"""Several reference learners' uniform steps as one batched gradient (a `--seeds` population's
agents on the reference route: C51, CNNs, `--learner reference`).

The reference route is bound by per-op overhead, not arithmetic (an MLP step there costs 5-7x
the native one): one `torch.func.vmap` of the loss's gradient over the agents' stacked
parameters pays that overhead once for all of them. Each agent's gradient is its own loss's
(the losses are never summed or averaged across agents), and what follows it is each agent's
own `ReferenceLearner.apply_gradients`: its gradient-norm clipping, its optimizer's step with its
own learning rate and state, its statistics, then its step count and target update. The
gradients equal the separate ones within float tolerance (a batched matmul may add in another
order); on this CPU they came out equal to the bit.

What it cannot take, the agent steps alone (`stackable` says why): noisy layers (their noise
generators cannot run under vmap), QR-DQN (its loss is a custom autograd Function without a
vmap rule), CUDA graphs (the agent's update is captured on its own). The optimizer can be any:
each agent steps its own.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch.func import grad, vmap
from torch.nn.utils.stateless import _reparametrize_module

from fastdqn.learners.losses import LOSSES
from fastdqn.learners.reference import ReferenceLearner
from fastdqn.replay.rows import FIELDS, Batch


def stackable(learner: ReferenceLearner) -> str | None:
    """Why `learner`'s steps cannot join a batched gradient, or None."""
    if learner.noisy:
        return "noisy layers draw from generators vmap cannot run"
    if learner.head == "qr":
        return "QR-DQN's loss is an autograd Function with no vmap rule"
    if learner.graphs is not None:
        return "its update is captured as its own CUDA graph"
    return None


def signature(learner: ReferenceLearner) -> tuple:
    """What learners must share to take one batched gradient: the module's structure (names
    and shapes of parameters and buffers), the loss and the device."""
    shapes = tuple((n, tuple(t.shape), t.dtype) for n, t in
                   [*learner.online.named_parameters(), *learner.online.named_buffers()])
    return (type(learner.online), shapes, learner.head, learner.double, learner.loss_kind,
            str(learner.device))


class StackedGradients:
    """The per-agent gradients of N learners of one `signature`, one vmapped call a step."""

    def __init__(self, learner: ReferenceLearner) -> None:
        self.online = copy.deepcopy(learner.online)
        self.target = copy.deepcopy(learner.target)
        self.loss_fn = LOSSES[learner.head]
        self.double, self.loss_kind = learner.double, learner.loss_kind
        self.names = [n for n, p in learner.online.named_parameters() if p.requires_grad]
        self.grads = vmap(grad(self._loss, has_aux=True))

    def _loss(self, params: dict, target: dict, buffers: dict, *fields: torch.Tensor):
        batch = Batch(*fields)
        with _reparametrize_module(self.online, {**params, **buffers}), \
                _reparametrize_module(self.target, {**target, **buffers}):
            out = self.loss_fn(self.online, self.target, batch, self.double, self.loss_kind)
        loss = out.per_row.mean()
        return loss, (loss.detach(), out.q_taken.mean())

    def __call__(self, learners: list[ReferenceLearner], batches: list[Batch]
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Each learner's gradient on its batch ({name: [N, ...]}), loss [N] and mean Q [N]."""
        own = [dict(lr.online.named_parameters()) for lr in learners]
        tgt = [dict(lr.target.named_parameters()) for lr in learners]
        params = {n: torch.stack([o[n].detach() for o in own]) for n in self.names}
        target = {n: torch.stack([t[n].detach() for t in tgt]) for n in self.names}
        bufs = [dict(lr.online.named_buffers()) for lr in learners]
        buffers = {n: torch.stack([b[n] for b in bufs]) for n in bufs[0]}
        fields = [torch.stack([getattr(b, f) for b in batches]) for f in FIELDS]
        grads, (loss, q) = self.grads(params, target, buffers, *fields)
        return grads, loss, q


def stacked_steps(learners: list[ReferenceLearner], draw: Callable[[int, int], Batch],
                  ks: list[int], stacks: dict[tuple, StackedGradients]) -> None:
    """ks[i] uniform steps of each learner i, its batches drawn in order by `draw(i, j)` (its
    own sampler, one batch a step, as its solo `learn` draws them): at step j the learners
    with ks[i] > j share one batched gradient, then each applies its own update. `stacks`
    keeps the vmapped function of each signature between calls."""
    for j in range(max(ks, default=0)):
        active = [i for i, k in enumerate(ks) if k > j]
        group = [learners[i] for i in active]
        batches = [draw(i, j) for i in active]
        key = signature(group[0])
        if key not in stacks:
            stacks[key] = StackedGradients(group[0])
        grads, loss, q = stacks[key](group, batches)
        for a, lr in enumerate(group):
            for n, p in zip(stacks[key].names, lr.params):
                g = grads[n][a]
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            lr.apply_gradients(loss[a], q[a])
            lr.step_done()
