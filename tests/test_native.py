"""The native CPU learner step (csrc/fused_step.cpp via fastdqn/learners/native.py): its build and cache,
its self-check, and every way it can be unavailable, each falling back to the Numba step with
one line. That it equals the reference for every option is in test_routes.py."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdqn.errors import RouteFallbackWarning
from fastdqn.learners import native
from fastdqn.learners.flat import CpuStep, Learner, native_self_check
from fastdqn.nets.mlp import MLP
from fastdqn.replay.rows import ReplayBuffer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private, empty cache and no library loaded; the process's state restored after."""
    d = tmp_path / "cache"
    monkeypatch.setenv("FASTDQN_CACHE_DIR", str(d))
    native.reset()
    yield d
    native.reset()


def fake_compiler(folder: Path, build: str, name: str = "fake-cxx") -> Path:
    """A compiler script that answers --version and runs the shell line `build` for a build,
    with $out set to the file it is asked to write."""
    cxx = folder / name
    cxx.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo fake 1.0 && exit 0\n"
                   'out=""; prev=""; for a in "$@"; do [ "$prev" = -o ] && out="$a"; prev="$a"; done\n'
                   f"{build}\n")
    cxx.chmod(0o755)
    return cxx


def in_subprocess(code: str, cache: Path, **env: str) -> subprocess.CompletedProcess:
    """`code` run by a fresh Python on the cache `cache` (where a crash would end only it)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "FASTDQN_CACHE_DIR": str(cache), **env})


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
    sidecar = cache / (libs[0].name + ".sha256")  # the hash each later load checks first
    assert sidecar.read_text().strip() == hashlib.sha256(libs[0].read_bytes()).hexdigest()
    assert sorted(cache.iterdir()) == [libs[0], sidecar]  # no temp file left
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


def test_a_cached_library_that_does_not_load_is_rebuilt(cache):
    """Bytes that match their hash but do not load (a library copied from another machine):
    deleted and built again, and the native step runs."""
    path = native.library_path()
    path.write_bytes(b"not a shared library")
    (cache / (path.name + ".sha256")).write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    lr = train(learner(), buffer())
    assert isinstance(lr._cpu, native.NativeStep) and lr.fallbacks == []
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_a_fresh_build_that_does_not_load_is_refused(cache, tmp_path, monkeypatch):
    cxx = fake_compiler(tmp_path, 'printf "not a shared library" > "$out"')
    monkeypatch.setenv("CXX", str(cxx))
    assert_falls_back(buffer(), "does not load")
    assert list(cache.iterdir()) == []  # not kept, so the next run does not trust it


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
    assert native_self_check(lr, buf, 32) is None
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
    from fastdqn.algos.explore import epsilon_greedy
    from fastdqn.nets.mlp import preprocess

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

    from fastdqn.algos.dqn.agent import DQN
    from fastdqn.config.files import make_config

    cfg = make_config(env_id="CartPole-v1", num_envs=8, hidden=(16,), seed=0, **kw)
    obs_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    return DQN(cfg, obs_space, gym.spaces.Discrete(2), torch.device("cpu"))


def test_dqn_acts_through_the_native_actor(cache):
    from fastdqn.algos.explore import epsilon_greedy

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

    from fastdqn.algos.dqn.preflight import check_dqn_env
    from fastdqn.config.files import make_config
    from fastdqn.envs.make import env_factory
    from fastdqn.errors import ConfigError

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


# --- issue 20: the build and cache fail in one line; native code never trusts an index -------


def one_fallback_line(caught) -> str:
    lines = [str(w.message) for w in caught if issubclass(w.category, RouteFallbackWarning)]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    return lines[0]


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder of this user that no one else can write and this process cannot write either:
    mode 0500, or, where that does not stop this process (root), a /proc folder of its own."""
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    try:
        (folder / "probe").touch()
    except PermissionError:
        return folder
    return Path(f"/proc/{os.getpid()}/fdinfo")


