"""Greedy evaluation on seeds disjoint from training, and the trained policy object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import gymnasium as gym
import numpy as np
import torch

from .networks import MLP, preprocess

EVAL_SEED_OFFSET = 1_000_003
"""Eval episode j uses seed + EVAL_SEED_OFFSET + j; training envs use seed .. seed+num_envs-1."""


def eval_seed(seed: int) -> int:
    return seed + EVAL_SEED_OFFSET


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


class Policy:
    """The greedy policy of a trained Q-network: call it on a batch of observations."""

    def __init__(self, net: MLP, params: torch.Tensor, device: torch.device | str = "cpu") -> None:
        self.net = net
        self.device = torch.device(device)
        self.params = params.detach().to(self.device, torch.float32).clone()
        self.views = net.views(self.params)

    @torch.no_grad()
    def q_values(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Q-values [B, n_actions] of a batch of observations."""
        x = torch.as_tensor(np.asarray(obs), device=self.device)
        return self.net.forward(self.views, preprocess(x))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions for a batch of observations [B, *obs_shape]."""
        return self.q_values(obs).argmax(1).cpu().numpy()

    def act(self, obs: np.ndarray) -> int:
        """Greedy action for a single observation."""
        return int(self(np.asarray(obs)[None])[0])

    def to_module(self) -> torch.nn.Sequential:
        """The Q-network as a standard torch.nn.Sequential (a copy)."""
        return self.net.to_module(self.params)


def run_episodes(policy: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int,
                 seed: int, num_envs: int = 16, env_kwargs: dict | None = None) -> EvalResult:
    """Play `episodes` episodes, episode j reset with seed+j, `num_envs` stepped together.

    Each episode's seed is fixed whatever num_envs is, so a deterministic policy always gets
    the same result: evaluations compare across runs and across evaluation settings.
    """
    k = max(1, min(num_envs, episodes))
    envs = [gym.make(env_id, **(env_kwargs or {})) for _ in range(k)]
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    slot_episode = [-1] * k
    obs: list = [None] * k
    next_episode = 0

    def start(i: int) -> None:
        nonlocal next_episode
        if next_episode < episodes:
            slot_episode[i] = next_episode
            obs[i], _ = envs[i].reset(seed=seed + next_episode)
            next_episode += 1
        else:
            slot_episode[i] = -1

    try:
        for i in range(k):
            start(i)
        while True:
            active = [i for i in range(k) if slot_episode[i] >= 0]
            if not active:
                break
            actions = policy(np.stack([obs[i] for i in active]))
            for j, i in enumerate(active):
                o, r, terminated, truncated, _ = envs[i].step(actions[j])
                ep = slot_episode[i]
                returns[ep] += float(r)
                lengths[ep] += 1
                if terminated or truncated:
                    start(i)
                else:
                    obs[i] = o
    finally:
        for env in envs:
            env.close()
    return EvalResult(float(returns.mean()), float(returns.std()), float(returns.min()),
                      float(returns.max()), episodes, returns.tolist(), lengths.tolist())


def load_policy(path: str, device: str = "cpu") -> tuple[Policy, dict]:
    """The greedy policy stored in a checkpoint, and the whole checkpoint it came from.

    The checkpoint comes back too (env description under "env", settings under "config") so a
    caller that needs more than the network reads the file once, not twice.
    """
    from .checkpoint import CheckpointError, load_checkpoint

    state = load_checkpoint(path)
    damaged = CheckpointError(f"{path} lacks fields a fastdqn checkpoint has; "
                              "it is damaged or from another program")
    try:
        spec = state["net"]
        net = MLP(int(spec["in_dim"]), int(spec["n_actions"]), tuple(spec["hidden"]))
        params = state["learner"]["params"]
        if params.numel() != net.num_params:
            raise CheckpointError(f"{path}: parameter count does not match its network shape; "
                                  "the file is damaged")
        if not isinstance(state["env"]["id"], str) or not isinstance(state["config"]["seed"], int):
            raise damaged
        return Policy(net, params, device), state
    except (KeyError, TypeError, AttributeError):
        raise damaged from None
