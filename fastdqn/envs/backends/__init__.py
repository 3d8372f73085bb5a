"""The vector env backends, one `--vector` choice each: a backend is one module of this package
and one entry of BACKENDS.

Every backend keeps the SAME_STEP autoreset contract (envs/autoreset.py) and fastdqn's own
signals and errors: a finished env's true last observation in `infos["final_obs"]`, every env
counted from action 0, one-line EnvErrors that name the env.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from fastdqn.envs.backends import async_, envpool, sharded, sync
from fastdqn.envs.make import EnvFactory
from fastdqn.errors import ConfigError


class VectorEnv(Protocol):
    """What the loops use of a vector env (gymnasium's vector envs have it all)."""

    num_envs: int
    single_observation_space: gym.Space
    single_action_space: gym.Space

    def reset(self, *, seed: int | None = None) -> tuple[np.ndarray, dict]: ...
    def step_async(self, actions: np.ndarray) -> None: ...
    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]: ...
    def get_attr(self, name: str) -> Any: ...
    def set_attr(self, name: str, values: Any) -> None: ...
    def close(self, **kwargs) -> None: ...


def accept(env_id: str, obs_space: gym.spaces.Box, act_space: gym.spaces.Discrete,
           custom_factory: bool) -> None:
    """The check of a backend that runs whatever env probe_env or the caller's factory gives."""


@dataclass(frozen=True)
class Backend:
    """One `--vector` choice.

    `make(env_id, num_envs, factory, num_workers, timeout)` builds its vector env (`factory`
    overrides gym.make); `check(env_id, obs_space, act_space, custom_factory)` refuses, before
    the run dir exists, what it cannot run. `takes_factory`: it plays the caller's env_factory
    (else make and check refuse one). `workers` / `replies`: it reads --num-workers / waits on
    worker replies (--env-timeout); config's `workers` and `worker_replies` conditions say the
    same (tests/test_envs.py keeps them in step).
    """

    make: Callable[[str, int, EnvFactory | None, int, float], VectorEnv]
    check: Callable[[str, gym.spaces.Box, gym.spaces.Discrete, bool], None] = accept
    takes_factory: bool = True
    workers: bool = False
    replies: bool = False


BACKENDS: dict[str, Backend] = {
    "sharded": Backend(sharded.make, workers=True, replies=True),
    "async": Backend(async_.make, replies=True),
    "sync": Backend(sync.make),
    "envpool": Backend(envpool.make, envpool.check_envpool, takes_factory=False, workers=True),
}
"""The `--vector` choices (config's CHOICES["vector"], in the same order, after `auto`)."""

ENVPOOL_FIRST = ("LunarLander-v3",)
"""The ids `--vector auto` steps on EnvPool when it is installed: where EnvPool was measured
faster than the sharded workers (LunarLander-v3, 2026-12-07, bench/README.md "The env
backend for the default env"). Other ids stay on sharded until measured."""


def pick_vector(mode: str, env_id: str, custom_factory: bool) -> str:
    """The backend `--vector mode` runs: `mode` itself, or for auto EnvPool where it is
    installed, has the id and was measured faster (ENVPOOL_FIRST), else sharded (which also
    plays an env factory of the caller's)."""
    if mode != "auto":
        return mode
    if custom_factory or env_id not in ENVPOOL_FIRST:
        return "sharded"
    try:
        envpool.envpool_task(env_id)
    except ConfigError:
        return "sharded"
    return "envpool"


def make_vector_env(env_id: str, num_envs: int, mode: str = "async",
                    factory: EnvFactory | None = None, num_workers: int = 0,
                    timeout: float = 0.0) -> VectorEnv:
    """A SAME_STEP-autoreset vector env of `num_envs` copies, built by BACKENDS[mode];
    `factory` overrides gym.make.

    `num_workers`: worker processes (sharded) or threads (envpool); 0 picks one per spare core.
    `timeout` is how long to wait for a worker's reply before killing the workers (0: forever;
    sharded and async only). Every gymnasium env is wrapped in `EpisodeStart`, so errors name
    the env and resumes can restart episodes identically.
    """
    backend = BACKENDS.get(mode)
    if backend is None:
        *most, last = BACKENDS
        raise ConfigError(f"--vector must be {', '.join(most)} or {last}, got {mode!r}")
    return backend.make(env_id, num_envs, factory, num_workers, timeout)
