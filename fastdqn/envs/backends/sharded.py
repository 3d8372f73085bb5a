"""--vector sharded: N envs split over W worker processes that each step their shard
in-process, the data moving through shared memory."""

from __future__ import annotations

import multiprocessing as mp
import os
import select
import time

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from fastdqn.envs.atari import reports_life_loss
from fastdqn.envs.autoreset import life_loss_of, step_one
from fastdqn.envs.make import EnvFactory, env_makers
from fastdqn.envs.workers import become_worker, close_at_exit, default_workers, start_method
from fastdqn.errors import EnvError


def _shard_worker(trainer_pid: int, fns_pickled: bytes, lo: int, hi: int, conn, shm_names: dict,
                  shapes: dict, lives: bool = False) -> None:
    """Worker process: owns envs [lo, hi), steps them in-process, writes into shared memory
    (`lives`: the envs report info["life_loss"], copied into its block every step)."""
    import pickle
    from multiprocessing import shared_memory

    import cloudpickle  # noqa: F401  (pickle needs it importable to load the factories)

    become_worker(trainer_pid)
    fns = pickle.loads(fns_pickled)
    blocks = {k: shared_memory.SharedMemory(name=v) for k, v in shm_names.items()}
    arrays = {k: np.ndarray(shapes[k][0], dtype=shapes[k][1], buffer=blocks[k].buf)
              for k in blocks}
    env = None
    try:
        env = gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
        conn.send(("ready", None))
        _serve(env, conn, arrays, lo, hi, lives)
    except KeyboardInterrupt:
        pass
    except BaseException as e:  # reported to the trainer, naming the env (index range)
        message = (str(e) if isinstance(e, EnvError)
                   else f"env worker for envs {lo}..{hi - 1} failed: {type(e).__name__}: {e}")
        try:
            conn.send(("error", message))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if env is not None:
            env.close()
        for b in blocks.values():
            b.close()


def _serve(env, conn, arrays: dict, lo: int, hi: int, lives: bool) -> None:
    """Answer the trainer's commands, one reply each, until "close" (or an unknown one)."""
    while True:
        cmd, arg = conn.recv()
        if cmd == "step" and arg is None:
            conn.send(("ok", _write_step(env.step(arrays["actions"][lo:hi]), arrays, lo, hi,
                                         lives)))
        elif cmd == "step":
            conn.send(("ok", _write_some(env, arg, arrays, lo, lives)))
        elif cmd == "reset":
            obs, _ = env.reset(seed=arg)
            arrays["obs"][lo:hi] = obs
            conn.send(("ok", {}))
        elif cmd == "get_attr":
            conn.send(("ok", env.get_attr(arg)))
        elif cmd == "set_attr":
            env.set_attr(*arg)
            conn.send(("ok", None))
        else:
            return


def _write_step(result: tuple, arrays: dict, lo: int, hi: int, lives: bool) -> dict:
    """A shard's step written into shared memory; returns its finished envs' final obs by index."""
    obs, rew, term, trunc, infos = result
    arrays["obs"][lo:hi] = obs
    arrays["rewards"][lo:hi] = rew
    arrays["terminated"][lo:hi] = term
    arrays["truncated"][lo:hi] = trunc
    if lives:
        lost = life_loss_of(infos)
        arrays["life_loss"][lo:hi] = False if lost is None else lost
    mask = infos.get("_final_obs")
    if mask is None:
        return {}
    return {lo + int(i): infos["final_obs"][i] for i in np.flatnonzero(mask)}


def _write_some(env, active: list[int], arrays: dict, lo: int, lives: bool) -> dict:
    """Step only the shard's envs `active` (indices within the shard), with SAME_STEP autoreset
    as the whole vector step does; the others stand still, their rows untouched."""
    final = {}
    for i in active:
        obs, rew, term, trunc, info, last = step_one(env.envs[i], arrays["actions"][lo + i])
        if last is not None:
            final[lo + i] = last
        arrays["obs"][lo + i] = obs
        arrays["rewards"][lo + i] = rew
        arrays["terminated"][lo + i] = term
        arrays["truncated"][lo + i] = trunc
        if lives:
            arrays["life_loss"][lo + i] = bool(info.get("life_loss", False))
    return final


