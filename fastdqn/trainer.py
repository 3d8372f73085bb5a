"""The training loop: act -> step_async -> learn -> step_wait -> add, with evals and checkpoints."""

from __future__ import annotations

import math
import shutil
import signal
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .checkpoint import (
    CheckpointError,
    atomic_write_json,
    load_checkpoint,
    network_of,
    remove_temp_files,
    save_checkpoint,
)
from .config import Config, ConfigError
from .envs import EnvFactory, bit_generator_class, make_vector_env, probe_env, real_next_obs
from .evaluate import EvalResult, Policy, eval_seed, run_episodes
from .explore import ActingQ, EpsilonSchedule, boltzmann, epsilon_greedy
from .learner import Learner
from .logger import RunLogger, StageTimer, plot_returns
from .networks import MLP, preprocess
from .replay import ReplayBuffer, torch_dtype
from .sampling import UniformSampler

STAGES = ("h2d", "act", "env_send", "sample", "learn", "target", "env_wait", "add", "log")
PLOT_EVERY_S = 60.0
"""returns.png is redrawn at an eval at most this often during training (and always at the
end): one redraw costs ~0.5 s of matplotlib here, which at every eval was a fifth of a run."""


@dataclass
class Counters:
    """Everything a checkpoint must restore for the run to continue where it stopped."""

    step: int = 0
    iteration: int = 0
    episodes: int = 0
    due: int = 0
    wall_time: float = 0.0
    best_eval: float = -math.inf
    next_eval: int = 0
    next_checkpoint: int = 0
    next_log: int = 0
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    end_steps: list[int] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)


class TrainingDiverged(RuntimeError):
    """The loss or the parameters became NaN or inf; the message names the step and likely causes."""


@dataclass
class TrainResult:
    """What `train` hands back: where the run lives, its summary, and the greedy policy."""

    run_dir: Path
    summary: dict
    policy: Policy
    returns: list[float]
    end_steps: list[int]
    signal: int | None = None

    def plot(self):
        """The returns figure (Jupyter shows it inline when it is a cell's value)."""
        return plot_returns(self.run_dir / "returns.png", self.returns, self.end_steps,
                            self.summary["env_id"], self.summary.get("target_return"))


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


def default_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.env_id.replace('/', '_')}__{cfg.seed}__{stamp}"


def resume_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint.pt that --resume continues from, or a one-line error if there is none."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        raise ConfigError(f"--resume: no checkpoint.pt in {run_dir}; "
                          "check --run-dir or start without --resume")
    return path


def prepare_run_dir(cfg: Config) -> Path:
    """The run dir, refusing to mix two runs: an existing run needs --resume or --overwrite."""
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file; pick a directory")
    has_run = run_dir.is_dir() and any(
        (run_dir / n).exists() for n in ("checkpoint.pt", "summary.json", "best.pt")
    )
    if cfg.resume:
        resume_checkpoint(run_dir)
    elif has_run:
        if not cfg.overwrite:
            raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, "
                              "--overwrite to replace it, or pick another --run-dir")
        for p in run_dir.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def check_compatible(ckpt: dict, cfg: Config, obs_shape: tuple, n_actions: int,
                     path: Path) -> None:
    """A checkpoint must come from the same env and network shape as the run resuming it, and
    every tensor it restores must have the shape of the one it is copied into (copy_ would
    broadcast a wrong one, or fail with a traceback)."""
    missing = [k for k in ("config", "env", "net", "learner", "counters", "rng") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is damaged or from another "
                              "program")
    net = network_of(path, ckpt["net"])
    env = ckpt["env"] if isinstance(ckpt["env"], dict) else {}
    if env.get("id") != cfg.env_id:
        raise CheckpointError(f"{path} is from env {env.get('id')!r}, not {cfg.env_id!r}; "
                              "pass the matching --env or another checkpoint")
    if tuple(env.get("obs_shape", ())) != tuple(obs_shape) or env.get("n_actions") != n_actions:
        raise CheckpointError(f"{path} was trained on other spaces than {cfg.env_id} has now")
    if net.hidden != tuple(cfg.hidden):
        raise CheckpointError(f"{path} has hidden layers {list(net.hidden)}, "
                              f"not {list(cfg.hidden)}; pass --hidden to match")
    learner = ckpt["learner"] if isinstance(ckpt["learner"], dict) else {}
    params = learner.get("params")
    if (not isinstance(params, torch.Tensor) or params.shape != (net.num_params,)
            or (net.in_dim, net.n_actions) != (int(np.prod(obs_shape)), n_actions)):
        raise CheckpointError(f"{path}: its parameters do not fit its network shape; the file is "
                              "damaged")
    optimizer = learner.get("optimizer") if isinstance(learner.get("optimizer"), dict) else {}
    _check_shapes(path, {"learner.target": (learner.get("target"), params.shape),
                         "learner.optimizer.exp_avg": (optimizer.get("exp_avg"), params.shape),
                         "learner.optimizer.exp_avg_sq": (optimizer.get("exp_avg_sq"),
                                                          params.shape),
                         "learner.optimizer.step": (optimizer.get("step"), ())})
    buffer = ckpt.get("buffer", {})
    saved = buffer.get("capacity", cfg.buffer_size) if isinstance(buffer, dict) else None
    if saved != cfg.buffer_size:
        raise CheckpointError(f"{path} holds a replay buffer of capacity {saved}, not "
                              f"--buffer-size {cfg.buffer_size}; resume with --buffer-size {saved}")
    if "buffer" in ckpt:
        _check_buffer(path, buffer, cfg.buffer_size, tuple(obs_shape))
    if ckpt.get("env_starts") is not None:
        _check_env_starts(path, ckpt["env_starts"])
    saved_every = ckpt["config"].get("train_every") if isinstance(ckpt["config"], dict) else None
    _check_counters(path, ckpt["counters"],
                    saved_every if type(saved_every) is int and saved_every >= 1
                    else cfg.train_every)


