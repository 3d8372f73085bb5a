"""Linear Q-learning on RBF kernel features: `fastdqn train --network rbf`.

The classic pre-deep-RL recipe (scikit-learn's `RBFSampler` in a `FeatureUnion`, one linear
model per action) as a torch module: the observation is standardized with a mean and std fitted
on random play, mapped by random Fourier features (Rahimi & Recht 2007) at several kernel
widths, and a linear head gives one Q-value per action. For each scale gamma_j, n components:

    z = (x - mean) / std
    phi_j(z) = sqrt(2 / n) * cos(z @ W_j + b_j),  W_j ~ N(0, 2 * gamma_j) per entry,
                                                   b_j ~ U(0, 2 pi)
    Q(x) = head([phi_1(z), ..., phi_J(z)])         (one weight vector + bias per action)

so phi_j(z) . phi_j(z') approximates the Gaussian kernel exp(-gamma_j |z - z'|^2). W, b, mean
and std are buffers: they are saved in the checkpoint with the head but never trained, so only
the head is a parameter and the model is linear in what it learns.

It trains through the DQN learner. Since only the head learns, the default (flat) route splits
the model where it is linear: the agent encodes each observation as phi(x) as it arrives, the
replay rows hold phi (n_features floats per observation, instead of in_dim), and the fused flat
learner trains the head as an MLP without hidden layers, 2.2x the reference route's whole-run
speed on the LunarLander preset (1 273 against 573 SPS, measured). `--learner reference`
trains this module itself (autograd, torch.optim.Adam), the route the flat one is tested
against. Replay, n-step returns, prioritized replay and target updates compose with either,
and whether to replay is a setting, not a property of the module.

The presets use no replay, on purpose: the method they reproduce is online semi-gradient
Q-learning, and replay measured no better on MountainCar (solved at 50k steps online and
50-85k with a 50k buffer, batch 32, one update per 4 steps; one seed each, same budget). So:
a one-row buffer, batch 1, one update per env step, i.e. each transition learned from once,
one step late (the loop learns while the env steps); the target copied after every update, so
bootstrapping uses the current weights; squared TD error. What fastdqn changes: Adam instead
of scikit-learn's plain SGD (the learner has one optimizer), and the head starts at exactly
zero, which on tasks of negative rewards (MountainCar) is optimism that drives exploration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastdqn.config.limits import MAX_FEATURES, MAX_SCALES
from fastdqn.core.checkpoint import check_module_state, load_online
from fastdqn.errors import CheckpointError
from fastdqn.nets.mlp import MLP

MAX_INPUTS = 2**16
"""Most observation values a checkpoint's RBF network may declare (LunarLander has 8)."""
MAX_ACTIONS = 2**16
"""Most actions a checkpoint's RBF network may declare."""
MAX_TENSOR_VALUES = 2**28
"""Most values of the random projection W (inputs x features), as checkpoint.py's cap on an
MLP's parameters: 1 GiB of float32."""
MIN_STD = 1e-6
"""A fitted std below this (an observation value constant during random play, e.g. a leg
contact never touched) is replaced by 1: dividing by ~0 would blow that input up to huge,
meaningless z-values the first time it moves."""


class RBFQNetwork(torch.nn.Module):
    """Fixed random Fourier features of the standardized observation and a trainable linear head.

    `n_features` is split evenly over `scales` (the gammas of the Gaussian kernels). With a
    `generator`, W and b are drawn from it (W scale by scale, then b); without one they stay
    zero, to be filled by `load_state_dict` (a module rebuilt from a checkpoint). The scaler
    starts as the identity (mean 0, std 1) until `set_scaler`. The head starts at zero.
    """

    def __init__(self, in_dim: int, n_actions: int, n_features: int, scales: Sequence[float],
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_dim, self.n_actions, self.n_features = int(in_dim), int(n_actions), int(n_features)
        self.scales = tuple(float(s) for s in scales)
        self.per_scale = split_features(self.n_features, len(self.scales))
        self.amplitude = math.sqrt(2.0 / self.per_scale)
        self.register_buffer("mean", torch.zeros(self.in_dim))
        self.register_buffer("std", torch.ones(self.in_dim))
        self.register_buffer("w", torch.zeros(self.in_dim, self.n_features))
        self.register_buffer("b", torch.zeros(self.n_features))
        self.head = torch.nn.Linear(self.n_features, self.n_actions)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
        if generator is not None:
            self.draw(generator)

    @torch.no_grad()
    def draw(self, generator: torch.Generator) -> None:
        """New random W (N(0, 2 gamma) per entry, one block of columns per scale) and b."""
        n = self.per_scale
        for j, gamma in enumerate(self.scales):
            block = torch.randn(self.in_dim, n, generator=generator) * math.sqrt(2.0 * gamma)
            self.w[:, j * n:(j + 1) * n] = block.to(self.w.device)
        self.b.copy_(torch.rand(self.n_features, generator=generator) * (2.0 * math.pi))

    @torch.no_grad()
    def set_scaler(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor) -> None:
        """The standardization: z = (x - mean) / std, per observation value."""
        self.mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        self.std.copy_(torch.as_tensor(np.asarray(std), dtype=torch.float32))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """phi(x) [B, n_features] of float observations x [B, in_dim] (in-place after the
        product: nothing here needs a gradient, and each op counts at batch 1)."""
        z = (x - self.mean) / self.std
        return torch.addmm(self.b, z, self.w).cos_().mul_(self.amplitude)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.features(x), self.head.weight, self.head.bias)

    def spec(self) -> dict:
        """The checkpoint's "net" entry: every size needed to rebuild the module."""
        return {"kind": "rbf", "in_dim": self.in_dim, "n_actions": self.n_actions,
                "n_features": self.n_features, "scales": list(self.scales)}


