"""DQN: the agent (Q-network, learner route, replay with n-step and priorities, acting) and its
loop. The run's lifecycle (run dir, envs, signals, logging, evaluation, checkpoints, summary)
is `run.Run`'s; this file is what DQN adds to it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from fastdqn.algos.contract import Counters, RunHandle, divergence_message
from fastdqn.algos.explore import ActingQ, EpsilonSchedule, boltzmann, epsilon_greedy
from fastdqn.config.settings import Config
from fastdqn.core.checkpoint import (
    DAMAGED,
    check_count,
    check_generator_state,
    check_optimizer_state,
    is_count,
    is_whole,
)
from fastdqn.core.device import torch_dtype
from fastdqn.core.seeds import FIT, Purpose, episode_seed, generator_seed, numpy_generator, torch_generator
from fastdqn.envs.atari import auto_on, is_minatar, sign_rewards
from fastdqn.envs.vector import EnvFactory, env_factory, life_loss_of, real_next_obs, zero_based
from fastdqn.errors import CheckpointError, OldBufferError, TrainingDiverged
from fastdqn.evaluation.episodes import Policy
from fastdqn.learners.flat import Learner
from fastdqn.learners.reference import ReferenceLearner
from fastdqn.nets.cnn import check_spec as check_cnn_spec
from fastdqn.nets.cnn import check_state as check_module_state
from fastdqn.nets.cnn import cnn_for, resolve_network
from fastdqn.nets.mlp import MLP, network_of, preprocess
from fastdqn.nets.rbf import MIN_STD, RBFQNetwork, check_state
from fastdqn.nets.rbf import check_spec as check_rbf_spec
from fastdqn.replay.frames import FrameReplay, uses_frame_replay
from fastdqn.replay.frames import check_state as check_frame_state
from fastdqn.replay.nstep import NStepWriter
from fastdqn.replay.prioritized import PrioritizedSampler, TorchPrioritized, beta_at
from fastdqn.replay.rows import ReplayBuffer, row_values_problem
from fastdqn.replay.uniform import UniformSampler

STAGES = ("h2d", "act", "env_send", "sample", "learn", "target", "env_wait", "add", "log")


def train_dqn(run: RunHandle, agent: DQN) -> None:
    """The loop: act, step the envs while learning, add; then the run's maybe-hooks."""
    c, envs, lap = run.c, run.envs, run.timer.lap
    obs = agent.observe(run.reset_envs())
    while run.running():
        eps = agent.epsilon(c)
        actions = agent.act(obs, eps, c.step)
        lap("act")
        envs.step_async(actions.cpu().numpy())
        lap("env_send")
        agent.learn(c, lap)
        next_obs, rewards, terminated, truncated, infos = envs.step_wait()
        lap("env_wait")
        agent.add(obs, actions, rewards, real_next_obs(next_obs, infos, agent.real_next),
                  terminated, truncated, infos)
        lap("add")
        obs = agent.observe(next_obs)
        lap("h2d")
        run.count_step(rewards, terminated, truncated)
        run.maybe_log(epsilon=eps)
        if run.maybe_evaluate():
            break
        run.maybe_checkpoint()


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
    ("custom"); --network auto is cnn on image observations, mlp otherwise. The learner route:
    `Learner` (flat MLP: Numba-fused on the CPU, CUDA graphs on CUDA, torch ops elsewhere) for
    the MLP, dueling or not, and for the RBF model's linear head; `ReferenceLearner` (nn.Module +
    autograd; its update as a CUDA graph on CUDA, graphed_update.py) for a CNN, a custom
    network, --optimizer rmsprop, and --learner reference (never graphed: it is the reference).

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
        self.cfg, self.device = cfg, device
        n_envs, n_actions = cfg.num_envs, int(act_space.n)
        self.obs_shape = tuple(obs_space.shape)
        in_dim = int(np.prod(self.obs_shape))
        self.net = MLP(in_dim, n_actions, tuple(cfg.hidden), cfg.dueling)
        self.kind = "custom" if q_network is not None else resolve_network(cfg.network, obs_space)
        self.custom = self.kind == "custom"
        self.rbf: RBFQNetwork | None = None  # the RBF model's features, on the flat route
        row_shape, row_dtype = self.obs_shape, torch_dtype(obs_space.dtype)
        self.frames = uses_frame_replay(cfg.frame_replay, self.kind, self.obs_shape,
                                        obs_space.dtype)
        opts = dict(lr=cfg.lr, gamma=cfg.gamma, tau=cfg.tau, loss=cfg.loss,
                    target_update_interval=cfg.target_update_interval,
                    double_dqn=cfg.double_dqn, max_grad_norm=cfg.max_grad_norm,
                    adam_eps=cfg.adam_eps, device=device)
        flat_opts = dict(cuda_graphs=cfg.cuda_graphs, native=cfg.learner != "numba", **opts)
        reference = cfg.learner == "reference" or cfg.optimizer != "adam"
        # The module route runs under CUDA graphs unless the user asked for the plain reference
        # or brought their own module (whose forward fastdqn cannot promise is capturable).
        module_opts = dict(optimizer=cfg.optimizer, **opts, cuda_graphs=(
            cfg.cuda_graphs and cfg.learner != "reference" and q_network is None))
        if self.kind == "cnn":
            module = cnn_for(obs_space, n_actions, cfg.dueling,
                             generator_seed(cfg.seed, Purpose.INIT), is_minatar(cfg.env_id))
            self.learner: Learner | ReferenceLearner = ReferenceLearner(module, **module_opts)
        elif self.kind == "rbf" and reference:
            module = self.rbf_network(in_dim, n_actions, env_factory, resuming)
            self.learner = ReferenceLearner(module, **module_opts)
        elif self.kind == "rbf":
            self.rbf = self.rbf_network(in_dim, n_actions, env_factory, resuming).to(device)
            self.net = MLP(self.rbf.n_features, n_actions, (), False)
            init = torch.cat([self.rbf.head.weight.detach().reshape(-1),
                              self.rbf.head.bias.detach()]).cpu()
            self.learner = Learner(self.net, init=init, **flat_opts)
            row_shape, row_dtype = (self.rbf.n_features,), torch.float32
        elif self.custom or reference or self.frames:
            init = self.net.init(torch_generator(cfg.seed, Purpose.INIT))
            module = q_network if self.custom else self.net.to_module(init)
            self.learner = ReferenceLearner(module, **module_opts)
        else:
            init = self.net.init(torch_generator(cfg.seed, Purpose.INIT))
            self.learner = Learner(self.net, init=init, **flat_opts)
        self.row_shape = row_shape
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
        self.act_gen = torch_generator(cfg.seed, Purpose.ACT, device=device)
        self.schedule = EpsilonSchedule(cfg.eps_schedule, cfg.eps_start, cfg.eps_end,
                                        cfg.eps_decay_steps, cfg.eps_episode_decay)
        self.learning_starts = max(cfg.learning_starts, cfg.batch_size)  # a batch first
        self.cuda = device.type == "cuda"
        pin = self.cuda
        obs_dtype = torch_dtype(obs_space.dtype)
        self.stage_obs = torch.empty((n_envs, *self.obs_shape), dtype=obs_dtype, pin_memory=pin)
        self.stage_next = torch.empty_like(self.stage_obs, pin_memory=pin)
        self.stage_rew = torch.empty(n_envs, dtype=torch.float32, pin_memory=pin)
        self.stage_done = torch.empty(n_envs, dtype=torch.float32, pin_memory=pin)
        self.discounts = torch.full((n_envs,), cfg.gamma, dtype=torch.float32, device=device)
        self.real_next = np.empty((n_envs, *self.obs_shape), dtype=obs_space.dtype)
        # the observation acted on, kept on the host: the frame replay finds its new frames there
        self.host_obs = np.empty_like(self.real_next) if self.frames else None
        self.eps_dev = torch.empty(n_envs, device=device)
        self.acting_q: ActingQ | None = None
        self.clip_rewards = auto_on(cfg.clip_rewards, cfg.env_id)
        self.life_loss_terminal = auto_on(cfg.life_loss_terminal, cfg.env_id)

    def rbf_network(self, in_dim: int, n_actions: int, make_env: EnvFactory | None,
                    resuming: bool) -> RBFQNetwork:
        """Features drawn from the run seed; a new run fits the scaler on random play first (a
        resumed one gets it back with the checkpoint's buffers)."""
        cfg = self.cfg
        module = RBFQNetwork(in_dim, n_actions, cfg.rbf_features, cfg.rbf_scales,
                             torch_generator(cfg.seed, Purpose.INIT))
        if not resuming:
            module.set_scaler(*fit_scaler(make_env or env_factory(cfg.env_id), cfg.rbf_fit_steps,
                                          cfg.seed))
        return module

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
        actor on a CPU where it builds, each proved against the plain forward pass)."""
        if self.acting_q is None:
            actor = self.learner.native_actor(obs.dtype) if obs.device.type == "cpu" else None
            self.acting_q = ActingQ(self.net, self.learner.online_views, obs,
                                    self.cfg.cuda_graphs, actor)
        return self.acting_q

    def act(self, obs: torch.Tensor, eps: float, step: int) -> torch.Tensor:
        """Batched epsilon-greedy or Boltzmann actions on the device (epsilon-greedy as one
        native call where the native actor runs)."""
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
        cfg = self.cfg
        if self.buffer.size < self.learning_starts:
            return
        c.due += (cfg.num_envs if new is None else new) * cfg.gradient_steps
        k, c.due = divmod(c.due, cfg.train_every)
        if k:
            beta = beta_at(c.step, cfg.total_timesteps, cfg.per_beta)
            self.learner.learn(self.buffer, self.sampler, k, cfg.batch_size, beta, lap)

    def add(self, obs: torch.Tensor, actions: torch.Tensor, rewards: np.ndarray,
            next_obs: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
            infos: dict | None = None) -> None:
        """Store the vector step (as n-step rows when n > 1); new rows get the top priority.

        With --clip-rewards the rows hold sign(reward); with --life-loss-terminal a step
        whose `infos["life_loss"]` is set is stored as terminated (no bootstrap, and an n-step
        window ends there; the frame replay finds its stacks from the frames, so a life loss
        does not break them). The caller's arrays are not modified."""
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

    def actor_weights(self) -> dict:
        """What actors load: the state dicts of `actor_modules`."""
        online, target = self.actor_modules()
        return {"online": online.state_dict(), "target": target.state_dict()}

    def ingest(self, block: dict) -> int:
        """Add an actor's rows with the priorities it computed (|delta| before any learner
        step); returns how many rows it held."""
        dev = self.device
        # Ray hands arrays over read-only (zero-copy); torch wants writable memory to wrap
        rows = {f: torch.from_numpy(np.require(block[f], requirements="W")).to(dev)
                for f in ("obs", "next_obs", "actions", "rewards", "dones", "discounts")}
        if self.rbf is not None:  # the flat route's rows hold the features
            with torch.no_grad():
                for f in ("obs", "next_obs"):
                    rows[f] = self.rbf.features(preprocess(rows[f]).reshape(len(rows[f]), -1))
        first, n = self.buffer.add(rows["obs"], rows["actions"], rows["rewards"],
                                   rows["next_obs"], rows["dones"], rows["discounts"])
        self.prioritize(first, n, block["priorities"])
        return n

    # -- what the run needs --------------------------------------------------------------------

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(obs, device=self.device)
            return self.q_values_eval(x).argmax(1).cpu().numpy()

    def q_values_eval(self, obs: torch.Tensor) -> torch.Tensor:
        if isinstance(self.learner, ReferenceLearner):
            return self.learner.q_values(obs)
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

    def policy(self) -> Policy:
        if self.rbf is not None:
            return Policy.of_module(self.rbf_module(), self.device)
        if self.kind != "mlp":
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
        if self.rbf is not None:
            route += f"; its linear head on {self.rbf.n_features} RBF features"
        if self.frames and self.kind == "mlp" and self.cfg.learner == "auto":
            route += "; chosen for the frame replay (the fused route reads a row buffer)"
        replay = {"kind": "rows"}
        if isinstance(self.buffer, FrameReplay):
            replay = {"kind": "frames", "frame_slots": len(self.buffer.frames),
                      "frame_store_grew": self.buffer.generation}
        return {"learner_steps": self.learner.steps, "learner_route": route, "replay": replay,
                "route_fallbacks": list(getattr(self.learner, "fallbacks", []))
                + list(getattr(self.acting_q, "fallbacks", []) if self.acting_q else [])}

    def net_spec(self) -> dict:
        if self.custom:
            return {"kind": "custom", "class": type(self.learner.online).__qualname__}
        if self.kind in ("rbf", "cnn"):
            return (self.rbf or self.learner.online).spec()
        return {"kind": "mlp", "in_dim": self.net.in_dim, "n_actions": self.net.n_actions,
                "hidden": list(self.net.hidden), "dueling": self.net.dueling}

    def state_dict(self, with_buffer: bool) -> dict:
        learner = self.learner.state_dict()
        if self.kind == "mlp":
            learner["params"] = self.flat_params().detach().cpu().clone()
        if self.rbf is not None:  # the whole model too, as the reference route saves it
            learner["online"] = {k: v.cpu().clone() for k, v in self.rbf_module().state_dict().items()}
        state = {"net": self.net_spec(), "learner": learner,
                 "replay": "frames" if self.frames else "rows",
                 "rng": {"sampler": self.sampler.get_state(), "act": self.act_gen.get_state(),
                         "per": self.learner.per_generator.get_state()}}
        if with_buffer:
            state["buffer"] = self.buffer.state_dict()
        return state

    def check_checkpoint(self, ckpt: dict, path) -> None:
        """A checkpoint must come from the same network shape and replay as this run, every
        tensor it restores must have the shape of the one it is copied into (copy_ would
        broadcast a wrong one, or fail with a traceback), and every value the learner steps
        index with or trust must be in range (actions, done flags, discounts, priorities,
        counts, generator states; finite rewards, observations and weights): the native and
        Numba steps write where a saved action points."""
        if "net" not in ckpt or "learner" not in ckpt:
            raise CheckpointError(f"{path} lacks its network; it is damaged or from another "
                                  "program")
        # first: the replay decides the learner route, so the learner state's layout too
        replay = ckpt.get("replay", "rows")  # fastdqn before frame replay: rows
        if replay != ("frames" if self.frames else "rows"):
            on = replay == "frames"
            raise CheckpointError(f"{path} was trained with{'' if on else 'out'} frame replay; "
                                  f"pass --frame-replay {'on' if on else 'off'} to resume it")
        net = ckpt["net"] if isinstance(ckpt["net"], dict) else {}
        learner = ckpt["learner"] if isinstance(ckpt["learner"], dict) else {}
        want = self.net_spec()
        if net.get("kind", "mlp") != want["kind"]:
            raise CheckpointError(f"{path} holds a {net.get('kind', 'mlp')} network, this run a "
                                  f"{want['kind']} one; resume with the same network")
        if want["kind"] == "mlp":
            if tuple(net.get("hidden", ())) != tuple(want["hidden"]):
                raise CheckpointError(f"{path} has hidden layers {net.get('hidden')}, "
                                      f"not {want['hidden']}; pass --hidden to match")
            if bool(net.get("dueling", False)) != want["dueling"]:
                flag = "--dueling" if net.get("dueling") else "--no-dueling"
                raise CheckpointError(f"{path} was trained with{'' if net.get('dueling') else 'out'}"
                                      f" a dueling head; pass {flag} to match")
            flat = network_of(path, net)
            params = learner.get("params")
            if (not isinstance(params, torch.Tensor) or params.shape != (flat.num_params,)
                    or (flat.in_dim, flat.n_actions) != (self.net.in_dim, self.net.n_actions)):
                raise CheckpointError(f"{path}: its parameters do not fit its network shape; the "
                                      "file is damaged")
            if isinstance(self.learner, Learner):
                _check_flat_learner(path, learner, params.shape)
        if isinstance(self.learner, ReferenceLearner):
            saved = learner.get("optimizer_kind", "adam")
            if saved != self.learner.optimizer_kind:
                raise CheckpointError(f"{path} was trained with --optimizer {str(saved)[:20]}; pass "
                                      f"--optimizer {str(saved)[:20]} to resume it")
            if want["kind"] in ("mlp", "custom"):  # a cnn's and an rbf's are checked below
                module = self.learner.online
                check_module_state(path, learner.get("online"), module, "learner.online")
                check_module_state(path, learner.get("target"), module, "learner.target")
        if want["kind"] == "cnn":
            if bool(net.get("dueling", False)) != want["dueling"]:
                flag = "--dueling" if net.get("dueling") else "--no-dueling"
                raise CheckpointError(f"{path} was trained with{'' if net.get('dueling') else 'out'}"
                                      f" a dueling head; pass {flag} to match")
            check_cnn_spec(path, net)  # its types too: 16.0 == 16 would pass the comparison
            if net != want:
                raise CheckpointError(f"{path} holds another cnn than this run builds for "
                                      f"{self.cfg.env_id}; it is damaged or from another env")
            module = self.learner.online
            check_module_state(path, learner.get("online"), module, "learner.online")
            check_module_state(path, learner.get("target"), module, "learner.target")
        if want["kind"] == "rbf":
            sizes = check_rbf_spec(path, net)
            if (sizes["in_dim"], sizes["n_actions"]) != (want["in_dim"], want["n_actions"]):
                raise CheckpointError(f"{path} declares an rbf network of {sizes['in_dim']} inputs "
                                      f"and {sizes['n_actions']} actions, but {self.cfg.env_id} has "
                                      f"{want['in_dim']} and {want['n_actions']}; it is damaged or "
                                      "from another env")
            if (net.get("n_features"), net.get("scales")) != (want["n_features"], want["scales"]):
                raise CheckpointError(
                    f"{path} has {net.get('n_features')} rbf features over scales "
                    f"{net.get('scales')}, not {want['n_features']} over {want['scales']}; "
                    "pass --rbf-features and --rbf-scales to match")
            flat = isinstance(learner.get("params"), torch.Tensor)
            if flat != (self.rbf is not None):
                was, flag = ("the flat", "--learner auto") if flat else ("the reference",
                                                                       "--learner reference")
                raise CheckpointError(f"{path} was trained on {was} learner route; pass {flag} "
                                      "to resume it")
            check_state(path, learner.get("online"), self.rbf or self.learner.online,
                        "learner.online")
            if self.rbf is None:
                check_state(path, learner.get("target"), self.learner.online, "learner.target")
            else:
                _check_flat_learner(path, learner, (self.net.num_params,))
        if isinstance(self.learner, ReferenceLearner):
            check_optimizer_state(path, learner.get("optimizer"), self.learner.params)
        buffer = ckpt.get("buffer", {})
        saved = buffer.get("capacity", self.cfg.buffer_size) if isinstance(buffer, dict) else None
        saved_cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        if saved != self.cfg.buffer_size and (not is_count(saved, 1)
                                              or saved != saved_cfg.get("buffer_size")):
            # not the size its own settings name: no --buffer-size would resume it
            raise CheckpointError(f"{path}: its replay buffer's capacity {str(saved)[:20]} is not "
                                  f"the --buffer-size its settings name; {DAMAGED}")
        if saved != self.cfg.buffer_size:
            raise CheckpointError(f"{path} holds a replay buffer of capacity {saved}, not "
                                  f"--buffer-size {self.cfg.buffer_size}; resume with "
                                  f"--buffer-size {saved}")
        if "buffer" in ckpt and isinstance(self.buffer, FrameReplay):
            problem = check_frame_state(buffer, self.cfg.buffer_size, self.row_shape,
                                        self.buffer.obs_dtype)
            if problem:
                raise CheckpointError(f"{path}: {problem}; the file is damaged")
            observations = {"frames": self.buffer.obs_dtype}
        elif "buffer" in ckpt:
            _check_buffer(path, buffer, self.cfg.buffer_size, self.row_shape)
            observations = {"obs": self.buffer.obs.dtype, "next_obs": self.buffer.obs.dtype}
        if "buffer" in ckpt:
            problem = row_values_problem(buffer, self.net.n_actions, observations)
            if problem:
                raise CheckpointError(f"{path}: {problem}; {DAMAGED}")
        rngs = ckpt.get("rng") if isinstance(ckpt.get("rng"), dict) else {}
        rng = rngs.get("sampler")
        actors = saved_cfg.get("actors")
        if isinstance(rng, dict) and not self.prioritized and is_whole(actors, 1):
            raise CheckpointError(f"{path} is an Ape-X run ({actors} actors), and a checkpoint "
                                  "never decides where a run connects: pass --actors "
                                  f"{actors} (and --ray-address for a cluster) to resume it on "
                                  "Ray, or --prioritized to resume it on this machine alone")
        if isinstance(rng, dict) != self.prioritized:
            flag = "--prioritized" if isinstance(rng, dict) else "--no-prioritized"
            raise CheckpointError(f"{path} was trained with{'' if isinstance(rng, dict) else 'out'}"
                                  f" prioritized replay; pass {flag} to match")
        rows = buffer["size"] if "buffer" in ckpt else None
        _check_sampler(path, rng, self.cfg, rows)
        check_generator_state(path, "rng.act", rngs.get("act"), self.act_gen)
        if "per" in rngs:
            check_generator_state(path, "rng.per", rngs["per"], self.learner.per_generator)
        check_count(path, "learner.steps", learner.get("steps"), "learner steps")

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
        if "per" in ckpt["rng"]:
            self.learner.per_generator.set_state(ckpt["rng"]["per"])
        if "buffer" in ckpt:
            try:
                self.buffer.load_state_dict(ckpt["buffer"])
            except OldBufferError as e:
                raise CheckpointError(f"checkpoint.pt {e}; resume it without its buffer "
                                      "(--no-save-buffer) or start a new run") from None


