"""The native CPU learner step (csrc/fused_step.cpp via fastdqn/native.py): its build and cache,
its self-check, and every way it can be unavailable, each falling back to the Numba step with
one line. That it equals the reference for every option is in test_routes.py."""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np
import pytest
import torch

from fastdqn import native
from fastdqn.learner import CpuStep, Learner
from fastdqn.networks import MLP
from fastdqn.replay import ReplayBuffer
from fastdqn.selfcheck import RouteFallbackWarning


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private, empty cache and no library loaded; the process's state restored after."""
    d = tmp_path / "cache"
    monkeypatch.setenv("FASTDQN_CACHE_DIR", str(d))
    native.reset()
    yield d
    native.reset()


def buffer(rows: int = 400) -> ReplayBuffer:
    g = torch.Generator().manual_seed(3)
    buf = ReplayBuffer(1000, (5,), torch.float32)
    buf.add(torch.randn(rows, 5, generator=g), torch.randint(3, (rows,), generator=g),
            torch.randn(rows, generator=g), torch.randn(rows, 5, generator=g),
            (torch.rand(rows, generator=g) < 0.2).float(), torch.full((rows,), 0.99))
    return buf


def learner(native_on: bool = True, hidden=(16, 16), **kw) -> Learner:
    net = MLP(5, 3, hidden)
    args = dict(lr=1e-3, gamma=0.99, tau=0.05, target_update_interval=1, adam_eps=1e-5) | kw
    return Learner(net, init=net.init(torch.Generator().manual_seed(1)), native=native_on, **args)


def train(lr: Learner, buf: ReplayBuffer, blocks: int = 5) -> Learner:
    rng = np.random.default_rng(0)
    for _ in range(blocks):
        lr.learn_block(buf, rng.integers(0, buf.size, (4, 32)))
    return lr


