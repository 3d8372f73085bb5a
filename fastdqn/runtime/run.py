"""The lifecycle every algorithm shares: run dir, envs, signals, episode statistics, logging,
evaluation, checkpoints, the final evaluation and summary.json.

An algorithm brings an *agent* (its networks, replay or rollout storage, and update) and a loop
that calls the run's hooks; the run never knows which algorithm it serves. The agent gives the
run what a checkpoint holds (`state_dict`), how to act greedily for evaluation (`greedy`), its
loss statistics (`pop_stats`), a finiteness check (`all_finite`), the trained `policy()` and
its lines of summary.json (`summary`). This is composition, not a base class: any object with
those methods is an agent.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastdqn.algos.contract import Agent, Counters, EpisodeTally, divergence_message
from fastdqn.config.settings import Config
from fastdqn.core.checkpoint import atomic_write_bytes, atomic_write_json, checkpoint_bytes
from fastdqn.core.logger import RunLogger, StageTimer, WandbTracker, plot_returns
from fastdqn.core.seeds import SELECT, TRAIN, episode_seed
from fastdqn.envs.atari import eval_epsilon
from fastdqn.envs.backends import make_vector_env
from fastdqn.envs.make import EnvFactory
from fastdqn.envs.workers import start_method, usable_cores
from fastdqn.errors import TrainingDiverged
from fastdqn.evaluation.episodes import EvalResult, run_episodes
from fastdqn.evaluation.policies import Policy
from fastdqn.evaluation.pool import EvalPool, PendingScreen
from fastdqn.version import __version__

STAT_LABELS = {"losses/td_loss": "TD loss", "losses/q_values": "mean Q"}
"""How a divergence message names an agent's logged statistics."""

PLOT_EVERY_S = 60.0
"""returns.png is redrawn at an eval at most this often during training (and always at the
end): one redraw costs ~0.5 s of matplotlib here, which at every eval was a fifth of a run."""


@dataclass
class TrainResult:
    """What `train` hands back: where the run lives, its summary, and the greedy policy (the
    snapshot that solved the run, when one did; else the policy at the end)."""

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


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------


