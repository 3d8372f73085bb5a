"""The learner's losses (learners/losses/) in a real step: C51's and QR-DQN's per-row loss and
priority against hand-computed values on networks whose outputs are set by hand (double DQN's
next action and the target's), their gradients, the priorities a prioritized replay gets back,
Ape-X's initial priorities, the plain head bit for bit as before heads, and the graphed update
of C51 and QR CNN learners (static inputs on the CPU, real captures on CUDA).

(The projection and the quantile Huber formula themselves are test_distributional.py's.)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA_DEVICES, random_batch
from test_graphed_update import assert_same_state, weights_of

from fastdqn.errors import RouteFallbackWarning
from fastdqn.learners.graphed_update import StaticUpdate
from fastdqn.learners.losses import LOSSES
from fastdqn.learners.losses.qr import quantile_huber_loss
from fastdqn.learners.reference import ReferenceLearner, initial_priorities
from fastdqn.nets.cnn import cnn_for
from fastdqn.nets.heads import HeadSpec
from fastdqn.nets.mlp import QNetwork, preprocess
from fastdqn.replay.prioritized import PrioritizedSampler, TorchPrioritized
from fastdqn.replay.rows import FIELDS, Batch, ReplayBuffer

ARGS = dict(lr=1e-3, gamma=0.99, tau=1.0, target_update_interval=100, max_grad_norm=0.0)
S, S_NEXT = [1.0, 0.0], [0.0, 1.0]
BATCH = Batch(obs=torch.tensor([S, S]), actions=torch.tensor([0, 1]),
              rewards=torch.tensor([0.5, -0.4]), next_obs=torch.tensor([S_NEXT, S_NEXT]),
              dones=torch.tensor([0.0, 1.0]), discounts=torch.tensor([0.5, 0.5]))
"""Two rows from state s: action 0 bootstrapping from s' with gamma^k 0.5, and action 1
terminal. s and s' are one-hot inputs, so a linear network's outputs at each are one column of
its weight, set by hand."""
QR_BATCH = dataclasses.replace(BATCH, rewards=torch.tensor([1.0, -1.0]))


def by_hand(head: HeadSpec, online_s: list, online_next: list, target_next: list,
            double: bool) -> ReferenceLearner:
    """A learner on a linear network (no hidden layer, no bias) whose head outputs [A, N] are
    `online_s` at s and `online_next` at s' (the online net), `target_next` at s' (the target)."""
    lr = ReferenceLearner(QNetwork(2, 2, (), head=head), head=head.distributional,
                          double_dqn=double, **ARGS)
    with torch.no_grad():
        for net, at_s, at_next in ((lr.online, online_s, online_next),
                                   (lr.target, online_s, target_next)):
            linear = net.body[0]
            linear.bias.zero_()
            linear.weight[:, 0] = torch.tensor(at_s).reshape(-1)
            linear.weight[:, 1] = torch.tensor(at_next).reshape(-1)
    return lr


def logits(*probs: list[float]) -> list[list[float]]:
    """Logits whose softmax is each of `probs`."""
    return [[math.log(p) for p in row] for row in probs]


C51 = HeadSpec("c51", 3, -1.0, 1.0)  # support [-1, 0, 1], dz 1
C51_ONLINE_S = logits([0.25, 0.25, 0.5], [0.5, 0.3, 0.2])
C51_ONLINE_NEXT = logits([0.5, 0.25, 0.25], [0.1, 0.2, 0.7])  # Q -0.25, 0.6: online picks 1
C51_TARGET_NEXT = logits([0.2, 0.3, 0.5], [0.6, 0.3, 0.1])  # Q 0.3, -0.5: target picks 0


def cross_entropy(target: list[float], probs: list[float]) -> float:
    return -sum(m * math.log(p) for m, p in zip(target, probs) if m)


# Row 0: r + 0.5 z = [0, 0.5, 1] for z = [-1, 0, 1]: atom -1's mass lands on 0, atom 0's splits
# between 0 and 1, atom 1's lands on 1, so m = [0, p0 + p1 / 2, p1 / 2 + p2] of the chosen
# action's target distribution p. Row 1 is terminal: all mass at r = -0.4, 0.4 on -1, 0.6 on 0.
C51_ROW0 = {True: [0.0, 0.6 + 0.15, 0.15 + 0.1],  # double: a* = 1, p = [0.6, 0.3, 0.1]
            False: [0.0, 0.2 + 0.15, 0.15 + 0.5]}  # a* = 0, p = [0.2, 0.3, 0.5]
C51_ROW1 = [0.4, 0.6, 0.0]


@pytest.mark.parametrize("double", [True, False])
def test_the_c51_step_against_hand_computed_values(double):
    lr = by_hand(C51, C51_ONLINE_S, C51_ONLINE_NEXT, C51_TARGET_NEXT, double)
    want = torch.tensor([cross_entropy(C51_ROW0[double], [0.25, 0.25, 0.5]),
                         cross_entropy(C51_ROW1, [0.5, 0.3, 0.2])])
    out = LOSSES["c51"](lr.online, lr.target, BATCH, double, "huber")
    torch.testing.assert_close(out.per_row, want)
    assert torch.equal(out.priority, out.per_row.detach())  # Rainbow's priority: the loss
    torch.testing.assert_close(out.q_taken, torch.tensor([0.25, -0.3]))  # sum_j p_j z_j
    weights = torch.tensor([0.5, 1.5])
    priority = lr.step(BATCH, weights)
    torch.testing.assert_close(priority, want)
    loss, q = lr.pop_stats()
    assert loss == pytest.approx(float((weights * want).mean()), rel=1e-6)
    assert q == pytest.approx(-0.025, rel=1e-5)
    # d loss / d logits = w_b / B (softmax - m): here the weight column of s, per action
    grad = lr.online.body[0].weight.grad
    want_grad = torch.tensor([[0.25, 0.25, 0.5], [0.5, 0.3, 0.2]])
    want_grad -= torch.tensor([C51_ROW0[double], C51_ROW1])
    want_grad *= (weights / 2).unsqueeze(1)
    torch.testing.assert_close(grad[:, 0], want_grad.reshape(-1))
    assert torch.equal(grad[:, 1], torch.zeros(6))  # no gradient through the target


QR = HeadSpec("qr", 2)  # quantile levels 0.25, 0.75
QR_ONLINE_S = [[0.5, 1.5], [0.0, 2.0]]
QR_ONLINE_NEXT = [[0.0, 0.0], [1.0, 1.0]]  # Q 0, 1: online picks 1
QR_TARGET_NEXT = [[1.0, 3.0], [0.0, 2.0]]  # Q 2, 1: target picks 0


# Row 0 (quantiles [0.5, 1.5]): the targets r + 0.5 theta(s', a*) are [1, 2] (double: a* = 1) or
# [1.5, 2.5] (a* = 0); row 1 (quantiles [0, 2]) is terminal: targets [-1, -1]. Each is
# sum_i mean_j |tau_i - 1{u_ij < 0}| L(u_ij), L the Huber loss (kappa 1), u = target - quantile:
#   [1, 2]:     tau .25: u = .5, 1.5 -> .25 (.125 + 1) / 2 = .140625;
#               tau .75: u = -.5, .5 -> (.25 .125 + .75 .125) / 2 = .0625        -> .203125
#   [1.5, 2.5]: tau .25: u = 1, 2 -> .25 (.5 + 1.5) / 2 = .25;
#               tau .75: u = 0, 1 -> (0 + .75 .5) / 2 = .1875                     -> .4375
#   [-1, -1]:   tau .25: u = -1 -> .75 .5 = .375;  tau .75: u = -3 -> .25 2.5 = .625 -> 1
QR_WANT = {True: [0.203125, 1.0], False: [0.4375, 1.0]}
# d loss / d quantile_i = mean_j |tau_i - 1{u_ij < 0}| clamp(-u_ij, -1, 1)
QR_GRAD = {True: [[-0.1875, -0.125], [0.75, 0.25]],
           False: [[-0.25, -0.375], [0.75, 0.25]]}


@pytest.mark.parametrize("double", [True, False])
def test_the_qr_step_against_hand_computed_values(double):
    lr = by_hand(QR, QR_ONLINE_S, QR_ONLINE_NEXT, QR_TARGET_NEXT, double)
    out = LOSSES["qr"](lr.online, lr.target, QR_BATCH, double, "huber")
    assert out.per_row.tolist() == pytest.approx(QR_WANT[double], rel=1e-6)
    assert torch.equal(out.priority, out.per_row.detach())
    assert out.q_taken.tolist() == [1.0, 1.0]  # the quantiles' mean
    weights = torch.tensor([2.0, 1.0])
    assert lr.step(QR_BATCH, weights).tolist() == pytest.approx(QR_WANT[double], rel=1e-6)
    assert lr.pop_stats()[0] == pytest.approx(
        float((weights * torch.tensor(QR_WANT[double])).mean()), rel=1e-6)
    grad = lr.online.body[0].weight.grad
    want = torch.tensor(QR_GRAD[double]) * (weights / 2).unsqueeze(1)
    torch.testing.assert_close(grad[:, 0], want.reshape(-1))
    assert torch.equal(grad[:, 1], torch.zeros(4))


def elementwise_quantile_huber(q: torch.Tensor, t: torch.Tensor, kappa: float) -> torch.Tensor:
    """The loss as its formula reads, for autograd to differentiate."""
    u = t.unsqueeze(1) - q.unsqueeze(2)
    huber = torch.where(u.abs() <= kappa, 0.5 * u * u, kappa * (u.abs() - 0.5 * kappa))
    tau = (2 * torch.arange(q.shape[1], dtype=q.dtype) + 1) / (2 * q.shape[1])
    return ((tau.reshape(1, -1, 1) - (u < 0).to(q.dtype)).abs() * huber).mean(2).sum(1) / kappa


@pytest.mark.parametrize("kappa", [1.0, 0.5, 2.0])
def test_the_quantile_huber_gradient_is_the_formulas(kappa):
    g = torch.Generator().manual_seed(3)
    q = (torch.randn(4, 5, generator=g, dtype=torch.float64) * 2).requires_grad_()
    t = (torch.randn(4, 7, generator=g, dtype=torch.float64) * 2).requires_grad_()
    upstream = torch.rand(4, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((quantile_huber_loss(q, t, kappa) * upstream).sum(), (q, t))
    want = torch.autograd.grad((elementwise_quantile_huber(q, t, kappa) * upstream).sum(), (q, t))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda a, b: quantile_huber_loss(a, b, kappa), (q, t))


# ---------------------------------------------------------------------------------------------
# Priorities: written back from the loss, and Ape-X's initial ones
# ---------------------------------------------------------------------------------------------

OBS, ACTIONS, ROWS, B = 4, 3, 40, 16
HEADS = {"c51": HeadSpec("c51", 11, -5.0, 5.0), "qr": HeadSpec("qr", 8)}


def filled_buffer() -> ReplayBuffer:
    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(64, (OBS,), torch.float32)
    b = random_batch(g, ROWS, OBS, ACTIONS, reward_scale=2.0)
    buf.add(b.obs, b.actions, b.rewards, b.next_obs, b.dones, b.discounts)
    return buf


def learner_of(head: HeadSpec, double: bool = True, noise: float = 0.1) -> ReferenceLearner:
    """A learner on a small MLP with this head, its target moved away from the online net (so
    that double DQN's choice matters)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lr = ReferenceLearner(QNetwork(OBS, ACTIONS, (16,), head=head), head=head.distributional,
                              double_dqn=double, **ARGS)
        with torch.no_grad():
            for t in lr.target_params:
                t.add_(torch.randn_like(t) * noise)
    return lr


