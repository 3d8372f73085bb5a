"""Atari through ale-py: fastdqn's pipeline gives exactly what gymnasium's own wrappers give for
the same seeds and actions, in every vector mode (life loss included); sticky actions per id;
the extra named when it is missing; and `fastdqn train --env ALE/Breakout-v5` runs with only
budget flags."""

from __future__ import annotations

import json
import sys

import gymnasium as gym
import numpy as np
import pytest
from conftest import run_fastdqn

from fastdqn.envs.atari import make_env, register, reports_life_loss
from fastdqn.envs.autoreset import life_loss_of
from fastdqn.envs.backends import make_vector_env
from fastdqn.envs.make import probe_env
from fastdqn.errors import ConfigError

ale_py = pytest.importorskip("ale_py")
pytest.importorskip("cv2")

BREAKOUT = "ALE/Breakout-v5"


def reference_env(env_id: str, sticky: float) -> gym.Env:
    """The chain built by hand from gymnasium's wrappers, with the DQN settings."""
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    gym.register_envs(ale_py)
    env = gym.make(env_id, frameskip=1, repeat_action_probability=sticky)
    env = AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84,
                             terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
    return FrameStackObservation(env, 4)


@pytest.mark.parametrize("vector", ["sharded", "async", "sync"])
def test_pipeline_equals_gymnasium_reference_wrappers(vector):
    """Two envs, the same reset seeds and 400 random actions each (several lives lost and at
    least one game over, so autoreset happens): observations, rewards, ends, final observations
    and life losses equal those of two hand-built reference chains stepped alongside."""
    n, seed = 2, 123
    envs = make_vector_env(BREAKOUT, n, vector, num_workers=2)
    refs = [reference_env(BREAKOUT, 0.25) for _ in range(n)]
    rng = np.random.default_rng(0)
    try:
        obs, _ = envs.reset(seed=seed)
        assert obs.shape == (n, 4, 84, 84) and obs.dtype == np.uint8
        ref_obs = [r.reset(seed=seed + i)[0] for i, r in enumerate(refs)]
        lives = [r.unwrapped.ale.lives() for r in refs]
        np.testing.assert_array_equal(obs, np.stack(ref_obs))
        games_over = lost = 0
        for _ in range(400):
            actions = rng.integers(4, size=n)
            obs, rew, term, trunc, infos = envs.step(actions)
            life_loss = life_loss_of(infos)  # an ended env's from its last step, not its reset
            for i, ref in enumerate(refs):
                o, r, te, tr, _ = ref.step(actions[i])
                now = ref.unwrapped.ale.lives()
                assert bool(life_loss[i]) == (now < lives[i] and not te)
                lost += bool(life_loss[i])
                lives[i] = now
                assert (rew[i], term[i], trunc[i]) == (r, te, tr)
                if te or tr:
                    np.testing.assert_array_equal(infos["final_obs"][i], o)
                    o, _ = ref.reset()
                    lives[i] = ref.unwrapped.ale.lives()
                    games_over += 1
                np.testing.assert_array_equal(obs[i], o)
        assert games_over >= 1 and lost >= 4
    finally:
        envs.close()
        for r in refs:
            r.close()


@pytest.mark.parametrize("env_id,sticky", [(BREAKOUT, 0.25), ("BreakoutNoFrameskip-v4", 0.0)])
def test_sticky_actions_follow_the_id(env_id, sticky):
    env = make_env(env_id)
    try:
        assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(sticky)
        assert env.observation_space.shape == (4, 84, 84) and reports_life_loss(env)
        assert env.unwrapped._frameskip == 1  # the skipping is AtariPreprocessing's (max-pooled)
    finally:
        env.close()


def test_probe_registers_ale_ids():
    obs_space, act_space, _ = probe_env("ALE/Pong-v5")
    assert obs_space.shape == (4, 84, 84) and act_space.n == 6


def test_a_missing_ale_py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ale_py", None)
    with pytest.raises(ConfigError, match=r'needs ale-py: pip install -e "\.\[atari\]"'):
        register("ALE/Breakout-v5")


def test_breakout_v5_trains_from_the_cli_with_budget_flags_only(tmp_path):
    """The defaults (16 envs, the Nature CNN, clipped rewards and life-loss terminals) on a
    budget of 320 steps, the last 64 learning (16 updates of batch 128: the Nature CNN costs
    ~0.4 s an update on this CPU); the final evaluation plays 2 games with epsilon 0.05."""
    run = tmp_path / "run"
    out = run_fastdqn("train", "--env", BREAKOUT, "--total-timesteps", "320",
                      "--learning-starts", "256", "--eval-episodes", "2", "--solve-episodes",
                      "2", "--run-dir", str(run), "--no-progress", timeout=300)
    assert out.returncode == 0, out.stderr
    s = json.loads((run / "summary.json").read_text())
    assert s["total_env_steps"] == 320 and s["learner_steps"] == 16
    assert "cnn 32x8/4-64x4/2-64x3/1, fc 512" in s["learner_route"]
    assert s["final_eval"]["episodes"] == 2 and s["evals"][-1]["kind"] == "final"
    assert s["config"]["clip_rewards"] == "auto" and s["config"]["eval_epsilon"] is None
    # fastdqn eval rebuilds the CNN and plays the same preprocessed game, epsilon 0.05 as the run
    out = run_fastdqn("eval", str(run / "best.pt"), "--episodes", "1", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["episodes"] == 1
