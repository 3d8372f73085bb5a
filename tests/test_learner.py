"""Learner: TD targets by hand, gradients vs autograd, target updates, clipping, stats, state."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import module_grad, random_batch, set_layers

from fastdqn.errors import RouteFallbackWarning
from fastdqn.learners.flat import FlatAdam, Learner, td_target
from fastdqn.nets.mlp import MLP, preprocess
from fastdqn.replay.rows import ReplayBuffer

# ---------------------------------------------------------------------------------------------
# td_target on a 1 -> 2 -> 2 net with hand-set weights.
# hidden h = relu([s, s]) = [s, s] for s >= 0.
# online: Q(s) = [s, 2]          -> argmax 0 for s > 2, 1 for s < 2
# target: Q(s) = [2s, 10]        -> argmax 0 for s > 5, 1 for s < 5
# ---------------------------------------------------------------------------------------------

TINY = MLP(1, 2, (2,))


def tiny_views():
    online = set_layers(TINY, torch.zeros(TINY.num_params),
                        [([[1.0], [1.0]], [0.0, 0.0]), ([[1.0, 0.0], [0.0, 0.0]], [0.0, 2.0])])
    target = set_layers(TINY, torch.zeros(TINY.num_params),
                        [([[1.0], [1.0]], [0.0, 0.0]), ([[2.0, 0.0], [0.0, 0.0]], [0.0, 10.0])])
    return TINY.views(online), TINY.views(target)


def test_tiny_net_q_values_are_as_designed():
    online, target = tiny_views()
    s = torch.tensor([[1.0], [3.0], [6.0]])
    assert TINY.forward(online, s).tolist() == [[1.0, 2.0], [3.0, 2.0], [6.0, 2.0]]
    assert TINY.forward(target, s).tolist() == [[2.0, 10.0], [6.0, 10.0], [12.0, 10.0]]


S_NEXT = torch.tensor([[3.0], [1.0], [3.0], [6.0]])
REWARDS = torch.tensor([1.0, -2.0, 0.5, 0.25])
DONES = torch.tensor([0.0, 0.0, 1.0, 0.0])
GAMMA = 0.5


def test_td_target_plain_max():
    online, target = tiny_views()
    y = td_target(TINY, online, target, REWARDS, S_NEXT, DONES, GAMMA, double=False)
    # max_a Q_target(s') = [10, 10, (terminated), 12]
    assert y.tolist() == [1.0 + 0.5 * 10, -2.0 + 0.5 * 10, 0.5, 0.25 + 0.5 * 12]


def test_td_target_double_dqn_uses_target_value_at_online_argmax():
    online, target = tiny_views()
    y = td_target(TINY, online, target, REWARDS, S_NEXT, DONES, GAMMA, double=True)
    # row 0: online argmax 0 (3 > 2) while the target argmax is 1 (10 > 6) -> Q_target[0] = 6
    # row 1: online argmax 1 -> Q_target[1] = 10; row 3: online argmax 0 -> Q_target[0] = 12
    assert y.tolist() == [1.0 + 0.5 * 6, -2.0 + 0.5 * 10, 0.5, 0.25 + 0.5 * 12]


@pytest.mark.parametrize("double", [False, True])
def test_terminated_rows_do_not_bootstrap(double):
    online, target = tiny_views()
    rewards = torch.tensor([3.0, -7.5, 0.0])
    y = td_target(TINY, online, target, rewards, torch.tensor([[3.0], [1.0], [100.0]]),
                  torch.ones(3), 0.99, double=double)
    assert y.tolist() == [3.0, -7.5, 0.0]


def test_td_target_uint8_next_obs_is_scaled():
    online, target = tiny_views()
    # 255 -> 1.0: online [1, 2] argmax 1 -> 10 either way
    y = td_target(TINY, online, target, torch.zeros(1), torch.tensor([[255]], dtype=torch.uint8),
                  torch.zeros(1), 1.0, double=True)
    assert y.tolist() == [10.0]


# ---------------------------------------------------------------------------------------------
# Gradients against autograd
# ---------------------------------------------------------------------------------------------

OBS_DIM, N_ACTIONS, HIDDEN = 5, 3, (16, 8)


def make_learner(seed: int = 0, **kw) -> Learner:
    args = dict(lr=1e-2, gamma=0.9, tau=0.1, target_update_interval=1, loss="huber",
                double_dqn=True, max_grad_norm=10.0)
    args.update(kw)
    net = MLP(OBS_DIM, N_ACTIONS, HIDDEN)
    return Learner(net, generator=torch.Generator().manual_seed(seed), **args)


def autograd_loss_and_grad(learner: Learner, batch, loss_kind: str, double: bool):
    net = learner.net
    online = net.to_module(learner.params)
    target = net.to_module(learner.target)
    with torch.no_grad():
        x_next = preprocess(batch.next_obs)
        q_next_t = target(x_next)
        if double:
            q_next = q_next_t.gather(1, online(x_next).argmax(1, keepdim=True)).squeeze(1)
        else:
            q_next = q_next_t.max(1).values
        y = batch.rewards + batch.discounts * (1 - batch.dones) * q_next
    q_a = online(preprocess(batch.obs)).gather(1, batch.actions[:, None]).squeeze(1)
    loss = F.smooth_l1_loss(q_a, y) if loss_kind == "huber" else F.mse_loss(q_a, y)
    loss.backward()
    return loss.detach(), q_a.detach().mean(), module_grad(online)


def grad_setup(gen: torch.Generator, **kw):
    """A learner whose online argmax varies with the input and whose target disagrees with it."""
    net = MLP(OBS_DIM, N_ACTIONS, HIDDEN)
    learner = make_learner(init=torch.randn(net.num_params, generator=gen) * 0.5, **kw)
    learner.target.add_(torch.randn(learner.target.shape, generator=gen) * 0.5)
    # reward scale 2: some |TD errors| above 1 (Huber's linear part), some below
    return learner, random_batch(gen, 64, OBS_DIM, N_ACTIONS, reward_scale=2.0)


@pytest.mark.parametrize("loss_kind", ["huber", "mse"])
@pytest.mark.parametrize("double", [False, True])
def test_compute_grad_matches_autograd(loss_kind, double, gen):
    learner, batch = grad_setup(gen, loss=loss_kind, double_dqn=double)
    learner.compute_grad(batch)
    loss, q_mean, ref = autograd_loss_and_grad(learner, batch, loss_kind, double)
    assert torch.allclose(learner.grad, ref, atol=1e-5, rtol=1e-4)
    assert learner.grad.abs().sum() > 0
    assert learner.pop_stats() == pytest.approx((loss.item(), q_mean.item()), rel=1e-5)


def test_grad_setup_exercises_every_branch(gen):
    """Guard for the test above: its data can tell every wrong variant from the right one."""
    learner, batch = grad_setup(gen)
    net, online, target = learner.net, learner.online_views, learner.target_views
    a_next_online = net.forward(online, batch.next_obs).argmax(1)
    a_next_target = net.forward(target, batch.next_obs).argmax(1)
    a_online_s = net.forward(online, batch.obs).argmax(1)
    assert (a_next_online != a_next_target).sum() >= 5  # double DQN differs from plain max
    assert (a_next_online != a_online_s).sum() >= 10  # Q(s') and Q(s) pick different actions
    y = td_target(net, online, target, batch.rewards, batch.next_obs, batch.dones,
                  batch.discounts, True)
    q = net.forward(online, batch.obs)
    err = (q.gather(1, batch.actions[:, None]).squeeze(1) - y).abs()
    assert (err > 1).sum() >= 5 and (err < 1).sum() >= 5  # both Huber regimes
    assert 5 <= batch.dones.sum() <= 59


def test_compute_grad_overwrites_previous_gradient(gen):
    learner = make_learner()
    batch = random_batch(gen, 32, OBS_DIM, N_ACTIONS)
    learner.compute_grad(batch)
    first = learner.grad.clone()
    learner.grad.fill_(123.0)
    learner.compute_grad(batch)
    assert torch.equal(learner.grad, first)


# ---------------------------------------------------------------------------------------------
# Target updates
# ---------------------------------------------------------------------------------------------


def test_soft_update_formula_every_step(gen):
    tau = 0.1
    learner = make_learner(tau=tau, target_update_interval=1)
    for _ in range(4):
        old_target = learner.target.clone()
        learner.update(random_batch(gen, 32, OBS_DIM, N_ACTIONS))
        online = learner.params
        expected = tau * online + (1 - tau) * old_target
        assert not torch.equal(learner.target, old_target)
        assert torch.allclose(learner.target, expected, atol=1e-6, rtol=0)


def test_soft_update_only_every_interval(gen):
    tau, interval = 0.25, 3
    learner = make_learner(tau=tau, target_update_interval=interval)
    old_target = learner.target.clone()
    for step in range(1, 10):
        learner.update(random_batch(gen, 32, OBS_DIM, N_ACTIONS))
        assert learner.steps == step
        if step % interval:
            assert torch.equal(learner.target, old_target), step
        else:
            expected = tau * learner.params + (1 - tau) * old_target
            assert torch.allclose(learner.target, expected, atol=1e-6, rtol=0), step
            assert not torch.equal(learner.target, old_target)
            old_target = learner.target.clone()


def test_hard_update_copies_exactly_on_step_c(gen):
    c = 4
    learner = make_learner(tau=1.0, target_update_interval=c)
    initial = learner.target.clone()
    assert torch.equal(initial, learner.params)
    for _ in range(c - 1):
        learner.update(random_batch(gen, 32, OBS_DIM, N_ACTIONS))
        assert torch.equal(learner.target, initial)
        assert not torch.equal(learner.params, initial)
    learner.update(random_batch(gen, 32, OBS_DIM, N_ACTIONS))
    assert learner.steps == c
    assert torch.equal(learner.target, learner.params)
    copied = learner.target.clone()
    for _ in range(c - 1):
        learner.update(random_batch(gen, 32, OBS_DIM, N_ACTIONS))
        assert torch.equal(learner.target, copied)
    learner.update(random_batch(gen, 32, OBS_DIM, N_ACTIONS))
    assert torch.equal(learner.target, learner.params)
    assert not torch.equal(learner.target, copied)


def test_target_is_not_a_view_of_online(gen):
    learner = make_learner(tau=1.0, target_update_interval=1)
    learner.update(random_batch(gen, 32, OBS_DIM, N_ACTIONS))
    snapshot = learner.target.clone()
    with torch.no_grad():
        learner.params.add_(1.0)
    assert torch.equal(learner.target, snapshot)


# ---------------------------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------------------------


def set_grad(learner: Learner, g: torch.Tensor) -> None:
    learner.grad.copy_(g)  # in place: the learner's grad views must stay valid


def test_clip_grad_scales_large_norm_down(gen):
    learner = make_learner(max_grad_norm=1.5)
    g = torch.randn(learner.params.shape, generator=gen) * 10
    norm = torch.linalg.vector_norm(g).item()
    assert norm > 1.5
    set_grad(learner, g)
    learner.clip_grad()
    after = learner.grad
    assert torch.linalg.vector_norm(after).item() <= 1.5 + 1e-5
    assert torch.linalg.vector_norm(after).item() == pytest.approx(1.5, rel=1e-5)
    assert torch.allclose(after, g * (1.5 / norm), rtol=1e-5, atol=1e-8)  # direction kept


def test_clip_grad_leaves_small_norm_unchanged(gen):
    learner = make_learner(max_grad_norm=10.0)
    g = torch.randn(learner.params.shape, generator=gen) * 0.01
    assert torch.linalg.vector_norm(g).item() < 10.0
    set_grad(learner, g)
    learner.clip_grad()
    assert torch.equal(learner.grad, g)


def test_clip_grad_zero_disables(gen):
    learner = make_learner(max_grad_norm=0.0)
    g = torch.randn(learner.params.shape, generator=gen) * 1000
    set_grad(learner, g)
    learner.clip_grad()
    assert torch.equal(learner.grad, g)


def test_update_is_grad_then_clip_then_adam_then_target(gen):
    """update() against the same steps done by hand (clipping by the documented formula)."""
    c = 0.05
    batches = [random_batch(gen, 32, OBS_DIM, N_ACTIONS, reward_scale=5.0 * (i + 1))
               for i in range(3)]
    learner = make_learner(loss="mse", max_grad_norm=c)
    ref = make_learner(loss="mse", max_grad_norm=0.0)
    unclipped = make_learner(loss="mse", max_grad_norm=0.0)
    for b in batches:
        learner.update(b)
        unclipped.update(b)
        ref.compute_grad(b)
        norm = torch.linalg.vector_norm(ref.grad).item()
        assert norm > c
        ref.grad.mul_(c / (norm + 1e-6))
        ref.optimizer.step()
        ref.update_target()
    assert torch.allclose(learner.params, ref.params, atol=1e-6, rtol=0)
    assert torch.allclose(learner.target, ref.target, atol=1e-6, rtol=0)
    # guard: clipping made a visible difference, so the comparison above can fail
    assert (unclipped.params - ref.params).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# Stats and state
# ---------------------------------------------------------------------------------------------


def test_pop_stats_means_and_reset(gen):
    learner = make_learner(loss="mse")
    assert learner.pop_stats() is None
    losses, qs = [], []
    for _ in range(3):
        batch = random_batch(gen, 16, OBS_DIM, N_ACTIONS)
        learner.compute_grad(batch)
        learner.grad.zero_()
        loss, q_mean, _ = autograd_loss_and_grad(learner, batch, "mse", True)
        losses.append(loss.item())
        qs.append(q_mean.item())
    stats = learner.pop_stats()
    assert stats == pytest.approx((sum(losses) / 3, sum(qs) / 3), rel=1e-5)
    assert learner.stat_count == 0
    assert learner.loss_sum.item() == 0.0 and learner.q_sum.item() == 0.0
    assert learner.pop_stats() is None
    batch = random_batch(gen, 16, OBS_DIM, N_ACTIONS)
    learner.compute_grad(batch)
    loss, q_mean, _ = autograd_loss_and_grad(learner, batch, "mse", True)
    assert learner.pop_stats() == pytest.approx((loss.item(), q_mean.item()), rel=1e-5)


@pytest.mark.parametrize("where", ["params", "target", "exp_avg", "exp_avg_sq"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_all_finite_sees_nan_and_inf_anywhere(gen, where, bad):
    learner = make_learner()
    learner.update(random_batch(gen, 8, OBS_DIM, N_ACTIONS))
    assert learner.all_finite()
    tensor = getattr(learner.optimizer if where.startswith("exp") else learner, where)
    tensor[3] = bad
    assert not learner.all_finite()


def test_huge_rewards_make_mse_parameters_non_finite(gen):
    """The trainer's NaN-producing setting, at the learner level: rewards beyond float32."""
    learner = make_learner(loss="mse")
    learner.update(random_batch(gen, 8, OBS_DIM, N_ACTIONS, reward_scale=1e39))
    assert not learner.all_finite()