@pytest.mark.parametrize("head", list(HEADS))
def test_the_numba_sum_tree_gets_the_loss_back_for_exactly_the_sampled_rows(head):
    buf, lr = filled_buffer(), learner_of(HEADS[head])
    sampler = PrioritizedSampler(64, 0.6, 1e-3, seed=5)
    sampler.on_add(np.arange(ROWS))
    twin = PrioritizedSampler(64, 0.6, 1e-3, seed=5)
    twin.set_state(sampler.get_state())
    idx, w = np.empty(B, np.int64), np.empty(B, np.float32)
    twin.sample(buf.size, B, 0.5, idx, w)  # the rows the learner is about to draw
    loss = LOSSES[head](copy.deepcopy(lr.online), copy.deepcopy(lr.target),
                        buf.gather(torch.from_numpy(idx)), True, "huber").priority.numpy()
    before = sampler.priorities()
    lr.learn(buf, sampler, 1, B, beta=0.5)
    want = before.copy()
    want[idx] = (loss.astype(np.float64) + 1e-3) ** 0.6
    np.testing.assert_allclose(sampler.priorities(), want, rtol=1e-6)
    untouched = np.setdiff1d(np.arange(ROWS), idx)
    assert untouched.size and (sampler.priorities()[untouched] == 1.0).all()
    assert len(np.unique(sampler.priorities()[idx])) > 1  # per-row losses, not one value
    assert sampler.max_priority == pytest.approx(float(loss.max()) + 1e-3, rel=1e-6)


