"""Vector env construction: spaces checked up front, seeds applied, autoreset fixed to SAME_STEP.

SAME_STEP autoreset makes every `step` a real transition for every env: a finished episode's
true last observation arrives in `info["final_obs"]` while the returned observation is already
the reset one. `real_next_obs` puts the two together, so the buffer never stores a transition
that crosses an episode boundary (NEXT_STEP mode would hand us one fake step per episode).
"""

from __future__ import annotations

import difflib
import multiprocessing as mp
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from .config import ConfigError

EnvFactory = Callable[[], gym.Env]


def check_env_id(env_id: str) -> None:
    """Refuse an unregistered id with a close-match suggestion."""
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "; see gymnasium.pprint_registry()"
    raise ConfigError(f"unknown env id {env_id!r}{hint}")


def check_spaces(env_id: str, obs_space: gym.Space, act_space: gym.Space) -> None:
    """fastdqn needs a Discrete action space and a Box observation space."""
    if not isinstance(act_space, gym.spaces.Discrete):
        raise ConfigError(
            f"{env_id} has {type(act_space).__name__} actions; DQN needs Discrete actions "
            "(pick a discrete env or discretize the actions with a wrapper)"
        )
    if not isinstance(obs_space, gym.spaces.Box):
        raise ConfigError(
            f"{env_id} has {type(obs_space).__name__} observations; fastdqn needs a Box "
            "(flatten them with gymnasium.wrappers.FlattenObservation)"
        )


def env_factory(env_id: str, **kwargs) -> EnvFactory:
    def make() -> gym.Env:
        return gym.make(env_id, **kwargs)

    return make


def probe_env(env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Discrete, float | None]:
    """Build one env to check its spaces; return (obs space, action space, reward threshold)."""
    check_env_id(env_id)
    try:
        env = gym.make(env_id)
    except Exception as e:  # construction failures come from arbitrary user env code
        raise ConfigError(f"{env_id} failed to construct: {type(e).__name__}: {e}") from None
    try:
        check_spaces(env_id, env.observation_space, env.action_space)
        threshold = env.spec.reward_threshold if env.spec is not None else None
        return env.observation_space, env.action_space, threshold
    finally:
        env.close()


def make_vector_env(
    env_id: str, num_envs: int, mode: str = "async", factory: EnvFactory | None = None
) -> gym.vector.VectorEnv:
    """A SAME_STEP-autoreset vector env of `num_envs` copies; `factory` overrides gym.make."""
    fns = [factory or env_factory(env_id)] * num_envs
    if mode == "async":
        # fork starts 16 workers in milliseconds (forkserver/spawn re-import torch in each: ~15 s
        # on 2 cores). It is safe here because the trainer builds the envs before it starts any
        # thread, and the workers only run env code.
        context = "fork" if "fork" in mp.get_all_start_methods() else None
        return gym.vector.AsyncVectorEnv(
            fns, context=context, autoreset_mode=AutoresetMode.SAME_STEP, daemon=True
        )
    if mode == "sync":
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    raise ConfigError(f"--vector must be async or sync, got {mode!r}")


class SyncVectorEnv(gym.vector.SyncVectorEnv):
    """gymnasium's SyncVectorEnv with the async pair, so the loop has one shape for both modes."""

    def step_async(self, actions: np.ndarray) -> None:
        self._pending = actions

    def step_wait(self):
        return self.step(self._pending)


def real_next_obs(next_obs: np.ndarray, infos: dict, out: np.ndarray) -> np.ndarray:
    """`next_obs` with each finished env's row replaced by its true final observation."""
    np.copyto(out, next_obs)
    mask = infos.get("_final_obs")
    if mask is not None and mask.any():
        final = infos["final_obs"]
        for i in np.flatnonzero(mask):
            out[i] = final[i]
    return out
