"""The numba kernels of the CPU step against hand-computed values, and the three learner routes
(numba-fused CPU, CUDA graphs, plain torch ops) against each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CUDA_DEVICES

from fastdqn.errors import RouteFallbackWarning
from fastdqn.learners import kernels
from fastdqn.learners.flat import GraphedSteps, Learner
from fastdqn.nets.mlp import MLP
from fastdqn.replay.rows import ReplayBuffer

# The tiny-net numbers of test_learner.py: online Q(s) = [s, 2], target Q(s') = [2s', 10].
# Batch rows i read buffer rows IDX[i], so the kernel must go through the index.
IDX = np.array([3, 0, 2, 1])
S = [1.0, 3.0, 6.0, 0.0]
S_NEXT = [3.0, 1.0, 3.0, 6.0]
ACTIONS = [0, 1, 0, 1]  # Q(s, a) = [1, 2, 6, 2]
REWARDS = [1.0, -2.0, 0.5, 0.25]
DONES = [0.0, 0.0, 1.0, 0.0]
GAMMA = np.float32(0.5)


DISCOUNTS = [0.5, 0.5, 0.5, 0.25]  # row 3 is an n-step row: its discount is gamma^2
WEIGHTS = np.array([1.0, 0.5, 1.0, 2.0], np.float32)  # PER importance weights per batch row


def td_inputs(double: bool):
    q = [[s, 2.0] for s in S] + ([[s, 2.0] for s in S_NEXT] if double else [])
    q_target = [[2 * s, 10.0] for s in S_NEXT]
    actions, rewards, dones = np.zeros(4, np.int64), np.zeros(4, np.float32), np.zeros(4, np.float32)
    discounts = np.zeros(4, np.float32)
    actions[IDX], rewards[IDX], dones[IDX], discounts[IDX] = ACTIONS, REWARDS, DONES, DISCOUNTS
    return (np.array(q, np.float32), np.array(q_target, np.float32), IDX, actions, rewards, dones,
            discounts)


@pytest.mark.parametrize("double, y", [
    # double: target value at the online argmax of Q(s') (row 0: online says 0, target 1).
    (True, [1.0 + 0.5 * 6, -2.0 + 0.5 * 10, 0.5, 0.25 + 0.25 * 12]),
    (False, [1.0 + 0.5 * 10, -2.0 + 0.5 * 10, 0.5, 0.25 + 0.25 * 12]),
])
@pytest.mark.parametrize("huber", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_td_grad_hand_computed(double, y, huber, weighted):
    dq, grad_bias, stats = np.full((4, 2), 7.0, np.float32), np.full(2, 7.0, np.float32), np.zeros(3)
    td_abs = np.zeros(4, np.float32)
    w = WEIGHTS if weighted else np.ones(4, np.float32)
    kernels.td_grad(*td_inputs(double), w, huber, double, False, dq, grad_bias, td_abs, stats)
    diff = np.array([1.0, 2.0, 6.0, 2.0]) - np.array(y)
    g = w * (np.clip(diff, -1, 1) / 4 if huber else 2 * diff / 4)
    expected = np.zeros((4, 2))
    expected[np.arange(4), ACTIONS] = g
    np.testing.assert_allclose(dq, expected, rtol=1e-6)
    assert grad_bias.tolist() == pytest.approx([g[0] + g[2], g[1] + g[3]])
    assert td_abs.tolist() == pytest.approx(np.abs(diff).tolist())
    loss = np.where(np.abs(diff) < 1, 0.5 * diff**2, np.abs(diff) - 0.5) if huber else diff**2
    assert stats.tolist() == pytest.approx([(w * loss).mean(), 2.75, 1.0])


def test_td_grad_dueling_hand_computed():
    """One row, 2 actions, outputs [V, A0, A1]: online s = [1, 3, 1] -> Q = 1 + A - 2 = [2, 0];
    target s' = [0, 4, 8] -> Q' = [-2, 2]; double picks a* = argmax online Q(s') = [5, 3, 1]
    -> Q = [6, 4], a* = 0 -> y = 1 + 0.5 * -2 = 0; taken action 0: diff = 2 - 0 = 2."""
    out = np.array([[1, 3, 1], [5, 3, 1]], np.float32)
    out_target = np.array([[0, 4, 8]], np.float32)
    d_out, grad_bias, td_abs, stats = (np.zeros((1, 3), np.float32), np.zeros(3, np.float32),
                                       np.zeros(1, np.float32), np.zeros(3))
    kernels.td_grad(out, out_target, np.array([0]), np.array([0]), np.array([1.0], np.float32),
                    np.zeros(1, np.float32), np.array([0.5], np.float32),
                    np.ones(1, np.float32), False, True, True, d_out, grad_bias, td_abs, stats)
    g = 2 * 2.0  # MSE gradient 2 * diff / B
    assert td_abs.tolist() == [2.0]
    # dV = g; dA = [g - g/2, -g/2]
    assert d_out.tolist() == [[g, g / 2, -g / 2]]
    assert grad_bias.tolist() == [g, g / 2, -g / 2]
    assert stats.tolist() == [4.0, 2.0, 1.0]


def test_relu_backward_masks_and_sums_columns():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((5, 3)).astype(np.float32)
    h = np.maximum(rng.standard_normal((5, 3)), 0).astype(np.float32)
    expected = d * (h > 0)
    gb = np.full(3, 9.0, np.float32)
    kernels.relu_backward(d, h, gb)
    assert d.tolist() == expected.tolist()
    assert gb == pytest.approx(expected.sum(0), abs=1e-6)


def test_gather_rows_stacks_obs_and_next_obs_and_scales_uint8():
    obs = np.arange(12, dtype=np.uint8).reshape(6, 2) * 20
    nxt = obs + 1
    out = np.zeros((4, 2), np.float32)
    kernels.gather_rows(np.array([5, 1]), obs, nxt, np.float32(255.0), out)
    expected = np.concatenate([obs[[5, 1]], nxt[[5, 1]]]).astype(np.float32) / np.float32(255)
    assert out.tolist() == expected.tolist()


@pytest.mark.parametrize("max_norm", [0.0, 0.05, 100.0])
def test_clip_adam_matches_torch_adam_and_lerp(max_norm):
    g = torch.Generator().manual_seed(3)
    p = torch.randn(300, generator=g)
    ref = p.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=1e-2, eps=1e-8)
    m, v, step = torch.zeros(300), torch.zeros(300), np.zeros(1, np.float32)
    target, ref_target = torch.zeros(300), torch.zeros(300)
    for _ in range(20):
        grad = torch.randn(300, generator=g)
        ref.grad = grad.clone()
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_([ref], max_norm)
        opt.step()
        ref_target.lerp_(ref.detach(), 0.1)
        kernels.clip_adam(p.numpy(), grad.numpy(), m.numpy(), v.numpy(), step, 1e-2, 0.9, 0.999,
                          1e-8, max_norm, target.numpy(), 0.1)
    assert step[0] == 20
    torch.testing.assert_close(p, ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v, opt.state[ref]["exp_avg_sq"], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(target, ref_target, rtol=1e-5, atol=1e-6)


def filled_buffer(obs_dtype=torch.float32, size=500) -> ReplayBuffer:
    g = torch.Generator().manual_seed(7)
    buf = ReplayBuffer(1000, (6,), obs_dtype, "cpu")
    for _ in range(size // 10):
        if obs_dtype == torch.uint8:
            o, o2 = (torch.randint(256, (2, 10, 6), generator=g, dtype=torch.uint8))
        else:
            o, o2 = torch.randn(2, 10, 6, generator=g)
        buf.add(o, torch.randint(3, (10,), generator=g), torch.randn(10, generator=g) * 3, o2,
                (torch.rand(10, generator=g) < 0.2).float(),
                0.99 ** torch.randint(1, 4, (10,), generator=g).float())
    return buf


def learner_pair(device="cpu", **kw) -> tuple[Learner, Learner]:
    """Two learners with the same init: the default route for the device, and plain torch."""
    net = MLP(6, 3, (32, 16))
    init = net.init(torch.Generator().manual_seed(1))
    args = dict(lr=3e-3, gamma=0.97, tau=0.05, target_update_interval=1, device=device,
                init=init) | kw
    return Learner(net, **args), Learner(net, fused=False, cuda_graphs=False, **args)


@pytest.mark.parametrize("obs_dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("kw", [
    {}, {"loss": "mse"}, {"double_dqn": False}, {"max_grad_norm": 0.0}, {"max_grad_norm": 0.01},
    {"tau": 1.0, "target_update_interval": 3},
])
def test_cpu_fused_route_matches_torch_route(obs_dtype, kw):
    buf = filled_buffer(obs_dtype)
    fused, plain = learner_pair(**kw)
    rng = np.random.default_rng(0)
    for _ in range(12):
        idx = rng.integers(0, buf.size, (4, 32))
        fused.learn_block(buf, idx)
        plain.learn_block(buf, idx)
    assert fused._cpu is not None and plain._cpu is None
    assert fused.steps == plain.steps == 48
    assert fused.optimizer.step_count.item() == 48
    for a, b in [(fused.params, plain.params), (fused.target, plain.target),
                 (fused.optimizer.exp_avg, plain.optimizer.exp_avg)]:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.equal(fused.params, learner_pair()[0].params)  # it did learn


def test_cpu_fused_stats_are_the_mean_over_every_step():
    buf = filled_buffer()
    fused, plain = learner_pair()
    idx = np.random.default_rng(1).integers(0, buf.size, (5, 32))
    fused.learn_block(buf, idx)
    for row in idx:
        plain.step(buf.gather(torch.from_numpy(row)), stats=True)
        plain.maybe_update_target()
    assert fused.pop_stats() == pytest.approx(plain.pop_stats(), rel=1e-4)
    assert fused.pop_stats() is None


def test_route_names_the_path_learn_takes():
    fused, plain = learner_pair()
    assert fused.route(torch.device("cpu")).startswith("cpu-fused")
    assert plain.route(torch.device("cpu")).startswith("torch-ops")
    assert fused.route(torch.device("cuda")).startswith("cuda-graphs")
    assert fused.route(torch.device("mps")).startswith("torch-ops")
    assert plain.route(torch.device("cuda")).startswith("torch-ops")  # --no-cuda-graphs


def test_learn_marks_every_stage():
    buf = filled_buffer()
    numba, plain = learner_pair(native=False)
    for learner in (numba, plain):
        laps: list[str] = []
        learner.learn_block(buf, np.zeros((2, 8), np.int64), laps.append)
        assert laps == ["sample", "learn", "target", "learn", "target"]
    native, _ = learner_pair()
    laps = []
    native.learn_block(buf, np.zeros((2, 8), np.int64), laps.append)
    assert laps == ["sample", "learn"]  # the block is one native call, target updates inside


def cuda_pair(device: str, **kw) -> tuple[ReplayBuffer, Learner, Learner]:
    cpu_buf = filled_buffer()
    buf = ReplayBuffer(cpu_buf.capacity, (6,), torch.float32, device)
    buf.load_state_dict(cpu_buf.state_dict())
    return (buf, *learner_pair(device, **kw))


@pytest.mark.parametrize("device", CUDA_DEVICES)
@pytest.mark.parametrize("kw", [{}, {"tau": 1.0, "target_update_interval": 3}])
def test_cuda_graph_route_matches_eager(kw, device):
    with torch.cuda.device(0):
        buf, graphed, eager = cuda_pair(device, **kw)
        rng = np.random.default_rng(0)
        steps = 0
        for i in range(10):  # past the eager warm-up blocks, so most steps replay graphs
            idx = rng.integers(0, buf.size, (3 + i % 2, 32))  # K = 3 and 4: two captures
            graphed.learn_block(buf, idx)
            eager.learn_block(buf, idx)
            steps += len(idx)
        torch.cuda.synchronize(device)
        assert torch.cuda.current_device() == 0
    assert graphed.fallbacks == [], graphed.fallbacks  # the self-check accepted the graphs
    assert graphed.route(buf.device).startswith("cuda-graphs")
    assert graphed._graphs is not None and graphed._graphs.graphs
    assert graphed.steps == eager.steps == steps
    for a, b in [(graphed.params, eager.params), (graphed.target, eager.target),
                 (graphed.optimizer.exp_avg_sq, eager.optimizer.exp_avg_sq)]:
        assert a.device == torch.device(device)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert graphed.pop_stats() is not None


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_cuda_graph_capture_failure_falls_back_to_eager(device, monkeypatch):
    """The real capture path goes through the self-check: a capture that raises leaves the
    learner on eager ops, on the eager trajectory, with one warning."""
    def broken(self, idx):
        raise RuntimeError("boom")

    monkeypatch.setattr(GraphedSteps, "_steps", broken)
    with torch.cuda.device(0):
        buf, graphed, eager = cuda_pair(device)
        rng = np.random.default_rng(0)
        with pytest.warns(RouteFallbackWarning) as caught:
            for _ in range(6):
                idx = rng.integers(0, buf.size, (4, 32))
                graphed.learn_block(buf, idx)
                eager.learn_block(buf, idx)
        torch.cuda.synchronize(device)
    assert [str(w.message) for w in caught if w.category is RouteFallbackWarning] == [
        "fastdqn: learner CUDA graphs failed the self-check (raised RuntimeError: boom); "
        "using eager torch ops"]
    assert graphed.fallbacks == ["learner cuda-graphs: raised RuntimeError: boom"]
    assert graphed._graphs is None and graphed._route(buf.device) == "torch-ops"
    assert graphed.route(buf.device).endswith("cuda-graphs fell back: raised RuntimeError: boom)")
    assert graphed.steps == eager.steps == 24
    torch.testing.assert_close(graphed.params, eager.params, rtol=1e-5, atol=1e-6)


def test_non_cuda_routes_reach_no_cuda_call(monkeypatch):
    """MPS takes the plain torch route: on the CPU, with the fused step off, no torch.cuda
    function may be reached (each one here raises), CUDA graphs asked for or not."""
    from fastdqn.learners.acting import ActingQ

    def forbidden(*args, **kwargs):
        raise AssertionError("a CUDA-only call was reached")

    for name in ("CUDAGraph", "Stream", "Event", "graph", "synchronize", "current_stream",
                 "stream", "set_stream", "device"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    buf = filled_buffer()
    net = MLP(6, 3, (32, 16))
    learner = Learner(net, lr=3e-3, gamma=0.97, tau=0.05, target_update_interval=1, fused=False,
                      cuda_graphs=True)
    learner.learn_block(buf, np.zeros((3, 8), np.int64))
    assert learner.steps == 3
    ActingQ(learner.net, learner.online_views, buf.obs[:4], graph=True)(buf.obs[:4])
