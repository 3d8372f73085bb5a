"""Ape-X (Horgan et al. 2018) on Ray: `fastdqn train --actors K [--ray-address ADDRESS]`.

K Ray actors each step their own vector env (any --vector mode) and act epsilon-greedily with
a CPU copy of the Q-network, actor i with its own fixed epsilon_i = eps ** (1 + alpha * i /
(K - 1)) (eps 0.4, alpha 7: the paper's). An actor forms n-step rows with the same
`NStepWriter` as one machine, applies the same training-only reward shaping, computes each
row's initial priority |delta| with its copies of the online and target nets (the learner's
own loss, `reference.initial_priorities`), and returns blocks of rows through Ray's object store.

The learner is the driver process and the same DQN agent as on one machine: its replay (rows,
prioritized), its learner route (fused on the CPU, CUDA graphs on CUDA), its evaluations,
checkpoints, TensorBoard and signals (`run.Run`; the `Fleet` stands in for the vector env).
It keeps one block request in flight per actor, so actors collect while it learns; it ingests
whatever blocks are ready, takes the learner steps they make due (--gradient-steps per
--train-every transitions, as on one machine), and every --weight-sync-every learner steps
puts new weights in the object store, which each actor loads with its next request.

Faults: an actor whose process or node dies is restarted by Ray (up to --actor-restarts times
each, re-running its constructor) and its next request is sent again; each loss is logged on
the console and in TensorBoard. When losses exceed what the restarts allow, or no block arrives
from any actor for --actor-timeout seconds, the run stops with one line and writes its
checkpoint. Ray itself is never asked to wait without a timeout.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import uuid

import numpy as np
import torch

from fastdqn.algos.contract import EpisodeTally
from fastdqn.algos.dqn.agent import DQN
from fastdqn.algos.explore import epsilon_greedy
from fastdqn.config.files import make_config
from fastdqn.config.settings import Config
from fastdqn.core.device import stored_dtype, torch_dtype
from fastdqn.core.seeds import TRAIN, Purpose, episode_seed, torch_generator
from fastdqn.envs.atari import auto_on
from fastdqn.envs.autoreset import real_next_obs
from fastdqn.envs.backends import make_vector_env
from fastdqn.envs.make import EnvFactory
from fastdqn.errors import ActorsLost, ConfigError
from fastdqn.learners.reference import initial_priorities
from fastdqn.nets.mlp import preprocess
from fastdqn.replay.nstep import NStepWriter
from fastdqn.replay.rows import FIELDS, Batch

STAGES = ("wait", "ingest", "sample", "learn", "target", "sync", "log")
RETRY_S = 1.0
"""Seconds between requests to an actor Ray is restarting."""
"""Most actors one learner takes: actor i's episode seeds start at i << 24 of the TRAIN stream."""


def actor_epsilons(k: int, eps: float = 0.4, alpha: float = 7.0) -> list[float]:
    """Ape-X's per-actor exploration: eps ** (1 + alpha * i / (k - 1)) for i in 0..k-1 (one
    actor gets eps itself)."""
    if k == 1:
        return [eps]
    return [eps ** (1 + alpha * i / (k - 1)) for i in range(k)]