def split_features(n_features: int, n_scales: int) -> int:
    """Features per scale; the total must split evenly (a ValueError says how otherwise)."""
    if n_scales < 1 or n_features < n_scales or n_features % n_scales:
        raise ValueError(f"{n_features} features do not split evenly over {n_scales} scales; "
                         f"use a multiple of {max(n_scales, 1)}")
    return n_features // n_scales


def check_spec(path: str | Path, spec: object) -> dict:
    """A checkpoint's "rbf" net entry, every size checked against the caps before anything is
    allocated by it; a one-line CheckpointError otherwise. Returns the plain sizes."""
    def size(v: object, cap: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= cap

    scales = spec.get("scales") if isinstance(spec, dict) else None
    if not (isinstance(spec, dict) and isinstance(scales, list) and 1 <= len(scales) <= MAX_SCALES
            and all(isinstance(s, (int, float)) and not isinstance(s, bool)
                    and math.isfinite(s) and s > 0 for s in scales)
            and size(spec.get("in_dim"), MAX_INPUTS) and size(spec.get("n_actions"), MAX_ACTIONS)
            and size(spec.get("n_features"), MAX_FEATURES)):
        raise CheckpointError(f"{path} declares an rbf network without valid sizes (in_dim, "
                              f"n_actions, n_features <= {MAX_FEATURES:,d}, 1 to {MAX_SCALES} "
                              "positive scales); it is damaged or from another program")
    in_dim, n_features = spec["in_dim"], spec["n_features"]
    if n_features % len(scales):
        raise CheckpointError(f"{path}: its rbf network's {n_features} features do not split "
                              f"over its {len(scales)} scales; the file is damaged")
    if in_dim * n_features > MAX_TENSOR_VALUES:
        raise CheckpointError(f"{path} declares an rbf projection of {in_dim * n_features:,d} "
                              f"values, over the limit of {MAX_TENSOR_VALUES:,d}; refusing it")
    return {"in_dim": in_dim, "n_actions": spec["n_actions"], "n_features": n_features,
            "scales": [float(s) for s in scales]}


def check_state(path: str | Path, state: object, module: RBFQNetwork, where: str) -> None:
    """The module's tensors in a checkpoint (`where`, e.g. learner.online) must be exactly
    those of `module` (checkpoint.check_module_state), and its std positive: a file could
    otherwise smuggle in an std of 0."""
    check_module_state(path, state, module, where, "rbf network")
    if not bool((state["std"] > 0).all()):
        raise CheckpointError(f"{path}: {where}.std has values <= 0; the file is damaged")


def module_from_checkpoint(path: str | Path, ckpt: dict) -> RBFQNetwork:
    """The trained RBF network of a checkpoint (its online copy), validated field by field."""
    return load_online(path, ckpt, RBFQNetwork(**check_spec(path, ckpt.get("net"))), check_state)


def check_resume(path: str | Path, saved: dict, want: dict, env_id: str) -> None:
    """A resumed checkpoint's RBF network (`saved`) against the one this run builds (`want`,
    its spec): its sizes checked, the env's spaces compared, the flags that would match named."""
    sizes = check_spec(path, saved)
    if (sizes["in_dim"], sizes["n_actions"]) != (want["in_dim"], want["n_actions"]):
        raise CheckpointError(f"{path} declares an rbf network of {sizes['in_dim']} inputs "
                              f"and {sizes['n_actions']} actions, but {env_id} has "
                              f"{want['in_dim']} and {want['n_actions']}; it is damaged or "
                              "from another env")
    if (saved.get("n_features"), saved.get("scales")) != (want["n_features"], want["scales"]):
        raise CheckpointError(
            f"{path} has {saved.get('n_features')} rbf features over scales "
            f"{saved.get('scales')}, not {want['n_features']} over {want['scales']}; "
            "pass --rbf-features and --rbf-scales to match")


def linear_head(model: RBFQNetwork) -> tuple[MLP, torch.Tensor, RBFQNetwork]:
    """The model split where it is linear, for the flat learner: a linear MLP (no hidden layer)
    over the features, its initial parameters (the head's weights, then its bias), and the
    model itself as the fixed encoder whose features the replay rows hold."""
    head = MLP(model.n_features, model.head.out_features, (), False)
    init = torch.cat([model.head.weight.detach().reshape(-1), model.head.bias.detach()]).cpu()
    return head, init, model

