"""What a checkpoint must be before a resumed run continues from it, beyond what its agent
checks: the same algorithm, env and network sizes as this run, its counters (the run's progress,
from which summary.json is written) and the episode starts the env workers restart from. A file
fastdqn reads is data: a damaged or crafted one is refused in one line before the run starts."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from fastdqn.algos.contract import Counters
from fastdqn.algos.registry import ALGOS
from fastdqn.config.settings import Config
from fastdqn.core.checkpoint import (
    MAX_COUNT,
    check_declared_size,
    check_generator_state,
    is_count,
    is_whole,
)
from fastdqn.envs.make import bit_generator_class
from fastdqn.errors import CheckpointError
from fastdqn.nets.kinds import known_kind
from fastdqn.nets.mlp import network_of


def check_compatible(ckpt: dict, cfg: Config, obs_shape: tuple, n_actions: int,
                     path: Path) -> None:
    """A checkpoint must come from the same algorithm and env as the run resuming it (the
    agent checks its own network and replay)."""
    missing = [k for k in ("config", "env", "counters", "rng") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is damaged or from another "
                              "program")
    if ckpt.get("algo", "dqn") != cfg.algo:
        raise CheckpointError(f"{path} is a {ckpt.get('algo')} run, not --algo {cfg.algo}; "
                              f"pass --algo {ckpt.get('algo')} or another checkpoint")
    env = ckpt["env"] if isinstance(ckpt["env"], dict) else {}
    if env.get("id") != cfg.env_id:
        raise CheckpointError(f"{path} is from env {env.get('id')!r}, not {cfg.env_id!r}; "
                              "pass the matching --env or another checkpoint")
    if tuple(env.get("obs_shape", ())) != tuple(obs_shape) or env.get("n_actions") != n_actions:
        raise CheckpointError(f"{path} was trained on other spaces than {cfg.env_id} has now")
    net = ckpt.get("net")
    kind = known_kind(net)
    if isinstance(net, dict) and kind is not None and kind.sized_by_hidden:
        # sized before anything allocates: the resumed settings come from the same file
        declared = network_of(path, {k: net.get(k) for k in ("in_dim", "n_actions", "hidden")}
                              | {"dueling": net.get("dueling", False)})
        if declared.hidden != tuple(cfg.hidden):
            raise CheckpointError(f"{path} has hidden layers {list(declared.hidden)}, "
                                  f"not {list(cfg.hidden)}; pass --hidden to match")
    hidden = getattr(cfg, ALGOS[cfg.algo].hidden_field)
    sizes = [int(np.prod(obs_shape)), *hidden, n_actions + 1]  # the settings' own network,
    check_declared_size(path, sizes[0], hidden, n_actions,  # capped as the file's "net" is
                        lambda: sum(a * b + b for a, b in zip(sizes, sizes[1:])))
    if ckpt.get("env_starts") is not None:
        check_env_starts(path, ckpt["env_starts"])
    rng = ckpt["rng"] if isinstance(ckpt["rng"], dict) else {}
    check_generator_state(path, "rng.torch", rng.get("torch"), torch.default_generator)
    saved_every = ckpt["config"].get("train_every") if isinstance(ckpt["config"], dict) else None
    check_counters(path, ckpt["counters"],
                   saved_every if is_whole(saved_every, 1)
                   else cfg.train_every)


def check_counters(path: Path, counters: object, train_every: int) -> None:
    """The counters resume continues from: known names, whole numbers, one entry per episode,
    and `due` below the saving run's --train-every, as its saves leave it (due sizes the next
    block of sampled batches: 10^12 from a file would be a terabyte of indices)."""
    names = {f.name for f in fields(Counters)}
    if not isinstance(counters, dict) or not names - {"best_step"} <= set(counters) <= names:
        # every fastdqn wrote them all (best_step came later): a missing one would silently
        # restart its count from zero under the trained weights
        raise CheckpointError(f"{path}: its counters are not fastdqn's; the file is damaged or "
                              "crafted")
    c = Counters(**counters)
    whole = ("step", "iteration", "episodes", "due", "next_eval", "next_checkpoint", "next_log")
    problem = None
    if not all(type(getattr(c, n)) is int for n in whole):
        problem = "a count is not a whole number"
    elif not all(isinstance(v, list) for v in (c.returns, c.lengths, c.end_steps, c.evals)):
        problem = "an episode list is not a list"
    elif not c.episodes == len(c.returns) == len(c.lengths) == len(c.end_steps):
        problem = (f"{c.episodes} episodes but {len(c.returns)} returns, {len(c.lengths)} "
                   f"lengths and {len(c.end_steps)} end steps")
    elif not 0 <= c.due < train_every:
        problem = f"due {c.due}, not in [0, {train_every}) as --train-every {train_every} leaves it"
    else:
        problem = _counts_problem(c)
    if problem:
        raise CheckpointError(f"{path}: its counters are inconsistent ({problem}); the file is "
                              "damaged or crafted")


def _counts_problem(c: Counters) -> str | None:
    """What in the counters' values no run leaves (their types are checked before), or None:
    negative counts, episodes ending after the step count or out of order, returns that are
    not finite numbers, evaluations that are not the records summary.json is written from."""
    for name in ("step", "iteration", "episodes", "next_eval", "next_checkpoint", "next_log"):
        if getattr(c, name) < 0:
            return f"{name} {getattr(c, name)} is negative"
        if not is_count(getattr(c, name)):
            return f"{name} {getattr(c, name)} is beyond any run (over {MAX_COUNT:,d})"
    if not is_count(c.best_step, -1):
        return f"best_step {str(c.best_step)[:20]} is not a step"
    for name in ("wall_time", "best_eval"):
        v = getattr(c, name)
        if not (type(v) in (int, float) and (math.isfinite(v) or v == -math.inf)
                and (name == "best_eval" or v >= 0)):
            return f"{name} {str(v)[:20]} is not a number a run records"
    if not all(type(r) in (int, float) and math.isfinite(r) for r in c.returns):
        return "a return is not a finite number"
    if not all(is_count(n, 1) for n in c.lengths):
        return "an episode length is not a whole number >= 1"
    if not (all(is_count(s) for s in c.end_steps)
            and all(a <= b for a, b in zip(c.end_steps, c.end_steps[1:]))
            and all(s <= c.step for s in c.end_steps[-1:])):
        return f"the episodes' end steps are not in order up to step {c.step}"
    if not all(isinstance(e, dict) and is_count(e.get("step")) and _plain(e) for e in c.evals):
        return "an evaluation record is not one a run writes"
    return None


def _plain(value: object) -> bool:
    """JSON data (what summary.json is written from): str-keyed dicts, lists, str, numbers,
    bools and None; tensors, bytes or sets would only fail when the run writes its summary."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if type(value) is float:  # json.dumps would write NaN or Infinity, which JSON has not
        return math.isfinite(value)
    return value is None or type(value) in (str, int, bool)


