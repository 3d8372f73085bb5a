"""Env worker processes, whichever backend starts them: how many, how they start, how they
leave signals to the trainer, and how they are closed when nobody else did."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys


def default_workers(num_envs: int) -> int:
    """One worker per core beyond the learner's, at least one, at most one per env."""
    return max(1, min(num_envs, (os.cpu_count() or 2) - 1))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS says, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def start_method() -> str | None:
    """fork where the platform has it, else multiprocessing's default.

    fork starts 16 workers in milliseconds (forkserver/spawn re-import torch in each: ~15 s
    on 2 cores). It is safe here because the trainer builds the envs before it starts any
    thread, and the workers only run env code.
    """
    return "fork" if "fork" in mp.get_all_start_methods() else None


def become_worker(trainer_pid: int) -> None:
    """In an env worker process: leave SIGINT/SIGTERM to the trainer; die when the trainer dies.

    A terminal's Ctrl-C reaches the whole process group, and Slurm or systemd send SIGTERM to
    every process of a job; the trainer finishes its iteration, checkpoints and closes the
    workers itself (with SIGKILL if need be), so they must not die first. PR_SET_PDEATHSIG
    (Linux) kills a worker when the trainer is killed outright (kill -9): none is ever orphaned.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != trainer_pid:  # the trainer died before prctl took effect
        os._exit(1)


def close_at_exit(envs, **force) -> None:
    """Close `envs` with `envs.close(**force)` at interpreter exit if nobody did, before
    multiprocessing's own exit hook (which would SIGTERM the workers, which ignore it, and then
    wait for them forever). `force` is the backend's way to say "kill the workers"."""
    import atexit
    import weakref

    ref = weakref.ref(envs)

    def close() -> None:
        env = ref()
        if env is None or env.closed:
            return
        env.close(**force)

    atexit.register(close)


def env_list(indices: list[int]) -> str:
    """`env 3` or `envs 1, 4`: the envs an error is about."""
    return "env " + str(indices[0]) if len(indices) == 1 else "envs " + ", ".join(map(str, indices))
