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

Every random generator of a run (weight init, acting, replay sampling, ...) is a child of the
run seed too: `SeedSequence(entropy=run_seed, spawn_key=(purpose, *keys))`, one fixed tag per
purpose (`Purpose`). A child's spawn key is never empty, so its stream is none of the envs'
(gymnasium seeds an env with `SeedSequence(episode_seed)`), and no generator's seed is another's
plus an offset: seed 1's acting stream is not seed 2's init stream.
"""

from __future__ import annotations

import enum

import numpy as np
import torch

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


class Purpose(enum.IntEnum):
    """The tag of each generator of a run (the first word of its spawn key). A tag's value is
    part of every run's streams: never renumber one, only add new ones."""

    INIT = 1
    """Network weights: the MLP, PQN and REINFORCE init, the CNN's torch-default init, the RBF
    features and head."""
    ACT = 2
    """Exploration on the training envs: epsilon-greedy uniforms, Boltzmann and policy samples."""
    REPLAY = 3
    """Uniform replay indices (the Numba sampler's xoroshiro state)."""
    PER = 4
    """Prioritized replay on the host (the Numba sum tree's xoroshiro state)."""
    PER_DEVICE = 5
    """Prioritized replay on the device (the learner's `per_generator` uniforms)."""
    SHUFFLE = 6
    """PQN's minibatch order within an update."""
    FIT_ACTIONS = 7
    """The random actions of the play that fits the RBF input scaler."""
    TORCH_GLOBAL = 8
    """torch's global generators (`torch.manual_seed`): whatever draws without a generator, such
    as a custom network's dropout."""
    APEX_ACT = 9
    """Ape-X actor exploration; keys (actor index, first episode of its TRAIN block)."""
    EVAL_EPSILON = 10
    """Evaluation epsilon-greedy draws; keys (stream, episode j) of the episode played."""
    BASELINE = 11
    """The random-policy baseline of `fastdqn eval --compare`; keys (stream, j) of its first
    episode."""
    NOISE = 12
    """Noisy layers' noise (nets/noisy.py); key 0 the online network's, 1 the target's."""


_KEY_LIMIT = 1 << 32  # one uint32 word per key: the spawn key stays an injective encoding
_SEED_LIMIT = 1 << 128  # within SeedSequence's 4-word pool: padded to the same length


def seed_sequence(run_seed: int, purpose: Purpose, *keys: int) -> np.random.SeedSequence:
    """The SeedSequence of `purpose` (with `keys`) in the run seeded `run_seed`: distinct for
    every distinct (run seed, purpose, keys), and never an env's own sequence."""
    if type(purpose) is not Purpose:
        raise ValueError(f"unknown generator purpose {purpose!r}; use a seeds.Purpose")
    for name, value, limit in [("run seed", run_seed, _SEED_LIMIT),
                               *(("key", k, _KEY_LIMIT) for k in keys)]:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
                not 0 <= value < limit:
            raise ValueError(f"no {purpose.name} generator for {name} {value!r}: "
                             f"it must be an integer in [0, {limit})")
    return np.random.SeedSequence(int(run_seed), spawn_key=(int(purpose), *map(int, keys)))


def generator_seed(run_seed: int, purpose: Purpose, *keys: int) -> int:
    """A 64-bit seed in [0, 2**64) for `purpose`, what torch.manual_seed takes (it accepts up
    to 2**64 - 1; torch's CPU generator keeps only the low 32 bits, CUDA's all 64)."""
    return int(seed_sequence(run_seed, purpose, *keys).generate_state(1, np.uint64)[0])


def torch_generator(run_seed: int, purpose: Purpose, *keys: int,
                    device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded for `purpose`."""
    return torch.Generator(device).manual_seed(generator_seed(run_seed, purpose, *keys))


def numpy_generator(run_seed: int, purpose: Purpose, *keys: int) -> np.random.Generator:
    """A numpy Generator (PCG64) for `purpose`, seeded with its whole SeedSequence."""
    return np.random.default_rng(seed_sequence(run_seed, purpose, *keys))


def split(seed: int) -> tuple[int, int, int]:
    """(run seed, stream, j) of any non-negative episode seed, the inverse of episode_seed on
    its values and a one-to-one map on all others (a user's `--seed 5` is (0, TRAIN, 5))."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"episode seed {seed!r} must be a non-negative integer")
    seed = int(seed)
    return seed >> (_J_BITS + 2), (seed >> _J_BITS) & 3, seed & ((1 << _J_BITS) - 1)


def episode_generator(seed: int, purpose: Purpose) -> np.random.Generator:
    """The numpy Generator of `purpose` for the episode reset with episode seed `seed`: keyed by
    (stream, j) under its run seed, so it is a sibling of the env's reset randomness, not a copy
    of it, and the same episode gets the same draws however many envs play it."""
    run_seed, stream, j = split(seed)
    return numpy_generator(run_seed, purpose, stream, j)