def check_env_starts(path: Path, starts: object) -> None:
    """Each saved episode start is a seed or a numpy bit generator state, whose class the env
    workers look up by name and call: the name must be a bit generator's."""
    for i, start in enumerate(starts if isinstance(starts, list) else [None]):
        seed = start.get("seed") if isinstance(start, dict) else "?"
        rng = start.get("rng") if isinstance(start, dict) else None
        name = rng.get("bit_generator") if isinstance(rng, dict) else None
        if isinstance(rng, dict) and bit_generator_class(name) is None:
            raise CheckpointError(f"{path}: env_starts[{i}] names bit generator "
                                  f"{repr(name)[:60]}, which numpy does not have; the file is "
                                  "damaged or crafted")
        if not ((seed is None or is_whole(seed)) and (rng is None or isinstance(rng, dict))
                and (seed, rng) != (None, None) and (rng is None or _bit_generator_ok(rng))):
            raise CheckpointError(f"{path}: env_starts[{i}] is not an episode start (a seed or a "
                                  "bit generator state); the file is damaged or crafted")


def _bit_generator_ok(state: dict) -> bool:
    """numpy takes `state` as its bit generator's state (tried here on a scratch generator, so
    that an env worker never fails on it after the run has started)."""
    try:
        bit_generator = bit_generator_class(state.get("bit_generator"))()
        bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError):
        return False
    return True
