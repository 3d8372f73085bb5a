"""n-step returns, formed per env before transitions reach the replay buffer.

Each env's last n steps wait in a small ring (observations on the training device, actions and
rewards on the host). A window is written once it holds n steps, as
(s_t, a_t, R = r_t + g r_t+1 + ... + g^(n-1) r_t+n-1, s_t+n, terminated = 0, discount g^n);
an episode end flushes every waiting window of that env, each cut at the end: after k < n
steps the sum stops, the discount is g^k, and the next observation is the episode's true final
one (bootstrapped on truncation, not on termination). So no window ever spans two episodes.

Forming windows at write time keeps the buffer and the learner oblivious of n: a row is
(s, a, R, s', done, discount) whatever n is, and the ring's wrap-around cannot cut a window.
Windows waiting at a checkpoint belong to episodes that restart on resume, so they are not
saved: the restarted episode forms them again.
"""

from __future__ import annotations

import numpy as np
import torch


class NStepWriter:
    """Turns the N envs' 1-step transitions into n-step rows for `ReplayBuffer.add`."""

    def __init__(self, n: int, gamma: float, num_envs: int, obs_shape: tuple[int, ...],
                 obs_dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        if n < 1:
            raise ValueError(f"n-step needs n >= 1, got {n}")
        self.n, self.gamma, self.num_envs = n, gamma, num_envs
        self.device = torch.device(device)
        self.obs = torch.zeros((n, num_envs, *obs_shape), dtype=obs_dtype, device=self.device)
        self.actions = np.zeros((n, num_envs), dtype=np.int64)
        self.rewards = np.zeros((n, num_envs), dtype=np.float64)
        self.count = np.zeros(num_envs, dtype=np.int64)
        self.slot = 0
        self.powers = gamma ** np.arange(n + 1, dtype=np.float64)

    def push(self, obs: torch.Tensor, actions: np.ndarray, rewards: np.ndarray,
             next_obs: torch.Tensor, terminated: np.ndarray, truncated: np.ndarray
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                        torch.Tensor]:
        """Take one vector step; return the rows it completes as (obs, actions, returns,
        next_obs, terminated, discounts) tensors on the device (possibly zero rows).

        `next_obs` must hold each env's true next observation (the final one at an episode end).
        """
        n, s = self.n, self.slot
        self.obs[s] = obs
        self.actions[s] = actions
        self.rewards[s] = rewards
        self.count += 1
        done = terminated | truncated
        full = (self.count == n) & ~done
        # one row per (env, window length k): full windows have k = n, an ending env flushes
        # its windows of lengths count..1
        envs = [np.flatnonzero(full)]
        lengths = [np.full(len(envs[0]), n, dtype=np.int64)]
        for i in np.flatnonzero(done):
            k = np.arange(self.count[i], 0, -1, dtype=np.int64)
            envs.append(np.full(len(k), i, dtype=np.int64))
            lengths.append(k)
        env = np.concatenate(envs)
        k = np.concatenate(lengths)
        first = (s - k + 1) % n  # ring slot of each window's first step
        steps = np.arange(n)
        slots = (first[:, None] + steps[None, :]) % n
        inside = steps[None, :] < k[:, None]
        returns = (self.rewards[slots, env[:, None]] * self.powers[:n] * inside).sum(1)
        self.count[full] -= 1
        self.count[done] = 0
        self.slot = (s + 1) % n
        dev = self.device
        env_t = torch.from_numpy(env).to(dev)
        return (self.obs[torch.from_numpy(first).to(dev), env_t],
                torch.from_numpy(self.actions[first, env]).to(dev),
                torch.from_numpy(returns.astype(np.float32)).to(dev),
                next_obs.index_select(0, env_t),
                torch.from_numpy(terminated[env].astype(np.float32)).to(dev),
                torch.from_numpy(self.powers[k].astype(np.float32)).to(dev))

    def reset(self) -> None:
        """Drop every waiting window (the episodes they belong to restart)."""
        self.count[:] = 0