def test_steps_count_updates(gen):
    learner = make_learner()
    for _ in range(3):
        learner.update(random_batch(gen, 8, OBS_DIM, N_ACTIONS))
    assert learner.steps == 3


def serialize(state: dict) -> dict:
    """What a checkpoint does: bytes on disk and back."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_round_trip_gives_identical_updates(gen):
    batches = [random_batch(gen, 32, OBS_DIM, N_ACTIONS, reward_scale=3.0) for _ in range(8)]
    kw = dict(tau=0.2, target_update_interval=2, max_grad_norm=1.0)
    a = make_learner(seed=0, **kw)
    for b in batches[:4]:
        a.update(b)
    state = serialize(a.state_dict())
    assert state["steps"] == 4

    b_learner = make_learner(seed=99, **kw)
    assert not torch.equal(b_learner.params, a.params)
    b_learner.load_state_dict(state)
    assert b_learner.steps == 4
    assert torch.equal(b_learner.params, a.params)
    assert torch.equal(b_learner.target, a.target)
    for b in batches[4:]:
        a.update(b)
        b_learner.update(b)
        assert torch.equal(b_learner.params, a.params)
        assert torch.equal(b_learner.target, a.target)
    assert a.steps == b_learner.steps == 8


def test_state_dict_params_are_a_snapshot(gen):
    learner = make_learner()
    state = learner.state_dict()
    params = state["params"].clone()
    target = state["target"].clone()
    learner.update(random_batch(gen, 16, OBS_DIM, N_ACTIONS))
    assert torch.equal(state["params"], params)
    assert torch.equal(state["target"], target)


def test_in_memory_snapshot_restores_the_past(gen):
    """state_dict() is a snapshot (Adam moments included), not live references."""
    batches = [random_batch(gen, 32, OBS_DIM, N_ACTIONS, reward_scale=3.0) for _ in range(6)]
    a = make_learner(seed=0)
    for b in batches[:3]:
        a.update(b)
    snapshot = a.state_dict()  # not serialized
    for b in batches[3:]:
        a.update(b)
    restored = make_learner(seed=5)
    restored.load_state_dict(snapshot)
    for b in batches[3:]:
        restored.update(b)
    assert torch.equal(restored.params, a.params)


# ---------------------------------------------------------------------------------------------
# FlatAdam against torch.optim.Adam
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["auto", "flat"])
@pytest.mark.parametrize(("lr", "eps", "grad_scale"), [
    (1e-3, 1e-8, 1.0), (0.05, 1e-4, 1.0),
    (0.01, 1e-3, 1e-3),  # eps comparable to sqrt(v): a wrong eps placement shows
])
def test_flat_adam_matches_torch_adam(kind, lr, eps, grad_scale, gen):
    n = 300
    start = torch.randn(n, generator=gen)
    params, grad = start.clone(), torch.zeros(n)
    opt = FlatAdam(params, grad, lr, eps=eps)
    if kind == "flat":
        opt.kind = "flat"  # the textbook path used where the fused kernel is missing
    ref = torch.nn.Parameter(start.clone())
    ref_opt = torch.optim.Adam([ref], lr=lr, eps=eps, foreach=False, fused=False)
    for step in range(1, 8):
        g = torch.randn(n, generator=gen) * grad_scale * step
        grad.copy_(g)
        opt.step()
        ref.grad = g.clone()
        ref_opt.step()
        # float32 bias corrections (device step count) differ from torch's float64 ones by
        # ~1e-5 relative, plus float32 rounding of params near 1 (~1e-7 each step)
        moved, ref_moved = params - start, ref.detach() - start
        assert torch.allclose(moved, ref_moved, rtol=1e-4, atol=1e-6 + lr * 1e-4), (kind, step)
    assert opt.step_count.item() == 7
    assert (params - start).abs().max() > lr  # it really moved


def test_flat_adam_state_round_trip(gen):
    n = 50
    params, grad = torch.randn(n, generator=gen), torch.zeros(n)
    opt = FlatAdam(params, grad, 0.01)
    for _ in range(3):
        grad.copy_(torch.randn(n, generator=gen))
        opt.step()
    state = serialize(opt.state_dict())
    assert state["step"].item() == 3

    params2, grad2 = params.clone(), torch.zeros(n)
    opt2 = FlatAdam(params2, grad2, 0.01)
    opt2.load_state_dict(state)
    for _ in range(3):
        g = torch.randn(n, generator=gen)
        grad.copy_(g)
        grad2.copy_(g)
        opt.step()
        opt2.step()
    assert torch.equal(params, params2)


def test_step_leaves_target_and_maybe_update_target_follows_interval(gen):
    learner = make_learner(tau=1.0, target_update_interval=2)
    initial = learner.target.clone()
    learner.step(random_batch(gen, 16, OBS_DIM, N_ACTIONS))
    assert learner.steps == 1
    assert torch.equal(learner.target, initial)
    learner.maybe_update_target()  # step 1 of 2: not due
    assert torch.equal(learner.target, initial)
    learner.step(random_batch(gen, 16, OBS_DIM, N_ACTIONS))
    assert torch.equal(learner.target, initial)
    learner.maybe_update_target()  # step 2: due
    assert torch.equal(learner.target, learner.params)


# ---------------------------------------------------------------------------------------------
# The CUDA-graph self-check, with injected fast routes (the same code the graphs go through)
# ---------------------------------------------------------------------------------------------


def filled_buffer(gen: torch.Generator, n: int = 200) -> ReplayBuffer:
    buf = ReplayBuffer(n, (OBS_DIM,), torch.float32)
    b = random_batch(gen, n, OBS_DIM, N_ACTIONS, reward_scale=3.0)
    buf.add(b.obs, b.actions, b.rewards, b.next_obs, b.dones, b.discounts)
    return buf


def eager_block(learner: Learner, buf: ReplayBuffer, idx: np.ndarray) -> None:
    learner.eager_steps(learner.gather(buf, idx), stats=True)


def raising_route(learner, buf):
    def fast(idx):
        eager_block(learner, buf, idx[:1])  # half-done work that the check must undo
        raise RuntimeError("operation not permitted when stream is capturing\n(more detail)")
    return fast


def perturbing_route(learner, buf):
    def fast(idx):
        eager_block(learner, buf, idx)
        learner.params.add_(0.05)
    return fast


def empty_graph_route(learner, buf):
    """What a capture on the wrong device leaves: the host counters advance, no tensor moves."""
    def fast(idx):
        learner.steps += len(idx)
        learner.stat_count += len(idx)
    return fast


def agreeing_route(learner, buf):
    def fast(idx):
        eager_block(learner, buf, idx)
        learner.params.add_(1e-7)  # rounding-level: within tolerance (and not kept)
    return fast


SELF_CHECK_CASES = {
    "raises": (raising_route,
               "raised RuntimeError: operation not permitted when stream is capturing"),
    "perturbs params": (perturbing_route, "max |diff| 5.0e-02 on params vs eager"),
    "records nothing": (empty_graph_route, "max |diff| {movement:.1e} on params vs eager"),
    "agrees": (agreeing_route, None),
}


@pytest.mark.parametrize("case", list(SELF_CHECK_CASES))
def test_self_check_decides_and_keeps_the_eager_trajectory(case, gen):
    """After the check, fallback or not, the learner's state is what eager ops alone give."""
    route, reason = SELF_CHECK_CASES[case]
    buf = filled_buffer(gen)
    learner = make_learner(fused=False)
    eager = make_learner(fused=False, cuda_graphs=False)
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, buf.size, (4, 16)) for _ in range(5)]
    cuda = torch.device("cuda")
    for lr in (learner, eager):
        lr.learn_block(buf, blocks[0])
    start = learner.params.clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = learner.prove_fast_route(buf, blocks[1], route(learner, buf))
        eager.learn_block(buf, blocks[1])
        for b in blocks[2:]:
            learner.learn_block(buf, b)
            eager.learn_block(buf, b)
    fallback_warnings = [str(w.message) for w in caught if w.category is RouteFallbackWarning]
    adam = f"Adam: {learner.adam_kind}"
    if reason is None:
        assert ok
        assert fallback_warnings == [] and learner.fallbacks == []
        assert learner.graphs_fallback is None and learner.cuda_graphs
        assert learner._route(cuda) == "cuda-graphs"
        assert learner.route(cuda) == f"cuda-graphs ({adam})"
    else:
        reason = reason.format(movement=(eager_params_after(blocks[:2], buf) - start).abs().max())
        assert not ok
        assert fallback_warnings == [
            f"fastdqn: learner CUDA graphs failed the self-check ({reason}); "
            "using eager torch ops"]
        assert learner.graphs_fallback == reason
        assert learner.fallbacks == [f"learner cuda-graphs: {reason}"]
        assert learner._route(cuda) == "torch-ops"  # what learn() takes from now on
        assert learner.route(cuda) == f"torch-ops ({adam}; cuda-graphs fell back: {reason})"
        assert learner.route(torch.device("cpu")) == f"torch-ops ({adam})"
    assert learner.steps == eager.steps == 20
    for name in ("params", "target", "grad"):
        assert torch.equal(getattr(learner, name), getattr(eager, name)), name
    for name in ("exp_avg", "exp_avg_sq", "step_count"):
        assert torch.equal(getattr(learner.optimizer, name), getattr(eager.optimizer, name)), name