def _check_counters(path: Path, counters: object, train_every: int) -> None:
    """The counters resume continues from: known names, whole numbers, one entry per episode,
    and `due` below the saving run's --train-every, as its saves leave it (due sizes the next
    block of sampled batches: 10^12 from a file would be a terabyte of indices)."""
    names = {f.name for f in fields(Counters)}
    if not isinstance(counters, dict) or not set(counters) <= names:
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
    if problem:
        raise CheckpointError(f"{path}: its counters are inconsistent ({problem}); the file is "
                              "damaged or crafted")


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
        if not ((seed is None or type(seed) is int) and (rng is None or isinstance(rng, dict))
                and (seed, rng) != (None, None)):
            raise CheckpointError(f"{path}: env_starts[{i}] is not an episode start (a seed or a "
                                  "bit generator state); the file is damaged or crafted")


def _check_shapes(path: Path, tensors: dict[str, tuple[object, tuple]]) -> None:
    """Each named tensor exists and has its expected shape; a one-line CheckpointError if not."""
    for name, (t, shape) in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: {name} is missing; the file is damaged")
        if tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{path}: {name} has shape {list(t.shape)}, not {list(shape)}; "
                                  "the file is damaged")


def _check_buffer(path: Path, buffer: dict, capacity: int, obs_shape: tuple) -> None:
    """A --save-buffer checkpoint's rows: as many as it says it holds, each of the env's shape."""
    size, pos = buffer.get("size"), buffer.get("pos")
    if not (isinstance(size, int) and isinstance(pos, int) and 0 <= size <= capacity
            and 0 <= pos < capacity):
        raise CheckpointError(f"{path}: its replay buffer's size {size!r} and position {pos!r} do "
                              f"not fit its capacity {capacity}; the file is damaged")
    for name, shape in (("obs", (size, *obs_shape)), ("next_obs", (size, *obs_shape)),
                        ("actions", (size,)), ("rewards", (size,)), ("dones", (size,))):
        t = buffer.get(name)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            held = f"shape {list(t.shape)}" if isinstance(t, torch.Tensor) else "no tensor"
            raise CheckpointError(f"{path}: its replay buffer says it holds {size} rows, but "
                                  f"buffer.{name} has {held}, not {list(shape)}; the file is "
                                  "damaged")


