"""The autoreset contract: every stored transition is a true one; space and id checks."""

from __future__ import annotations

import json
import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import (
    DICT_OBS_ENV_ID,
    EPISODES_PER_SEED,
    TIME_LIMIT,
    CountingEnv,
    counting_reward,
    episode_length,
    make_counting_env,
    make_exploding_env,
)
from scripted_envs import (
    ACTION_START,
    BOX_DTYPES,
    EPISODE_LENGTH,
    CrashEnv,
    DtypeObsEnv,
    FixedLengthEnv,
    HangEnv,
    ShiftedActionsEnv,
)
from scripted_envs import env_id as scripted_env_id

from fastdqn import make_config
from fastdqn.algos.apex import actor_weights
from fastdqn.config.choices import CHOICES
from fastdqn.core.device import torch_dtype
from fastdqn.envs.autoreset import real_next_obs
from fastdqn.envs.backends import BACKENDS, make_vector_env
from fastdqn.envs.backends.sharded import ShardedVectorEnv
from fastdqn.envs.backends.sync import SyncVectorEnv
from fastdqn.envs.make import probe_env
from fastdqn.envs.spaces import check_env_id, check_spaces
from fastdqn.envs.workers import default_workers
from fastdqn.errors import ConfigError, EnvError
from fastdqn.replay.rows import ReplayBuffer

N_ENVS, N_STEPS, SEED = 3, 30, 5


def scripted_action(step: int, env: int) -> int:
    return (step + 2 * env) % 3


MODES = {"sync": ("sync", 0), "async": ("async", 0), "sharded-1": ("sharded", 1),
         "sharded-2": ("sharded", 2)}
"""Vector modes under test; sharded-2 splits the 3 envs unevenly (1 + 2)."""


def make_envs(mode_id: str, num_envs: int, factory=make_counting_env):
    mode, workers = MODES.get(mode_id, (mode_id, 2))
    return make_vector_env("x", num_envs, mode, factory=factory, num_workers=workers)


def collect(mode_id: str, use_real_next_obs: bool = True):
    """Run the trainer's act/step/add sequence; return the buffer and the per-step flags."""
    envs = make_envs(mode_id, N_ENVS)
    try:
        obs_space = envs.single_observation_space
        buffer = ReplayBuffer(N_ENVS * N_STEPS, obs_space.shape, torch_dtype(obs_space.dtype))
        real_next = np.empty((N_ENVS, *obs_space.shape), dtype=obs_space.dtype)
        obs, _ = envs.reset(seed=SEED)
        first_obs = obs.copy()
        flags = []
        for step in range(N_STEPS):
            actions = np.array([scripted_action(step, i) for i in range(N_ENVS)])
            envs.step_async(actions)
            next_obs, rewards, terminated, truncated, infos = envs.step_wait()
            stored_next = real_next_obs(next_obs, infos, real_next) if use_real_next_obs \
                else next_obs
            buffer.add(torch.as_tensor(obs), torch.as_tensor(actions),
                       torch.as_tensor(rewards, dtype=torch.float32),
                       torch.as_tensor(stored_next), torch.as_tensor(terminated).float(),
                       torch.full((N_ENVS,), 0.99))
            flags.append((terminated.copy(), truncated.copy(), next_obs.copy()))
            obs = next_obs
    finally:
        envs.close()
    return buffer, flags, first_obs


def transition_errors(buffer: ReplayBuffer) -> list[str]:
    """Every way a stored transition differs from what CountingEnv really did."""
    errors = []
    for row in range(buffer.size):
        (ep, t), a = buffer.obs[row].tolist(), int(buffer.actions[row])
        nxt, r, d = buffer.next_obs[row].tolist(), buffer.rewards[row].item(), buffer.dones[row]
        length = episode_length(int(ep))
        assert t < min(length, TIME_LIMIT), (row, ep, t)  # an obs can't be past its episode's end
        if nxt != [ep, t + 1]:
            errors.append(f"row {row}: next_obs {nxt} after {[ep, t]}")
        if r != counting_reward(int(t), a):
            errors.append(f"row {row}: reward {r} for t={t} a={a}")
        if d.item() != float(t + 1 == length):
            errors.append(f"row {row}: done {d.item()} at t+1={t + 1}, length {length}")
    return errors


