"""The resume checks PQN and REINFORCE share: each trains one torch module with one torch
optimizer and its own generators, and saves them under the same checkpoint layout."""

from __future__ import annotations

from pathlib import Path

import torch

from fastdqn.core.checkpoint import (
    check_count,
    check_generator_state,
    check_module_state,
    check_optimizer_state,
)


def check_learner_state(path: str | Path, ckpt: dict, net: torch.nn.Module, what: str,
                        params: list[torch.Tensor], keys: tuple[str, str],
                        generators: dict[str, torch.Generator]) -> None:
    """A checkpoint's learner state as `load_state_dict` copies it: the weights of `net` (a
    `what`) under learner.<keys[0]>, the optimizer state of `params`, the update count under
    learner.<keys[1]>, and each generator's state under rng.<name>. Checked before anything is
    copied: a wrong value would fail (or a NaN diverge) only after the run dir was written to."""
    weights, count = keys
    learner = ckpt.get("learner") if isinstance(ckpt.get("learner"), dict) else {}
    check_module_state(path, learner.get(weights), net, f"learner.{weights}", what)
    check_optimizer_state(path, learner.get("optimizer"), params)
    check_count(path, f"learner.{count}", learner.get(count), "updates")
    rng = ckpt.get("rng") if isinstance(ckpt.get("rng"), dict) else {}
    for name, generator in generators.items():
        check_generator_state(path, f"rng.{name}", rng.get(name), generator)
