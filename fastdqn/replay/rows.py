"""The preallocated replay ring buffer, resident on the training device.

One tensor per field, allocated once at full capacity. `add` writes the transitions of all N envs
with a single indexed write per field; `gather` reads a whole block of sampled batches with a
single index_select per field. Observations keep their dtype (uint8 images stay uint8).

A row is (s, a, R, s', terminated, discount): the learner's target is
R + discount * (1 - terminated) * Q(s', .), so 1-step rows (discount gamma) and n-step rows
(R summed over k <= n steps, discount gamma^k; see nstep.py) are the same to everything
downstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastdqn.core.device import available_memory
from fastdqn.errors import ConfigError, OldBufferError


@dataclass
class Batch:
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    dones: torch.Tensor
    discounts: torch.Tensor

    def split(self, n: int) -> list[Batch]:
        """Cut a gathered [n*B] block into n batches (views, no copies)."""
        parts = [getattr(self, f).chunk(n) for f in FIELDS]
        return [Batch(*p) for p in zip(*parts)]


FIELDS = ("obs", "actions", "rewards", "next_obs", "dones", "discounts")




class ReplayBuffer:
    """Ring buffer of (obs, action, return, next_obs, terminated, discount) on `device`."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> None:
        self.capacity = capacity
        self.device = torch.device(device)
        check_replay_fits(capacity, obs_shape, obs_dtype, self.device)
        self.obs = torch.zeros((capacity, *obs_shape), dtype=obs_dtype, device=self.device)
        self.next_obs = torch.zeros_like(self.obs)
        self.actions = torch.zeros(capacity, dtype=torch.int64, device=self.device)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=self.device)
        self.dones = torch.zeros(capacity, dtype=torch.float32, device=self.device)
        self.discounts = torch.zeros(capacity, dtype=torch.float32, device=self.device)
        self.pos = 0
        self.size = 0
        self._rows = torch.arange(capacity, device=self.device)

    def add(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
            next_obs: torch.Tensor, dones: torch.Tensor, discounts: torch.Tensor
            ) -> tuple[int, int]:
        """Write n transitions at the ring's head, wrapping at capacity; returns (first row, n)
        so that a prioritized sampler can give exactly these rows their first priority."""
        n = obs.shape[0]
        if n > self.capacity:
            raise ValueError(f"cannot add {n} transitions to a buffer of {self.capacity}")
        first = self.pos
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
        self.discounts[rows] = discounts
        self.pos = end % self.capacity
        self.size = min(self.size + n, self.capacity)
        return first, n

    def rows(self, first: int, n: int) -> torch.Tensor:
        """The ring rows of n transitions written from row `first` (wrapping), on the device."""
        return (self._rows[first:first + n] if first + n <= self.capacity
                else torch.cat([self._rows[first:], self._rows[: first + n - self.capacity]]))

    def gather(self, idx: torch.Tensor) -> Batch:
        """The transitions at `idx` (a flat index tensor on the buffer's device)."""
        return Batch(*(getattr(self, f).index_select(0, idx) for f in FIELDS))

    def state_dict(self) -> dict:
        """Filled rows and the ring position (for --save-buffer checkpoints).

        The rows are copied: torch.save of a slice would write the whole preallocated tensor.
        """
        n = self.size
        rows = {name: getattr(self, name)[:n].cpu().clone()
                for name in FIELDS}
        return {**rows, "pos": self.pos, "size": self.size, "capacity": self.capacity}

    def load_state_dict(self, state: dict) -> None:
        n = int(state["size"])
        if n > self.capacity:
            raise ValueError(f"saved buffer holds {n} rows, capacity is {self.capacity}")
        if state.get("capacity", self.capacity) != self.capacity:
            raise ValueError(f"saved buffer has capacity {state['capacity']}, "
                             f"this one {self.capacity}")
        for name in FIELDS:
            if name == "discounts" and name not in state:
                raise OldBufferError("holds a fastdqn 0.1 replay buffer (no discounts)")
            getattr(self, name)[:n] = state[name].to(self.device)
        self.pos, self.size = int(state["pos"]), n