@pytest.fixture(scope="module", params=list(MODES))
def collected(request):
    return request.param, *collect(request.param)


@pytest.mark.parametrize(("mode_id", "expected"), [
    ("sync", SyncVectorEnv), ("async", gym.vector.AsyncVectorEnv),
    ("sharded-1", ShardedVectorEnv), ("sharded-2", ShardedVectorEnv),
])
def test_vector_env_type(mode_id, expected):
    envs = make_envs(mode_id, 2)
    try:
        assert isinstance(envs, expected)
        assert envs.num_envs == 2
        assert envs.single_observation_space.shape == (2,)
        assert envs.single_action_space.n == 3
    finally:
        envs.close()


def test_every_stored_transition_is_true(collected):
    _, buffer, _, _ = collected
    assert buffer.size == N_ENVS * N_STEPS
    assert transition_errors(buffer) == []


def test_episodes_are_unique_per_env_and_complete(collected):
    _, buffer, _, first_obs = collected
    # reset(seed=S) seeds env i with S + i: ids S*1000.., (S+1)*1000.., distinct across envs
    assert first_obs.tolist() == [[(SEED + i) * EPISODES_PER_SEED, 0] for i in range(N_ENVS)]
    rows = buffer.obs.view(N_STEPS, N_ENVS, 2)
    for i in range(N_ENVS):
        seq = rows[:, i].tolist()
        # env i's stored obs follow its episodes step by step: t counts up, then a new id at t=0
        ep, t = seq[0]
        assert (ep, t) == ((SEED + i) * EPISODES_PER_SEED, 0)
        for prev, cur in zip(seq, seq[1:]):
            ended = prev[1] + 1 >= min(episode_length(int(prev[0])), TIME_LIMIT)
            assert cur == ([prev[0] + 1, 0] if ended else [prev[0], prev[1] + 1]), (i, prev, cur)


def test_done_flags_match_terminations_not_truncations(collected):
    _, buffer, flags, _ = collected
    dones = buffer.dones.view(N_STEPS, N_ENVS)
    n_term = n_trunc_only = n_both = 0
    for step, (terminated, truncated, _) in enumerate(flags):
        assert dones[step].tolist() == terminated.astype(np.float32).tolist()
        n_term += int(terminated.sum())
        n_trunc_only += int((truncated & ~terminated).sum())
        n_both += int((truncated & terminated).sum())
    # the script really exercises all three endings
    assert n_term >= 5 and n_trunc_only >= 3 and n_both >= 1, (n_term, n_trunc_only, n_both)


def test_truncated_steps_store_the_true_final_obs(collected):
    _, buffer, flags, _ = collected
    next_rows = buffer.next_obs.view(N_STEPS, N_ENVS, 2)
    obs_rows = buffer.obs.view(N_STEPS, N_ENVS, 2)
    seen = 0
    for step, (terminated, truncated, returned_obs) in enumerate(flags):
        for i in np.flatnonzero(truncated & ~terminated):
            ep, t = obs_rows[step, i].tolist()
            assert t + 1 == TIME_LIMIT
            assert episode_length(int(ep)) > TIME_LIMIT
            assert next_rows[step, i].tolist() == [ep, TIME_LIMIT]  # the real last obs
            assert buffer.dones.view(N_STEPS, N_ENVS)[step, i].item() == 0.0  # bootstraps
            # while the env already handed back the reset obs of the next episode
            assert returned_obs[i].tolist() == [ep + 1, 0]
            seen += 1
    assert seen >= 3


def test_checker_catches_reset_obs_stored_as_next_obs():
    """Guard: without real_next_obs the same loop stores boundary-crossing transitions."""
    buffer, _, _ = collect("sync", use_real_next_obs=False)
    errors = transition_errors(buffer)
    assert errors
    assert all("next_obs" in e for e in errors)