def test_an_unwritable_cache_falls_back_with_one_line(cache, tmp_path, monkeypatch):
    folder = unwritable_folder(tmp_path)
    monkeypatch.setenv("FASTDQN_CACHE_DIR", str(folder))
    assert_falls_back(buffer(), "is not writable")


def test_a_cache_below_a_file_falls_back_with_one_line(cache, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FASTDQN_CACHE_DIR", str(tmp_path / "file" / "cache"))
    assert_falls_back(buffer(), "unusable (Not a directory)")


@pytest.mark.parametrize("kind", ["a file", "a dangling symlink", "a symlink to a folder others "
                                  "can write", "a symlink to a private folder", "CXX false"])
def test_cache_and_compiler_variants(cache, tmp_path, monkeypatch, kind):
    """A symlinked cache is judged as the folder it points to (a private one is used, one
    others can write refused); a file or a dangling link is "not a directory", and a CXX whose
    --version fails is named as such, each in one line before any build."""
    link = tmp_path / "link"
    if kind == "a file":
        link.write_text("")
    elif kind == "a dangling symlink":
        link.symlink_to(tmp_path / "nothing")
    elif kind.startswith("a symlink"):
        real = tmp_path / "real"
        real.mkdir(mode=0o700)
        os.chmod(real, 0o777 if "others" in kind else 0o700)
        link.symlink_to(real)
    else:
        monkeypatch.setenv("CXX", "false")
    if kind != "CXX false":
        monkeypatch.setenv("FASTDQN_CACHE_DIR", str(link))
    if kind == "a symlink to a private folder":
        assert isinstance(train(learner(), buffer())._cpu, native.NativeStep)
        assert sorted(p.suffix for p in (tmp_path / "real").iterdir()) == [".sha256", ".so"]
        return
    why = {"a file": "is not a directory", "a dangling symlink": "is not a directory",
           "CXX false": "compiler false --version exits 1"}.get(kind, "is writable by others")
    assert_falls_back(buffer(), why)
    assert not list(tmp_path.rglob("*.so"))


def test_every_oserror_on_the_cache_path_is_one_line(cache):
    """Whatever OSError the cache raises after the folder checks (here: a sidecar that is a
    folder), the run goes on with the Numba step and one line naming it."""
    path = native.library_path()
    (cache / (path.name + ".sha256")).mkdir()
    assert_falls_back(buffer(), "native cache failed on")


@pytest.mark.parametrize("damage", ["truncated", "one byte changed", "no sidecar",
                                    "truncated after the run started"])
def test_a_damaged_cached_library_is_rebuilt_never_loaded(cache, damage):
    """The cached file is checked against its sidecar hash before dlopen: a truncated library
    used to kill every later run with SIGBUS. Loading runs in a subprocess, so a crash is an
    exit code here."""
    native.prepare()
    path = native._build.wait()  # built, never loaded by this process
    whole = path.read_bytes()
    sidecar = cache / (path.name + ".sha256")
    truncate = (f"p = {str(path)!r}; b = open(p, 'rb').read()\n"
                "open(p + '.x', 'wb').write(b[:len(b) // 2]); os.replace(p + '.x', p)")
    load = "print(native.load().fdqn_abi())"
    code = f"import os\nfrom fastdqn.learners import native\n{truncate}\n{load}"
    if damage == "truncated after the run started":  # checked again right before dlopen
        code = f"import os\nfrom fastdqn.learners import native\nnative.prepare()\n{truncate}\n{load}"
    elif damage == "no sidecar":
        sidecar.unlink()
        code = f"from fastdqn.learners import native\n{load}"
    elif damage == "one byte changed":
        (path.with_name("x")).write_bytes(whole[:-100] + bytes([whole[-100] ^ 0xFF]) + whole[-99:])
        path.with_name("x").replace(path)
        code = f"from fastdqn.learners import native\n{load}"
    out = in_subprocess(code, cache)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split() == [str(native.ABI)]
    assert path.read_bytes() == whole  # rebuilt (the build is deterministic)
    assert sidecar.read_text().strip() == hashlib.sha256(whole).hexdigest()
    assert sorted(cache.iterdir()) == [path, sidecar]


@pytest.mark.parametrize("words", ["g++ -fdiagnostics-color=never", "wrapper"])
def test_cxx_with_arguments_builds_and_takes_the_native_route(cache, tmp_path, monkeypatch, words):
    """$CXX is split like a shell splits it (ccache g++, flags, a quoted path with a space),
    for the version probe and the build; the cache key follows it."""
    plain = native.library_path()
    if words == "wrapper":  # as `ccache g++`: a program that runs the compiler it is given
        folder = tmp_path / "a folder"
        folder.mkdir()
        wrapper = folder / "my wrapper"
        wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path / "calls"}"\nexec "$@"\n')
        wrapper.chmod(0o755)
        words = f"'{wrapper}' g++"
    monkeypatch.setenv("CXX", words)
    assert native.library_path() != plain
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lr = train(learner(), buffer())
    assert isinstance(lr._cpu, native.NativeStep) and lr.fallbacks == []
    if "wrapper" in words:
        calls = (tmp_path / "calls").read_text().splitlines()
        assert "g++ --version" in calls  # the probe
        assert [c for c in calls if c.startswith("g++ -O3") and " -o " in c]  # and the build
    native.reset()
    native.prepare()  # a later run finds it cached: no compiler started
    assert native._build.proc is None


