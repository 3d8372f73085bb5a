"""--vector async: gymnasium's AsyncVectorEnv, one worker process per env, with a reply
timeout and one-line errors that name the env."""

from __future__ import annotations

import multiprocessing as mp

import gymnasium as gym
from gymnasium.vector import AutoresetMode
from gymnasium.vector.async_vector_env import AsyncState

from fastdqn.envs.make import EnvFactory, env_makers
from fastdqn.envs.workers import close_at_exit, env_list, start_method
from fastdqn.errors import EnvError


class AsyncVectorEnv(gym.vector.AsyncVectorEnv):
    """gymnasium's AsyncVectorEnv with a reply timeout and one-line errors that name the env."""

    def __init__(self, fns: list[EnvFactory], timeout: float = 0.0, **kwargs) -> None:
        self.timeout = timeout or None
        super().__init__(fns, **kwargs)
        close_at_exit(self, terminate=True)

    def close_extras(self, timeout: float | None = None, terminate: bool = False) -> None:
        """gymnasium's close, but a forced one kills: the workers ignore SIGTERM."""
        if terminate:
            for p in self.processes:
                if p.is_alive():
                    p.kill()
        super().close_extras(timeout=timeout, terminate=terminate)

    def reset(self, *, seed=None, options=None):
        self.reset_async(seed=seed, options=options)
        return self._wait(super().reset_wait)

    def step_wait(self, timeout: float | None = None):
        return self._wait(super().step_wait)

    def _wait(self, wait):
        try:
            return wait(timeout=self.timeout)
        except mp.TimeoutError:
            hung = [i for i, p in enumerate(self.parent_pipes)
                    if p is not None and not p.closed and not p.poll()]
            self.close(terminate=True)
            raise EnvError(f"{env_list(hung or list(range(self.num_envs)))} hung: no reply "
                           f"within {self.timeout:g} s (--env-timeout); killed the env workers"
                           ) from None

    def _raise_if_errors(self, successes) -> None:
        if all(successes):
            return
        messages = []
        for _ in range(self.num_envs - sum(successes)):
            index, exctype, value, _trace = self.error_queue.get()
            messages.append(str(value) if isinstance(value, EnvError)
                            else f"env {index} failed: {exctype.__name__}: {value}")
            self.parent_pipes[index].close()
            self.parent_pipes[index] = None
        self._state = AsyncState.DEFAULT
        self.close(terminate=True)
        raise EnvError("; ".join(messages))


def make(env_id: str, num_envs: int, factory: EnvFactory | None, num_workers: int,
         timeout: float) -> AsyncVectorEnv:
    """One process per env (`num_workers` unread); `timeout`: seconds to wait for a reply."""
    return AsyncVectorEnv(env_makers(env_id, num_envs, factory), timeout, context=start_method(),
                          autoreset_mode=AutoresetMode.SAME_STEP, daemon=True)
