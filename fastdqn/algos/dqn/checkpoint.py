"""What a DQN checkpoint must hold before a resumed run trusts it: its network and replay of the
shape this run builds, and every value the learner steps index with in range. A file fastdqn
reads is data: these checks run before anything in it is copied into the agent."""

from __future__ import annotations

from pathlib import Path

import torch

from fastdqn.algos.dqn.agent import DQN
from fastdqn.config.settings import Config
from fastdqn.core.checkpoint import (
    DAMAGED,
    check_count,
    check_generator_state,
    check_optimizer_state,
    is_count,
    is_whole,
)
from fastdqn.errors import CheckpointError
from fastdqn.learners.reference import ReferenceLearner
from fastdqn.nets.heads import check_head
from fastdqn.nets.kinds import FLAT, kind_of
from fastdqn.nets.mlp import network_of
from fastdqn.replay.frames import FrameReplay
from fastdqn.replay.frames import check_state as check_frame_state
from fastdqn.replay.rows import row_values_problem


def check_checkpoint(agent: DQN, ckpt: dict, path) -> None:
    """A checkpoint must come from the same network shape and replay as this run, every
    tensor it restores must have the shape of the one it is copied into (copy_ would
    broadcast a wrong one, or fail with a traceback), and every value the learner steps
    index with or trust must be in range (actions, done flags, discounts, priorities,
    counts, generator states; finite rewards, observations and weights): the native and
    Numba steps write where a saved action points."""
    if "net" not in ckpt or "learner" not in ckpt:
        raise CheckpointError(f"{path} lacks its network; it is damaged or from another "
                              "program")
    # first: the replay decides the learner route, so the learner state's layout too
    replay = ckpt.get("replay", "rows")  # fastdqn before frame replay: rows
    if replay != ("frames" if agent.frames else "rows"):
        on = replay == "frames"
        raise CheckpointError(f"{path} was trained with{'' if on else 'out'} frame replay; "
                              f"pass --frame-replay {'on' if on else 'off'} to resume it")
    net = ckpt["net"] if isinstance(ckpt["net"], dict) else {}
    learner = ckpt["learner"] if isinstance(ckpt["learner"], dict) else {}
    _check_network(agent, net, learner, path)
    if isinstance(agent.learner, ReferenceLearner):
        check_optimizer_state(path, learner.get("optimizer"), agent.learner.params)
    saved_cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    rows = _check_replay(agent, ckpt, saved_cfg, path)
    rngs = ckpt.get("rng") if isinstance(ckpt.get("rng"), dict) else {}
    rng = rngs.get("sampler")
    actors = saved_cfg.get("actors")
    if isinstance(rng, dict) and not agent.prioritized and is_whole(actors, 1):
        raise CheckpointError(f"{path} is an Ape-X run ({actors} actors), and a checkpoint "
                              "never decides where a run connects: pass --actors "
                              f"{actors} (and --ray-address for a cluster) to resume it on "
                              "Ray, or --prioritized to resume it on this machine alone")
    if isinstance(rng, dict) != agent.prioritized:
        flag = "--prioritized" if isinstance(rng, dict) else "--no-prioritized"
        raise CheckpointError(f"{path} was trained with{'' if isinstance(rng, dict) else 'out'}"
                              f" prioritized replay; pass {flag} to match")
    _check_sampler(path, rng, agent.cfg, rows)
    check_generator_state(path, "rng.act", rngs.get("act"), agent.act_gen)
    if "per" in rngs:
        check_generator_state(path, "rng.per", rngs["per"], agent.learner.per_generator)
    noise = agent.noise_generators()  # noisy layers: the online and target networks' streams
    if noise and not (isinstance(rngs.get("noise"), list) and len(rngs["noise"]) == len(noise)):
        raise CheckpointError(f"{path} lacks the noise generators of its noisy layers "
                              f"(rng.noise); {DAMAGED}")
    for i, gen in enumerate(noise):
        check_generator_state(path, f"rng.noise[{i}]", rngs["noise"][i], gen)
    check_count(path, "learner.steps", learner.get("steps"), "learner steps")


