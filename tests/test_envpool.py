"""--vector envpool: EnvPool's next-step autoreset turned into fastdqn's SAME_STEP contract.

EnvPool's LunarLander draws its randomness from a std::mt19937, gymnasium's from numpy's PCG64,
so the same seed gives different episodes and observations cannot be compared with gymnasium's.
The reference here is EnvPool itself, driven the way it runs by default (a done env resets on
its next step, ignoring that step's action): with the same seeds and the same actions on every
real step, the adapter's transitions must be exactly EnvPool's with the reset steps removed.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import run_fastdqn

from fastdqn import train
from fastdqn.cli import main
from fastdqn.core.device import torch_dtype
from fastdqn.core.seeds import TRAIN, episode_seed
from fastdqn.envs.autoreset import real_next_obs
from fastdqn.envs.backends import make_vector_env
from fastdqn.envs.backends.envpool import EnvPoolVectorEnv, check_envpool, envpool_task, pool_seeds
from fastdqn.errors import ConfigError
from fastdqn.replay.rows import ReplayBuffer

HAVE_ENVPOOL = importlib.util.find_spec("envpool") is not None
needs_envpool = pytest.mark.skipif(not HAVE_ENVPOOL,
                                   reason='envpool is not installed: pip install -e ".[envpool]"')

LUNAR = "LunarLander-v3"
N_ENVS, N_STEPS, SEED = 4, 400, 11
LUNAR_OBS = gym.spaces.Box(-np.inf, np.inf, (8,), np.float32)
ATARI_OBS = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)


def lunar_envs(num_envs: int = N_ENVS, limit: int | None = None) -> EnvPoolVectorEnv:
    return EnvPoolVectorEnv(LUNAR, num_envs, 1, LUNAR_OBS, gym.spaces.Discrete(4), limit)


def adapter_transitions(actions: np.ndarray, seed: int = SEED, limit: int | None = None):
    """Per env, the (obs, action, reward, real next obs, terminated, truncated) the trainer
    stores, stepping the adapter with actions[t] and reading the next obs as the trainer does."""
    envs = lunar_envs(actions.shape[1], limit)
    out: list[list] = [[] for _ in range(actions.shape[1])]
    real_next = np.empty((actions.shape[1], 8), np.float32)
    try:
        obs, _ = envs.reset(seed=seed)
        for a in actions:
            nxt, rew, term, trunc, infos = envs.step(a)
            real = real_next_obs(nxt, infos, real_next)
            for i in range(len(a)):
                out[i].append((obs[i].copy(), int(a[i]), float(rew[i]), real[i].copy(),
                               bool(term[i]), bool(trunc[i])))
            obs = nxt
    finally:
        envs.close()
    return out


def envpool_reference(actions: np.ndarray, seed: int = SEED, limit: int = 1000):
    """The same, from a plain EnvPool pool in its own next-step autoreset mode: each env is fed
    actions[k][i] on its k-th real step; its reset steps (whose action EnvPool ignores) are
    dropped. Also returns EnvPool's own episode lengths (elapsed_step at each done)."""
    import envpool

    n_steps, n = actions.shape
    pool = envpool.make_gymnasium(LUNAR, num_envs=n, batch_size=n, num_threads=1,
                                  seed=pool_seeds(seed, n), max_episode_steps=limit)
    out: list[list] = [[] for _ in range(n)]
    lengths: list[list] = [[] for _ in range(n)]
    obs, _ = pool.reset()
    pending = np.zeros(n, dtype=bool)  # env i's next step is EnvPool's reset step
    while min(len(o) for o in out) < n_steps:
        k = [min(len(o), n_steps - 1) for o in out]
        a = np.array([actions[k[i], i] for i in range(n)])
        nxt, rew, term, trunc, info = pool.step(a)
        for i in range(n):
            if not pending[i] and len(out[i]) < n_steps:
                out[i].append((obs[i].copy(), int(a[i]), float(rew[i]), nxt[i].copy(),
                               bool(term[i]), bool(trunc[i])))
                if term[i] or trunc[i]:
                    lengths[i].append(int(info["elapsed_step"][i]))
        pending = term | trunc
        obs = nxt
    pool.close()
    return out, lengths


def random_actions(n_steps: int = N_STEPS, n: int = N_ENVS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=(n_steps, n))


@pytest.fixture(scope="module")
def lunar_pair():
    actions = random_actions()
    return actions, adapter_transitions(actions), envpool_reference(actions)


