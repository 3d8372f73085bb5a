"""DQN's agent: the Q-network, its learner route, the replay (n-step, priorities) and batched
acting. Its loop is loop.py, its checkpoint checks checkpoint.py; the run's lifecycle (run dir,
envs, signals, logging, evaluation, checkpoints, summary) is `runtime.run.Run`'s.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from fastdqn.algos.contract import Counters, divergence_message
from fastdqn.algos.explore import EpsilonSchedule, boltzmann, epsilon_greedy
from fastdqn.config.settings import Config
from fastdqn.core.device import torch_dtype
from fastdqn.core.seeds import FIT, Purpose, episode_seed, generator_seed, numpy_generator, torch_generator
from fastdqn.envs.atari import auto_on, is_minatar, sign_rewards
from fastdqn.envs.autoreset import life_loss_of
from fastdqn.envs.make import EnvFactory, env_factory
from fastdqn.envs.spaces import zero_based
from fastdqn.envs.workers import usable_cores
from fastdqn.errors import CheckpointError, ConfigError, OldBufferError, TrainingDiverged
from fastdqn.evaluation.policies import Policy
from fastdqn.learners.acting import ActingQ
from fastdqn.learners.flat import Learner
from fastdqn.learners.reference import ReferenceLearner
from fastdqn.learners.route import REFERENCE, choose_route
from fastdqn.nets.kinds import KINDS, NetworkKind, head_of_config, resolve_network
from fastdqn.nets.mlp import MLP, preprocess
from fastdqn.nets.noisy import noise_generator, seed_noise
from fastdqn.nets.rbf import MIN_STD, RBFQNetwork
from fastdqn.replay.frames import FrameReplay, uses_frame_replay
from fastdqn.replay.nstep import NStepWriter
from fastdqn.replay.prioritized import PrioritizedSampler, TorchPrioritized, beta_at
from fastdqn.replay.rows import ReplayBuffer
from fastdqn.replay.uniform import UniformSampler


def training_signal(rewards: np.ndarray, terminated: np.ndarray, infos: dict | None,
                    clip_rewards: bool, life_loss_terminal: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """What the replay stores of a vector step's rewards and terminations: sign-clipped with
    --clip-rewards, and terminal where `infos` says a life was lost with --life-loss-terminal
    (new arrays; the episode statistics keep the raw ones)."""
    if clip_rewards:
        rewards = sign_rewards(rewards)
    if life_loss_terminal and infos:
        lost = life_loss_of(infos)
        if lost is not None:
            terminated = terminated | lost
    return rewards, terminated


class DQN:
    """Q-network and learner, replay buffer (+ n-step writer, + priorities), batched acting.

    The network (`kind`): fastdqn's MLP (--network mlp), a CNN (--network cnn, cnn.py), the
    RBF-feature linear model (--network rbf, rbf.py) or a module passed in from Python
    ("custom"); --network auto is cnn on image observations, mlp otherwise. The learner route
    (`self.route`, chosen and explained by `learners.route.choose_route`): `Learner` (flat MLP:
    native or Numba-fused on the CPU, CUDA graphs on CUDA, torch ops elsewhere) for the MLP,
    dueling or not, and for the RBF model's linear head; `ReferenceLearner` (nn.Module +
    autograd; its update as a CUDA graph on CUDA, graphed_update.py) for the rest.

    Training-only reward shaping (Atari's protocol, `--clip-rewards`, `--life-loss-terminal`):
    the rows stored get sign-clipped rewards, and a step whose infos say a life was lost is
    stored as terminal; the run's episode returns and evaluations never see either.

    On the flat route the RBF model is split where it is linear: its fixed features are an
    encoding of each observation as it arrives (`observe`), so the replay rows hold phi(s) and
    the learner trains a linear MLP (no hidden layer) on them; the module is reassembled for
    evaluation and checkpoints (`rbf_module`).

    The replay: `ReplayBuffer` (a row of obs and next_obs per transition) or, for stacked
    frames (--frame-replay, frames.py), `FrameReplay`, which stores each frame once. The flat
    learner's fused CPU step reads a ReplayBuffer's rows in place, so with frames the MLP
    trains on the reference route; n-step windows then carry frame pointers, not stacks.

    `env_factory` builds the env the RBF scaler is fitted on (default: gym.make(env_id));
    `resuming` skips that fit, the checkpoint holding the scaler.
    """

    def __init__(self, cfg: Config, obs_space, act_space, device: torch.device,
                 q_network: torch.nn.Module | None = None,
                 env_factory: EnvFactory | None = None, resuming: bool = False) -> None:
        cfg = with_support(cfg, env_factory)
        self.cfg, self.device = cfg, device
        self.obs_shape = tuple(obs_space.shape)
        self.head = head_of_config(cfg)
        self.kind = resolve_network(cfg.network, obs_space, custom=q_network is not None,
                                    plain_head=self.head.plain)
        self.custom = self.kind == "custom"
        self.frames = uses_frame_replay(cfg.frame_replay, self.kind, self.obs_shape,
                                        obs_space.dtype, self.net_kind.replays_observations)
        self.route = choose_route(cfg.learner, cfg.optimizer, self.kind, self.frames, device,
                                  cfg.cuda_graphs, cfg.noisy, usable_cores())
        model = q_network if self.custom else self.build_model(obs_space, int(act_space.n),
                                                                env_factory, resuming)
        self.learner: Learner | ReferenceLearner = self.learner_of(model, int(act_space.n))
        row_shape, row_dtype = self.obs_shape, torch_dtype(obs_space.dtype)
        if self.rbf is not None:  # the flat route's rows hold the RBF features
            row_shape, row_dtype = (self.rbf.n_features,), torch.float32
        self.row_shape = row_shape
        self.make_replay(row_shape, row_dtype)
        self.act_gen = torch_generator(cfg.seed, Purpose.ACT, device=device)
        self.schedule = EpsilonSchedule(cfg.eps_schedule, cfg.eps_start, cfg.eps_end,
                                        cfg.eps_decay_steps, cfg.eps_episode_decay)
        self.learning_starts = max(cfg.learning_starts, cfg.batch_size)  # a batch first
        self.make_staging(obs_space)
        self.acting_q: ActingQ | None = None
        # While a block runs beside the loop (`learn_beside`), acting reads `frozen`: the
        # parameters the block started from, copied, with an acting Q of its own.
        self.frozen: torch.Tensor | None = None
        self.frozen_q: ActingQ | None = None
        self.frozen_for_acting = False
        self.clip_rewards = auto_on(cfg.clip_rewards, cfg.env_id)
        self.life_loss_terminal = auto_on(cfg.life_loss_terminal, cfg.env_id)

    def build_model(self, obs_space, n_actions: int, make_env: EnvFactory | None,
                    resuming: bool) -> object:
        """The network kind's model, seeded from the run seed; the RBF model of a new run fits
        its scaler on random play first (a resumed one gets it back with the checkpoint)."""
        cfg = self.cfg
        model = self.net_kind.build(cfg, obs_space, n_actions, is_minatar(cfg.env_id))
        if isinstance(model, RBFQNetwork) and not resuming:
            model.set_scaler(*fit_scaler(make_env or env_factory(cfg.env_id), cfg.rbf_fit_steps,
                                         cfg.seed))
        return model

    def learner_of(self, model, n_actions: int) -> Learner | ReferenceLearner:
        """The learner the route names, training `model`: the flat one on what the kind gives
        it to train (its MLP, or the RBF model's linear head with the features as an encoder
        kept in `self.rbf`), the reference one on the model as an nn.Module."""
        cfg, route = self.cfg, self.route
        opts = dict(lr=cfg.lr, gamma=cfg.gamma, tau=cfg.tau, loss=cfg.loss,
                    target_update_interval=cfg.target_update_interval,
                    double_dqn=cfg.double_dqn, max_grad_norm=cfg.max_grad_norm,
                    adam_eps=cfg.adam_eps, device=self.device, cuda_graphs=route.update_graphs)
        self.net = MLP(int(np.prod(self.obs_shape)), n_actions, tuple(cfg.hidden), cfg.dueling)
        self.rbf: RBFQNetwork | None = None
        if route.learner == REFERENCE:
            module = model.net.to_module(model.params) if self.net_kind.flat_net else model
            learner = ReferenceLearner(module, optimizer=cfg.optimizer, head=cfg.distributional,
                                       **opts)
            for key, net in enumerate((learner.online, learner.target)):  # independent streams
                seed_noise(net, torch_generator(cfg.seed, Purpose.NOISE, key, device=self.device))
            return learner
        self.net, init, encoder = self.net_kind.flat(model)
        self.rbf = encoder.to(self.device) if encoder is not None else None
        return Learner(self.net, init=init, native=route.native, native_why=route.native_why,
                       **opts)

    def make_replay(self, row_shape: tuple[int, ...], row_dtype: torch.dtype) -> None:
        """The replay (rows, or frames stored once), its sampler (uniform, or prioritized: the
        Numba sum tree on the CPU, on the device elsewhere) and the n-step writer."""
        cfg, device, n_envs = self.cfg, self.device, self.cfg.num_envs
        self.buffer: ReplayBuffer | FrameReplay = (
            FrameReplay(cfg.buffer_size, row_shape, row_dtype, device, n_envs, cfg.n_step)
            if self.frames else ReplayBuffer(cfg.buffer_size, row_shape, row_dtype, device))
        self.sampler: UniformSampler | PrioritizedSampler | TorchPrioritized = UniformSampler(
            generator_seed(cfg.seed, Purpose.REPLAY))
        self.prioritized = cfg.prioritized or cfg.actors > 0  # Ape-X's replay is prioritized
        if self.prioritized and device.type == "cpu":  # the Numba sum tree
            self.sampler = PrioritizedSampler(cfg.buffer_size, cfg.per_alpha, cfg.per_eps,
                                              generator_seed(cfg.seed, Purpose.PER))
        elif self.prioritized:  # priorities on the device: sampled without a host sync
            self.sampler = TorchPrioritized(cfg.buffer_size, cfg.per_alpha, cfg.per_eps, device)
        # seeded in every run (not only where it draws): no generator of a run keeps a fixed seed
        self.learner.per_generator.manual_seed(generator_seed(cfg.seed, Purpose.PER_DEVICE))
        self.nstep = None
        if cfg.n_step > 1 and self.frames:  # windows of frame slots, on the host
            self.nstep = NStepWriter(cfg.n_step, cfg.gamma, n_envs, (self.obs_shape[0],),
                                     torch.int64, "cpu")
        elif cfg.n_step > 1:
            self.nstep = NStepWriter(cfg.n_step, cfg.gamma, n_envs, row_shape, row_dtype, device)

    def make_staging(self, obs_space) -> None:
        """Host buffers each step's arrays pass through on their way to the device (pinned on
        CUDA), allocated once."""
        n_envs, device = self.cfg.num_envs, self.device
        self.cuda = device.type == "cuda"
        pin = self.cuda
        obs_dtype = torch_dtype(obs_space.dtype)
        self.stage_obs = torch.empty((n_envs, *self.obs_shape), dtype=obs_dtype, pin_memory=pin)
        self.stage_next = torch.empty_like(self.stage_obs, pin_memory=pin)
        self.stage_rew = torch.empty(n_envs, dtype=torch.float32, pin_memory=pin)
        self.stage_done = torch.empty(n_envs, dtype=torch.float32, pin_memory=pin)
        self.discounts = torch.full((n_envs,), self.cfg.gamma, dtype=torch.float32, device=device)
        self.real_next = np.empty((n_envs, *self.obs_shape), dtype=obs_space.dtype)
        # the observation acted on, kept on the host: the frame replay finds its new frames there
        self.host_obs = np.empty_like(self.real_next) if self.frames else None
        self.eps_dev = torch.empty(n_envs, device=device)

    # -- the loop's steps ----------------------------------------------------------------------

    def to_device(self, array: np.ndarray, stage: torch.Tensor | None = None) -> torch.Tensor:
        stage = self.stage_obs if stage is None else stage
        stage.numpy()[...] = array
        return stage.to(self.device, non_blocking=True) if self.cuda else stage.to(self.device)

    def observe(self, obs: np.ndarray, stage: torch.Tensor | None = None) -> torch.Tensor:
        """Observations as the acting and the replay rows take them: on the device, and
        encoded as RBF features on the flat RBF route."""
        x = self.to_device(obs, stage)
        if self.host_obs is not None and stage is None:
            np.copyto(self.host_obs, obs)
        if self.rbf is None:
            return x
        with torch.no_grad():
            return self.rbf.features(preprocess(x).reshape(len(x), -1))

    def epsilon(self, c: Counters) -> float:
        return self.schedule(c.step, c.episodes)

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        if isinstance(self.learner, ReferenceLearner):
            return self.learner.q_values(obs)
        return self.acting(obs)(obs)

    def acting(self, obs: torch.Tensor) -> ActingQ:
        """The flat MLP's acting Q (built on the first batch: a CUDA graph on CUDA, the native
        actor on a CPU where it builds, each proved against the plain forward pass); while a
        block runs beside the loop (`learn_beside`), the one on the parameters it started from."""
        if self.frozen_for_acting:
            if self.frozen_q is None:
                actor = self.learner.native_actor(obs.dtype, self.frozen)
                self.frozen_q = ActingQ(self.net, self.net.views(self.frozen), obs, False, actor)
            return self.frozen_q
        if self.acting_q is None:
            actor = self.learner.native_actor(obs.dtype) if self.route.native else None
            self.acting_q = ActingQ(self.net, self.learner.online_views, obs,
                                    self.route.acting_graphs, actor)
        return self.acting_q

    def act(self, obs: torch.Tensor, eps: float, step: int) -> torch.Tensor:
        """Batched epsilon-greedy or Boltzmann actions on the device (epsilon-greedy as one
        native call where the native actor runs), under the parameters as the last learner
        block left them."""
        if self.cfg.exploration == "egreedy" and not isinstance(self.learner, ReferenceLearner):
            actor = self.acting(obs).native
            if actor is not None:
                return actor.act(obs, eps, torch.rand((2, len(obs)), generator=self.act_gen))
        q = self.q_values(obs)
        if self.cfg.exploration == "egreedy":
            return epsilon_greedy(q, self.eps_dev.fill_(eps), self.act_gen)
        if not bool(torch.isfinite(q).all()):  # softmax of NaN/inf has no samples
            raise TrainingDiverged(divergence_message(self.cfg, step,
                                                      "NaN or inf Q-values while acting"))
        return boltzmann(q, self.cfg.temperature, self.act_gen)

    def learn(self, c: Counters, lap, new: int | None = None) -> None:
        """The learner steps due for the `new` transitions just collected (default: one vector
        step's): --gradient-steps per --train-every transitions, K per call."""
        k = self.due_steps(c, new)
        if k:
            self.learn_steps(k, c, lap)

    def learn_steps(self, k: int, c: Counters, lap) -> None:
        """K learner steps on its own route, with prioritized replay's beta at step `c.step`."""
        beta = beta_at(c.step, self.cfg.total_timesteps, self.cfg.per_beta)
        self.learner.learn(self.buffer, self.sampler, k, self.cfg.batch_size, beta, lap)

    def learn_beside(self, c: Counters, lap) -> bool:
        """Where the route overlaps (route.py: the native step, two cores), the sampler is
        uniform and the native step is in use: start the steps `learn` would take now on a
        thread of their own and return True; the caller then acts (on a copy of the parameters
        the block starts from, so the actions are those it would take before learning), writes
        the replay only through `add` (which waits until the block has copied its rows), and
        calls `settle` before anything else reads the learner. False, with nothing done,
        elsewhere (the Numba step that stands in for a native step that did not build
        included): the caller learns in line, while the envs step."""
        if not (self.route.overlap and isinstance(self.learner, Learner)
                and isinstance(self.sampler, UniformSampler)):
            return False
        if self.buffer.size >= self.learning_starts and self.native_block_step() is None:
            return False
        k = self.due_steps(c)
        if k:
            if self.frozen is None:
                self.frozen = torch.empty_like(self.learner.params)
            self.frozen.copy_(self.learner.params)
            self.frozen_for_acting = True
            self.learner.learn(self.buffer, self.sampler, k, self.cfg.batch_size, lap=lap,
                               detach=True)
        return True

    def settle(self, stop: bool = False) -> None:
        """Wait for a learner block that `learn_beside` left running, if any; acting reads
        the live parameters again. `stop` (the loop's end): also end the thread the blocks ran
        on, since env and evaluation workers are forked and a fork wants no thread running."""
        if isinstance(self.learner, Learner):
            self.learner.settle(stop)
        self.frozen_for_acting = False

    def due_steps(self, c: Counters, new: int | None = None) -> int:
        """How many learner steps the `new` transitions just collected make due (none before
        --learning-starts); the remainder carries over in `c.due`."""
        cfg = self.cfg
        if self.buffer.size < self.learning_starts:
            return 0
        c.due += (cfg.num_envs if new is None else new) * cfg.gradient_steps
        k, c.due = divmod(c.due, cfg.train_every)
        return k

    def native_block_step(self):
        """The native step this agent's uniform K-step blocks run on, or None where they take
        another route (prioritized replay, Numba, the reference learner, a device)."""
        if not isinstance(self.learner, Learner) or not isinstance(self.sampler, UniformSampler):
            return None
        return self.learner.native_block(self.buffer, self.cfg.batch_size)

    def add(self, obs: torch.Tensor, actions: torch.Tensor, rewards: np.ndarray,
            next_obs: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
            infos: dict | None = None) -> None:
        """Store the vector step (as n-step rows when n > 1); new rows get the top priority.

        With --clip-rewards the rows hold sign(reward); with --life-loss-terminal a step
        whose `infos["life_loss"]` is set is stored as terminated (no bootstrap, and an n-step
        window ends there; the frame replay finds its stacks from the frames, so a life loss
        does not break them). The caller's arrays are not modified."""
        if isinstance(self.learner, Learner):
            self.learner.wait_rows_copied()  # a detached block may still read the replay
        rewards, terminated = training_signal(rewards, terminated, infos, self.clip_rewards,
                                              self.life_loss_terminal)
        if isinstance(self.buffer, FrameReplay):
            first, n = self.add_frames(actions, rewards, next_obs, terminated, truncated)
            if not n:
                return
        else:
            next_dev = self.observe(next_obs, self.stage_next)
            if self.nstep is None:
                first, n = self.buffer.add(obs, actions, self.to_device(rewards, self.stage_rew),
                                           next_dev, self.to_device(terminated, self.stage_done),
                                           self.discounts)
            else:
                rows = self.nstep.push(obs, actions.cpu().numpy(), rewards, next_dev, terminated,
                                       truncated)
                if not len(rows[0]):
                    return
                first, n = self.buffer.add(*rows)
        self.prioritize(first, n)

    def prioritize(self, first: int, n: int, td_abs: np.ndarray | None = None) -> None:
        """The first priorities of the n rows just written from row `first`: the top one, or
        (|td_abs| + eps) ** alpha where they come with their TD errors (an Ape-X actor's)."""
        if isinstance(self.sampler, PrioritizedSampler):
            idx = (first + np.arange(n)) % self.buffer.capacity
            self.sampler.on_add(idx)
            if td_abs is not None:
                self.sampler.update(idx, td_abs)
        elif isinstance(self.sampler, TorchPrioritized):
            rows = self.buffer.rows(first, n)
            self.sampler.on_add(rows)
            if td_abs is not None:
                self.sampler.update(rows, torch.from_numpy(td_abs).to(self.device))

    def add_frames(self, actions: torch.Tensor, rewards: np.ndarray, next_obs: np.ndarray,
                   terminated: np.ndarray, truncated: np.ndarray) -> tuple[int, int]:
        """The frame replay's add: the step's new frames first (from the host observations),
        then its rows, or the n-step windows it completes; returns (first row, n rows)."""
        buf = self.buffer
        assert isinstance(buf, FrameReplay) and self.host_obs is not None
        obs_ptr, next_ptr = buf.stacks(self.host_obs, next_obs)
        if self.nstep is None:
            return buf.add_rows(obs_ptr, actions, rewards, next_ptr, terminated, self.discounts)
        rows = self.nstep.push(torch.from_numpy(obs_ptr), actions.cpu().numpy(), rewards,
                               torch.from_numpy(next_ptr), terminated, truncated)
        return buf.add_rows(*rows)

    # -- Ape-X (apex.py) ------------------------------------------------------------------------

    def actor_modules(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The online and target Q-networks as CPU modules (copies), whatever the route: what
        an actor acts and computes priorities with."""
        if isinstance(self.learner, ReferenceLearner):
            return (copy.deepcopy(self.learner.online).cpu(),
                    copy.deepcopy(self.learner.target).cpu())
        if self.rbf is not None:
            online = copy.deepcopy(self.rbf_module()).cpu()
            target = copy.deepcopy(online)
            (w, b), = self.net.views(self.learner.target.cpu())
            with torch.no_grad():
                target.head.weight.copy_(w)
                target.head.bias.copy_(b)
            return online, target
        return (self.net.to_module(self.learner.params.detach().cpu()),
                self.net.to_module(self.learner.target.detach().cpu()))

    # -- what the run needs --------------------------------------------------------------------

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(obs, device=self.device)
            return self.q_values_eval(x).argmax(1).cpu().numpy()

    def q_values_eval(self, obs: torch.Tensor) -> torch.Tensor:
        """Q of the policy learned: noisy layers play their mean weights."""
        if isinstance(self.learner, ReferenceLearner):
            return self.learner.q_values(obs, mean_weights=True)
        x = preprocess(obs)
        if self.rbf is not None:
            x = self.rbf.features(x.reshape(len(x), -1))
        return self.net.forward(self.learner.online_views, x)

    def pop_stats(self) -> dict[str, float] | None:
        stats = self.learner.pop_stats()
        if stats is None:
            return None
        return {"losses/td_loss": stats[0], "losses/q_values": stats[1]}

    def all_finite(self) -> bool:
        return self.learner.all_finite()

    def noise_generators(self) -> list[torch.Generator]:
        """The online and target networks' noise generators (none without noisy layers)."""
        if not isinstance(self.learner, ReferenceLearner):
            return []
        gens = [noise_generator(self.learner.online), noise_generator(self.learner.target)]
        return [g for g in gens if g is not None]

    @property
    def net_kind(self) -> NetworkKind:
        """This run's network kind: its registry entry (nets.kinds)."""
        return KINDS[self.kind]

    def policy(self) -> Policy:
        if self.rbf is not None:
            return Policy.of_module(self.rbf_module(), self.device)
        if not self.net_kind.flat_net:
            return Policy.of_module(self.learner.online, self.device)
        return Policy(self.net, self.flat_params(), self.device)

    def rbf_module(self) -> RBFQNetwork:
        """The flat route's RBF model as one module: its features and, as the head, the online
        parameters of the linear MLP."""
        assert self.rbf is not None
        (w, b), = self.net.views(self.learner.params)
        with torch.no_grad():
            self.rbf.head.weight.copy_(w)
            self.rbf.head.bias.copy_(b)
        return self.rbf

    def flat_params(self) -> torch.Tensor:
        if isinstance(self.learner, ReferenceLearner):
            return self.net.from_module(self.learner.online)
        return self.learner.params

    def summary(self) -> dict:
        route = self.learner.route(self.device)
        if self.kind == "cnn":
            route += (f"; {self.learner.online.describe()} (the fused flat learner is MLP-only, so "
                      "a CNN trains here)")
        if self.kind == "mlp_module":
            route += (f"; {self.head.describe()} (the fused flat step has no distributional or "
                      "noisy head, so it trains here)")
        if self.rbf is not None:
            route += f"; its linear head on {self.rbf.n_features} RBF features"
        if self.frames and self.kind == "mlp" and self.cfg.learner == "auto":
            route += "; chosen for the frame replay (the fused route reads a row buffer)"
        replay = {"kind": "rows"}
        if isinstance(self.buffer, FrameReplay):
            replay = {"kind": "frames", "frame_slots": len(self.buffer.frames),
                      "frame_store_grew": self.buffer.generation}
        acting = [q for q in (self.acting_q, self.frozen_q) if q is not None]
        beside = {"blocks": getattr(self.learner, "detached_blocks", 0),
                  "why": self.route.overlap_why}
        return {"learner_steps": self.learner.steps, "learner_route": route, "replay": replay,
                "learner_beside_loop": beside,
                "route_fallbacks": list(getattr(self.learner, "fallbacks", []))
                + [line for q in acting for line in q.fallbacks]}

    def net_spec(self) -> dict:
        """The checkpoint's "net" entry, as the network's kind writes it: of the flat MLP's
        layout, of the flat route's RBF model, or of the learner's module."""
        kind = self.net_kind
        return kind.spec(self.net if kind.flat_net else (self.rbf or self.learner.online))

    def state_dict(self, with_buffer: bool) -> dict:
        learner = self.learner.state_dict()
        if self.net_kind.flat_net:
            learner["params"] = self.flat_params().detach().cpu().clone()
        if self.rbf is not None:  # the whole model too, as the reference route saves it
            learner["online"] = {k: v.cpu().clone() for k, v in self.rbf_module().state_dict().items()}
        state = {"net": self.net_spec(), "learner": learner,
                 "replay": "frames" if self.frames else "rows",
                 "rng": {"sampler": self.sampler.get_state(), "act": self.act_gen.get_state(),
                         "per": self.learner.per_generator.get_state()}}
        noise = self.noise_generators()
        if noise:
            state["rng"]["noise"] = [g.get_state() for g in noise]
        if with_buffer:
            state["buffer"] = self.buffer.state_dict()
        return state

    def load_state_dict(self, ckpt: dict) -> None:
        try:
            self.learner.load_state_dict(ckpt["learner"])
            if self.rbf is not None:
                self.rbf.load_state_dict(ckpt["learner"]["online"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:  # a module's own checks
            raise CheckpointError(f"checkpoint.pt: its network state does not load into this "
                                  f"run's network ({str(e).splitlines()[0][:120]}); the file is "
                                  "damaged or from another network") from None
        sampler = ckpt["rng"]["sampler"]
        if isinstance(sampler, dict) and "buffer" not in ckpt:  # the rows, and so their
            sampler = {**sampler, "priorities": sampler["priorities"][:0]}  # priorities, are gone
        self.sampler.set_state(sampler)
        self.act_gen.set_state(ckpt["rng"]["act"])
        for g, saved in zip(self.noise_generators(), ckpt["rng"].get("noise", [])):
            g.set_state(saved)
        if "per" in ckpt["rng"]:
            self.learner.per_generator.set_state(ckpt["rng"]["per"])
        if "buffer" in ckpt:
            try:
                self.buffer.load_state_dict(ckpt["buffer"])
            except OldBufferError as e:
                raise CheckpointError(f"checkpoint.pt {e}; resume it without its buffer "
                                      "(--no-save-buffer) or start a new run") from None


SUPPORT_FIT_STEPS = 1_000
"""Steps of random play whose rewards size C51's automatic support."""
CLIPPED_SUPPORT = 10.0
"""C51's support where rewards are sign-clipped: +-10, Bellemare et al. 2017's and Rainbow's."""


def with_support(cfg: Config, make_env: EnvFactory | None) -> Config:
    """`cfg` with C51's support resolved where --v-min or --v-max is unset: +-10 where rewards
    are sign-clipped (Atari's protocol); else +-mean|r| / (1 - gamma) over SUPPORT_FIT_STEPS
    steps of uniformly random play (the FIT seed streams, so one run seed gives one support):
    the scale of a discounted return whose rewards are like the ones random play sees
    (CartPole +-100, LunarLander +-300 to +-340 by seed). gamma 1 uses a horizon of 1000 steps; no reward
    seen, a scale of 1. An end you set is kept."""
    if cfg.distributional != "c51" or (cfg.v_min is not None and cfg.v_max is not None):
        return cfg
    if auto_on(cfg.clip_rewards, cfg.env_id):
        bound = CLIPPED_SUPPORT
    else:
        _, rewards = random_play(make_env or env_factory(cfg.env_id), SUPPORT_FIT_STEPS, cfg.seed)
        scale = float(np.abs(rewards).mean()) or 1.0
        horizon = 1.0 / (1.0 - cfg.gamma) if cfg.gamma < 1 else 1_000.0
        bound = float(np.float32(scale * horizon))
    lo = cfg.v_min if cfg.v_min is not None else -bound
    hi = cfg.v_max if cfg.v_max is not None else bound
    if not lo < hi:
        given = f"--v-min {cfg.v_min:g}" if cfg.v_min is not None else f"--v-max {cfg.v_max:g}"
        raise ConfigError(f"{given} leaves an empty support with the automatic other end "
                          f"({lo:g}..{hi:g}); pass both --v-min and --v-max")
    return dataclasses.replace(cfg, v_min=lo, v_max=hi)


def random_play(make_env: Callable[[], gym.Env], steps: int, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """The observations [steps, obs size] seen and the rewards [steps] got over `steps` steps of
    uniformly random play on one env (episodes reset from the FIT seed stream of run seed
    `seed`, actions from its FIT_ACTIONS generator): the same run seed plays the same steps."""
    env = zero_based(make_env())
    rng = numpy_generator(seed, Purpose.FIT_ACTIONS)
    n_actions = int(env.action_space.n)
    seen = np.empty((steps, int(np.prod(env.observation_space.shape))), dtype=np.float64)
    rewards = np.empty(steps, dtype=np.float64)
    episode, done = 0, True
    try:
        for t in range(steps):
            if done:
                obs, _ = env.reset(seed=episode_seed(seed, FIT, episode))
                episode += 1
            seen[t] = np.asarray(obs, dtype=np.float64).reshape(-1)
            obs, rewards[t], terminated, truncated, _ = env.step(int(rng.integers(n_actions)))
            done = terminated or truncated
    finally:
        env.close()
    return seen, rewards


def fit_scaler(make_env: Callable[[], gym.Env], steps: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each observation value over `steps` observations of uniformly random
    play on one env (episodes reset from the FIT seed stream of run seed `seed`, actions from
    its FIT_ACTIONS generator): the same run seed gives the same scaler.

    Random play, not samples of the observation space: the space's bounds are often infinite
    (LunarLander's velocities) or far wider than what is visited, and the features should be
    fine where the agent actually goes. Stds below MIN_STD become 1.
    """
    seen, _ = random_play(make_env, steps, seed)
    std = seen.std(0)
    return seen.mean(0).astype(np.float32), np.where(std < MIN_STD, 1.0, std).astype(np.float32)
