"""--vector envpool: EnvPool's C++ envs behind fastdqn's SAME_STEP vector-env interface.

EnvPool steps its envs in a C++ thread pool and resets a finished env on the NEXT step: the
step after a done returns the reset observation and ignores the action sent. A replay fed
from that would store one fake transition per episode (final obs -> reset obs). Here the pool
runs in sync mode (a batch is every env), `step_async` sends the actions and `step_wait`
receives the batch; every env that finished in it is reset at once with EnvPool's partial
reset (`reset(env_id)`, which restarts those envs only and makes their next step a real one),
its done-step observation goes to `infos["final_obs"]` and the reset observation replaces it,
exactly as the gymnasium SAME_STEP vector envs report it (autoreset.real_next_obs reads both). So
EnvPool's own autoreset never happens and no reset step reaches the replay.

What EnvPool can and cannot give (the rest of fastdqn is unchanged):

- Seeds. EnvPool seeds each env once, when the pool is made: env i gets an int32 seed and its
  generator (a std::mt19937) runs on through all its episodes. fastdqn seeds every episode of
  a gymnasium env from disjoint streams (core/seeds.py); here only the first episode of each env is
  seeded from the run's TRAIN stream: `reset(seed=s)` makes the pool afresh and env i gets
  `s + i` hashed to 31 bits (the episode seeds are 64-bit; taking their low bits would give
  every run seed the same envs). A run is still reproducible: same settings, seed and
  --num-envs give the same transitions, since each env depends on its seed and actions only.
- Resume. An env's generator can be neither read nor set, so a checkpoint holds no episode
  starts (`get_attr("episode_start")` is empty) and a resumed run starts fresh episodes from
  the TRAIN stream at the resumed step instead of replaying the in-flight ones.
- Evaluation never runs here: the periodic and final evaluations (and `fastdqn eval`) play
  gymnasium's own env, so "solved" means what it means with every other --vector.
- Time limits are gymnasium's (LunarLander-v3: 1000 steps; Atari: 108 000 frames, 27 000
  steps), passed to EnvPool as max_episode_steps, and a cut episode is reported truncated,
  not terminated. One difference is EnvPool's: an episode that ends by itself on exactly its
  last allowed step is reported truncated only (gymnasium: terminated and truncated).
- Atari ids (`ALE/<Game>-v5`, `<Game>NoFrameskip-v4`) run EnvPool's `<Game>-v5` with its own
  preprocessing set as fastdqn's gymnasium Atari chain is (atari.py): up to 30 no-ops at
  reset, frame skip 4 with max-pooling, 84x84 grayscale, 4 stacked frames ([4, 84, 84] uint8),
  sticky actions 0.25 for v5 and 0 for NoFrameskip-v4, no FIRE at reset, raw rewards
  (reward_clip off) and episodes that end at game over (episodic_life off); the loss of a life
  is reported in `infos["life_loss"]` from EnvPool's `lives`. EnvPool's emulator and resizing
  are its own, so its frames are not bit-equal to gymnasium's.
"""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym
import numpy as np

from fastdqn.envs.atari import FRAME_SKIP, FRAME_STACK, NOOP_MAX, SCREEN_SIZE, sticky_probability
from fastdqn.envs.make import EnvFactory, env_factory
from fastdqn.envs.workers import default_workers
from fastdqn.errors import ConfigError, EnvError

INSTALL = 'pip install -e ".[envpool]"'

ATARI_MAX_FRAMES = 108_000
"""ale-py's frame limit of an Atari episode (both id families), 27 000 agent steps."""


def import_envpool():
    """The envpool module, or a one-line ConfigError naming the extra to install."""
    try:
        import envpool
    except ImportError:
        raise ConfigError(f"--vector envpool needs envpool: {INSTALL}") from None
    return envpool


def atari_game(env_id: str) -> str | None:
    """`Breakout` of `ALE/Breakout-v5` or `BreakoutNoFrameskip-v4`; None for other ids."""
    name = env_id.split(":", 1)[-1]
    if name.startswith("ALE/") and name.endswith("-v5"):
        return name[len("ALE/"):-len("-v5")]
    if name.endswith("NoFrameskip-v4"):
        return name[:-len("NoFrameskip-v4")]
    return None


def _atari_ids(envpool) -> set[str]:
    return {k for k, (module, _, _) in envpool.registration.registry.specs.items()
            if module == "envpool.atari"}