def require_ray():
    """The ray module, or a one-line ConfigError naming the extra."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--actors needs ray: pip install -e \".[ray]\"") from None
    return ray


def unreachable(address: str, timeout: float = 10.0) -> str | None:
    """Why nothing answers at a Ray address (host:port, optionally ray://), or None. Ray's own
    connect retries for minutes against a wrong address; one TCP connection tells at once."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return "not an address of the form HOST:PORT"
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        return f"nothing answers there ({e.strerror or type(e).__name__})"
    return None


def connect(cfg: Config) -> bool:
    """Join the cluster at --ray-address, or start a local Ray with room for every actor;
    False if the caller had Ray running already (then it is theirs to shut down). Done before
    the run dir is touched, so a wrong address changes nothing on disk."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "auto":
        problem = unreachable(address)
        if problem:
            raise ConfigError(f"--ray-address {address}: {problem}; start the cluster with `ray "
                              "start --head` there, or drop --ray-address for a local Ray")
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR,
                 namespace=f"fastdqn-{uuid.uuid4().hex[:12]}",
                 # a local Ray: every actor fits on this machine, however many cores it has
                 num_cpus=None if address else max(os.cpu_count() or 1, cfg.actors))
    except (ConnectionError, RuntimeError, ValueError) as e:
        lines = str(e).strip().splitlines()
        raise ConfigError(f"--ray-address {address}: cannot join that Ray cluster "
                          f"({lines[0][:160] if lines else type(e).__name__}); start it with "
                          "`ray start --head` there, or drop --ray-address for a local Ray"
                          ) from None
    return True




class Actor:
    """One Ape-X actor's work, as a plain class: Ray hosts it (`Fleet`), tests call it directly.

    `collect` plays `steps` vector steps and returns their rows (n-step windows included) with
    initial priorities and the episodes that ended, as numpy arrays.
    """

    def __init__(self, cfg: dict, index: int, epsilon: float, online: torch.nn.Module,
                 env_factory: EnvFactory | None, first_episode: int) -> None:
        torch.set_num_threads(1)
        self.cfg = c = make_config(**cfg)
        self.index, self.epsilon = index, epsilon
        self.online = online.cpu().eval()
        self.target = copy.deepcopy(self.online)
        self.version = -1
        self.envs = make_vector_env(c.env_id, c.num_envs, c.vector, env_factory, c.num_workers,
                                    c.env_timeout)
        space = self.envs.single_observation_space
        self.obs, _ = self.envs.reset(seed=episode_seed(c.seed, TRAIN, first_episode))
        self.real_next = np.empty_like(self.obs)
        self.stored = stored_dtype(space.dtype)  # float16 as float32, ...: the replay's rows
        self.nstep = (NStepWriter(c.n_step, c.gamma, c.num_envs, tuple(space.shape),
                                  torch_dtype(space.dtype)) if c.n_step > 1 else None)
        # its own child of the run seed, not the seed of its envs' first reset
        self.gen = torch_generator(c.seed, Purpose.APEX_ACT, index, first_episode)
        self.eps = torch.full((c.num_envs,), epsilon)
        self.clip_rewards = auto_on(c.clip_rewards, c.env_id)
        self.life_loss_terminal = auto_on(c.life_loss_terminal, c.env_id)
        self.tally = EpisodeTally(c.num_envs)

    def load(self, weights: dict) -> None:
        self.online.load_state_dict(weights["online"])
        self.target.load_state_dict(weights["target"])

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """This actor's epsilon-greedy actions, as one machine's `epsilon_greedy` draws them."""
        return epsilon_greedy(self.online(preprocess(obs)), self.eps, self.gen)

    @torch.no_grad()
    def collect(self, weights: list, version: int, steps: int) -> dict:
        """`weights` is [ObjectRef] under Ray (fetched only when `version` is new) or [dict]."""
        from fastdqn.algos.dqn.agent import training_signal

        if version != self.version:
            w = weights[0]
            if not isinstance(w, dict):
                import ray

                w = ray.get(w)
            self.load(w)
            self.version = version
        c, start = self.cfg, time.perf_counter()
        parts, ended = [], []
        for _ in range(steps):
            x = torch.from_numpy(self.obs.astype(self.stored))
            actions = self.act(x)
            next_obs, rewards, terminated, truncated, infos = self.envs.step(actions.numpy())
            real = torch.from_numpy(real_next_obs(next_obs, infos, self.real_next)
                                    .astype(self.stored))
            ended += self.tally.step(rewards, terminated | truncated)
            r, term = training_signal(rewards, terminated, infos, self.clip_rewards,
                                      self.life_loss_terminal)
            if self.nstep is not None:
                parts.append(self.nstep.push(x, actions.numpy(), r, real, term, truncated))
            else:
                parts.append((x, actions, torch.from_numpy(np.asarray(r, np.float32)), real,
                              torch.from_numpy(np.asarray(term, np.float32)),
                              torch.full((c.num_envs,), c.gamma)))
            self.obs = next_obs
        batch = Batch(*(torch.cat(p) for p in zip(*parts)))
        priorities = initial_priorities(self.online, self.target, batch, c.double_dqn,
                                        c.distributional, c.loss)
        elapsed = time.perf_counter() - start
        return {"index": self.index, "epsilon": self.epsilon, "env_steps": steps * c.num_envs,
                "sps": steps * c.num_envs / max(elapsed, 1e-9), "ended": ended,
                "priorities": priorities.numpy(),
                **{f: getattr(batch, f).numpy() for f in FIELDS}}

    def close(self) -> None:
        self.envs.close()


class Fleet:
    """The K Ray actors of a run and their requests in flight. It stands in for the vector env
    in `run.Run` (`close`, `closed`, `get_attr`): actors start fresh episodes on resume."""

    def __init__(self, cfg: Config, online: torch.nn.Module, env_factory: EnvFactory | None,
                 start_step: int, owns_ray: bool) -> None:
        ray = self.ray = require_ray()
        self.cfg, self.owns_ray = cfg, owns_ray
        remote = ray.remote(num_cpus=1, max_restarts=cfg.actor_restarts,
                            max_task_retries=0)(Actor)
        self.epsilons = actor_epsilons(cfg.actors, cfg.actor_epsilon, cfg.actor_alpha)
        base = start_step % (1 << 24)
        self.actors = [
            remote.options(name=f"fastdqn-actor-{i}").remote(
                cfg.to_dict(), i, eps, online, env_factory, (i << 24) + base)
            for i, eps in enumerate(self.epsilons)]
        self.pending: dict = {}
        self.down: dict[int, float] = {}  # lost actors, until their next block
        self.retry_at: dict[int, float] = {}  # restarting actors: when to ask again
        self.dead: set[int] = set()
        self.weights: list = []
        self.version = 0
        self.lost = 0
        self.last_block = time.monotonic()
        self.closed = False
        self.sps = dict.fromkeys(range(cfg.actors), 0.0)

    def publish(self, weights: dict) -> None:
        """New weights for every actor's next request."""
        self.weights = [self.ray.put(weights)]
        self.version += 1

    def start(self) -> None:
        for i in range(len(self.actors)):
            self._request(i)

    def _request(self, i: int) -> None:
        ref = self.actors[i].collect.remote(self.weights, self.version, self.cfg.actor_block)
        self.pending[ref] = i

    def poll(self, timeout: float) -> tuple[list[dict], list[str]]:
        """Blocks ready within `timeout` seconds (each actor asked again at once), and a line for
        each actor lost meanwhile. Raises ActorsLost when the run cannot go on.

        A loss counts once: while Ray restarts the actor its requests fail as "unavailable",
        and they are retried every RETRY_S seconds until a block comes back. An actor that
        died for good (its restarts used up) is not asked again."""
        ray, now = self.ray, time.monotonic()
        for i, when in list(self.retry_at.items()):
            if now >= when:
                del self.retry_at[i]
                self._request(i)
        if not self.pending:  # every live actor is restarting: wait for the next retry
            time.sleep(min(timeout, max(0.0, min(self.retry_at.values(), default=now) - now)))
            ready = []
        else:
            ready, rest = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
            if ready and rest:  # and whatever else is ready now
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        blocks, losses = [], []
        for ref in ready:
            i = self.pending.pop(ref)
            try:
                block = ray.get(ref, timeout=self.cfg.actor_timeout)
            except ray.exceptions.RayTaskError as e:  # the actor's own code raised: not a crash
                raise ActorsLost(f"actor {i} failed: {str(e.cause)[:300]}") from None
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
                    ray.exceptions.GetTimeoutError) as e:
                losses += self._lost(i, e)
                continue
            self.down.pop(i, None)
            blocks.append(block)
            self.sps[i] = block["sps"]
            self._request(i)
        now = time.monotonic()
        if blocks:
            self.last_block = now
        elif now - self.last_block > self.cfg.actor_timeout:
            raise ActorsLost(f"no block from any of the {self.cfg.actors} actors in "
                             f"{self.cfg.actor_timeout:g} s (--actor-timeout): are they placed? "
                             "a cluster needs a CPU per actor")
        return blocks, losses

    def _lost(self, i: int, e: Exception) -> list[str]:
        """Record a failed request of actor i; the console line if it is a new loss."""
        ray, line = self.ray, []
        if i not in self.down:
            self.down[i] = time.monotonic()
            self.lost += 1
            line.append(f"actor {i} lost ({type(e).__name__}: its process or node died); "
                        f"{self.lost} lost so far, Ray restarts it")
        if self.lost > self.cfg.actors * self.cfg.actor_restarts:
            raise ActorsLost(f"{self.lost} actor losses, more than --actor-restarts "
                             f"{self.cfg.actor_restarts} x {self.cfg.actors} actors allow (last: "
                             f"{type(e).__name__})")
        if isinstance(e, ray.exceptions.ActorDiedError):  # restarts used up: gone for good
            self.dead.add(i)
            if len(self.dead) == len(self.actors):
                raise ActorsLost(f"all {len(self.actors)} actors died for good")
        else:
            self.retry_at[i] = time.monotonic() + RETRY_S
        return line

    def get_attr(self, name: str) -> list:
        return []

    def close(self) -> None:
        """Stop every actor; leave Ray if this run joined it (`connect`: a local Ray stops, a
        joined cluster stays up)."""
        if self.closed:
            return
        self.closed = True
        ray = self.ray
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # an actor already gone is what we want
                pass
        self.pending.clear()
        if self.owns_ray:
            ray.shutdown()