class Signals:
    """SIGINT / SIGTERM ask the loop to stop after its iteration (it checkpoints and exits);
    a second one leaves at once through KeyboardInterrupt, checkpoint.pt staying intact.
    Handlers are installed only in the main thread (Python allows no other). `train` installs
    them as soon as the run dir exists and keeps them to the end of `Run.finish`: a signal during
    start-up, the final evaluation or the last writes is the first one, not the default handler's
    instant death."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._saved: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.received is not None:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> Signals:
        """Install the handlers (a second enter, while they are installed, changes nothing)."""
        if not self._saved and threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._saved[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._saved.items():
            signal.signal(s, h)
        self._saved.clear()


# ---------------------------------------------------------------------------------------------
# Evaluation: cadence, records, selection of best.pt, the solved decision
# ---------------------------------------------------------------------------------------------


class Evaluator:
    """When to evaluate, what each evaluation records, which policy is best, when a run is solved.

    Periodic (screening) evaluations play the same --eval-episodes SELECT seeds every time; when
    their mean reaches the target a confirming evaluation extends them to --solve-episodes. best.pt
    is the highest screening mean (a confirming or final evaluation counts with its first
    --eval-episodes episodes only), so every candidate is scored on the same starts.
    """

    def __init__(self, cfg: Config, counters: Counters, target_return: float | None,
                 play: Callable[..., EvalResult], logger: RunLogger,
                 elapsed: Callable[[], float]) -> None:
        self.cfg, self.c, self.target, self.play, self.logger = (
            cfg, counters, target_return, play, logger)
        self.elapsed = elapsed  # the run's wall clock (s), resumed runs included
        self.latest: EvalResult | None = None  # the newest result, with its returns

    def due(self) -> bool:
        return bool(self.cfg.eval_every) and self.c.step >= self.c.next_eval

    def start(self) -> None:
        """A screen is starting: the next is due --eval-every steps on."""
        self.c.next_eval += self.cfg.eval_every

    def periodic(self) -> tuple[EvalResult, bool, bool]:
        """Screen the agent now, here (and confirm when it reaches the target); returns
        (result, improved, solved)."""
        self.start()
        return self.screened(self.play(self.cfg.eval_episodes, 0), self.c.step)

    def screened(self, screen: EvalResult, step: int, policy: Callable | None = None
                 ) -> tuple[EvalResult, bool, bool]:
        """A screen of the policy of `step` (`policy`: its snapshot; None: the agent's own) is
        in: confirm it when it reaches the target, record it; returns (result, improved,
        solved)."""
        cfg = self.cfg
        result, kind = screen, "screen"
        cut = result.episodes < cfg.eval_episodes  # a signal stopped it
        rest = self.confirming(result)
        if rest:
            more = self.play(rest, cfg.eval_episodes, policy)
            cut = more.episodes < rest
            result, kind = combine(result, more), "confirm"
        if result.episodes == 0:
            return result, False, False
        self.record(result, kind, cut, step)
        self.logger.message(f"eval at {step:,d} steps: {result.mean:.1f} ± {result.std:.1f}"
                            f" over {result.episodes} episodes")
        return result, self.select(result, cut, step), self.solves(result)

    def confirming(self, screen: EvalResult) -> int:
        """The episodes that confirm a whole screen which reached the target (the rest of
        --solve-episodes, from episode --eval-episodes on), or 0."""
        cfg = self.cfg
        if (screen.episodes < cfg.eval_episodes or self.target is None
                or screen.mean < self.target):
            return 0
        return max(0, cfg.solve_episodes - cfg.eval_episodes)

    def final_episodes(self) -> tuple[int, int]:
        """(episodes, first) the final evaluation plays: --solve-episodes from episode 0, or
        the rest of an evaluation made at this step (the loop's last), extended, not replayed."""
        c, have = self.c, self.latest
        last = c.evals[-1] if c.evals else None
        if have is not None and last is not None and last["step"] == c.step and not last.get(
                "final"):
            return self.cfg.solve_episodes - have.episodes, have.episodes
        return self.cfg.solve_episodes, 0

    def final(self) -> tuple[EvalResult | None, bool, bool]:
        """--solve-episodes greedy episodes of the final policy, each played once: an evaluation
        already made at this step (the loop's last) is extended, not replayed. Returns (result,
        improved, solved): over --solve-episodes selection episodes it decides solved as a
        confirming evaluation does (a run with --eval-every 0 is judged here). A signal cuts it
        short (the result then covers fewer episodes, or is None when none ended)."""
        count, first = self.final_episodes()
        if first:  # extends the evaluation made at this step
            self.c.evals.pop()
            have = self.latest
            result = combine(have, self.play(count, first)) if count > 0 else have
        else:
            result = self.play(count, 0)
        if result.episodes == 0:
            return None, False, False
        cut = result.episodes < self.cfg.solve_episodes
        self.record(result, "final", cut)["final"] = True
        return result, self.select(result, cut), self.solves(result)

    def solves(self, result: EvalResult) -> bool:
        """Does this evaluation solve the run: --solve-episodes episodes or more, their mean at
        the target?"""
        return (self.target is not None and result.episodes >= self.cfg.solve_episodes
                and result.mean >= self.target)

    def record(self, result: EvalResult, kind: str, cut: bool = False,
               step: int | None = None) -> dict:
        """An eval's entry in summary.json: the policy of which step was measured, at what
        wall time (and step) its result was known, on how many episodes, which seeds (and
        `interrupted` when a signal cut it short)."""
        step = self.c.step if step is None else step
        entry = {"step": step, "wall_time_s": round(self.elapsed(), 3),
                 "kind": kind, **result.to_dict(), "seeds": self.seeds(result.episodes)}
        if step != self.c.step:
            entry["known_at_step"] = self.c.step
        if cut:
            entry["interrupted"] = True
        self.c.evals.append(entry)
        self.latest = result
        self.logger.scalar("eval/mean_return", result.mean, step)
        self.logger.scalar("eval/std_return", result.std, step)
        return entry

    def seeds(self, count: int) -> dict:
        return {"stream": "select", "first": episode_seed(self.cfg.seed, SELECT), "count": count}

    def select(self, result: EvalResult, cut: bool = False, step: int | None = None) -> bool:
        """Is this the best policy so far (by its screening episodes)? An evaluation a signal
        cut short before its screening episodes ended competes with none."""
        if cut and result.episodes < self.cfg.eval_episodes:
            return False
        score = float(np.mean(result.returns[:self.cfg.eval_episodes]))
        if score > self.c.best_eval:
            self.c.best_eval = score
            self.c.best_step = self.c.step if step is None else step
            return True
        return False

    def best(self) -> dict | None:
        if self.c.best_eval == -math.inf:
            return None
        return {"mean": self.c.best_eval, "step": self.c.best_step,
                "episodes": self.cfg.eval_episodes, "seeds": self.seeds(self.cfg.eval_episodes)}


def combine(a: EvalResult, b: EvalResult) -> EvalResult:
    """Two evaluations of the same policy on consecutive seeds, as one."""
    r = np.array(a.returns + b.returns)
    return EvalResult(float(r.mean()), float(r.std()), float(r.min()), float(r.max()), len(r),
                      r.tolist(), a.lengths + b.lengths)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class Run:
    """One training run: owns the envs, counters, logger, signals, evaluator and checkpoints.

    Use: `run = Run(...)`, `run.attach(agent)`, `obs = run.reset_envs()`, then in the loop
    `run.running()`, `run.count_step(...)`, `run.maybe_log(...)`, `run.maybe_evaluate()`,
    `run.maybe_checkpoint()`, all inside `with run:` (which turns a divergence into a clean stop
    and always closes the envs), and last `run.finish()`. The signal handlers `with run:`
    installs stay until `finish` returns (or until the block raises: then it never runs).
    """

    def __init__(self, cfg: Config, *, run_dir: Path, device: torch.device,
                 target_return: float | None, obs_space, act_space, ckpt: dict | None,
                 timer: StageTimer, env_factory: EnvFactory | None,
                 eval_env_factory: EnvFactory | None, envs=None,
                 signals: Signals | None = None, started: float | None = None) -> None:
        """`started`: when the run's clock starts on perf_counter's scale (the command's
        process start, so that its set-up counts); now by default."""
        self.cfg, self.run_dir, self.device, self.timer = cfg, run_dir, device, timer
        self.target_return, self.ckpt = target_return, ckpt
        self.obs_space, self.act_space = obs_space, act_space
        self.c = Counters(next_eval=cfg.eval_every, next_checkpoint=cfg.checkpoint_every,
                          next_log=cfg.log_every)
        if ckpt is not None:
            self.c = Counters(**ckpt["counters"])
        self.agent: Agent | None = None
        self.env_starts: list = []
        self.tally = EpisodeTally(cfg.num_envs)
        self.eval_env_factory = eval_env_factory
        # Envs first: async workers are forked, which must happen before any thread starts.
        self.envs = envs if envs is not None else make_vector_env(
            cfg.env_id, cfg.num_envs, cfg.vector, env_factory, cfg.num_workers, cfg.env_timeout)
        # The evaluation worker next, before a thread starts (the logger's writer).
        self.pool: EvalPool | None = None
        self.slot, self.owns_pool = 0, envs is None and evaluates_alongside(device)
        if self.owns_pool:
            self.pool = EvalPool(1, cfg.env_id, cfg.eval_envs, eval_env_factory,
                                 eval_epsilon(cfg.eval_epsilon, cfg.env_id))
        self.pending: PendingScreen | None = None
        self.best_state: bytes | None = None  # best.pt's bytes when a snapshot was the best
        self.solved_policy: Policy | None = None  # the snapshot that solved the run
        resumed_at = self.c.step if ckpt is not None else None
        tracker = (WandbTracker(cfg.wandb, run_dir, cfg.to_dict(), cfg.wandb_group or None,
                                resumed_at) if cfg.wandb else None)
        self.logger = RunLogger(run_dir, cfg.total_timesteps, cfg.progress,
                                purge_step=resumed_at, tracker=tracker)
        self.start = (time.perf_counter() if started is None else started) - self.c.wall_time
        self.evaluator = Evaluator(cfg, self.c, target_return, self._play, self.logger,
                                   lambda: time.perf_counter() - self.start)
        # the caller's handlers when it installed them before the agent's set-up and the envs
        self.signals = signals if signals is not None else Signals()
        self.window = (time.perf_counter(), self.c.step)
        self.sps = 0.0
        self.logged_episodes = self.c.episodes
        self.plot_every = PLOT_EVERY_S  # a population of N draws each agent's every N x this
        self.next_plot = time.perf_counter() + self.plot_every
        self.solved_at: tuple[int, float] | None = None
        self.final_eval: EvalResult | None = None
        self.best_due = False
        self.diverged: TrainingDiverged | None = None
        self.stopped: str | None = None  # why the loop gave up (Ape-X's actors lost)

    def attach(self, agent: Agent) -> None:
        self.agent = agent

    def use_pool(self, pool: EvalPool | None, slot: int) -> None:
        """Evaluate on a pool the caller owns (a population's), pacing screens on `slot`."""
        self.pool, self.slot = pool, slot

    def close_pool(self) -> None:
        if self.owns_pool and self.pool is not None:
            self.pool.close()
        self.pool = self.pending = None

    # -- the loop's hooks ----------------------------------------------------------------------

    def __enter__(self) -> Run:
        self.signals.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        finishing = False  # the signal handlers stay for finish(), unless it will not run
        try:
            try:
                if exc_type is None:
                    if not self.agent.all_finite():
                        raise TrainingDiverged(divergence_message(
                            self.cfg, self.c.step, "NaN or inf in the network"))
                    self.env_starts[:] = self.envs.get_attr("episode_start")
            except TrainingDiverged as e:
                exc_type, exc = TrainingDiverged, e
            finally:
                self.envs.close()
            finishing = exc_type in (None, TrainingDiverged)
        finally:
            if not finishing:
                self.close_pool()
                self.signals.__exit__()
        if exc_type is TrainingDiverged:
            self.diverged = exc
            return True
        return False

    def reset_envs(self) -> np.ndarray:
        """Reset every env: in-flight episodes of a resumed run restart as they began, where
        the vector env can (EnvPool cannot: its envs start fresh episodes of the TRAIN stream
        at the resumed step, as they do when the checkpoint holds no starts)."""
        starts = self.ckpt.get("env_starts") if self.ckpt is not None else None
        if starts and not getattr(self.envs, "restarts_episodes", True):
            self.logger.message(f"--vector {self.cfg.vector} cannot restart the checkpoint's "
                                f"{len(starts)} in-flight episodes as they began; they start "
                                "afresh")
            starts = None
        if starts and len(starts) == self.cfg.num_envs:
            self.envs.set_attr("restart_from", starts)
            obs, _ = self.envs.reset()
        else:
            obs, _ = self.envs.reset(seed=episode_seed(self.cfg.seed, TRAIN, self.c.step))
        return obs

    def running(self) -> bool:
        cfg, c = self.cfg, self.c
        return (c.step < cfg.total_timesteps and self.signals.received is None
                and not (cfg.total_episodes and c.episodes >= cfg.total_episodes))

    def count_step(self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray
                   ) -> None:
        """Advance the step counters and close the episodes that ended in this vector step."""
        self.count_block(self.cfg.num_envs, self.tally.step(rewards, terminated | truncated))

    def count_block(self, steps: int, ended: list[tuple[float, int]]) -> None:
        """Advance the counters by `steps` env steps and record the (return, length) of the
        episodes that ended in them, stamped at the last step: one vector step here, or a block
        an Ape-X actor collected."""
        c = self.c
        c.step += steps
        c.iteration += 1
        for ret, length in ended:
            c.returns.append(float(ret))
            c.lengths.append(int(length))
            c.end_steps.append(c.step)
            c.episodes += 1

    def stop(self, reason: str) -> None:
        """The loop cannot go on: finish writes the checkpoint and the summary says why."""
        self.stopped = reason
        self.logger.message(f"stopping: {reason}")

    def maybe_log(self, **scalars: float) -> None:
        """TensorBoard scalars every --log-every steps (the agent's loss statistics are read,
        and checked for NaN, only then), the progress line when due, the stage timer."""
        c, cfg = self.c, self.cfg
        if c.step >= c.next_log:
            c.next_log += cfg.log_every
            now = time.perf_counter()
            self.sps = (c.step - self.window[1]) / max(now - self.window[0], 1e-9)
            self.window = (now, c.step)
            self._log_episodes()
            values = {f"charts/{k}": v for k, v in scalars.items()}
            values["charts/sps"] = self.sps
            if c.returns:
                values["charts/mean_return_100"] = mean100(c.returns)
            stats = self.agent.pop_stats()
            if stats is not None:
                if not all(map(math.isfinite, stats.values())):
                    raise TrainingDiverged(divergence_message(cfg, c.step, ", ".join(
                        f"{STAT_LABELS.get(k, k)} {v:g}" for k, v in stats.items())))
                values.update(stats)
            for name, us in self.timer.us_per_iteration().items():
                values[f"time/{name}_us_per_iter"] = us
            self.logger.scalars(values, c.step)
        if self.logger.progress_due():
            self.logger.progress(c.step, self.sps, mean100(c.returns), scalars.get("epsilon"))
        self.timer.lap("log")
        self.timer.iteration_done(c.step)

    def maybe_evaluate(self) -> bool:
        """Screen when due: beside the training on the pool (its result counts some steps
        later, `PendingScreen`), else here and now. True when the run is solved (the loop
        stops)."""
        cfg, c = self.cfg, self.c
        if self.pending is not None:
            # counted by the next screen's step at the latest, so the cadence stays the same
            screen = self.pending.taken(c.step, wait=self.evaluator.due())
            if screen is None:
                return False
            if self._screened(screen):
                return True
        if not self.evaluator.due():
            return False
        if self.pool is None:
            return self._concluded(c.step, None, None, *self.evaluator.periodic())
        self.evaluator.start()
        self.pending = PendingScreen(self.pool, self.slot, c.step, self.agent.policy(),
                                     cfg.eval_episodes, episode_seed(cfg.seed, SELECT, 0),
                                     checkpoint_bytes(self.state()))
        return False

    def settle(self) -> None:
        """The screen in flight as the loop ends: its result counts now (waited for), unless
        a signal, a divergence or a stop ended the loop (then it is dropped)."""
        if self.pending is not None:
            if self.final_due():
                self._screened(self.pending.taken(self.c.step, wait=True))
            self.pending = None

    def _screened(self, screen: EvalResult) -> bool:
        """The result of the screen in flight is in: confirm and record it (of its snapshot)."""
        pending, self.pending = self.pending, None
        return self._concluded(pending.step, pending.state, pending.policy,
                               *self.evaluator.screened(screen, pending.step, pending.policy))

    def _concluded(self, step: int, best: bytes | None, policy: Policy | None,
                   result: EvalResult, improved: bool, solved: bool) -> bool:
        """An evaluation of the policy of `step` (`policy`, `best`: its snapshot and its
        checkpoint's bytes; None: the run now) is recorded: write checkpoint.pt, and best.pt
        when it is the best; True when it solves the run (whose policy is then the one that
        solved it, not the one training went on to)."""
        if time.perf_counter() >= self.next_plot:
            self._plot()
            self.next_plot = time.perf_counter() + self.plot_every
        if solved:
            self.solved_at = (step, time.perf_counter() - self.start)
            self.final_eval, self.best_due = result, improved
            self.best_state = best if improved else None
            self.solved_policy = policy
            return True
        # Every evaluation writes checkpoint.pt (resumable from the first one on), and before
        # best.pt, so a kill -9 between the two leaves a checkpoint to resume.
        self.save("checkpoint.pt", self.cfg.save_buffer)
        if improved:
            self.save("best.pt", state=best)
        if self.cfg.checkpoint_every and self.c.step >= self.c.next_checkpoint:
            self.c.next_checkpoint += self.cfg.checkpoint_every
        return False

    def maybe_checkpoint(self) -> None:
        """checkpoint.pt every --checkpoint-every steps; while a screen is in flight, when its
        result is in (which writes one), so that no checkpoint forgets a screen."""
        if self.pending is not None:
            return
        if self.cfg.checkpoint_every and self.c.step >= self.c.next_checkpoint:
            self.c.next_checkpoint += self.cfg.checkpoint_every
            self.save("checkpoint.pt", self.cfg.save_buffer)

    # -- files ---------------------------------------------------------------------------------

    def save(self, name: str, with_buffer: bool = False, state: bytes | None = None) -> None:
        """Write a checkpoint of the run now (or `state`, a snapshot's bytes), never a
        non-finite one (TrainingDiverged instead)."""
        atomic_write_bytes(self.run_dir / name,
                           state if state is not None else checkpoint_bytes(self.state(with_buffer)))

    def state(self, with_buffer: bool = False) -> dict:
        """What a checkpoint of the run now holds; TrainingDiverged when the network is not
        finite."""
        cfg, agent = self.cfg, self.agent
        if not agent.all_finite():
            raise TrainingDiverged(divergence_message(cfg, self.c.step, "NaN or inf in the network"))
        if not self.envs.closed:
            self.env_starts[:] = self.envs.get_attr("episode_start")
        self.c.wall_time = time.perf_counter() - self.start
        state = {
            "version": __version__, "algo": cfg.algo, "config": cfg.to_dict(),
            "env": {"id": cfg.env_id, "obs_shape": list(self.obs_space.shape),
                    "obs_dtype": str(self.obs_space.dtype), "n_actions": int(self.act_space.n)},
            **agent.state_dict(with_buffer), "counters": self.c.__dict__,
            "env_starts": list(self.env_starts),
        }
        state["rng"] = {**state.get("rng", {}), "torch": torch.get_rng_state()}
        return state

    def _play(self, episodes: int, first: int, policy: Callable | None = None) -> EvalResult:
        """Greedy (--eval-epsilon: epsilon-greedy) episodes first .. first+episodes-1 of the
        SELECT seed stream, of `policy` (a snapshot) or of the agent now. With a pool, the
        later half plays there meanwhile (each episode's result is the same wherever it
        plays). A signal ends it early, with the episodes that ended before it."""
        cfg = self.cfg

        def play(policy: Callable, count: int, first: int) -> EvalResult:
            return run_episodes(policy, cfg.env_id, count, episode_seed(cfg.seed, SELECT, first),
                                cfg.eval_envs, make_env=self.eval_env_factory,
                                epsilon=eval_epsilon(cfg.eval_epsilon, cfg.env_id),
                                stop=lambda: self.signals.received is not None)
        if self.pool is None or episodes < 2:
            return play(self.agent.greedy if policy is None else policy, episodes, first)
        policy = self.agent.policy() if policy is None else policy
        half = episodes // 2
        later = self.pool.submit(policy, episodes - half, episode_seed(cfg.seed, SELECT,
                                                                        first + half))
        mine = play(policy, half, first)
        if mine.episodes < half:  # a signal cut it short: no later episode counts
            return mine
        return combine(mine, later.get())

    def _log_episodes(self) -> None:
        """Write finished episodes to TensorBoard in one batch at log time, not as each one ends
        (a scalar costs ~30 us)."""
        c = self.c
        for j in range(self.logged_episodes, c.episodes):
            self.logger.scalar("charts/episodic_return", c.returns[j], c.end_steps[j])
            self.logger.scalar("charts/episodic_length", c.lengths[j], c.end_steps[j])
        self.logged_episodes = c.episodes

    def _plot(self) -> None:
        plot_returns(self.run_dir / "returns.png", self.c.returns, self.c.end_steps,
                     self.cfg.env_id, self.target_return)
        self.logger.show_plot(self.run_dir / "returns.png")

    def _final_eval_entry(self) -> dict | None:
        """summary.json's final_eval: the last evaluation's statistics, marked `interrupted`
        when a signal cut it short of --solve-episodes episodes."""
        if self.final_eval is None:
            return None
        entry = self.final_eval.to_dict()
        if self.final_eval.episodes < self.cfg.solve_episodes:
            entry["interrupted"] = True
        return entry

    def finish(self, **progress: Any) -> TrainResult:
        """Final evaluation (unless solved, interrupted or diverged), checkpoint.pt, best.pt,
        summary.json and returns.png; re-raises a divergence after writing them.

        The signal handlers stay until it returns: a first signal during the final evaluation
        cuts it short (summary.json says how many episodes it covered) and the files are still
        written; a second one leaves at once (KeyboardInterrupt)."""
        try:
            return self._finish(progress)
        finally:
            self.close_pool()
            self.signals.__exit__()

    def final_due(self) -> bool:
        """Whether `finish` plays a final evaluation: not after a solving one, a signal, a
        divergence or a stop."""
        return (self.final_eval is None and self.signals.received is None
                and self.diverged is None and self.stopped is None)

    def _finish(self, progress: dict) -> TrainResult:
        cfg, c, agent = self.cfg, self.c, self.agent
        self.settle()
        if self.final_due():
            self.final_eval, self.best_due, solves = self.evaluator.final()
            self.best_state = None
            if solves:
                self.solved_at = (c.step, time.perf_counter() - self.start)
        if self.diverged is None:
            self.save("checkpoint.pt", cfg.save_buffer)
            if self.best_due or not (self.run_dir / "best.pt").exists():
                self.save("best.pt", state=self.best_state if self.best_due else None)
        wall = time.perf_counter() - self.start
        self._log_episodes()
        self.logger.progress(c.step, self.sps, mean100(c.returns), progress.get("epsilon"),
                             force=True)
        solved = self.solved_at
        received = self.signals.received  # one arriving later finds the run complete
        interrupted = received is not None
        summary = {
            "env_id": cfg.env_id, "algo": cfg.algo, "total_env_steps": c.step,
            "wall_time_s": round(wall, 3), "sps": round(c.step / wall, 1) if wall > 0 else 0.0,
            "solved": solved is not None,
            "time_to_solve_s": round(solved[1], 3) if solved else None,
            "steps_to_solve": solved[0] if solved else None,
            "final_eval": self._final_eval_entry(),
            "best_eval": self.evaluator.best(),
            "target_return": self.target_return, "episodes": c.episodes,
            "train_mean_return_100": mean100(c.returns),
            "interrupted": interrupted, "diverged": self.diverged is not None,
            "stopped": self.stopped,
            "device": str(self.device), **agent.summary(),
            "stage_us_per_iter": {k: round(v, 1) for k, v in self.timer.us_per_iteration().items()},
            "evals": c.evals, "config": cfg.to_dict(), "version": __version__,
        }
        atomic_write_json(self.run_dir / "summary.json", summary)
        self._plot()
        self.logger.close(summary)
        if self.diverged is not None:
            raise self.diverged
        policy = self.solved_policy if self.solved_policy is not None else agent.policy()
        return TrainResult(self.run_dir, summary, policy, c.returns, c.end_steps, received)


def evaluates_alongside(device: torch.device) -> bool:
    """Whether a run's evaluations play on a worker process beside its training: on the CPU
    (a forked worker cannot use CUDA), with fork, and with a second core to play on."""
    return device.type == "cpu" and start_method() == "fork" and usable_cores() >= 2


def mean100(returns: list[float]) -> float | None:
    """Mean return of the last 100 episodes (None before the first one ends)."""
    return float(np.mean(returns[-100:])) if returns else None
