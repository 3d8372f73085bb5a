"""PQN (Gallici et al. 2024, "Simplifying Deep Temporal Difference Learning"): Q-learning from
many parallel envs with no replay buffer and no target network.

Each iteration collects a short rollout (T vector steps of N envs) epsilon-greedily, computes
Q(lambda) targets backwards over it with the online network's own max-Q as the bootstrap, and
takes a few epochs of minibatch steps on that batch (RAdam, gradient-norm clipping), then drops
it. LayerNorm in the Q-network is what keeps this stable without a target network.

Acting and the update run on the training device with plain torch ops. The act forward could be
captured as a CUDA graph like DQN's `ActingQ`; it is not, because it has not been tested here.
The run's lifecycle (run dir, signals, evaluation, checkpoints, summary) is `run.Run`'s.
"""

from __future__ import annotations

import numpy as np
import torch

from fastdqn.algos.checks import check_learner_state
from fastdqn.algos.contract import Counters, RunHandle
from fastdqn.algos.explore import EpsilonSchedule, epsilon_greedy
from fastdqn.config.settings import Config
from fastdqn.core.device import check_fits, torch_dtype
from fastdqn.core.seeds import Purpose, torch_generator
from fastdqn.envs.autoreset import real_next_obs
from fastdqn.errors import CheckpointError
from fastdqn.evaluation.policies import Policy
from fastdqn.nets.layernorm import LayerNormQNetwork
from fastdqn.nets.mlp import preprocess

STAGES = ("act", "env_wait", "add", "learn", "log")
"""The loop's stages; a subset of DQN's names, so a timer made for DQN's stages times PQN too."""


def train_pqn(run: RunHandle, agent: PQN) -> None:
    """The loop: collect a rollout of T vector steps, learn from it once, evaluate/checkpoint.

    Evaluations and checkpoints happen between rollouts only, so a checkpoint never holds half a
    rollout. The rollout stops early when the run is over (budget or a signal): the update then
    uses the steps collected.
    """
    c, envs, lap = run.c, run.envs, run.timer.lap
    obs = run.reset_envs()
    while run.running():
        t = 0
        while t < agent.rollout and run.running():
            eps = agent.epsilon(c)
            actions = agent.act(t, obs, eps)
            lap("act")
            next_obs, rewards, terminated, truncated, infos = envs.step(actions)
            lap("env_wait")
            agent.store(t, rewards, terminated, truncated, next_obs, infos)
            lap("add")
            obs, t = next_obs, t + 1
            run.count_step(rewards, terminated, truncated)
            run.maybe_log(epsilon=eps)
        agent.learn(obs, t, c)
        lap("learn")
        if run.maybe_evaluate():
            break
        run.maybe_checkpoint()


def successor_values(values: torch.Tensor, last_value: torch.Tensor, final_values: torch.Tensor,
                     truncated: torch.Tensor) -> torch.Tensor:
    """max_a Q(s', a) of each step's true successor s', [T, N].

    `values[t]` is max-Q of the observation acted on at step t, `last_value` that of the
    observation after the rollout, `final_values[t]` that of the final observation of an
    episode truncated at step t. With SAME_STEP autoreset the observation after an episode end
    is the next episode's first one, so a truncated step takes its final observation's value
    instead; a terminated step's value is never used (it does not bootstrap).
    """
    following = torch.cat([values[1:], last_value[None]])
    return torch.where(truncated.bool(), final_values, following)