def _check_replay(agent: DQN, ckpt: dict, saved_cfg: dict, path) -> int | None:
    """The saved replay: its capacity this run's --buffer-size (or the flag named), its rows
    of this run's layout and in range; returns how many rows it holds (None: not saved)."""
    buffer = ckpt.get("buffer", {})
    saved = buffer.get("capacity", agent.cfg.buffer_size) if isinstance(buffer, dict) else None
    if saved != agent.cfg.buffer_size and (not is_count(saved, 1)
                                          or saved != saved_cfg.get("buffer_size")):
        # not the size its own settings name: no --buffer-size would resume it
        raise CheckpointError(f"{path}: its replay buffer's capacity {str(saved)[:20]} is not "
                              f"the --buffer-size its settings name; {DAMAGED}")
    if saved != agent.cfg.buffer_size:
        raise CheckpointError(f"{path} holds a replay buffer of capacity {saved}, not "
                              f"--buffer-size {agent.cfg.buffer_size}; resume with "
                              f"--buffer-size {saved}")
    if "buffer" in ckpt and isinstance(agent.buffer, FrameReplay):
        problem = check_frame_state(buffer, agent.cfg.buffer_size, agent.row_shape,
                                    agent.buffer.obs_dtype)
        if problem:
            raise CheckpointError(f"{path}: {problem}; the file is damaged")
        observations = {"frames": agent.buffer.obs_dtype}
    elif "buffer" in ckpt:
        _check_buffer(path, buffer, agent.cfg.buffer_size, agent.row_shape)
        observations = {"obs": agent.buffer.obs.dtype, "next_obs": agent.buffer.obs.dtype}
    if "buffer" in ckpt:
        problem = row_values_problem(buffer, agent.net.n_actions, observations)
        if problem:
            raise CheckpointError(f"{path}: {problem}; {DAMAGED}")
    return buffer["size"] if "buffer" in ckpt else None


def _check_network(agent: DQN, net: dict, learner: dict, path) -> None:
    """The saved network against this run's: its kind, its sizes (the flags that would match
    them, named by the kind's `check_resume`), then the tensors the learner restores, as the
    route that wrote them laid them out."""
    want = agent.net_spec()
    check_head(path, net, agent.head)  # before the kind: a head decides mlp or mlp_module
    if kind_of(net) != want["kind"]:
        raise CheckpointError(f"{path} holds a {kind_of(net)} network, this run a "
                              f"{want['kind']} one; resume with the same network")
    kind = agent.net_kind
    kind.check_resume(path, net, want, agent.cfg.env_id)
    shape = _check_flat_params(agent, net, learner, path) if kind.flat_net else None
    if FLAT in kind.routes and not kind.flat_net:
        # a module whose flat route trains only its head (the RBF model): saved params say so
        flat = isinstance(learner.get("params"), torch.Tensor)
        if flat != (agent.rbf is not None):
            was, flag = ("the flat", "--learner auto") if flat else ("the reference",
                                                                   "--learner reference")
            raise CheckpointError(f"{path} was trained on {was} learner route; pass {flag} "
                                  "to resume it")
    if isinstance(agent.learner, ReferenceLearner):
        saved = learner.get("optimizer_kind", "adam")
        if saved != agent.learner.optimizer_kind:
            raise CheckpointError(f"{path} was trained with --optimizer {str(saved)[:20]}; pass "
                                  f"--optimizer {str(saved)[:20]} to resume it")
        for where in ("online", "target"):
            kind.check_state(path, learner.get(where), agent.learner.online, f"learner.{where}")
    elif shape is None:  # the flat route's RBF model: its features, then its head
        kind.check_state(path, learner.get("online"), agent.rbf, "learner.online")
        _check_flat_learner(path, learner, (agent.net.num_params,))
    else:
        _check_flat_learner(path, learner, shape)


def _check_flat_params(agent: DQN, net: dict, learner: dict, path) -> tuple:
    """The flat MLP's saved parameters: as many as its spec (sized and capped by `network_of`)
    lays out, for this env's spaces; returns their shape."""
    flat = network_of(path, net)
    params = learner.get("params")
    if (not isinstance(params, torch.Tensor) or params.shape != (flat.num_params,)
            or (flat.in_dim, flat.n_actions) != (agent.net.in_dim, agent.net.n_actions)):
        raise CheckpointError(f"{path}: its parameters do not fit its network shape; the "
                              "file is damaged")
    return params.shape


def _check_flat_learner(path: Path, learner: dict, shape: tuple) -> None:
    """The flat learner's target and Adam moments have the parameters' shape, its step count
    is a scalar; all are finite float32 (copy_ would cast any dtype, and a NaN would only show
    as a divergence after the run dir was written to), the second moments and the step count
    non-negative (Adam takes their square roots and powers)."""
    opt = learner.get("optimizer") if isinstance(learner.get("optimizer"), dict) else {}
    tensors = {"learner.params": (learner.get("params"), shape),
               "learner.target": (learner.get("target"), shape),
               "learner.optimizer.exp_avg": (opt.get("exp_avg"), shape),
               "learner.optimizer.exp_avg_sq": (opt.get("exp_avg_sq"), shape),
               "learner.optimizer.step": (opt.get("step"), ())}
    _check_shapes(path, tensors)
    for name, (t, _) in tensors.items():
        nonnegative = name.endswith(("exp_avg_sq", "step"))
        if (t.dtype != torch.float32 or not bool(torch.isfinite(t).all())
                or (nonnegative and bool((t < 0).any()))):
            what = "non-negative " if nonnegative else ""
            raise CheckpointError(f"{path}: {name} is not a tensor of finite {what}float32 "
                                  f"values; {DAMAGED}")


