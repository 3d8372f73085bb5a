"""Vector env construction: spaces checked up front, seeds applied, autoreset fixed to SAME_STEP.

SAME_STEP autoreset makes every `step` a real transition for every env: a finished episode's
true last observation arrives in `info["final_obs"]` while the returned observation is already
the reset one. `real_next_obs` puts the two together, so the buffer never stores a transition
that crosses an episode boundary (NEXT_STEP mode would hand us one fake step per episode).
"""

from __future__ import annotations

import difflib
import importlib
import multiprocessing as mp
import os
import select
import signal
import sys
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.async_vector_env import AsyncState

from fastdqn.core.device import torch_dtype
from fastdqn.envs.atari import make_env, register, reports_life_loss
from fastdqn.errors import ConfigError, EnvError

EnvFactory = Callable[[], gym.Env]




def check_env_id(env_id: str) -> None:
    """Refuse an unregistered id with a close-match suggestion.

    `module:Name-v0` ids import `module` first (gymnasium's convention for envs that register
    themselves on import), so user envs work without code changes to fastdqn.
    """
    name = env_id
    register(env_id)  # ALE/..., ...NoFrameskip-v4 and MinAtar/... ids: their package's registry
    if ":" in env_id:
        module, name = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except Exception as e:  # arbitrary user code runs on import
            raise ConfigError(f"--env {env_id}: cannot import module {module!r} "
                              f"({type(e).__name__}: {e}); check the name and PYTHONPATH") from None
    if name in gym.registry:
        return
    close = difflib.get_close_matches(name, list(gym.registry), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "; see gymnasium.pprint_registry()"
    raise ConfigError(f"unknown env id {env_id!r}{hint}")


def check_spaces(env_id: str, obs_space: gym.Space, act_space: gym.Space) -> None:
    """fastdqn needs a Discrete action space (any `start`: see zero_based) and a Box observation
    space of values it can store exactly (replay.STORED_AS)."""
    if not isinstance(act_space, gym.spaces.Discrete):
        raise ConfigError(
            f"{env_id} has {type(act_space).__name__} actions; DQN needs Discrete actions "
            "(pick a discrete env or discretize the actions with a wrapper)"
        )
    if not isinstance(obs_space, gym.spaces.Box):
        raise ConfigError(
            f"{env_id} has {type(obs_space).__name__} observations; fastdqn needs a Box "
            "(flatten them with gymnasium.wrappers.FlattenObservation)"
        )
    dtype = np.dtype(obs_space.dtype)
    cast = "cast them with gymnasium.wrappers.DtypeObservation(env, np.float64)"
    if 0 in obs_space.shape:
        raise ConfigError(f"{env_id} observes a Box of shape {list(obs_space.shape)}, which holds "
                          "no values; give the observations at least one")
    try:
        torch_dtype(dtype)
    except TypeError:
        raise ConfigError(f"{env_id} observes {dtype} values, which torch cannot hold; "
                          f"{cast}") from None
    if dtype == np.uint64 and int(np.max(obs_space.high)) > np.iinfo(np.int64).max:
        raise ConfigError(f"{env_id} observes uint64 values up to {int(np.max(obs_space.high))}, "
                          f"more than the int64 fastdqn stores them in holds; declare a Box high "
                          f"below 2**63 if they stay there, or {cast}")


class ActionStart(gym.ActionWrapper):
    """A `Discrete(n, start)` env seen as `Discrete(n)`: action a reaches the env as start + a.

    fastdqn's networks, replay rows and samplers count actions 0..n-1; without this an env
    whose actions start elsewhere would receive the wrong ones, silently if it does not check
    them. `zero_based` applies it wherever fastdqn builds an env it acts in.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.action_space
        self.start = space.start
        self.action_space = gym.spaces.Discrete(int(space.n), seed=space.np_random)

    def action(self, action):
        return self.start + action


def zero_based(env: gym.Env) -> gym.Env:
    """`env` with its Discrete actions counted from 0 (ActionStart where `start` is not 0);
    any other env unchanged, so this applies twice, or to an env check_spaces refuses, safely."""
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete) and int(space.start) != 0:
        return ActionStart(env)
    return env


def env_factory(env_id: str, **kwargs) -> EnvFactory:
    """`gym.make(env_id, **kwargs)` as a factory; Atari ids get their DQN preprocessing
    (atari.py), and Atari and MinAtar ids their package's registration (in a worker too);
    actions count from 0 (zero_based)."""
    def make() -> gym.Env:
        return zero_based(make_env(env_id, **kwargs))

    return make


def probe_env(env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Discrete, float | None]:
    """Build one env to check its spaces; return (obs space, action space, reward threshold)."""
    check_env_id(env_id)
    try:
        env = zero_based(make_env(env_id))
    except ConfigError:
        raise
    except Exception as e:  # construction failures come from arbitrary user env code
        raise ConfigError(f"{env_id} failed to construct: {type(e).__name__}: {e}") from None
    try:
        check_spaces(env_id, env.observation_space, env.action_space)
        threshold = env.spec.reward_threshold if env.spec is not None else None
        return env.observation_space, env.action_space, threshold
    finally:
        env.close()


def make_vector_env(
    env_id: str, num_envs: int, mode: str = "async", factory: EnvFactory | None = None,
    num_workers: int = 0, timeout: float = 0.0,
):
    """A SAME_STEP-autoreset vector env of `num_envs` copies; `factory` overrides gym.make.

    Modes: `sharded` (W worker processes, each stepping a shard of the envs), `async`
    (gymnasium's AsyncVectorEnv, one process per env), `sync` (in-process), `envpool`
    (EnvPool's C++ envs on `num_workers` threads, envpool_env.py). `timeout` is how long to
    wait for a worker's reply before killing the workers (0: forever; sharded and async only).
    Every gymnasium env is wrapped in `EpisodeStart`, so errors name the env and resumes can
    restart episodes identically.
    """
    if mode == "envpool":
        return _envpool_vector_env(env_id, num_envs, factory, num_workers)
    base = factory or env_factory(env_id)
    fns = [_EnvMaker(base, i) for i in range(num_envs)]
    if mode == "sharded":
        return ShardedVectorEnv(fns, num_workers or default_workers(num_envs), timeout)
    if mode == "async":
        # fork starts 16 workers in milliseconds (forkserver/spawn re-import torch in each: ~15 s
        # on 2 cores). It is safe here because the trainer builds the envs before it starts any
        # thread, and the workers only run env code.
        context = "fork" if "fork" in mp.get_all_start_methods() else None
        return AsyncVectorEnv(fns, timeout, context=context,
                              autoreset_mode=AutoresetMode.SAME_STEP, daemon=True)
    if mode == "sync":
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    raise ConfigError(f"--vector must be sharded, async, sync or envpool, got {mode!r}")


def _envpool_vector_env(env_id: str, num_envs: int, factory: EnvFactory | None,
                        num_threads: int):
    """EnvPool's envs for `env_id`, with the spaces and time limit of gymnasium's env (the one
    the evaluations play)."""
    from fastdqn.envs.envpool import EnvPoolVectorEnv

    if factory is not None:
        raise ConfigError("--vector envpool makes EnvPool's own envs, so it cannot use an env "
                          "factory; drop one of them")
    probe = env_factory(env_id)()
    try:
        limit = probe.spec.max_episode_steps if probe.spec is not None else None
        return EnvPoolVectorEnv(env_id, num_envs, num_threads or default_workers(num_envs),
                                probe.observation_space, probe.action_space, limit)
    finally:
        probe.close()


def default_workers(num_envs: int) -> int:
    """One worker per core beyond the learner's, at least one, at most one per env."""
    return max(1, min(num_envs, (os.cpu_count() or 2) - 1))


class EpisodeStart(gym.Wrapper):
    """Remembers how the current episode began, and names its env index in errors.

    An env's internals cannot be checkpointed in general, but an episode's start can: it is the
    reset seed or, for a seedless autoreset, the state of the env's `np_random` just before the
    reset. The trainer saves `episode_start` of every env with a checkpoint; on resume it hands
    them back as `restart_from`, and the next `reset()` begins each in-flight episode again from
    the same state. For an env at an episode boundary that continues the run exactly.
    """

    def __init__(self, env: gym.Env, index: int) -> None:
        super().__init__(env)
        self.index = index
        self.episode_start: dict | None = None
        self.restart_from: dict | None = None

    def reset(self, *, seed=None, options=None):
        if seed is None and self.restart_from is not None:
            start, self.restart_from = self.restart_from, None
            if start["seed"] is not None:
                seed = start["seed"]
            else:
                self.env.np_random = _generator(start["rng"])
        if seed is not None:
            self.episode_start = {"seed": int(seed), "rng": None}
        else:
            self.episode_start = {"seed": None,
                                  "rng": _plain(self.env.np_random.bit_generator.state)}
        try:
            return self.env.reset(seed=seed, options=options)
        except Exception as e:  # user env code: name the env, keep the cause
            raise EnvError(f"env {self.index} crashed in reset: {type(e).__name__}: {e}") from e

    def step(self, action):
        try:
            return self.env.step(action)
        except Exception as e:
            raise EnvError(f"env {self.index} crashed in step: {type(e).__name__}: {e}") from e


def _plain(value):
    """A bit generator state as plain ints, lists and dicts (a weights_only checkpoint holds it)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    return value


def bit_generator_class(name: object) -> type | None:
    """numpy's bit generator class called `name`, or None: a checkpoint names the class that
    is then called, and np.random holds other callables (np.random.test runs a test suite)."""
    cls = getattr(np.random, name, None) if isinstance(name, str) else None
    return cls if isinstance(cls, type) and issubclass(cls, np.random.BitGenerator) else None


def _generator(state: dict) -> np.random.Generator:
    cls = bit_generator_class(state["bit_generator"])
    if cls is None:
        raise ValueError(f"{state['bit_generator']!r} is not a numpy bit generator")
    bit_generator = cls()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


class _EnvMaker:
    """Picklable factory of env `index`: counts its actions from 0 (zero_based) and wraps it in
    EpisodeStart; in a worker, detaches first."""

    def __init__(self, factory: EnvFactory, index: int) -> None:
        self.factory, self.index, self.trainer_pid = factory, index, os.getpid()

    def __call__(self) -> gym.Env:
        if os.getpid() != self.trainer_pid:
            become_worker(self.trainer_pid)
        return EpisodeStart(zero_based(self.factory()), self.index)


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


def _close_at_exit(envs) -> None:
    """Close `envs` at interpreter exit if nobody did, before multiprocessing's own exit hook
    (which would SIGTERM the workers, which ignore it, and then wait for them forever)."""
    import atexit
    import weakref

    ref = weakref.ref(envs)

    def close() -> None:
        env = ref()
        if env is None or env.closed:
            return
        if isinstance(env, AsyncVectorEnv):
            env.close(terminate=True)
        else:
            env.close(force=True)

    atexit.register(close)


def _env_list(indices: list[int]) -> str:
    return "env " + str(indices[0]) if len(indices) == 1 else "envs " + ", ".join(map(str, indices))


class AsyncVectorEnv(gym.vector.AsyncVectorEnv):
    """gymnasium's AsyncVectorEnv with a reply timeout and one-line errors that name the env."""

    def __init__(self, fns: list[EnvFactory], timeout: float = 0.0, **kwargs) -> None:
        self.timeout = timeout or None
        super().__init__(fns, **kwargs)
        _close_at_exit(self)

    def close_extras(self, timeout: float | None = None, terminate: bool = False) -> None:
        """gymnasium's close, but a forced one kills: the workers ignore SIGTERM."""
        if terminate:
            for p in self.processes:
                if p.is_alive():
                    p.kill()
        super().close_extras(timeout=timeout, terminate=terminate)

    def reset(self, *, seed=None, options=None):
        self.reset_async(seed=seed, options=options)
        return self._wait(super().reset_wait)

    def step_wait(self, timeout: float | None = None):
        return self._wait(super().step_wait)

    def _wait(self, wait):
        try:
            return wait(timeout=self.timeout)
        except mp.TimeoutError:
            hung = [i for i, p in enumerate(self.parent_pipes)
                    if p is not None and not p.closed and not p.poll()]
            self.close(terminate=True)
            raise EnvError(f"{_env_list(hung or list(range(self.num_envs)))} hung: no reply "
                           f"within {self.timeout:g} s (--env-timeout); killed the env workers"
                           ) from None

    def _raise_if_errors(self, successes) -> None:
        if all(successes):
            return
        messages = []
        for _ in range(self.num_envs - sum(successes)):
            index, exctype, value, _trace = self.error_queue.get()
            messages.append(str(value) if isinstance(value, EnvError)
                            else f"env {index} failed: {exctype.__name__}: {value}")
            self.parent_pipes[index].close()
            self.parent_pipes[index] = None
        self._state = AsyncState.DEFAULT
        self.close(terminate=True)
        raise EnvError("; ".join(messages))


class SyncVectorEnv(gym.vector.SyncVectorEnv):
    """gymnasium's SyncVectorEnv with the async pair, so the loop has one shape for both modes."""

    def step_async(self, actions: np.ndarray) -> None:
        self._pending = actions

    def step_wait(self):
        return self.step(self._pending)


def real_next_obs(next_obs: np.ndarray, infos: dict, out: np.ndarray) -> np.ndarray:
    """`next_obs` with each finished env's row replaced by its true final observation."""
    np.copyto(out, next_obs)
    mask = infos.get("_final_obs")
    if mask is not None and mask.any():
        final = infos["final_obs"]
        for i in np.flatnonzero(mask):
            out[i] = final[i]
    return out


def life_loss_of(infos: dict) -> np.ndarray | None:
    """infos["life_loss"] of a vector step, None if the envs do not report it. An env that
    ended this step (SAME_STEP) has its reset's info in `infos` and its last step's under
    `final_info`: its value is taken from there, so a life lost on a truncated step counts."""
    lost = infos.get("life_loss")
    final = infos.get("final_info")
    if lost is None or not final or "life_loss" not in final:
        return lost
    ended = infos["_final_info"] & final.get("_life_loss", True)
    return np.where(ended, final["life_loss"], lost)


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
        while True:
            cmd, arg = conn.recv()
            if cmd == "step":
                obs, rew, term, trunc, infos = env.step(arrays["actions"][lo:hi])
            elif cmd == "reset":
                obs, infos = env.reset(seed=arg)
                rew = term = trunc = None
            elif cmd == "get_attr":
                conn.send(("ok", env.get_attr(arg)))
                continue
            elif cmd == "set_attr":
                env.set_attr(*arg)
                conn.send(("ok", None))
                continue
            else:
                break
            arrays["obs"][lo:hi] = obs
            final = {}
            if rew is not None:
                arrays["rewards"][lo:hi] = rew
                arrays["terminated"][lo:hi] = term
                arrays["truncated"][lo:hi] = trunc
                if lives:
                    lost = life_loss_of(infos)
                    arrays["life_loss"][lo:hi] = False if lost is None else lost
                mask = infos.get("_final_obs")
                if mask is not None:
                    final = {lo + int(i): infos["final_obs"][i] for i in np.flatnonzero(mask)}
            conn.send(("ok", final))
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


class ShardedVectorEnv:
    """N envs split over W worker processes that each step their shard in-process.

    gymnasium's AsyncVectorEnv runs one process per env: on a machine with fewer cores than
    envs the processes fight for the cores and every step pays N pipe round trips. Here every
    step is W small messages and the data moves through shared memory. Same SAME_STEP contract
    (`final_obs` / `_final_obs` in infos) as the gymnasium vector envs, and `life_loss` in infos
    every step when the envs report it (atari.LifeLossInfo), through shared memory too.
    """

    def __init__(self, fns: list[EnvFactory], num_workers: int, timeout: float = 0.0) -> None:
        from multiprocessing import shared_memory

        import cloudpickle

        probe = fns[0]()
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        self.spec = probe.spec
        self.reports_life_loss = reports_life_loss(probe)
        probe.close()
        self.num_envs = n = len(fns)
        self.timeout = timeout
        w = max(1, min(num_workers, n))
        obs_space = self.single_observation_space
        shapes = {"obs": ((n, *obs_space.shape), obs_space.dtype),
                  "rewards": ((n,), np.float64), "terminated": ((n,), np.bool_),
                  "truncated": ((n,), np.bool_), "life_loss": ((n,), np.bool_),
                  "actions": ((n, *self.single_action_space.shape), self.single_action_space.dtype)}
        self._blocks = {}
        self._arrays = {}
        for k, (shape, dtype) in shapes.items():
            size = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
            self._blocks[k] = shared_memory.SharedMemory(create=True, size=size)
            self._arrays[k] = np.ndarray(shape, dtype=dtype, buffer=self._blocks[k].buf)
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
        bounds = np.linspace(0, n, w + 1).astype(int)
        self._bounds = list(zip(bounds[:-1], bounds[1:]))
        self._conns, self._procs = [], []
        names = {k: b.name for k, b in self._blocks.items()}
        self.closed = False
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
        # One poll object per pipe, made once: Connection.poll builds a selector on every call
        # (~15 us a step, measured); Windows has no select.poll and keeps Connection.poll.
        self._pollers = []
        if hasattr(select, "poll"):
            for conn in self._conns:
                poller = select.poll()
                poller.register(conn.fileno(), select.POLLIN)
                self._pollers.append(poller)
        _close_at_exit(self)
        self._collect()

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

    def reset(self, seed: int | None = None):
        for i, conn in enumerate(self._conns):
            lo, hi = self._bounds[i]
            conn.send(("reset", None if seed is None else [seed + j for j in range(lo, hi)]))
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

    def step_async(self, actions: np.ndarray) -> None:
        self._arrays["actions"][:] = actions
        for conn in self._conns:
            conn.send(("step", None))

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