def _check_flat_learner(path: Path, learner: dict, shape: tuple) -> None:
    """The flat learner's target and Adam moments have the parameters' shape, its step count
    is a scalar; all are finite float32 (copy_ would cast any dtype, and a NaN would only show
    as a divergence after the run dir was written to), the second moments and the step count
    non-negative (Adam takes their square roots and powers)."""
    opt = learner.get("optimizer") if isinstance(learner.get("optimizer"), dict) else {}
    tensors = {"learner.params": (learner.get("params"), shape),
               "learner.target": (learner.get("target"), shape),
               "learner.optimizer.exp_avg": (opt.get("exp_avg"), shape),
               "learner.optimizer.exp_avg_sq": (opt.get("exp_avg_sq"), shape),
               "learner.optimizer.step": (opt.get("step"), ())}
    _check_shapes(path, tensors)
    for name, (t, _) in tensors.items():
        nonnegative = name.endswith(("exp_avg_sq", "step"))
        if (t.dtype != torch.float32 or not bool(torch.isfinite(t).all())
                or (nonnegative and bool((t < 0).any()))):
            what = "non-negative " if nonnegative else ""
            raise CheckpointError(f"{path}: {name} is not a tensor of finite {what}float32 "
                                  f"values; {DAMAGED}")


def _check_sampler(path: Path, state: object, cfg: Config, rows: int | None) -> None:
    """The saved sampler state: the xoroshiro words of the uniform or CPU prioritized sampler,
    and the priorities, one per saved row (none without a saved buffer), finite and positive (a
    row of priority 0 is never drawn, and a sum of 0 cannot be sampled), raised to this run's
    --per-alpha."""
    # the CPU samplers' xoroshiro words (TorchPrioritized keeps its generator in rng.per)
    saved = not isinstance(state, dict) or "rng" in state
    words = state.get("rng") if isinstance(state, dict) else state
    if saved and not (isinstance(words, list) and len(words) == 2 and any(words)
                      and all(is_whole(w) and w < 2**64 for w in words)):
        raise CheckpointError(f"{path}: rng.sampler does not hold the sampler's two nonzero 64-bit "
                              f"words; {DAMAGED}")
    if not isinstance(state, dict):
        return
    if state.get("capacity") != cfg.buffer_size:
        raise CheckpointError(f"{path}: rng.sampler's priorities are for a buffer of "
                              f"{repr(state.get('capacity'))[:20]} rows, not {cfg.buffer_size}; "
                              f"{DAMAGED}")
    alpha = state.get("alpha")
    if type(alpha) is not float or not 0 <= alpha <= 1:
        raise CheckpointError(f"{path}: rng.sampler.alpha is {repr(alpha)[:20]}, not a number in "
                              f"[0, 1]; {DAMAGED}")
    if alpha != cfg.per_alpha:
        raise CheckpointError(f"{path} was trained with --per-alpha {alpha:g}; pass --per-alpha "
                              f"{alpha:g} to resume it")
    # a priority is |TD error| + eps of a float32 step, and a leaf that to a power alpha <= 1:
    # neither exceeds float32's largest, so a full tree's total stays finite (rows of 1e308
    # would overflow it, and sampling would fail mid-run)
    most = float(torch.finfo(torch.float32).max)
    top = state.get("max_priority")
    if type(top) is not float or not 0 < top < float("inf"):
        raise CheckpointError(f"{path}: rng.sampler.max_priority is {repr(top)[:20]}, not a "
                              f"finite positive number; {DAMAGED}")
    if top > most:
        raise CheckpointError(f"{path}: rng.sampler.max_priority is {top:.3g}, more than a "
                              f"float32 TD error can reach ({most:.3g}); {DAMAGED}")
    prio = state.get("priorities")
    if not (isinstance(prio, torch.Tensor) and prio.dtype == torch.float64 and prio.dim() == 1):
        raise CheckpointError(f"{path}: rng.sampler.priorities is not a float64 vector; {DAMAGED}")
    if rows is not None and len(prio) != rows:
        raise CheckpointError(f"{path}: rng.sampler holds {len(prio)} priorities for the "
                              f"{rows} rows of its buffer; {DAMAGED}")
    if not bool(torch.isfinite(prio).all()) or not bool((prio > 0).all()):
        raise CheckpointError(f"{path}: rng.sampler.priorities holds a value that is not finite "
                              f"and positive; {DAMAGED}")
    if bool((prio > most).any()):
        raise CheckpointError(f"{path}: rng.sampler.priorities holds {float(prio.max()):.3g}, "
                              f"more than a float32 TD error can reach ({most:.3g}); {DAMAGED}")


