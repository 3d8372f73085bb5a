"""Value heads: what a Q-network's outputs per action mean, and the one Q every caller reads.

A head has `atoms` outputs per action (dueling: plus `atoms` for V). The kinds, one entry each
in `HEADS`:
- none: one output per action, Q itself;
- c51 (Bellemare et al. 2017): logits of a categorical distribution on a fixed support of
  `atoms` evenly spaced values v_min..v_max; Q = sum_j softmax(logits)_j z_j;
- qr (Dabney et al. 2018): `atoms` quantiles at the levels (2i + 1) / 2N; Q = their mean.

Q is the distribution's mean for every kind, so acting, double-DQN action selection, evaluation
and `fastdqn eval` call the network's `forward` (Q) as they always have; the learner's loss
(learners/losses/) reads the distribution, `dist`. Dueling (Wang et al. 2016) works over
atoms: V [atoms] and A [actions, atoms] from one last layer, dist = V + A - mean_a(A), then the
head's own Q (C51 then applies its softmax per action, as Rainbow does).

A new head is one entry here (its Q of the distribution and its default atoms) plus its loss,
one file in learners/losses/ and its entry there.

`HeadSpec` is what a network and its checkpoint hold of the head (plus noisy layers, nets/noisy.py,
which are a property of the layers, not of what the outputs mean). A plain head (none, no
noise) writes nothing into a checkpoint's "net" entry, so files from before heads rebuild as they
were.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastdqn.config.limits import MAX_ATOMS
from fastdqn.errors import CheckpointError


@dataclass(frozen=True)
class ValueKind:
    """One kind of value head: its name, default atoms, whether it has a fixed support, and Q
    of its per-action distribution [B, A, N] (with the support, for C51)."""

    name: str
    default_atoms: int
    has_support: bool
    q: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def _q_scalar(dist: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
    return dist.squeeze(2)


def _q_categorical(dist: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
    return (torch.softmax(dist, 2) * support).sum(2)


def _q_quantiles(dist: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
    return dist.mean(2)


HEADS: dict[str, ValueKind] = {k.name: k for k in (
    ValueKind("none", 1, False, _q_scalar),
    ValueKind("c51", 51, True, _q_categorical),
    ValueKind("qr", 200, False, _q_quantiles),
)}


@dataclass(frozen=True)
class HeadSpec:
    """A network's head: its value kind, atoms per action, C51's support, and noisy layers."""

    distributional: str = "none"
    atoms: int = 1
    v_min: float = 0.0
    v_max: float = 0.0
    noisy: bool = False

    @property
    def plain(self) -> bool:
        """One Q per action from plain linear layers: the head fastdqn had before heads."""
        return self.distributional == "none" and not self.noisy

    @property
    def kind(self) -> ValueKind:
        return HEADS[self.distributional]

    def support(self, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """C51's atoms z_j, v_min..v_max evenly spaced (None for heads without a support)."""
        if not self.kind.has_support:
            return None
        return torch.linspace(self.v_min, self.v_max, self.atoms, device=device)

    def to_spec(self) -> dict:
        """The checkpoint's "head" entry (a plain head has none: see `spec_entry`)."""
        out: dict = {"distributional": self.distributional, "atoms": self.atoms,
                     "noisy": self.noisy}
        if self.kind.has_support:
            out.update(v_min=self.v_min, v_max=self.v_max)
        return out

    def spec_entry(self) -> dict:
        """{"head": ...} to merge into a network's spec, or {} for a plain head."""
        return {} if self.plain else {"head": self.to_spec()}

    def describe(self) -> str:
        """e.g. "c51 head, 51 atoms on [-100, 100], noisy" (summary.json's route)."""
        parts = []
        if self.distributional != "none":
            what = f"{self.distributional} head, {self.atoms} atoms"
            if self.kind.has_support:
                what += f" on [{self.v_min:g}, {self.v_max:g}]"
            parts.append(what)
        if self.noisy:
            parts.append("noisy layers")
        return ", ".join(parts) or "plain head"


