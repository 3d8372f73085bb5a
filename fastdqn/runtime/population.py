"""`--seeds`: a population of independent DQN agents of one configuration, trained in one
process.

Agent K is the run `--seed K` would be: its own `DQN` (weights, replay partition, sampler,
epsilon, target net, optimizer state) and its own `Run` (counters, evaluations, checkpoints,
TensorBoard, summary.json) in RUN/seed-K/, every stream drawn from seed K. What the agents share
is the process (one start-up, one native build, one import), one vector env of N x --num-envs
envs stepped in one message per step (an agent's envs are one contiguous block of it, seeded
from its own TRAIN stream), and the loop, which steps every agent's learner while the envs run
(`algos.dqn.population.learn_all`: the native-route agents' steps in one call). Nothing of one
agent reaches another: no batch mixes their rows, no loss or gradient norm is averaged across
them, priorities and beta are each agent's. An agent that solves or diverges stops (its envs
stand still, its learner is left out) and the others go on; Ctrl-C stops them all and
`--resume --run-dir RUN` continues every unfinished agent.

RUN/population.json and population.png sum the agents up with `fastdqn report`'s statistics.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastdqn.algos.contract import divergence_message
from fastdqn.algos.dqn.agent import DQN
from fastdqn.algos.dqn.population import learn_all
from fastdqn.algos.registry import ALGOS
from fastdqn.config.settings import Config, parse_seeds
from fastdqn.core.checkpoint import atomic_write_json
from fastdqn.core.device import resolve_device
from fastdqn.core.logger import StageTimer, check_wandb
from fastdqn.core.seeds import SELECT, TRAIN, episode_seed
from fastdqn.envs.atari import eval_epsilon
from fastdqn.envs.autoreset import real_next_obs
from fastdqn.envs.backends import make_vector_env
from fastdqn.envs.make import EnvFactory
from fastdqn.errors import ConfigError, TrainingDiverged
from fastdqn.evaluation.episodes import EvalResult
from fastdqn.evaluation.pool import EvalPool, pool_workers
from fastdqn.runtime.run import PLOT_EVERY_S, Run, Signals, TrainResult, evaluates_alongside
from fastdqn.runtime.rundir import default_run_dir
from fastdqn.runtime.train import (
    EnvProbe,
    check_against_env,
    prepare_run,
    probe,
    settings_of,
    start_agent,
    torch_settings,
)
from fastdqn.version import __version__

STAGES = ("act", "env_send", "sample", "learn", "target", "env_wait", "add", "hooks")
"""The population loop's stages (hooks: every agent's logging, evaluations and checkpoints)."""
MAX_SUMMARY_BYTES = 16 << 20
"""Largest agent summary.json a resume reads to see whether the agent ended (`fastdqn report`'s
bound too)."""
MAX_POPULATION_BYTES = 1 << 20
"""Largest population.json a resume reads (it lists the seeds: a few hundred bytes)."""


def member_config(cfg: Config, seed: int, root: Path) -> Config:
    """Agent `seed`'s settings: the population's, as the single run `--seed seed` in
    root/seed-<seed> (its checkpoint resumes on its own too)."""
    group = cfg.wandb_group or (root.name if cfg.wandb else "")
    return dataclasses.replace(cfg, seed=seed, seeds="", run_dir=str(root / f"seed-{seed}"),
                               wandb_group=group)


def population_dir(cfg: Config) -> Path:
    """RUN: --run-dir, else runs/<env>__seeds-<seeds>__<time> (`default_run_dir`)."""
    return Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)


def read_population(root: Path) -> dict:
    """RUN/population.json as data: its seeds list checked (a resume trains exactly those)."""
    path = root / "population.json"
    try:
        if path.stat().st_size > MAX_POPULATION_BYTES:
            raise ValueError("too large")
        data = json.loads(path.read_text())
        seeds = data["seeds"]
        if not (isinstance(seeds, list) and seeds and all(type(s) is int for s in seeds)):
            raise ValueError("no list of seeds")
        parse_seeds(seeds_text(seeds))  # --seeds' own bounds: range, repeats, how many
    except ConfigError as e:
        raise ConfigError(f"{path} is damaged ({e}); start the population again with "
                          "--overwrite") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is damaged ({e}); start the population again with "
                          "--overwrite") from None
    return data


def seeds_text(seeds: list[int]) -> str:
    return ",".join(map(str, seeds))


@dataclass
class Member:
    """One agent of the population, its run, and its block of the population's envs."""

    key: str
    seed: int
    cfg: Config
    agent: DQN
    run: Run
    lo: int
    hi: int
    live: bool = True
    obs: torch.Tensor | None = None
    actions: torch.Tensor | None = None
    eps: float = 0.0
    result: TrainResult | None = None
    prefetched: dict[tuple[int, int], EvalResult] = field(default_factory=dict)
    """Evaluations played on the pool ahead of the evaluator's asking, by (episodes, first)."""

    def play(self, episodes: int, first: int, policy: Callable | None = None) -> EvalResult:
        """The evaluator's episodes first .. first+episodes-1 of the SELECT stream: played on
        the pool already, else now (`Run._play`)."""
        got = self.prefetched.pop((episodes, first), None)
        return got if got is not None else self.run._play(episodes, first, policy)


