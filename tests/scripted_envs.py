"""Scripted envs for the reliability tests, registered on import.

Subprocess tests reach them through gymnasium's `module:EnvId` form, e.g.
`--env scripted_envs:FastdqnTest/Crash-v0` with this folder on PYTHONPATH; in-process tests use
the same ids (check_env_id imports the module).
"""

from __future__ import annotations

import os
import signal
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


class SignalEnv(FixedLengthEnv):
    """Signals the trainer from inside the run, at a moment named by environment variables, so
    that a test interrupts exactly there without a clock:

    - FASTDQN_TEST_SIGNAL: the signal's name (SIGINT, SIGTERM);
    - FASTDQN_TEST_SIGNAL_SEED: sent on the first step of the episode reset with this seed (an
      evaluation episode's: the seed streams never meet), or else
    - FASTDQN_TEST_SIGNAL_STEP: sent on this env's N-th step (run one env: each env sends one);
    - FASTDQN_TEST_SIGNAL_AGAIN: `now` sends a second one right after the first (from within
      the trainer only), `close` when the env that sent the first one is closed.

    The trainer is its process group's leader (tests start it in a session of its own). From
    within it, signal.raise_signal runs the handler before it returns, so a second signal is
    never merged into the first; an env worker sends it with os.kill.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sig = signal.Signals[os.environ["FASTDQN_TEST_SIGNAL"]]
        seed, step = os.environ.get("FASTDQN_TEST_SIGNAL_SEED"), os.environ.get(
            "FASTDQN_TEST_SIGNAL_STEP")
        self.at_seed = int(seed) if seed else None
        self.at_step = int(step) if step else None
        self.again = os.environ.get("FASTDQN_TEST_SIGNAL_AGAIN", "")
        self.armed = self.sent = False

    def _send(self) -> None:
        if os.getpid() == os.getpgrp():
            signal.raise_signal(self.sig)
        else:
            os.kill(os.getpgrp(), self.sig)

    def reset(self, *, seed=None, options=None):
        self.armed = self.at_seed is not None and seed == self.at_seed and not self.sent
        return super().reset(seed=seed, options=options)

    def step(self, action):
        result = super().step(action)
        if self.armed or (self.at_seed is None and self.steps_taken == self.at_step):
            self.armed, self.sent = False, True
            self._send()
            if self.again == "now":
                self._send()
        return result

    def close(self) -> None:
        if self.sent and self.again == "close":
            self.sent = False
            self._send()
        super().close()


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


ACTION_START = -1
"""ShiftedActionsEnv's actions are Discrete(3, start=ACTION_START): -1, 0 and 1."""
NO_ACTION = 9.0
"""ShiftedActionsEnv's obs[0] after a reset, before any action was received."""


class ShiftedActionsEnv(gym.Env):
    """Actions Discrete(3, start=-1), as an env that counts its actions from -1 has them.

    obs = [the action received last (NO_ACTION after a reset), t]; the reward is the action
    received, so the greedy policy learns index 2. An action outside -1..1 raises, as a strict
    env's would; the observation shows, through any vector env or evaluation, which one of the
    valid ones arrived. Episodes last EPISODE_LENGTH steps.
    """

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(3, start=ACTION_START)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([NO_ACTION, 0.0], dtype=np.float32), {}

    def step(self, action):
        if not self.action_space.contains(np.int64(action)):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        self.t += 1
        obs = np.array([float(action), self.t], dtype=np.float32)
        return obs, float(action), self.t >= EPISODE_LENGTH, False, {}


BOX_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
              "uint16", "uint32", "uint64", "bool")
"""Every dtype a gymnasium Box observation can have."""


class DtypeObsEnv(gym.Env):
    """Observations of Box dtype `dtype`, each a known function of the step t: `obs_at(t)`.

    obs = [t, lo, hi] (bool: [t odd, False, True]) in a Box of the dtype's default bounds
    (infinite for floats, the dtype's limits for ints; `high` lowers an int Box's high). lo, hi
    are small values a network trains on, or with `extreme` the dtype's limits (floats: its
    largest finite magnitudes; `high` for an int Box given one), which must be stored exactly.
    The reward pays 1 when the action equals t % 2. Episodes last EPISODE_LENGTH steps.
    """

    metadata = {"render_modes": []}

    def __init__(self, dtype: str = "float32", extreme: bool = False, high: int | None = None
                 ) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype == np.bool_:
            self.observation_space = gym.spaces.Box(0, 1, shape=(3,), dtype=np.bool_)
            self.lo, self.hi = False, True
        elif self.dtype.kind == "f":
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=self.dtype)
            big = np.finfo(self.dtype).max
            self.lo, self.hi = (-big, big) if extreme else (-3.5, 5.25)
        else:
            info = np.iinfo(self.dtype)
            top = info.max if high is None else high
            self.observation_space = gym.spaces.Box(info.min, top, shape=(3,), dtype=self.dtype)
            self.lo, self.hi = (info.min, top) if extreme else (-3 if info.min else 3, 5)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def obs_at(self, t: int) -> np.ndarray:
        first = t % 2 if self.dtype == np.bool_ else t
        return np.array([first, self.lo, self.hi], dtype=self.dtype)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.obs_at(0), {}

    def step(self, action):
        reward = float(int(action) == self.t % 2)
        self.t += 1
        return self.obs_at(self.t), reward, self.t >= EPISODE_LENGTH, False, {}


class BrokenEnv(gym.Env):
    """An env whose constructor fails, like one missing a data file."""

    def __init__(self) -> None:
        raise FileNotFoundError("level file 'maze.txt' not found")


ENVS = {
    "FixedLength-v0": FixedLengthEnv,
    "Crash-v0": CrashEnv,
    "Hang-v0": HangEnv,
    "HugeReward-v0": HugeRewardEnv,
    "Signal-v0": SignalEnv,
    "MultiDiscreteAction-v0": MultiDiscreteActionEnv,
    "TupleObs-v0": TupleObsEnv,
    "TextObs-v0": TextObsEnv,
    "DictObs-v0": DictObsEnv,
    "Broken-v0": BrokenEnv,
    "Lives-v0": LivesEnv,
    "ShiftedActions-v0": ShiftedActionsEnv,
}

for _name, _cls in ENVS.items():
    if f"FastdqnTest/{_name}" not in gym.registry:
        gym.register(id=f"FastdqnTest/{_name}", entry_point=_cls)
if "FastdqnTest/LivesTruncated-v0" not in gym.registry:  # truncated on the step a life is lost
    gym.register(id="FastdqnTest/LivesTruncated-v0", entry_point=LivesEnv,
                 max_episode_steps=LIVES_LOST_AT[1])
for _dtype in BOX_DTYPES:  # FastdqnTest/Obs-float16-v0, ...: DtypeObsEnv's small values
    if f"FastdqnTest/Obs-{_dtype}-v0" not in gym.registry:
        gym.register(id=f"FastdqnTest/Obs-{_dtype}-v0", entry_point=DtypeObsEnv,
                     kwargs={"dtype": _dtype})
