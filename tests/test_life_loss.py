"""Atari's training protocol on a scripted game with lives (scripted_envs.LivesEnv), so every
row is known exactly: infos["life_loss"] in every vector mode, rewards sign-clipped and life
losses stored as terminal in the replay only, while episodes, evaluations and summary.json stay
in raw game score and end at game over."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from scripted_envs import LIVES_LOST_AT, LIVES_REWARDS, LivesEnv
from scripted_envs import env_id as scripted_env_id

from fastdqn import train
from fastdqn.algos.dqn.agent import DQN
from fastdqn.config.files import make_config
from fastdqn.core.checkpoint import load_checkpoint
from fastdqn.envs.atari import auto_on, eval_epsilon
from fastdqn.envs.backends import make_vector_env
from fastdqn.errors import ConfigError
from fastdqn.evaluation.episodes import run_episodes

LIVES = scripted_env_id("Lives-v0")
GAME = len(LIVES_REWARDS)
RAW_RETURN = sum(LIVES_REWARDS)  # 3.0
CLIPPED = [float(np.sign(r)) for r in LIVES_REWARDS]


@pytest.mark.parametrize("vector", ["sharded", "async", "sync"])
def test_life_loss_reaches_the_trainer_in_every_vector_mode(vector):
    """Two games played side by side for 2.5 games: infos["life_loss"] is True exactly after
    steps 3 and 6 of each game, False at its end (the game is over, not a life) and elsewhere."""
    envs = make_vector_env(LIVES, 2, vector, num_workers=2)
    try:
        envs.reset(seed=0)
        for step in range(1, 2 * GAME + 5):
            _, _, terminated, _, infos = envs.step(np.zeros(2, dtype=np.int64))
            t = (step - 1) % GAME + 1
            assert infos["life_loss"].dtype == bool
            assert infos["life_loss"].tolist() == [t in LIVES_LOST_AT] * 2, step
            assert terminated.tolist() == [t == GAME] * 2
    finally:
        envs.close()


def test_an_env_without_lives_adds_nothing_to_the_sharded_infos():
    envs = make_vector_env("CartPole-v1", 2, "sharded", num_workers=1)
    try:
        envs.reset(seed=0)
        _, _, _, _, infos = envs.step(np.zeros(2, dtype=np.int64))
        assert "life_loss" not in infos and not envs.reports_life_loss
    finally:
        envs.close()


def agent(**overrides) -> DQN:
    cfg = make_config(env_id=LIVES, num_envs=2, hidden=(8,), batch_size=4, buffer_size=32,
                      **overrides)
    env = LivesEnv()
    return DQN(cfg, env.observation_space, env.action_space, torch.device("cpu"))


def add_step(dqn: DQN, rewards, terminated, life_loss) -> None:
    obs = dqn.observe(np.zeros((2, 2), dtype=np.float32))
    dqn.add(obs, torch.zeros(2, dtype=torch.int64), np.array(rewards),
            np.ones((2, 2), dtype=np.float32), np.array(terminated), np.zeros(2, dtype=bool),
            {"life_loss": np.array(life_loss), "_life_loss": np.ones(2, dtype=bool)})


def test_the_agent_stores_clipped_rewards_and_life_losses_as_terminal():
    dqn = agent(clip_rewards="on", life_loss_terminal="on")
    rewards, terminated, lost = np.array([7.0, -0.25]), np.array([False, False]), np.array([True, False])
    add_step(dqn, rewards, terminated, lost)
    assert dqn.buffer.rewards[:2].tolist() == [1.0, -1.0]
    assert dqn.buffer.dones[:2].tolist() == [1.0, 0.0]
    # the caller's arrays (the run's episode accounting uses them) are untouched
    assert rewards.tolist() == [7.0, -0.25] and terminated.tolist() == [False, False]


def test_off_stores_raw_rewards_and_ignores_life_loss():
    dqn = agent(clip_rewards="off", life_loss_terminal="off")
    add_step(dqn, [7.0, -0.25], [False, True], [True, False])
    assert dqn.buffer.rewards[:2].tolist() == [7.0, -0.25]
    assert dqn.buffer.dones[:2].tolist() == [0.0, 1.0]


def test_auto_is_on_for_atari_ids_only():
    for env_id in ("ALE/Breakout-v5", "BreakoutNoFrameskip-v4", "ALE/Pong-v5"):
        assert auto_on("auto", env_id) and eval_epsilon(None, env_id) == 0.05
    for env_id in ("LunarLander-v3", "MinAtar/Breakout-v1", LIVES):
        assert not auto_on("auto", env_id) and eval_epsilon(None, env_id) == 0.0
    assert auto_on("on", "CartPole-v1") and not auto_on("off", "ALE/Breakout-v5")
    assert eval_epsilon(0.2, "CartPole-v1") == 0.2 and eval_epsilon(0.0, "ALE/Pong-v5") == 0.0


@pytest.mark.parametrize("vector", ["sharded", "sync"])
def test_a_run_stores_clipped_life_loss_rows_and_reports_raw_score(tmp_path, vector):
    """Every stored row [t, lives] -> [t+1, lives'] has reward sign(raw reward at t) and is
    terminal exactly where a life was lost or the game ended; the run's training episodes and
    its final evaluation score whole games in raw points (3.0 each, 1.0 clipped)."""
    run = tmp_path / "run"
    result = train(env_id=LIVES, vector=vector, num_envs=2,
                   num_workers=2 if vector == "sharded" else 0, hidden=(8,), batch_size=8,
                   buffer_size=256, learning_starts=16, total_timesteps=120,
                   clip_rewards="on", life_loss_terminal="on", eval_every=0, solve_episodes=3,
                   eval_episodes=3, eval_envs=2, save_buffer=True, progress=False,
                   run_dir=str(run))
    s = result.summary
    assert s["episodes"] == 2 * (60 // GAME)
    assert result.returns == [RAW_RETURN] * s["episodes"]
    assert s["final_eval"]["mean"] == RAW_RETURN and s["final_eval"]["min"] == RAW_RETURN
    buf = load_checkpoint(run / "checkpoint.pt")["buffer"]
    assert buf["size"] == 120
    for r in range(buf["size"]):
        (t, lives), (t2, lives2) = buf["obs"][r].tolist(), buf["next_obs"][r].tolist()
        t, t2 = round(t), round(t2)
        assert t2 == t + 1
        assert buf["rewards"][r].item() == CLIPPED[t]
        assert buf["dones"][r].item() == float(t2 in LIVES_LOST_AT or t2 == GAME), (r, t)
        assert lives2 == lives - (t2 in LIVES_LOST_AT) or t2 == GAME


@pytest.mark.parametrize("vector", ["sharded", "async", "sync"])
def test_a_life_lost_on_a_truncated_step_is_terminal(tmp_path, vector):
    """LivesTruncated-v0 hits its time limit on step 6, the step its second life is lost. The
    vector env hands back the reset's info for that env (SAME_STEP), so the step's life loss
    must come from final_info: the row ending at t = 6 is terminal, not bootstrapped."""
    run = tmp_path / "run"
    train(env_id=scripted_env_id("LivesTruncated-v0"), vector=vector, num_envs=2,
          num_workers=2 if vector == "sharded" else 0,
          hidden=(8,), batch_size=8, buffer_size=64, learning_starts=16, total_timesteps=24,
          life_loss_terminal="on", eval_every=0, solve_episodes=1, eval_episodes=1, eval_envs=1,
          save_buffer=True, progress=False, run_dir=str(run))
    buf = load_checkpoint(run / "checkpoint.pt")["buffer"]
    ends = [round(t2) for (t2, _) in buf["next_obs"].tolist()]
    assert ends.count(6) == 4
    assert all(d == float(t2 in LIVES_LOST_AT) for d, t2 in zip(buf["dones"].tolist(), ends))


def test_without_the_flags_a_non_atari_game_trains_on_raw_rewards(tmp_path):
    run = tmp_path / "run"
    train(env_id=LIVES, vector="sync", num_envs=1, hidden=(8,), batch_size=8, buffer_size=64,
          learning_starts=16, total_timesteps=GAME * 2, eval_every=0, solve_episodes=1,
          eval_episodes=1, eval_envs=1, save_buffer=True, progress=False, run_dir=str(run))
    buf = load_checkpoint(run / "checkpoint.pt")["buffer"]
    assert buf["rewards"].tolist() == list(LIVES_REWARDS) * 2
    assert buf["dones"].tolist() == ([0.0] * (GAME - 1) + [1.0]) * 2


def test_life_loss_terminal_on_needs_an_env_that_reports_it(tmp_path):
    with pytest.raises(ConfigError, match="does not report life loss"):
        train(env_id="CartPole-v1", life_loss_terminal="on", vector="sync", num_envs=1,
              total_timesteps=10, progress=False, run_dir=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag,value", [("clip_rewards", "maybe"), ("life_loss_terminal", "yes")])
def test_the_flags_take_auto_on_or_off(flag, value):
    with pytest.raises(ConfigError, match=f"--{flag.replace('_', '-')} must be one of auto, on, off"):
        make_config(**{flag: value})


def test_pqn_refuses_the_dqn_only_flags():
    with pytest.raises(ConfigError, match="applies to --algo dqn only"):
        make_config(algo="pqn", clip_rewards="on")


def test_scripted_game_is_what_its_constants_say():
    env = gym.make(LIVES)
    env.reset(seed=0)
    total, lost = 0.0, []
    for t in range(1, GAME + 1):
        _, r, terminated, _, info = env.step(0)
        total += r
        if info["life_loss"]:
            lost.append(t)
    assert total == RAW_RETURN and tuple(lost) == LIVES_LOST_AT and terminated


def test_eval_epsilon_draws_each_episodes_actions_from_its_own_seed():
    """Epsilon-greedy evaluation (Atari's protocol) repeats exactly whatever the number of envs
    stepped together, and differs from the greedy one."""
    def always_left(obs):
        return np.zeros(len(obs), dtype=np.int64)

    one = run_episodes(always_left, "CartPole-v1", 6, seed=11, num_envs=1, epsilon=0.5)
    four = run_episodes(always_left, "CartPole-v1", 6, seed=11, num_envs=4, epsilon=0.5)
    greedy = run_episodes(always_left, "CartPole-v1", 6, seed=11, num_envs=4)
    assert one.returns == four.returns and one.lengths == four.lengths
    assert greedy.returns != one.returns
