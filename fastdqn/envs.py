"""Vector env construction: spaces checked up front, seeds applied, autoreset fixed to SAME_STEP.

SAME_STEP autoreset makes every `step` a real transition for every env: a finished episode's
true last observation arrives in `info["final_obs"]` while the returned observation is already
the reset one. `real_next_obs` puts the two together, so the buffer never stores a transition
that crosses an episode boundary (NEXT_STEP mode would hand us one fake step per episode).
"""

from __future__ import annotations

import difflib
import multiprocessing as mp
import os
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from .config import ConfigError

EnvFactory = Callable[[], gym.Env]


def check_env_id(env_id: str) -> None:
    """Refuse an unregistered id with a close-match suggestion."""
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "; see gymnasium.pprint_registry()"
    raise ConfigError(f"unknown env id {env_id!r}{hint}")


def check_spaces(env_id: str, obs_space: gym.Space, act_space: gym.Space) -> None:
    """fastdqn needs a Discrete action space and a Box observation space."""
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


def env_factory(env_id: str, **kwargs) -> EnvFactory:
    def make() -> gym.Env:
        return gym.make(env_id, **kwargs)

    return make


def probe_env(env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Discrete, float | None]:
    """Build one env to check its spaces; return (obs space, action space, reward threshold)."""
    check_env_id(env_id)
    try:
        env = gym.make(env_id)
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
    num_workers: int = 0,
):
    """A SAME_STEP-autoreset vector env of `num_envs` copies; `factory` overrides gym.make.

    Modes: `sharded` (W worker processes, each stepping a shard of the envs), `async`
    (gymnasium's AsyncVectorEnv, one process per env), `sync` (in-process).
    """
    fns = [factory or env_factory(env_id)] * num_envs
    if mode == "sharded":
        return ShardedVectorEnv(fns, num_workers or default_workers(num_envs))
    if mode == "async":
        # fork starts 16 workers in milliseconds (forkserver/spawn re-import torch in each: ~15 s
        # on 2 cores). It is safe here because the trainer builds the envs before it starts any
        # thread, and the workers only run env code.
        context = "fork" if "fork" in mp.get_all_start_methods() else None
        return gym.vector.AsyncVectorEnv(
            fns, context=context, autoreset_mode=AutoresetMode.SAME_STEP, daemon=True
        )
    if mode == "sync":
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    raise ConfigError(f"--vector must be sharded, async or sync, got {mode!r}")


def default_workers(num_envs: int) -> int:
    """One worker per core beyond the learner's, at least one, at most one per env."""
    return max(1, min(num_envs, (os.cpu_count() or 2) - 1))


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


def _shard_worker(index: int, fns_pickled: bytes, lo: int, hi: int, conn, shm_names: dict,
                  shapes: dict) -> None:
    """Worker process: owns envs [lo, hi), steps them in-process, writes into shared memory."""
    import pickle
    from multiprocessing import shared_memory

    import cloudpickle  # noqa: F401  (pickle needs it importable to load the factories)

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
            else:
                break
            arrays["obs"][lo:hi] = obs
            final = {}
            if rew is not None:
                arrays["rewards"][lo:hi] = rew
                arrays["terminated"][lo:hi] = term
                arrays["truncated"][lo:hi] = trunc
                mask = infos.get("_final_obs")
                if mask is not None:
                    final = {lo + int(i): infos["final_obs"][i] for i in np.flatnonzero(mask)}
            conn.send(("ok", final))
    except KeyboardInterrupt:
        pass
    except BaseException as e:  # reported to the trainer with the env index range
        try:
            conn.send(("error", f"{type(e).__name__}: {e}"))
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
    (`final_obs` / `_final_obs` in infos) as the gymnasium vector envs.
    """

    def __init__(self, fns: list[EnvFactory], num_workers: int) -> None:
        from multiprocessing import shared_memory

        import cloudpickle

        probe = fns[0]()
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        self.spec = probe.spec
        probe.close()
        self.num_envs = n = len(fns)
        w = max(1, min(num_workers, n))
        obs_space = self.single_observation_space
        shapes = {"obs": ((n, *obs_space.shape), obs_space.dtype),
                  "rewards": ((n,), np.float64), "terminated": ((n,), np.bool_),
                  "truncated": ((n,), np.bool_),
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
        for i, (lo, hi) in enumerate(self._bounds):
            parent, child = ctx.Pipe()
            payload = cloudpickle.dumps(fns[lo:hi])
            p = ctx.Process(target=_shard_worker, args=(i, payload, int(lo), int(hi), child,
                                                         names, shapes), daemon=True)
            p.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(p)
        self.closed = False
        self._collect()

    def _collect(self) -> dict:
        final: dict = {}
        for i, conn in enumerate(self._conns):
            try:
                status, payload = conn.recv()
            except (EOFError, ConnectionResetError):
                lo, hi = self._bounds[i]
                code = self._procs[i].exitcode
                raise RuntimeError(f"env worker for envs {lo}..{hi - 1} died (exit code {code})"
                                   ) from None
            if status == "error":
                lo, hi = self._bounds[i]
                raise RuntimeError(f"env worker for envs {lo}..{hi - 1} failed: {payload}")
            if payload:
                final.update(payload)
        return final

    def reset(self, seed: int | None = None):
        for i, conn in enumerate(self._conns):
            lo, hi = self._bounds[i]
            conn.send(("reset", None if seed is None else [seed + j for j in range(lo, hi)]))
        self._collect()
        return self._arrays["obs"].copy(), {}

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
        return (a["obs"].copy(), a["rewards"].copy(), a["terminated"].copy(),
                a["truncated"].copy(), infos)

    def step(self, actions: np.ndarray):
        self.step_async(actions)
        return self.step_wait()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for p in self._procs:
            p.join(timeout=2)
            if p.is_alive():
                p.terminate()
                p.join(timeout=1)
        for b in self._blocks.values():
            b.close()
            b.unlink()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