class EnvBlock:
    """One agent's view of the population's vector env: what its `Run` reads of it (episode
    starts for a checkpoint, whether it is closed). Stepping, resets and closing are the
    population's."""

    def __init__(self, envs, lo: int, hi: int) -> None:
        self.envs, self.lo, self.hi = envs, lo, hi
        self.num_envs = hi - lo

    @property
    def closed(self) -> bool:
        return bool(getattr(self.envs, "closed", False))

    def get_attr(self, name: str) -> tuple:
        values = self.envs.get_attr(name)
        return tuple(values[self.lo:self.hi]) if len(values) else ()

    def close(self) -> None:
        """The population closes the envs, once, after every agent."""


class SharedSignals:
    """The population's signal handlers as each agent's Run sees them: the first Ctrl-C stops
    every agent; entering and leaving are the population's, not each run's."""

    def __init__(self, owner: Signals) -> None:
        self.owner = owner

    @property
    def received(self) -> int | None:
        return self.owner.received

    def __enter__(self) -> SharedSignals:
        return self

    def __exit__(self, *exc) -> None:
        pass


@dataclass
class PopulationResult:
    """What `train_population` hands back: RUN, population.json's content, each agent's run."""

    run_dir: Path
    summary: dict
    results: dict[int, TrainResult] = field(default_factory=dict)
    signal: int | None = None


def slice_infos(infos: dict, lo: int, hi: int, total: int) -> dict:
    """A vector step's infos for envs lo..hi-1: per-env arrays cut to the block."""
    return {k: (v[lo:hi] if isinstance(v, np.ndarray) and len(v) == total else v)
            for k, v in infos.items()}


def finished(run_dir: Path) -> bool:
    """Whether an agent's run ended for good (solved, budget spent, diverged or stopped):
    summary.json says so and no signal cut it; a resume leaves it as it is."""
    path = run_dir / "summary.json"
    try:
        if path.stat().st_size > MAX_SUMMARY_BYTES:  # no summary fastdqn writes: data, refused
            return False
        s = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(s, dict) and s.get("interrupted") is False


def train_population(cfg: Config | None = None, env_factory: EnvFactory | None = None,
                     eval_env_factory: EnvFactory | None = None, started: float | None = None,
                     **overrides) -> PopulationResult:
    """Train one agent per seed of `cfg.seeds` in this process and sum them up (RUN is
    cfg.run_dir, else a new dir under runs/); `started` as `train`'s."""
    cfg = settings_of(cfg, overrides, env_factory)
    seeds = cfg.population()
    if not seeds:
        raise ConfigError("train_population needs --seeds (e.g. 1-8)")
    env, device = check_population(cfg, env_factory)
    root = prepare_population(cfg, seeds)
    cfgs = {f"seed {k}": member_config(cfg, k, root) for k in seeds}
    todo = {key: c for key, c in cfgs.items()
            if not (cfg.resume and finished(Path(c.run_dir)))}
    with Signals() as signals:
        start = time.perf_counter()
        members, stage_us = train_agents(cfg, todo, env, device, signals, env_factory,
                                         eval_env_factory, started=started)
        summary = write_population(root, cfg, seeds, members, stage_us,
                                   time.perf_counter() - start, env.target_return)
        results = {m.seed: m.result for m in members if m.result is not None}
        return PopulationResult(root, summary, results, signals.received)