def _check_shapes(path: Path, tensors: dict[str, tuple[object, tuple]]) -> None:
    """Each named tensor exists and has its expected shape; a one-line CheckpointError if not."""
    for name, (t, shape) in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: {name} is missing; the file is damaged")
        if tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{path}: {name} has shape {list(t.shape)}, not {list(shape)}; "
                                  "the file is damaged")


def _check_buffer(path: Path, buffer: dict, capacity: int, obs_shape: tuple) -> None:
    """A --save-buffer checkpoint's rows: as many as it says it holds, each of the env's shape,
    written from row 0 on (the ring's position is its size until it is full)."""
    size, pos = buffer.get("size"), buffer.get("pos")
    if not (is_whole(size) and is_whole(pos) and size <= capacity and pos < capacity
            and (size == capacity or pos == size)):
        raise CheckpointError(f"{path}: its replay buffer's size {size!r} and position {pos!r} do "
                              f"not fit its capacity {capacity}; the file is damaged")
    for name, shape in (("obs", (size, *obs_shape)), ("next_obs", (size, *obs_shape)),
                        ("actions", (size,)), ("rewards", (size,)), ("dones", (size,)),
                        ("discounts", (size,))):
        if name == "discounts" and name not in buffer:
            continue  # a fastdqn 0.1 buffer: refused with its own message when loaded
        t = buffer.get(name)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            held = f"shape {list(t.shape)}" if isinstance(t, torch.Tensor) else "no tensor"
            raise CheckpointError(f"{path}: its replay buffer says it holds {size} rows, but "
                                  f"buffer.{name} has {held}, not {list(shape)}; the file is "
                                  "damaged")


def fit_scaler(make_env: Callable[[], gym.Env], steps: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each observation value over `steps` observations of uniformly random
    play on one env (episodes reset from the FIT seed stream of run seed `seed`, actions from
    its FIT_ACTIONS generator): the same run seed gives the same scaler.

    Random play, not samples of the observation space: the space's bounds are often infinite
    (LunarLander's velocities) or far wider than what is visited, and the features should be
    fine where the agent actually goes. Stds below MIN_STD become 1.
    """
    env = zero_based(make_env())
    rng = numpy_generator(seed, Purpose.FIT_ACTIONS)
    n_actions = int(env.action_space.n)
    seen = np.empty((steps, int(np.prod(env.observation_space.shape))), dtype=np.float64)
    episode, done = 0, True
    try:
        for t in range(steps):
            if done:
                obs, _ = env.reset(seed=episode_seed(seed, FIT, episode))
                episode += 1
            seen[t] = np.asarray(obs, dtype=np.float64).reshape(-1)
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(n_actions)))
            done = terminated or truncated
    finally:
        env.close()
    std = seen.std(0)
    return seen.mean(0).astype(np.float32), np.where(std < MIN_STD, 1.0, std).astype(np.float32)