def train_apex(run, agent, fleet: Fleet) -> None:
    """The learner's loop: ingest ready blocks, learn what they make due, publish weights,
    then the run's maybe-hooks."""
    c, lap, cfg = run.c, run.timer.lap, run.cfg
    fleet.publish(actor_weights(agent))
    fleet.start()
    next_sync = agent.learner.steps + cfg.weight_sync_every
    ingest_window = (time.perf_counter(), 0)
    ingested = lost = 0
    while run.running():
        try:  # learning is paced by what arrives: with nothing new, there is nothing to do
            blocks, losses = fleet.poll(timeout=1.0)
        except ActorsLost as e:
            run.stop(str(e))
            break
        lap("wait")
        for line in losses:
            run.logger.message(line)
        lost += len(losses)
        new = 0
        for b in blocks:
            new += ingest(agent, b)
            run.count_block(b["env_steps"], b["ended"])
        ingested += new
        lap("ingest")
        if new:
            agent.learn(c, lap, new)
        if agent.learner.steps >= next_sync:
            fleet.publish(actor_weights(agent))
            next_sync = agent.learner.steps + cfg.weight_sync_every
        lap("sync")
        if not blocks:  # a wait that timed out: signals are seen, nothing else is due
            continue
        if c.step >= c.next_log:
            now = time.perf_counter()
            rate = (ingested - ingest_window[1]) / max(now - ingest_window[0], 1e-9)
            ingest_window = (now, ingested)
            run.logger.scalars({"actors/ingest_rows_per_s": rate, "actors/lost": fleet.lost,
                                **{f"actors/sps_{i}": s for i, s in fleet.sps.items()},
                                **{f"actors/epsilon_{i}": e
                                   for i, e in enumerate(fleet.epsilons)}}, c.step)
        run.maybe_log()
        if run.maybe_evaluate():
            break
        run.maybe_checkpoint()