def check_population(cfg: Config, env_factory: EnvFactory | None = None
                     ) -> tuple[EnvProbe, torch.device]:
    """What a population needs, refused in one line before any dir exists: the wandb extra,
    the env and device, and memory for every agent's replay."""
    if cfg.wandb:
        check_wandb()
    device = resolve_device(cfg.device)
    env = probe(cfg, env_factory)
    check_against_env(cfg, ALGOS[cfg.algo], env, device, env_factory, custom=False)
    return env, device


def train_agents(base: Config, cfgs: dict[str, Config], env: EnvProbe, device: torch.device,
                 signals: Signals, env_factory: EnvFactory | None = None,
                 eval_env_factory: EnvFactory | None = None,
                 on_eval: Callable[[dict[str, dict]], set[str]] | None = None,
                 started: float | None = None) -> tuple[list[Member], dict[str, float]]:
    """Train the agents `cfgs` (by label; each its own run dir and settings, the vector env's
    of `base`) in one loop until each ends, and finish each one's run; returns the agents and
    the loop's µs per iteration in each stage.

    `on_eval(latest)` (`fastdqn tune`'s pruner) is called after a step at which some agent
    evaluated, with each agent's newest evaluation entry by label; the labels it returns stop
    (their runs end as stopped ones do)."""
    if not cfgs:
        return [], {}
    first = next(iter(cfgs.values()))
    with torch_settings(first, device):
        members = start_members(cfgs, env, device, env_factory, eval_env_factory, signals,
                                started)
        timer = StageTimer(STAGES)
        # The env workers fork first, while no thread runs (envs/workers.py); the evaluation
        # pool forks its workers next, before its own handler threads start.
        envs = make_vector_env(base.env_id, members[-1].hi, base.vector, env_factory,
                               base.num_workers, base.env_timeout)
        evals = None
        try:
            evals = eval_pool(base, len(members), eval_env_factory or env_factory, device)
            for i, m in enumerate(members):
                m.run.envs = EnvBlock(envs, m.lo, m.hi)
                m.run.evaluator.play = m.play
                m.run.use_pool(evals, i)
            total = sum(m.cfg.total_timesteps for m in members)
            train_members(members, envs, timer, on_eval, Progress(base.progress, total))
            close_members(members, envs)
            envs.close()  # before the final evaluations and files, as a solo run's `with run:`
            for m in members:
                m.run.settle()
            if evals is not None:
                prefetch_final(members, evals)
            for m in members:
                finish_member(m)
        finally:
            envs.close()
            if evals is not None:
                evals.close()
    return members, timer.us_per_iteration()


def eval_pool(base: Config, agents: int, make_env: EnvFactory | None, device: torch.device
              ) -> EvalPool | None:
    """Worker processes for the agents' evaluations, one per core: each agent's screens ride
    along beside the training there (paced on its own slot, `Run.maybe_evaluate`), side by
    side with the others'. On a GPU the agents evaluate in this process, one after another:
    a forked worker cannot use CUDA."""
    if not evaluates_alongside(device):
        return None
    return EvalPool(pool_workers(agents), base.env_id, base.eval_envs, make_env,
                    eval_epsilon(base.eval_epsilon, base.env_id), slots=agents)


def prefetch_final(members: list[Member], evals: EvalPool) -> None:
    """The final evaluations `Run.finish` will play (`Run.final_due`,
    `Evaluator.final_episodes`), all at once on the pool."""
    jobs = {}
    for m in members:
        if not m.run.final_due():
            continue
        count, first = m.run.evaluator.final_episodes()
        if count > 0:
            jobs[m.key] = (m, (count, first), evals.submit(
                m.agent.policy(), count, episode_seed(m.seed, SELECT, first)))
    if len(jobs) < 2:
        return
    for m, key, job in jobs.values():
        m.prefetched[key] = job.get()


