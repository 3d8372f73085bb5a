"""The preallocated replay ring buffer, resident on the training device.

One tensor per field, allocated once at full capacity. `add` writes the transitions of all N envs
with a single indexed write per field; `gather` reads a whole block of sampled batches with a
single index_select per field. Observations keep their dtype (uint8 images stay uint8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Batch:
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    dones: torch.Tensor

    def split(self, n: int) -> list[Batch]:
        """Cut a gathered [n*B] block into n batches (views, no copies)."""
        parts = [t.chunk(n) for t in (self.obs, self.actions, self.rewards, self.next_obs,
                                      self.dones)]
        return [Batch(*p) for p in zip(*parts)]


class ReplayBuffer:
    """Ring buffer of (obs, action, reward, next_obs, terminated) on `device`."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> None:
        self.capacity = capacity
        self.device = torch.device(device)
        self.obs = torch.zeros((capacity, *obs_shape), dtype=obs_dtype, device=self.device)
        self.next_obs = torch.zeros_like(self.obs)
        self.actions = torch.zeros(capacity, dtype=torch.int64, device=self.device)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=self.device)
        self.dones = torch.zeros(capacity, dtype=torch.float32, device=self.device)
        self.pos = 0
        self.size = 0
        self._rows = torch.arange(capacity, device=self.device)

    def add(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
            next_obs: torch.Tensor, dones: torch.Tensor) -> None:
        """Write N transitions (one per env) at the ring's head, wrapping at capacity."""
        n = obs.shape[0]
        if n > self.capacity:
            raise ValueError(f"cannot add {n} transitions to a buffer of {self.capacity}")
        end = self.pos + n
        if end <= self.capacity:
            rows: torch.Tensor | slice = slice(self.pos, end)
        else:
            rows = torch.cat([self._rows[self.pos:], self._rows[: end - self.capacity]])
        self.obs[rows] = obs
        self.actions[rows] = actions
        self.rewards[rows] = rewards
        self.next_obs[rows] = next_obs
        self.dones[rows] = dones
        self.pos = end % self.capacity
        self.size = min(self.size + n, self.capacity)

    def gather(self, idx: torch.Tensor) -> Batch:
        """The transitions at `idx` (a flat index tensor on the buffer's device)."""
        return Batch(
            self.obs.index_select(0, idx),
            self.actions.index_select(0, idx),
            self.rewards.index_select(0, idx),
            self.next_obs.index_select(0, idx),
            self.dones.index_select(0, idx),
        )

    def state_dict(self) -> dict:
        """Filled rows and the ring position (for --save-buffer checkpoints).

        The rows are copied: torch.save of a slice would write the whole preallocated tensor.
        """
        n = self.size
        rows = {name: getattr(self, name)[:n].cpu().clone()
                for name in ("obs", "actions", "rewards", "next_obs", "dones")}
        return {**rows, "pos": self.pos, "size": self.size, "capacity": self.capacity}

    def load_state_dict(self, state: dict) -> None:
        n = int(state["size"])
        if n > self.capacity:
            raise ValueError(f"saved buffer holds {n} rows, capacity is {self.capacity}")
        if state.get("capacity", self.capacity) != self.capacity:
            raise ValueError(f"saved buffer has capacity {state['capacity']}, "
                             f"this one {self.capacity}")
        for name in ("obs", "actions", "rewards", "next_obs", "dones"):
            getattr(self, name)[:n] = state[name].to(self.device)
        self.pos, self.size = int(state["pos"]), n


def torch_dtype(np_dtype: np.dtype) -> torch.dtype:
    """The torch dtype that stores a numpy observation dtype without conversion."""
    return torch.from_numpy(np.zeros(1, dtype=np_dtype)).dtype
