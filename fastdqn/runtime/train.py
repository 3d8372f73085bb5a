"""`train`: settings in, a finished run out, in named steps: the settings and their algorithm
(`algos.registry.ALGOS`), the env probed, the settings checked against it, the run dir and the
checkpoint a resumed run continues from, the agent started, then the run's lifecycle
(`run.Run`) around the algorithm's loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastdqn.algos.contract import Agent, Algorithm
from fastdqn.algos.registry import ALGOS
from fastdqn.config.settings import Config
from fastdqn.core.checkpoint import load_checkpoint
from fastdqn.core.device import resolve_device
from fastdqn.core.logger import StageTimer, check_wandb
from fastdqn.core.seeds import Purpose, generator_seed
from fastdqn.envs.backends import BACKENDS, pick_vector
from fastdqn.envs.make import EnvFactory, probe_env
from fastdqn.envs.make import env_factory as envs_factory
from fastdqn.envs.spaces import check_spaces, zero_based
from fastdqn.errors import ConfigError
from fastdqn.runtime.resume import check_compatible
from fastdqn.runtime.run import Run, Signals, TrainResult
from fastdqn.runtime.rundir import prepare_run_dir, remove_temp_run_files

__all__ = ["train"]


@dataclass(frozen=True)
class EnvProbe:
    """What a run learns of its env before it starts: its spaces, and the return that solves it
    (--target-return, else the env's own reward threshold)."""

    obs_space: Any
    act_space: Any
    target_return: float | None


def settings_of(cfg: Config | None, overrides: dict, env_factory: EnvFactory | None = None
                ) -> Config:
    """`cfg` with `overrides` on top (the defaults without a `cfg`), validated, and
    `--vector auto` made the backend it picks (`pick_vector`), which the run records."""
    from fastdqn.config.files import make_config

    if cfg is None or overrides:
        base = cfg.to_dict() if cfg is not None else {}
        cfg = make_config(**{**base, **overrides})
    cfg.validate()
    vector = pick_vector(cfg.vector, cfg.env_id, env_factory is not None)
    return cfg if vector == cfg.vector else dataclasses.replace(cfg, vector=vector)


def check_custom_network(cfg: Config, algo: Algorithm, q_network: torch.nn.Module | None) -> None:
    """A caller's `q_network` trains only with an algorithm that takes one, and then fastdqn's
    network settings are refused: its shape is the caller's."""
    if q_network is None:
        return
    if not algo.custom_network:
        takers = " or ".join(a.name for a in ALGOS.values() if a.custom_network)
        raise ConfigError(f"q_network trains with --algo {takers} only; {cfg.algo} builds its own "
                          f"network (set its layers with {algo.hidden_flag})")
    cfg.check_network("custom")


def probe(cfg: Config, env_factory: EnvFactory | None) -> EnvProbe:
    """The env's spaces and reward threshold: `env_factory`'s, from one env made and closed, or
    the registered env's."""
    if env_factory is None:
        obs_space, act_space, threshold = probe_env(cfg.env_id)
    else:
        env = zero_based(env_factory())
        try:
            obs_space, act_space = env.observation_space, env.action_space
            check_spaces("env_factory's env", obs_space, act_space)
            threshold = env.spec.reward_threshold if env.spec is not None else None
        finally:
            env.close()
    target = cfg.target_return if cfg.target_return is not None else threshold
    return EnvProbe(obs_space, act_space, target)


def check_against_env(cfg: Config, algo: Algorithm, env: EnvProbe, device: torch.device,
                      env_factory: EnvFactory | None, custom: bool) -> None:
    """What the settings ask of this env and device, refused in one line before the run dir
    exists: the vector backend, the algorithm's memory and its needs of the env; then the
    algorithm's slow one-time work starts, to run while the envs start."""
    BACKENDS[cfg.vector].check(cfg.env_id, env.obs_space, env.act_space, env_factory is not None)
    algo.check_memory(cfg, env.obs_space, int(env.act_space.n), device)
    if algo.check_env is not None:
        algo.check_env(cfg, env.obs_space, device, env_factory or envs_factory(cfg.env_id),
                       custom=custom)
    if algo.prepare is not None:
        algo.prepare(cfg, device)


class Cluster:
    """Ape-X's Ray (--actors): joined before the run dir is touched, so that a wrong address
    changes nothing on disk, and left however the run ends: by its fleet once there is one
    (which stops the actors first), else here, when this run started Ray."""

    def __init__(self, cfg: Config) -> None:
        self.owns_ray, self.fleet = False, None
        if cfg.actors:
            from fastdqn.algos.apex import connect

            self.owns_ray = connect(cfg)

    def close(self) -> None:
        if self.fleet is not None:  # a Run that failed to start never closed it
            self.fleet.close()
        elif self.owns_ray:
            import ray

            ray.shutdown()


def prepare_run(cfg: Config, env: EnvProbe) -> tuple[Path, dict | None]:
    """The run dir, and the checkpoint a resumed run continues from, checked against this run
    (the agent checks the rest of it once it exists)."""
    run_dir = prepare_run_dir(cfg)
    ckpt = load_checkpoint(run_dir / "checkpoint.pt") if cfg.resume else None
    if ckpt is not None:
        check_compatible(ckpt, cfg, env.obs_space.shape, int(env.act_space.n),
                         run_dir / "checkpoint.pt")
    return run_dir, ckpt


@contextmanager
def torch_settings(cfg: Config, device: torch.device) -> Iterator[None]:
    """torch's process-wide settings for the run, restored after it: --num-threads, denormals
    flushed on the CPU, and the global generator seeded from --seed."""
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    # Denormal floats (tiny Adam moments late in training) make CPU arithmetic many times
    # slower; flushing them to zero cost the learner step 12% when they appeared (measured).
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    torch.manual_seed(generator_seed(cfg.seed, Purpose.TORCH_GLOBAL))
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        if flush:
            torch.set_flush_denormal(False)


def start_agent(cfg: Config, algo: Algorithm, env: EnvProbe, device: torch.device,
                run_dir: Path, ckpt: dict | None, **extras) -> Agent:
    """The algorithm's agent (`extras`: q_network, env_factory); a resumed one takes the
    checkpoint's state once the agent has checked it, and torch's generator its state."""
    agent = algo.make_agent(cfg, env.obs_space, env.act_space, device, resuming=ckpt is not None,
                            **extras)
    if ckpt is not None:
        algo.check_checkpoint(agent, ckpt, run_dir / "checkpoint.pt")
        agent.load_state_dict(ckpt)
        torch.set_rng_state(ckpt["rng"]["torch"])
        remove_temp_run_files(run_dir)  # left by a kill -9 during an atomic write
    return agent


def loop_of(cfg: Config, algo: Algorithm, agent: Agent, cluster: Cluster,
            env_factory: EnvFactory | None, ckpt: dict | None) -> tuple[Callable, tuple[str, ...]]:
    """The algorithm's loop and its stages; with --actors, Ape-X's: Ray actors step the envs
    and this process learns (apex.py)."""
    if not cfg.actors:
        return algo.loop, algo.stages
    from fastdqn.algos.apex import STAGES, make_fleet, train_apex

    fleet = cluster.fleet = make_fleet(cfg, agent, env_factory,
                                       ckpt["counters"]["step"] if ckpt else 0, cluster.owns_ray)
    return (lambda run, agent: train_apex(run, agent, fleet)), STAGES


def drive(run: Run, agent: Agent, loop: Callable) -> TrainResult:
    """The loop inside the run (which turns a divergence into a clean stop), then its end."""
    run.attach(agent)
    with run:
        loop(run, agent)
    epsilon = getattr(agent, "epsilon", None)  # REINFORCE explores by sampling its policy
    return run.finish(epsilon=epsilon(run.c) if epsilon is not None else None)


def train(cfg: Config | None = None, env_factory: EnvFactory | None = None,
          timer: StageTimer | None = None, eval_env_factory: EnvFactory | None = None,
          q_network: torch.nn.Module | None = None, started: float | None = None,
          **overrides) -> TrainResult:
    """Train an agent as `cfg` says and return the run's summary and greedy policy.

    `env_factory` replaces `gymnasium.make(cfg.env_id)` for the training envs (tests use it for
    scripted envs); evaluations, and so "solved", run on `eval_env_factory`, by default the
    same factory: a run is judged on what it was trained on. `q_network` is your own
    `torch.nn.Module` (float observations in, one Q-value per action out), trained on the
    reference route (--algo dqn only). `timer` receives the per-stage timings (the benchmark
    passes a syncing one); `started` is where the run's clock (wall time, time to solve)
    starts on `time.perf_counter()`'s scale: the CLI passes its process's start, by default
    it is the moment the run begins. `overrides` are Config fields, applied on top of `cfg`.
    """
    cfg = settings_of(cfg, overrides, env_factory)
    algo = ALGOS[cfg.algo]
    check_custom_network(cfg, algo, q_network)
    if cfg.wandb:
        check_wandb()
    device = resolve_device(cfg.device)
    env = probe(cfg, env_factory)
    check_against_env(cfg, algo, env, device, env_factory, custom=q_network is not None)
    cluster = Cluster(cfg)
    try:
        run_dir, ckpt = prepare_run(cfg, env)
    except BaseException:
        cluster.close()
        raise
    # From here a SIGINT/SIGTERM is the run's to handle, the slow start included (the agent's
    # set-up, e.g. the RBF fit, and the env workers): the loop then never starts, and finish()
    # still writes checkpoint.pt, summary.json and the resume line.
    signals = Signals().__enter__()
    try:
        with torch_settings(cfg, device):
            agent = start_agent(cfg, algo, env, device, run_dir, ckpt, q_network=q_network,
                                env_factory=env_factory)
            loop, stages = loop_of(cfg, algo, agent, cluster, env_factory, ckpt)
            run = Run(cfg, run_dir=run_dir, device=device, target_return=env.target_return,
                      obs_space=env.obs_space, act_space=env.act_space, ckpt=ckpt,
                      timer=timer or StageTimer(stages), env_factory=env_factory,
                      eval_env_factory=eval_env_factory or env_factory, envs=cluster.fleet,
                      signals=signals, started=started)
            return drive(run, agent, loop)
    finally:
        signals.__exit__()  # restored already, unless the run failed before finish()
        cluster.close()