def prepare_population(cfg: Config, seeds: list[int]) -> Path:
    """RUN, refusing to mix populations: one that holds population.json needs --resume (of
    the same seeds) or --overwrite."""
    root = population_dir(cfg)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--run-dir {root} is a file; pick a directory")
    held = (root / "population.json").exists()
    if cfg.resume and not held:
        raise ConfigError(f"--resume: no population.json in {root}; check --run-dir or start "
                          "without --resume")
    if cfg.resume:
        stored = read_population(root)["seeds"]
        if stored != seeds:
            raise ConfigError(f"--resume: {root} holds the population of --seeds "
                              f"{seeds_text(stored)}, not {seeds_text(seeds)}; drop --seeds to "
                              "continue it")
    elif held and not cfg.overwrite:
        raise ConfigError(f"{root} already holds a population; pass --resume to continue it, "
                          "--overwrite to replace it, or pick another --run-dir")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "population.json", {"seeds": seeds, "env_id": cfg.env_id,
                                                 "finished": False, "version": __version__})
    return root


def start_members(cfgs: dict[str, Config], env: EnvProbe, device: torch.device,
                  env_factory: EnvFactory | None, eval_env_factory: EnvFactory | None,
                  signals: Signals, started: float | None = None) -> list[Member]:
    """Each agent and its run (run dir, resumed checkpoint), its block of the envs in order."""
    algo, members, lo = ALGOS["dqn"], [], 0
    for key, c in cfgs.items():
        run_dir, ckpt = prepare_run(c, env)
        agent = start_agent(c, algo, env, device, run_dir, ckpt, env_factory=env_factory)
        run = Run(c, run_dir=run_dir, device=device, target_return=env.target_return,
                  obs_space=env.obs_space, act_space=env.act_space, ckpt=ckpt,
                  timer=StageTimer(("log",)), env_factory=env_factory,
                  eval_env_factory=eval_env_factory or env_factory, envs=_NoEnvs(),
                  signals=SharedSignals(signals), started=started)  # type: ignore[arg-type]
        run.attach(agent)
        run.logger.label = f"{key}: "
        run.logger.progress_on = False  # the population prints one line for all (Progress)
        # one process draws every agent's returns.png: each as often as a solo run's would
        # leave its share of the time (N x PLOT_EVERY_S), not N plots a minute
        run.plot_every = PLOT_EVERY_S * len(cfgs)
        run.next_plot = time.perf_counter() + run.plot_every
        members.append(Member(key, c.seed, c, agent, run, lo, lo + c.num_envs))
        lo += c.num_envs
    return members


class _NoEnvs:
    """A Run's envs while it has none of the population's: before the vector env exists (it is
    made after every agent) and after it closed."""

    closed = True


def reset_members(members: list[Member], envs) -> np.ndarray:
    """Reset the population's envs: each agent's from its own TRAIN stream at its step, or its
    checkpoint's in-flight episodes where every agent's checkpoint holds them."""
    starts = [m.run.ckpt.get("env_starts") if m.run.ckpt is not None else None for m in members]
    if (all(s and len(s) == m.cfg.num_envs for s, m in zip(starts, members))
            and getattr(envs, "restarts_episodes", True)):
        envs.set_attr("restart_from", [x for s in starts for x in s])
        return envs.reset()[0]
    seeds = [episode_seed(m.seed, TRAIN, m.run.c.step) + i
             for m in members for i in range(m.hi - m.lo)]
    return envs.reset(seed=seeds)[0]


def guarded(m: Member, step: Callable[..., None], *args: Any) -> None:
    """Run one agent's part of the step; a divergence stops that agent only."""
    try:
        step(*args)
    except TrainingDiverged as e:
        m.run.diverged = e
        m.live = False
        m.run.logger.message(str(e))