@needs_envpool
def test_transitions_are_envpools_without_its_reset_steps(lunar_pair) -> None:
    _, ours, (ref, _) = lunar_pair
    ends = 0
    for i in range(N_ENVS):
        assert len(ours[i]) == len(ref[i]) == N_STEPS
        for t, (a, b) in enumerate(zip(ours[i], ref[i])):
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[3], b[3]), (i, t)
            assert a[1:3] == b[1:3] and a[4:] == b[4:], (i, t)
            ends += a[4] or a[5]
    assert ends >= 2 * N_ENVS  # random LunarLander episodes last ~100 steps: many boundaries


@needs_envpool
def test_no_stored_transition_crosses_an_episode_boundary(lunar_pair) -> None:
    """Within an env, each transition starts where the previous one ended, except after a done,
    where it starts from a fresh episode: obs (not the final obs) of a new start."""
    _, ours, (_, lengths) = lunar_pair
    for i in range(N_ENVS):
        length, seen = 0, []
        for t in range(1, N_STEPS):
            prev, cur = ours[i][t - 1], ours[i][t]
            length += 1
            if prev[4] or prev[5]:
                assert not np.array_equal(cur[0], prev[3]), (i, t)  # the reset obs, not the final
                assert cur[0][1] > 1.3 and cur[0][6] == cur[0][7] == 0  # top of the screen, legs up
                seen.append(length)
                length = 0
            else:
                assert np.array_equal(cur[0], prev[3]), (i, t)
        assert seen == lengths[i][:len(seen)]  # episode lengths: EnvPool's elapsed_step at done


@needs_envpool
def test_final_obs_is_the_done_steps_obs_and_the_buffer_never_holds_a_reset_step() -> None:
    envs = lunar_envs()
    buffer = ReplayBuffer(N_ENVS * 200, (8,), torch_dtype(np.float32))
    real_next = np.empty((N_ENVS, 8), np.float32)
    rng = np.random.default_rng(1)
    resets = []
    try:
        obs, _ = envs.reset(seed=3)
        for _ in range(200):
            a = rng.integers(0, 4, N_ENVS)
            nxt, rew, term, trunc, infos = envs.step(a)
            done = term | trunc
            if done.any():
                assert np.array_equal(infos["_final_obs"], done)
                resets += [nxt[i].copy() for i in np.flatnonzero(done)]
            real = real_next_obs(nxt, infos, real_next)
            buffer.add(torch.as_tensor(obs), torch.as_tensor(a), torch.as_tensor(rew, dtype=torch.float32),
                       torch.as_tensor(real), torch.as_tensor(term, dtype=torch.float32),
                       torch.full((N_ENVS,), 0.99))
            obs = nxt
    finally:
        envs.close()
    stored = buffer.next_obs[:buffer.size].numpy()
    assert resets, "no episode ended"
    for r in resets:  # a reset obs is a start state: never any transition's next state
        assert not (stored == r).all(axis=1).any()


@needs_envpool
def test_episode_returns_match_envpools(lunar_pair) -> None:
    _, ours, (ref, _) = lunar_pair
    for i in range(N_ENVS):
        def returns(rows):
            out, acc = [], 0.0
            for row in rows:
                acc += row[2]
                if row[4] or row[5]:
                    out.append(acc)
                    acc = 0.0
            return out
        assert returns(ours[i]) == pytest.approx(returns(ref[i]))


@needs_envpool
def test_time_limit_is_gymnasiums_and_reported_as_truncation() -> None:
    envs = make_vector_env(LUNAR, 2, "envpool")
    try:
        assert envs.max_episode_steps == gym.spec(LUNAR).max_episode_steps == 1000
        assert envs.single_observation_space == gym.make(LUNAR).observation_space
    finally:
        envs.close()
    # A 30-step limit cuts the no-op descent (about 60 steps to the crash) short.
    ours = adapter_transitions(np.zeros((70, 2), dtype=np.int64), limit=30)
    for rows in ours:
        ends = [t for t, r in enumerate(rows) if r[4] or r[5]]
        assert ends[:2] == [29, 59]
        assert all(rows[t][5] and not rows[t][4] for t in ends)  # truncated, not terminated


def hover(s: np.ndarray) -> int:
    """A controller that holds the lander in the air (never lands, never leaves): it only ends
    at the time limit."""
    angle_todo = (np.clip(s[0] * 0.5 + s[2], -0.4, 0.4) - s[4]) * 0.5 - s[5]
    hover_todo = (0.6 - s[1]) * 0.5 - s[3] * 0.5
    if hover_todo > abs(angle_todo) and hover_todo > 0.05:
        return 2
    if angle_todo < -0.05:
        return 3
    if angle_todo > 0.05:
        return 1
    return 0


