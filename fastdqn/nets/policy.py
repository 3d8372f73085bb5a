"""REINFORCE's network (`--algo reinforce`): a softmax policy, with a state-value network of the
same hidden sizes when the value baseline is on, and how a checkpoint's "policy" entry rebuilds
it."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from fastdqn.core.checkpoint import check_declared_size, check_module_state
from fastdqn.errors import CheckpointError


def _mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> torch.nn.Sequential:
    sizes = [in_dim, *hidden, out_dim]
    mods: list[torch.nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        mods.append(torch.nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            mods.append(torch.nn.Tanh())
    return torch.nn.Sequential(*mods)


def _run(linears: list[torch.nn.Linear], x: torch.Tensor) -> torch.Tensor:
    """The MLP of `linears` (tanh between them) as functional ops: calling each nn.Module costs
    ~15 us of hook machinery, more than its matrix product at these sizes."""
    last = len(linears) - 1
    for i, m in enumerate(linears):
        x = F.linear(x, m.weight, m.bias)
        if i < last:
            x = torch.tanh(x)
    return x


def param_count(in_dim: int, n_actions: int, hidden: tuple[int, ...], value: bool) -> int:
    """Parameters of a `PolicyNetwork` of this shape (checked against caps before building)."""
    def count(out_dim: int) -> int:
        sizes = [in_dim, *hidden, out_dim]
        return sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    return count(n_actions) + (count(1) if value else 0)


class PolicyNetwork(torch.nn.Module):
    """A softmax policy `in -> hidden (tanh)... -> n_actions logits` (no hidden layer: linear),
    and with `value` a state-value network of the same hidden sizes.

    `forward` gives the logits, so the greedy policy (their argmax) is evaluated exactly like a
    Q-network. The value network shares no layer with the policy: its loss is a squared error of
    returns in the hundreds (LunarLander), which through shared layers would swamp the policy's
    gradient, and with separate networks Adam scales each one's steps on its own.
    """

    def __init__(self, in_dim: int, n_actions: int, hidden: tuple[int, ...], value: bool) -> None:
        super().__init__()
        self.in_dim, self.n_actions, self.hidden = in_dim, n_actions, tuple(hidden)
        self.pi = _mlp(in_dim, self.hidden, n_actions)
        self.v = _mlp(in_dim, self.hidden, 1) if value else None
        # plain lists (the Sequentials own and register the layers): what `_run` iterates
        self.pi_linears = [m for m in self.pi if isinstance(m, torch.nn.Linear)]
        self.v_linears = [m for m in self.v if isinstance(m, torch.nn.Linear)] if value else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.pi_linears, x)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.v_linears, x).squeeze(1)

    def init(self, generator: torch.Generator) -> PolicyNetwork:
        """torch.nn.Linear's default init (uniform +-1/sqrt(fan_in)), from `generator`."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, torch.nn.Linear):
                    bound = 1.0 / math.sqrt(m.in_features)
                    m.weight.uniform_(-bound, bound, generator=generator)
                    m.bias.uniform_(-bound, bound, generator=generator)
        return self

    def spec(self) -> dict:
        """The checkpoint's "net" entry: what `policy_network_of` rebuilds it from."""
        return {"kind": "policy", "in_dim": self.in_dim, "n_actions": self.n_actions,
                "hidden": list(self.hidden), "value": self.v is not None}


def policy_network_of(path: str | Path, spec: object) -> PolicyNetwork:
    """The network a checkpoint's "net" entry declares, every size checked before it is built."""
    def size(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    hidden = spec.get("hidden") if isinstance(spec, dict) else None
    if (not isinstance(spec, dict) or not size(spec.get("in_dim")) or not size(spec.get("n_actions"))
            or not isinstance(hidden, (list, tuple)) or not all(size(h) for h in hidden)
            or not isinstance(spec.get("value"), bool)):
        raise CheckpointError(f"{path} lacks fields a fastdqn checkpoint has; it is damaged or "
                              "from another program")
    in_dim, n_actions, value = spec["in_dim"], spec["n_actions"], spec["value"]
    check_declared_size(path, in_dim, hidden, n_actions,
                        lambda: param_count(in_dim, n_actions, tuple(hidden), value))
    return PolicyNetwork(in_dim, n_actions, tuple(hidden), value)


def load_weights(path: str | Path, net: PolicyNetwork, weights: object) -> None:
    """Copy a checkpoint's weights into `net`: the same names, shapes and dtype, all finite (a
    NaN would play one action everywhere and report that as the policy's score), or a one-line
    error."""
    want = net.state_dict()
    if (not isinstance(weights, dict) or set(weights) != set(want)
            or any(not torch.is_tensor(weights[k]) or weights[k].shape != want[k].shape
                   for k in want)):
        raise CheckpointError(f"{path}: its weights do not match its network shape; "
                              "the file is damaged")
    check_module_state(path, weights, net, "learner.weights")
    net.load_state_dict(weights)


def module_from_checkpoint(path: str | Path, ckpt: dict) -> PolicyNetwork:
    """The trained policy of a checkpoint, its sizes checked before it is built and its weights
    before they are copied. A missing field raises KeyError (TypeError where an entry is not a
    dict): the caller reports the file as damaged."""
    module = policy_network_of(path, ckpt["net"])
    load_weights(path, module, ckpt["learner"]["weights"])
    return module
