"""Proportional prioritized replay (Schaul et al. 2016): a CPU sum tree and a device version.

Row i of the ring buffer is drawn with probability P(i) = p_i / sum_k p_k, where p_i =
(|delta_i| + eps) ** alpha after the row's last TD error was seen, and max_priority ** alpha
for a row not yet learned from (max_priority: the largest |delta| + eps so far, initially 1).
A batch is stratified: the total mass is cut into batch_size equal segments and one uniform
point is drawn in each, which lowers the variance of the batch's composition. The importance
weights w_i = (N * P(i)) ** -beta / max_j (N * P(j)) ** -beta, the max taken over the batch,
reduce to (p_min / p_i) ** beta with p_min the smallest priority in the batch; neither N nor the
total appears, so they carry no round-off from the total.

PrioritizedSampler keeps the priorities in a sum tree driven by Numba kernels, with the same
checkpointable xoroshiro128+ stream as UniformSampler. TorchPrioritized keeps them in a device
tensor and samples with capturable torch ops. Both save the same state layout, so a run can be
resumed on the other device.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from fastdqn.replay.uniform import _next, seed_state

_UNIT = 1.0 / 9007199254740992.0  # 2**-53


def beta_at(step: int, total_steps: int, beta0: float) -> float:
    """The IS exponent annealed linearly from beta0 at step 0 to 1 at total_steps.

    The weights only need to be exact near the end of training, where the bias they correct
    would otherwise remain in the converged Q-values (Schaul et al. 2016, section 3.4).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    frac = min(max(step, 0) / total_steps, 1.0)
    return beta0 + (1.0 - beta0) * frac


