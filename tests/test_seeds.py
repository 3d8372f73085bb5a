"""Seed streams: disjoint by construction, and the ones the trainer and `fastdqn eval` really use."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastdqn import train
from fastdqn.evaluate import eval_seed
from fastdqn.seeds import FIT, SELECT, TEST, TRAIN, describe, episode_seed

STREAMS = [TRAIN, SELECT, TEST, FIT]


@given(st.integers(0, 2**20), st.sampled_from(STREAMS), st.integers(0, 2**32 - 1),
       st.integers(0, 2**20), st.sampled_from(STREAMS), st.integers(0, 2**32 - 1))
def test_two_seeds_are_equal_only_for_the_same_run_stream_and_episode(s1, k1, j1, s2, k2, j2):
    assert (episode_seed(s1, k1, j1) == episode_seed(s2, k2, j2)) == ((s1, k1, j1) == (s2, k2, j2))


def test_describe_inverts_episode_seed():
    assert describe(episode_seed(7, SELECT, 12)) == (7, "select", 12)
    assert describe(episode_seed(0, TRAIN, 2**32 - 1)) == (0, "train", 2**32 - 1)
    assert describe(episode_seed(3, FIT, 4)) == (3, "fit", 4)


@pytest.mark.parametrize("args", [(-1, TRAIN, 0), (1, 4, 0), (1, TRAIN, -1), (1, TRAIN, 2**32)])
def test_out_of_range_inputs_are_refused(args):
    with pytest.raises(ValueError):
        episode_seed(*args)


def test_fastdqn_eval_defaults_to_the_held_out_test_stream():
    assert describe(eval_seed(5)) == (5, "test", 0)


class SeedLog(gym.Env):
    """A 3-step env that logs every reset seed into its class's list (in-process envs only)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)
    seeds: list[int] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            type(self).seeds.append(int(seed))
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), float(action), self.t >= 3, False, {}


class TrainLog(SeedLog):
    seeds: list[int] = []


class EvalLog(SeedLog):
    seeds: list[int] = []


def test_the_trainer_draws_each_purpose_from_its_own_stream_also_after_a_resume(tmp_path):
    """Training resets come from TRAIN at the step they happen (env i adds i), every evaluation
    from SELECT starting at episode 0, and a resume with another --num-envs stays in TRAIN."""
    TrainLog.seeds.clear()
    EvalLog.seeds.clear()
    common = dict(env_id="CartPole-v1", vector="sync", seed=9, hidden=(8,), batch_size=8,
                  buffer_size=64, learning_starts=8, eval_every=24, eval_episodes=2,
                  solve_episodes=3, eval_envs=1, checkpoint_every=0, progress=False,
                  run_dir=str(tmp_path / "run"), target_return=1e9)
    train(**common, num_envs=2, total_timesteps=24, env_factory=TrainLog,
          eval_env_factory=EvalLog)
    assert TrainLog.seeds == [episode_seed(9, TRAIN, 0), episode_seed(9, TRAIN, 1)]
    # one screening eval at step 24, extended (not replayed) by the final eval at that step
    assert EvalLog.seeds == [episode_seed(9, SELECT, j) for j in range(3)]
    train(**common, num_envs=3, total_timesteps=48, env_factory=TrainLog,
          eval_env_factory=EvalLog, resume=True)
    assert TrainLog.seeds[2:] == [episode_seed(9, TRAIN, 24 + i) for i in range(3)]
    assert {describe(s)[1] for s in TrainLog.seeds} == {"train"}
    assert {describe(s)[1] for s in EvalLog.seeds} == {"select"}
