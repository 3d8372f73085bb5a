"""`train`: settings in, a finished run out. It checks the settings and the env, prepares the
run dir (and the checkpoint of a resumed run), then hands the run's lifecycle (`run.Run`) and
an agent to the algorithm's loop (`dqn.train_dqn`, `reinforce.train_reinforce`).
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from fastdqn.algos.contract import Counters, divergence_message
from fastdqn.algos.dqn.agent import DQN
from fastdqn.algos.dqn.checkpoint import check_checkpoint as check_dqn_checkpoint
from fastdqn.algos.dqn.loop import STAGES, train_dqn
from fastdqn.algos.pqn import PQN, train_pqn
from fastdqn.algos.pqn import STAGES as PQN_STAGES
from fastdqn.algos.reinforce import STAGES as REINFORCE_STAGES
from fastdqn.algos.reinforce import Reinforce, train_reinforce
from fastdqn.config.settings import Config
from fastdqn.core.checkpoint import (
    MAX_COUNT,
    check_declared_size,
    check_generator_state,
    is_count,
    is_whole,
    load_checkpoint,
)
from fastdqn.core.device import check_fits, resolve_device, torch_dtype
from fastdqn.core.logger import StageTimer
from fastdqn.core.seeds import Purpose, generator_seed
from fastdqn.envs.atari import is_minatar, reports_life_loss
from fastdqn.envs.envpool import check_envpool
from fastdqn.envs.vector import EnvFactory, bit_generator_class, check_spaces, probe_env, zero_based
from fastdqn.envs.vector import env_factory as envs_factory
from fastdqn.errors import CheckpointError, ConfigError, TrainingDiverged
from fastdqn.learners import native
from fastdqn.nets.cnn import architecture, channels_last_of, resolve_network
from fastdqn.nets.mlp import network_of
from fastdqn.replay.frames import check_frames_fit, uses_frame_replay
from fastdqn.replay.rows import check_replay_fits
from fastdqn.runtime.run import (
    Run,
    Signals,
    TrainResult,
    default_run_dir,
    prepare_run_dir,
    remove_temp_run_files,
    resume_checkpoint,
)

__all__ = ["STAGES", "TrainResult", "TrainingDiverged", "check_compatible", "default_run_dir",
           "divergence_message", "resolve_device", "resume_checkpoint", "train"]




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
    if isinstance(net, dict) and net.get("kind", "mlp") in ("mlp", "layernorm_mlp"):
        # sized before anything allocates: the resumed settings come from the same file
        declared = network_of(path, {k: net.get(k) for k in ("in_dim", "n_actions", "hidden")}
                              | {"dueling": net.get("dueling", False)})
        if declared.hidden != tuple(cfg.hidden):
            raise CheckpointError(f"{path} has hidden layers {list(declared.hidden)}, "
                                  f"not {list(cfg.hidden)}; pass --hidden to match")
    hidden = cfg.policy_hidden if cfg.algo == "reinforce" else cfg.hidden
    sizes = [int(np.prod(obs_shape)), *hidden, n_actions + 1]  # the settings' own network,
    check_declared_size(path, sizes[0], hidden, n_actions,  # capped as the file's "net" is
                        lambda: sum(a * b + b for a, b in zip(sizes, sizes[1:])))
    if ckpt.get("env_starts") is not None:
        _check_env_starts(path, ckpt["env_starts"])
    rng = ckpt["rng"] if isinstance(ckpt["rng"], dict) else {}
    check_generator_state(path, "rng.torch", rng.get("torch"), torch.default_generator)
    saved_every = ckpt["config"].get("train_every") if isinstance(ckpt["config"], dict) else None
    _check_counters(path, ckpt["counters"],
                    saved_every if is_whole(saved_every, 1)
                    else cfg.train_every)


def _check_counters(path: Path, counters: object, train_every: int) -> None:
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


def _check_env_starts(path: Path, starts: object) -> None:
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


def check_learner_fits(cfg: Config, obs_space, n_actions: int, device: torch.device) -> None:
    """What an algorithm allocates by its settings beyond the replay (DQN's batch, PQN's
    rollout, REINFORCE's episode storage), against the memory `device` has: a one-line
    ConfigError before anything is allocated, as for the replay (check_dqn_env). A rough
    bound, there to refuse what cannot fit: --batch-size 2**30 would otherwise be tens of GB of
    activations, allocated at the first learner step."""
    in_dim = int(np.prod(obs_space.shape))
    obs_bytes = in_dim * torch_dtype(obs_space.dtype).itemsize
    width = sum(cfg.policy_hidden if cfg.algo == "reinforce" else cfg.hidden) + n_actions + 1
    if cfg.algo == "dqn":  # inputs, activations and gradients of online and target, float32
        nbytes = cfg.batch_size * 4 * (3 * in_dim + 4 * width)
        what, fix = f"a learner batch of {cfg.batch_size:,d} rows", "lower --batch-size"
        k = -(-cfg.num_envs * cfg.gradient_steps // cfg.train_every)  # batches drawn at once
        if k * cfg.batch_size * 8 > nbytes:
            what = (f"the indices of {k:,d} batches drawn at once (--num-envs x "
                    "--gradient-steps / --train-every)")
            fix = "lower --gradient-steps or --batch-size"
        nbytes += k * cfg.batch_size * 8
        if cfg.network == "rbf":  # the scaler's fit keeps every observation, float64, in RAM
            check_fits(cfg.rbf_fit_steps * in_dim * 8, torch.device("cpu"),
                       f"storing the {cfg.rbf_fit_steps:,d} observations of --rbf-fit-steps",
                       "lower --rbf-fit-steps")
    elif cfg.algo == "pqn":  # the rollout's rows, and one minibatch's activations
        steps = cfg.pqn_rollout * cfg.num_envs
        nbytes = steps * (obs_bytes + 22) + steps // cfg.pqn_minibatches * 4 * (in_dim + 4 * width)
        what, fix = (f"a PQN rollout of {cfg.pqn_rollout} x {cfg.num_envs} steps",
                     "lower --pqn-rollout or --num-envs")
    else:  # the episode storage's first 1024 rows of every env
        nbytes = 1024 * cfg.num_envs * (obs_bytes + 33)
        what, fix = f"the episode storage of {cfg.num_envs:,d} envs", "lower --num-envs"
    check_fits(nbytes, device, what, fix)


def check_dqn_env(cfg: Config, obs_space, device: torch.device, make_env: EnvFactory,
                  custom: bool = False) -> None:
    """What DQN needs of the env beyond its spaces, refused in one line before the run dir
    exists: a CNN's image (shape, size, no --hidden), an env that reports life loss for
    --life-loss-terminal on, a possible --frame-replay (not with --actors), --learner numba
    where the run would not take that route, and memory for the replay."""
    kind = "custom" if custom else resolve_network(cfg.network, obs_space)
    if cfg.network == "auto" and not custom:  # what auto picked reads the network settings
        cfg.check_network(kind, f", but --network auto trains a {kind} on {cfg.env_id}'s "
                                "observations")
    shape = tuple(obs_space.shape)
    if kind == "cnn":
        if len(shape) != 3:
            raise ConfigError(f"--network cnn needs image observations (a Box of rank 3, e.g. "
                              f"[4, 84, 84] or [10, 10, 4]); {cfg.env_id} has shape {list(shape)}: "
                              "use --network mlp")
        architecture(shape, channels_last_of(shape, is_minatar(cfg.env_id)))
    if cfg.life_loss_terminal == "on":
        env = make_env()
        try:
            lives = reports_life_loss(env)
        finally:
            env.close()
        if not lives:
            raise ConfigError(f"--life-loss-terminal on: {cfg.env_id} does not report life loss "
                              "(info[\"life_loss\"]); pass --life-loss-terminal off or auto")
    dtype = torch_dtype(obs_space.dtype)
    frames = uses_frame_replay(cfg.frame_replay, kind, shape, obs_space.dtype)
    if cfg.learner == "numba":  # a route choice this run would ignore is refused
        why = (f"device {device.type}" if device.type != "cpu"
               else f"a {kind} network trains on the reference route" if kind not in ("mlp", "rbf")
               else "the frame replay trains on the reference route" if frames
               else f"--optimizer {cfg.optimizer} trains on the reference route"
               if cfg.optimizer != "adam" else None)
        if why:
            raise ConfigError(f"--learner numba picks the flat MLP's Numba CPU step, which this "
                              f"run does not take ({why}); drop it")
    if frames and cfg.actors:
        raise ConfigError("--actors ships whole observations as rows; the frame replay is "
                          "single-machine: pass --frame-replay off (with a --buffer-size that "
                          "fits)")
    if frames:
        check_frames_fit(cfg.buffer_size, shape, dtype, device, cfg.num_envs, cfg.n_step)
    elif kind != "rbf":
        check_replay_fits(cfg.buffer_size, shape, dtype, device)


def train(cfg: Config | None = None, env_factory: EnvFactory | None = None,
          timer: StageTimer | None = None, eval_env_factory: EnvFactory | None = None,
          q_network: torch.nn.Module | None = None, **overrides) -> TrainResult:
    """Train an agent as `cfg` says and return the run's summary and greedy policy.

    `env_factory` replaces `gymnasium.make(cfg.env_id)` for the training envs (tests use it for
    scripted envs); evaluations, and so "solved", run on `eval_env_factory`, by default the
    same factory: a run is judged on what it was trained on. `q_network` is your own
    `torch.nn.Module` (float observations in, one Q-value per action out), trained on the
    reference route (--algo dqn only). `timer` receives the per-stage timings (the benchmark
    passes a syncing one); `overrides` are Config fields, applied on top of `cfg`.
    """
    from fastdqn.config.settings import make_config

    if cfg is None or overrides:
        base = cfg.to_dict() if cfg is not None else {}
        cfg = make_config(**{**base, **overrides})
    cfg.validate()
    if q_network is not None and cfg.algo != "dqn":
        layers = "--policy-hidden" if cfg.algo == "reinforce" else "--hidden"
        raise ConfigError(f"q_network trains with --algo dqn only; {cfg.algo} builds its own "
                          f"network (set its layers with {layers})")
    if q_network is not None:  # its shape is yours: fastdqn's network settings would be ignored
        cfg.check_network("custom")
    device = resolve_device(cfg.device)
    if env_factory is None:
        obs_space, act_space, threshold = probe_env(cfg.env_id)
    else:
        probe = zero_based(env_factory())
        try:
            obs_space, act_space = probe.observation_space, probe.action_space
            check_spaces("env_factory's env", obs_space, act_space)
            threshold = probe.spec.reward_threshold if probe.spec is not None else None
        finally:
            probe.close()
    target_return = cfg.target_return if cfg.target_return is not None else threshold
    if cfg.vector == "envpool":
        check_envpool(cfg.env_id, obs_space, act_space, custom_factory=env_factory is not None)
    check_learner_fits(cfg, obs_space, int(act_space.n), device)
    if cfg.algo == "dqn":
        check_dqn_env(cfg, obs_space, device, env_factory or envs_factory(cfg.env_id),
                      custom=q_network is not None)
        if device.type == "cpu" and cfg.learner == "auto":
            native.prepare()  # compiles in the background while envs start (once per machine)
    owns_ray = False
    if cfg.actors:
        from fastdqn.algos.apex import connect

        owns_ray = connect(cfg)
    try:
        run_dir = prepare_run_dir(cfg)
        ckpt = load_checkpoint(run_dir / "checkpoint.pt") if cfg.resume else None
        if ckpt is not None:
            check_compatible(ckpt, cfg, obs_space.shape, int(act_space.n),
                             run_dir / "checkpoint.pt")
    except BaseException:
        if owns_ray:
            import ray

            ray.shutdown()
        raise

    # From here a SIGINT/SIGTERM is the run's to handle, the slow start included (the agent's
    # set-up, e.g. the RBF fit, and the env workers): the loop then never starts, and finish()
    # still writes checkpoint.pt, summary.json and the resume line.
    signals = Signals().__enter__()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    # Denormal floats (tiny Adam moments late in training) make CPU arithmetic many times
    # slower; flushing them to zero cost the learner step 12% when they appeared (measured).
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    torch.manual_seed(generator_seed(cfg.seed, Purpose.TORCH_GLOBAL))
    fleet = None
    try:
        if cfg.algo == "pqn":
            agent: DQN | PQN | Reinforce = PQN(cfg, obs_space, act_space, device)
            loop, stages = train_pqn, PQN_STAGES
        elif cfg.algo == "reinforce":
            agent = Reinforce(cfg, obs_space, act_space, device)
            loop, stages = train_reinforce, REINFORCE_STAGES
        else:
            agent = DQN(cfg, obs_space, act_space, device, q_network=q_network,
                        env_factory=env_factory, resuming=ckpt is not None)
            loop, stages = train_dqn, STAGES
        if ckpt is not None:
            if isinstance(agent, DQN):
                check_dqn_checkpoint(agent, ckpt, run_dir / "checkpoint.pt")
            else:
                agent.check_checkpoint(ckpt, run_dir / "checkpoint.pt")
            agent.load_state_dict(ckpt)
            torch.set_rng_state(ckpt["rng"]["torch"])
            remove_temp_run_files(run_dir)  # left by a kill -9 during an atomic write
        if cfg.actors:  # Ape-X: Ray actors step the envs; this process learns (apex.py)
            from fastdqn.algos.apex import STAGES as APEX_STAGES
            from fastdqn.algos.apex import make_fleet, train_apex

            fleet = make_fleet(cfg, agent, env_factory, ckpt["counters"]["step"] if ckpt else 0,
                               owns_ray)
            loop, stages = (lambda run, agent: train_apex(run, agent, fleet)), APEX_STAGES
        run = Run(cfg, run_dir=run_dir, device=device, target_return=target_return,
                  obs_space=obs_space, act_space=act_space, ckpt=ckpt,
                  timer=timer or StageTimer(stages), env_factory=env_factory,
                  eval_env_factory=eval_env_factory or env_factory, envs=fleet,
                  signals=signals)
        run.attach(agent)
        with run:
            loop(run, agent)
        epsilon = getattr(agent, "epsilon", None)  # REINFORCE explores by sampling its policy
        return run.finish(epsilon=epsilon(run.c) if epsilon is not None else None)
    finally:
        signals.__exit__()  # restored already, unless the run failed before finish()
        if fleet is not None:  # a Run that failed to start never closed it
            fleet.close()
        elif owns_ray:
            import ray

            ray.shutdown()
        torch.set_num_threads(prev_threads)
        if flush:
            torch.set_flush_denormal(False)