def eager_params_after(blocks: list[np.ndarray], buf: ReplayBuffer) -> torch.Tensor:
    lr = make_learner(fused=False, cuda_graphs=False)
    for b in blocks:
        lr.learn_block(buf, b)
    return lr.params


def test_self_check_counts_stats_like_the_graphs(gen):
    """The checked block is eager with stats on every step, as the graphs record them, and a
    failed check leaves no stats of its own behind."""
    buf = filled_buffer(gen)
    idx = np.random.default_rng(1).integers(0, buf.size, (3, 16))
    learner = make_learner(fused=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RouteFallbackWarning)
        learner.prove_fast_route(buf, idx, perturbing_route(learner, buf))
    ref = make_learner(fused=False)
    eager_block(ref, buf, idx)
    assert learner.stat_count == ref.stat_count == 3
    assert learner.pop_stats() == ref.pop_stats()


def test_self_check_falls_back_once(gen):
    """After a fallback the fast route is never tried again and never warns again."""
    buf = filled_buffer(gen)
    rng = np.random.default_rng(2)
    learner = make_learner(fused=False)
    eager = make_learner(fused=False, cuda_graphs=False)
    calls = []
    perturb = perturbing_route(learner, buf)

    def fast(idx):
        calls.append(len(idx))
        perturb(idx)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            idx = rng.integers(0, buf.size, (2, 16))
            assert not learner.prove_fast_route(buf, idx, fast)
            eager.learn_block(buf, idx)
    assert calls == [2]
    assert [w.category for w in caught] == [RouteFallbackWarning]
    assert len(learner.fallbacks) == 1
    assert torch.equal(learner.params, eager.params) and learner.steps == eager.steps == 6


def test_snapshot_restore_round_trip(gen):
    buf = filled_buffer(gen)
    learner = make_learner(fused=False)
    learner.learn_block(buf, np.arange(32).reshape(2, 16))
    snap = learner.snapshot()
    params = learner.params
    learner.learn_block(buf, np.arange(32, 64).reshape(2, 16))
    assert not torch.equal(learner.params, snap["params"])
    learner.restore(snap)
    assert learner.params is params  # in place: graphs keep their addresses
    after = learner.snapshot()
    assert after.keys() == snap.keys()
    for name in snap:
        assert torch.equal(after[name], snap[name]), name
    assert learner.steps == 2