def make_fleet(cfg: Config, agent, env_factory: EnvFactory | None, start_step: int,
               owns_ray: bool) -> Fleet:
    """The actors for `agent`'s network (Ray joined by `connect`)."""
    return Fleet(cfg, agent.actor_modules()[0], env_factory, start_step, owns_ray)


def actor_weights(agent: DQN) -> dict:
    """What actors load: the state dicts of `actor_modules`."""
    online, target = agent.actor_modules()
    return {"online": online.state_dict(), "target": target.state_dict()}


def ingest(agent: DQN, block: dict) -> int:
    """Add an actor's rows with the priorities it computed (|delta| before any learner
    step); returns how many rows it held."""
    dev = agent.device
    # Ray hands arrays over read-only (zero-copy); torch wants writable memory to wrap
    rows = {f: torch.from_numpy(np.require(block[f], requirements="W")).to(dev)
            for f in ("obs", "next_obs", "actions", "rewards", "dones", "discounts")}
    if agent.rbf is not None:  # the flat route's rows hold the features
        with torch.no_grad():
            for f in ("obs", "next_obs"):
                rows[f] = agent.rbf.features(preprocess(rows[f]).reshape(len(rows[f]), -1))
    first, n = agent.buffer.add(rows["obs"], rows["actions"], rows["rewards"],
                               rows["next_obs"], rows["dones"], rows["discounts"])
    agent.prioritize(first, n, block["priorities"])
    return n
