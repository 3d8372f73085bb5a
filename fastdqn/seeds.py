"""The seed streams of a run: training resets, checkpoint selection, held-out testing, and the
random play that fits an input scaler.

A run seed S gives four streams of episode seeds that can never share a value, whatever
--num-envs, resumes or episode counts do: seed j of stream k is `(S << 34) | (k << 32) | j`,
so the stream id sits in bits that the episode counter j (< 2**32) never reaches, and two run
seeds never overlap either. The streams:

- TRAIN: the training envs' resets (env i of a reset at step t gets j = t + i);
- SELECT: the periodic screening evaluations that choose `best.pt` and the confirming
  evaluation that declares a run solved (episode j of every evaluation gets j);
- TEST: `fastdqn eval`'s default, so a checkpoint is judged on episodes nothing was chosen on;
- FIT: the random play that fits an input scaler before training (`--network rbf`), so the
  episodes it sees are none of training's.
"""

from __future__ import annotations

TRAIN, SELECT, TEST, FIT = 0, 1, 2, 3
STREAM_NAMES = {TRAIN: "train", SELECT: "select", TEST: "test", FIT: "fit"}
_J_BITS = 32


def episode_seed(run_seed: int, stream: int, j: int = 0) -> int:
    """Seed of episode `j` of `stream` in the run seeded `run_seed` (all non-negative)."""
    if run_seed < 0 or j < 0 or j >= 1 << _J_BITS or stream not in STREAM_NAMES:
        raise ValueError(f"no episode seed for run seed {run_seed}, stream {stream}, episode {j}")
    return (run_seed << (_J_BITS + 2)) | (stream << _J_BITS) | j


def describe(seed: int) -> tuple[int, str, int]:
    """(run seed, stream name, episode index) of an episode seed made by `episode_seed`."""
    return seed >> (_J_BITS + 2), STREAM_NAMES[(seed >> _J_BITS) & 3], seed & ((1 << _J_BITS) - 1)