@pytest.mark.parametrize("head", list(HEADS))
def test_the_device_priorities_get_the_loss_back_for_exactly_the_sampled_rows(head):
    buf, lr = filled_buffer(), learner_of(HEADS[head])
    sampler = TorchPrioritized(64, 0.6, 1e-3)
    sampler.on_add(torch.arange(ROWS))
    u = torch.rand(B, generator=copy.deepcopy(lr.per_generator), dtype=torch.float64)
    idx, _ = sampler.sample_from_uniforms(u, 0.5)
    loss = LOSSES[head](copy.deepcopy(lr.online), copy.deepcopy(lr.target), buf.gather(idx),
                        True, "huber").priority
    before = sampler.priorities.clone()
    lr.learn(buf, sampler, 1, B, beta=0.5)
    want = before.clone()
    want[idx] = (loss.double() + 1e-3) ** 0.6
    torch.testing.assert_close(sampler.priorities, want, rtol=1e-6, atol=0)
    assert len(torch.unique(sampler.priorities[idx])) > 1


@pytest.mark.parametrize("double", [True, False])
@pytest.mark.parametrize("head", ["none", "c51", "qr"])
def test_apex_initial_priorities_are_the_learners_priorities(head, double):
    spec = HEADS.get(head, HeadSpec())
    lr = learner_of(spec, double)
    batch = random_batch(torch.Generator().manual_seed(4), 12, OBS, ACTIONS)
    first = initial_priorities(lr.online, lr.target, batch, double, head, "huber")
    assert torch.equal(first, lr.update(batch, None))
    if head == "none":  # |TD error|, whatever the TD loss
        assert torch.equal(initial_priorities(lr.online, lr.target, batch, double, head, "mse"),
                           initial_priorities(lr.online, lr.target, batch, double, head, "huber"))


