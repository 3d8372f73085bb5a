"""Scripted envs for the reliability tests, registered on import.

Subprocess tests reach them through gymnasium's `module:EnvId` form, e.g.
`--env scripted_envs:FastdqnTest/Crash-v0` with this folder on PYTHONPATH; in-process tests use
the same ids (check_env_id imports the module).
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np

MODULE = "scripted_envs"
EPISODE_LENGTH = 4
"""Every FixedLengthEnv episode terminates after exactly this many steps."""


def env_id(name: str) -> str:
    """The module-qualified id of a FastdqnTest env, as a user would pass it to --env."""
    return f"{MODULE}:FastdqnTest/{name}"


class FixedLengthEnv(gym.Env):
    """Episodes of exactly EPISODE_LENGTH steps whose start is drawn from `np_random`.

    obs = [x, y, t]: (x, y) uniform in [-1, 1) at reset, x moves by 0.1 per step; the reward
    pays 1 when the action matches the sign of x, so a Q-network has something to learn. All
    envs of a vector env end their episodes on the same step.
    """

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.xy = np.zeros(2)
        self.t = 0
        self.first_seed: int | None = None
        self.steps_taken = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.xy[0] + 0.1 * self.t, self.xy[1], self.t], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None and self.first_seed is None:
            self.first_seed = int(seed)
        self.xy = self.np_random.uniform(-1.0, 1.0, size=2)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.steps_taken += 1
        reward = float(int(action) == int(self._obs()[0] > 0)) + 0.1 * self.xy[1]
        self.t += 1
        return self._obs(), reward, self.t >= EPISODE_LENGTH, False, {}


class CrashEnv(FixedLengthEnv):
    """The env first reset with seed `crash_seed` raises on its `after`-th step."""

    def __init__(self, crash_seed: int = 1, after: int = 40) -> None:
        super().__init__()
        self.crash_seed, self.after = crash_seed, after

    def step(self, action):
        if self.first_seed == self.crash_seed and self.steps_taken + 1 >= self.after:
            raise RuntimeError(f"simulated crash after {self.after} steps")
        return super().step(action)


class HangEnv(CrashEnv):
    """Like CrashEnv, but the env hangs (sleeps for an hour) instead of raising."""

    def step(self, action):
        if self.first_seed == self.crash_seed and self.steps_taken + 1 >= self.after:
            time.sleep(3600)
        return FixedLengthEnv.step(self, action)


class SlowEnv(FixedLengthEnv):
    """Every step takes `delay` seconds: a training iteration is long enough to interrupt."""

    def __init__(self, delay: float = 0.05) -> None:
        super().__init__()
        self.delay = delay

    def step(self, action):
        time.sleep(self.delay)
        return super().step(action)


class HugeRewardEnv(FixedLengthEnv):
    """Rewards of 1e39: beyond float32, so TD targets overflow (the NaN-producing setting)."""

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, 1e39, terminated, truncated, info


class MultiDiscreteActionEnv(FixedLengthEnv):
    def __init__(self) -> None:
        super().__init__()
        self.action_space = gym.spaces.MultiDiscrete([2, 3])


class TupleObsEnv(FixedLengthEnv):
    def __init__(self) -> None:
        super().__init__()
        self.observation_space = gym.spaces.Tuple(
            [gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32), gym.spaces.Discrete(3)])


class TextObsEnv(FixedLengthEnv):
    def __init__(self) -> None:
        super().__init__()
        self.observation_space = gym.spaces.Text(max_length=8)


class DictObsEnv(FixedLengthEnv):
    def __init__(self) -> None:
        super().__init__()
        self.observation_space = gym.spaces.Dict(
            {"pos": gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)})


LIVES_REWARDS = (5.0, -3.0, 0.0, 2.5, -0.5, 7.0, 0.0, 1.0, -9.0)
"""LivesEnv's raw reward at each step t of a game (whatever the action): the game lasts
len(LIVES_REWARDS) steps and returns their sum, 3.0 (1.0 once sign-clipped)."""
LIVES_LOST_AT = (3, 6)
"""Steps after which LivesEnv has lost a life and the game goes on (3 lives, the last one ends
the game at step 9)."""


class LivesEnv(gym.Env):
    """A game with lives, like Atari's: obs = [t, lives], the raw rewards LIVES_REWARDS, a life
    lost after steps 3 and 6 (info["life_loss"] True, the game goes on) and game over after 9.
    Every step and reset reports info["life_loss"], as atari.LifeLossInfo does."""

    metadata = {"render_modes": []}
    reports_life_loss = True

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t, self.lives = 0, 3

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.lives], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.lives = 0, 3
        return self._obs(), {"life_loss": False}

    def step(self, action):
        reward = LIVES_REWARDS[self.t]
        self.t += 1
        lost = self.t in LIVES_LOST_AT
        self.lives -= lost
        terminated = self.t == len(LIVES_REWARDS)
        if terminated:
            self.lives = 0
        return self._obs(), reward, terminated, False, {"life_loss": lost}


class BrokenEnv(gym.Env):
    """An env whose constructor fails, like one missing a data file."""

    def __init__(self) -> None:
        raise FileNotFoundError("level file 'maze.txt' not found")


ENVS = {
    "FixedLength-v0": FixedLengthEnv,
    "Crash-v0": CrashEnv,
    "Hang-v0": HangEnv,
    "Slow-v0": SlowEnv,
    "HugeReward-v0": HugeRewardEnv,
    "MultiDiscreteAction-v0": MultiDiscreteActionEnv,
    "TupleObs-v0": TupleObsEnv,
    "TextObs-v0": TextObsEnv,
    "DictObs-v0": DictObsEnv,
    "Broken-v0": BrokenEnv,
    "Lives-v0": LivesEnv,
}

for _name, _cls in ENVS.items():
    if f"FastdqnTest/{_name}" not in gym.registry:
        gym.register(id=f"FastdqnTest/{_name}", entry_point=_cls)
if "FastdqnTest/LivesTruncated-v0" not in gym.registry:  # truncated on the step a life is lost
    gym.register(id="FastdqnTest/LivesTruncated-v0", entry_point=LivesEnv,
                 max_episode_steps=LIVES_LOST_AT[1])