class Progress:
    """The population's console line: steps of all agents, SPS, live agents, and the median
    over agents of their last-100-episode mean return (twice a second to a terminal, every
    10 s to a log)."""

    def __init__(self, on: bool, total: int) -> None:
        self.on, self.total = on, total
        self.tty = sys.stderr.isatty()
        self.interval = 0.5 if self.tty else 10.0
        self.start = self.last = time.perf_counter()

    def show(self, members: list[Member], force: bool = False) -> None:
        now = time.perf_counter()
        if not self.on or (not force and now - self.last < self.interval):
            return
        self.last = now
        steps = sum(m.run.c.step for m in members)
        means = [float(np.mean(m.run.c.returns[-100:])) for m in members if m.run.c.returns]
        ret = f"{np.median(means):7.1f}" if means else "   n/a"
        bar = "#" * int(20 * min(1.0, steps / max(1, self.total)))
        line = (f"[{bar:<20}] {steps:>10,d}/{self.total:,d} steps  "
                f"{steps / max(now - self.start, 1e-9):7.0f} SPS  live "
                f"{sum(m.live for m in members)}/{len(members)}  median return(100) {ret}")
        sys.stderr.write("\r" + line if self.tty else line + "\n")
        if force and self.tty:
            sys.stderr.write("\n")
        sys.stderr.flush()


def train_members(members: list[Member], envs, timer: StageTimer,
                  on_eval: Callable[[dict[str, dict]], set[str]] | None,
                  progress: Progress | None = None) -> None:
    """The population's loop: every live agent acts, the envs step (only live agents' blocks)
    while every live agent learns, then each adds its transitions and runs its run's hooks."""
    lap, total = timer.lap, envs.num_envs
    obs = reset_members(members, envs)
    for m in members:
        m.obs = m.agent.observe(obs[m.lo:m.hi])
    actions = np.zeros(total, dtype=np.int64)
    active = np.ones(total, dtype=bool)
    stacks: dict = {}  # the vmapped gradient of each kind of reference-route agent
    while True:
        for m in members:
            if m.live and not m.run.running():
                m.live = False
        live = [m for m in members if m.live]
        if progress is not None:
            progress.show(members, force=not live)
        if not live:
            return
        active[:] = False
        for m in live:
            active[m.lo:m.hi] = True
            m.eps = m.agent.epsilon(m.run.c)
            m.actions = m.agent.act(m.obs, m.eps, m.run.c.step)
            actions[m.lo:m.hi] = m.actions.cpu().numpy()
        lap("act")
        envs.step_async(actions, None if active.all() else active)
        lap("env_send")
        learn_all([(m.agent, m.run.c) for m in live], lap, _failed(live), stacks)
        next_obs, rewards, terminated, truncated, infos = envs.step_wait()
        lap("env_wait")
        for m in live:
            if m.live:  # else its learner diverged
                guarded(m, add_member, m, next_obs, rewards, terminated, truncated, infos, total)
        lap("add")
        evaluated = False
        for m in live:
            if m.live:
                before = len(m.run.c.evals)
                guarded(m, hooks, m)
                evaluated |= len(m.run.c.evals) > before
        lap("hooks")
        timer.iteration_done(sum(m.run.c.step for m in members))
        if evaluated and on_eval is not None:
            pruned = on_eval({m.key: m.run.c.evals[-1] for m in members if m.run.c.evals})
            for m in members:
                if m.live and m.key in pruned:
                    m.run.stop("the tuner pruned this trial")
                    m.live = False


def _failed(live: list[Member]) -> Callable[[int, BaseException], None]:
    """learn_all's report of agent i's divergence: that agent stops."""
    def failed(i: int, e: BaseException) -> None:
        def throw() -> None:
            raise e
        guarded(live[i], throw)
    return failed


