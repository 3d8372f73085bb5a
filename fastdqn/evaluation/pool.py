"""Many policies' evaluations at once, on worker processes: a population's agents all evaluate
at the same steps, and one after another on the trainer's core their episodes took as long
as the training (8 LunarLander agents' final evaluations, 800 episodes, ran ~60 s on one core
of two). Each evaluation is `run_episodes` itself on a snapshot of the policy, so its result
is the one the trainer would have computed, episode for episode.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from fastdqn.envs.workers import become_worker, start_method, usable_cores
from fastdqn.evaluation.episodes import EvalResult, run_episodes

_SETTINGS: dict[str, Any] = {}
"""A worker's evaluation settings, set once when it starts (inherited with fork, never sent)."""


def _start(trainer: int, env_id: str, num_envs: int, make_env: Callable[[], gym.Env] | None,
           epsilon: float) -> None:
    become_worker(trainer)
    import torch

    torch.set_num_threads(1)
    _SETTINGS.update(env_id=env_id, num_envs=num_envs, make_env=make_env, epsilon=epsilon)


def _play(policy: Callable, episodes: int, seed: int) -> EvalResult:
    s = _SETTINGS
    return run_episodes(policy, s["env_id"], episodes, seed, s["num_envs"], make_env=s["make_env"],
                        epsilon=s["epsilon"])


class EvalPool:
    """`workers` processes that each play whole evaluations (`submit`), forked once with the
    env settings every evaluation shares. The workers leave signals to the trainer (a Ctrl-C
    ends the run after the evaluations in flight) and die with it."""

    def __init__(self, workers: int, env_id: str, num_envs: int,
                 make_env: Callable[[], gym.Env] | None, epsilon: float) -> None:
        ctx = mp.get_context(start_method())
        self.pool = ctx.Pool(workers, initializer=_start,
                             initargs=(os.getpid(), env_id, num_envs, make_env, epsilon))

    def submit(self, policy: Callable, episodes: int, seed: int):
        """An evaluation of `policy` (a snapshot is sent) on episodes seed .. seed+episodes-1;
        `.get()` waits for its EvalResult."""
        return self.pool.apply_async(_play, (policy, episodes, seed))

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def pool_workers(evaluations: int) -> int:
    """Workers for `evaluations` evaluations at once: one per core this process may use."""
    return max(1, min(evaluations, usable_cores()))
