"""Numba index samplers with an explicit, checkpointable RNG state.

The generator is xoroshiro128+ kept in a two-word uint64 array owned by the caller, so a run's
sampling stream is saved and restored with the checkpoint (Numba's own global RNG cannot be
read back). One call fills a whole block of index batches: all the gradient steps of a training
iteration cost one call of a few microseconds.
"""

from __future__ import annotations

import numba
import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


@numba.njit(cache=True, inline="always")
def _rotl(x: np.uint64, k: np.uint64) -> np.uint64:
    return (x << k) | (x >> (np.uint64(64) - k))


@numba.njit(cache=True)
def _next(state: np.ndarray) -> np.uint64:
    s0 = state[0]
    s1 = state[1]
    result = s0 + s1
    s1 ^= s0
    state[0] = _rotl(s0, np.uint64(24)) ^ s1 ^ (s1 << np.uint64(16))
    state[1] = _rotl(s1, np.uint64(37))
    return result


@numba.njit(cache=True)
def _fill_uniform(state: np.ndarray, high: np.int64, out: np.ndarray) -> None:
    flat = out.reshape(-1)
    n = np.uint64(high)
    for i in range(flat.size):
        # Lemire's multiply-shift on the top 32 bits: unbiased enough for high < 2**32.
        r = _next(state) >> np.uint64(32)
        flat[i] = np.int64((r * n) >> np.uint64(32))


def seed_state(seed: int) -> np.ndarray:
    """A non-zero xoroshiro state derived from `seed` by splitmix64. A run passes the 64-bit seed
    of its REPLAY or PER generator (seeds.py), never the run seed itself: nearby seeds give
    overlapping splitmix sequences (seed s + 1's first word is seed s's second)."""
    z = (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    words = []
    for _ in range(2):
        z = (z + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        x = z
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        words.append(x ^ (x >> 31))
    return np.array(words, dtype=np.uint64)


class UniformSampler:
    """Uniform indices over the filled part [0, size) of a ring buffer."""

    def __init__(self, seed: int) -> None:
        self.state = seed_state(seed)

    def sample(self, size: int, num_batches: int, batch_size: int,
               out: np.ndarray | None = None) -> np.ndarray:
        """A [num_batches, batch_size] int64 block of indices in [0, size)."""
        if size < 1:
            raise ValueError("cannot sample from an empty buffer")
        if out is None:
            out = np.empty((num_batches, batch_size), dtype=np.int64)
        _fill_uniform(self.state, np.int64(size), out)
        return out

    def get_state(self) -> list[int]:
        return [int(x) for x in self.state]

    def set_state(self, state: list[int]) -> None:
        self.state[:] = np.array(state, dtype=np.uint64)