def test_real_next_obs_replaces_only_finished_rows():
    next_obs = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    final = np.array([None, np.array([9.0, 4.0], dtype=np.float32), None], dtype=object)
    infos = {"final_obs": final, "_final_obs": np.array([False, True, False])}
    out = np.full_like(next_obs, -1)
    res = real_next_obs(next_obs, infos, out)
    assert res is out
    assert out.tolist() == [[1.0, 0.0], [9.0, 4.0], [3.0, 0.0]]
    assert next_obs.tolist() == [[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]  # input untouched
    assert real_next_obs(next_obs, {}, out).tolist() == next_obs.tolist()


def test_the_backends_are_configs_vector_choices():
    """A backend is one module and one BACKENDS entry; config's choices, and the settings it
    reads only with some backends, must say what the entries say."""
    assert ["auto", *BACKENDS] == CHOICES["vector"]
    make_config(vector="auto", num_workers=3, env_timeout=3)  # read where it picks sharded
    for name, backend in BACKENDS.items():
        for setting, reads in (("num_workers", backend.workers), ("env_timeout", backend.replies)):
            if reads:
                make_config(vector=name, **{setting: 3})
            else:
                with pytest.raises(ConfigError, match="applies to"):
                    make_config(vector=name, **{setting: 3})


@pytest.mark.parametrize("name", [n for n, b in BACKENDS.items() if b.takes_factory and n != "sync"])
def test_each_backend_stores_the_transitions_sync_stores(name):
    """Same scripted envs, seeds and actions: every backend that plays the caller's envs gives
    sync's transitions (envpool builds its own: tests/test_envpool.py checks it against EnvPool)."""
    ours, flags, first = collect(name)
    sync, sync_flags, sync_first = collect("sync")
    assert np.array_equal(first, sync_first)
    for key in ("obs", "actions", "rewards", "next_obs", "dones"):
        assert torch.equal(getattr(ours, key)[:ours.size], getattr(sync, key)[:sync.size]), key
    for got, want in zip(flags, sync_flags, strict=True):
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def test_make_vector_env_unknown_mode():
    with pytest.raises(ConfigError, match="--vector must be sharded, async, sync or envpool, got 'threads'"):
        make_vector_env("x", 2, "threads", factory=make_counting_env)


def test_sharded_worker_error_is_reported():
    envs = make_vector_env("x", 3, "sharded", factory=make_exploding_env, num_workers=2)
    try:
        envs.reset(seed=0)
        for _ in range(2):  # t = 0 -> 1 -> 2
            envs.step(np.zeros(3, dtype=np.int64))
        with pytest.raises(EnvError, match=r"^env 0 crashed in step: ValueError: exploded at t=2$"):
            envs.step(np.zeros(3, dtype=np.int64))
    finally:
        envs.close()
    assert envs.closed


def test_sharded_reset_without_seed_and_repeated_close():
    envs = make_envs("sharded-2", 3)
    obs, infos = envs.reset()
    assert obs.shape == (3, 2) and obs[:, 1].tolist() == [0, 0, 0]
    assert infos == {}
    envs.close()
    envs.close()  # idempotent


@pytest.mark.parametrize(("cores", "num_envs", "expected"), [
    (8, 16, 7), (8, 3, 3), (2, 16, 1), (1, 16, 1), (None, 16, 1),
])
def test_default_workers(monkeypatch, cores, num_envs, expected):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_workers(num_envs) == expected


def test_counting_env_itself():
    env = make_counting_env()
    obs, _ = env.reset(seed=2)
    assert obs.tolist() == [2000, 0]
    _, r, term, trunc, _ = env.step(1)
    assert (r, term, trunc) == (1.0, False, False)
    env.close()
    assert isinstance(env.unwrapped, CountingEnv)


# ---------------------------------------------------------------------------------------------
# Space and id checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "MountainCarContinuous-v0"])
def test_probe_env_refuses_continuous_actions(env_id):
    with pytest.raises(ConfigError) as info:
        probe_env(env_id)
    msg = str(info.value)
    assert f"{env_id} has Box actions; DQN needs Discrete actions" in msg


def test_probe_env_refuses_dict_observations():
    with pytest.raises(ConfigError) as info:
        probe_env(DICT_OBS_ENV_ID)
    assert f"{DICT_OBS_ENV_ID} has Dict observations; fastdqn needs a Box" in str(info.value)


def test_check_spaces_directly():
    box = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
    check_spaces("ok", box, gym.spaces.Discrete(4))
    with pytest.raises(ConfigError, match="MultiDiscrete actions; DQN needs Discrete"):
        check_spaces("e", box, gym.spaces.MultiDiscrete([2, 2]))
    with pytest.raises(ConfigError, match="Discrete observations; fastdqn needs a Box"):
        check_spaces("e", gym.spaces.Discrete(5), gym.spaces.Discrete(2))
    with pytest.raises(ConfigError, match="Tuple observations; fastdqn needs a Box"):
        check_spaces("e", gym.spaces.Tuple([box]), gym.spaces.Discrete(2))


def test_probe_env_accepts_cartpole():
    obs_space, act_space, threshold = probe_env("CartPole-v1")
    assert isinstance(obs_space, gym.spaces.Box) and obs_space.shape == (4,)
    assert isinstance(act_space, gym.spaces.Discrete) and act_space.n == 2
    assert threshold == 475.0


def test_check_env_id_suggests_close_match():
    check_env_id("CartPole-v1")
    with pytest.raises(ConfigError) as info:
        check_env_id("CartPol-v1")
    assert "unknown env id 'CartPol-v1'; did you mean 'CartPole-v1'?" in str(info.value)


def test_check_env_id_without_close_match():
    with pytest.raises(ConfigError, match="see gymnasium.pprint_registry"):
        check_env_id("Zzzzzzzzzzzzzzzzzzzz-v9")
    with pytest.raises(ConfigError, match="unknown env id"):
        probe_env("Zzzzzzzzzzzzzzzzzzzz-v9")


# ---------------------------------------------------------------------------------------------
# Crashing and hanging envs; worker processes; module-qualified ids; episode restarts
# ---------------------------------------------------------------------------------------------

WORKER_MODES = {"async": ("async", 0), "sharded": ("sharded", 2)}


def crash_after_3():
    return CrashEnv(crash_seed=1, after=3)


def hang_after_2():
    return HangEnv(crash_seed=1, after=2)


def worker_processes(envs) -> list:
    return list(envs.processes if hasattr(envs, "processes") else envs._procs)


@pytest.mark.parametrize("mode", ["sync", "async", "sharded"])
def test_crashing_env_is_named_with_its_exception(mode):
    kind, workers = {"sync": ("sync", 0), **WORKER_MODES}[mode]
    envs = make_vector_env("x", 4, kind, factory=crash_after_3, num_workers=workers, timeout=30)
    procs = [] if mode == "sync" else worker_processes(envs)
    try:
        envs.reset(seed=0)  # env i is reset with seed i: env 1 crashes
        for _ in range(2):
            envs.step(np.zeros(4, dtype=np.int64))
        with pytest.raises(EnvError) as info:
            envs.step(np.zeros(4, dtype=np.int64))
    finally:
        envs.close()
    assert str(info.value) == "env 1 crashed in step: RuntimeError: simulated crash after 3 steps"
    assert procs or mode == "sync"
    assert not [p for p in procs if p.is_alive()]


@pytest.mark.parametrize("mode", list(WORKER_MODES))
def test_hanging_env_times_out_and_its_workers_are_killed(mode):
    kind, workers = WORKER_MODES[mode]
    # the workers' start, the reset and the first step under a generous timeout, so that a
    # loaded machine never trips it; the hanging step under a short one
    envs = make_vector_env("x", 4, kind, factory=hang_after_2, num_workers=workers, timeout=600)
    procs = worker_processes(envs)
    try:
        envs.reset(seed=0)
        envs.step(np.zeros(4, dtype=np.int64))
        envs.timeout = 2.0  # the live envs answer within it, loaded or not
        with pytest.raises(EnvError) as info:
            envs.step(np.zeros(4, dtype=np.int64))
    finally:
        envs.close()
    where = "env 1" if mode == "async" else "env worker for envs 0..1"
    assert str(info.value) == (f"{where} hung: no reply within 2 s (--env-timeout); "
                               "killed the env workers")
    assert envs.closed
    assert not [p for p in procs if p.is_alive()]


@pytest.mark.parametrize("mode", list(WORKER_MODES))
def test_workers_ignore_sigint_and_sigterm_but_never_outlive_close(mode):
    """Ctrl-C and Slurm/systemd SIGTERM reach every process; the trainer alone decides."""
    import os
    import signal

    kind, workers = WORKER_MODES[mode]
    envs = make_vector_env("x", 2, kind, factory=make_counting_env, num_workers=workers)
    procs = worker_processes(envs)
    try:
        envs.reset(seed=0)
        for p in procs:
            os.kill(p.pid, signal.SIGINT)
            os.kill(p.pid, signal.SIGTERM)
        obs, *_ = envs.step(np.zeros(2, dtype=np.int64))
        assert obs[:, 1].tolist() == [1, 1]
        assert all(p.is_alive() for p in procs)
    finally:
        envs.close()
    assert not [p for p in procs if p.is_alive()]


def test_check_env_id_imports_the_module_of_a_qualified_id():
    check_env_id(scripted_env_id("FixedLength-v0"))
    obs_space, act_space, _ = probe_env(scripted_env_id("FixedLength-v0"))
    assert obs_space.shape == (3,) and act_space.n == 2
    with pytest.raises(ConfigError) as info:
        check_env_id("no_such_module_xyz:CartPole-v1")
    assert str(info.value) == (
        "--env no_such_module_xyz:CartPole-v1: cannot import module 'no_such_module_xyz' "
        "(ModuleNotFoundError: No module named 'no_such_module_xyz'); check the name and "
        "PYTHONPATH")
    with pytest.raises(ConfigError, match="unknown env id 'scripted_envs:CartPol-v1'; "
                                          "did you mean 'CartPole-v1'"):
        check_env_id("scripted_envs:CartPol-v1")


@pytest.mark.parametrize("mode", ["sync", "async", "sharded-2"])
def test_restart_from_episode_start_replays_each_episode_start(mode):
    """A resumed run begins every in-flight episode again from the same state."""
    kind, workers = {"sync": ("sync", 0), "async": ("async", 0), "sharded-2": ("sharded", 2)}[mode]

    def make(n):
        return make_vector_env("x", n, kind, factory=FixedLengthEnv, num_workers=workers)

    envs = make(3)
    try:
        first, _ = envs.reset(seed=11)
        seeded = envs.get_attr("episode_start")
        for _ in range(EPISODE_LENGTH + 1):  # past one autoreset: a seedless episode start
            obs, *_ = envs.step(np.zeros(3, dtype=np.int64))
        autoreset = envs.get_attr("episode_start")
    finally:
        envs.close()
    assert [s["seed"] for s in seeded] == [11, 12, 13]
    assert all(s["seed"] is None and s["rng"]["bit_generator"] == "PCG64" for s in autoreset)
    restart_obs = obs.copy()
    restart_obs[:, 0] -= 0.1  # the autoreset episodes are one step in; x moves 0.1 per step
    restart_obs[:, 2] = 0
    for starts, expected in [(seeded, first), (autoreset, restart_obs)]:
        again = make(3)
        try:
            again.set_attr("restart_from", list(starts))
            got, _ = again.reset()
            assert np.allclose(got, expected), (got, expected)
            assert list(again.get_attr("episode_start")) == list(starts)
            got, _ = again.reset()  # restart_from is used once
            assert not np.allclose(got, expected)
        finally:
            again.close()


# ---------------------------------------------------------------------------------------------
# What spaces an env may have: every Box dtype, Discrete(n, start), and the shapes around them
# ---------------------------------------------------------------------------------------------

TINY_RUN = ["--vector", "sync", "--num-envs", "2", "--total-timesteps", "200", "--eval-every",
            "0", "--eval-episodes", "2", "--solve-episodes", "2", "--eval-envs", "2",
            "--no-progress"]
TINY_TRAIN = [*TINY_RUN, "--buffer-size", "64", "--learning-starts", "32", "--batch-size", "16",
              "--hidden", "16", "--save-buffer"]
"""A DQN run that wraps its 64-row ring three times and learns on the default CPU route."""

WIDER = {"float16": torch.float32, "uint16": torch.int32, "uint32": torch.int64,
         "uint64": torch.int64}
"""The dtypes the replay keeps in a wider one; every other stays its own (uint8 images too)."""


def stored_rows(run_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.dtype]:
    """obs, next_obs and actions of a --save-buffer checkpoint's rows, and the obs dtype."""
    from fastdqn.core.checkpoint import load_checkpoint

    buffer = load_checkpoint(run_dir / "checkpoint.pt")["buffer"]
    return (buffer["obs"].numpy(), buffer["next_obs"].numpy(), buffer["actions"].numpy(),
            buffer["obs"].dtype)


def assert_rows_are_steps(env: DtypeObsEnv, obs: np.ndarray, next_obs: np.ndarray) -> None:
    """Each row holds the env's obs of some step t and its next obs, value for value."""
    steps = [(env.obs_at(t), env.obs_at(t + 1)) for t in range(EPISODE_LENGTH)]
    for i in range(len(obs)):
        assert any(np.array_equal(obs[i], o) and np.array_equal(next_obs[i], n)
                   for o, n in steps), (i, obs[i], next_obs[i])


@pytest.mark.parametrize("dtype", BOX_DTYPES)
def test_every_box_dtype_trains_and_stores_its_observations_exactly(dtype, tmp_path, capsys):
    from fastdqn.cli import main

    run_dir = tmp_path / "run"
    code = main(["train", "--env", scripted_env_id(f"Obs-{dtype}-v0"), *TINY_TRAIN,
                 "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    if dtype == "uint64":  # its Box reaches 2**64 - 1, past the int64 it would be stored in
        assert code == 2 and not run_dir.exists()
        assert err.startswith("error: ") and err.count("\n") == 1
        assert "uint64" in err and "DtypeObservation" in err
        return
    assert code == 0, err
    obs, next_obs, _, stored = stored_rows(run_dir)
    assert stored == WIDER.get(dtype, torch_dtype(dtype)) and len(obs) == 64
    assert_rows_are_steps(DtypeObsEnv(dtype), obs, next_obs)


@pytest.mark.parametrize("dtype", [*BOX_DTYPES, "uint64-below-2**63"])
def test_the_limits_of_each_dtype_are_stored_exactly(dtype, tmp_path):
    """Ints at their limits and floats at their largest magnitudes (a Box with infinite
    bounds) reach the replay unchanged, on every vector step and n-step window."""
    from fastdqn.runtime.train import train

    def make() -> DtypeObsEnv:
        if dtype == "uint64-below-2**63":
            return DtypeObsEnv("uint64", extreme=True, high=2**63 - 1)
        return DtypeObsEnv(dtype, extreme=True)

    if dtype == "uint64":
        with pytest.raises(ConfigError, match="uint64 values up to 18446744073709551615"):
            train(env_id="x", run_dir=str(tmp_path), env_factory=make)
        return
    for n_step in (1, 3):  # learning never starts: only what is stored is under test
        run_dir = tmp_path / f"n{n_step}"
        train(env_id="x", env_factory=make, vector="sync", num_envs=2, total_timesteps=40,
              buffer_size=32, batch_size=8, learning_starts=1000, n_step=n_step, eval_every=0,
              eval_episodes=1, solve_episodes=1, eval_envs=1, progress=False, save_buffer=True,
              run_dir=str(run_dir))
        obs, next_obs, _, _ = stored_rows(run_dir)
        env = make()
        if n_step == 1:
            assert_rows_are_steps(env, obs, next_obs)
        else:
            starts = [env.obs_at(t) for t in range(EPISODE_LENGTH)]
            assert all(any(np.array_equal(row, o) for o in starts) for row in obs)


def test_spaces_fastdqn_cannot_store_are_refused_in_one_line():
    ok = gym.spaces.Discrete(2)
    check_spaces("e", gym.spaces.Box(0, 2**63 - 1, shape=(2,), dtype=np.uint64), ok)
    check_spaces("e", gym.spaces.Box(-np.inf, np.inf, shape=(), dtype=np.float16), ok)
    refused = {"uint64 values up to 18446744073709551615": gym.spaces.Box(
                   0, 2**64 - 1, shape=(2,), dtype=np.uint64),
               "shape [3, 0], which holds no values": gym.spaces.Box(
                   0.0, 1.0, shape=(3, 0), dtype=np.float32)}
    if np.finfo(np.longdouble).bits > 64:  # float128 where the platform has it
        refused["float128 values, which torch cannot hold"] = gym.spaces.Box(
            np.zeros(2, np.longdouble), np.ones(2, np.longdouble), dtype=np.longdouble)
    for message, space in refused.items():
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            check_spaces("e", space, ok)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("env", ["MultiDiscreteAction-v0", "TupleObs-v0"])
def test_train_on_an_env_factory_checks_its_spaces(env, tmp_path):
    """train(env_factory=...) checks the factory's env as --env checks an id's (it read
    `.n` of whatever action space it got)."""
    import scripted_envs

    from fastdqn.runtime.train import train

    cls = scripted_envs.ENVS[env]
    with pytest.raises(ConfigError, match="actions; DQN needs Discrete|observations; fastdqn "):
        train(env_id="x", env_factory=cls, run_dir=str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("shape", [(), (2, 3), (2, 3, 4)])
def test_a_scalar_or_multi_dimensional_float_box_trains_an_mlp(shape, tmp_path):
    from fastdqn.runtime.train import train

    class Shaped(DtypeObsEnv):
        def __init__(self) -> None:
            super().__init__("float32")
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=shape,
                                                    dtype=np.float32)

        def obs_at(self, t: int) -> np.ndarray:
            return np.full(shape, t, dtype=np.float32)

    result = train(env_id="x", env_factory=Shaped, vector="sync", num_envs=2,
                   total_timesteps=200, buffer_size=64, learning_starts=32, batch_size=16,
                   hidden=(16,), eval_every=0, eval_episodes=2, solve_episodes=2, eval_envs=2,
                   progress=False, run_dir=str(tmp_path / "run"))
    assert result.summary["learner_route"].startswith("cpu-fused")
    assert result.policy(np.stack([Shaped().obs_at(0)] * 3)).shape == (3,)


def shifted_by_env(obs: np.ndarray) -> np.ndarray:
    """The actions ShiftedActionsEnv received, from the observations it returned."""
    return obs[:, 0].astype(np.int64)


@pytest.mark.parametrize("mode_id", list(MODES))
@pytest.mark.parametrize("by_id", [False, True])
def test_a_discrete_start_is_added_to_every_action_a_vector_env_sends(mode_id, by_id):
    mode, workers = MODES[mode_id]
    envs = (make_vector_env(scripted_env_id("ShiftedActions-v0"), 3, mode, num_workers=workers)
            if by_id else make_vector_env("x", 3, mode, factory=ShiftedActionsEnv,
                                          num_workers=workers))
    try:
        assert envs.single_action_space == gym.spaces.Discrete(3)
        envs.reset(seed=1)
        for actions in ([0, 1, 2], [2, 0, 1]):
            obs, rewards, *_ = envs.step(np.array(actions))
            assert list(shifted_by_env(obs)) == [a + ACTION_START for a in actions]
            assert list(rewards) == [a + ACTION_START for a in actions]
    finally:
        envs.close()


def test_probe_env_sees_a_discrete_start_as_actions_from_zero():
    _, act_space, _ = probe_env(scripted_env_id("ShiftedActions-v0"))
    assert act_space == gym.spaces.Discrete(3)


@pytest.mark.parametrize("algo", ["dqn", "pqn", "reinforce"])
def test_training_and_evaluation_send_the_env_its_own_actions(algo, tmp_path, capsys):
    """Every action a run sends (exploring, learning, its evaluations, `fastdqn eval` and
    `--compare`) reaches a Discrete(3, start=-1) env as index - 1: the env raises on any
    other, and its observation tells which one it received."""
    from fastdqn.cli import main
    from fastdqn.evaluation.policies import load_policy

    env_id = scripted_env_id("ShiftedActions-v0")
    run_dir = tmp_path / "run"
    args = {"dqn": TINY_TRAIN, "pqn": [*TINY_RUN, "--pqn-rollout", "8"],
            "reinforce": [*TINY_RUN, "--reinforce-episodes", "2"]}[algo]
    assert main(["train", "--algo", algo, "--env", env_id, *args,
                 "--run-dir", str(run_dir)]) == 0, capsys.readouterr().err
    if algo == "dqn":
        _, next_obs, actions, _ = stored_rows(run_dir)
        assert set(actions) == {0, 1, 2}
        assert list(shifted_by_env(next_obs)) == list(actions + ACTION_START)
    capsys.readouterr()
    ckpt = str(run_dir / "checkpoint.pt")
    assert main(["eval", ckpt, "--env", env_id, "--episodes", "2", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    policy, _ = load_policy(ckpt)
    env = ShiftedActionsEnv()  # the greedy policy's episode, played by hand
    obs, _ = env.reset(seed=0)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(policy.act(obs) + ACTION_START)
        total, done = total + reward, terminated or truncated
    assert got["mean"] == total
    assert main(["eval", ckpt, "--env", env_id, "--episodes", "4", "--compare"]) == 0
    assert "random" in capsys.readouterr().out


def test_evaluation_episodes_send_each_policy_action_shifted():
    from fastdqn.algos.dqn.agent import fit_scaler
    from fastdqn.evaluation.compare import compare_policies
    from fastdqn.evaluation.episodes import run_episodes

    env_id = scripted_env_id("ShiftedActions-v0")
    for index in range(3):  # the reward is the action the env received, every step
        def constant(obs: np.ndarray, index: int = index) -> np.ndarray:
            return np.full(len(obs), index)

        for make in (None, ShiftedActionsEnv):
            result = run_episodes(constant, env_id, 3, seed=0, num_envs=2, make_env=make)
            assert result.returns == [EPISODE_LENGTH * (index + ACTION_START)] * 3
    random_play = run_episodes(lambda obs: np.zeros(len(obs), np.int64), env_id, 3, seed=0,
                               epsilon=1.0)
    assert all(-EPISODE_LENGTH <= r <= EPISODE_LENGTH for r in random_play.returns)
    compare_policies(lambda obs: np.zeros(len(obs), np.int64), env_id, episodes=4)
    fit_scaler(ShiftedActionsEnv, 40, seed=0)  # the RBF scaler's random play


def test_an_apex_actor_sends_its_actions_shifted():
    from fastdqn.algos.apex import Actor
    from fastdqn.algos.dqn.agent import DQN
    from fastdqn.config.files import make_config

    cfg = make_config(env_id="x", vector="sync", num_envs=3, buffer_size=256, batch_size=8,
                      learning_starts=8, actors=1, progress=False)
    probe = ShiftedActionsEnv()
    agent = DQN(cfg, probe.observation_space, gym.spaces.Discrete(3), torch.device("cpu"))
    actor = Actor(cfg.to_dict(), 0, 1.0, agent.actor_modules()[0], ShiftedActionsEnv, 0)
    try:
        block = actor.collect([actor_weights(agent)], 0, 12)
    finally:
        actor.close()
    assert set(block["actions"]) == {0, 1, 2}
    assert list(shifted_by_env(block["next_obs"])) == list(block["actions"] + ACTION_START)


def test_auto_picks_envpool_only_where_it_was_measured_faster_and_records_the_choice(tmp_path):
    from fastdqn import train
    from fastdqn.envs.backends import ENVPOOL_FIRST, pick_vector

    assert pick_vector("sync", "LunarLander-v3", False) == "sync"  # a choice is kept
    assert pick_vector("auto", "CartPole-v1", False) == "sharded"  # not measured: workers
    assert pick_vector("auto", "LunarLander-v3", True) == "sharded"  # the caller's factory
    try:
        import envpool  # noqa: F401
        expected = "envpool"
    except ImportError:
        expected = "sharded"
    assert ENVPOOL_FIRST == ("LunarLander-v3",)
    assert pick_vector("auto", "LunarLander-v3", False) == expected
    result = train(env_id="LunarLander-v3", num_envs=2, hidden=(8,), batch_size=8, buffer_size=64,
                   learning_starts=16, total_timesteps=32, eval_every=0, solve_episodes=1,
                   eval_envs=1, progress=False, run_dir=str(tmp_path / "r"))
    assert result.summary["config"]["vector"] == expected