def _check_hyper(capacity: int, alpha: float, eps: float) -> None:
    if capacity < 1:
        raise ValueError(f"capacity must be positive, got {capacity}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if not eps > 0:
        # eps > 0 keeps every filled row drawable, which the device version relies on.
        raise ValueError(f"eps must be > 0, got {eps}")


def _check_state(state: dict, capacity: int, alpha: float) -> torch.Tensor:
    """The saved priorities as a float64 CPU tensor, after checking they fit this sampler."""
    if int(state["capacity"]) != capacity:
        raise ValueError(f"saved priorities have capacity {state['capacity']}, this one {capacity}")
    if float(state["alpha"]) != alpha:
        raise ValueError(f"saved priorities were raised to alpha={state['alpha']}, this one "
                         f"uses {alpha}")
    prio = torch.as_tensor(state["priorities"], dtype=torch.float64).reshape(-1).cpu()
    if prio.numel() > capacity:
        raise ValueError(f"saved state holds {prio.numel()} priorities, capacity is {capacity}")
    if not bool(torch.isfinite(prio).all()) or bool((prio < 0).any()):
        raise ValueError("saved priorities must be finite and >= 0")
    return prio


# ---------------------------------------------------------------------------------------------
# Sum tree kernels. Layout: tree[1] is the root, node j has children 2j and 2j+1, and row i is
# the leaf tree[leaves + i], leaves being the power of two >= capacity. Every write recomputes
# the path to the root from the children, so each internal node is always exactly
# fl(left + right) of its current children, whatever the order of the writes.
# ---------------------------------------------------------------------------------------------


@numba.njit(cache=True, inline="always")
def _set_leaf(tree: np.ndarray, leaves: np.int64, row: np.int64, value: np.float64) -> None:
    j = leaves + row
    tree[j] = value
    j >>= 1
    while j >= 1:
        tree[j] = tree[2 * j] + tree[2 * j + 1]
        j >>= 1


@numba.njit(cache=True)
def _add_rows(tree: np.ndarray, leaves: np.int64, capacity: np.int64, rows: np.ndarray,
              value: np.float64) -> np.int64:
    """Set the leaves of `rows` to `value`; returns the largest row (-1 if none)."""
    for k in range(rows.shape[0]):
        if rows[k] < 0 or rows[k] >= capacity:
            raise IndexError("on_add: row outside [0, capacity)")
    top = -1
    for k in range(rows.shape[0]):
        _set_leaf(tree, leaves, rows[k], value)
        top = max(top, rows[k])
    return top


@numba.njit(cache=True)
def _update(tree: np.ndarray, leaves: np.int64, filled: np.int64, idx: np.ndarray,
            td_abs: np.ndarray, alpha: np.float64, eps: np.float64) -> np.float64:
    """Leaves of idx <- (|td| + eps) ** alpha, in order (a repeated row keeps its last value);
    returns max(|td| + eps). Checks everything before the first write."""
    for k in range(idx.shape[0]):
        if idx[k] < 0 or idx[k] >= filled:
            raise IndexError("update: index outside the filled rows")
        if not np.isfinite(td_abs[k]):
            raise ValueError("update: non-finite TD error")
    top = 0.0
    for k in range(idx.shape[0]):
        p = abs(np.float64(td_abs[k])) + eps
        top = max(top, p)
        _set_leaf(tree, leaves, idx[k], p ** alpha)
    return top


@numba.njit(cache=True)
def _rebuild(tree: np.ndarray, leaves: np.int64) -> None:
    for j in range(leaves - 1, 0, -1):
        tree[j] = tree[2 * j] + tree[2 * j + 1]


@numba.njit(cache=True)
def _descend(tree: np.ndarray, leaves: np.int64, target: np.float64) -> np.int64:
    """The row whose prefix-sum interval [before, before + p) holds target.

    A step goes right only into a subtree with mass, so round-off (a target at or past the
    total, a remainder slightly above a left sum) ends on the nearest nonzero leaf instead of
    on an empty one: going left needs left > target >= 0, going right needs right > 0.
    """
    j = np.int64(1)
    while j < leaves:
        left = tree[2 * j]
        if target < left or tree[2 * j + 1] <= 0.0:
            j = 2 * j
        else:
            target -= left
            j = 2 * j + 1
    return j - leaves


@numba.njit(cache=True)
def _sample_uniforms(tree: np.ndarray, leaves: np.int64, u: np.ndarray, beta: np.float64,
                     idx_out: np.ndarray, w_out: np.ndarray) -> None:
    """One stratified batch per row of u ([K, B] in [0, 1)), and its normalized IS weights."""
    n_batches, b = u.shape
    seg = tree[1] / b
    for k in range(n_batches):
        p_min = np.inf
        for j in range(b):
            row = _descend(tree, leaves, (j + u[k, j]) * seg)
            idx_out[k, j] = row
            p_min = min(p_min, tree[leaves + row])
        for j in range(b):
            w_out[k, j] = np.float32((p_min / tree[leaves + idx_out[k, j]]) ** beta)


@numba.njit(cache=True)
def _sample_rng(tree: np.ndarray, leaves: np.int64, state: np.ndarray, beta: np.float64,
                idx_out: np.ndarray, w_out: np.ndarray) -> None:
    u = np.empty(idx_out.shape, dtype=np.float64)
    flat = u.reshape(-1)
    for i in range(flat.size):
        flat[i] = np.float64(_next(state) >> np.uint64(11)) * _UNIT
    _sample_uniforms(tree, leaves, u, beta, idx_out, w_out)


class PrioritizedSampler:
    """Proportional prioritized sampling over a ring buffer's rows, on a Numba sum tree.

    O(log capacity) per drawn index and per priority write. The caller reports the rows the
    buffer writes (`on_add`) and the TD errors of the rows it learned from (`update`); rows
    never added have priority 0 and are never drawn.
    """

    def __init__(self, capacity: int, alpha: float, eps: float, seed: int) -> None:
        _check_hyper(capacity, alpha, eps)
        self.capacity = capacity
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.leaves = 1 << (capacity - 1).bit_length()
        self.tree = np.zeros(2 * self.leaves, dtype=np.float64)
        """tree[1] is the total, node j has children 2j, 2j+1, row i is tree[leaves + i]."""
        self.max_priority = 1.0
        self.filled = 0
        """One past the highest row ever added: the ring buffer's size, checked in sample."""
        self.state = seed_state(seed)

    @property
    def total(self) -> float:
        return float(self.tree[1])

    def priorities(self) -> np.ndarray:
        """A copy of the leaf priorities (already raised to alpha) of rows [0, filled)."""
        return self.tree[self.leaves: self.leaves + self.filled].copy()

    def on_add(self, rows: np.ndarray) -> None:
        """Rows just written (or overwritten) by the buffer get max_priority ** alpha, so each
        new transition is drawn at least once soon; an overwritten row's old priority is gone."""
        rows = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
        top = _add_rows(self.tree, np.int64(self.leaves), np.int64(self.capacity), rows,
                        np.float64(self.max_priority ** self.alpha))
        self.filled = max(self.filled, int(top) + 1)

    def update(self, idx: np.ndarray, td_abs: np.ndarray) -> None:
        """Priorities (|delta| + eps) ** alpha for the sampled rows idx; a row repeated in idx
        keeps the value of its last occurrence."""
        idx = np.ascontiguousarray(idx, dtype=np.int64).reshape(-1)
        td = np.ascontiguousarray(td_abs).reshape(-1)
        if td.shape != idx.shape:
            raise ValueError(f"update: {idx.size} indices but {td.size} TD errors")
        top = _update(self.tree, np.int64(self.leaves), np.int64(self.filled), idx, td,
                      np.float64(self.alpha), np.float64(self.eps))
        self.max_priority = max(self.max_priority, float(top))

    def _check_sample(self, size: int, idx_out: np.ndarray, weights_out: np.ndarray) -> None:
        if size != self.filled:
            raise ValueError(f"sampling a buffer of size {size}, but rows [0, {self.filled}) "
                             "were added")
        if size < 1:
            raise ValueError("cannot sample from an empty buffer")
        total = self.total
        if not (np.isfinite(total) and total > 0):
            raise ValueError(f"priorities sum to {total}")
        if idx_out.dtype != np.int64 or weights_out.dtype != np.float32:
            raise TypeError("idx_out must be int64 and weights_out float32")
        if not (idx_out.flags.c_contiguous and weights_out.flags.c_contiguous):
            raise ValueError("idx_out and weights_out must be C-contiguous (they are written in place)")
        if idx_out.shape != weights_out.shape or idx_out.ndim != 2 or idx_out.shape[1] < 1:
            raise ValueError(f"idx_out {idx_out.shape} and weights_out {weights_out.shape} must "
                             "be the same [K, B] shape with B >= 1")

    def sample_block(self, size: int, beta: float, idx_out: np.ndarray,
                     weights_out: np.ndarray) -> None:
        """K stratified batches into idx_out/weights_out ([K, B] int64 / float32), in one call.

        All K batches see the same priorities: updates made between the K gradient steps
        only apply from the next call on.
        """
        self._check_sample(size, idx_out, weights_out)
        _sample_rng(self.tree, np.int64(self.leaves), self.state, np.float64(beta), idx_out,
                    weights_out)

    def sample(self, size: int, batch_size: int, beta: float, idx_out: np.ndarray,
               weights_out: np.ndarray) -> None:
        """One stratified batch of indices in [0, size) and its IS weights, written in place."""
        if idx_out.shape != (batch_size,) or weights_out.shape != (batch_size,):
            raise ValueError(f"idx_out and weights_out must have shape ({batch_size},)")
        self.sample_block(size, beta, idx_out.reshape(1, batch_size),
                          weights_out.reshape(1, batch_size))

    def sample_from_uniforms(self, size: int, uniforms: np.ndarray, beta: float,
                             idx_out: np.ndarray, weights_out: np.ndarray) -> None:
        """sample_block with the stratum offsets given ([K, B] in [0, 1)) instead of drawn, to
        compare with another implementation fed the same numbers."""
        u = np.ascontiguousarray(uniforms, dtype=np.float64)
        if u.shape != idx_out.shape:
            raise ValueError(f"uniforms {u.shape} and idx_out {idx_out.shape} differ")
        self._check_sample(size, idx_out, weights_out)
        _sample_uniforms(self.tree, np.int64(self.leaves), u, np.float64(beta), idx_out,
                         weights_out)

    def get_state(self) -> dict:
        """RNG words, the filled rows' priorities and max_priority, as ints, floats and a
        tensor (loadable with torch.load(weights_only=True)); TorchPrioritized reads it too."""
        return {"rng": [int(x) for x in self.state],
                "priorities": torch.from_numpy(self.priorities()),
                "max_priority": float(self.max_priority),
                "alpha": self.alpha, "capacity": self.capacity}

    def set_state(self, state: dict) -> None:
        """Restore get_state()'s dict (or TorchPrioritized's, which has no "rng")."""
        prio = _check_state(state, self.capacity, self.alpha)
        self.tree[:] = 0.0
        self.tree[self.leaves: self.leaves + prio.numel()] = prio.numpy()
        _rebuild(self.tree, np.int64(self.leaves))
        self.filled = prio.numel()
        self.max_priority = float(state["max_priority"])
        if "rng" in state:
            self.state[:] = np.array(state["rng"], dtype=np.uint64)


class TorchPrioritized:
    """Proportional prioritized sampling with the priorities in a tensor on the buffer's device.

    Every method is a fixed sequence of torch ops with no host synchronization (no .item(), no
    branch on a tensor's value), so it can run inside a CUDA graph. A sum tree is not needed on
    a GPU: a sample is a cumsum over all priorities plus a searchsorted, and a cumsum over 1M
    floats takes a few microseconds there, while a tree descent is log2(N) dependent memory
    reads, i.e. latency-bound, and a tree update from a batch with repeated rows would need
    atomics or serialization. Priorities are float64: in float32 the prefix sums of a 1M-row
    buffer round to about 0.06, wider than a small row's whole priority.

    Because nothing is checked on the host, the caller must not sample an empty buffer (it
    gives row 0 and NaN weights) nor pass non-finite TD errors (they poison the sums); check
    the loss instead. eps > 0 makes every added row's priority positive, so the only round-off
    guard needed is at the end: a target at or past the total is drawn as the last row with mass.
    """

    def __init__(self, capacity: int, alpha: float, eps: float,
                 device: torch.device | str = "cpu") -> None:
        _check_hyper(capacity, alpha, eps)
        self.capacity = capacity
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.device = torch.device(device)
        self.priorities = torch.zeros(capacity, dtype=torch.float64, device=self.device)
        """Row i's priority, already raised to alpha; 0 for rows never added."""
        self.max_priority = torch.ones((), dtype=torch.float64, device=self.device)
        """max(|delta| + eps) seen so far (0-dim, updated in place so a graph keeps it)."""

    def on_add(self, rows: torch.Tensor) -> None:
        """Rows just written (or overwritten) get max_priority ** alpha."""
        self.priorities.index_put_((rows.reshape(-1),), self.max_priority ** self.alpha)

    def update(self, idx: torch.Tensor, td_abs: torch.Tensor) -> None:
        """Priorities (|delta| + eps) ** alpha for the sampled rows; for a row repeated in idx,
        any one of its values is kept."""
        p = td_abs.reshape(-1).to(torch.float64).abs() + self.eps
        torch.maximum(self.max_priority, p.max(), out=self.max_priority)
        self.priorities.index_put_((idx.reshape(-1),), p ** self.alpha)

    def sample_from_uniforms(self, uniforms: torch.Tensor,
                             beta: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stratified batches from given offsets ([K, B] or [B] in [0, 1)): int64 indices and
        float32 IS weights (normalized per batch) of the same shape. beta may be a 0-dim tensor,
        so that an annealed beta does not need a new graph at every step."""
        u = uniforms.to(device=self.device, dtype=torch.float64)
        cdf = torch.cumsum(self.priorities, 0)
        total = cdf[-1:]
        b = u.shape[-1]
        strata = torch.arange(b, device=self.device, dtype=torch.float64)
        targets = (strata + u) * (total / b)
        idx = torch.searchsorted(cdf, targets, right=True)
        last = torch.searchsorted(cdf, total, right=False)  # the last row with mass
        idx = torch.minimum(idx, last)
        p = self.priorities[idx]
        p_min = p.amin(dim=-1, keepdim=True)
        weights = (p_min / p) ** beta
        return idx, weights.to(torch.float32)

    def sample(self, num_batches: int, batch_size: int, beta: float | torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[num_batches, batch_size] indices and weights, the offsets drawn from `generator`."""
        u = torch.rand((num_batches, batch_size), generator=generator, dtype=torch.float64,
                       device=self.device)
        return self.sample_from_uniforms(u, beta)

    def get_state(self) -> dict:
        """The layout of PrioritizedSampler.get_state, without "rng" (the caller owns the
        generator). Synchronizes: call it at checkpoint time only."""
        prio = self.priorities.cpu()
        nonzero = torch.nonzero(prio)
        n = int(nonzero[-1, 0]) + 1 if nonzero.numel() else 0
        return {"priorities": prio[:n].clone(), "max_priority": float(self.max_priority),
                "alpha": self.alpha, "capacity": self.capacity}

    def set_state(self, state: dict) -> None:
        prio = _check_state(state, self.capacity, self.alpha)
        self.priorities.zero_()
        self.priorities[: prio.numel()] = prio.to(self.device)
        self.max_priority.fill_(float(state["max_priority"]))