# ---------------------------------------------------------------------------------------------
# The plain head: bit for bit the update fastdqn had before heads
# ---------------------------------------------------------------------------------------------


def pre_heads_update(online: torch.nn.Module, target: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, batch: Batch,
                     weights: torch.Tensor | None, double: bool, loss_kind: str
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference update as written before heads: (|TD error|, loss)."""
    q_a = online(preprocess(batch.obs)).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        x_next = preprocess(batch.next_obs)
        q_next_all = target(x_next)
        chooser = online(x_next) if double else q_next_all
        q_next = q_next_all.gather(1, chooser.argmax(1, keepdim=True)).squeeze(1)
        y = batch.rewards + batch.discounts * (1.0 - batch.dones) * q_next
    per_row = (F.smooth_l1_loss(q_a, y, reduction="none") if loss_kind == "huber"
               else F.mse_loss(q_a, y, reduction="none"))
    loss = (per_row * weights).mean() if weights is not None else per_row.mean()
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(online.parameters()), 10.0)
    optimizer.step()
    return (q_a.detach() - y).abs(), loss.detach()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss_kind", ["huber", "mse"])
@pytest.mark.parametrize("double", [True, False])
def test_the_plain_head_steps_bit_for_bit_as_before_heads(double, loss_kind, weighted):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        module = QNetwork(OBS, ACTIONS, (16, 16), dueling=True, head=HeadSpec())
    lr = ReferenceLearner(copy.deepcopy(module), lr=3e-3, gamma=0.99, tau=1.0,
                          target_update_interval=3, loss=loss_kind, double_dqn=double,
                          max_grad_norm=10.0)
    online = copy.deepcopy(module)
    target = copy.deepcopy(online).requires_grad_(False)
    optimizer = torch.optim.Adam(online.parameters(), lr=3e-3, eps=1e-8)
    g = torch.Generator().manual_seed(2)
    for step in range(1, 8):
        batch = random_batch(g, 16, OBS, ACTIONS, reward_scale=3.0)
        weights = torch.rand(16, generator=g) + 0.5 if weighted else None
        td, loss = pre_heads_update(online, target, optimizer, batch, weights, double, loss_kind)
        assert torch.equal(lr.step(batch, weights), td)
        assert torch.equal(lr.loss_sum, loss) if step == 1 else True
        lr.loss_sum.zero_()
        if step % 3 == 0:
            target.load_state_dict(online.state_dict())
    for a, b in zip(lr.online.parameters(), online.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(lr.target.parameters(), target.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(next(online.parameters()), next(module.parameters()))  # it learned


# ---------------------------------------------------------------------------------------------
# The graphed update of distributional CNN learners
# ---------------------------------------------------------------------------------------------

MINATAR_SPACE = gym.spaces.Box(0.0, 1.0, (10, 10, 4), bool)
GRAPH_ARGS = dict(lr=1e-3, gamma=0.99, tau=1.0, target_update_interval=3, adam_eps=1e-5)
CNN_HEADS = {"c51": HeadSpec("c51", 11, -3.0, 3.0), "qr": HeadSpec("qr", 16)}


def cnn_learner(head: str, device: str = "cpu", cuda_graphs: bool = False,
                dueling: bool = True) -> ReferenceLearner:
    module = cnn_for(MINATAR_SPACE, 3, dueling, seed=0, channels_last_hint=True,
                     head=CNN_HEADS[head])
    return ReferenceLearner(module, head=head, device=device, cuda_graphs=cuda_graphs,
                            **GRAPH_ARGS)


def cnn_batch(gen: torch.Generator, n: int = 8, device: str = "cpu") -> Batch:
    obs = torch.randint(0, 256, (2, n, 400), generator=gen) > 200
    b = Batch(obs=obs[0], actions=torch.randint(0, 3, (n,), generator=gen),
              rewards=torch.randn(n, generator=gen) * 2, next_obs=obs[1],
              dones=(torch.rand(n, generator=gen) < 0.3).float(),
              discounts=0.99 ** torch.randint(1, 4, (n,), generator=gen).float())
    return Batch(*(getattr(b, f).to(device) for f in FIELDS))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("head", list(CNN_HEADS))
def test_a_distributional_update_on_static_inputs_follows_the_eager_step(head, weighted):
    """What a graph captures reads its batch from tensors the batches are copied into."""
    gen = torch.Generator().manual_seed(1)
    static_route, eager = cnn_learner(head), cnn_learner(head)
    batches = [cnn_batch(gen) for _ in range(3)]
    weights = [weights_of(gen) if weighted else None for _ in batches]
    static = StaticUpdate(static_route, batches[0], weights[0])
    for b, w in zip(batches, weights):
        static.load(b, w)
        assert torch.equal(static.run().clone(), eager.update(b, w))
        assert_same_state(static_route, eager)
    assert not torch.equal(eager.params[0], cnn_learner(head).params[0])  # it learned


@pytest.mark.parametrize("device", CUDA_DEVICES)
@pytest.mark.parametrize("head", list(CNN_HEADS))
def test_graphs_replay_a_distributional_learners_trajectory_on_cuda(device, head):
    gen = torch.Generator().manual_seed(6)
    with torch.cuda.device(0):
        graphed = cnn_learner(head, device, cuda_graphs=True)
        eager = cnn_learner(head, device, cuda_graphs=True)
        eager.graphs = None  # the same capturable optimizer, stepped eagerly
        with warnings.catch_warnings():
            warnings.simplefilter("error", RouteFallbackWarning)
            for step in range(8):
                b = cnn_batch(gen, device=device)
                w = weights_of(gen, device=device) if step % 2 else None
                torch.testing.assert_close(graphed.step(b, w), eager.step(b, w), rtol=1e-4,
                                           atol=1e-5)
        assert graphed.graphs is not None and len(graphed.graphs.graphs) == 2  # two layouts
        assert graphed.fallbacks == []
        assert graphed.route(torch.device(device)).startswith("reference under CUDA graphs")
        assert_same_state(graphed, eager, exact=False)
        assert graphed.steps == eager.steps == 8
        assert graphed.pop_stats() == pytest.approx(eager.pop_stats(), rel=1e-4)
