"""The acting forward pass: graphed on CUDA, each fast route kept only once it agrees with the
plain forward pass, and the plain forward pass after a fallback."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import CUDA_DEVICES

from fastdqn.errors import RouteFallbackWarning
from fastdqn.learners.acting import ActingQ, decoy_obs
from fastdqn.learners.flat import Learner
from fastdqn.nets.mlp import MLP, preprocess


def _acting_net(device: str):
    net = MLP(4, 3, (16,))
    return net, Learner(net, lr=1e-3, gamma=0.99, tau=0.01, target_update_interval=1,
                        device=device, init=net.init(torch.Generator().manual_seed(2)))


def test_acting_q_is_the_forward_pass_off_cuda():
    net, learner = _acting_net("cpu")
    obs = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    acting = ActingQ(net, learner.online_views, obs, graph=True)
    assert acting.graph is None
    assert torch.equal(acting(obs), net.forward(learner.online_views, obs))


def _forward_of(acting: ActingQ):
    return lambda o: acting.net.forward(acting.views, preprocess(o))


def _raising_capture(acting):
    def capture(obs):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
    return capture


def _offset_capture(acting):
    return lambda obs: (lambda o: _forward_of(acting)(o) + 0.5)


def _stale_capture(acting):
    """A graph that replays nothing: its output stays what the capture run computed."""
    def capture(obs):
        q = _forward_of(acting)(obs)
        return lambda o: q
    return capture


ACTING_CASES = {
    "raises": (_raising_capture,
               "raised RuntimeError: CUDA error: operation not permitted when stream is capturing"),
    "disagrees": (_offset_capture, "max |diff| 5.0e-01 on q vs eager"),
    "replays nothing": (_stale_capture, "max |diff| {stale:.1e} on q vs eager"),
}


@pytest.mark.parametrize("case", list(ACTING_CASES))
def test_acting_q_falls_back_to_the_plain_forward(case):
    capture, reason = ACTING_CASES[case]
    net, learner = _acting_net("cpu")
    obs = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    acting = ActingQ(net, learner.online_views, obs, graph=False)
    plain = net.forward(learner.online_views, obs)
    stale = (net.forward(learner.online_views, torch.zeros_like(obs)) - plain).abs().max()
    reason = reason.format(stale=stale)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not acting.prove_fast_route(capture(acting), obs)
        assert not acting.prove_fast_route(_offset_capture(acting), obs)  # never tried again
    assert [str(w.message) for w in caught] == [
        f"fastdqn: acting CUDA graph failed the self-check ({reason}); "
        "using the plain forward pass"]
    assert [w.category for w in caught] == [RouteFallbackWarning]
    assert acting.fallbacks == [f"acting cuda-graph: {reason}"]
    assert acting.graph is None
    learner.params.add_(0.1)
    other = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(acting(other), net.forward(learner.online_views, other))


def test_acting_q_keeps_an_agreeing_fast_route():
    net, learner = _acting_net("cpu")
    obs = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    acting = ActingQ(net, learner.online_views, obs, graph=False)
    decoys, replays = [], []

    def capture(decoy):
        decoys.append(decoy)

        def replay(o):
            replays.append(o)
            return _forward_of(acting)(o)
        return replay

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert acting.prove_fast_route(capture, obs)
    assert acting.fallbacks == []
    assert torch.equal(decoys[0], torch.zeros_like(obs))  # captured on an input unlike obs
    other = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(acting(other), net.forward(learner.online_views, other))
    assert replays[-1] is other  # acting runs on the fast route now


def test_decoy_differs_from_the_example():
    obs = torch.randn(3, 4)
    assert torch.equal(decoy_obs(obs), torch.zeros(3, 4))
    assert torch.equal(decoy_obs(torch.zeros(3, 4, dtype=torch.uint8)),
                       torch.ones(3, 4, dtype=torch.uint8))


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_acting_q_graph_follows_parameter_updates(device):
    """Run while cuda:0 is current: on cuda:1 a capture on the current device would replay
    nothing and keep returning the Q-values of its capture."""
    with torch.cuda.device(0):
        net, learner = _acting_net(device)
        obs = torch.randn(5, 4, device=device)
        acting = ActingQ(net, learner.online_views, obs, graph=True)
        assert acting.graph is not None and acting.fallbacks == [], acting.fallbacks
        for _ in range(3):
            other = torch.randn(5, 4, device=device)
            q = acting(other).clone()
            assert q.device == torch.device(device)
            torch.testing.assert_close(q, net.forward(learner.online_views, other))
            learner.params.add_(0.1)  # the graph must read the live parameters
        assert torch.cuda.current_device() == 0
