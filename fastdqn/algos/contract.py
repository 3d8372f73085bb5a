"""What an algorithm's loop and the run lifecycle (`runtime.run.Run`) promise each other.

The loop gets a `RunHandle` (the run's counters, envs, timer and its maybe_* hooks) and the run
gets an `Agent`; neither imports the other's module, so algorithms sit below the runtime that
drives them. `Counters` is the run's own progress, which both read and a checkpoint restores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fastdqn.config.settings import Config
from fastdqn.evaluation.policies import Policy


class EpisodeTally:
    """Each env's running return and length: `step` adds a vector step and hands back the
    (return, length) of the episodes it ended, their envs starting again from zero."""

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def step(self, rewards: np.ndarray, done: np.ndarray) -> list[tuple[float, int]]:
        self.returns += rewards
        self.lengths += 1
        ended = []
        for i in np.flatnonzero(done):
            ended.append((float(self.returns[i]), int(self.lengths[i])))
            self.returns[i], self.lengths[i] = 0.0, 0
        return ended


@dataclass
class Counters:
    """Everything of the run's own progress a checkpoint must restore."""

    step: int = 0
    iteration: int = 0
    episodes: int = 0
    due: int = 0
    wall_time: float = 0.0
    best_eval: float = -math.inf
    best_step: int = -1
    next_eval: int = 0
    next_checkpoint: int = 0
    next_log: int = 0
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    end_steps: list[int] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)


def divergence_message(cfg: Config, step: int, what: str) -> str:
    """One line: where training diverged and what usually causes it."""
    clip = (f"--max-grad-norm {cfg.max_grad_norm:g} is on, a lower value damps the updates"
            if cfg.max_grad_norm > 0 else "gradient clipping is off, try --max-grad-norm 10")
    return (f"training diverged at step {step:,d} ({what}); likely causes: a learning rate too "
            f"high (--lr {cfg.lr:g}, try 3-10x lower) or rewards too large (scale them down, e.g. "
            f"with gymnasium.wrappers.TransformReward); {clip}")


class Agent(Protocol):
    """What a run needs from an algorithm's agent."""

    def state_dict(self, with_buffer: bool) -> dict: ...
    def load_state_dict(self, ckpt: dict) -> None: ...
    def greedy(self, obs: np.ndarray) -> np.ndarray: ...
    def pop_stats(self) -> dict[str, float] | None: ...
    def all_finite(self) -> bool: ...
    def policy(self) -> Policy: ...
    def summary(self) -> dict: ...


class RunHandle(Protocol):
    """What a training loop uses of the run (`runtime.run.Run` is the one implementation)."""

    cfg: Config
    c: Counters
    envs: Any
    timer: Any
    logger: Any

    def running(self) -> bool: ...
    def reset_envs(self) -> np.ndarray: ...
    def count_step(self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray
                   ) -> None: ...
    def count_block(self, steps: int, ended: list[tuple[float, int]]) -> None: ...
    def stop(self, reason: str) -> None: ...
    def maybe_log(self, **scalars: float) -> None: ...
    def maybe_evaluate(self) -> bool: ...
    def maybe_checkpoint(self) -> None: ...


@dataclass(frozen=True)
class Algorithm:
    """One --algo as the runtime drives it (`algos.registry.ALGOS` holds one for each): `train`
    looks it up instead of switching on the name, so a new algorithm is its module and one entry.

    `make_agent(cfg, obs_space, act_space, device, q_network=..., env_factory=..., resuming=...)`
    builds the agent (the keywords are DQN's; an algorithm that reads none takes and drops
    them); `loop(run, agent)` trains it, timed in `stages`; `check_checkpoint(agent, ckpt, path)`
    refuses a checkpoint the agent cannot load, before anything is copied into it;
    `check_memory(cfg, obs_space, n_actions, device)` refuses in one line what the settings
    would allocate beyond the device's memory, before anything is allocated; `prepare(cfg,
    device)` starts slow one-time work (a compile) while the run starts.
    """

    name: str
    make_agent: Callable[..., Agent]
    loop: Callable[[RunHandle, Any], None]
    stages: tuple[str, ...]
    check_checkpoint: Callable[[Any, dict, Path], None]
    check_memory: Callable[[Config, Any, int, torch.device], None]
    hidden_field: str = "hidden"
    """The Config field that sizes its network's hidden layers (--hidden, --policy-hidden)."""
    check_env: Callable[[Config, Any, torch.device, Callable[[], Any], bool], None] | None = None
    """`check_env(cfg, obs_space, device, make_env, custom)`: what it needs of the env beyond
    its spaces, refused in one line before the run dir exists."""
    custom_network: bool = False
    """Whether it trains a `q_network` of the caller's (`train(q_network=...)`)."""
    prepare: Callable[[Config, torch.device], None] | None = None

    @property
    def hidden_flag(self) -> str:
        return "--" + self.hidden_field.replace("_", "-")
