"""Evaluations on worker processes, beside the training: a run's screens ride along while it
trains, its longer evaluations split across the cores, and a population's agents evaluate side
by side. Each evaluation is `run_episodes` itself on a snapshot of the policy, so its result is
the one the trainer would have computed, episode for episode.

Played in the trainer, a run's evaluations stopped its training: 16 ten-episode screens and a
100-episode confirmation were 43% of LunarLander's time to solve, while the env worker sat
idle half of every iteration. A screen played here instead reports its progress in env steps
(a shared counter per slot), which is what `PendingScreen` paces on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym

from fastdqn.envs.workers import become_worker, start_method, usable_cores
from fastdqn.evaluation.episodes import EvalResult, run_episodes

NICE = 5
"""How much a worker yields to the trainer and its env workers: a screen should take the
cores' idle time first (the pacing stops the trainer when a screen falls behind)."""


def _serve(conn: Connection, trainer: int, env_id: str, num_envs: int,
           make_env: Callable[[], gym.Env] | None, epsilon: float, progress: Any) -> None:
    """A worker: play each evaluation it is sent, send back its EvalResult (or the exception
    it raised), until the trainer hangs up."""
    become_worker(trainer)
    try:
        os.nice(NICE)
    except (OSError, AttributeError):
        pass
    import torch

    torch.set_num_threads(1)
    while True:
        try:
            task = conn.recv_bytes()
        except (EOFError, OSError):
            return
        policy, episodes, seed, slot = pickle.loads(task)
        on_steps = None
        if slot is not None:
            def on_steps(n: int, slot: int = slot) -> None:
                progress[slot] += n
        try:
            reply: Any = run_episodes(policy, env_id, episodes, seed, num_envs,
                                      make_env=make_env, epsilon=epsilon, on_steps=on_steps)
        except Exception as e:  # the trainer raises it where it asks for the result
            reply = e
        conn.send(reply)


class Job:
    """An evaluation sent to a worker: `ready()`, `wait(timeout)`, `get()` (its EvalResult)."""

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.done, self.result = False, None

    def ready(self) -> bool:
        self.worker.collect(0)
        return self.done

    def wait(self, timeout: float | None) -> None:
        if not self.done:
            self.worker.collect(timeout)

    def get(self) -> EvalResult:
        while not self.done:
            self.worker.collect(None)
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


class _Worker:
    """One worker process and the jobs it was sent, answered in the order sent."""

    def __init__(self, ctx, args: tuple) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        self.jobs: deque[Job] = deque()

    def collect(self, timeout: float | None) -> None:
        """Take the next answer, waiting up to `timeout` s for it (None: as long as it takes)."""
        if not self.jobs or not self.conn.poll(timeout):
            return
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"an evaluation worker died (exit code {self.proc.exitcode}); "
                               "its evaluation is lost") from None
        job = self.jobs.popleft()
        job.result, job.done = reply, True


class EvalPool:
    """`workers` processes that each play whole evaluations (`submit`), forked once with the
    env settings every evaluation shares, and `slots` progress counters (one per run that
    paces a screen on them). No thread of the trainer's serves them (a fork stays safe), and
    the policy is pickled as `submit` is called: what plays is the snapshot of that moment.
    It is pickled by value, with the plain pickler: multiprocessing's would hand its tensors
    over as shared memory through a file-descriptor server, a thread in the trainer (which
    printed a ConnectionResetError at exit when a signal ended the run mid-handshake). The
    workers leave signals to the trainer and die with it."""

    def __init__(self, workers: int, env_id: str, num_envs: int,
                 make_env: Callable[[], gym.Env] | None, epsilon: float, slots: int = 1) -> None:
        ctx = mp.get_context(start_method())
        self.progress = ctx.RawArray("q", max(1, slots))
        args = (os.getpid(), env_id, num_envs, make_env, epsilon, self.progress)
        self.workers = [_Worker(ctx, args) for _ in range(max(1, workers))]

    def submit(self, policy: Callable, episodes: int, seed: int, slot: int | None = None) -> Job:
        """An evaluation of `policy` on episodes seed .. seed+episodes-1, on the least busy
        worker, counting its env steps in `slot`."""
        if slot is not None:
            self.progress[slot] = 0
        worker = min(self.workers, key=lambda w: len(w.jobs))
        job = Job(worker)
        worker.conn.send_bytes(pickle.dumps((policy, episodes, seed, slot),
                                            pickle.HIGHEST_PROTOCOL))
        worker.jobs.append(job)
        return job

    def played(self, slot: int) -> int:
        """Env steps the evaluation submitted on `slot` has played so far."""
        return int(self.progress[slot])

    def close(self) -> None:
        """Stop the workers at once (what they play is not wanted any more)."""
        for w in self.workers:
            w.proc.kill()
            w.proc.join()
            w.conn.close()


def pool_workers(evaluations: int) -> int:
    """Workers for `evaluations` evaluations at once: one per core this process may use."""
    return max(1, min(evaluations, usable_cores()))


class PendingScreen:
    """A screen of the policy as it stood at `step`, playing on the pool while training goes
    on. Its result is taken once training has played as many env steps since `step` as the
    screen played (`taken`), and the trainer waits whenever the screen falls behind that pace:
    when the result counts is a function of the step alone, never of the clock, so a run
    repeats exactly."""

    def __init__(self, pool: EvalPool, slot: int, step: int, policy: Callable, episodes: int,
                 seed: int, state: bytes | None) -> None:
        self.pool, self.slot, self.step, self.policy, self.state = pool, slot, step, policy, state
        self.job = pool.submit(policy, episodes, seed, slot)
        self.result: EvalResult | None = None

    def taken(self, step: int, wait: bool = False) -> EvalResult | None:
        """The result, if training has played as many steps since the snapshot as the screen
        did by `step` (or at once with `wait`); else None. Waits while the screen is behind."""
        ahead = step - self.step
        while self.result is None:
            if self.job.ready():
                self.result = self.job.get()
            elif not wait and self.pool.played(self.slot) > ahead:
                return None
            else:
                self.job.wait(0.002)
        return self.result if wait or ahead >= sum(self.result.lengths) else None
