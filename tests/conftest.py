"""Shared helpers: scripted envs with known transitions, tiny networks and batches."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers import TimeLimit
from scripted_envs import env_id as scripted_env_id

from fastdqn.nets.mlp import MLP
from fastdqn.replay.rows import Batch

CUDA_DEVICES = [
    pytest.param("cuda:0", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                    reason="needs a CUDA device")),
    pytest.param("cuda:1", marks=pytest.mark.skipif(torch.cuda.device_count() < 2,
                                                    reason="needs two CUDA devices")),
]
"""Devices for the CUDA-graph tests, each run while cuda:0 is current: on cuda:1, a stream,
event or capture left on the current device would record nothing of the learner's work.
Skipped, not faked, without them."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA device (marked from its skip reason)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `cuda` every test that is skipped without CUDA (a CUDA_DEVICES parameter or a
    skipif whose reason names CUDA), so `pytest -m cuda` runs exactly the CUDA tests however
    each one says it needs CUDA (bench/device_check.sh); tryfirst: before `-m` selects."""
    for item in items:
        if any("CUDA" in str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)


# ---------------------------------------------------------------------------------------------
# CountingEnv: every observation says which episode and which step it is, so any transition
# stored in the buffer can be checked against the truth.
# ---------------------------------------------------------------------------------------------

EPISODE_LENGTHS = (3, 5, 2, 4, 6, 1)
"""Termination lengths, cycled over the episodes of one env (5 and 6 exceed the time limit)."""
TIME_LIMIT = 4
"""max_episode_steps of the TimeLimit wrapper: episodes longer than this are truncated."""
EPISODES_PER_SEED = 1000
SEED_FOLD = 10_007
"""Episode ids are seed * EPISODES_PER_SEED + k, so envs reset with distinct seeds never share."""


def episode_length(episode_id: int) -> int:
    """Steps until CountingEnv terminates episode `episode_id` (ignoring the time limit)."""
    return EPISODE_LENGTHS[(episode_id % EPISODES_PER_SEED) % len(EPISODE_LENGTHS)]


def counting_reward(t: int, action: int) -> float:
    return 10.0 * t + action


class CountingEnv(gym.Env):
    """obs = [episode_id, t]; reward = 10*t + action; terminates after episode_length(id) steps."""

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(3)
        self.base = 0
        self.count = -1
        self.episode_id = -1
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.episode_id, self.t], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            # fastdqn's reset seeds are large (seeds.py); folded so that ids stay exact in
            # float32 observations (below 2**24), and distinct for the seeds a test uses
            self.base = (int(seed) % SEED_FOLD) * EPISODES_PER_SEED
            self.count = -1
        self.count += 1
        self.episode_id = self.base + self.count
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        a = int(action)
        assert self.action_space.contains(a)
        reward = counting_reward(self.t, a)
        self.t += 1
        terminated = self.t >= episode_length(self.episode_id)
        return self._obs(), reward, terminated, False, {}


def make_counting_env() -> gym.Env:
    """The factory handed to make_vector_env (module level: picklable for async workers)."""
    return TimeLimit(CountingEnv(), max_episode_steps=TIME_LIMIT)


class ExplodingEnv(CountingEnv):
    """A CountingEnv whose env 0 (reset with seed 0) raises on its third step."""

    def step(self, action):
        if self.base == 0 and self.t == 2:
            raise ValueError(f"exploded at t={self.t}")
        return super().step(action)


def make_exploding_env() -> gym.Env:
    return ExplodingEnv()


DICT_OBS_ENV_ID = scripted_env_id("DictObs-v0")
"""Discrete actions but a Dict observation space: fastdqn must refuse it."""


# ---------------------------------------------------------------------------------------------
# Networks and batches
# ---------------------------------------------------------------------------------------------


def set_layers(net: MLP, flat: torch.Tensor, layers: list[tuple[list, list]]) -> torch.Tensor:
    """Write hand-chosen (weight rows, bias) pairs into `flat` through the net's views."""
    for (w, b), (w_val, b_val) in zip(net.views(flat), layers):
        w.copy_(torch.tensor(w_val, dtype=torch.float32))
        b.copy_(torch.tensor(b_val, dtype=torch.float32))
    return flat


def module_grad(module: torch.nn.Module) -> torch.Tensor:
    """The gradients of an exported QNetwork in fastdqn's flat layout (w0, b0, w1, b1, ...)."""
    parts = []
    for m in module.linears():
        parts += [m.weight.grad.reshape(-1), m.bias.grad.reshape(-1)]
    return torch.cat(parts)


def random_batch(generator: torch.Generator, n: int, obs_dim: int, n_actions: int,
                 reward_scale: float = 1.0) -> Batch:
    """A random float32 transition batch (about a third of the rows terminated)."""
    return Batch(
        obs=torch.randn(n, obs_dim, generator=generator),
        actions=torch.randint(n_actions, (n,), generator=generator),
        rewards=torch.randn(n, generator=generator) * reward_scale,
        next_obs=torch.randn(n, obs_dim, generator=generator),
        dones=(torch.rand(n, generator=generator) < 0.35).float(),
        discounts=0.99 ** torch.randint(1, 4, (n,), generator=generator).float(),
    )


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# ---------------------------------------------------------------------------------------------
# Subprocesses: `python -m fastdqn` of this checkout, and the process table
# ---------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """os.environ with PYTHONPATH on this checkout (and tests/, for `scripted_envs:` ids)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])
    env.update(extra)
    return env


def fastdqn_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastdqn", *args]


def run_fastdqn(*args: str, timeout: float = 240, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(fastdqn_command(*args), capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env(**extra_env), cwd=REPO_ROOT)


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment holds FASTDQN_TEST_TAG=tag (workers inherit it)."""
    needle = f"FASTDQN_TEST_TAG={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    with open(f"/proc/{entry}/stat", "rb") as st:
                        state = st.read().rsplit(b")", 1)[1].split()[0]
                    if state != b"Z":  # a zombie is already dead, waiting to be reaped
                        pids.append(int(entry))
        except OSError:
            continue
    return pids


def wait_for_no_tagged(tag: str, timeout: float = 120.0) -> list[int]:
    """Tagged processes still alive after up to `timeout` s (the resource tracker needs a moment;
    they are waited for, and the bound, far beyond need, only keeps a survivor from hanging)."""
    deadline = time.monotonic() + timeout
    while (pids := tagged_pids(tag)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids

