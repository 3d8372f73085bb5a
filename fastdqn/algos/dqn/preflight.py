"""What a DQN run checks and starts before anything is allocated: the memory its learner batches
take, what it needs of the env (its observations, life loss, the replay's memory), and the
native CPU step's compile, which runs while the envs start."""

from __future__ import annotations

import numpy as np
import torch

from fastdqn.config.settings import Config
from fastdqn.core.device import check_fits, torch_dtype
from fastdqn.envs.atari import is_minatar, reports_life_loss
from fastdqn.envs.make import EnvFactory
from fastdqn.errors import ConfigError
from fastdqn.learners import native
from fastdqn.learners.route import choose_route
from fastdqn.nets.kinds import KINDS, head_of_config, resolve_network
from fastdqn.replay.frames import check_frames_fit, uses_frame_replay
from fastdqn.replay.rows import check_replay_fits


def check_memory(cfg: Config, obs_space, n_actions: int, device: torch.device) -> None:
    """A learner batch's inputs, activations and gradients (online and target, float32) and the
    indices of the batches drawn at once, against the memory `device` has; with --network rbf,
    the scaler's fit, which keeps every observation (float64) in RAM. A rough bound, there to
    refuse what cannot fit: --batch-size 2**30 would otherwise be tens of GB of activations,
    allocated at the first learner step. The replay is checked with the env (check_dqn_env)."""
    in_dim = int(np.prod(obs_space.shape))
    width = sum(cfg.hidden) + n_actions + 1
    nbytes = cfg.batch_size * 4 * (3 * in_dim + 4 * width)
    what, fix = f"a learner batch of {cfg.batch_size:,d} rows", "lower --batch-size"
    k = -(-cfg.num_envs * cfg.gradient_steps // cfg.train_every)  # batches drawn at once
    if k * cfg.batch_size * 8 > nbytes:
        what = (f"the indices of {k:,d} batches drawn at once (--num-envs x "
                "--gradient-steps / --train-every)")
        fix = "lower --gradient-steps or --batch-size"
    nbytes += k * cfg.batch_size * 8
    if cfg.network == "rbf":
        check_fits(cfg.rbf_fit_steps * in_dim * 8, torch.device("cpu"),
                   f"storing the {cfg.rbf_fit_steps:,d} observations of --rbf-fit-steps",
                   "lower --rbf-fit-steps")
    check_fits(nbytes, device, what, fix)


def check_dqn_env(cfg: Config, obs_space, device: torch.device, make_env: EnvFactory,
                  custom: bool = False) -> None:
    """What DQN needs of the env beyond its spaces, refused in one line before the run dir
    exists: a CNN's image (shape, size, no --hidden), an env that reports life loss for
    --life-loss-terminal on, a possible --frame-replay (not with --actors), --learner numba
    where the run would not take that route, and memory for the replay."""
    picked = resolve_network(cfg.network, obs_space, custom)
    if cfg.network == "auto" and not custom:  # what auto picked reads the network settings
        cfg.check_network(picked, f", but --network auto trains a {picked} on {cfg.env_id}'s "
                                  "observations")
    kind = resolve_network(cfg.network, obs_space, custom, head_of_config(cfg).plain)
    shape = tuple(obs_space.shape)
    KINDS[kind].check_obs(shape, cfg.env_id, is_minatar(cfg.env_id))
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
    frames = uses_frame_replay(cfg.frame_replay, kind, shape, obs_space.dtype,
                               KINDS[kind].replays_observations)
    refusal = choose_route(cfg.learner, cfg.optimizer, kind, frames, device, cfg.cuda_graphs,
                           cfg.noisy).refusal
    if refusal:  # a route choice this run would ignore is refused
        raise ConfigError(refusal)
    if frames and cfg.actors:
        raise ConfigError("--actors ships whole observations as rows; the frame replay is "
                          "single-machine: pass --frame-replay off (with a --buffer-size that "
                          "fits)")
    agents = max(1, len(cfg.population()))  # a population's partitions, one per agent
    if frames:
        check_frames_fit(cfg.buffer_size, shape, dtype, device, cfg.num_envs, cfg.n_step, agents)
    elif KINDS[kind].replays_observations:  # an RBF replay holds features: not sized so
        check_replay_fits(cfg.buffer_size, shape, dtype, device, agents)


def prepare(cfg: Config, device: torch.device) -> None:
    """On the CPU with --learner auto, start compiling the native step in the background while
    the envs start (once per machine: the library is cached)."""
    if device.type == "cpu" and cfg.learner == "auto":
        native.prepare()
