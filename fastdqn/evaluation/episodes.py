"""Greedy evaluation episodes on fixed per-episode seeds, disjoint from training's: what every
score fastdqn reports (evaluations, `fastdqn eval`, the baselines) is measured by.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import gymnasium as gym
import numpy as np

from fastdqn.core.seeds import TEST, Purpose, episode_generator, episode_seed
from fastdqn.envs.atari import make_env as make_game
from fastdqn.envs.spaces import zero_based


def eval_seed(seed: int) -> int:
    """`fastdqn eval`'s default first episode seed for a run seeded `seed`: the held-out TEST
    stream, disjoint from every seed training and checkpoint selection used (see seeds.py)."""
    return episode_seed(seed, TEST)


@dataclass
class EvalResult:
    mean: float
    std: float
    min: float
    max: float
    episodes: int
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def to_dict(self, with_returns: bool = False) -> dict:
        d = asdict(self)
        if not with_returns:
            d.pop("returns")
            d.pop("lengths")
        return d

    def success_rate(self, threshold: float) -> float:
        """Fraction of episodes whose return reached `threshold` (the env's bar for solved)."""
        return float(np.mean(np.asarray(self.returns) >= threshold)) if self.returns else 0.0


def run_episodes(policy: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int,
                 seed: int, num_envs: int = 16, env_kwargs: dict | None = None,
                 make_env: Callable[[], gym.Env] | None = None,
                 epsilon: float = 0.0, stop: Callable[[], bool] | None = None,
                 on_steps: Callable[[int], None] | None = None) -> EvalResult:
    """Play `episodes` episodes, episode j reset with seed+j, `num_envs` stepped together.

    Each episode's seed is fixed whatever num_envs is, so a deterministic policy always gets
    the same result: evaluations compare across runs and across evaluation settings.
    `make_env` builds the envs instead of `gym.make(env_id, **env_kwargs)` (with Atari's
    preprocessing for Atari ids; a run trained on its own env factory is evaluated on the same
    envs). With `epsilon` > 0 each action is uniformly random with that probability (Atari's
    evaluation protocol), drawn from the episode's own EVAL_EPSILON generator (seeds.py: keyed
    by the episode, never a copy of the env's reset randomness), so the result still does not
    depend on num_envs. Returns are the env's raw rewards summed. Actions are indices 0..n-1,
    as the policy's: a `Discrete(n, start)` env receives start + a (envs.zero_based).

    `stop` is asked before every step (a run's signal cuts its evaluation short): once it says
    True, play ends and the result covers the episodes 0..m-1 that all ended (m may be 0,
    then every statistic is NaN), so its seeds are still seed..seed+m-1. `on_steps(n)` hears
    of every vector step's n env steps (a screen played beside training paces on it).
    """
    k = max(1, min(num_envs, episodes))
    if make_env is None:
        def make_env() -> gym.Env:
            return make_game(env_id, **(env_kwargs or {}))
    envs = [zero_based(make_env()) for _ in range(k)]
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    ended = np.zeros(episodes, dtype=bool)
    slot_episode = [-1] * k
    obs: list = [None] * k
    rngs: list = [None] * k
    next_episode = 0

    def start(i: int) -> None:
        nonlocal next_episode
        if next_episode < episodes:
            slot_episode[i] = next_episode
            obs[i], _ = envs[i].reset(seed=seed + next_episode)
            if epsilon > 0:
                rngs[i] = episode_generator(seed + next_episode, Purpose.EVAL_EPSILON)
            next_episode += 1
        else:
            slot_episode[i] = -1

    try:
        for i in range(k):
            start(i)
        while True:
            active = [i for i in range(k) if slot_episode[i] >= 0]
            if not active or (stop is not None and stop()):
                break
            actions = policy(np.stack([obs[i] for i in active]))
            for j, i in enumerate(active):
                action = actions[j]
                if epsilon > 0 and rngs[i].random() < epsilon:
                    action = rngs[i].integers(envs[i].action_space.n)
                o, r, terminated, truncated, _ = envs[i].step(action)
                ep = slot_episode[i]
                returns[ep] += float(r)
                lengths[ep] += 1
                if terminated or truncated:
                    ended[ep] = True
                    start(i)
                else:
                    obs[i] = o
            if on_steps is not None:
                on_steps(len(active))
    finally:
        for env in envs:
            env.close()
    done = episodes if ended.all() else int(np.argmin(ended))
    if done == 0:
        return EvalResult(math.nan, math.nan, math.nan, math.nan, 0)
    returns, lengths = returns[:done], lengths[:done]
    return EvalResult(float(returns.mean()), float(returns.std()), float(returns.min()),
                      float(returns.max()), done, returns.tolist(), lengths.tolist())