def row_values_problem(state: dict, n_actions: int, observations: dict[str, torch.dtype]
                       ) -> str | None:
    """What is wrong with the values of a saved buffer's row fields (and of its `observations`
    fields, name -> dtype), or None; their shapes are checked before.

    A file's values are data, never trusted: the native and Numba learner steps write each
    row's gradient at index `action` of its Q row (an action out of range writes outside the
    network's buffers), and the TD target trusts done to be 0 or 1, the discount to lie in
    [0, 1] and rewards and observations to be finite (else the first step diverges).
    """
    fields = {"actions": torch.int64, "rewards": torch.float32, "dones": torch.float32,
              "discounts": torch.float32, **observations}
    for name, dtype in fields.items():
        t = state.get(name)
        if not isinstance(t, torch.Tensor):
            if name == "discounts":
                continue  # a fastdqn 0.1 buffer: refused with its own message when loaded
            return f"buffer.{name} is missing"
        if t.dtype != dtype:
            return (f"buffer.{name} holds {str(t.dtype).replace('torch.', '')} values, not "
                    f"{str(dtype).replace('torch.', '')}")
        if name == "actions":
            bad = _first(t, lambda x: (x < 0) | (x >= n_actions))
            if bad is not None:
                return f"buffer.actions holds {int(bad)}, outside 0..{n_actions - 1}"
        elif name == "dones":
            bad = _first(t, lambda x: (x != 0) & (x != 1))
            if bad is not None:
                return f"buffer.dones holds {float(bad):g}, not 0 or 1"
        elif name == "discounts":
            bad = _first(t, lambda x: ~((x >= 0) & (x <= 1)))
            if bad is not None:
                return f"buffer.discounts holds {float(bad):g}, outside [0, 1]"
        elif t.is_floating_point():
            bad = _first(t, lambda x: ~torch.isfinite(x))
            if bad is not None:
                return f"buffer.{name} holds {float(bad):g}, not a finite number"
    return None


def _first(t: torch.Tensor, wrong) -> torch.Tensor | None:
    """The first element of `t` for which `wrong` (elementwise) holds, or None; in chunks, so
    that checking a large buffer costs a few MB of masks, not one the buffer's size."""
    flat = t.reshape(-1)
    for i in range(0, len(flat), 1 << 22):
        chunk = flat[i:i + (1 << 22)]
        bad = chunk[wrong(chunk)]
        if len(bad):
            return bad[0]
    return None


ROW_BYTES = 8 + 4 + 4 + 4
"""Bytes of a row besides its observations: action (int64), reward, done, discount (float32)."""




def check_replay_fits(capacity: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                      device: torch.device, agents: int = 1) -> None:
    """ReplayBuffer's memory (obs and next_obs stored apart, plus ROW_BYTES a row), times the
    `agents` of a population (one partition each), against what `device` has free; a one-line
    ConfigError before anything is allocated otherwise."""
    obs_bytes = int(np.prod(obs_shape)) * torch.empty((), dtype=obs_dtype).element_size()
    whose = "a replay buffer" if agents == 1 else f"{agents} agents' replay buffers"
    each = "" if agents == 1 else " each"
    what = (f"{whose} of {capacity:,d} rows{each} (obs and next_obs of {list(obs_shape)} "
            f"{str(obs_dtype).replace('torch.', '')}, stored apart)")
    check_fits_memory(agents * capacity * (2 * obs_bytes + ROW_BYTES), device, what, capacity,
                      agents)


def check_fits_memory(nbytes: int, device: torch.device, what: str, rows: int,
                      agents: int = 1) -> None:
    """Refuse, in one line, a preallocation that cannot fit: torch.zeros of more than the
    machine has may still succeed (pages are only committed when touched) and then kill the run
    hours later, when the ring fills. `rows` is one agent's --buffer-size, `nbytes` all the
    `agents`' memory: the --buffer-size named in the refusal fits them all."""
    free = available_memory(device)
    if free is None or nbytes <= free:
        return
    fit = max(1, rows * free * 4 // 5 // max(nbytes, 1))
    fit = fit // 1000 * 1000 or fit
    where = "on the GPU" if device.type == "cuda" else "in RAM"
    raise ConfigError(f"{what} needs {nbytes / 1e9:.1f} GB, but only {free / 1e9:.1f} GB is "
                      f"available {where}; lower --buffer-size (e.g. {fit:,d} rows take four "
                      "fifths of it)")


"""Observation dtypes kept in a wider one that holds each of their values exactly: the fused CPU
routes (Numba, native) cannot read float16, and torch cannot index-write (the ring's wrapping
add) unsigned ints wider than 8 bits. int64 holds uint64 only below 2**63: envs.check_spaces
refuses a uint64 Box that can reach it."""