def train(cfg: Config | None = None, env_factory: EnvFactory | None = None,
          timer: StageTimer | None = None, **overrides) -> TrainResult:
    """Train a DQN agent as `cfg` says and return the run's summary and greedy policy.

    `env_factory` replaces `gymnasium.make(cfg.env_id)` for the training envs (tests use it for
    scripted envs); `timer` receives the per-stage timings (the benchmark passes a syncing one);
    `overrides` are Config fields, applied on top of `cfg`.
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
        remove_temp_files(run_dir)  # left by a kill -9 during an atomic write

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    # Denormal floats (tiny Adam moments late in training) make CPU arithmetic many times
    # slower; flushing them to zero cost the learner step 12% when they appeared (measured).
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    torch.manual_seed(cfg.seed)
    try:
        return _run(cfg, env_factory, obs_space, act_space, target_return, device, run_dir, ckpt,
                    timer or StageTimer(STAGES))
    finally:
        torch.set_num_threads(prev_threads)
        if flush:
            torch.set_flush_denormal(False)


def _run(cfg, env_factory, obs_space, act_space, target_return, device, run_dir, ckpt, timer
         ) -> TrainResult:
    n_envs, n_actions = cfg.num_envs, int(act_space.n)
    obs_shape = tuple(obs_space.shape)
    net = MLP(int(np.prod(obs_shape)), n_actions, tuple(cfg.hidden))
    learner = Learner(
        net, lr=cfg.lr, gamma=cfg.gamma, tau=cfg.tau,
        target_update_interval=cfg.target_update_interval, loss=cfg.loss,
        double_dqn=cfg.double_dqn, max_grad_norm=cfg.max_grad_norm, adam_eps=cfg.adam_eps,
        device=device, generator=torch.Generator().manual_seed(cfg.seed),
        cuda_graphs=cfg.cuda_graphs,
    )
    buffer = ReplayBuffer(cfg.buffer_size, obs_shape, torch_dtype(obs_space.dtype), device)
    sampler = UniformSampler(cfg.seed)
    act_gen = torch.Generator(device).manual_seed(cfg.seed + 1)
    schedule = EpsilonSchedule(cfg.eps_schedule, cfg.eps_start, cfg.eps_end,
                               cfg.eps_decay_steps, cfg.eps_episode_decay)
    c = Counters(next_eval=cfg.eval_every, next_checkpoint=cfg.checkpoint_every,
                 next_log=cfg.log_every)
    if ckpt is not None:
        learner.load_state_dict(ckpt["learner"])
        c = Counters(**ckpt["counters"])
        sampler.set_state(ckpt["rng"]["sampler"])
        act_gen.set_state(ckpt["rng"]["act"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "buffer" in ckpt:
            buffer.load_state_dict(ckpt["buffer"])

    env_starts: list = []

    def save(path: Path, with_buffer: bool = False) -> None:
        """Write a checkpoint, never a non-finite one (TrainingDiverged instead)."""
        if not learner.all_finite():
            raise TrainingDiverged(divergence_message(cfg, c.step, "NaN or inf in the network"))
        if not envs.closed:
            env_starts[:] = envs.get_attr("episode_start")
        state = {
            "version": __version__, "config": cfg.to_dict(),
            "env": {"id": cfg.env_id, "obs_shape": list(obs_shape),
                    "obs_dtype": str(obs_space.dtype), "n_actions": n_actions},
            "net": {"in_dim": net.in_dim, "n_actions": n_actions, "hidden": list(net.hidden)},
            "learner": learner.state_dict(), "counters": c.__dict__,
            "rng": {"sampler": sampler.get_state(), "act": act_gen.get_state(),
                    "torch": torch.get_rng_state()},
            "env_starts": list(env_starts),
        }
        if with_buffer:
            state["buffer"] = buffer.state_dict()
        save_checkpoint(path, state)

    cuda = device.type == "cuda"
    pin = cuda
    stage_obs = torch.empty((n_envs, *obs_shape), dtype=buffer.obs.dtype, pin_memory=pin)
    stage_next = torch.empty_like(stage_obs, pin_memory=pin)
    stage_rew = torch.empty(n_envs, dtype=torch.float32, pin_memory=pin)
    stage_done = torch.empty(n_envs, dtype=torch.float32, pin_memory=pin)
    real_next = np.empty((n_envs, *obs_shape), dtype=obs_space.dtype)
    eps_dev = torch.empty(n_envs, device=device)
    ep_return = np.zeros(n_envs)
    ep_length = np.zeros(n_envs, dtype=np.int64)

    def to_device(stage: torch.Tensor, array: np.ndarray) -> torch.Tensor:
        stage.numpy()[...] = array
        return stage.to(device, non_blocking=True) if cuda else stage.to(device)

    def greedy(o: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = preprocess(torch.as_tensor(o, device=device))
            return net.forward(learner.online_views, x).argmax(1).cpu().numpy()

    def evaluate(episodes: int, first: int = 0) -> EvalResult:
        return run_episodes(greedy, cfg.env_id, episodes, eval_seed(cfg.seed) + first,
                            cfg.eval_envs)

    # Envs first: async workers are forked, which must happen before any thread is started.
    envs = make_vector_env(cfg.env_id, n_envs, cfg.vector, env_factory, cfg.num_workers,
                           cfg.env_timeout)
    logger = RunLogger(run_dir, cfg.total_timesteps, cfg.progress,
                       purge_step=c.step if ckpt is not None else None)
    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is not None:  # second Ctrl-C: leave now, checkpoint.pt stays intact
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        stop["signal"] = signum

    handlers = {}
    if _main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            handlers[s] = signal.signal(s, on_signal)
    solved_at: tuple[int, float] | None = None
    final_eval: EvalResult | None = None
    start = time.perf_counter() - c.wall_time
    window_t, window_step = time.perf_counter(), c.step
    sps = 0.0
    diverged: TrainingDiverged | None = None
    logged_episodes = c.episodes
    next_plot = time.perf_counter() + PLOT_EVERY_S

    def log_episodes(first: int) -> int:
        """Write episodes [first, now) to TensorBoard in one batch at log time, not as each one
        ends (a scalar costs ~30 us); returns the next episode to write."""
        for j in range(first, c.episodes):
            logger.scalar("charts/episodic_return", c.returns[j], c.end_steps[j])
            logger.scalar("charts/episodic_length", c.lengths[j], c.end_steps[j])
        return c.episodes

    try:
        starts = ckpt.get("env_starts") if ckpt is not None else None
        if starts and len(starts) == n_envs:  # restart each in-flight episode as it began
            envs.set_attr("restart_from", starts)
            obs, _ = envs.reset()
        else:
            obs, _ = envs.reset(seed=cfg.seed + c.step)
        obs_dev = to_device(stage_obs, obs)
        acting_q = ActingQ(net, learner.online_views, obs_dev, cfg.cuda_graphs)
        while c.step < cfg.total_timesteps and stop["signal"] is None:
            eps = schedule(c.step, c.episodes)
            q = acting_q(obs_dev)
            if cfg.exploration == "egreedy":
                actions = epsilon_greedy(q, eps_dev.fill_(eps), act_gen)
            else:
                actions = boltzmann(q, cfg.temperature, act_gen)
            actions_np = actions.cpu().numpy()
            timer.lap("act")
            envs.step_async(actions_np)
            timer.lap("env_send")
            if buffer.size >= cfg.learning_starts:
                c.due += n_envs * cfg.gradient_steps
                k, c.due = divmod(c.due, cfg.train_every)
                if k:
                    learner.learn(buffer, sampler.sample(buffer.size, k, cfg.batch_size),
                                  timer.lap)
            next_obs, rewards, terminated, truncated, infos = envs.step_wait()
            timer.lap("env_wait")
            real_next_obs(next_obs, infos, real_next)
            buffer.add(obs_dev, actions, to_device(stage_rew, rewards),
                       to_device(stage_next, real_next), to_device(stage_done, terminated))
            timer.lap("add")
            obs_dev = to_device(stage_obs, next_obs)
            timer.lap("h2d")
            c.step += n_envs
            c.iteration += 1
            ep_return += rewards
            ep_length += 1
            for i in np.flatnonzero(terminated | truncated):
                c.returns.append(float(ep_return[i]))
                c.lengths.append(int(ep_length[i]))
                c.end_steps.append(c.step)
                c.episodes += 1
                ep_return[i], ep_length[i] = 0.0, 0
            if c.step >= c.next_log:
                c.next_log += cfg.log_every
                now = time.perf_counter()
                sps = (c.step - window_step) / max(now - window_t, 1e-9)
                window_t, window_step = now, c.step
                logged_episodes = log_episodes(logged_episodes)
                values = {"charts/epsilon": eps, "charts/sps": sps}
                if c.returns:
                    values["charts/mean_return_100"] = _mean100(c.returns)
                stats = learner.pop_stats()
                if stats is not None:
                    values["losses/td_loss"], values["losses/q_values"] = stats
                    if not all(map(math.isfinite, stats)):
                        raise TrainingDiverged(divergence_message(
                            cfg, c.step, f"TD loss {stats[0]:g}, mean Q {stats[1]:g}"))
                for name, us in timer.us_per_iteration().items():
                    values[f"time/{name}_us_per_iter"] = us
                logger.scalars(values, c.step)
            if logger.progress_due():
                logger.progress(c.step, sps, _mean100(c.returns), eps)
            timer.lap("log")
            timer.iteration_done(c.step)
            if cfg.eval_every and c.step >= c.next_eval:
                c.next_eval += cfg.eval_every
                result = evaluate(cfg.eval_episodes)
                if target_return is not None and result.mean >= target_return:
                    rest = cfg.solve_episodes - cfg.eval_episodes
                    if rest > 0:
                        result = _combine(result, evaluate(rest, cfg.eval_episodes))
                c.evals.append({"step": c.step, **result.to_dict()})
                logger.scalar("eval/mean_return", result.mean, c.step)
                logger.scalar("eval/std_return", result.std, c.step)
                logger.message(f"eval at {c.step:,d} steps: {result.mean:.1f} ± {result.std:.1f}"
                               f" over {result.episodes} episodes")
                if time.perf_counter() >= next_plot:
                    plot_returns(run_dir / "returns.png", c.returns, c.end_steps, cfg.env_id,
                                 target_return)
                    logger.show_plot(run_dir / "returns.png")
                    next_plot = time.perf_counter() + PLOT_EVERY_S
                if result.mean > c.best_eval:
                    c.best_eval = result.mean
                    c.wall_time = time.perf_counter() - start
                    save(run_dir / "best.pt")
                solved = (target_return is not None and result.episodes >= cfg.solve_episodes
                          and result.mean >= target_return)
                if solved:
                    solved_at = (c.step, time.perf_counter() - start)
                    final_eval = result
                    break
            if cfg.checkpoint_every and c.step >= c.next_checkpoint:
                c.next_checkpoint += cfg.checkpoint_every
                c.wall_time = time.perf_counter() - start
                save(run_dir / "checkpoint.pt", cfg.save_buffer)
        if not learner.all_finite():
            raise TrainingDiverged(divergence_message(cfg, c.step, "NaN or inf in the network"))
        env_starts[:] = envs.get_attr("episode_start")
    except TrainingDiverged as e:
        diverged = e
    finally:
        envs.close()
        for s, h in handlers.items():
            signal.signal(s, h)
    interrupted = stop["signal"] is not None
    c.wall_time = time.perf_counter() - start
    if diverged is None:
        save(run_dir / "checkpoint.pt", cfg.save_buffer)
    if final_eval is None and not interrupted and diverged is None:
        final_eval = evaluate(cfg.solve_episodes)
        c.evals.append({"step": c.step, **final_eval.to_dict(), "final": True})
        logger.scalar("eval/mean_return", final_eval.mean, c.step)
        if final_eval.mean > c.best_eval:
            c.best_eval = final_eval.mean
            save(run_dir / "best.pt")
    if not (run_dir / "best.pt").exists() and diverged is None:
        save(run_dir / "best.pt")
    wall = time.perf_counter() - start
    log_episodes(logged_episodes)
    logger.progress(c.step, sps, _mean100(c.returns), schedule(c.step, c.episodes), force=True)
    summary = {
        "env_id": cfg.env_id, "total_env_steps": c.step, "wall_time_s": round(wall, 3),
        "sps": round(c.step / wall, 1) if wall > 0 else 0.0,
        "solved": solved_at is not None,
        "time_to_solve_s": round(solved_at[1], 3) if solved_at else None,
        "steps_to_solve": solved_at[0] if solved_at else None,
        "final_eval": final_eval.to_dict() if final_eval else None,
        "best_eval": c.best_eval if c.best_eval > -math.inf else None,
        "target_return": target_return, "episodes": c.episodes,
        "interrupted": interrupted, "diverged": diverged is not None, "device": str(device),
        "learner_steps": learner.steps, "learner_route": learner.route(device),
        "stage_us_per_iter": {k: round(v, 1) for k, v in timer.us_per_iteration().items()},
        "evals": c.evals, "config": cfg.to_dict(), "version": __version__,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    plot_returns(run_dir / "returns.png", c.returns, c.end_steps, cfg.env_id, target_return)
    logger.show_plot(run_dir / "returns.png")
    logger.close()
    if diverged is not None:
        raise diverged
    return TrainResult(run_dir, summary, Policy(net, learner.params, device), c.returns,
                       c.end_steps, stop["signal"])


def _mean100(returns: list[float]) -> float | None:
    """Mean return of the last 100 episodes (None before the first one ends)."""
    return float(np.mean(returns[-100:])) if returns else None


def divergence_message(cfg: Config, step: int, what: str) -> str:
    """One line: where training diverged and what usually causes it."""
    clip = (f"--max-grad-norm {cfg.max_grad_norm:g} is on, a lower value damps the updates"
            if cfg.max_grad_norm > 0 else "gradient clipping is off, try --max-grad-norm 10")
    return (f"training diverged at step {step:,d} ({what}); likely causes: a learning rate too "
            f"high (--lr {cfg.lr:g}, try 3-10x lower) or rewards too large (scale them down, e.g. "
            f"with gymnasium.wrappers.TransformReward); {clip}")


def _combine(a: EvalResult, b: EvalResult) -> EvalResult:
    r = np.array(a.returns + b.returns)
    return EvalResult(float(r.mean()), float(r.std()), float(r.min()), float(r.max()), len(r),
                      r.tolist(), a.lengths + b.lengths)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
