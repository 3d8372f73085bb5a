"""Every training setting in one dataclass; CLI flags and TOML presets are generated from it.

Each field's docstring is its help text: `field_docs()` reads them from the source, so the
documentation, the CLI and the validator cannot drift apart.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import re
import sys
import textwrap
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A user error in the settings: the message names the problem and the fix."""


MAX_BUFFER_SIZE = 2**30
"""Largest --buffer-size: a thousand times the 1M-transition replay of the Atari DQN papers.
The buffer is allocated whole at start, so a bigger value (a typo, or a resumed checkpoint's
crafted config) would only exhaust memory."""


@dataclass
class Config:
    """Settings of one training run."""

    algo: str = "dqn"
    """Algorithm: dqn (deep Q-network with replay; double, dueling, n-step, prioritized), pqn
    (parallel Q-learning, Gallici et al. 2024: many envs, no replay, no target network, LayerNorm,
    Q(lambda) targets) or reinforce (Monte-Carlo policy gradient on whole episodes). A setting you
    leave unset takes the algorithm's own default where it has one (shown as "pqn: ..." or
    "reinforce: ..." in the help); what you set, in a flag or a TOML file, always wins. Another
    algorithm's own settings are refused (ALGO_ONLY); reinforce reads the "reinforce:" fields plus
    lr, adam_eps, gamma, max_grad_norm and the run's own (envs, budget, seed, device, evaluation,
    checkpoints, logging)."""
    env_id: str = "LunarLander-v3"
    """gymnasium environment id (Discrete actions, Box observations)."""
    num_envs: int = 16
    """Number of environments stepped in parallel."""
    vector: str = "sharded"
    """Vector env: sharded (worker processes each stepping a shard of the envs), async
    (gymnasium AsyncVectorEnv, one process per env), sync (in-process, no overlap) or envpool
    (EnvPool's C++ envs for the ids it has, e.g. LunarLander-v3 and Atari; pip install -e
    ".[envpool]"). envpool seeds each env once per run, not each episode, and a resumed run
    starts fresh episodes; evaluations always play gymnasium's env."""
    num_workers: int = 0
    """sharded: env worker processes; envpool: EnvPool threads; 0 means one per CPU core beyond
    the learner's."""
    total_timesteps: int = 500_000
    """Env transitions to train for (summed over all envs)."""
    total_episodes: int = 0
    """Also stop once this many training episodes have ended (0: no limit); with one env it
    stops exactly there, with N envs within the vector step that ends it."""
    seed: int = 1
    """Seed of envs, network init, sampling and exploration; same seed on CPU gives the same run."""
    device: str = "auto"
    """Training device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."""
    run_dir: str = ""
    """Run directory (TensorBoard events, checkpoints, summary); empty: runs/<env>__<seed>__<time>."""
    target_return: float | None = None
    """Stop when the greedy eval mean reaches this; none: the env spec's reward_threshold."""

    network: str = "auto"
    """Q-network: auto (cnn for image observations, a Box of rank 3 with dtype uint8 or bool;
    mlp otherwise), mlp (--hidden layers, ReLU; --dueling), cnn (convolutions picked by the
    image size: the Nature DQN CNN, 3 convolutions and fc 512, for sides >= 36 such as Atari's
    84x84; MinAtar's, one 3x3 convolution and fc 128, for sides 3 to 35 such as MinAtar's
    10x10; channels-last images are permuted inside; --dueling; trained on the reference
    route, the fused learner being MLP-only) or rbf (linear Q on fixed random Fourier features
    of the standardized observation, --rbf-features over --rbf-scales; the features are
    computed as observations arrive and the replay rows hold them, so the fused learner trains
    the linear head; --learner reference trains the whole module instead)."""
    hidden: tuple[int, ...] = (128, 128)
    """dqn: hidden layer sizes of the MLP Q-network (ReLU), e.g. 256,256 (--network mlp only:
    a CNN's layers are its architecture's)."""
    rbf_features: int = 400
    """--network rbf: random Fourier features in all, split evenly over --rbf-scales."""
    rbf_scales: tuple[float, ...] = (5.0, 2.0, 1.0, 0.5)
    """--network rbf: the RBF kernel widths gamma, exp(-gamma |z - z'|^2) on the standardized
    observation z, one block of features each (scikit-learn's examples use 5,2,1,0.5)."""
    rbf_fit_steps: int = 5_000
    """--network rbf: steps of uniformly random play whose observations fit the standardization
    (mean, std per value) before training; it is saved in the checkpoint."""
    lr: float = 6.3e-4
    """Learning rate (of Adam, or of RMSprop with --optimizer rmsprop)."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    optimizer: str = "adam"
    """dqn: adam, or rmsprop as the MinAtar paper's code sets it (Young & Tian 2019, MinAtar's
    examples/dqn.py: torch RMSprop, squared-gradient decay alpha 0.95, centered, eps 0.01, no
    momentum). RMSprop trains on the reference route (the fused learner's step is Adam's)."""
    gamma: float = 0.99
    """Discount factor."""
    loss: str = "huber"
    """TD loss: huber (smooth L1, delta 1) or mse."""
    clip_rewards: str = "auto"
    """dqn: clip the rewards stored for training to their sign, -1, 0 or 1 (Mnih et al. 2015):
    auto (on for Atari ids, ALE/... and ...NoFrameskip-v4), on or off. Episode returns,
    evaluations and summary.json stay in raw game score."""
    life_loss_terminal: str = "auto"
    """dqn: store a step that lost a life (the env's info["life_loss"]) as terminal for the TD
    target, while the game goes on: auto (on for Atari ids), on (the env must report life
    loss) or off. Episodes, evaluations and summary.json still end at game over."""
    double_dqn: bool = True
    """Double DQN: the online net picks the next action, the target net values it."""
    max_grad_norm: float = 10.0
    """Clip the global gradient norm to this; 0 disables clipping (reinforce: the policy's and
    the value network's norms are clipped separately)."""
    batch_size: int = 128
    """Transitions per gradient step."""
    buffer_size: int = 10_000
    """Replay capacity in transitions (a ring: the oldest are overwritten). 10k (CleanRL's
    default too) solved LunarLander in 27 s median against 31 s for 100k (bench/README.md)."""
    learning_starts: int = 1_000
    """Transitions collected before the first gradient step; raised to batch_size if smaller
    (a step needs one batch in the buffer)."""
    train_every: int = 4
    """Env transitions per round of `gradient_steps` updates (summed over envs)."""
    gradient_steps: int = 1
    """Gradient steps per `train_every` env transitions."""
    tau: float = 0.005
    """Target update weight: target <- tau*online + (1-tau)*target; 1 is a hard copy."""
    target_update_interval: int = 1
    """Learner steps between target updates (use tau=1 and e.g. 250 for hard updates)."""

    n_step: int = 1
    """n-step returns: each stored transition sums up to n rewards of one env's episode and
    bootstraps with gamma^k from the state k <= n steps later (never across an episode end)."""
    prioritized: bool = False
    """Proportional prioritized replay (Schaul et al. 2016): rows drawn with probability
    p^alpha / sum p^alpha, p = |TD error| + per_eps, corrected by importance weights."""
    per_alpha: float = 0.6
    """Prioritized replay: how strongly priorities skew sampling (0 = uniform)."""
    per_beta: float = 0.4
    """Prioritized replay: importance-weight exponent at the start, annealed linearly to 1 over
    total_timesteps."""
    per_eps: float = 1e-6
    """Prioritized replay: added to |TD error| so that no row's priority is zero."""
    frame_replay: str = "auto"
    """Replay for stacked frames: each frame is stored once and the stacks are rebuilt when
    sampled (1M Atari transitions take about 7 GB instead of 56). auto: on for observations that
    are a small stack of uint8 frames (rank 3, uint8, first axis <= 16: FrameStackObservation's
    [4, 84, 84] for Atari); on: for any observation of rank >= 2, stacked on its first axis;
    off: one row of obs and next_obs per transition. With it the MLP trains on the reference
    route (the fused CPU route reads a row buffer in place)."""
    dueling: bool = False
    """Dueling head (Wang et al. 2016): Q = V + A - mean(A) from one last hidden layer (the
    MLP's, or a CNN's fc layer; not --network rbf)."""
    learner: str = "auto"
    """Learner route: auto (the fastest route that supports the network and options: on the CPU
    the native step of csrc/, built once per machine, else the Numba-fused one; CUDA graphs on
    CUDA), numba (the Numba-fused CPU step even where the native one builds) or reference
    (plain nn.Module + autograd + torch.optim.Adam, the route every fast one is tested
    against)."""

    pqn_rollout: int = 32
    """PQN: vector steps per env collected before each update (the batch is rollout x num_envs
    transitions, used once, with no replay)."""
    pqn_lambda: float = 0.65
    """PQN: lambda of the Q(lambda) targets; 0 gives one-step Q-learning targets, 1 returns
    summed to the episode or rollout end."""
    pqn_epochs: int = 4
    """PQN: passes over each rollout's batch."""
    pqn_minibatches: int = 4
    """PQN: minibatches (gradient steps) per epoch; the batch is shuffled and split evenly."""
    pqn_anneal_lr: bool = False
    """PQN: decay the learning rate linearly from --lr to 0 over total_timesteps (each rollout's
    update uses the rate at the rollout's start), as CleanRL's pqn.py does."""
    policy_hidden: tuple[int, ...] = (64, 64)
    """reinforce: hidden layer sizes of the policy network (tanh), e.g. 64,64; empty ("" or
    none) makes it a linear softmax policy. The value network, when on, has the same sizes."""
    reinforce_episodes: int = 4
    """reinforce: finished episodes per update. The N envs play episodes in parallel; once this
    many have ended (over all envs) one gradient step uses all of them, and the episodes still
    in flight carry on. 4 with 16 envs learned LunarLander fastest of 2, 4 and 16 (1M steps)."""
    reinforce_baseline: str = "value"
    """reinforce: what is subtracted from the returns-to-go G: none (G itself, plain REINFORCE),
    normalize (G standardized over the batch) or value (G - V(s), V a separate network trained
    by mean squared error on G; time-limit truncations then bootstrap from V)."""
    entropy_coef: float = 0.0
    """reinforce: weight of the entropy bonus (loss -= entropy_coef * mean policy entropy)."""

    exploration: str = "egreedy"
    """Exploration: egreedy (epsilon-greedy) or boltzmann (softmax over Q / temperature)."""
    eps_schedule: str = "linear"
    """Epsilon schedule: linear, exponential (per env step) or per_episode (multiplicative)."""
    eps_start: float = 1.0
    """Initial epsilon."""
    eps_end: float = 0.05
    """Final epsilon."""
    eps_decay_steps: int = 50_000
    """linear: env steps to go from start to end; exponential: steps per e-fold of decay."""
    eps_episode_decay: float = 0.995
    """per_episode: epsilon is multiplied by this after every finished episode (down to eps_end)."""
    temperature: float = 1.0
    """Boltzmann exploration temperature (higher is more random)."""

    eval_every: int = 10_000
    """Env steps between greedy evaluations (each also writes checkpoint.pt); 0 disables them."""
    eval_episodes: int = 10
    """Episodes per periodic (screening) evaluation: the same selection seeds every time, so
    best.pt is the policy with the highest mean over them."""
    solve_episodes: int = 100
    """Episodes of the confirming evaluation that declares a run solved (and of the final eval);
    at least eval_episodes, since its first episodes are the screening ones."""
    eval_epsilon: float | None = None
    """Epsilon of the evaluation episodes' epsilon-greedy actions; none: 0.05 for Atari ids
    (Mnih et al. 2015's protocol, and CleanRL's: a greedy policy that never presses FIRE stalls
    Breakout until its 27 000-step limit), 0 (greedy) otherwise. Each episode draws its random
    actions from its own seed, so evaluations stay reproducible."""
    eval_envs: int = 16
    """Environments stepped together during evaluation."""
    checkpoint_every: int = 50_000
    """Env steps between periodic checkpoint.pt writes, besides the one at every evaluation and
    at the end; 0: only at evaluations and the end."""
    save_buffer: bool = False
    """Store the replay buffer (its filled rows) in checkpoint.pt, so --resume continues exactly
    instead of refilling it; the file grows to about the buffer's size."""
    env_timeout: float = 60.0
    """Seconds to wait for an env worker's reply before declaring it hung and killing it;
    0 waits forever (sharded and async vector envs)."""
    actors: int = 0
    """Ape-X (Horgan et al. 2018) on Ray: this many actors, each stepping its own --num-envs
    envs with its own fixed epsilon, feeding prioritized replay (always on) and this process's
    learner; 0: one machine, as usual. Needs pip install -e ".[ray]"."""
    ray_address: str = ""
    """Ape-X: the Ray cluster to join (what `ray start --head` prints, e.g. 10.0.0.1:6379);
    empty: a local Ray started and shut down by fastdqn."""
    weight_sync_every: int = 400
    """Ape-X: learner steps between weight publications; each actor loads the newest weights
    with its next block request."""
    actor_block: int = 32
    """Ape-X: vector steps an actor plays per block it ships (a block holds about
    actor_block x num_envs rows)."""
    actor_epsilon: float = 0.4
    """Ape-X: actor i explores with actor_epsilon ** (1 + actor_alpha * i / (actors - 1))."""
    actor_alpha: float = 7.0
    """Ape-X: the exponent's spread over actors (see actor_epsilon)."""
    actor_restarts: int = 3
    """Ape-X: times Ray restarts each actor whose process or node dies; past actors x this many
    losses the run stops (checkpoint written)."""
    actor_timeout: float = 120.0
    """Ape-X: seconds without a block from any actor before the run stops (checkpoint written):
    the learner never waits forever."""
    log_every: int = 2_000
    """Env steps between TensorBoard scalar writes (the only host syncs of device values)."""
    num_threads: int = 1
    """torch CPU threads for the learner (1 is fastest for DQN-sized nets: measured)."""
    cuda_graphs: bool = True
    """On a CUDA device, replay the MLP's act step and K learner steps as CUDA graphs, and a
    CNN's whole update as one (any module learner's but --learner reference's and a network
    passed from Python); each graph is checked against the eager step on first use. No effect
    elsewhere: the CPU uses its numba-fused step, MPS plain torch ops."""
    progress: bool = True
    """Show the console progress line."""
    resume: bool = False
    """Continue the run in run_dir from its checkpoint.pt."""
    overwrite: bool = False
    """Start afresh in a run_dir that already holds a run (its files are replaced)."""

    def validate(self) -> Config:
        """Reject nonsensical settings before any work starts, with a fix in the message."""
        positive_ints = [
            "num_envs", "total_timesteps", "batch_size", "buffer_size", "train_every",
            "gradient_steps", "target_update_interval", "eval_episodes", "solve_episodes",
            "eval_envs", "log_every",
        ]
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.buffer_size > MAX_BUFFER_SIZE:
            raise ConfigError(f"--buffer-size must be <= {MAX_BUFFER_SIZE:,d}, got {self.buffer_size}")
        for name in ["learning_starts", "eval_every", "checkpoint_every", "num_workers",
                     "eps_decay_steps", "total_episodes"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        _choice("algo", self.algo, ["dqn", "pqn", "reinforce"])
        _choice("reinforce_baseline", self.reinforce_baseline, ["none", "normalize", "value"])
        if self.reinforce_episodes < 1:
            raise ConfigError(f"--reinforce-episodes must be >= 1, got {self.reinforce_episodes}")
        if not 0 <= self.entropy_coef < float("inf"):
            raise ConfigError(f"--entropy-coef must be a number >= 0, got {self.entropy_coef}")
        if not isinstance(self.policy_hidden, (tuple, list)) or not all(
                isinstance(h, int) and not isinstance(h, bool) and h >= 1
                for h in self.policy_hidden):
            raise ConfigError(f"--policy-hidden needs positive layer sizes like 64,64 (or \"\" for "
                              f"a linear policy), got {self.policy_hidden}")
        self._validate_algo_fields()
        self._validate_apex()
        _choice("vector", self.vector, ["sharded", "async", "sync", "envpool"])
        _choice("learner", self.learner, ["auto", "numba", "reference"])
        _choice("frame_replay", self.frame_replay, ["auto", "on", "off"])
        if self.n_step < 1:
            raise ConfigError(f"--n-step must be >= 1, got {self.n_step}")
        if not 0 <= self.per_alpha <= 1:
            raise ConfigError(f"--per-alpha must be in [0, 1], got {self.per_alpha}")
        if not 0 <= self.per_beta <= 1:
            raise ConfigError(f"--per-beta must be in [0, 1], got {self.per_beta}")
        if not self.per_eps > 0:
            raise ConfigError(f"--per-eps must be > 0, got {self.per_eps}")
        _choice("loss", self.loss, ["huber", "mse"])
        _choice("exploration", self.exploration, ["egreedy", "boltzmann"])
        _choice("eps_schedule", self.eps_schedule, ["linear", "exponential", "per_episode"])
        if self.num_threads < 1:
            raise ConfigError(f"--num-threads must be >= 1, got {self.num_threads}")
        self._validate_network()
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"--hidden needs positive layer sizes like 128,128, got {self.hidden}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.eval_every and self.solve_episodes < self.eval_episodes:
            raise ConfigError(
                f"--solve-episodes {self.solve_episodes} is below --eval-episodes "
                f"{self.eval_episodes}; the confirming evaluation extends the screening one, so "
                "raise --solve-episodes or lower --eval-episodes")
        if self.batch_size > self.buffer_size:
            raise ConfigError(
                f"--batch-size {self.batch_size} is larger than --buffer-size {self.buffer_size}; "
                "lower the batch or raise the buffer"
            )
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not self.adam_eps > 0:
            raise ConfigError(f"--adam-eps must be > 0, got {self.adam_eps}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"--gamma must be in (0, 1], got {self.gamma}")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"--tau must be in (0, 1], got {self.tau}")
        for name in ["eps_start", "eps_end"]:
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"--{_flag(name)} must be in [0, 1], got {getattr(self, name)}")
        if self.eps_end > self.eps_start:
            raise ConfigError(
                f"--eps-end {self.eps_end} is above --eps-start {self.eps_start}; swap them"
            )
        if not 0 < self.eps_episode_decay <= 1:
            raise ConfigError(f"--eps-episode-decay must be in (0, 1], got {self.eps_episode_decay}")
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 <= self.env_timeout < float("inf"):
            raise ConfigError(f"--env-timeout must be a number of seconds >= 0 (0 waits forever), "
                              f"got {self.env_timeout}")
        if not self.max_grad_norm >= 0:
            raise ConfigError(f"--max-grad-norm must be >= 0 (0 disables), got {self.max_grad_norm}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pick one")
        dev = self.device
        if not (dev in ("auto", "cpu", "mps", "cuda") or re.fullmatch(r"cuda:(0|[1-9][0-9]*)", dev)):
            raise ConfigError(f"unknown --device {dev!r}; use auto, cpu, cuda, cuda:N or mps")
        return self

    def _validate_algo_fields(self) -> None:
        """A setting that only one algorithm reads is refused under the other when it is set away
        from its default, rather than silently ignored."""
        for name in ["pqn_rollout", "pqn_epochs", "pqn_minibatches"]:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.pqn_lambda <= 1:
            raise ConfigError(f"--pqn-lambda must be in [0, 1], got {self.pqn_lambda}")
        for other, names in ALGO_ONLY.items():
            if other == self.algo or (self.algo == "dqn" and other == "replay"):
                continue
            name = self._changed(names)
            if name:
                owner = "dqn" if other == "replay" else other
                raise ConfigError(f"--{_flag(name)} applies to --algo {owner} only, not "
                                  f"--algo {self.algo}; drop it or pass --algo {owner}")

    def _changed(self, names: list[str]) -> str | None:
        """The first of `names` set away from its default (a flag, a preset, a file), if any:
        what the refusals of settings that do not apply look for."""
        defaults = Config()
        return next((n for n in names if getattr(self, n) != getattr(defaults, n)), None)

    def _validate_apex(self) -> None:
        """--actors replaces the single-machine exploration schedule and vector-env loop; its
        own settings without --actors, and the settings it replaces with it, are refused."""
        from .apex import MAX_ACTORS

        if not 0 <= self.actors <= MAX_ACTORS:
            raise ConfigError(f"--actors must be in 0..{MAX_ACTORS}, got {self.actors}")
        own = self._changed(["ray_address", "weight_sync_every", "actor_block", "actor_epsilon",
                             "actor_alpha", "actor_restarts", "actor_timeout"])
        if not self.actors:
            if own:
                raise ConfigError(f"--{_flag(own)} applies to Ape-X runs only; drop it or pass "
                                  "--actors K")
            return
        for name in ["weight_sync_every", "actor_block"]:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.actor_restarts < 0:
            raise ConfigError(f"--actor-restarts must be >= 0, got {self.actor_restarts}")
        if not 0 < self.actor_timeout < float("inf"):
            raise ConfigError(f"--actor-timeout must be a number of seconds > 0, got "
                              f"{self.actor_timeout}")
        if not 0 <= self.actor_epsilon <= 1:
            raise ConfigError(f"--actor-epsilon must be in [0, 1], got {self.actor_epsilon}")
        if not 0 <= self.actor_alpha < float("inf"):
            raise ConfigError(f"--actor-alpha must be a number >= 0, got {self.actor_alpha}")
        name = self._changed(["eps_schedule", "eps_start", "eps_end", "eps_decay_steps",
                              "eps_episode_decay", "exploration", "temperature"])
        if name:
            raise ConfigError(f"--{_flag(name)} sets one machine's exploration; Ape-X actors each "
                              "keep their own epsilon (--actor-epsilon, --actor-alpha): drop it "
                              "or drop --actors")
        if self.total_episodes:
            raise ConfigError("--total-episodes counts one machine's episodes; with --actors "
                              "budget in --total-timesteps")
        rows = self.actor_block * self.num_envs * self.n_step
        if rows > self.buffer_size:
            raise ConfigError(f"an actor's block (--actor-block {self.actor_block} x --num-envs "
                              f"{self.num_envs}, up to {rows} rows with n-step) exceeds --buffer-size "
                              f"{self.buffer_size}; lower --actor-block or raise --buffer-size")

    def _validate_network(self) -> None:
        _choice("network", self.network, ["auto", "mlp", "cnn", "rbf"])
        _choice("optimizer", self.optimizer, ["adam", "rmsprop"])
        if self.optimizer != "adam" and self.adam_eps != Config.adam_eps:
            raise ConfigError("--adam-eps applies to --optimizer adam (rmsprop's eps is the MinAtar "
                              "paper's 0.01); drop it or pass --optimizer adam")
        _choice("clip_rewards", self.clip_rewards, ["auto", "on", "off"])
        _choice("life_loss_terminal", self.life_loss_terminal, ["auto", "on", "off"])
        eps = self.eval_epsilon
        if eps is not None and not (isinstance(eps, (int, float)) and 0 <= eps <= 1):
            raise ConfigError(f"--eval-epsilon must be in [0, 1] (or none), got {self.eval_epsilon}")
        if self.network == "cnn" and self.hidden != Config.hidden:
            raise ConfigError("--hidden sets the MLP's layers; a CNN's layers are its "
                              "architecture's (see --network); drop --hidden or pass --network mlp")
        if self.network != "rbf":
            name = self._changed(["rbf_features", "rbf_scales", "rbf_fit_steps"])
            if name:
                raise ConfigError(f"--{_flag(name)} applies to --network rbf only; drop it or "
                                  "pass --network rbf")
            return
        from .rbf import MAX_FEATURES, MAX_SCALES

        if self.dueling:
            raise ConfigError("--dueling needs --network mlp (an rbf network's head is one "
                              "linear layer); drop --dueling")
        if not 1 <= self.rbf_features <= MAX_FEATURES:
            raise ConfigError(f"--rbf-features must be in 1..{MAX_FEATURES:,d}, "
                              f"got {self.rbf_features}")
        k = len(self.rbf_scales)
        if not 1 <= k <= MAX_SCALES or not all(0 < g < float("inf") for g in self.rbf_scales):
            raise ConfigError(f"--rbf-scales needs 1 to {MAX_SCALES} positive numbers like "
                              f"5,2,1,0.5, got {','.join(map(str, self.rbf_scales)) or 'none'}")
        if self.rbf_features % k:
            raise ConfigError(f"--rbf-features {self.rbf_features} does not split evenly over "
                              f"the {k} --rbf-scales; use a multiple of {k}, e.g. "
                              f"{max(k, self.rbf_features - self.rbf_features % k)}")
        if self.rbf_fit_steps < 1:
            raise ConfigError(f"--rbf-fit-steps must be >= 1, got {self.rbf_fit_steps}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-friendly values (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["policy_hidden"] = list(self.policy_hidden)
        d["rbf_scales"] = list(self.rbf_scales)
        return d


ALGO_ONLY: dict[str, list[str]] = {
    "replay": ["actors", "n_step", "prioritized", "dueling", "learner", "exploration", "save_buffer",
               "network", "rbf_features", "rbf_scales", "rbf_fit_steps", "frame_replay",
               "optimizer", "clip_rewards", "life_loss_terminal"],
    "pqn": ["pqn_rollout", "pqn_lambda", "pqn_epochs", "pqn_minibatches", "pqn_anneal_lr"],
    "reinforce": ["policy_hidden", "reinforce_episodes", "reinforce_baseline", "entropy_coef"],
}
"""Settings only one algorithm reads ("replay": DQN's), refused under another when set away from
their defaults, rather than silently ignored."""


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _choice(name: str, value: str, options: list[str]) -> None:
    if value not in options:
        raise ConfigError(f"--{_flag(name)} must be one of {', '.join(options)}, got {value!r}")


@cache
def field_docs() -> dict[str, str]:
    """Field name -> docstring, read from this module's source (the help text of each flag)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Config)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
            docs[node.target.id] = str(nxt.value.value)
    return docs


def field_names() -> list[str]:
    return [f.name for f in fields(Config)]


def coerce(name: str, value: Any) -> Any:
    """Turn a TOML or CLI value into the field's type, or raise ConfigError naming the field."""
    kind = {f.name: f for f in fields(Config)}[name]
    default = kind.default
    try:
        if name in ("hidden", "policy_hidden"):
            if isinstance(value, str):
                text = "" if value.strip().lower() == "none" else value
                value = [v for v in text.replace(" ", ",").split(",") if v]
            if isinstance(value, int):
                value = [value]
            return tuple(int(v) for v in value)
        if name == "rbf_scales":
            if isinstance(value, str):
                value = [v for v in value.replace(" ", ",").split(",") if v]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            if any(isinstance(v, bool) for v in value):
                raise ValueError
            return tuple(float(v) for v in value)
        if name in ("target_return", "eval_epsilon"):
            if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
                return None
            if name == "eval_epsilon" and isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str):
                value = float(value) if any(c in value for c in ".eE") else int(value)
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"--{_flag(name)}: cannot use {value!r} (expected {_type_word(name)})")


def _type_word(name: str) -> str:
    if name in ("hidden", "policy_hidden"):
        return "layer sizes like 128,128"
    if name == "rbf_scales":
        return "numbers like 5,2,1,0.5"
    if name in ("target_return", "eval_epsilon"):
        return "a number or none"
    default = {f.name: f.default for f in fields(Config)}[name]
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}[type(default)]


def preset_names() -> list[str]:
    """Names of the presets shipped in fastdqn/presets/."""
    folder = resources.files("fastdqn") / "presets"
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


RENAMED_PRESETS = {
    "pytorch-tutorial": ("lunarlander-notebook", "it is the LunarLander notebooks' configuration, "
                         "not PyTorch's DQN tutorial itself"),
}
"""Old preset names and what they became: a renamed preset is named, never silently missing."""


def load_toml(name_or_path: str) -> dict[str, Any]:
    """Settings from a shipped preset name or a TOML file path, validated key by key."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {name_or_path} does not exist; check the path")
        text = path.read_text(encoding="utf-8")
        where = str(path)
    else:
        names = preset_names()
        if name_or_path in RENAMED_PRESETS:
            new, why = RENAMED_PRESETS[name_or_path]
            raise ConfigError(f"preset {name_or_path!r} is now {new!r} ({why}); use --config {new}")
        if name_or_path not in names:
            close = difflib.get_close_matches(name_or_path, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown preset {name_or_path!r}; {hint}presets: {', '.join(names)}"
            )
        text = (resources.files("fastdqn") / "presets" / f"{name_or_path}.toml").read_text(
            encoding="utf-8"
        )
        where = f"preset {name_or_path}"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where} is not valid TOML ({e}); fix the file") from None
    unknown = [k for k in raw if k.replace("-", "_") not in field_names()]
    if unknown:
        raise ConfigError(
            f"{where} has unknown keys: {', '.join(sorted(unknown))}; "
            "see `fastdqn train --help` for the settings"
        )
    return {k.replace("-", "_"): coerce(k.replace("-", "_"), v) for k, v in raw.items()}


ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "pqn": {"lr": 1e-3, "loss": "mse", "eps_decay_steps": 25_000},
    "reinforce": {"lr": 1e-3},
}
"""Per-algorithm defaults of shared settings, where an algorithm's own best values differ from
the dataclass defaults (which are DQN's). `make_config` applies them to the settings the user
left unset; the CLI help shows them next to each default. PQN's: MSE as in the paper and
CleanRL's pqn.py; lr 1e-3 with 16 envs solved CartPole in 20k-90k steps over 3 seeds where
CleanRL's 2.5e-4 (with 32 envs) took 280k; epsilon decays over 25k steps (measured, the PQN
section of bench/README.md)."""


def make_config(config_file: str | None = None, **overrides: Any) -> Config:
    """Defaults, then the chosen algorithm's defaults (`ALGO_DEFAULTS`) for what is left unset,
    then a preset or TOML file, then explicit overrides; validated.

    A Config built directly (`Config(algo="pqn")`) has the dataclass defaults only: build it
    with make_config, or pass settings to `train(...)`, to get an algorithm's own defaults.
    """
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_toml(config_file))
    for k, v in overrides.items():
        if k not in field_names():
            close = difflib.get_close_matches(k, field_names(), n=1)
            hint = f"; did you mean {close[0]!r}" if close else ""
            raise ConfigError(f"unknown setting {k!r}{hint}")
        values[k] = coerce(k, v)
    algo = values.get("algo", Config.algo)
    for k, v in ALGO_DEFAULTS.get(algo, {}).items():
        values.setdefault(k, coerce(k, v))
    return Config(**values).validate()