def envpool_task(env_id: str, max_episode_steps: int | None = None) -> tuple[str, dict[str, Any]]:
    """EnvPool's task id for a gymnasium id and the settings that make it the same task.

    `max_episode_steps` is the gymnasium spec's limit (None: read it from the registry). A
    one-line ConfigError when envpool is missing, or lacks the id (naming the close ones)."""
    envpool = import_envpool()
    game = atari_game(env_id)
    atari = _atari_ids(envpool)
    if game is not None:
        task = f"{game}-v5"
        if task not in atari:
            _refuse(env_id, envpool, atari)
        sticky = sticky_probability(env_id)
        return task, {"noop_max": NOOP_MAX, "frame_skip": FRAME_SKIP,
                      "img_height": SCREEN_SIZE, "img_width": SCREEN_SIZE,
                      "gray_scale": True, "stack_num": FRAME_STACK,
                      "repeat_action_probability": sticky, "episodic_life": False,
                      "reward_clip": False, "use_fire_reset": False, "full_action_space": False,
                      "max_episode_steps": ATARI_MAX_FRAMES // FRAME_SKIP}
    if env_id in envpool.list_all_envs() and env_id not in atari and env_id in gym.registry:
        if max_episode_steps is None:
            max_episode_steps = gym.spec(env_id).max_episode_steps
        if max_episode_steps is None:
            raise ConfigError(f"--vector envpool: {env_id} has no time limit in gymnasium, and "
                              "EnvPool needs one; use --vector sharded")
        return env_id, {"max_episode_steps": int(max_episode_steps)}
    _refuse(env_id, envpool, atari)
    raise AssertionError  # _refuse raised


def _refuse(env_id: str, envpool, atari: set[str]) -> None:
    """One line: EnvPool lacks `env_id`; the ids of it that fastdqn could run which are close."""
    runnable = [f"ALE/{i}" if i in atari else i for i in envpool.list_all_envs()
                if i in atari or i in gym.registry]
    close = difflib.get_close_matches(env_id, runnable, n=3, cutoff=0.5)
    hint = f"close ones: {', '.join(close)}; " if close else ""
    raise ConfigError(f"--vector envpool: EnvPool has no {env_id}; {hint}use --vector sharded "
                      "for it")


def check_envpool(env_id: str, obs_space: gym.spaces.Box, act_space: gym.spaces.Discrete,
                  custom_factory: bool) -> None:
    """Refuse, before the run dir exists, what --vector envpool cannot run: envpool missing,
    an id it lacks, an env factory of the caller's (EnvPool builds its own envs), or spaces
    unlike gymnasium's (the evaluations play gymnasium's env, so the two must agree)."""
    if custom_factory:
        raise ConfigError("--vector envpool makes EnvPool's own envs, so it cannot use the "
                          "env_factory passed to train(); drop one of them")
    task, kwargs = envpool_task(env_id)
    spec = import_envpool().make_spec(task, num_envs=1, **kwargs)
    ep_obs = spec.observation_space
    ep_n = getattr(spec.action_space, "n", None)
    if tuple(ep_obs.shape) != tuple(obs_space.shape) or ep_obs.dtype != obs_space.dtype:
        raise ConfigError(f"--vector envpool: EnvPool's {task} observes {list(ep_obs.shape)} "
                          f"{ep_obs.dtype}, gymnasium's {env_id} {list(obs_space.shape)} "
                          f"{obs_space.dtype}; the evaluations play gymnasium's, so they must "
                          "agree: use --vector sharded")
    if ep_n != act_space.n:
        raise ConfigError(f"--vector envpool: EnvPool's {task} has {ep_n} actions, gymnasium's "
                          f"{env_id} {act_space.n}; use --vector sharded")
    ep_start = int(getattr(spec.action_space, "start", 0))
    if ep_start != 0:  # fastdqn's actions count from 0; EnvPool's would be shifted (zero_based)
        raise ConfigError(f"--vector envpool: EnvPool's {task} counts its actions from "
                          f"{ep_start}, not 0; use --vector sharded")


def pool_seeds(seed: int, num_envs: int) -> list[int]:
    """EnvPool's int32 seed of env i: episode seed `seed + i` hashed into [0, 2**31 - 1)."""
    return [int(np.random.SeedSequence(seed + i).generate_state(1, np.uint64)[0] % (2**31 - 1))
            for i in range(num_envs)]


class EnvPoolVectorEnv:
    """`num_envs` EnvPool envs with the SAME_STEP contract of fastdqn's other vector envs.

    `num_threads` is EnvPool's thread pool size. `observation_space` / `action_space` are the
    gymnasium env's spaces (EnvPool's own Box bounds can differ), which check_envpool compared
    with EnvPool's shapes. The pool is made at the first `reset(seed=...)` and made anew at
    every seeded reset (EnvPool seeds only when it makes a pool).
    """

    restarts_episodes = False
    """The trainer cannot restart an in-flight episode as it began (see the module doc)."""

    def __init__(self, env_id: str, num_envs: int, num_threads: int,
                 observation_space: gym.spaces.Box, action_space: gym.spaces.Discrete,
                 max_episode_steps: int | None = None) -> None:
        self.env_id, self.num_envs, self.num_threads = env_id, num_envs, num_threads
        self.task, self.kwargs = envpool_task(env_id, max_episode_steps)
        self.single_observation_space = observation_space
        self.single_action_space = action_space
        self.reports_life_loss = atari_game(env_id) is not None
        self.max_episode_steps = self.kwargs["max_episode_steps"]
        self.pool = None
        self.closed = False
        self.lives = np.zeros(num_envs, dtype=np.int64)
        self.all_ids = np.arange(num_envs, dtype=np.int32)

    def _make(self, seeds: list[int]) -> None:
        if self.pool is not None:
            self.pool.close()
        self.pool = import_envpool().make_gymnasium(
            self.task, num_envs=self.num_envs, batch_size=self.num_envs,
            num_threads=self.num_threads, seed=seeds, **self.kwargs)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        """Every env starts an episode: a seeded reset makes the pool anew (env i seeded from
        `seed + i`); an unseeded one resets the pool's envs, their generators running on."""
        if options:
            raise ValueError("EnvPoolVectorEnv.reset takes no options")
        if isinstance(seed, list):  # a population's: env j seeded from seed[j]
            self._make([pool_seeds(s, 1)[0] for s in seed])
        elif seed is not None or self.pool is None:
            base = seed if seed is not None else int(np.random.SeedSequence().entropy % 2**62)
            self._make(pool_seeds(base, self.num_envs))
        obs, info = self.pool.reset(self.all_ids)
        order = np.argsort(info["env_id"])
        if self.reports_life_loss:
            self.lives[:] = info["lives"][order]
        return np.ascontiguousarray(obs[order]), {}

    def step_async(self, actions: np.ndarray, active: np.ndarray | None = None) -> None:
        """Every env steps: EnvPool's synchronous pool answers for all of its envs at once,
        so a population's stopped agents' envs step on (their results are dropped)."""
        self.pool.send(np.asarray(actions), self.all_ids)

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.pool.recv()
        rows = info["env_id"]  # env i's results in row i (sync mode keeps the order sent)
        if not np.array_equal(rows, self.all_ids):
            raise EnvError(f"EnvPool answered for envs {rows.tolist()}, not all "
                           f"{self.num_envs} in order")
        obs = np.array(obs)
        rewards = np.asarray(rewards, dtype=np.float64)
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        infos: dict[str, Any] = {}
        if self.reports_life_loss:
            lives = np.asarray(info["lives"])
            infos["life_loss"] = (lives < self.lives) & ~terminated
            self.lives[:] = lives
        done = np.flatnonzero(terminated | truncated)
        if len(done):
            mask = np.zeros(self.num_envs, dtype=bool)
            mask[done] = True
            final_obs = np.empty(self.num_envs, dtype=object)
            for i in done:
                final_obs[i] = obs[i].copy()
            reset_obs, reset_info = self.pool.reset(self.all_ids[done])
            rows = reset_info["env_id"]
            obs[rows] = reset_obs
            if self.reports_life_loss:
                self.lives[rows] = reset_info["lives"]
            infos["final_obs"], infos["_final_obs"] = final_obs, mask
        return obs, rewards, terminated, truncated, infos

    def step(self, actions: np.ndarray):
        self.step_async(actions)
        return self.step_wait()

    def get_attr(self, name: str) -> tuple:
        """Only `episode_start`, and it is empty: EnvPool's envs keep no restartable start."""
        if name == "episode_start":
            return ()
        raise AttributeError(f"--vector envpool: EnvPool's envs have no gymnasium attribute "
                             f"{name!r}; use --vector sharded")

    def set_attr(self, name: str, values: list) -> None:
        raise AttributeError(f"--vector envpool: EnvPool's envs have no gymnasium attribute "
                             f"{name!r} to set; use --vector sharded")

    def close(self, **kwargs) -> None:
        if self.closed:
            return
        self.closed = True
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def make(env_id: str, num_envs: int, factory: EnvFactory | None, num_threads: int,
         timeout: float) -> EnvPoolVectorEnv:
    """EnvPool's envs for `env_id` on `num_threads` threads (0: default_workers), with the spaces
    and time limit of gymnasium's env (the one the evaluations play); `timeout` unread."""
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