@needs_envpool
def test_a_full_length_episode_is_truncated_at_step_1000() -> None:
    envs = lunar_envs(1)
    try:
        obs, _ = envs.reset(seed=5)
        steps, term, trunc = 0, [False], [False]
        while not (term[0] or trunc[0]) and steps < 1001:
            obs, _, term, trunc, infos = envs.step(np.array([hover(obs[0])]))
            steps += 1
    finally:
        envs.close()
    assert (steps, bool(term[0]), bool(trunc[0])) == (1000, False, True)
    assert "_final_obs" in infos and obs[0][1] > 1.3  # the next obs is already a fresh start


@needs_envpool
def test_same_seed_same_episodes_other_seed_other_ones() -> None:
    actions = random_actions(150, 2, seed=4)
    a, b, c = (adapter_transitions(actions, seed=s) for s in (7, 7, 8))
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a[1], b[1]))
    assert not np.array_equal(a[0][0][0], c[0][0][0])
    first, second = (pool_seeds(episode_seed(run, TRAIN, 0), 3) for run in (1, 2))
    assert all(0 <= s < 2**31 - 1 for s in first + second)  # EnvPool takes int32 seeds
    assert len(set(first)) == 3
    assert not set(first) & set(second)  # the run seed sits in bits 34 and up: they count


@needs_envpool
def test_episode_starts_are_empty_and_cannot_be_set() -> None:
    envs = lunar_envs(2)
    try:
        envs.reset(seed=1)
        assert envs.get_attr("episode_start") == ()
        assert envs.restarts_episodes is False
        with pytest.raises(AttributeError, match="use --vector sharded"):
            envs.set_attr("restart_from", [None, None])
    finally:
        envs.close()
    assert envs.closed


# ---------------------------------------------------------------------------------------------
# Atari through EnvPool
# ---------------------------------------------------------------------------------------------


@needs_envpool
def test_atari_ids_map_to_envpools_with_the_same_preprocessing() -> None:
    task, kw = envpool_task("ALE/Breakout-v5")
    assert task == "Breakout-v5" and kw["repeat_action_probability"] == 0.25
    assert (kw["noop_max"], kw["frame_skip"], kw["stack_num"], kw["img_height"]) == (30, 4, 4, 84)
    assert not kw["episodic_life"] and not kw["reward_clip"] and not kw["use_fire_reset"]
    assert kw["max_episode_steps"] == 27_000
    task, kw = envpool_task("BreakoutNoFrameskip-v4")
    assert task == "Breakout-v5" and kw["repeat_action_probability"] == 0.0


@needs_envpool
def test_atari_reports_life_loss_and_ends_at_game_over() -> None:
    envs = EnvPoolVectorEnv("ALE/Breakout-v5", 2, 1, ATARI_OBS, gym.spaces.Discrete(4))
    rng = np.random.default_rng(0)
    lost, ends = 0, 0
    try:
        obs, _ = envs.reset(seed=2)
        assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
        lives = envs.lives.copy()
        assert (lives == 5).all()
        while ends < 2:
            obs, rew, term, trunc, infos = envs.step(rng.integers(0, 4, 2))
            now = envs.lives.copy()  # after a done: the new game's lives
            for i in range(2):
                if term[i]:
                    ends += 1
                    assert not infos["life_loss"][i] and now[i] == 5
                    assert infos["final_obs"][i].shape == (4, 84, 84)
                elif infos["life_loss"][i]:
                    lost += 1
                    assert now[i] == lives[i] - 1
                else:
                    assert now[i] == lives[i]
            lives = now
    finally:
        envs.close()
    assert lost >= 8  # 4 of the 5 lives of each finished game end it not: no episodic life


# ---------------------------------------------------------------------------------------------
# Refusals and the CLI
# ---------------------------------------------------------------------------------------------


@needs_envpool
def test_an_id_envpool_lacks_names_the_close_ones() -> None:
    with pytest.raises(ConfigError, match=r"no LunarLandr-v3; close ones: LunarLander-v3"):
        envpool_task("LunarLandr-v3")
    with pytest.raises(ConfigError, match=r"no ALE/Breakoutt-v5; close ones: ALE/Breakout-v5"):
        envpool_task("ALE/Breakoutt-v5")