def assert_falls_back(buf: ReplayBuffer, words: str, **kw) -> Learner:
    """Training a learner (built with `kw`) on `buf` gives one warning naming `words`, the
    Numba step in use, the reason in route and fallbacks, and the same parameters as a learner
    that never tried the native step."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lr = train(learner(**kw), buf)
    lines = [str(w.message) for w in caught if issubclass(w.category, RouteFallbackWarning)]
    assert len(lines) == 1 and words in lines[0] and "using the Numba step" in lines[0], lines
    assert isinstance(lr._cpu, CpuStep)
    assert words in lr.native_off and words in lr.route(torch.device("cpu"))
    assert lr.fallbacks == [f"learner native step: {lr.native_off}"]
    torch.testing.assert_close(lr.params, train(learner(False, **kw), buf).params, rtol=0, atol=0)
    return lr


def test_builds_once_into_a_private_cache_and_is_used(cache):
    buf = buffer()
    lr = train(learner(), buf)
    assert isinstance(lr._cpu, native.NativeStep)
    assert "native step" in lr.route(torch.device("cpu")) and lr.fallbacks == []
    libs = list(cache.glob("*.so"))
    assert len(libs) == 1 and libs[0].name.startswith("fused_step-")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert [p for p in cache.iterdir() if p not in libs] == []  # no temp file left
    # A second process (here: after a reset) loads the cached file without compiling.
    native.reset()
    built = libs[0].stat().st_mtime_ns
    native.prepare()
    assert native._build is not None and native._build.proc is None
    native.load()
    assert libs[0].stat().st_mtime_ns == built


def test_the_cache_key_follows_the_source(cache, tmp_path, monkeypatch):
    first = native.library_path()
    changed = tmp_path / "fused_step.cpp"
    changed.write_text(native.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(native, "SOURCE", changed)
    assert native.library_path() != first
    monkeypatch.setenv("CXX", "g++")
    assert native.library_path() != first  # another compiler command, another file


def test_prepare_builds_in_the_background(cache):
    native.prepare()
    assert native._build.proc is not None and native._build.proc.poll() is None  # still compiling
    assert native.load().fdqn_abi() == native.ABI


def test_no_compiler_falls_back_with_one_line(cache, monkeypatch):
    monkeypatch.setenv("CXX", str(cache.parent / "no-such-compiler"))
    assert_falls_back(buffer(), "does not run")


def test_a_failing_build_falls_back_and_leaves_no_file(cache, tmp_path, monkeypatch):
    cxx = tmp_path / "broken-cxx"
    cxx.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo broken 1.0 && exit 0\n"
                   "echo 'fused_step.cpp:1: error: boom'; exit 1\n")
    cxx.chmod(0o755)
    monkeypatch.setenv("CXX", str(cxx))
    assert_falls_back(buffer(), "build failed (fused_step.cpp:1: error: boom)")
    assert list(cache.iterdir()) == []


def test_a_cache_others_can_write_is_refused(cache):
    cache.mkdir(mode=0o700)
    os.chmod(cache, 0o777)
    assert_falls_back(buffer(), "writable by others (chmod 700 it)")
    assert list(cache.iterdir()) == []


def test_a_library_that_does_not_load_is_refused(cache):
    path = native.library_path()
    path.write_bytes(b"not a shared library")
    assert_falls_back(buffer(), "does not load")


def test_a_disagreeing_native_step_fails_its_self_check(cache, monkeypatch):
    real = native.NativeStep.steps

    def wrong(self, idx, weights=None):  # a step that moves the target twice as far
        out = real(self, idx, weights)
        self.learner.target.lerp_(self.learner.params, self.learner.tau)
        return out

    monkeypatch.setattr(native.NativeStep, "steps", wrong)
    assert_falls_back(buffer(), "on target vs eager")


def test_a_network_deeper_than_the_library_takes_runs_on_numba_quietly(cache):
    """A layout the native step does not take is no fault: no warning, the route says why."""
    buf = buffer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lr = train(learner(hidden=(8,) * native.MAX_LAYERS), buf)
    assert isinstance(lr._cpu, CpuStep) and lr.fallbacks == []
    assert "native step off: more than 8 layers" in lr.route(torch.device("cpu"))


@pytest.mark.parametrize("obs_dtype", [torch.bool, torch.float64, torch.uint8])
def test_every_observation_dtype_reads_as_the_numba_step_reads_it(cache, obs_dtype):
    g = torch.Generator().manual_seed(3)
    buf = ReplayBuffer(1000, (5,), obs_dtype)
    raw = torch.randint(256, (2, 300, 5), generator=g)
    obs = raw.bool() if obs_dtype == torch.bool else raw.to(obs_dtype)
    if obs_dtype == torch.float64:
        obs = obs / 100.0
    buf.add(obs[0], torch.randint(3, (300,), generator=g), torch.randn(300, generator=g), obs[1],
            (torch.rand(300, generator=g) < 0.2).float(), torch.full((300,), 0.99))
    got = train(learner(), buf)
    assert isinstance(got._cpu, native.NativeStep)
    torch.testing.assert_close(got.params, train(learner(False), buf).params, rtol=1e-5,
                               atol=1e-6)


def test_an_observation_dtype_it_does_not_read_runs_on_numba_quietly(cache):
    buf = ReplayBuffer(1000, (5,), torch.int32)
    buf.add(torch.randint(9, (50, 5), dtype=torch.int32), torch.randint(3, (50,)), torch.randn(50),
            torch.randint(9, (50, 5), dtype=torch.int32), torch.zeros(50), torch.full((50,), 0.99))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lr = train(learner(), buf)
    assert isinstance(lr._cpu, CpuStep) and "int32 observations" in lr.native_off


def test_numba_learner_never_builds(cache, monkeypatch):
    monkeypatch.setattr(native, "prepare", lambda: pytest.fail("built"))
    lr = train(learner(False), buffer())
    assert isinstance(lr._cpu, CpuStep) and lr.fallbacks == []
    assert "native step off: --learner numba" in lr.route(torch.device("cpu"))
    assert not cache.exists()


def test_self_check_leaves_the_run_untouched(cache):
    buf = buffer()
    lr = learner()
    before = {k: v.clone() for k, v in lr.snapshot().items()}
    assert native.self_check(lr, buf, 32) is None
    after = lr.snapshot()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert lr.steps == 0 and not lr.fused_stats.any()


def test_hard_target_updates_land_on_the_same_steps(cache):
    """interval 3: the native block copies the target inside, on the steps Python would."""
    buf = buffer()
    got = learner(tau=1.0, target_update_interval=3)
    want = learner(False, tau=1.0, target_update_interval=3)
    idx = np.random.default_rng(5).integers(0, buf.size, (5, 32))
    got.learn_block(buf, idx)
    want.learn_block(buf, idx)
    assert isinstance(got._cpu, native.NativeStep)
    assert got.steps == want.steps == 5
    torch.testing.assert_close(got.target, want.target, rtol=1e-5, atol=1e-6)
    # After 5 steps the target is the copy made at step 3, not the live parameters.
    assert not torch.allclose(got.target, got.params)


@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("obs_dtype", [torch.float32, torch.uint8])
def test_native_actor_matches_the_forward_pass_and_epsilon_greedy(cache, dueling, obs_dtype):
    from fastdqn.explore import epsilon_greedy
    from fastdqn.networks import preprocess

    net = MLP(5, 4, (16, 16), dueling)
    lr = Learner(net, lr=1e-3, gamma=0.99, tau=0.05, target_update_interval=1,
                 init=net.init(torch.Generator().manual_seed(2)))
    actor = native.NativeActor(lr, obs_dtype)
    g = torch.Generator().manual_seed(4)
    obs = (torch.randint(256, (64, 5), generator=g, dtype=torch.uint8) if obs_dtype == torch.uint8
           else torch.randn(64, 5, generator=g))
    want_q = net.forward(lr.online_views, preprocess(obs))
    torch.testing.assert_close(actor.q(obs), want_q, rtol=1e-5, atol=1e-6)
    for eps in (0.0, 0.3, 1.0):
        mine, theirs = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
        got = actor.act(obs, eps, torch.rand((2, 64), generator=mine))
        want = epsilon_greedy(want_q, torch.full((64,), eps), theirs)
        assert torch.equal(got, want), eps
    assert set(actor.act(obs, 1.0, torch.rand((2, 64), generator=g)).tolist()) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="observations of 5 values"):
        actor.q(obs[:, :4].contiguous())  # never reads past the rows it was given
    lr.params.add_(0.05)  # the actor reads the live parameters
    torch.testing.assert_close(actor.q(obs), net.forward(lr.online_views, preprocess(obs)),
                               rtol=1e-5, atol=1e-6)


def dqn_agent(**kw):
    import gymnasium as gym

    from fastdqn.config import make_config
    from fastdqn.dqn import DQN

    cfg = make_config(env_id="CartPole-v1", num_envs=8, hidden=(16,), seed=0, **kw)
    obs_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    return DQN(cfg, obs_space, gym.spaces.Discrete(2), torch.device("cpu"))


def test_dqn_acts_through_the_native_actor(cache):
    from fastdqn.explore import epsilon_greedy

    agent = dqn_agent()
    obs = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    twin = torch.Generator().manual_seed(0)
    twin.set_state(agent.act_gen.get_state())
    got = agent.act(obs, 0.5, 0)
    assert agent.acting_q.native is not None
    want = epsilon_greedy(agent.net.forward(agent.learner.online_views, obs),
                          torch.full((8,), 0.5), twin)
    assert torch.equal(got, want)
    numba = dqn_agent(learner="numba")
    assert torch.equal(numba.act(obs, 0.5, 0), want)  # the same actions on the torch ops
    assert numba.acting_q.native is None


def test_a_disagreeing_native_actor_falls_back(cache, monkeypatch):
    monkeypatch.setattr(native.NativeActor, "q", lambda self, obs: torch.zeros(len(obs), 2))
    agent = dqn_agent()
    obs = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agent.act(obs, 0.0, 0)
        agent.act(obs, 0.0, 0)
    lines = [str(w.message) for w in caught]
    assert len(lines) == 1 and lines[0].startswith(
        "fastdqn: the native acting step failed the self-check (max |diff|")
    assert agent.acting_q.native is None and agent.acting_q.fallbacks[0].startswith("acting native")
    assert torch.equal(agent.act(obs, 0.0, 0),
                       agent.net.forward(agent.learner.online_views, obs).argmax(1))


def test_an_unavailable_library_warns_once_for_acting_and_learning(cache, monkeypatch):
    monkeypatch.setenv("CXX", str(cache.parent / "no-such-compiler"))
    agent = dqn_agent(batch_size=16, learning_starts=16)
    obs = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agent.act(obs, 0.0, 0)
        agent.learner.learn_block(buffer_of(agent), np.zeros((2, 16), np.int64))
    assert len(caught) == 1 and "native learner step unavailable" in str(caught[0].message)
    assert isinstance(agent.learner._cpu, CpuStep) and agent.acting_q.native is None


def buffer_of(agent) -> ReplayBuffer:
    buf = agent.buffer
    g = torch.Generator().manual_seed(1)
    buf.add(torch.randn(32, 4, generator=g), torch.randint(2, (32,), generator=g),
            torch.randn(32, generator=g), torch.randn(32, 4, generator=g), torch.zeros(32),
            torch.full((32,), 0.99))
    return buf


def test_a_build_never_waited_for_is_stopped_at_exit(cache):
    native.prepare()
    build = native._build
    assert build.proc is not None and build.tmp.exists()
    build.abandon()  # what atexit runs when the run failed before its first step
    assert build.proc is None and list(cache.iterdir()) == []


@pytest.mark.parametrize("kw, why", [
    ({"device": "meta"}, "device meta"),
    ({"optimizer": "rmsprop"}, "--optimizer rmsprop trains on the reference route"),
    ({"env_id": "MinAtar/Breakout-v1"}, "a cnn network trains on the reference route"),
])
def test_learner_numba_where_the_run_would_not_take_it_is_refused(kw, why, tmp_path):
    """--learner numba is never parsed and ignored: a run on another route refuses it."""
    import gymnasium as gym

    from fastdqn.config import ConfigError, make_config
    from fastdqn.envs import env_factory
    from fastdqn.trainer import check_dqn_env

    device = torch.device(kw.pop("device", "cpu"))
    cfg = make_config(learner="numba", run_dir=str(tmp_path), **kw)
    cfg.validate()
    obs_space = (gym.spaces.Box(0, 1, (10, 10, 4), bool) if "env_id" in kw
                 else gym.spaces.Box(-1.0, 1.0, (8,), np.float32))
    with pytest.raises(ConfigError, match="--learner numba picks") as e:
        check_dqn_env(cfg, obs_space, device, env_factory(cfg.env_id))
    assert why in str(e.value) and "\n" not in str(e.value)
    check_dqn_env(make_config(learner="numba"), gym.spaces.Box(-1.0, 1.0, (8,), np.float32),
                  torch.device("cpu"), env_factory("LunarLander-v3"))  # the flat MLP takes it
    assert not list(tmp_path.iterdir())
