"""`train`: settings in, a finished run out. It checks the settings and the env, prepares the
run dir (and the checkpoint of a resumed run), then hands the run's lifecycle (`run.Run`) and
an agent to the algorithm's loop (`dqn.train_dqn`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_checkpoint, remove_temp_files
from .config import Config, ConfigError
from .dqn import DQN, STAGES, train_dqn
from .envs import EnvFactory, probe_env
from .logger import StageTimer
from .run import (
    Run,
    TrainingDiverged,
    TrainResult,
    default_run_dir,
    divergence_message,
    prepare_run_dir,
    resume_checkpoint,
)

__all__ = ["STAGES", "TrainResult", "TrainingDiverged", "check_compatible", "default_run_dir",
           "divergence_message", "resolve_device", "resume_checkpoint", "train"]


def resolve_device(name: str) -> torch.device:
    """auto picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} asked for, but this torch sees no CUDA device; "
                              "use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                              "device(s) here; use cuda:0")
        return dev
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise ConfigError("--device mps asked for, but MPS is not available here; "
                          "use --device cpu or auto")
    return torch.device(name)


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
    env = ckpt.get("env", {})
    if env.get("id") != cfg.env_id:
        raise CheckpointError(f"{path} is from env {env.get('id')!r}, not {cfg.env_id!r}; "
                              "pass the matching --env or another checkpoint")
    if tuple(env.get("obs_shape", ())) != tuple(obs_shape) or env.get("n_actions") != n_actions:
        raise CheckpointError(f"{path} was trained on other spaces than {cfg.env_id} has now")


def train(cfg: Config | None = None, env_factory: EnvFactory | None = None,
          timer: StageTimer | None = None, eval_env_factory: EnvFactory | None = None,
          q_network: torch.nn.Module | None = None, **overrides) -> TrainResult:
    """Train an agent as `cfg` says and return the run's summary and greedy policy.

    `env_factory` replaces `gymnasium.make(cfg.env_id)` for the training envs (tests use it for
    scripted envs); evaluations, and so "solved", run on `eval_env_factory`, by default the
    same factory: a run is judged on what it was trained on. `q_network` is your own
    `torch.nn.Module` (float observations in, one Q-value per action out), trained on the
    reference route. `timer` receives the per-stage timings (the benchmark passes a syncing
    one); `overrides` are Config fields, applied on top of `cfg`.
    """
    from .config import make_config

    if cfg is None or overrides:
        base = cfg.to_dict() if cfg is not None else {}
        cfg = make_config(**{**base, **overrides})
    cfg.validate()
    device = resolve_device(cfg.device)
    if env_factory is None:
        obs_space, act_space, threshold = probe_env(cfg.env_id)
    else:
        probe = env_factory()
        obs_space, act_space = probe.observation_space, probe.action_space
        threshold = probe.spec.reward_threshold if probe.spec is not None else None
        probe.close()
    target_return = cfg.target_return if cfg.target_return is not None else threshold
    run_dir = prepare_run_dir(cfg)
    ckpt = load_checkpoint(run_dir / "checkpoint.pt") if cfg.resume else None
    if ckpt is not None:
        check_compatible(ckpt, cfg, obs_space.shape, int(act_space.n), run_dir / "checkpoint.pt")

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    # Denormal floats (tiny Adam moments late in training) make CPU arithmetic many times
    # slower; flushing them to zero cost the learner step 12% when they appeared (measured).
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    torch.manual_seed(cfg.seed)
    try:
        if q_network is not None and cfg.network != "mlp":
            raise ConfigError(f"q_network is a network of your own, --network {cfg.network} "
                              "another; pass one of them")
        agent = DQN(cfg, obs_space, act_space, device, q_network=q_network,
                    env_factory=env_factory, resuming=ckpt is not None)
        if ckpt is not None:
            agent.check_checkpoint(ckpt, run_dir / "checkpoint.pt")
            agent.load_state_dict(ckpt)
            torch.set_rng_state(ckpt["rng"]["torch"])
            remove_temp_files(run_dir)  # left by a kill -9 during an atomic write
        run = Run(cfg, run_dir=run_dir, device=device, target_return=target_return,
                  obs_space=obs_space, act_space=act_space, ckpt=ckpt,
                  timer=timer or StageTimer(STAGES), env_factory=env_factory,
                  eval_env_factory=eval_env_factory or env_factory)
        run.attach(agent)
        with run:
            train_dqn(run, agent)
        return run.finish(epsilon=agent.epsilon(run.c))
    finally:
        torch.set_num_threads(prev_threads)
        if flush:
            torch.set_flush_denormal(False)
