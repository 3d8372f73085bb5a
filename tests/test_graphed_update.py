"""The module learner's update as a CUDA graph (graphed_update.py).

On the CPU: the update run on static inputs (what a graph captures) follows the eager reference
step for step, bit for bit; the self-check keeps a route that agrees and turns off, with one
warning and the eager trajectory kept, a route that does nothing, perturbs or raises; a loaded
optimizer state keeps this run's settings. On CUDA (skipped elsewhere): the captured graphs
replay the reference's trajectory for CNNs, weighted or not, Adam or RMSprop, on the current
device or another one, and a module that cannot be captured falls back with the current stream
put back and the learner usable.
"""

from __future__ import annotations

import copy
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import CUDA_DEVICES

from fastdqn.errors import RouteFallbackWarning
from fastdqn.learners.graphed_update import WARMUP, GraphedUpdates, StaticUpdate, layout
from fastdqn.learners.reference import ReferenceLearner
from fastdqn.nets.cnn import cnn_for
from fastdqn.replay.rows import FIELDS, Batch

MINATAR_SPACE = gym.spaces.Box(0.0, 1.0, (10, 10, 4), bool)
SMALL_NATURE_SPACE = gym.spaces.Box(0, 255, (2, 36, 36), np.uint8)  # the Nature CNN's least input
ARGS = dict(lr=1e-3, gamma=0.99, tau=1.0, target_update_interval=3, adam_eps=1e-5)


def learner(space: gym.Space, *, dueling: bool = False, optimizer: str = "adam",
            double: bool = True, device: str = "cpu", cuda_graphs: bool = False,
            minatar: bool = True) -> ReferenceLearner:
    module = cnn_for(space, 3, dueling, seed=0, channels_last_hint=minatar)
    return ReferenceLearner(module, optimizer=optimizer, double_dqn=double, device=device,
                            cuda_graphs=cuda_graphs, **ARGS)


def batch_of(space: gym.Space, gen: torch.Generator, n: int = 8,
             device: str = "cpu") -> Batch:
    dim = int(np.prod(space.shape))
    obs = torch.randint(0, 256, (2, n, dim), generator=gen, dtype=torch.uint8)
    if space.dtype == np.bool_:
        obs = obs > 200
    b = Batch(obs=obs[0], actions=torch.randint(0, 3, (n,), generator=gen),
              rewards=torch.randn(n, generator=gen), next_obs=obs[1],
              dones=(torch.rand(n, generator=gen) < 0.3).float(),
              discounts=torch.full((n,), 0.99))
    return Batch(*(getattr(b, f).to(device) for f in FIELDS))


def weights_of(gen: torch.Generator, n: int = 8, device: str = "cpu") -> torch.Tensor:
    return (torch.rand(n, generator=gen) + 0.5).to(device)


def assert_same_state(a: ReferenceLearner, b: ReferenceLearner, exact: bool = True) -> None:
    sa, sb = a.live_state(), b.live_state()
    assert sa.keys() == sb.keys()
    for k in sa:
        if exact:
            assert torch.equal(sa[k], sb[k].to(sa[k].device)), k
        else:
            torch.testing.assert_close(sa[k].cpu(), sb[k].cpu(), rtol=1e-4, atol=1e-6, msg=k)


