"""The greedy policy of a trained network (and loading one from a checkpoint), and the
baselines a score is set against: uniformly random actions, and gymnasium's heuristic
controller where it ships one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from fastdqn.core.checkpoint import load_checkpoint
from fastdqn.core.seeds import Purpose, episode_generator
from fastdqn.envs.atari import env_name
from fastdqn.errors import CheckpointError, ConfigError
from fastdqn.nets.kinds import checkpoint_kind
from fastdqn.nets.mlp import MLP, FlatQ, preprocess


class Policy:
    """The greedy policy of a trained network: call it on a batch of observations.

    The network gives one score per action (a Q-network's values, a policy network's logits);
    the greedy action is the highest-scoring one either way.
    """

    def __init__(self, net: MLP | None, params: torch.Tensor | None,
                 device: torch.device | str = "cpu", module: torch.nn.Module | None = None
                 ) -> None:
        """The flat MLP `net` with its `params`, or else an nn.Module `module` (used as is)."""
        self.net, self.module = net, module
        self.device = torch.device(device)
        if net is not None:
            self.params = params.detach().to(self.device, torch.float32).clone()
            self.views = net.views(self.params)

    @classmethod
    def of_module(cls, module: torch.nn.Module, device: torch.device | str = "cpu") -> Policy:
        """The greedy policy of a network of your own (a copy of it)."""
        return cls(None, None, device, copy.deepcopy(module).to(device).eval())

    @torch.no_grad()
    def q_values(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Q-values [B, n_actions] of a batch of observations."""
        x = preprocess(torch.as_tensor(np.asarray(obs), device=self.device))
        if self.module is not None:
            return self.module(x)
        return self.net.forward(self.views, x)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions for a batch of observations [B, *obs_shape]."""
        return self.q_values(obs).argmax(1).cpu().numpy()

    def act(self, obs: np.ndarray) -> int:
        """Greedy action for a single observation."""
        return int(self(np.asarray(obs)[None])[0])

    @property
    def network(self) -> MLP | torch.nn.Module:
        """What scores the actions: the flat MLP's layout, or the module (its sizes are what
        `fastdqn eval` checks against the env's spaces)."""
        return self.net if self.net is not None else self.module

    def to_module(self) -> torch.nn.Module:
        """The Q-network as a plain torch module, a `QNetwork` (a copy)."""
        if self.module is not None:
            return copy.deepcopy(self.module)
        return self.net.to_module(self.params)


def load_policy(path: str, device: str = "cpu") -> tuple[Policy, dict]:
    """The greedy policy stored in a checkpoint, and the whole checkpoint it came from.

    The checkpoint comes back too (env description under "env", settings under "config") so a
    caller that needs more than the network reads the file once, not twice. The network is
    rebuilt by its kind's entry in the registry (nets.kinds), every size and tensor checked.
    """
    state = load_checkpoint(path)
    damaged = CheckpointError(f"{path} lacks fields a fastdqn checkpoint has; "
                              "it is damaged or from another program")
    try:
        spec = state["net"]
        if not isinstance(state["env"]["id"], str) or not isinstance(state["config"]["seed"], int):
            raise damaged
        model = checkpoint_kind(path, spec).load(path, state)
        if isinstance(model, FlatQ):
            return Policy(model.net, model.params, device), state
        return Policy(None, None, device, model.to(device).eval()), state
    except (KeyError, TypeError, AttributeError):
        raise damaged from None


class RandomPolicy:
    """Uniformly random actions for a batch of observations; seeded, so a comparison repeats.

    The draws follow the order run_episodes asks for actions in, so the same seed gives the same
    episodes for the same `num_envs`. `seed` is the first episode's seed: the draws come from
    its BASELINE generator (seeds.py), not from the env's own reset randomness.
    """

    def __init__(self, n_actions: int, seed: int = 0) -> None:
        self.n_actions = n_actions
        self.rng = episode_generator(seed, Purpose.BASELINE)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.integers(0, self.n_actions, size=len(obs))


def _heuristic_controller(env_id: str) -> Callable | None:
    """gymnasium's hand-written controller for `env_id`, if it ships one (LunarLander only)."""
    if gym.spec(env_name(env_id)).name == "LunarLander":
        from gymnasium.envs.box2d.lunar_lander import heuristic

        return heuristic
    return None


def has_heuristic(env_id: str) -> bool:
    """Does gymnasium ship a heuristic controller for this env?"""
    return _heuristic_controller(env_id) is not None


class HeuristicPolicy:
    """gymnasium's LunarLander heuristic controller, applied row by row to a batch of observations.

    The controller reads one observation at a time and only asks the env whether its actions are
    continuous, so one env built here serves every row.
    """

    def __init__(self, env_id: str, env_kwargs: dict | None = None) -> None:
        controller = _heuristic_controller(env_id)
        if controller is None:
            raise ConfigError(f"gymnasium has no heuristic controller for {env_id}; "
                              "compare against RandomPolicy instead")
        self.controller = controller
        self.env = gym.make(env_id, **(env_kwargs or {}))
        self.env.close()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.fromiter((self.controller(self.env, row) for row in obs), dtype=np.int64,
                           count=len(obs))
