"""--vector sync: every env stepped in the trainer's process, one after another."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from fastdqn.envs.make import EnvFactory, env_makers


class SyncVectorEnv(gym.vector.SyncVectorEnv):
    """gymnasium's SyncVectorEnv with the async pair, so the loop has one shape for both modes."""

    def step_async(self, actions: np.ndarray) -> None:
        self._pending = actions

    def step_wait(self):
        return self.step(self._pending)


def make(env_id: str, num_envs: int, factory: EnvFactory | None, num_workers: int,
         timeout: float) -> SyncVectorEnv:
    """In-process envs: no workers, nothing to wait for (`num_workers`, `timeout` unread)."""
    return SyncVectorEnv(env_makers(env_id, num_envs, factory),
                         autoreset_mode=AutoresetMode.SAME_STEP)