CASES = {
    "minatar-adam-uniform": (MINATAR_SPACE, dict(), False),
    "minatar-rmsprop-weighted": (MINATAR_SPACE, dict(optimizer="rmsprop", double=False), True),
    "nature-dueling-weighted": (SMALL_NATURE_SPACE, dict(dueling=True, minatar=False), True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_update_on_static_inputs_follows_the_reference_step_for_step(case):
    """What a graph captures reads its inputs from tensors the batches are copied into: each
    step must see the new batch (and weights), never the one it was built on."""
    space, opts, weighted = CASES[case]
    gen = torch.Generator().manual_seed(1)
    static_route, eager = learner(space, **opts), learner(space, **opts)
    batches = [batch_of(space, gen) for _ in range(5)]
    weights = [weights_of(gen) if weighted else None for _ in batches]
    static = StaticUpdate(static_route, batches[0], weights[0])
    for b, w in zip(batches, weights):
        static.load(b, w)
        td_static = static.run().clone()
        td_eager = eager.update(b, w)
        assert torch.equal(td_static, td_eager)
        assert_same_state(static_route, eager)
    assert not torch.equal(eager.params[0], learner(space, **opts).params[0])  # it learned


def test_a_layout_is_shapes_dtypes_and_weighting():
    gen = torch.Generator().manual_seed(2)
    b = batch_of(MINATAR_SPACE, gen)
    assert layout(b, None) == layout(batch_of(MINATAR_SPACE, gen), None)
    assert layout(b, None) != layout(b, weights_of(gen))
    assert layout(b, None) != layout(batch_of(MINATAR_SPACE, gen, n=4), None)
    assert layout(b, None) != layout(batch_of(SMALL_NATURE_SPACE, gen), None)


def doing_nothing(lr: ReferenceLearner, b: Batch, w) -> torch.Tensor:
    return torch.zeros_like(b.rewards)


def doubled_lr(lr: ReferenceLearner, b: Batch, w) -> torch.Tensor:
    for g in lr.optimizer.param_groups:
        g["lr"] *= 2
    td = lr.update(b, w)
    for g in lr.optimizer.param_groups:
        g["lr"] /= 2
    return td


def raising(lr: ReferenceLearner, b: Batch, w) -> torch.Tensor:
    lr.update(b, w)  # it changes the state first: the eager run must still start clean
    raise RuntimeError("operation not permitted when stream is capturing\nmore detail")


def wrong_td(lr: ReferenceLearner, b: Batch, w) -> torch.Tensor:
    return lr.update(b, w) + 1.0


def agreeing(lr: ReferenceLearner, b: Batch, w) -> torch.Tensor:
    static = StaticUpdate(lr, b, w)
    return static.run()


FAST_ROUTES = {
    "agrees": (agreeing, None),
    "does nothing": (doing_nothing, "max |diff|"),
    "doubled lr": (doubled_lr, "max |diff|"),
    "wrong td": (wrong_td, "on td vs eager"),
    "raises": (raising, "raised RuntimeError: operation not permitted when stream is capturing"),
}


@pytest.mark.parametrize("name", list(FAST_ROUTES))
@pytest.mark.parametrize("weighted", [False, True])
def test_the_self_check_keeps_the_eager_trajectory_and_falls_back_once(name, weighted):
    route, reason = FAST_ROUTES[name]
    gen = torch.Generator().manual_seed(3)
    checked, eager = learner(MINATAR_SPACE), learner(MINATAR_SPACE)
    batches = [batch_of(MINATAR_SPACE, gen) for _ in range(4)]
    weights = [weights_of(gen) if weighted else None for _ in batches]
    for lr in (checked, eager):  # the first step creates the optimizer state
        lr.step(batches[0], weights[0])
    checked.graphs = graphs = GraphedUpdates(checked)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        td = graphs.prove(batches[1], weights[1], lambda: route(checked, batches[1], weights[1]))
    want_td = eager.update(batches[1], weights[1])
    assert torch.equal(td, want_td)
    assert_same_state(checked, eager)
    messages = [str(w.message) for w in caught if w.category is RouteFallbackWarning]
    if reason is None:
        assert messages == [] and checked.fallbacks == [] and checked.graphs is graphs
    else:
        assert len(messages) == 1 and reason in messages[0], messages
        assert messages[0].startswith("fastdqn: learner CUDA graphs failed the self-check (")
        assert messages[0].endswith("); using the eager reference step")
        assert checked.graphs is None and len(checked.fallbacks) == 1
        assert checked.fallbacks[0].startswith("learner cuda-graphs: ")
        assert checked.fallbacks[0][len("learner cuda-graphs: "):] in messages[0]
        route_name = checked.route(torch.device("cuda"))
        assert route_name.startswith("reference (nn.Module + autograd + torch.optim.Adam; "
                                     "learner cuda-graphs: ")
    if reason is not None:  # off for good: the steps after run eagerly and never warn again
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for b, w in zip(batches[2:], weights[2:]):
                checked.step(b, w)
                eager.step(b, w)
        assert [w for w in caught if w.category is RouteFallbackWarning] == []
        assert checked.graphs is None and len(checked.fallbacks) == 1
        assert_same_state(checked, eager)


def warming_up_then_failing(self: GraphedUpdates, static: StaticUpdate):
    """A capture that gets as far as the warm-up (real updates of the learner) and then raises,
    as a capture does on a module that syncs with the host."""
    for _ in range(WARMUP):
        static.run()
    raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


def test_a_capture_that_raises_puts_the_learner_back_before_its_warm_up(monkeypatch):
    """The warm-up steps the learner WARMUP times: a capture that fails after it must undo them
    itself, not leave it to whoever called it."""
    monkeypatch.setattr(GraphedUpdates, "capture", warming_up_then_failing)
    gen = torch.Generator().manual_seed(8)
    lr = learner(MINATAR_SPACE)
    lr.step(batch_of(MINATAR_SPACE, gen))
    graphs = GraphedUpdates(lr)
    b, w = batch_of(MINATAR_SPACE, gen), weights_of(gen)
    before = lr.snapshot()
    with pytest.raises(RuntimeError, match="not permitted when stream is capturing"):
        graphs.capture_and_replay(layout(b, w), b, w)
    assert graphs.graphs == {}
    after = lr.live_state()
    assert after.keys() == before.keys()
    for k, v in after.items():
        assert torch.equal(v, before[k]), k


def test_a_capture_that_raises_falls_back_once_and_the_learner_trains_on(monkeypatch):
    """Through the learner's own step: one warning, the eager trajectory, and eager steps after."""
    monkeypatch.setattr(GraphedUpdates, "capture", warming_up_then_failing)
    gen = torch.Generator().manual_seed(9)
    checked, eager = learner(MINATAR_SPACE), learner(MINATAR_SPACE)
    checked.graphs = GraphedUpdates(checked)  # as on CUDA, where the learner makes it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            b, w = batch_of(MINATAR_SPACE, gen), weights_of(gen)
            assert torch.equal(checked.step(b, w), eager.step(b, w))
    messages = [str(w.message) for w in caught if w.category is RouteFallbackWarning]
    assert len(messages) == 1 and "operation not permitted" in messages[0], messages
    assert checked.graphs is None and len(checked.fallbacks) == 1
    assert checked.steps == eager.steps == 5
    assert_same_state(checked, eager)


def test_the_first_step_runs_eagerly_before_any_graph():
    """With no optimizer state yet there is nothing to capture; the step runs eagerly."""
    lr = learner(MINATAR_SPACE)
    graphs = GraphedUpdates(lr)
    b = batch_of(MINATAR_SPACE, torch.Generator().manual_seed(4))
    assert graphs(b, None) is None
    assert graphs.graphs == {}


def test_a_loaded_optimizer_state_keeps_this_runs_settings():
    """param_groups in a checkpoint are data: another run's lr, capturable or foreach must not
    change what this run does (capturable on the CPU would even fail the step)."""
    gen = torch.Generator().manual_seed(5)
    src = learner(MINATAR_SPACE)
    src.step(batch_of(MINATAR_SPACE, gen))
    state = src.state_dict()
    for g in state["optimizer"]["param_groups"]:
        g.update(lr=0.5, capturable=True, foreach=True, eps=1.0)
    loaded, clean = learner(MINATAR_SPACE), learner(MINATAR_SPACE)
    loaded.load_state_dict(state)
    clean.load_state_dict(src.state_dict())
    for g, want in zip(loaded.optimizer.param_groups, loaded.settings):
        assert {k: g[k] for k in want} == want
    assert all(s["step"].device.type == "cpu" for s in loaded.optimizer.state.values())
    b = batch_of(MINATAR_SPACE, gen)
    loaded.step(b)
    clean.step(b)
    assert_same_state(loaded, clean)


def test_route_names_the_graphs_only_where_they_run():
    lr = learner(MINATAR_SPACE, cuda_graphs=True)  # asked for, but on the CPU: no graphs
    assert lr.graphs is None
    assert lr.route(torch.device("cpu")) == "reference (nn.Module + autograd + torch.optim.Adam)"
    assert not any(g["capturable"] for g in lr.optimizer.param_groups)


# ---------------------------------------------------------------------------------------------
# CUDA only: real captures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", CUDA_DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_graphs_replay_the_reference_trajectory_on_cuda(device, case):
    """cuda:0 stays current throughout: a capture on cuda:1 must record cuda:1's work."""
    space, opts, weighted = CASES[case]
    gen = torch.Generator().manual_seed(6)
    with torch.cuda.device(0):
        graphed = learner(space, device=device, cuda_graphs=True, **opts)
        eager = learner(space, device=device, cuda_graphs=True, **opts)
        eager.graphs = None  # the same capturable optimizer, stepped eagerly
        with warnings.catch_warnings():
            warnings.simplefilter("error", RouteFallbackWarning)
            for _ in range(8):
                b = batch_of(space, gen, device=device)
                w = weights_of(gen, device=device) if weighted else None
                torch.testing.assert_close(graphed.step(b, w), eager.step(b, w))
        assert graphed.graphs is not None and len(graphed.graphs.graphs) == 1
        assert graphed.fallbacks == []
        assert graphed.route(torch.device(device)).startswith("reference under CUDA graphs")
        assert_same_state(graphed, eager, exact=False)
        assert graphed.steps == eager.steps == 8
        assert graphed.pop_stats() == pytest.approx(eager.pop_stats(), rel=1e-4)
        assert torch.cuda.current_device() == 0


class SyncingNet(torch.nn.Module):
    """A module whose forward reads a value on the host: it cannot be captured."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(400, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * (1.0 if float(x.sum()) >= 0 else 2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_module_that_cannot_be_captured_falls_back_to_the_eager_step():
    net = SyncingNet()
    eager = ReferenceLearner(copy.deepcopy(net), device="cuda", cuda_graphs=True, **ARGS)
    eager.graphs = None
    graphed = ReferenceLearner(net, device="cuda", cuda_graphs=True, **ARGS)
    gen = torch.Generator().manual_seed(7)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            b = batch_of(MINATAR_SPACE, gen, device="cuda")
            torch.testing.assert_close(graphed.step(b), eager.step(b))
    assert graphed.graphs is None and len(graphed.fallbacks) == 1
    assert [w for w in caught if w.category is RouteFallbackWarning]
    assert_same_state(graphed, eager, exact=False)


def clip_failing_under_capture(how: str):
    """torch.nn.utils.clip_grad_norm_, except while a stream is capturing: there it syncs with
    the host (which invalidates the capture, so capture_end raises too) or raises outright."""
    clip = torch.nn.utils.clip_grad_norm_

    def clip_grad_norm_(params, *args, **kwargs):
        if torch.cuda.is_current_stream_capturing():
            if how == "host sync":
                float(sum(p.grad.sum() for p in params))
            raise RuntimeError("refused under capture")
        return clip(params, *args, **kwargs)
    return clip_grad_norm_


@pytest.mark.parametrize("device", CUDA_DEVICES)
@pytest.mark.parametrize("how", ["host sync", "raises"])
def test_a_failed_capture_on_cuda_falls_back_and_leaves_the_learner_usable(device, how,
                                                                            monkeypatch):
    """The current stream and device are what they were (a capture_end that raises skips
    torch.cuda.graph's own reset), nothing is left capturing, one warning, and the learner
    trains on eagerly along the eager trajectory."""
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_failing_under_capture(how))
    gen = torch.Generator().manual_seed(10)
    with torch.cuda.device(0):
        streams = torch.cuda.current_stream(0), torch.cuda.current_stream(device)
        graphed = learner(MINATAR_SPACE, device=device, cuda_graphs=True)
        eager = learner(MINATAR_SPACE, device=device, cuda_graphs=True)
        eager.graphs = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(5):
                b = batch_of(MINATAR_SPACE, gen, device=device)
                w = weights_of(gen, device=device)
                torch.testing.assert_close(graphed.step(b, w), eager.step(b, w))
                assert (torch.cuda.current_stream(0), torch.cuda.current_stream(device)) == streams
                assert torch.cuda.current_device() == 0
                assert not torch.cuda.is_current_stream_capturing()
        assert len([w for w in caught if w.category is RouteFallbackWarning]) == 1
        assert graphed.graphs is None and len(graphed.fallbacks) == 1, graphed.fallbacks
        assert graphed.steps == eager.steps == 5
        assert_same_state(graphed, eager, exact=False)
        torch.cuda.synchronize(device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cnn_run_on_cuda_trains_under_graphs(tmp_path):
    pytest.importorskip("minatar")
    from fastdqn import train

    result = train(env_id="MinAtar/Breakout-v1", device="cuda", num_envs=2, batch_size=8,
                   buffer_size=256, learning_starts=16, total_timesteps=64, eval_every=0,
                   solve_episodes=1, eval_episodes=1, run_dir=str(tmp_path / "run"))
    s = result.summary
    assert s["learner_route"].startswith("reference under CUDA graphs"), s["learner_route"]
    assert s["route_fallbacks"] == []
