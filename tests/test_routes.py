"""Every learner route against the reference (nn.Module + autograd + torch.optim.Adam), after many
steps, for every combination of options: loss, double DQN, n-step discounts, prioritized
replay's importance weights and priorities, dueling, soft or hard target, gradient clipping."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fastdqn.learners.flat import CpuStep, Learner
from fastdqn.learners.native import NativeStep
from fastdqn.learners.reference import ReferenceLearner
from fastdqn.nets.mlp import MLP
from fastdqn.replay.prioritized import PrioritizedSampler, TorchPrioritized
from fastdqn.replay.rows import ReplayBuffer
from fastdqn.replay.uniform import UniformSampler

OBS, ACTIONS, HIDDEN, BATCH, BLOCKS, K = 6, 3, (32, 16), 32, 12, 4


def n_step_buffer(obs_dtype: torch.dtype = torch.float32) -> ReplayBuffer:
    """500 random rows whose discounts are gamma^k, k = 1..3 (n-step rows with cut windows)."""
    g = torch.Generator().manual_seed(7)
    buf = ReplayBuffer(1000, (OBS,), obs_dtype)
    for _ in range(50):
        if obs_dtype == torch.uint8:
            o, o2 = torch.randint(256, (2, 10, OBS), generator=g, dtype=torch.uint8)
        else:
            o, o2 = torch.randn(2, 10, OBS, generator=g)
        buf.add(o, torch.randint(ACTIONS, (10,), generator=g), torch.randn(10, generator=g) * 3,
                o2, (torch.rand(10, generator=g) < 0.2).float(),
                0.97 ** torch.randint(1, 4, (10,), generator=g).float())
    return buf


def make_sampler(kind: str, buf: ReplayBuffer):
    if kind == "uniform":
        return UniformSampler(5)
    sampler = (PrioritizedSampler(buf.capacity, 0.6, 1e-6, 5) if kind == "per"
               else TorchPrioritized(buf.capacity, 0.6, 1e-6))
    rows = np.arange(buf.size)
    sampler.on_add(rows if kind == "per" else torch.from_numpy(rows))
    return sampler


def flat_state(learner) -> dict[str, torch.Tensor]:
    """Params, target and Adam moments in the flat layout, whatever the route."""
    if isinstance(learner, Learner):
        opt = learner.optimizer
        return {"params": learner.params, "target": learner.target, "exp_avg": opt.exp_avg,
                "exp_avg_sq": opt.exp_avg_sq}

    def cat(tensors):
        return torch.cat([t.detach().reshape(-1) for t in tensors])

    state = [learner.optimizer.state[p] for p in learner.params]
    return {"params": cat(learner.params), "target": cat(learner.target_params),
            "exp_avg": cat(s["exp_avg"] for s in state),
            "exp_avg_sq": cat(s["exp_avg_sq"] for s in state)}


def train_route(route: str, sampler_kind: str, obs_dtype=torch.float32, hidden=HIDDEN, **opts):
    net = MLP(OBS, ACTIONS, hidden, opts.pop("dueling"))
    init = net.init(torch.Generator().manual_seed(1))
    # Adam turns any gradient g into a step of about lr * g / (|g| + eps): with the default eps
    # 1e-8, a component that is 0 on one route and 1e-9 (rounding) on another would move by
    # lr on one side only. eps 1e-5 keeps such analytic zeros at zero without hiding real
    # differences (test_the_comparison_can_fail). lr 1e-3: at 3e-3 a double-DQN argmax that is
    # a near tie in one step's Q(s') can flip on the last bit of a GEMM and the runs part.
    args = dict(lr=1e-3, gamma=0.97, adam_eps=1e-5, **opts)
    if route == "reference":
        learner = ReferenceLearner(net.to_module(init), **args)
    else:
        learner = Learner(net, init=init, fused=route in CPU_ROUTES, native=route == "cpu-native",
                          cuda_graphs=False, **args)
    buf = n_step_buffer(obs_dtype)
    sampler = make_sampler(sampler_kind, buf)
    for j in range(BLOCKS):
        learner.learn(buf, sampler, K, BATCH, beta=0.4 + 0.05 * j)
    if route in CPU_ROUTES:  # the route asked for is the one that ran
        assert isinstance(learner._cpu, NativeStep if route == "cpu-native" else CpuStep), route
    return learner, sampler


CPU_ROUTES = ("cpu-native", "cpu-numba")
ROUTES = [*CPU_ROUTES, "torch-ops"]


OPTIONS = [dict(loss=loss, double_dqn=double, dueling=dueling, max_grad_norm=clip, **target)
           for loss, double, dueling, clip, target in itertools.product(
               ["huber", "mse"], [True, False], [False, True], [10.0, 0.05, 0.0],
               [dict(tau=0.05, target_update_interval=1),
                dict(tau=1.0, target_update_interval=3)])]


def option_id(o: dict) -> str:
    return (f"{o['loss']}-{'double' if o['double_dqn'] else 'max'}-"
            f"{'dueling' if o['dueling'] else 'plain'}-clip{o['max_grad_norm']:g}-"
            f"{'soft' if o['tau'] < 1 else 'hard'}")


@pytest.mark.parametrize("sampler_kind", ["uniform", "per"])
@pytest.mark.parametrize("opts", OPTIONS, ids=option_id)
def test_every_route_equals_the_reference(opts, sampler_kind):
    ref, ref_sampler = train_route("reference", sampler_kind, **dict(opts))
    want = flat_state(ref)
    init = MLP(OBS, ACTIONS, HIDDEN, opts["dueling"]).init(torch.Generator().manual_seed(1))
    assert (want["params"] - init).abs().max() > 1e-2  # it did learn
    for route in ROUTES:
        fast, fast_sampler = train_route(route, sampler_kind, **dict(opts))
        assert fast.steps == ref.steps == BLOCKS * K
        assert (fast._cpu is not None) == (route in CPU_ROUTES)
        got = flat_state(fast)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=2e-4, atol=2e-5,
                                       msg=f"{route}: {name}")
        if sampler_kind == "per":  # the priorities written back are the same |TD errors|
            np.testing.assert_allclose(fast_sampler.priorities(), ref_sampler.priorities(),
                                       rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("sampler_kind", ["uniform", "per"])
@pytest.mark.parametrize("opts", [o for o in OPTIONS if not o["dueling"] and o["max_grad_norm"]],
                         ids=option_id)
def test_a_linear_network_equals_the_reference_on_every_route(opts, sampler_kind):
    """No hidden layer: the linear head --network rbf trains on the flat route."""
    ref, ref_sampler = train_route("reference", sampler_kind, hidden=(), **dict(opts))
    want = flat_state(ref)
    init = MLP(OBS, ACTIONS, ()).init(torch.Generator().manual_seed(1))
    assert (want["params"] - init).abs().max() > 1e-2  # it did learn
    for route in ROUTES:
        fast, fast_sampler = train_route(route, sampler_kind, hidden=(), **dict(opts))
        assert (fast._cpu is not None) == (route in CPU_ROUTES)
        for name, value in flat_state(fast).items():
            torch.testing.assert_close(value, want[name], rtol=2e-4, atol=2e-5,
                                       msg=f"{route}: {name}")
        if sampler_kind == "per":
            np.testing.assert_allclose(fast_sampler.priorities(), ref_sampler.priorities(),
                                       rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("route", ROUTES)
def test_uint8_observations_are_scaled_the_same_on_every_route(route):
    opts = dict(loss="huber", double_dqn=True, dueling=True, max_grad_norm=10.0, tau=0.05,
                target_update_interval=1)
    ref, _ = train_route("reference", "per", torch.uint8, **dict(opts))
    fast, _ = train_route(route, "per", torch.uint8, **dict(opts))
    torch.testing.assert_close(flat_state(fast)["params"], flat_state(ref)["params"],
                               rtol=2e-4, atol=2e-5)


def test_device_priorities_route_equals_the_reference():
    """TorchPrioritized (what CUDA captures in its graph) through the flat torch ops, eagerly."""
    opts = dict(loss="huber", double_dqn=True, dueling=True, max_grad_norm=10.0, tau=0.05,
                target_update_interval=1)
    ref, ref_sampler = train_route("reference", "torch-per", **dict(opts))
    fast, fast_sampler = train_route("torch-ops", "torch-per", **dict(opts))
    torch.testing.assert_close(flat_state(fast)["params"], flat_state(ref)["params"],
                               rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(fast_sampler.priorities, ref_sampler.priorities, rtol=2e-3,
                               atol=1e-6)


def test_the_comparison_can_fail():
    """Guard: one option changed on one side is caught by the same tolerance."""
    opts = dict(loss="huber", double_dqn=True, dueling=False, max_grad_norm=10.0, tau=0.05,
                target_update_interval=1)
    ref, _ = train_route("reference", "per", **dict(opts))
    for change in [{"double_dqn": False}, {"loss": "mse"}, {"dueling": True}, {"tau": 0.06}]:
        fast, _ = train_route("cpu-native", "per", **{**opts, **change})
        got, want = flat_state(fast)["params"], flat_state(ref)["params"]
        assert got.shape != want.shape or not torch.allclose(got, want, rtol=2e-4, atol=2e-5)
    fast, _ = train_route("cpu-native", "uniform", **dict(opts))
    assert not torch.allclose(flat_state(fast)["params"], flat_state(ref)["params"],
                              rtol=2e-4, atol=2e-5)
