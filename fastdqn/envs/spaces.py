"""What fastdqn can act in, checked before anything runs: a registered id, a Discrete action
space (counted from 0 by `zero_based`) and a Box of observations it can store exactly."""

from __future__ import annotations

import difflib
import importlib

import gymnasium as gym
import numpy as np

from fastdqn.core.device import torch_dtype
from fastdqn.envs.atari import register
from fastdqn.errors import ConfigError


def check_env_id(env_id: str) -> None:
    """Refuse an unregistered id with a close-match suggestion.

    `module:Name-v0` ids import `module` first (gymnasium's convention for envs that register
    themselves on import), so user envs work without code changes to fastdqn.
    """
    name = env_id
    register(env_id)  # ALE/..., ...NoFrameskip-v4 and MinAtar/... ids: their package's registry
    if ":" in env_id:
        module, name = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except Exception as e:  # arbitrary user code runs on import
            raise ConfigError(f"--env {env_id}: cannot import module {module!r} "
                              f"({type(e).__name__}: {e}); check the name and PYTHONPATH") from None
    if name in gym.registry:
        return
    close = difflib.get_close_matches(name, list(gym.registry), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "; see gymnasium.pprint_registry()"
    raise ConfigError(f"unknown env id {env_id!r}{hint}")


def check_spaces(env_id: str, obs_space: gym.Space, act_space: gym.Space) -> None:
    """fastdqn needs a Discrete action space (any `start`: see zero_based) and a Box observation
    space of values it can store exactly (replay.STORED_AS)."""
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
    _check_box(env_id, obs_space)


def _check_box(env_id: str, obs_space: gym.spaces.Box) -> None:
    """A Box with values, of a dtype torch holds, within the range fastdqn stores it in."""
    dtype = np.dtype(obs_space.dtype)
    cast = "cast them with gymnasium.wrappers.DtypeObservation(env, np.float64)"
    if 0 in obs_space.shape:
        raise ConfigError(f"{env_id} observes a Box of shape {list(obs_space.shape)}, which holds "
                          "no values; give the observations at least one")
    try:
        torch_dtype(dtype)
    except TypeError:
        raise ConfigError(f"{env_id} observes {dtype} values, which torch cannot hold; "
                          f"{cast}") from None
    if dtype == np.uint64 and int(np.max(obs_space.high)) > np.iinfo(np.int64).max:
        raise ConfigError(f"{env_id} observes uint64 values up to {int(np.max(obs_space.high))}, "
                          f"more than the int64 fastdqn stores them in holds; declare a Box high "
                          f"below 2**63 if they stay there, or {cast}")


class ActionStart(gym.ActionWrapper):
    """A `Discrete(n, start)` env seen as `Discrete(n)`: action a reaches the env as start + a.

    fastdqn's networks, replay rows and samplers count actions 0..n-1; without this an env
    whose actions start elsewhere would receive the wrong ones, silently if it does not check
    them. `zero_based` applies it wherever fastdqn builds an env it acts in.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.action_space
        self.start = space.start
        self.action_space = gym.spaces.Discrete(int(space.n), seed=space.np_random)

    def action(self, action):
        return self.start + action


def zero_based(env: gym.Env) -> gym.Env:
    """`env` with its Discrete actions counted from 0 (ActionStart where `start` is not 0);
    any other env unchanged, so this applies twice, or to an env check_spaces refuses, safely."""
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete) and int(space.start) != 0:
        return ActionStart(env)
    return env