def head_of(distributional: str, atoms: int, support: tuple[float, float] | None,
            noisy: bool) -> HeadSpec:
    """The head for these settings: --atoms 0 is the kind's own default; `support` is C51's
    (v_min, v_max), resolved by the caller."""
    kind = HEADS[distributional]
    n = atoms or kind.default_atoms
    lo, hi = support if kind.has_support and support is not None else (0.0, 0.0)
    return HeadSpec(distributional, n, float(lo), float(hi), bool(noisy))


def head_from_spec(path: str | os.PathLike, spec: object) -> HeadSpec:
    """The head a checkpoint's "net" entry declares, checked (atoms capped, a finite ascending
    support) before anything is sized by it; a plain head where it declares none."""
    head = spec.get("head") if isinstance(spec, dict) else None
    if head is None:
        return HeadSpec()
    bad = CheckpointError(f"{path} declares a value head without a valid kind (none, c51, qr), "
                          f"atoms (1..{MAX_ATOMS}), noisy flag and, for c51, a finite "
                          "v_min < v_max; it is damaged or from another program")
    if not isinstance(head, dict):
        raise bad
    kind, atoms, noisy = head.get("distributional"), head.get("atoms"), head.get("noisy")
    if (not isinstance(kind, str) or kind not in HEADS or not isinstance(noisy, bool)
            or not isinstance(atoms, int) or isinstance(atoms, bool)
            or not 1 <= atoms <= MAX_ATOMS or (kind == "none") != (atoms == 1)
            or (kind != "none" and atoms < 2)):
        raise bad
    lo, hi = 0.0, 0.0
    if HEADS[kind].has_support:
        lo, hi = head.get("v_min"), head.get("v_max")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in (lo, hi)) or not lo < hi:
            raise bad
    return HeadSpec(kind, atoms, float(lo), float(hi), noisy)


def check_head(path: str | os.PathLike, saved: object, want: HeadSpec) -> None:
    """A resumed checkpoint's head against this run's: the flags that would match it, named."""
    have = head_from_spec(path, saved)
    if have.distributional != want.distributional:
        raise CheckpointError(f"{path} was trained with --distributional {have.distributional}; "
                              f"pass --distributional {have.distributional} to resume it")
    if have.noisy != want.noisy:
        flag = "--noisy" if have.noisy else "--no-noisy"
        raise CheckpointError(f"{path} was trained with{'' if have.noisy else 'out'} noisy "
                              f"layers; pass {flag} to resume it")
    if have.atoms != want.atoms:
        raise CheckpointError(f"{path} has {have.atoms} atoms per action; pass --atoms "
                              f"{have.atoms} to resume it")
    if (have.v_min, have.v_max) != (want.v_min, want.v_max):
        raise CheckpointError(f"{path} has the support [{have.v_min:g}, {have.v_max:g}]; pass "
                              f"--v-min {have.v_min!r} --v-max {have.v_max!r} to resume it")


class ValueOutputs(torch.nn.Module):
    """The head's arithmetic on a network's last layer outputs [B, (A + dueling) * N]: the
    distribution [B, A, N] (dueling over atoms) and Q [B, A]. No parameters; C51's support is a
    buffer that is not saved (the spec holds it), so it follows the module to its device."""

    def __init__(self, head: HeadSpec, n_actions: int, dueling: bool) -> None:
        super().__init__()
        self.head, self.n_actions, self.dueling = head, int(n_actions), bool(dueling)
        self.kind = head.kind
        self.register_buffer("support", head.support(), persistent=False)

    @property
    def n_out(self) -> int:
        """Outputs of the last layer: atoms per action, and per V when dueling."""
        return (self.n_actions + int(self.dueling)) * self.head.atoms

    def dist(self, out: torch.Tensor) -> torch.Tensor:
        """[B, A, N]: per action, the head's atoms (C51's logits, QR's quantiles, or Q)."""
        out = out.reshape(out.shape[0], -1, self.head.atoms)
        if not self.dueling:
            return out
        adv = out[:, 1:]
        return adv - adv.mean(1, keepdim=True) + out[:, :1]

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        """Q [B, A]: the mean of each action's distribution."""
        return self.kind.q(self.dist(out), self.support)
