"""The learner step alone: µs per step of each learner route on the same buffer and indices.

Ratios between routes measured in one run are the figure to quote (the machine is shared); the
canonical sizes (obs 8, MLP 128x128, 4 actions, batch 128, K=4 steps per block) are the default.
With --heads, the reference route also trains each value head (nets/heads.py) on the same
batches: C51 (51 atoms), QR-DQN (200 quantiles), noisy layers, and Rainbow's head (C51, noisy,
dueling): what a distributional head costs over plain DQN on the route it takes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fastdqn.learners.flat import Learner
from fastdqn.learners.reference import ReferenceLearner
from fastdqn.nets.heads import head_of
from fastdqn.nets.mlp import MLP, QNetwork
from fastdqn.nets.noisy import seed_noise
from fastdqn.replay.prioritized import PrioritizedSampler
from fastdqn.replay.rows import ReplayBuffer


def time_route(learner: Learner | ReferenceLearner, buffer: ReplayBuffer, steps: int, batch: int,
               seed: int, per: PrioritizedSampler | None = None) -> float:
    """µs per learner step (gather, gradient, Adam, target) over `steps` after a warm-up."""
    rng = np.random.default_rng(seed)
    blocks = [rng.integers(0, buffer.size, (4, batch)) for _ in range(steps // 4 + 50)]

    def learn(idx: np.ndarray) -> None:
        if per is not None:
            learner.learn(buffer, per, 4, batch, 0.5)
        elif isinstance(learner, ReferenceLearner):
            for row in idx:
                learner.step(buffer.gather(torch.from_numpy(row).to(buffer.device)))
        else:
            learner.learn_block(buffer, idx)

    for idx in blocks[:50]:
        learn(idx)
    t = time.perf_counter()
    for idx in blocks[50:]:
        learn(idx)
    if buffer.device.type == "cuda":
        torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - t) / (4 * (len(blocks) - 50))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--hidden", default="128,128")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--buffer-size", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--heads", action="store_true",
                   help="also time the reference route with each value head")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    gen = torch.Generator().manual_seed(a.seed)
    buffer = ReplayBuffer(a.buffer_size, (8,), torch.float32, device)
    while buffer.size < buffer.capacity:
        buffer.add(torch.randn(16, 8, generator=gen).to(device),
                   torch.randint(4, (16,), generator=gen).to(device),
                   torch.randn(16, generator=gen).to(device),
                   torch.randn(16, 8, generator=gen).to(device),
                   (torch.rand(16, generator=gen) < 0.01).float().to(device),
                   torch.full((16,), 0.99, device=device))
    net = MLP(8, 4, tuple(int(h) for h in a.hidden.split(",")))
    init = net.init(torch.Generator().manual_seed(a.seed))
    routes = {"torch-ops": {"fused": False, "cuda_graphs": False}}
    if device.type == "cpu":  # the Numba step and the native one (csrc/)
        routes["cpu-fused"] = {"fused": True, "native": False}
        routes["cpu-native"] = {"fused": True}
    if device.type == "cuda":
        routes["cuda-graphs"] = {"cuda_graphs": True}
    if device.type == "cpu":  # the same fused steps drawing from the sum tree, |TD| written back
        routes["cpu-fused+per"] = {"fused": True, "native": False}
        routes["cpu-native+per"] = {"fused": True}
    routes["reference"] = {}
    heads = {"reference+c51": ("c51", False, False), "reference+qr": ("qr", False, False),
             "reference+noisy": ("none", True, False),
             "reference+rainbow-head": ("c51", True, True)} if a.heads else {}
    routes.update({name: {} for name in heads})
    us = {}
    opts = dict(lr=6.3e-4, gamma=0.99, tau=0.005, target_update_interval=1, device=device)
    for name, kw in routes.items():
        if name in heads:
            dist, noisy, dueling = heads[name]
            torch.manual_seed(a.seed)
            module = QNetwork(8, 4, net.hidden, dueling, head_of(dist, 0, (-10.0, 10.0), noisy))
            learner = ReferenceLearner(module, head=dist, **opts)
            for key, copy in enumerate((learner.online, learner.target)):
                seed_noise(copy, torch.Generator(device).manual_seed(a.seed + key))
        elif name == "reference":
            learner = ReferenceLearner(net.to_module(init), **opts)
        else:
            learner = Learner(net, init=init, **opts, **kw)
        per = None
        if name.endswith("+per"):
            per = PrioritizedSampler(buffer.capacity, 0.6, 1e-6, a.seed)
            per.on_add(np.arange(buffer.size))
        us[name] = time_route(learner, buffer, a.steps, a.batch_size, a.seed, per)
        if name.startswith("cpu-native") and getattr(learner, "native_off", None):
            sys.exit(f"learner_step.py: the native step did not run ({learner.native_off})")
        print(f"  {name:<12} {us[name]:8.1f} us per step")
    fastest = min(us, key=us.get)
    print(f"  {fastest} is {us['torch-ops'] / us[fastest]:.2f}x the speed of torch-ops")
    for name in heads:
        print(f"  {name} costs {us[name] / us['reference']:.2f}x the plain reference step, "
              f"{us[name] / us[fastest]:.2f}x {fastest}'s")
    if "cpu-native" in us:
        print(f"  the native step is {us['cpu-fused'] / us['cpu-native']:.2f}x the speed of the "
              "Numba step")
    for route in ("cpu-fused", "cpu-native"):
        if f"{route}+per" in us:
            print(f"  prioritized replay keeps {100 * us[route] / us[route + '+per']:.0f}% "
                  f"of {route}'s speed")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": str(device), "us_per_step": us}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