def _check_sampler(path: Path, state: object, cfg: Config, rows: int | None) -> None:
    """The saved sampler state: the xoroshiro words of the uniform or CPU prioritized sampler,
    and the priorities, one per saved row (none without a saved buffer), finite and positive (a
    row of priority 0 is never drawn, and a sum of 0 cannot be sampled), raised to this run's
    --per-alpha."""
    # the CPU samplers' xoroshiro words (TorchPrioritized keeps its generator in rng.per)
    saved = not isinstance(state, dict) or "rng" in state
    words = state.get("rng") if isinstance(state, dict) else state
    if saved and not (isinstance(words, list) and len(words) == 2 and any(words)
                      and all(is_whole(w) and w < 2**64 for w in words)):
        raise CheckpointError(f"{path}: rng.sampler does not hold the sampler's two nonzero 64-bit "
                              f"words; {DAMAGED}")
    if not isinstance(state, dict):
        return
    if state.get("capacity") != cfg.buffer_size:
        raise CheckpointError(f"{path}: rng.sampler's priorities are for a buffer of "
                              f"{repr(state.get('capacity'))[:20]} rows, not {cfg.buffer_size}; "
                              f"{DAMAGED}")
    alpha = state.get("alpha")
    if type(alpha) is not float or not 0 <= alpha <= 1:
        raise CheckpointError(f"{path}: rng.sampler.alpha is {repr(alpha)[:20]}, not a number in "
                              f"[0, 1]; {DAMAGED}")
    if alpha != cfg.per_alpha:
        raise CheckpointError(f"{path} was trained with --per-alpha {alpha:g}; pass --per-alpha "
                              f"{alpha:g} to resume it")
    # a priority is |TD error| + eps of a float32 step, and a leaf that to a power alpha <= 1:
    # neither exceeds float32's largest, so a full tree's total stays finite (rows of 1e308
    # would overflow it, and sampling would fail mid-run)
    most = float(torch.finfo(torch.float32).max)
    top = state.get("max_priority")
    if type(top) is not float or not 0 < top < float("inf"):
        raise CheckpointError(f"{path}: rng.sampler.max_priority is {repr(top)[:20]}, not a "
                              f"finite positive number; {DAMAGED}")
    if top > most:
        raise CheckpointError(f"{path}: rng.sampler.max_priority is {top:.3g}, more than a "
                              f"float32 TD error can reach ({most:.3g}); {DAMAGED}")
    prio = state.get("priorities")
    if not (isinstance(prio, torch.Tensor) and prio.dtype == torch.float64 and prio.dim() == 1):
        raise CheckpointError(f"{path}: rng.sampler.priorities is not a float64 vector; {DAMAGED}")
    if rows is not None and len(prio) != rows:
        raise CheckpointError(f"{path}: rng.sampler holds {len(prio)} priorities for the "
                              f"{rows} rows of its buffer; {DAMAGED}")
    if not bool(torch.isfinite(prio).all()) or not bool((prio > 0).all()):
        raise CheckpointError(f"{path}: rng.sampler.priorities holds a value that is not finite "
                              f"and positive; {DAMAGED}")
    if bool((prio > most).any()):
        raise CheckpointError(f"{path}: rng.sampler.priorities holds {float(prio.max()):.3g}, "
                              f"more than a float32 TD error can reach ({most:.3g}); {DAMAGED}")


def _check_shapes(path: Path, tensors: dict[str, tuple[object, tuple]]) -> None:
    """Each named tensor exists and has its expected shape; a one-line CheckpointError if not."""
    for name, (t, shape) in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: {name} is missing; the file is damaged")
        if tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{path}: {name} has shape {list(t.shape)}, not {list(shape)}; "
                                  "the file is damaged")


def _check_buffer(path: Path, buffer: dict, capacity: int, obs_shape: tuple) -> None:
    """A --save-buffer checkpoint's rows: as many as it says it holds, each of the env's shape,
    written from row 0 on (the ring's position is its size until it is full)."""
    size, pos = buffer.get("size"), buffer.get("pos")
    if not (is_whole(size) and is_whole(pos) and size <= capacity and pos < capacity
            and (size == capacity or pos == size)):
        raise CheckpointError(f"{path}: its replay buffer's size {size!r} and position {pos!r} do "
                              f"not fit its capacity {capacity}; the file is damaged")
    for name, shape in (("obs", (size, *obs_shape)), ("next_obs", (size, *obs_shape)),
                        ("actions", (size,)), ("rewards", (size,)), ("dones", (size,)),
                        ("discounts", (size,))):
        if name == "discounts" and name not in buffer:
            continue  # a fastdqn 0.1 buffer: refused with its own message when loaded
        t = buffer.get(name)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            held = f"shape {list(t.shape)}" if isinstance(t, torch.Tensor) else "no tensor"
            raise CheckpointError(f"{path}: its replay buffer says it holds {size} rows, but "
                                  f"buffer.{name} has {held}, not {list(shape)}; the file is "
                                  "damaged")
