"""The frame replay's real memory: allocate it for 1M Atari-sized transitions, fill it, read RSS.

Atari observations are stacks of 4 uint8 frames of 84x84 (FrameStackObservation). The buffer is
filled through `add`, as training fills it, from 16 synthetic frame-stacking envs (random frames,
so no two are equal; episodes end at random, mean --episode-length steps, half of them by
truncation) until the ring has wrapped once, so every slot of the frame store has been written.
The process's resident memory (VmRSS) is read before allocation, after it, and after the fill;
the time of an `add` (one vector step of 16 envs, synthetic frames included) and of a `gather`
of 32 rows are reported too.

A row buffer of the same transitions (`ReplayBuffer`) is sized from its tensors, and allocated
and measured too if --naive fits in this machine's memory (1M rows do not: 56 GB).

    python bench/replay_memory.py                  # 1M rows, the figure in bench/README.md
    python bench/replay_memory.py --capacity 100000 --naive
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from fastdqn.replay.frames import FrameReplay
from fastdqn.replay.rows import ReplayBuffer

GiB = 2**30


def rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def fill(buf, obs_shape: tuple[int, ...], envs: int, steps: int, episode_length: float,
         seed: int) -> int:
    """`steps` vector steps of stacked random frames through buf.add; returns episodes ended.
    Each step shifts one new frame into every env's stack; an env whose episode ends restarts
    from a stack repeating a new frame (FrameStackObservation's padding)."""
    rng = np.random.default_rng(seed)
    k, shape = obs_shape[0], obs_shape[1:]
    obs = np.repeat(rng.integers(0, 256, (envs, 1, *shape), dtype=np.uint8), k, axis=1)
    discounts = torch.full((envs,), 0.99)
    actions = np.zeros(envs, dtype=np.int64)
    rewards = np.zeros(envs, dtype=np.float32)
    ended = 0
    for _ in range(steps):
        new = rng.integers(0, 256, (envs, 1, *shape), dtype=np.uint8)
        nxt = np.concatenate([obs[:, 1:], new], axis=1)
        done = rng.random(envs) < 1.0 / episode_length
        terminated = done & (rng.random(envs) < 0.5)
        if isinstance(buf, FrameReplay):
            buf.add(obs, actions, rewards, nxt, terminated, discounts)
        else:
            buf.add(torch.from_numpy(obs), torch.from_numpy(actions), torch.from_numpy(rewards),
                    torch.from_numpy(nxt), torch.from_numpy(terminated).float(), discounts)
        obs = nxt
        if done.any():
            resets = rng.integers(0, 256, (int(done.sum()), 1, *shape), dtype=np.uint8)
            obs[done] = np.repeat(resets, k, axis=1)
        ended += int(done.sum())
    return ended


def measure(kind: str, capacity: int, envs: int, episode_length: float, seed: int) -> dict:
    shape = (4, 84, 84)
    before = rss()
    t0 = time.perf_counter()
    if kind == "frames":
        buf = FrameReplay(capacity, shape, torch.uint8, num_envs=envs)
    else:
        buf = ReplayBuffer(capacity, shape, torch.uint8)
    allocated = rss()
    steps = -(-capacity // envs) + 100
    t1 = time.perf_counter()
    episodes = fill(buf, shape, envs, steps, episode_length, seed)
    add_s = time.perf_counter() - t1
    filled = rss()
    idx = torch.randint(0, buf.size, (200, 32), generator=torch.Generator().manual_seed(seed))
    t2 = time.perf_counter()
    for row in idx:
        buf.gather(row)
    gather_us = (time.perf_counter() - t2) / len(idx) * 1e6
    out = {"replay": kind, "capacity": capacity, "obs_shape": list(shape), "num_envs": envs,
           "rss_before_gib": before / GiB, "rss_allocated_gib": allocated / GiB,
           "rss_filled_gib": filled / GiB, "replay_rss_gib": (filled - before) / GiB,
           "episodes": episodes, "seconds": time.perf_counter() - t0,
           "add_us_per_vector_step": add_s / steps * 1e6, "gather_us_batch_32": gather_us}
    if isinstance(buf, FrameReplay):
        out.update(tensor_gib=buf.nbytes() / GiB, frame_slots=len(buf.frames),
                   live_frames=buf.live_frames(), store_grew=buf.generation)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capacity", type=int, default=1_000_000)
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--episode-length", type=float, default=500.0,
                    help="mean episode length in agent steps (Atari games: hundreds to thousands)")
    ap.add_argument("--naive", action="store_true", help="also allocate and fill a ReplayBuffer")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as training does (--num-threads 1)
    rows = [measure("frames", args.capacity, args.envs, args.episode_length, args.seed)]
    naive_bytes = 2 * args.capacity * 4 * 84 * 84 + args.capacity * (8 + 4 + 4 + 4)
    rows[0]["row_buffer_tensor_gib"] = naive_bytes / GiB
    if args.naive:
        rows.append(measure("rows", args.capacity, args.envs, args.episode_length, args.seed))
    for r in rows:
        print(json.dumps(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
