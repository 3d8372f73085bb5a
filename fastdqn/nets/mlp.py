"""The MLP Q-network, stored as one flat parameter vector with a hand-written backward pass.

Why flat: Adam, gradient clipping and the target update each become one kernel over one
contiguous tensor instead of a loop (or a foreach) over 2L tensors. Why a hand-written backward:
for a small MLP, autograd's per-op bookkeeping costs more than the matrix products themselves on
a CPU (measured: 1.0 ms vs 0.54 ms per DQN step at 128x128, batch 128). `to_module` exports the
same weights as a plain torch module (`QNetwork`, the reference every learner route is checked
against), and the tests check the manual gradients against autograd.

Dueling (Wang et al. 2016): the last layer has n_actions + 1 outputs, [V, A_1..A_n], and
Q = V + A - mean(A). V and A are linear heads on the same last hidden layer, so they are one
matrix product here; the head and its backward are two small elementwise steps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from fastdqn.core.checkpoint import check_declared_size, check_module_state, load_online
from fastdqn.errors import CheckpointError
from fastdqn.nets.heads import HeadSpec, ValueOutputs, head_from_spec
from fastdqn.nets.noisy import NoisyLinear


@dataclass(frozen=True)
class Layer:
    w_offset: int
    b_offset: int
    fan_in: int
    fan_out: int


class MLP:
    """Layout and math of an MLP `in -> hidden... -> n_actions` with ReLU between layers
    (with `dueling`, the last layer gives [V, A] and the head combines them)."""

    def __init__(self, in_dim: int, n_actions: int, hidden: tuple[int, ...],
                 dueling: bool = False) -> None:
        self.in_dim, self.n_actions, self.hidden = in_dim, n_actions, tuple(hidden)
        self.dueling = bool(dueling)
        self.n_out = n_actions + 1 if dueling else n_actions
        sizes = [in_dim, *hidden, self.n_out]
        layers, offset = [], 0
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            layers.append(Layer(offset, offset + fan_in * fan_out, fan_in, fan_out))
            offset += fan_in * fan_out + fan_out
        self.layers: list[Layer] = layers
        self.num_params = offset

    def init(self, generator: torch.Generator) -> torch.Tensor:
        """A new flat parameter vector with torch.nn.Linear's default init (on the CPU)."""
        flat = torch.empty(self.num_params)
        for (w, b), layer in zip(self.views(flat), self.layers):
            bound = 1.0 / math.sqrt(layer.fan_in)
            w.uniform_(-bound, bound, generator=generator)
            b.uniform_(-bound, bound, generator=generator)
        return flat

    def views(self, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight [out, in], bias [out]) views into `flat`, one pair per layer."""
        out = []
        for layer in self.layers:
            w = flat[layer.w_offset: layer.b_offset].view(layer.fan_out, layer.fan_in)
            b = flat[layer.b_offset: layer.b_offset + layer.fan_out]
            out.append((w, b))
        return out

    def forward(self, views: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor
                ) -> torch.Tensor:
        """Q-values [B, n_actions] of float inputs x [B, in]."""
        return self.forward_train(views, x)[0]

    def forward_train(self, views: list[tuple[torch.Tensor, torch.Tensor]],
                      x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Q-values and the layer inputs that `backward` needs."""
        acts = [x]
        h = x
        last = len(views) - 1
        for i, (w, b) in enumerate(views):
            h = torch.addmm(b, h, w.t())
            if i < last:
                h = h.relu_()
                acts.append(h)
        return self.head(h), acts

    def head(self, out: torch.Tensor) -> torch.Tensor:
        """Q from the last layer's outputs: themselves, or V + A - mean(A) when dueling."""
        if not self.dueling:
            return out
        adv = out[:, 1:]
        return adv - adv.mean(1, keepdim=True) + out[:, :1]

    def head_backward(self, dq: torch.Tensor) -> torch.Tensor:
        """dLoss/d(last layer outputs) from dLoss/dQ: dV = sum_j dQ_j, dA = dQ - mean_j dQ_j."""
        if not self.dueling:
            return dq
        return torch.cat([dq.sum(1, keepdim=True), dq - dq.mean(1, keepdim=True)], 1)

    def backward(self, views: list[tuple[torch.Tensor, torch.Tensor]], acts: list[torch.Tensor],
                 dq: torch.Tensor, grad_views: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write dLoss/dparams into `grad_views` given dLoss/dQ `dq` (overwrites, no accumulate)."""
        d = self.head_backward(dq)
        for i in range(len(views) - 1, -1, -1):
            w, _ = views[i]
            gw, gb = grad_views[i]
            torch.mm(d.t(), acts[i], out=gw)
            torch.sum(d, 0, out=gb)
            if i > 0:
                # ReLU'(z) = 1 where the stored post-ReLU activation is positive: one fused op.
                d = torch.ops.aten.threshold_backward(torch.mm(d, w), acts[i], 0)

    def to_module(self, flat: torch.Tensor) -> torch.nn.Module:
        """The same network as a `QNetwork` module (a copy of the weights)."""
        module = QNetwork(self.in_dim, self.n_actions, self.hidden, self.dueling).to(flat.device)
        with torch.no_grad():
            for lin, (w, b) in zip(module.linears(), self.views(flat.detach())):
                lin.weight.copy_(w)
                lin.bias.copy_(b)
        return module

    def from_module(self, module: QNetwork) -> torch.Tensor:
        """The flat parameter vector of a `QNetwork` of this shape (a copy, on its device)."""
        parts = [t.detach().reshape(-1) for lin in module.linears() for t in (lin.weight, lin.bias)]
        return torch.cat(parts)

    def spec(self) -> dict:
        """The checkpoint's "net" entry: every size `network_of` rebuilds the layout from."""
        return {"kind": "mlp", "in_dim": self.in_dim, "n_actions": self.n_actions,
                "hidden": list(self.hidden), "dueling": self.dueling}


class QNetwork(torch.nn.Module):
    """The reference Q-network: Linear/ReLU layers as a plain `nn.Module` (autograd, any device).

    `body` is an `nn.Sequential`; with `dueling` its last Linear gives [V, A_1..A_n] and
    `forward` returns V + A - mean(A). The flat MLP computes the same function (tests compare).

    With a `head` other than the plain one (nets/heads.py): the last layer gives `atoms` outputs
    per action (and per V), `dist` returns them as [B, A, N] and `forward` the head's Q; with
    `head.noisy` the last two Linear layers are NoisyLinear (nets/noisy.py). That network has no
    flat layout: it is the "mlp_module" kind and trains on the reference route.
    """

    def __init__(self, in_dim: int, n_actions: int, hidden: tuple[int, ...],
                 dueling: bool = False, head: HeadSpec | None = None) -> None:
        super().__init__()
        self.dueling = dueling
        self.in_dim, self.n_actions, self.hidden = int(in_dim), int(n_actions), tuple(hidden)
        self.head_spec = head or HeadSpec()
        self.value = ValueOutputs(self.head_spec, n_actions, dueling)
        sizes = [in_dim, *hidden, self.value.n_out]
        first_noisy = len(sizes) - 3 if self.head_spec.noisy else len(sizes)
        mods: list[torch.nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
            mods.append(NoisyLinear(fan_in, fan_out) if i >= first_noisy
                        else torch.nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                mods.append(torch.nn.ReLU())
        self.body = torch.nn.Sequential(*mods)

    def linears(self) -> list[torch.nn.Linear | NoisyLinear]:
        return [m for m in self.body if isinstance(m, (torch.nn.Linear, NoisyLinear))]

    def dist(self, x: torch.Tensor) -> torch.Tensor:
        """The head's atoms per action [B, A, N] (N = 1 for the plain head)."""
        return self.value.dist(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(self.body(x))

    def spec(self) -> dict:
        """The "mlp_module" kind's checkpoint entry: every size, and the head."""
        return {"kind": "mlp_module", "in_dim": self.in_dim, "n_actions": self.n_actions,
                "hidden": list(self.hidden), "dueling": bool(self.dueling),
                "head": self.head_spec.to_spec()}


def module_params(in_dim: int, n_actions: int, hidden: list | tuple, dueling: bool,
                  head: HeadSpec) -> int:
    """Parameters of `QNetwork(in_dim, n_actions, hidden, dueling, head)`, counted without
    building it (a noisy layer has a sigma for each mean)."""
    n_out = (n_actions + int(dueling)) * head.atoms
    sizes = [in_dim, *hidden, n_out]
    layers = [a * b + b for a, b in zip(sizes, sizes[1:])]
    noisy = sum(layers[-2:]) if head.noisy else 0
    return sum(layers) + noisy


def module_from_checkpoint(path: str | os.PathLike, ckpt: dict) -> QNetwork:
    """The trained "mlp_module" network of a checkpoint: its sizes and head checked against the
    caps before it is built, then its online tensors against the module's."""
    spec = ckpt.get("net")
    net = network_of(path, {k: v for k, v in spec.items() if k != "head"}
                     if isinstance(spec, dict) else spec)  # sizes, types and caps of the MLP
    head = head_from_spec(path, spec)
    if head.plain:
        raise CheckpointError(f"{path} declares an mlp_module network with a plain head, which "
                              "fastdqn writes as an mlp; the file is damaged")
    check_declared_size(path, net.in_dim, net.hidden, net.n_actions,
                        lambda: module_params(net.in_dim, net.n_actions, net.hidden, net.dueling,
                                              head))
    module = QNetwork(net.in_dim, net.n_actions, net.hidden, net.dueling, head)
    return load_online(path, ckpt, module, check_module_state)


def preprocess(obs: torch.Tensor) -> torch.Tensor:
    """Observations as float32 rows for the MLP (any Box shape is flattened; uint8 scaled to [0,1])."""
    x = obs.reshape(obs.shape[0], -1)
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x if x.dtype == torch.float32 else x.float()


def network_of(path: str | os.PathLike, spec: object) -> MLP:
    """The network a checkpoint's "net" entry declares, checked before anything is sized by it.

    An MLP only lays out offsets, but every consumer then allocates num_params floats (or
    compares a tensor with it), so the declared sizes are capped here, in one place for eval
    and resume alike. Which kind the entry names is the registry's to check (nets.kinds).
    """
    def size(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    dueling = spec.get("dueling", False) if isinstance(spec, dict) else None
    hidden = spec.get("hidden") if isinstance(spec, dict) else None
    if (not isinstance(spec, dict) or not isinstance(dueling, bool)
            or not size(spec.get("in_dim")) or not size(spec.get("n_actions"))
            or not isinstance(hidden, (list, tuple)) or not all(size(h) for h in hidden)):
        raise CheckpointError(f"{path} lacks fields a fastdqn checkpoint has; it is damaged or "
                              "from another program")
    in_dim, n_actions = spec["in_dim"], spec["n_actions"]
    sizes = [in_dim, *hidden, n_actions + dueling]
    check_declared_size(path, in_dim, hidden, n_actions,
                        lambda: sum(a * b + b for a, b in zip(sizes, sizes[1:])))
    return MLP(in_dim, n_actions, tuple(hidden), dueling)


@dataclass(frozen=True)
class FlatQ:
    """A flat MLP and its parameter vector: what an "mlp" checkpoint holds and rebuilds to."""

    net: MLP
    params: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Q-values [B, n_actions] of float inputs [B, in_dim]."""
        return self.net.forward(self.net.views(self.params), x)

    def spec(self) -> dict:
        return self.net.spec()


def flat_from_checkpoint(path: str | os.PathLike, ckpt: dict) -> FlatQ:
    """The trained MLP of a checkpoint: its layout (`network_of`) and its online parameters,
    checked before anything reads them. A missing field raises KeyError (TypeError where an
    entry is not a dict): the caller reports the file as damaged."""
    net = network_of(path, ckpt["net"])
    params = ckpt["learner"]["params"]
    if not (isinstance(params, torch.Tensor) and params.shape == (net.num_params,)):
        raise CheckpointError(f"{path}: parameter count does not match its network shape; "
                              "the file is damaged")
    if params.dtype != torch.float32 or not bool(torch.isfinite(params).all()):
        # the flat MLP reads them as they are: another dtype fails mid-episode, a NaN
        # plays action 0 everywhere and reports it as the policy's score
        raise CheckpointError(f"{path}: learner.params is not a tensor of finite float32 "
                              "values; the file is damaged")
    return FlatQ(net, params)


def check_dueling(path: str | os.PathLike, saved: dict, want: dict) -> None:
    """A resumed checkpoint's dueling head must be this run's: the flag that matches it, named."""
    if bool(saved.get("dueling", False)) != want["dueling"]:
        flag = "--dueling" if saved.get("dueling") else "--no-dueling"
        raise CheckpointError(f"{path} was trained with{'' if saved.get('dueling') else 'out'}"
                              f" a dueling head; pass {flag} to match")


def check_resume(path: str | os.PathLike, saved: dict, want: dict, env_id: str) -> None:
    """A resumed checkpoint's MLP (`saved`) against the one this run builds (`want`, its spec):
    the flag that would match it, named (its sizes are checked with its parameters)."""
    if tuple(saved.get("hidden", ())) != tuple(want["hidden"]):
        raise CheckpointError(f"{path} has hidden layers {saved.get('hidden')}, "
                              f"not {want['hidden']}; pass --hidden to match")
    check_dueling(path, saved, want)