class ShardedVectorEnv:
    """N envs split over W worker processes that each step their shard in-process.

    gymnasium's AsyncVectorEnv runs one process per env: on a machine with fewer cores than
    envs the processes fight for the cores and every step pays N pipe round trips. Here every
    step is W small messages and the data moves through shared memory. Same SAME_STEP contract
    (`final_obs` / `_final_obs` in infos) as the gymnasium vector envs, and `life_loss` in infos
    every step when the envs report it (atari.LifeLossInfo), through shared memory too.
    """

    def __init__(self, fns: list[EnvFactory], num_workers: int, timeout: float = 0.0) -> None:
        probe = fns[0]()
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        self.spec = probe.spec
        self.reports_life_loss = reports_life_loss(probe)
        probe.close()
        self.num_envs = n = len(fns)
        self.timeout = timeout
        shapes = self._share(n)
        bounds = np.linspace(0, n, max(1, min(num_workers, n)) + 1).astype(int)
        self._bounds = list(zip(bounds[:-1], bounds[1:]))
        self._conns, self._procs = [], []
        self.closed = False
        self._start_workers(fns, shapes)
        self._pollers = self._poll_objects()
        close_at_exit(self, force=True)
        self._collect()

    def _share(self, n: int) -> dict:
        """The shared-memory blocks the workers write into and the trainer reads; their shapes."""
        from multiprocessing import shared_memory

        obs_space, act_space = self.single_observation_space, self.single_action_space
        shapes = {"obs": ((n, *obs_space.shape), obs_space.dtype),
                  "rewards": ((n,), np.float64), "terminated": ((n,), np.bool_),
                  "truncated": ((n,), np.bool_), "life_loss": ((n,), np.bool_),
                  "actions": ((n, *act_space.shape), act_space.dtype)}
        self._blocks = {}
        self._arrays = {}
        for k, (shape, dtype) in shapes.items():
            size = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
            self._blocks[k] = shared_memory.SharedMemory(create=True, size=size)
            self._arrays[k] = np.ndarray(shape, dtype=dtype, buffer=self._blocks[k].buf)
        return shapes

    def _start_workers(self, fns: list[EnvFactory], shapes: dict) -> None:
        import cloudpickle

        ctx = mp.get_context(start_method())
        names = {k: b.name for k, b in self._blocks.items()}
        for lo, hi in self._bounds:
            parent, child = ctx.Pipe()
            payload = cloudpickle.dumps(fns[lo:hi])
            p = ctx.Process(target=_shard_worker, args=(os.getpid(), payload, int(lo), int(hi),
                                                         child, names, shapes,
                                                         self.reports_life_loss), daemon=True)
            p.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(p)

    def _poll_objects(self) -> list:
        """One poll object per pipe, made once: Connection.poll builds a selector on every call
        (~15 us a step, measured); Windows has no select.poll and keeps Connection.poll."""
        pollers = []
        if hasattr(select, "poll"):
            for conn in self._conns:
                poller = select.poll()
                poller.register(conn.fileno(), select.POLLIN)
                pollers.append(poller)
        return pollers

    def _ready(self, i: int, timeout: float) -> bool:
        """Whether worker i's reply (or its hang-up) arrives within `timeout` seconds."""
        if not self._pollers:
            return self._conns[i].poll(timeout)
        return bool(self._pollers[i].poll(timeout * 1000.0))

    def _replies(self) -> list:
        """One reply per worker; a crashed, dead or hung worker closes all of them and raises."""
        deadline = time.monotonic() + self.timeout if self.timeout else None
        replies = []
        for i, conn in enumerate(self._conns):
            lo, hi = self._bounds[i]
            if deadline is not None and not self._ready(i, max(0.0, deadline - time.monotonic())):
                self.close(force=True)
                raise EnvError(f"env worker for envs {lo}..{hi - 1} hung: no reply within "
                               f"{self.timeout:g} s (--env-timeout); killed the env workers")
            try:
                status, payload = conn.recv()
            except (EOFError, ConnectionResetError):
                self._procs[i].join(timeout=1)
                code = self._procs[i].exitcode
                self.close(force=True)
                raise EnvError(f"env worker for envs {lo}..{hi - 1} died (exit code {code})"
                               ) from None
            if status == "error":
                self.close(force=True)
                raise EnvError(payload)
            replies.append(payload)
        return replies

    def _collect(self) -> dict:
        final: dict = {}
        for payload in self._replies():
            if payload:
                final.update(payload)
        return final

    def reset(self, seed: int | list[int] | None = None):
        """Reset every env: env j with `seed + j`, or with `seed[j]` given a list (a
        population's agents each seed their own envs)."""
        for i, conn in enumerate(self._conns):
            lo, hi = self._bounds[i]
            seeds = (None if seed is None else list(seed[lo:hi]) if isinstance(seed, list)
                     else [seed + j for j in range(lo, hi)])
            conn.send(("reset", seeds))
        self._collect()
        return self._arrays["obs"].copy(), {}

    def get_attr(self, name: str) -> tuple:
        """Attribute `name` of every env (through its wrappers), in env order."""
        for conn in self._conns:
            conn.send(("get_attr", name))
        return tuple(v for values in self._replies() for v in values)

    def set_attr(self, name: str, values: list) -> None:
        """Set attribute `name` of env i to values[i]."""
        for (lo, hi), conn in zip(self._bounds, self._conns):
            conn.send(("set_attr", (name, list(values[lo:hi]))))
        self._replies()

    def step_async(self, actions: np.ndarray, active: np.ndarray | None = None) -> None:
        """Step every env, or only those `active` marks (a population's agents that stopped
        stop stepping): the others keep their rows, with no reward and no episode end."""
        self._arrays["actions"][:] = actions
        if active is not None:
            a = self._arrays
            a["rewards"][~active] = 0.0
            a["terminated"][~active] = a["truncated"][~active] = a["life_loss"][~active] = False
        for (lo, hi), conn in zip(self._bounds, self._conns):
            some = None if active is None else np.flatnonzero(active[lo:hi]).tolist()
            conn.send(("step", some))

    def step_wait(self):
        final = self._collect()
        infos: dict = {}
        if final:
            mask = np.zeros(self.num_envs, dtype=bool)
            final_obs = np.empty(self.num_envs, dtype=object)
            for i, o in final.items():
                mask[i] = True
                final_obs[i] = o
            infos = {"final_obs": final_obs, "_final_obs": mask}
        a = self._arrays
        if self.reports_life_loss:
            infos["life_loss"] = a["life_loss"].copy()
        return (a["obs"].copy(), a["rewards"].copy(), a["terminated"].copy(),
                a["truncated"].copy(), infos)

    def step(self, actions: np.ndarray):
        self.step_async(actions)
        return self.step_wait()

    def close(self, force: bool = False) -> None:
        """Stop the workers: ask them (unless `force`), then kill them; none survive.

        Kill, not terminate: the workers ignore SIGTERM (see become_worker).
        """
        if self.closed:
            return
        self.closed = True
        try:
            if not force:
                for conn in self._conns:
                    try:
                        conn.send(("close", None))
                    except (BrokenPipeError, OSError):
                        pass
                for p in self._procs:
                    p.join(timeout=2)
        finally:  # a second Ctrl-C may cut the polite part short, never this one
            for p in self._procs:
                if p.is_alive():
                    p.kill()
                p.join()
            for conn in self._conns:
                conn.close()
            for b in self._blocks.values():
                b.close()
                b.unlink()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def make(env_id: str, num_envs: int, factory: EnvFactory | None, num_workers: int,
         timeout: float) -> ShardedVectorEnv:
    """`num_workers` processes (0: default_workers) each stepping a shard of the envs."""
    return ShardedVectorEnv(env_makers(env_id, num_envs, factory),
                            num_workers or default_workers(num_envs), timeout)