@needs_envpool
def test_spaces_unlike_gymnasiums_and_a_custom_factory_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"observes \[4, 84, 84\] uint8, gymnasium's"):
        check_envpool("ALE/Breakout-v5", gym.spaces.Box(0, 255, (210, 160, 3), np.uint8),
                      gym.spaces.Discrete(4), custom_factory=False)
    with pytest.raises(ConfigError, match="env_factory"):
        check_envpool(LUNAR, LUNAR_OBS, gym.spaces.Discrete(4), custom_factory=True)
    with pytest.raises(ConfigError, match="env factory"):
        make_vector_env(LUNAR, 2, "envpool", factory=lambda: gym.make(LUNAR))


@needs_envpool
def test_envpool_actions_count_from_zero_or_the_run_is_refused(monkeypatch) -> None:
    """fastdqn sends actions 0..n-1 (envs.zero_based): EnvPool's own envs must take them so."""
    import envpool

    task, kwargs = envpool_task(LUNAR)
    real = envpool.make_spec(task, num_envs=1, **kwargs)
    assert real.action_space == gym.spaces.Discrete(4)
    check_envpool(LUNAR, LUNAR_OBS, gym.spaces.Discrete(4), custom_factory=False)

    class Shifted:
        observation_space, action_space = real.observation_space, gym.spaces.Discrete(4, start=1)

    monkeypatch.setattr(envpool, "make_spec", lambda *args, **kwargs: Shifted())
    with pytest.raises(ConfigError, match="counts its actions from 1, not 0; use --vector sharded"):
        check_envpool(LUNAR, LUNAR_OBS, gym.spaces.Discrete(4), custom_factory=False)


def test_missing_envpool_is_one_line_exit_2(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "envpool", None)  # import envpool raises ImportError
    code = main(["train", "--vector", "envpool", "--env", LUNAR, "--run-dir", str(tmp_path / "r"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert 'needs envpool: pip install -e ".[envpool]"' in err
    assert not (tmp_path / "r").exists()


SHORT = ["--vector", "envpool", "--env", LUNAR, "--num-envs", "4", "--learning-starts", "500",
         "--eval-every", "1000", "--eval-episodes", "2", "--solve-episodes", "2",
         "--eval-envs", "2", "--seed", "3", "--no-progress"]


@needs_envpool
def test_cli_run_writes_the_run_dir_and_resumes(tmp_path) -> None:
    d = tmp_path / "run"
    r = run_fastdqn("train", *SHORT, "--total-timesteps", "2000", "--run-dir", str(d))
    assert r.returncode == 0, r.stderr
    summary = json.loads((d / "summary.json").read_text())
    assert summary["total_env_steps"] == 2000 and summary["config"]["vector"] == "envpool"
    assert summary["episodes"] > 0 and summary["final_eval"]["episodes"] == 2
    ckpt = torch.load(d / "checkpoint.pt", weights_only=True)
    assert ckpt["env_starts"] == []
    r = run_fastdqn("train", "--resume", "--run-dir", str(d), "--total-timesteps", "3000",
                    "--no-progress")
    assert r.returncode == 0, r.stderr
    resumed = json.loads((d / "summary.json").read_text())
    assert resumed["total_env_steps"] == 3000 and resumed["config"]["vector"] == "envpool"
    assert resumed["episodes"] > summary["episodes"]


@needs_envpool
def test_a_run_is_reproducible_with_the_same_seed(tmp_path) -> None:
    def run(name: str):
        return train(env_id=LUNAR, vector="envpool", num_envs=4, total_timesteps=1500,
                     learning_starts=500, eval_every=0, solve_episodes=1, eval_episodes=1,
                     eval_envs=1, seed=9, device="cpu", progress=False,
                     run_dir=str(tmp_path / name))
    a, b = run("a"), run("b")
    assert a.returns == b.returns and len(a.returns) > 4
    assert a.end_steps == b.end_steps


@needs_envpool
def test_resuming_another_vectors_run_on_envpool_starts_fresh_episodes(tmp_path, capsys) -> None:
    """A checkpoint of another --vector holds episode starts EnvPool cannot replay: the resumed
    run says so and starts fresh episodes instead."""
    settings = dict(env_id=LUNAR, num_envs=2, learning_starts=300, eval_every=0,
                    solve_episodes=1, eval_episodes=1, eval_envs=1, seed=4, device="cpu",
                    progress=False, run_dir=str(tmp_path / "r"))
    train(vector="sync", total_timesteps=600, **settings)
    assert len(torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["env_starts"]) == 2
    capsys.readouterr()
    result = train(vector="envpool", total_timesteps=1200, resume=True, **settings)
    assert "cannot restart the checkpoint's 2 in-flight episodes" in capsys.readouterr().err
    assert result.summary["total_env_steps"] == 1200
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["env_starts"] == []
