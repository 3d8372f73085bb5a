"""One env as fastdqn builds it: from an id or the caller's factory, probed for its spaces,
counted from action 0, and wrapped so that its episode's start can be saved and replayed."""

from __future__ import annotations

import os
from collections.abc import Callable

import gymnasium as gym
import numpy as np

from fastdqn.envs.atari import make_env
from fastdqn.envs.spaces import check_env_id, check_spaces, zero_based
from fastdqn.envs.workers import become_worker
from fastdqn.errors import ConfigError, EnvError

EnvFactory = Callable[[], gym.Env]


def env_factory(env_id: str, **kwargs) -> EnvFactory:
    """`gym.make(env_id, **kwargs)` as a factory; Atari ids get their DQN preprocessing
    (atari.py), and Atari and MinAtar ids their package's registration (in a worker too);
    actions count from 0 (zero_based)."""
    def make() -> gym.Env:
        return zero_based(make_env(env_id, **kwargs))

    return make


def probe_env(env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Discrete, float | None]:
    """Build one env to check its spaces; return (obs space, action space, reward threshold)."""
    check_env_id(env_id)
    try:
        env = zero_based(make_env(env_id))
    except ConfigError:
        raise
    except Exception as e:  # construction failures come from arbitrary user env code
        raise ConfigError(f"{env_id} failed to construct: {type(e).__name__}: {e}") from None
    try:
        check_spaces(env_id, env.observation_space, env.action_space)
        threshold = env.spec.reward_threshold if env.spec is not None else None
        return env.observation_space, env.action_space, threshold
    finally:
        env.close()


class EpisodeStart(gym.Wrapper):
    """Remembers how the current episode began, and names its env index in errors.

    An env's internals cannot be checkpointed in general, but an episode's start can: it is the
    reset seed or, for a seedless autoreset, the state of the env's `np_random` just before the
    reset. The trainer saves `episode_start` of every env with a checkpoint; on resume it hands
    them back as `restart_from`, and the next `reset()` begins each in-flight episode again from
    the same state. For an env at an episode boundary that continues the run exactly.
    """

    def __init__(self, env: gym.Env, index: int) -> None:
        super().__init__(env)
        self.index = index
        self.episode_start: dict | None = None
        self.restart_from: dict | None = None

    def reset(self, *, seed=None, options=None):
        if seed is None and self.restart_from is not None:
            start, self.restart_from = self.restart_from, None
            if start["seed"] is not None:
                seed = start["seed"]
            else:
                self.env.np_random = _generator(start["rng"])
        if seed is not None:
            self.episode_start = {"seed": int(seed), "rng": None}
        else:
            self.episode_start = {"seed": None,
                                  "rng": _plain(self.env.np_random.bit_generator.state)}
        try:
            return self.env.reset(seed=seed, options=options)
        except Exception as e:  # user env code: name the env, keep the cause
            raise EnvError(f"env {self.index} crashed in reset: {type(e).__name__}: {e}") from e

    def step(self, action):
        try:
            return self.env.step(action)
        except Exception as e:
            raise EnvError(f"env {self.index} crashed in step: {type(e).__name__}: {e}") from e


def _plain(value):
    """A bit generator state as plain ints, lists and dicts (a weights_only checkpoint holds it)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    return value


def bit_generator_class(name: object) -> type | None:
    """numpy's bit generator class called `name`, or None: a checkpoint names the class that
    is then called, and np.random holds other callables (np.random.test runs a test suite)."""
    cls = getattr(np.random, name, None) if isinstance(name, str) else None
    return cls if isinstance(cls, type) and issubclass(cls, np.random.BitGenerator) else None


def _generator(state: dict) -> np.random.Generator:
    cls = bit_generator_class(state["bit_generator"])
    if cls is None:
        raise ValueError(f"{state['bit_generator']!r} is not a numpy bit generator")
    bit_generator = cls()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


class EnvMaker:
    """Picklable factory of env `index`: counts its actions from 0 (zero_based) and wraps it in
    EpisodeStart; in a worker, detaches first."""

    def __init__(self, factory: EnvFactory, index: int) -> None:
        self.factory, self.index, self.trainer_pid = factory, index, os.getpid()

    def __call__(self) -> gym.Env:
        if os.getpid() != self.trainer_pid:
            become_worker(self.trainer_pid)
        return EpisodeStart(zero_based(self.factory()), self.index)


def env_makers(env_id: str, num_envs: int, factory: EnvFactory | None = None) -> list[EnvMaker]:
    """The factories of a vector env's `num_envs` envs; `factory` overrides gym.make."""
    base = factory or env_factory(env_id)
    return [EnvMaker(base, i) for i in range(num_envs)]