def gone(pid: int) -> bool:
    """Waits (on the process's exit event, not a clock) until `pid` has ended."""
    import select

    if not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd_open to wait on a process that is not a child")
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], 60)[0])
    finally:
        os.close(fd)


@pytest.mark.parametrize("stage", ["build", "--version"])
def test_a_stalling_compiler_is_stopped_and_falls_back(cache, tmp_path, monkeypatch, stage):
    """A compiler that never finishes (it waits on a pipe no one writes) is killed with every
    process it started once the timeout passes; the run falls back with one line."""
    never, ready = tmp_path / "never", tmp_path / "ready"
    os.mkfifo(never)
    os.mkfifo(ready)
    if stage == "build":  # a child holding the output pipe, as cc1plus would; its pid to `ready`
        cxx = fake_compiler(tmp_path, f'cat "{never}" > /dev/null & echo $! > "{ready}"; wait')
        monkeypatch.setattr(native, "BUILD_TIMEOUT", 0.5)
        monkeypatch.setenv("CXX", str(cxx))
        native.prepare()
        with open(ready) as f:  # the compiler is stalled from here on
            child = int(f.read())
        why = "the compiler ran past 0.5 s and was stopped"
    else:
        cxx = tmp_path / "stalling-cxx"
        cxx.write_text(f'#!/bin/sh\nexec cat "{never}"\n')
        cxx.chmod(0o755)
        monkeypatch.setattr(native, "PROBE_TIMEOUT", 0.5)
        monkeypatch.setenv("CXX", str(cxx))
        why = "does not answer --version within 0.5 s (stopped)"
    assert_falls_back(buffer(), why)
    if stage == "build":
        assert gone(child)  # the compiler's own child too
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_noisy_build_finishes_unread_and_is_taken_however_late_it_is_asked(cache, tmp_path,
                                                                            monkeypatch):
    """The compiler's output goes to a file, not to a pipe nobody reads before the first learner
    step: a build printing megabytes of warnings ends on its own (it used to stall on the full
    pipe), and a build that ended is taken even when the first step asks after BUILD_TIMEOUT
    (it used to be killed and discarded: a long warm-up changed the run's route)."""
    cxx = fake_compiler(tmp_path, 'yes "warning: a long warning line" | head -c 4000000\n'
                                  'exec g++ "$@"')
    monkeypatch.setenv("CXX", str(cxx))
    native.prepare()
    build = native._build
    assert gone(build.proc.pid)  # ended with its output unread
    build.deadline = time.monotonic() - 1.0  # the first learner step asks late
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lr = train(learner(), buffer())
    assert isinstance(lr._cpu, native.NativeStep) and lr.fallbacks == []
    assert sorted(p.suffix for p in cache.iterdir()) == [".sha256", ".so"]


