"""--vector sync: every env stepped in the trainer's process, one after another."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from fastdqn.envs.autoreset import step_one
from fastdqn.envs.make import EnvFactory, env_makers


class SyncVectorEnv(gym.vector.SyncVectorEnv):
    """gymnasium's SyncVectorEnv with the async pair, so the loop has one shape for both modes."""

    def step_async(self, actions: np.ndarray, active: np.ndarray | None = None) -> None:
        """Step every env, or only those `active` marks (the others stand still, with no
        reward and no episode end)."""
        self._pending, self._active = actions, active

    def step_wait(self):
        if self._active is None:
            return self.step(self._pending)
        return self._step_some(self._pending, self._active)

    def _step_some(self, actions: np.ndarray, active: np.ndarray):
        """The envs `active` marks take a step (`step_one`); the others keep their last
        observation, with no reward and no episode end."""
        n = self.num_envs
        obs = self._last_obs.copy()
        rewards, term, trunc = np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        final_obs, mask = np.empty(n, dtype=object), np.zeros(n, dtype=bool)
        lost: dict[int, bool] = {}
        for i in np.flatnonzero(active):
            obs[i], rewards[i], term[i], trunc[i], info, last = step_one(self.envs[i],
                                                                         actions[i])
            if last is not None:
                final_obs[i], mask[i] = last, True
            if "life_loss" in info:
                lost[i] = bool(info["life_loss"])
        self._last_obs = obs
        infos: dict = {"final_obs": final_obs, "_final_obs": mask} if mask.any() else {}
        if lost:
            infos["life_loss"] = np.array([lost.get(i, False) for i in range(n)])
        return obs, rewards, term, trunc, infos

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self._last_obs = obs
        return obs, info

    def step(self, actions):
        obs, *rest = super().step(actions)
        self._last_obs = obs
        return (obs, *rest)


def make(env_id: str, num_envs: int, factory: EnvFactory | None, num_workers: int,
         timeout: float) -> SyncVectorEnv:
    """In-process envs: no workers, nothing to wait for (`num_workers`, `timeout` unread)."""
    return SyncVectorEnv(env_makers(env_id, num_envs, factory),
                         autoreset_mode=AutoresetMode.SAME_STEP)
