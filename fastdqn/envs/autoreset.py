"""Reading a vector step under SAME_STEP autoreset, the contract every backend keeps.

SAME_STEP autoreset makes every `step` a real transition for every env: a finished episode's
true last observation arrives in `info["final_obs"]` while the returned observation is already
the reset one. `real_next_obs` puts the two together, so the buffer never stores a transition
that crosses an episode boundary (NEXT_STEP mode would hand us one fake step per episode).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


def real_next_obs(next_obs: np.ndarray, infos: dict, out: np.ndarray) -> np.ndarray:
    """`next_obs` with each finished env's row replaced by its true final observation."""
    np.copyto(out, next_obs)
    mask = infos.get("_final_obs")
    if mask is not None and mask.any():
        final = infos["final_obs"]
        for i in np.flatnonzero(mask):
            out[i] = final[i]
    return out


def life_loss_of(infos: dict) -> np.ndarray | None:
    """infos["life_loss"] of a vector step, None if the envs do not report it. An env that
    ended this step (SAME_STEP) has its reset's info in `infos` and its last step's under
    `final_info`: its value is taken from there, so a life lost on a truncated step counts."""
    lost = infos.get("life_loss")
    final = infos.get("final_info")
    if lost is None or not final or "life_loss" not in final:
        return lost
    ended = infos["_final_info"] & final.get("_life_loss", True)
    return np.where(ended, final["life_loss"], lost)


def step_one(env: gym.Env, action: Any) -> tuple[Any, Any, bool, bool, dict, Any]:
    """One env's step as a SAME_STEP vector env takes it, for the backends that step only some
    of their envs (a population's live agents): (obs, reward, terminated, truncated, info,
    final obs or None). A finished episode is reset at once, `obs` being the reset's and `info`
    the last step's (its life loss counts)."""
    obs, reward, terminated, truncated, info = env.step(action)
    final = None
    if terminated or truncated:
        final = obs
        obs, _ = env.reset()
    return obs, reward, bool(terminated), bool(truncated), info, final