def add_member(m: Member, next_obs: np.ndarray, rewards: np.ndarray, terminated: np.ndarray,
               truncated: np.ndarray, infos: dict, total: int) -> None:
    """One agent's transitions of a vector step, on its block of the envs: what the solo loop
    (algos/dqn/loop.py) does after env_wait, up to its run's hooks (`hooks`)."""
    lo, hi, agent = m.lo, m.hi, m.agent
    mine = slice_infos(infos, lo, hi, total)
    nxt, rew, term, trunc = next_obs[lo:hi], rewards[lo:hi], terminated[lo:hi], truncated[lo:hi]
    agent.add(m.obs, m.actions, rew, real_next_obs(nxt, mine, agent.real_next), term, trunc,
              mine)
    m.obs = agent.observe(nxt)
    m.run.count_step(rew, term, trunc)


def hooks(m: Member) -> None:
    """One agent's run's hooks after a step: logging, its evaluation when due (a solved agent
    stops), its checkpoint when due."""
    run = m.run
    run.maybe_log(epsilon=m.eps)
    if run.maybe_evaluate():
        m.live = False
        return
    run.maybe_checkpoint()


def close_members(members: list[Member], envs) -> None:
    """What `with run:` does as a solo loop ends: a last finiteness check, and each agent's
    in-flight episode starts for its final checkpoint (read before the envs close)."""
    starts = envs.get_attr("episode_start") if not getattr(envs, "closed", False) else ()
    for m in members:
        if m.run.diverged is None and not m.agent.all_finite():
            m.run.diverged = TrainingDiverged(divergence_message(
                m.cfg, m.run.c.step, "NaN or inf in the network"))
        m.run.env_starts[:] = list(starts[m.lo:m.hi]) if len(starts) else []
        m.run.envs = _NoEnvs()


def finish_member(m: Member) -> None:
    """The agent's run's end (final evaluation, checkpoint.pt, best.pt, summary.json); a
    divergence is kept as the agent's, not raised."""
    try:
        m.result = m.run.finish(epsilon=m.agent.epsilon(m.run.c))
    except TrainingDiverged:
        pass  # written: its summary.json says diverged, and the loop logged the line


def write_population(root: Path, cfg: Config, seeds: list[int], members: list[Member],
                     stage_us: dict[str, float], wall: float, target: float | None) -> dict:
    """population.json (each seed's outcome, and across seeds `fastdqn report`'s statistics of
    the final evaluation and the steps to solve) and population.png (every seed's evaluation
    curve, their mean and its 95% CI)."""
    from fastdqn.evaluation.report import Group, Unfinished, load_run, make_report

    agents, records, notes = [], [], []
    for k in seeds:
        run_dir = root / f"seed-{k}"
        entry: dict[str, Any] = {"seed": k, "run_dir": str(run_dir)}
        try:
            record = load_run(run_dir)
        except (Unfinished, ConfigError) as e:
            entry["unfinished"] = str(e)
            agents.append(entry)
            continue
        records.append(record)
        entry.update({key: value for key, value in record.to_dict().items()
                      if key not in ("run_dir", "env_id", "algo", "target_return")})
        agents.append(entry)
    steps = sum(m.run.c.step for m in members)
    summary: dict[str, Any] = {
        "seeds": seeds, "env_id": cfg.env_id, "algo": cfg.algo, "target_return": target,
        "finished": all("unfinished" not in a for a in agents),
        "solved": f"{sum(bool(a.get('solved')) for a in agents)}/{len(seeds)}",
        "wall_time_s": round(wall, 3), "env_steps_this_process": steps,
        "sps": round(steps / wall, 1) if wall > 0 else 0.0,
        "stage_us_per_iter": {k: round(v, 1) for k, v in stage_us.items()},
        "agents": agents, "statistics": None, "config": cfg.to_dict(), "version": __version__,
    }
    if records:
        try:
            report = make_report([Group("population", records)])
            cell = report.cells[0].to_dict()
            summary["statistics"] = {key: cell[key] for key in (
                "runs", "evaluated", "solved", "final_return", "steps_to_solve",
                "seconds_to_solve", "curve")}
            summary["statistics"]["method"] = report.to_dict()["method"]
            report.plot(root / "population.png")
        except ConfigError as e:  # rliable is an optional extra
            notes.append(f"no statistics across seeds: {e}")
    if notes:
        summary["notes"] = notes
    atomic_write_json(root / "population.json", summary)
    return summary