@pytest.mark.parametrize("handler", ["default", "the run's"])
def test_a_build_ended_by_sigterm_leaves_no_temp_file(cache, tmp_path, monkeypatch, handler):
    """Killed mid-build by SIGTERM: with the run's handlers the process exits normally and its
    exit hook stops the compiler and removes the temp file; with none (instant death) the next
    run's sweep removes the file its dead process left."""
    never, ready = tmp_path / "never", tmp_path / "ready"
    os.mkfifo(never)
    os.mkfifo(ready)
    cxx = fake_compiler(tmp_path, f'echo $$ > "{ready}"; exec cat "{never}"')
    install = ("signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))" if handler == "the run's"
               else "pass")
    child = subprocess.Popen(
        [sys.executable, "-c", f"import signal, sys\n{install}\nfrom fastdqn.learners import native\n"
         "native.prepare()\nprint(native._build.tmp, flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "FASTDQN_CACHE_DIR": str(cache), "CXX": str(cxx)})
    tmp = Path(child.stdout.readline().strip())
    with open(ready) as f:  # the compiler is running (and stalled)
        compiler = int(f.read())
    assert tmp.parent == cache and tmp.exists()
    child.send_signal(signal.SIGTERM)
    if handler == "default":
        assert child.wait(timeout=60) == -signal.SIGTERM
        assert tmp.exists()  # no Python code ran
        with open(never, "w"):  # let the orphaned compiler end
            pass
        monkeypatch.setenv("CXX", str(fake_compiler(tmp_path, "exit 1", "failing-cxx")))
        with pytest.raises(native.NativeUnavailable, match="build failed"):
            native.load()  # the next run: its sweep removes what the dead one left
    else:
        assert child.wait(timeout=60) == 3
        assert gone(compiler)  # stopped by the exit hook
    assert list(cache.iterdir()) == []


def test_a_temp_file_of_a_live_build_is_kept(cache):
    """The sweep removes only what no running build owns (here: this very process's)."""
    native.prepare()
    build = native._build
    native.reset()
    native.prepare()  # another build of the same library, while the first still runs
    assert build.tmp.exists()
    native._build.abandon()
    build.abandon()


@pytest.mark.parametrize("layout", ["writable parent", "writable parent via a symlink",
                                    "sticky parent", "parent of another user"])
def test_a_cache_others_could_swap_is_refused(cache, tmp_path, monkeypatch, layout):
    """Every folder above the cache is checked, not only the last one: in a folder others can
    write, another user could rename the cache away and put their own library in its place."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777 if layout == "sticky parent" else 0o777)
    path = shared / "cache"
    if layout == "writable parent via a symlink":
        os.chmod(shared, 0o755)
        real = tmp_path / "open"
        real.mkdir()
        os.chmod(real, 0o777)
        (shared / "link").symlink_to(real)
        path = shared / "link" / "cache"
    if layout == "parent of another user":
        if os.getuid() != 0:
            pytest.skip("only root can give a folder to another user")
        os.chmod(shared, 0o755)
        os.chown(shared, 65534, 65534)
    monkeypatch.setenv("FASTDQN_CACHE_DIR", str(path))
    if layout == "sticky parent":  # others cannot rename what they do not own: allowed (/tmp)
        assert native.library_path().parent == path
        return
    why = "belongs to another user" if layout == "parent of another user" else "others can write"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lr = train(learner(), buffer())
    assert why in one_fallback_line(caught) and isinstance(lr._cpu, CpuStep)
    assert not list(path.glob("*.so"))


@pytest.mark.parametrize("use_native", [True, False])
@pytest.mark.parametrize("bad", ["action 3", "action -1", "row"])
def test_an_out_of_range_row_or_action_raises_before_any_update(cache, use_native, bad):
    """Both CPU steps index with the sampled rows and the actions those rows hold: each is
    checked, and the step that meets a bad one raises before changing anything."""
    buf = buffer()
    lr = train(learner(use_native), buf, blocks=1)
    assert isinstance(lr._cpu, native.NativeStep if use_native else CpuStep)
    idx = np.random.default_rng(1).integers(0, buf.size, (2, 32))
    if bad == "row":
        idx[1, 7] = buf.size
        match = f"sampled replay row {buf.size} is outside the buffer's {buf.size} filled rows"
    else:
        buf.actions[idx[1, 7]] = int(bad.split()[1])
        match = f"replay row {idx[1, 7]} holds action {bad.split()[1]}, outside 0..2"
    steps = lr.steps
    lr.learn_block(buf, idx[:1])
    before = lr.snapshot()
    with pytest.raises(native.ReplayCorrupt, match=match):
        lr.learn_block(buf, idx[1:])
    after = lr.snapshot()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert lr.steps == steps + 1


@pytest.mark.parametrize("learner_kind", ["auto", "numba"])
def test_a_crafted_action_never_writes_out_of_bounds(cache, learner_kind):
    """The issue's instance, 50 000 000 in the buffer's actions, used to end the process with
    SIGSEGV on both CPU routes; now it is a Python exception (run in a subprocess: a crash is
    an exit code here)."""
    code = f"""
import numpy as np, torch
from fastdqn.learners import native
from fastdqn.learners.flat import Learner
from fastdqn.nets.mlp import MLP
from fastdqn.replay.rows import ReplayBuffer
buf = ReplayBuffer(1000, (5,), torch.float32)
buf.add(torch.randn(64, 5), torch.randint(3, (64,)), torch.randn(64), torch.randn(64, 5),
        torch.zeros(64), torch.full((64,), 0.99))
net = MLP(5, 3, (16,))
lr = Learner(net, lr=1e-3, gamma=0.99, tau=0.05, target_update_interval=1,
             init=net.init(torch.Generator().manual_seed(1)), native={learner_kind == "auto"})
lr.learn_block(buf, np.zeros((1, 32), np.int64))
buf.actions[:] = 50_000_000
try:
    lr.learn_block(buf, np.arange(64).reshape(2, 32))
except native.ReplayCorrupt as e:
    print(type(lr._cpu).__name__, e)
"""
    out = in_subprocess(code, cache)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    route = "NativeStep" if learner_kind == "auto" else "CpuStep"
    assert out.stdout.startswith(f"{route} replay row 0 holds action 50000000, outside 0..2")


def test_a_huge_batch_is_refused_not_an_abort(cache):
    """fdqn_create refuses a batch beyond what sgemm_'s int indexes, and returns null where its
    buffers cannot be allocated (std::bad_alloc used to cross the C boundary and abort). Run in
    a subprocess: an abort is an exit code here."""
    native.load()  # built here; the subprocess loads it from the cache
    code = """
import ctypes, numpy as np, torch
from fastdqn.learners import native
from tests.test_native import buffer, learner
try:
    native.NativeStep(learner(), buffer(), 2**31)
except native.NativeUnavailable as e:
    print("refused:", e)
keep = [np.zeros(8, np.float32) for _ in range(6)]
spec = native.Spec(abi=native.ABI, n_layers=1, batch=2**22, interval=1, lr=1e-3)
spec.sizes[:2] = [2**22, 3]  # its x alone: 2**45 floats, more than any address space holds
for name, a in zip(["params", "grad", "target", "exp_avg", "exp_avg_sq", "step_count"], keep):
    setattr(spec, name, a.ctypes.data)
try:
    native._Handle(spec, tuple(keep))
except native.NativeUnavailable as e:
    print("refused:", e)
"""
    out = in_subprocess(code, cache, PYTHONPATH=str(Path(__file__).parent.parent))
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("refused: the library refused batch")
                                   for line in lines), lines
    assert "batch 2147483648" in lines[0] and "batch 4194304" in lines[1]


def test_the_console_shows_a_fallback_as_one_line(tmp_path):
    """`fastdqn train` without a compiler prints the fallback as a single stderr line (Python's
    default format adds the source line that raised it) and still trains on the Numba step."""
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "fastdqn", "train", "--env", "CartPole-v1", "--num-envs", "2",
         "--total-timesteps", "600", "--learning-starts", "100", "--eval-every", "0",
         "--eval-episodes", "1", "--solve-episodes", "1", "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "FASTDQN_CACHE_DIR": str(tmp_path / "cache"),
             "CXX": str(tmp_path / "no-such-compiler")})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if "native" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: "), out.stderr
    assert "self._native_unavailable" not in out.stderr and "warnings.warn" not in out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "numba" in summary["learner_route"].lower()


def full_buffer(capacity: int = 256) -> ReplayBuffer:
    """A ring that has wrapped: the next rows added overwrite the oldest, which a block samples."""
    g = torch.Generator().manual_seed(7)
    buf = ReplayBuffer(capacity, (5,), torch.float32)
    for n in (capacity, 40):
        buf.add(torch.randn(n, 5, generator=g), torch.randint(3, (n,), generator=g),
                torch.randn(n, generator=g), torch.randn(n, 5, generator=g),
                (torch.rand(n, generator=g) < 0.2).float(), torch.full((n,), 0.99))
    return buf


def overwrite(buf: ReplayBuffer, rows: int, seed: int) -> None:
    """`rows` new transitions, unlike any before: they land on the rows the ring writes next."""
    g = torch.Generator().manual_seed(seed)
    buf.add(torch.randn(rows, 5, generator=g) * 50, torch.randint(3, (rows,), generator=g),
            torch.randn(rows, generator=g) * 50, torch.randn(rows, 5, generator=g) * 50,
            torch.ones(rows), torch.full((rows,), 0.5))


def test_a_detached_block_reads_the_rows_it_was_given_while_the_ring_takes_new_ones(cache):
    """learn_block(detach=True) returns before its steps run; once `wait_rows_copied` returns,
    the rows the ring overwrites (the oldest, sampled on purpose) no longer reach it: after
    `settle` the learner is the in-line block's bit for bit, stats and step count included."""
    inline_buf, detached_buf = full_buffer(), full_buffer()
    inline, detached = learner(), learner()
    rng = np.random.default_rng(2)
    for round_ in range(4):
        idx = rng.integers(0, inline_buf.size, (4, 32))
        idx[:, :16] = (inline_buf.pos + np.arange(16)) % inline_buf.capacity  # next overwritten
        inline.learn_block(inline_buf, idx)
        detached.learn_block(detached_buf, idx, detach=True)
        assert isinstance(detached._cpu, native.NativeStep) and detached._cpu.busy
        detached.wait_rows_copied()
        overwrite(inline_buf, 16, round_)
        overwrite(detached_buf, 16, round_)
        detached.settle()
        assert not detached._cpu.busy
    assert inline.steps == detached.steps == 16
    for name, value in inline.snapshot().items():
        assert torch.equal(detached.snapshot()[name], value), name
    assert np.array_equal(inline.fused_stats, detached.fused_stats)


def test_a_bad_row_in_a_detached_block_raises_at_settle_after_the_steps_before_it(cache):
    """As in line: the steps before the bad row run, the one with it changes nothing, and
    ReplayCorrupt names the row, raised where the caller settles."""
    buf, ref_buf = full_buffer(), full_buffer()
    got, want = learner(), learner()
    idx = np.random.default_rng(4).integers(0, buf.size, (3, 32))
    idx[2, 5] = buf.size
    got.learn_block(buf, idx, detach=True)
    with pytest.raises(native.ReplayCorrupt, match=f"sampled replay row {buf.size} is outside"):
        got.settle()
    want.learn_block(ref_buf, idx[:2])
    assert got.steps == want.steps == 2
    for name, value in want.snapshot().items():
        assert torch.equal(got.snapshot()[name], value), name
    got.settle()  # nothing left to wait for


def test_a_learner_freed_with_a_block_in_flight_waits_for_it(cache):
    """The native Step joins its thread before it frees anything, so dropping a learner (an
    exception unwinding the loop) never leaves a thread writing freed memory. Run in a
    subprocess: a use-after-free would be an exit code here."""
    native.load()
    code = """
import gc, numpy as np
from tests.test_native import full_buffer, learner
for _ in range(20):
    lr, buf = learner(hidden=(256, 256)), full_buffer()
    lr.learn_block(buf, np.random.default_rng(0).integers(0, buf.size, (8, 32)), detach=True)
    del lr, buf
    gc.collect()
print("ok")
"""
    out = in_subprocess(code, cache)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_child_forked_while_the_block_thread_lives_can_free_the_learner(cache):
    """The learner's thread does not exist in a forked child (an env worker): freeing the
    learner there must not wait for it. Run in a subprocess: a hang is its timeout here."""
    native.load()
    code = """
import gc, os, numpy as np
from tests.test_native import full_buffer, learner, learner_threads
lr, buf = learner(), full_buffer()
lr.learn_block(buf, np.random.default_rng(0).integers(0, buf.size, (4, 32)), detach=True)
lr.settle()  # the block is done; its thread waits for the next one
assert learner_threads() == 1
pid = os.fork()
if pid == 0:
    del lr, buf
    gc.collect()
    os._exit(0)
_, status = os.waitpid(pid, 0)
lr.settle(stop=True)
print("child", os.waitstatus_to_exitcode(status))
"""
    out = in_subprocess(code, cache)
    assert out.returncode == 0 and out.stdout.strip() == "child 0", out.stderr[-2000:]


def learner_threads() -> int:
    """This process's threads named as the native step names its block thread."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            count += Path(f"/proc/self/task/{task}/comm").read_text().strip() == "fastdqn-learner"
        except OSError:  # a thread that ended while we looked
            pass
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_a_run_ends_with_no_thread_of_its_own(tmp_path, monkeypatch):
    """Env and evaluation workers are forked, so a run leaves no thread running behind it: the
    learner's thread ends with the loop (the next run in this process forks its workers)."""
    import fastdqn.algos.dqn.agent as agent_module
    from fastdqn import train as train_run

    monkeypatch.setattr(agent_module, "usable_cores", lambda: 2)
    gc.collect()  # earlier tests' learners, and the threads they leave waiting, go first
    before = learner_threads()
    s = train_run(env_id="CartPole-v1", vector="sync", num_envs=4, hidden=(16,), batch_size=16,
                  buffer_size=256, learning_starts=32, total_timesteps=600, eval_every=0,
                  solve_episodes=1, eval_envs=1, progress=False, run_dir=str(tmp_path)).summary
    assert s["learner_beside_loop"]["blocks"] > 0
    assert learner_threads() == before


def test_without_the_native_step_the_loop_learns_in_line_while_the_envs_step(cache, tmp_path,
                                                                            monkeypatch):
    """Two cores, but no compiler: the Numba step runs in line, where it overlaps the env
    workers (a block begun before acting would leave them idle), and the run is unchanged."""
    import fastdqn.algos.dqn.agent as agent_module
    from fastdqn import train as train_run

    monkeypatch.setenv("CXX", str(cache.parent / "no-such-compiler"))
    calls = []
    real = agent_module.DQN.learn
    monkeypatch.setattr(agent_module.DQN, "learn", lambda self, *a, **k: (calls.append(1),
                                                                          real(self, *a, **k)))

    def run(cores: int, name: str) -> dict:
        monkeypatch.setattr(agent_module, "usable_cores", lambda: cores)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RouteFallbackWarning)
            return train_run(env_id="CartPole-v1", vector="sync", num_envs=4, hidden=(16,),
                             batch_size=16, buffer_size=64, learning_starts=32,
                             total_timesteps=400, eval_every=0, solve_episodes=2, eval_envs=1,
                             progress=False, run_dir=str(tmp_path / name)).summary

    beside = run(2, "two")
    in_line_calls = len(calls)
    one = run(1, "one")
    assert "numba" in beside["learner_route"] and beside["learner_beside_loop"]["blocks"] == 0
    assert in_line_calls > 50  # the iterations after the buffer filled learned in line
    assert beside["learner_steps"] == one["learner_steps"] and beside["evals"][-1]["mean"] == (
        one["evals"][-1]["mean"])