def q_lambda_targets(rewards: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
                     truncated: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Q(lambda) targets [T, N], computed backwards over a rollout of T steps per env.

        G_t = r_t + gamma * (1 - term_t) * [lam * C_{t+1} + (1 - lam) * V_{t+1}]

    with V_{t+1} = next_values[t] = max_a Q(s'_t, a) of step t's true successor, and
    C_{t+1} = G_{t+1}, the lambda-return onward, except where it does not exist in this
    episode: after the last step of the rollout, and after an episode end (terminated or
    truncated: G_{t+1} belongs to the next episode), C_{t+1} = V_{t+1}. So a truncated step
    bootstraps fully from its final observation, a terminated one not at all, and a step cut
    by the rollout's end from the observation after it.
    """
    term, ends = terminated.to(rewards.dtype), (terminated.bool() | truncated.bool())
    targets = torch.empty_like(rewards)
    carry = next_values[-1]
    for t in range(rewards.shape[0] - 1, -1, -1):
        if t < rewards.shape[0] - 1:
            carry = torch.where(ends[t], next_values[t], targets[t + 1])
        mixed = lam * carry + (1.0 - lam) * next_values[t]
        targets[t] = rewards[t] + gamma * (1.0 - term[t]) * mixed
    return targets


def flatten_parameters(module: torch.nn.Module) -> torch.nn.Parameter:
    """One contiguous parameter, with one contiguous gradient, behind all of `module`'s
    parameters (which become views into them); returns it, for the optimizer and the clipping.

    RAdam and the gradient-norm clip then run a few ops over one tensor instead of each op over
    every weight and bias: measured here at 128x128 with LayerNorm, a minibatch step took 4.1 ms
    flat against 5.6 ms per-tensor (2.1 against 4.3 ms at 64x64). Autograd accumulates into the
    existing gradient views in place, so `zero_()` replaces `zero_grad()`. Move the module to
    its device before flattening.
    """
    params = list(module.parameters())
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset:offset + n].view_as(p)
        p.grad = flat.grad[offset:offset + n].view_as(p)
        offset += n
    return flat


class PQN:
    """The LayerNorm Q-network and its RAdam optimizer, the rollout storage (preallocated
    [T, N] tensors on the training device), epsilon-greedy acting and the update."""

    def __init__(self, cfg: Config, obs_space, act_space, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.rollout, n = cfg.pqn_rollout, cfg.num_envs
        self.obs_shape = tuple(obs_space.shape)
        init = torch_generator(cfg.seed, Purpose.INIT)
        self.net = LayerNormQNetwork(int(np.prod(self.obs_shape)), int(act_space.n),
                                     tuple(cfg.hidden), init).to(device)
        self.flat = flatten_parameters(self.net)
        self.optimizer = torch.optim.RAdam([self.flat], lr=cfg.lr, eps=cfg.adam_eps)
        self.act_gen = torch_generator(cfg.seed, Purpose.ACT, device=device)
        self.shuffle_gen = torch_generator(cfg.seed, Purpose.SHUFFLE, device=device)
        self.schedule = EpsilonSchedule(cfg.eps_schedule, cfg.eps_start, cfg.eps_end,
                                        cfg.eps_decay_steps, cfg.eps_episode_decay)
        shape = (self.rollout, n)
        self.obs = torch.zeros((*shape, *self.obs_shape), dtype=torch_dtype(obs_space.dtype),
                               device=device)
        self.actions = torch.zeros(shape, dtype=torch.long, device=device)
        self.rewards = torch.zeros(shape, device=device)
        self.terminated = torch.zeros(shape, dtype=torch.bool, device=device)
        self.truncated = torch.zeros(shape, dtype=torch.bool, device=device)
        self.values = torch.zeros(shape, device=device)  # max-Q of obs[t], from acting
        self.final_values = torch.zeros(shape, device=device)  # max-Q of truncated final obs
        self.real_next = np.empty((n, *self.obs_shape), dtype=obs_space.dtype)
        self.eps_dev = torch.empty(n, device=device)
        self.steps = 0
        self._stats = torch.zeros(3, device=device)  # loss sum, Q sum, minibatches since a pop

    # -- the loop's steps ----------------------------------------------------------------------

    def epsilon(self, c: Counters) -> float:
        return self.schedule(c.step, c.episodes)

    def max_q(self, obs: torch.Tensor | np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.net(preprocess(torch.as_tensor(obs, device=self.device))).amax(1)

    @torch.no_grad()
    def act(self, t: int, obs: np.ndarray, eps: float) -> np.ndarray:
        """Epsilon-greedy actions for obs (stored as row t of the rollout, with its max-Q)."""
        self.obs[t].copy_(torch.from_numpy(np.asarray(obs)))
        q = self.net(preprocess(self.obs[t]))
        self.values[t] = q.amax(1)
        self.actions[t] = epsilon_greedy(q, self.eps_dev.fill_(eps), self.act_gen)
        return self.actions[t].cpu().numpy()

    def store(self, t: int, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
              next_obs: np.ndarray, infos: dict) -> None:
        """Row t's outcome; a truncated episode's final observation is valued now, with the
        network that acted (the update comes after the rollout)."""
        self.rewards[t].copy_(torch.from_numpy(np.asarray(rewards, dtype=np.float32)))
        self.terminated[t].copy_(torch.from_numpy(np.asarray(terminated, dtype=bool)))
        self.truncated[t].copy_(torch.from_numpy(np.asarray(truncated, dtype=bool)))
        rows = np.flatnonzero(truncated)
        if len(rows):
            final = real_next_obs(next_obs, infos, self.real_next)[rows]
            self.final_values[t, torch.from_numpy(rows).to(self.device)] = self.max_q(final)

    def learn(self, last_obs: np.ndarray, steps: int, c: Counters) -> None:
        """Q(lambda) targets for the first `steps` rows, then epochs x minibatches of updates."""
        if steps == 0:
            return
        cfg, s = self.cfg, slice(0, steps)
        if cfg.pqn_anneal_lr:
            start = c.step - steps * cfg.num_envs
            self.optimizer.param_groups[0]["lr"] = cfg.lr * max(0.0, 1 - start / cfg.total_timesteps)
        with torch.no_grad():
            next_values = successor_values(self.values[s], self.max_q(last_obs),
                                           self.final_values[s], self.truncated[s])
            targets = q_lambda_targets(self.rewards[s], next_values, self.terminated[s],
                                       self.truncated[s], cfg.gamma, cfg.pqn_lambda).reshape(-1)
        obs = preprocess(self.obs[s].reshape(-1, *self.obs_shape))
        actions = self.actions[s].reshape(-1, 1)
        loss_fn = (torch.nn.functional.mse_loss if cfg.loss == "mse"
                   else torch.nn.functional.smooth_l1_loss)
        for _ in range(cfg.pqn_epochs):
            order = torch.randperm(len(targets), generator=self.shuffle_gen, device=self.device)
            for idx in order.tensor_split(min(cfg.pqn_minibatches, len(targets))):
                q = self.net(obs[idx]).gather(1, actions[idx]).squeeze(1)
                loss = loss_fn(q, targets[idx])
                self.flat.grad.zero_()
                loss.backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.flat, cfg.max_grad_norm)
                self.optimizer.step()
                self.steps += 1
                with torch.no_grad():
                    self._stats += torch.stack([loss.detach(), q.detach().mean(), q.new_ones(())])

    # -- what the run needs --------------------------------------------------------------------

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = preprocess(torch.as_tensor(obs, device=self.device))
            return self.net(x).argmax(1).cpu().numpy()

    def pop_stats(self) -> dict[str, float] | None:
        loss, q, n = self._stats.tolist()
        if n == 0:
            return None
        self._stats.zero_()
        return {"losses/td_loss": loss / n, "losses/q_values": q / n}

    def all_finite(self) -> bool:
        return bool(torch.isfinite(self.flat).all())

    def policy(self) -> Policy:
        return Policy.of_module(self.net, self.device)

    def summary(self) -> dict:
        return {"learner_steps": self.steps, "learner_route": f"pqn-torch-{self.device.type}",
                "route_fallbacks": []}

    def net_spec(self) -> dict:
        return self.net.spec()

    def state_dict(self, with_buffer: bool) -> dict:
        """Network, optimizer and RNG states (a PQN rollout is never saved half-collected, so
        there is no buffer: `with_buffer` changes nothing)."""
        online = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        return {"net": self.net_spec(),
                "learner": {"online": online, "optimizer": self.optimizer.state_dict(),
                            "steps": self.steps},
                "rng": {"act": self.act_gen.get_state(), "shuffle": self.shuffle_gen.get_state()}}

    def check_checkpoint(self, ckpt: dict, path) -> None:
        """A checkpoint must hold a PQN network of this run's shape."""
        net = ckpt.get("net", {})
        if net.get("kind") != "layernorm_mlp":
            raise CheckpointError(f"{path} holds a {net.get('kind', 'mlp')} network, not PQN's "
                                  "LayerNorm one; resume it with the algorithm that wrote it")
        if tuple(net.get("hidden", ())) != self.net.hidden:
            raise CheckpointError(f"{path} has hidden layers {net.get('hidden')}, not "
                                  f"{list(self.net.hidden)}; pass --hidden to match")
        check_learner_state(path, ckpt, self.net, "PQN network", [self.flat], ("online", "steps"),
                            {"act": self.act_gen, "shuffle": self.shuffle_gen})

    def load_state_dict(self, ckpt: dict) -> None:
        """Everything `state_dict` saved; the optimizer's moments come back, its settings are
        this run's (a resume with another --lr uses it)."""
        self.net.load_state_dict(ckpt["learner"]["online"])
        self.optimizer.load_state_dict(ckpt["learner"]["optimizer"])
        self.optimizer.param_groups[0].update(lr=self.cfg.lr, eps=self.cfg.adam_eps)
        self.steps = int(ckpt["learner"]["steps"])
        self.act_gen.set_state(ckpt["rng"]["act"])
        self.shuffle_gen.set_state(ckpt["rng"]["shuffle"])


def check_memory(cfg: Config, obs_space, n_actions: int, device: torch.device) -> None:
    """The rollout's rows and one minibatch's activations, against the memory `device` has: a
    rough bound, there to refuse what cannot fit before anything is allocated."""
    in_dim = int(np.prod(obs_space.shape))
    obs_bytes = in_dim * torch_dtype(obs_space.dtype).itemsize
    width = sum(cfg.hidden) + n_actions + 1
    steps = cfg.pqn_rollout * cfg.num_envs
    nbytes = steps * (obs_bytes + 22) + steps // cfg.pqn_minibatches * 4 * (in_dim + 4 * width)
    check_fits(nbytes, device, f"a PQN rollout of {cfg.pqn_rollout} x {cfg.num_envs} steps",
               "lower --pqn-rollout or --num-envs")
