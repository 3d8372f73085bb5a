"""Replay for stacked frames: each frame is stored once, and stacks are rebuilt when sampled.

An Atari observation is a stack of k = 4 frames of 84x84 uint8, and consecutive observations of
one env share k - 1 of them. A row-per-transition buffer (`ReplayBuffer`) holds every frame 2k
times (in obs and next_obs, at each of k positions): 56 GB for 1M transitions. `FrameReplay`
keeps each distinct frame once in a frame store and gives each row 2k pointers into it:

    frames    [F, *frame]  the frame store, on the training device (F a little above capacity)
    obs_ptr   [R, k]       int64 slots of row r's observation, oldest frame first
    next_ptr  [R, k]       slots of its next observation (at an episode end: the true final one)
    actions, rewards, dones, discounts  [R], as in ReplayBuffer

`gather(idx)` rebuilds a batch with an index_select per pointer table and one into the frame
store for obs and next_obs together (frames[ptr[idx]]): plain torch indexing without a host
sync, the same on the CPU and CUDA.
Every row in [0, size) is valid at all times, so the uniform and prioritized samplers (which
draw rows in [0, size)) work on it unchanged.

Why pointer tables, and not a newest-frame pointer per row with the episode start masked: the
tables assume nothing about how a stack is padded at an episode start (gymnasium's
FrameStackObservation repeats the reset frame by default, or pads with zeros) nor about the
order in which rows are written (N envs interleave; an n-step episode end flushes several rows
of one env at once). They cost 2k int64 per row: 64 MB at 1M rows, under 1% of the frames.

What is new in a vector step is decided from content, on the host (`stacks`), so no assumption
about the env can silently corrupt a row:
  - obs: env i's observation reuses the slots of the stack env i gave last step (its pending
    next stack) when the two are equal; otherwise (an episode start, the first step, any
    other observation) its frames are written.
  - next_obs: when next[:-1] == obs[1:] (a shift, as frame stacking gives, the final
    observation of an ended episode included) only the newest frame is written; otherwise
    every frame of the stack is.
  - a frame equal to the one before it in its stack shares that slot: a reset stack that
    repeats its first frame costs one frame, one padded with zeros two.
So the final observation of a truncated or terminated episode is its row's own next stack,
kept apart from the reset stack that the next row's obs points to, and a stack never mixes
frames of two episodes unless the env itself stacked them so.

When a slot may be overwritten: when every row that pointed to it has been overwritten (rows
are overwritten in the order they were written, so the latest is enough: `last_row`) and no
pending stack can point to it any more (`pinned_until`: the stack the next obs may reuse, one
step; the obs of n-step windows not yet written, n - 1 steps). Slots are taken in ring order,
skipping any still in use; the check is exact, so correctness never rests on the size below.

The size F, and why it suffices for frame-stacking envs. Take N envs, stacks of k frames,
n-step windows, and a store filled by `stacks` (1 step = 1 call). A frame written at step t
enters its stack at position j <= k - 1 and moves one position toward the oldest each step, so
only the stacks of steps t..t+k point to it, and only rows written at steps t..t+k+n-1 (an
n-step row holds the obs of its window's first step). If the oldest live row was written at
step s, every frame written before step s - k - n + 1 is free. Rows are written N a step (on
average, with n-step flushes), so the live rows span R / N steps, and the live frames were
written in the last R / N + k + n steps. A step writes N frames (each env's newest one) plus,
for each episode start, the d distinct frames of the reset stack (d = 1 for repeat padding,
2 for zeros); the final frame of an ended episode is that step's newest frame, nothing extra.
Allocation counts the rows this step will overwrite as still live (+N). Hence

    F = R + N (k + n + 1) + ceil(R / START_RESERVE)

holds every live frame while episode starts (times d) are at most one per START_RESERVE rows:
always so on Atari, whose episodes (whole games) last hundreds of steps and more. Episodes that
are shorter on average, or observations that are not shifted stacks (up to 2k new frames a
row), can need more: then the store grows by a quarter (a new tensor, a copy, a warning) and
stays correct. `generation` counts the growths: anything that captured `frames` (a CUDA graph
around `gather`) must be rebuilt after one.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from fastdqn.errors import ConfigError
from fastdqn.replay.rows import ROW_BYTES, Batch, check_fits_memory

START_RESERVE = 32
"""The frame store's spare slots are capacity / START_RESERVE: enough for one reset stack per
32 transitions (see the module docstring), i.e. about 3% of its size."""

MAX_STACK = 16
"""--frame-replay auto treats a rank-3 uint8 observation as a stack of frames when its first axis
is at most this long (Atari stacks 4; an image's first axis, channels-last, is its height)."""

Array = np.ndarray | torch.Tensor
"""Steps come as numpy arrays (from the envs) or tensors (on any device)."""

_FREE = -(2**62)
"""`last_row` / `pinned_until` of a slot that no row or pending stack points to."""


def is_frame_stack(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """The --frame-replay auto rule: a rank-3 uint8 observation whose first axis (the stack) is
    at most MAX_STACK long, such as FrameStackObservation's [4, 84, 84] for Atari."""
    return len(shape) == 3 and np.dtype(dtype) == np.uint8 and 1 <= shape[0] <= MAX_STACK


def uses_frame_replay(mode: str, network: str, shape: tuple[int, ...], dtype: np.dtype,
                      replays_observations: bool) -> bool:
    """Whether a DQN run stores its observations in a FrameReplay (--frame-replay, the rule in
    its help); a one-line ConfigError where `on` cannot apply. `replays_observations`: whether
    the network kind `network` replays observations at all (nets.kinds; RBF's are features)."""
    if mode == "off":
        return False
    if mode == "auto":
        return replays_observations and is_frame_stack(tuple(shape), dtype)
    if not replays_observations:
        raise ConfigError(f"--frame-replay on stores frames, but --network {network} stores its "
                          "features in the replay; drop --frame-replay on or pick another --network")
    if len(shape) < 2:
        raise ConfigError(f"--frame-replay on needs observations that stack frames on their first "
                          f"axis (rank >= 2); this env's have shape {list(shape)}; use "
                          "--frame-replay off")
    return True


def frame_slots(capacity: int, num_envs: int, stack: int, n_step: int = 1) -> int:
    """The frame store's initial size for `capacity` rows (the bound in the module docstring)."""
    return capacity + num_envs * (stack + n_step + 1) + math.ceil(capacity / START_RESERVE)


def check_frames_fit(capacity: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                     device: torch.device, num_envs: int, n_step: int = 1,
                     agents: int = 1) -> None:
    """FrameReplay's memory (the frame store, the two pointer tables and the row fields),
    times the `agents` of a population, against what `device` has free; a one-line
    ConfigError before anything is allocated."""
    k, frame = obs_shape[0], int(np.prod(obs_shape[1:]))
    frame_bytes = frame * torch.empty((), dtype=obs_dtype).element_size()
    nbytes = (frame_slots(capacity, num_envs, k, n_step) * frame_bytes
              + capacity * (2 * k * 8 + ROW_BYTES))
    whose = "a frame replay" if agents == 1 else f"{agents} agents' frame replays"
    check_fits_memory(agents * nbytes, device, f"{whose} of {capacity:,d} rows (frames of "
                      f"{list(obs_shape[1:])}, each stored once)", capacity, agents)


def _host(x: Array) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class FrameReplay:
    """Ring buffer of transitions whose observations are stacks of k frames, each frame stored
    once (see the module docstring). The DQN agent feeds it one vector step at a time:
    `add(obs, actions, rewards, next_obs, dones, discounts)`, or with n-step returns
    `stacks(obs, next_obs)` every step and `add_rows` for the windows it completes."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype: torch.dtype,
                 device: torch.device | str = "cpu", num_envs: int = 1, n_step: int = 1,
                 frame_capacity: int | None = None) -> None:
        if len(obs_shape) < 2:
            raise ValueError(f"frame replay needs stacked frames (rank >= 2), got {obs_shape}")
        if capacity < 1 or num_envs < 1 or n_step < 1:
            raise ValueError("capacity, num_envs and n_step must be >= 1")
        self.capacity, self.num_envs, self.n_step = capacity, num_envs, n_step
        self.device = torch.device(device)
        self.stack, self.frame_shape = obs_shape[0], tuple(obs_shape[1:])
        self.obs_shape, self.obs_dtype = tuple(obs_shape), obs_dtype
        k, dev = self.stack, self.device
        slots = frame_capacity or frame_slots(capacity, num_envs, k, n_step)
        self.frames = torch.zeros((slots, *self.frame_shape), dtype=obs_dtype, device=dev)
        self.obs_ptr = torch.zeros((capacity, k), dtype=torch.int64, device=dev)
        self.next_ptr = torch.zeros_like(self.obs_ptr)
        self.actions = torch.zeros(capacity, dtype=torch.int64, device=dev)
        self.rewards = torch.zeros(capacity, dtype=torch.float32, device=dev)
        self.dones = torch.zeros(capacity, dtype=torch.float32, device=dev)
        self.discounts = torch.zeros(capacity, dtype=torch.float32, device=dev)
        self.pos = 0
        self.size = 0
        self._rows = torch.arange(capacity, device=dev)
        # host bookkeeping of the frame store
        self.last_row = np.full(slots, _FREE, dtype=np.int64)
        """Per slot: the global number of the latest row pointing to it."""
        self.pinned_until = np.full(slots, _FREE, dtype=np.int64)
        """Per slot: the last step at which a pending stack may still point to it."""
        self.head = 0
        self.rows_total = 0
        """Rows written so far (a row's global number is its index in this count)."""
        self.steps = 0
        """Calls of `stacks` so far."""
        self.generation = 0
        """How many times the frame store grew (each time `frames` is a new tensor)."""
        np_dtype = torch.empty(0, dtype=obs_dtype).numpy().dtype
        self.pending = np.zeros((num_envs, *obs_shape), dtype=np_dtype)
        self.pending_ptr = np.zeros((num_envs, k), dtype=np.int64)
        self.pending_ok = np.zeros(num_envs, dtype=bool)

    # -- writing -------------------------------------------------------------------------------

    def add(self, obs: Array, actions: Array, rewards: Array, next_obs: Array, dones: Array,
            discounts: Array) -> tuple[int, int]:
        """Store one vector step of 1-step transitions (arrays or tensors, one row per env);
        returns (first row, n) as ReplayBuffer.add does."""
        obs_ptr, next_ptr = self.stacks(obs, next_obs)
        return self.add_rows(obs_ptr, actions, rewards, next_ptr, dones, discounts)

    def stacks(self, obs: Array, next_obs: Array) -> tuple[np.ndarray, np.ndarray]:
        """Write the new frames of one vector step ([num_envs, k, *frame] each; next_obs holds
        every env's true next observation) and return the slots of each env's obs and next
        stacks ([num_envs, k] int64), valid for rows written within this step (next) or the
        next n - 1 steps (obs)."""
        o, x = _host(obs), _host(next_obs)
        want = (self.num_envs, *self.obs_shape)
        if o.shape != want or x.shape != want:
            raise ValueError(f"obs {o.shape} and next_obs {x.shape} must both be {want}")
        n, k, t = self.num_envs, self.stack, self.steps
        o, x = o.reshape(n, k, -1), x.reshape(n, k, -1)
        obs_ptr = np.full((n, k), -1, dtype=np.int64)
        reuse = self.pending_ok & (o == self.pending.reshape(n, k, -1)).all(axis=(1, 2))
        obs_ptr[reuse] = self.pending_ptr[reuse]
        self._place(o, obs_ptr)
        next_ptr = np.full((n, k), -1, dtype=np.int64)
        shift = (x[:, :-1] == o[:, 1:]).all(axis=(1, 2))
        next_ptr[shift, :-1] = obs_ptr[shift, 1:]
        self._place(x, next_ptr)
        pin = self.pinned_until
        pin[obs_ptr] = np.maximum(pin[obs_ptr], t + self.n_step - 1)
        pin[next_ptr] = np.maximum(pin[next_ptr], t + 1)
        self.pending[...] = x.reshape(self.pending.shape)
        self.pending_ptr[...] = next_ptr
        self.pending_ok[:] = True
        self.steps += 1
        return obs_ptr, next_ptr

    def _place(self, stacks: np.ndarray, ptr: np.ndarray) -> None:
        """Give the unset slots (-1) of `ptr` to the frames of `stacks` ([M, k, P]): a frame
        equal to the one before it in its stack shares that slot, the others are written."""
        need = ptr < 0
        if not need.any():
            return
        dup = np.zeros_like(need)
        rows, cols = np.nonzero(need[:, 1:])
        cols += 1
        dup[rows, cols] = (stacks[rows, cols] == stacks[rows, cols - 1]).all(axis=-1)
        new = need & ~dup
        slots = self._take(int(new.sum()))
        ptr[new] = slots
        for j in range(1, ptr.shape[1]):
            d = dup[:, j]
            ptr[d, j] = ptr[d, j - 1]
        if not len(slots):  # every frame repeats the one before it
            return
        src = torch.from_numpy(np.ascontiguousarray(stacks[new])).view(-1, *self.frame_shape)
        src = src.to(self.device)
        # slots are usually a run of the ring: a plain copy (index_copy_ of uint8 frames is
        # ~50x slower on the CPU)
        if slots[-1] - slots[0] == len(slots) - 1:
            self.frames[slots[0]:slots[-1] + 1] = src
        else:
            self.frames.index_copy_(0, torch.from_numpy(slots).to(self.device), src)

    def _take(self, m: int) -> np.ndarray:
        """m free slots, in ring order from the head (growing the store if too few are free);
        they are pinned for this step so that the step's next call cannot take them again."""
        if m == 0:
            return np.empty(0, dtype=np.int64)
        slots = self._free_from_head(m, min(len(self.last_row), 2 * m + 64))
        if len(slots) < m:
            slots = self._free_from_head(m, len(self.last_row))
        if len(slots) < m:
            self._grow(m - len(slots))
            return self._take(m)
        self.head = (int(slots[-1]) + 1) % len(self.last_row)
        self.pinned_until[slots] = self.steps
        return slots

    def _free_from_head(self, m: int, span: int) -> np.ndarray:
        """Up to m free slots among the `span` slots from the head, in ring order."""
        order = (self.head + np.arange(span)) % len(self.last_row)
        free = ((self.last_row[order] < self.rows_total - self.capacity)
                & (self.pinned_until[order] < self.steps))
        return order[free][:m]

    def _grow(self, short: int) -> None:
        """A quarter more slots (at least `short` more); every pointer stays valid."""
        old = len(self.last_row)
        size = old + max(short, old // 4, 1)
        warnings.warn(f"frame replay: the frame store's {old:,d} slots cannot hold every frame "
                      f"that live rows point to (episodes shorter than about {START_RESERVE} "
                      f"steps on average, or observations that are not shifted stacks); grown "
                      f"to {size:,d} slots", RuntimeWarning, stacklevel=4)
        frames = torch.zeros((size, *self.frame_shape), dtype=self.frames.dtype,
                             device=self.device)
        frames[:old] = self.frames
        self.frames = frames
        pad = np.full(size - old, _FREE, dtype=np.int64)
        self.last_row = np.concatenate([self.last_row, pad])
        self.pinned_until = np.concatenate([self.pinned_until, pad])
        self.head = old
        self.generation += 1

    def add_rows(self, obs_ptr: Array, actions: Array, rewards: Array, next_ptr: Array,
                 dones: Array, discounts: Array) -> tuple[int, int]:
        """Write n rows whose stacks are slots from `stacks` ([n, k] each) at the ring's head,
        wrapping at capacity; returns (first row, n)."""
        op, xp = _host(obs_ptr).astype(np.int64), _host(next_ptr).astype(np.int64)
        n = len(op)
        if n > self.capacity:
            raise ValueError(f"cannot add {n} transitions to a buffer of {self.capacity}")
        first = self.pos
        if n == 0:
            return first, 0
        g = np.repeat(self.rows_total + np.arange(n, dtype=np.int64), self.stack)
        np.maximum.at(self.last_row, op.reshape(-1), g)
        np.maximum.at(self.last_row, xp.reshape(-1), g)
        rows = slice(first, first + n) if first + n <= self.capacity else self.rows(first, n)
        dev = self.device
        self.obs_ptr[rows] = torch.from_numpy(op).to(dev)
        self.next_ptr[rows] = torch.from_numpy(xp).to(dev)
        for name, value in (("actions", actions), ("rewards", rewards), ("dones", dones),
                            ("discounts", discounts)):
            field = getattr(self, name)
            field[rows] = torch.as_tensor(value).to(dev, field.dtype)
        self.pos = (first + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        self.rows_total += n
        return first, n

    # -- reading -------------------------------------------------------------------------------

    def rows(self, first: int, n: int) -> torch.Tensor:
        """The ring rows of n transitions written from row `first` (wrapping), on the device."""
        return (self._rows[first:first + n] if first + n <= self.capacity
                else torch.cat([self._rows[first:], self._rows[: first + n - self.capacity]]))

    def gather(self, idx: torch.Tensor) -> Batch:
        """The transitions at `idx` (a flat index tensor on the buffer's device), their stacks
        rebuilt from the frame store: obs and next_obs in one index_select (1.7x faster than
        two on the CPU, measured), returned as the two halves of its result."""
        ptr = torch.cat([self.obs_ptr.index_select(0, idx), self.next_ptr.index_select(0, idx)])
        obs, next_obs = self.frames.index_select(0, ptr.view(-1)).view(
            2, len(idx), *self.obs_shape).unbind(0)
        return Batch(obs, self.actions.index_select(0, idx), self.rewards.index_select(0, idx),
                     next_obs, self.dones.index_select(0, idx), self.discounts.index_select(0, idx))

    def nbytes(self) -> int:
        """Bytes of device storage: the frame store, the pointer tables and the other fields."""
        return sum(t.numel() * t.element_size() for t in
                   (self.frames, self.obs_ptr, self.next_ptr, self.actions, self.rewards,
                    self.dones, self.discounts))

    def live_frames(self) -> int:
        """Distinct frames the rows [0, size) point to (one host sync; for tests and reports)."""
        n = self.size
        return int(torch.cat([self.obs_ptr[:n], self.next_ptr[:n]]).unique().numel())

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The filled rows and the frames they point to, renumbered 0..U-1 (for --save-buffer
        checkpoints): U frames, not the whole store. Pending stacks are not saved: a resumed
        run restarts its episodes, whose first stacks are written anew."""
        n, k = self.size, self.stack
        ptrs = torch.cat([self.obs_ptr[:n], self.next_ptr[:n]]).view(-1)
        used, inverse = torch.unique(ptrs, return_inverse=True)
        inverse = inverse.view(2 * n, k).cpu()
        return {"kind": "frames", "frames": self.frames.index_select(0, used).cpu(),
                "obs_ptr": inverse[:n].clone(), "next_ptr": inverse[n:].clone(),
                **{name: getattr(self, name)[:n].cpu().clone()
                   for name in ("actions", "rewards", "dones", "discounts")},
                "pos": self.pos, "size": n, "capacity": self.capacity, "stack": k}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` (checked first with `check_state`)."""
        problem = check_state(state, self.capacity, self.obs_shape, self.obs_dtype)
        if problem:
            raise ValueError(problem)
        n, k, dev = int(state["size"]), self.stack, self.device
        frames = state["frames"]
        u = len(frames)
        if u > len(self.last_row):
            self._grow(u - len(self.last_row))
        self.frames[:u] = frames.to(dev)
        self.obs_ptr[:n] = state["obs_ptr"].to(dev)
        self.next_ptr[:n] = state["next_ptr"].to(dev)
        for name in ("actions", "rewards", "dones", "discounts"):
            getattr(self, name)[:n] = state[name].to(dev)
        self.pos, self.size = int(state["pos"]), n
        # global row numbers in the order the rows were written: the oldest is at pos once full
        oldest = self.pos if n == self.capacity else 0
        g = (np.arange(n, dtype=np.int64) - oldest) % max(n, 1)
        self.rows_total = n
        self.last_row[:] = _FREE
        self.pinned_until[:] = _FREE
        g = np.repeat(g, k)
        np.maximum.at(self.last_row, _host(state["obs_ptr"]).reshape(-1), g)
        np.maximum.at(self.last_row, _host(state["next_ptr"]).reshape(-1), g)
        self.head = u % len(self.last_row)
        self.steps = 0
        self.pending_ok[:] = False


def check_state(state: object, capacity: int, obs_shape: tuple[int, ...],
                dtype: torch.dtype) -> str | None:
    """What is wrong with a saved FrameReplay state for this buffer, or None: every size and
    pointer is checked before anything is copied, so a damaged or crafted file cannot make the
    store grow without bound nor point a row outside the frames it holds."""
    if not isinstance(state, dict) or state.get("kind") != "frames":
        return "it holds no frame replay (it was saved with --frame-replay off)"
    size, pos, k = state.get("size"), state.get("pos"), obs_shape[0]
    if not (type(size) is int and type(pos) is int and 0 <= size <= capacity
            and 0 <= pos < capacity and (size == capacity or pos == size)):
        return (f"its replay buffer's size {size!r} and position {pos!r} do not fit its capacity "
                f"{capacity}")
    if state.get("stack") != k:
        return f"its frame stacks have {state.get('stack')!r} frames, this env's {k}"
    frames = state.get("frames")
    if not (isinstance(frames, torch.Tensor) and tuple(frames.shape[1:]) == tuple(obs_shape[1:])
            and frames.dtype == dtype):
        return f"its frames are not {dtype} frames of shape {list(obs_shape[1:])}"
    u = len(frames)
    if u > 2 * k * size:  # rows point to at most 2k distinct frames each
        return f"it holds {u} frames for {size} rows, more than they can point to"
    for name in ("obs_ptr", "next_ptr"):
        t = state.get(name)
        if not (isinstance(t, torch.Tensor) and t.dtype == torch.int64
                and tuple(t.shape) == (size, k)):
            return f"its {name} is not an int64 table of shape {[size, k]}"
        if size and not (0 <= int(t.min()) and int(t.max()) < u):
            return f"its {name} points outside its {u} frames"
    for name in ("actions", "rewards", "dones", "discounts"):
        t = state.get(name)
        if not (isinstance(t, torch.Tensor) and tuple(t.shape) == (size,)):
            return f"its {name} is not a tensor of {size} values"
    return None
