"""PQN's Q-network (`--algo pqn`): an MLP with LayerNorm after each hidden layer, and how a
checkpoint's "layernorm_mlp" entry rebuilds it."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from fastdqn.core.checkpoint import check_declared_size, check_module_state
from fastdqn.errors import CheckpointError


class LayerNormQNetwork(torch.nn.Module):
    """PQN's Q-network (Gallici et al. 2024): Linear -> LayerNorm -> ReLU per hidden layer, then
    a Linear head giving one Q-value per action.

    LayerNorm is what lets PQN drop the target network: the paper shows it keeps off-policy TD
    with function approximation from diverging, so the bootstrap can use the online network.
    Linear weights get orthogonal init with gain sqrt(2) (the head gain 1), biases zero, as in
    CleanRL's pqn.py; `generator` makes the init independent of the global torch seed.
    """

    def __init__(self, in_dim: int, n_actions: int, hidden: tuple[int, ...],
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_dim, self.n_actions, self.hidden = in_dim, n_actions, tuple(hidden)
        sizes = [in_dim, *self.hidden]
        mods: list[torch.nn.Module] = []
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            mods += [torch.nn.Linear(fan_in, fan_out), torch.nn.LayerNorm(fan_out), torch.nn.ReLU()]
        mods.append(torch.nn.Linear(sizes[-1], n_actions))
        self.body = torch.nn.Sequential(*mods)
        linears = [m for m in self.body if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for i, lin in enumerate(linears):
                gain = 1.0 if i == len(linears) - 1 else math.sqrt(2.0)
                torch.nn.init.orthogonal_(lin.weight, gain, generator=generator)
                lin.bias.zero_()

    @staticmethod
    def count_params(in_dim: int, n_actions: int, hidden: tuple[int, ...]) -> int:
        """Parameters of a network of this shape, computed without building it (a checkpoint's
        sizes are checked against its tensors before anything is allocated)."""
        sizes = [in_dim, *hidden]
        n = sum(a * b + b + 2 * b for a, b in zip(sizes, sizes[1:]))  # Linear + LayerNorm
        return n + sizes[-1] * n_actions + n_actions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Q-values [B, n_actions] of float inputs [B, in_dim]."""
        return self.body(x)

    def spec(self) -> dict:
        """The checkpoint's "net" entry: every size needed to rebuild the module."""
        return {"kind": "layernorm_mlp", "in_dim": self.in_dim, "n_actions": self.n_actions,
                "hidden": list(self.hidden)}


def module_from_checkpoint(path: str | Path, ckpt: dict) -> LayerNormQNetwork:
    """PQN's trained network from a checkpoint's spec and weights, every size checked before the
    network is allocated: its parameter count must equal that of the tensors already loaded.
    A missing field raises KeyError (TypeError where an entry is not a dict): the caller reports
    the file as damaged."""
    spec, weights = ckpt["net"], ckpt["learner"]["online"]
    sizes = [spec["in_dim"], spec["n_actions"], *spec["hidden"]]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes):
        raise CheckpointError(f"{path}: its network sizes {str(sizes)[:80]} are not positive "
                              "integers; the file is damaged")
    check_declared_size(path, spec["in_dim"], spec["hidden"], spec["n_actions"], lambda: 0)
    stored = sum(t.numel() for t in weights.values() if isinstance(t, torch.Tensor))
    want = LayerNormQNetwork.count_params(spec["in_dim"], spec["n_actions"], tuple(spec["hidden"]))
    if stored != want or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"{path}: parameter count does not match its network shape; "
                              "the file is damaged")
    net = LayerNormQNetwork(spec["in_dim"], spec["n_actions"], tuple(spec["hidden"]))
    check_module_state(path, weights, net, "learner.online")  # names, shapes, dtypes, finite
    net.load_state_dict(weights)
    return net
