"""Every training setting in one dataclass; CLI flags and TOML presets are generated from it.

Each field's docstring is its help text: `field_docs()` reads them from the source, so the
documentation, the CLI and the validator cannot drift apart. Each field's tags (`_reads`) say
which algorithms, network kinds and conditions read it and which algorithms default it
otherwise: the refusals of unread settings, the help's marks and `ALGO_DEFAULTS` all derive from
them.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any, NamedTuple

from fastdqn.config.choices import ALGOS
from fastdqn.config.coerce import check_alone, coerce_as, flag_name, show_value
from fastdqn.config.limits import (
    MAX_ACTORS,
    MAX_ATOMS,
    MAX_EPISODE_SEED,
    MAX_FEATURES,
    MAX_POPULATION,
    MAX_SCALES,
    MAX_SEED,
)
from fastdqn.errors import ConfigError


def _reads(default: Any, *, algos: tuple[str, ...] = ALGOS, networks: tuple[str, ...] | None = None,
           when: tuple[str, ...] = (), algo_defaults: dict[str, Any] | None = None) -> Any:
    """A field's default plus its row of the one table of what reads it: `algos`, the
    algorithms whose code reads it (tests/test_config.py checks each against the modules);
    `networks`, for a setting of the network's shape, the network kinds that read it; `when`,
    the `CONDITIONS` it is read under; `algo_defaults`, the algorithms whose own default it is
    left at when unset (`ALGO_DEFAULTS`), each one that reads it. A setting away from its
    default where nothing reads it is refused (`Config.validate`), never silently ignored."""
    own = dict(algo_defaults or {})
    if not set(own) <= set(algos):
        raise ValueError(f"a default for {sorted(set(own) - set(algos))}, which do not read the field")
    return field(default=default, metadata={"algos": algos, "networks": networks, "when": when,
                                            "algo_defaults": own})


@dataclass
class Config:
    """Settings of one training run."""

    algo: str = "dqn"
    """Algorithm: dqn (deep Q-network with replay; double, dueling, n-step, prioritized), pqn
    (parallel Q-learning, Gallici et al. 2024: many envs, no replay, no target network, LayerNorm,
    Q(lambda) targets) or reinforce (Monte-Carlo policy gradient on whole episodes). A setting you
    leave unset takes the algorithm's own default where it has one (shown as "pqn: ..." or
    "reinforce: ..." in the help); what you set, in a flag or a TOML file, always wins. A
    setting the chosen algorithm does not read is refused (the help marks them [--algo ...
    only]); reinforce reads the "reinforce:" fields plus lr, adam_eps, gamma, max_grad_norm and
    the run's own (envs, budget, seed, device, evaluation, checkpoints, logging)."""
    env_id: str = "LunarLander-v3"
    """gymnasium environment id (Discrete actions, Box observations)."""
    num_envs: int = 16
    """Number of environments stepped in parallel."""
    vector: str = "auto"
    """Vector env: sharded (worker processes each stepping a shard of the envs), async
    (gymnasium AsyncVectorEnv, one process per env), sync (in-process, no overlap) or envpool
    (EnvPool's C++ envs for the ids it has, e.g. LunarLander-v3 and Atari; pip install -e
    ".[envpool]"). envpool seeds each env once per run, not each episode, and a resumed run
    starts fresh episodes; evaluations always play gymnasium's env. auto: envpool where it is
    installed and was measured faster for the env id (LunarLander-v3), else sharded; the run's
    config records the choice."""
    num_workers: int = _reads(0, when=("workers",))
    """sharded: env worker processes; envpool: EnvPool threads; 0 means one per CPU core beyond
    the learner's."""
    total_timesteps: int = 500_000
    """Env transitions to train for (summed over all envs)."""
    total_episodes: int = 0
    """Also stop once this many training episodes have ended (0: no limit); with one env it
    stops exactly there, with N envs within the vector step that ends it."""
    seed: int = 1
    """Seed of envs, network init, sampling and exploration, in 0..4294967295 (32 bits); same
    seed on CPU gives the same run."""
    seeds: str = _reads("", algos=("dqn",))
    """A population: train one independent agent per seed, all in this process, e.g. 1-8 or
    3,5,9 (empty: the one agent of --seed). Agent K is the run --seed K would be (its envs,
    weights, replay, exploration and evaluations drawn from seed K's streams), written to
    RUN/seed-K/; RUN/population.json and population.png sum them up across seeds. The agents'
    N x --num-envs envs step as one vector env and their learner steps run in one loop."""
    device: str = "auto"
    """Training device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."""
    run_dir: str = ""
    """Run directory (TensorBoard events, checkpoints, summary); empty: runs/<env>__<seed>__<time>."""
    target_return: float | None = None
    """Stop when the greedy eval mean reaches this; none: the env spec's reward_threshold. A
    finite number, like every float setting (to train the whole budget, give one above any
    return, e.g. 1e9)."""

    network: str = _reads("auto", algos=("dqn",), networks=("mlp", "cnn", "rbf"))
    """Q-network: auto (cnn for image observations, a Box of rank 3 with dtype uint8 or bool;
    mlp otherwise), mlp (--hidden layers, ReLU; --dueling), cnn (convolutions picked by the
    image size: the Nature DQN CNN, 3 convolutions and fc 512, for sides >= 36 such as Atari's
    84x84; MinAtar's, one 3x3 convolution and fc 128, for sides 3 to 35 such as MinAtar's
    10x10; channels-last images are permuted inside; --dueling; trained on the reference
    route, the fused learner being MLP-only) or rbf (linear Q on fixed random Fourier features
    of the standardized observation, --rbf-features over --rbf-scales; the features are
    computed as observations arrive and the replay rows hold them, so the fused learner trains
    the linear head; --learner reference trains the whole module instead)."""
    hidden: tuple[int, ...] = _reads((128, 128), algos=("dqn", "pqn"), networks=("mlp",))
    """Hidden layer sizes of the Q-network's MLP, e.g. 256,256: dqn's (ReLU; --network mlp only,
    a CNN's layers being its architecture's) and pqn's (each layer LayerNorm then ReLU).
    reinforce sizes its networks with --policy-hidden."""
    rbf_features: int = _reads(400, algos=("dqn",), networks=("rbf",))
    """--network rbf: random Fourier features in all, split evenly over --rbf-scales."""
    rbf_scales: tuple[float, ...] = _reads((5.0, 2.0, 1.0, 0.5), algos=("dqn",), networks=("rbf",))
    """--network rbf: the RBF kernel widths gamma, exp(-gamma |z - z'|^2) on the standardized
    observation z, one block of features each (scikit-learn's examples use 5,2,1,0.5)."""
    rbf_fit_steps: int = _reads(5_000, algos=("dqn",), networks=("rbf",))
    """--network rbf: steps of uniformly random play whose observations fit the standardization
    (mean, std per value) before training; it is saved in the checkpoint."""
    lr: float = _reads(6.3e-4, algo_defaults={"pqn": 1e-3, "reinforce": 1e-3})
    """Learning rate (of Adam; PQN's RAdam; RMSprop with --optimizer rmsprop)."""
    adam_eps: float = _reads(1e-8, when=("adam",))
    """Adam's epsilon (PQN's RAdam's too)."""
    optimizer: str = _reads("adam", algos=("dqn",))
    """dqn: adam, or rmsprop as the MinAtar paper's code sets it (Young & Tian 2019, MinAtar's
    examples/dqn.py: torch RMSprop, squared-gradient decay alpha 0.95, centered, eps 0.01, no
    momentum). RMSprop trains on the reference route (the fused learner's step is Adam's)."""
    gamma: float = 0.99
    """Discount factor."""
    loss: str = _reads("huber", algos=("dqn", "pqn"), when=("scalar",), algo_defaults={"pqn": "mse"})
    """TD loss: huber (smooth L1, delta 1) or mse."""
    clip_rewards: str = _reads("auto", algos=("dqn",))
    """dqn: clip the rewards stored for training to their sign, -1, 0 or 1 (Mnih et al. 2015):
    auto (on for Atari ids, ALE/... and ...NoFrameskip-v4), on or off. Episode returns,
    evaluations and summary.json stay in raw game score."""
    life_loss_terminal: str = _reads("auto", algos=("dqn",))
    """dqn: store a step that lost a life (the env's info["life_loss"]) as terminal for the TD
    target, while the game goes on: auto (on for Atari ids), on (the env must report life
    loss) or off. Episodes, evaluations and summary.json still end at game over."""
    double_dqn: bool = _reads(True, algos=("dqn",))
    """Double DQN: the online net picks the next action, the target net values it."""
    max_grad_norm: float = 10.0
    """Clip the global gradient norm to this; 0 disables clipping (reinforce: the policy's and
    the value network's norms are clipped separately)."""
    batch_size: int = _reads(128, algos=("dqn",))
    """Transitions per gradient step."""
    buffer_size: int = _reads(10_000, algos=("dqn",))
    """Replay capacity in transitions (a ring: the oldest are overwritten). 10k (CleanRL's
    default too) solved LunarLander in 27 s median against 31 s for 100k (bench/README.md)."""
    learning_starts: int = _reads(1_000, algos=("dqn",))
    """Transitions collected before the first gradient step; raised to batch_size if smaller
    (a step needs one batch in the buffer)."""
    train_every: int = _reads(4, algos=("dqn",))
    """Env transitions per round of `gradient_steps` updates (summed over envs)."""
    gradient_steps: int = _reads(1, algos=("dqn",))
    """Gradient steps per `train_every` env transitions."""
    tau: float = _reads(0.005, algos=("dqn",))
    """Target update weight: target <- tau*online + (1-tau)*target; 1 is a hard copy."""
    target_update_interval: int = _reads(1, algos=("dqn",))
    """Learner steps between target updates (use tau=1 and e.g. 250 for hard updates)."""

    n_step: int = _reads(1, algos=("dqn",))
    """n-step returns: each stored transition sums up to n rewards of one env's episode and
    bootstraps with gamma^k from the state k <= n steps later (never across an episode end)."""
    prioritized: bool = _reads(False, algos=("dqn",))
    """Proportional prioritized replay (Schaul et al. 2016): rows drawn with probability
    p^alpha / sum p^alpha, p = |TD error| + per_eps, corrected by importance weights."""
    per_alpha: float = _reads(0.6, algos=("dqn",), when=("prioritized",))
    """Prioritized replay: how strongly priorities skew sampling (0 = uniform)."""
    per_beta: float = _reads(0.4, algos=("dqn",), when=("prioritized",))
    """Prioritized replay: importance-weight exponent at the start, annealed linearly to 1 over
    total_timesteps."""
    per_eps: float = _reads(1e-6, algos=("dqn",), when=("prioritized",))
    """Prioritized replay: added to |TD error| so that no row's priority is zero."""
    frame_replay: str = _reads("auto", algos=("dqn",))
    """Replay for stacked frames: each frame is stored once and the stacks are rebuilt when
    sampled (1M Atari transitions take about 7 GB instead of 56). auto: on for observations that
    are a small stack of uint8 frames (rank 3, uint8, first axis <= 16: FrameStackObservation's
    [4, 84, 84] for Atari); on: for any observation of rank >= 2, stacked on its first axis;
    off: one row of obs and next_obs per transition. With it the MLP trains on the reference
    route (the fused CPU route reads a row buffer in place)."""
    dueling: bool = _reads(False, algos=("dqn",), networks=("mlp", "cnn"))
    """Dueling head (Wang et al. 2016): Q = V + A - mean(A) from one last hidden layer (the
    MLP's, or a CNN's fc layer; not --network rbf)."""
    distributional: str = _reads("none", algos=("dqn",), networks=("mlp", "cnn"))
    """Value head: none (one Q per action), c51 (Bellemare et al. 2017: --atoms probabilities on a
    fixed support --v-min..--v-max, the projected n-step target, cross-entropy) or qr (Dabney et
    al. 2018: --atoms quantiles, the quantile Huber loss, kappa 1). Q is the distribution's mean
    everywhere (acting, double-DQN selection, evaluation, `fastdqn eval`). Trains on the
    reference route."""
    atoms: int = _reads(0, algos=("dqn",), when=("distributional",))
    """--distributional: atoms per action (0: the head's own, 51 for c51 as its paper, 200 for
    qr as its paper)."""
    v_min: float | None = _reads(None, algos=("dqn",), when=("c51",))
    """--distributional c51: the support's lowest value. Unset, each end is chosen from the env:
    +-10 where rewards are sign-clipped (Atari's, Rainbow's value), else +-mean|r| / (1 - gamma)
    of 1000 steps of random play (CartPole +-100, LunarLander +-300 to +-340 by seed); the checkpoint
    holds the support used."""
    v_max: float | None = _reads(None, algos=("dqn",), when=("c51",))
    """--distributional c51: the support's highest value (unset: chosen as --v-min says)."""
    noisy: bool = _reads(False, algos=("dqn",), networks=("mlp", "cnn"))
    """Noisy nets (Fortunato et al. 2018): the last two linear layers (the output and the hidden
    or fc layer feeding it) become factorized Gaussian NoisyLinear layers, sigma0 0.5, a fresh
    noise sample for each row of every forward pass; epsilon then defaults to 0 (set --eps-start
    / --eps-end to add it). Evaluation plays the mean weights."""
    learner: str = _reads("auto", algos=("dqn",))
    """Learner route: auto (the fastest route that supports the network and options: on the CPU
    the native step of csrc/, built once per machine, else the Numba-fused one; CUDA graphs on
    CUDA), numba (the Numba-fused CPU step even where the native one builds) or reference
    (plain nn.Module + autograd + torch.optim.Adam, the route every fast one is tested
    against)."""

    pqn_rollout: int = _reads(32, algos=("pqn",))
    """PQN: vector steps per env collected before each update (the batch is rollout x num_envs
    transitions, used once, with no replay)."""
    pqn_lambda: float = _reads(0.65, algos=("pqn",))
    """PQN: lambda of the Q(lambda) targets; 0 gives one-step Q-learning targets, 1 returns
    summed to the episode or rollout end."""
    pqn_epochs: int = _reads(4, algos=("pqn",))
    """PQN: passes over each rollout's batch."""
    pqn_minibatches: int = _reads(4, algos=("pqn",))
    """PQN: minibatches (gradient steps) per epoch; the batch is shuffled and split evenly."""
    pqn_anneal_lr: bool = _reads(False, algos=("pqn",))
    """PQN: decay the learning rate linearly from --lr to 0 over total_timesteps (each rollout's
    update uses the rate at the rollout's start), as CleanRL's pqn.py does."""
    policy_hidden: tuple[int, ...] = _reads((64, 64), algos=("reinforce",))
    """reinforce: hidden layer sizes of the policy network (tanh), e.g. 64,64; empty ("" or
    none) makes it a linear softmax policy. The value network, when on, has the same sizes."""
    reinforce_episodes: int = _reads(4, algos=("reinforce",))
    """reinforce: finished episodes per update. The N envs play episodes in parallel; once this
    many have ended (over all envs) one gradient step uses all of them, and the episodes still
    in flight carry on. 4 with 16 envs learned LunarLander fastest of 2, 4 and 16 (1M steps)."""
    reinforce_baseline: str = _reads("value", algos=("reinforce",))
    """reinforce: what is subtracted from the returns-to-go G: none (G itself, plain REINFORCE),
    normalize (G standardized over the batch) or value (G - V(s), V a separate network trained
    by mean squared error on G; time-limit truncations then bootstrap from V)."""
    entropy_coef: float = _reads(0.0, algos=("reinforce",))
    """reinforce: weight of the entropy bonus (loss -= entropy_coef * mean policy entropy)."""

    exploration: str = _reads("egreedy", algos=("dqn",), when=("one_machine",))
    """Exploration: egreedy (epsilon-greedy) or boltzmann (softmax over Q / temperature)."""
    eps_schedule: str = _reads("linear", algos=("dqn", "pqn"), when=("one_machine", "egreedy"))
    """Epsilon schedule: linear, exponential (per env step) or per_episode (multiplicative)."""
    eps_start: float = _reads(1.0, algos=("dqn", "pqn"), when=("one_machine", "egreedy"))
    """Initial epsilon."""
    eps_end: float = _reads(0.05, algos=("dqn", "pqn"), when=("one_machine", "egreedy"))
    """Final epsilon."""
    eps_decay_steps: int = _reads(50_000, algos=("dqn", "pqn"),
                                  when=("one_machine", "egreedy", "step_decay"),
                                  algo_defaults={"pqn": 25_000})
    """linear: env steps to go from start to end; exponential: steps per e-fold of decay."""
    eps_episode_decay: float = _reads(0.995,
                                      algos=("dqn", "pqn"), when=("one_machine", "egreedy", "episode_decay"))
    """per_episode: epsilon is multiplied by this after every finished episode (down to eps_end)."""
    temperature: float = _reads(1.0, algos=("dqn",), when=("one_machine", "boltzmann"))
    """Boltzmann exploration temperature (higher is more random)."""

    eval_every: int = 10_000
    """Env steps between greedy screening evaluations of a snapshot of the policy; 0 disables
    them. On the CPU a screen plays on a worker process while training goes on, and its result
    counts once training has played as many env steps as the screen did (or at the next screen
    at the latest): the trainer waits only when the screen falls behind that pace. A screen that
    reaches the target is confirmed at once, its episodes split across the cores. When a
    result counts, checkpoint.pt is written, and best.pt (the snapshot) when it is the best."""
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
    actions from its own generator (a child of the run seed keyed by the episode, never the env's
    reset randomness), so evaluations stay reproducible."""
    eval_envs: int = 16
    """Environments stepped together during evaluation."""
    checkpoint_every: int = 50_000
    """Env steps between periodic checkpoint.pt writes, besides the one at every evaluation and
    at the end; 0: only at evaluations and the end."""
    save_buffer: bool = _reads(False, algos=("dqn",))
    """Store the replay buffer (its filled rows) in checkpoint.pt, so --resume continues exactly
    instead of refilling it; the file grows to about the buffer's size."""
    env_timeout: float = _reads(60.0, when=("worker_replies",))
    """Seconds to wait for an env worker's reply before declaring it hung and killing it;
    0 waits forever (sharded and async vector envs)."""
    actors: int = _reads(0, algos=("dqn",))
    """Ape-X (Horgan et al. 2018) on Ray: this many actors, each stepping its own --num-envs
    envs with its own fixed epsilon, feeding prioritized replay (always on) and this process's
    learner; 0: one machine, as usual. Needs pip install -e ".[ray]"."""
    ray_address: str = _reads("", algos=("dqn",), when=("apex",))
    """Ape-X: the Ray cluster to join (what `ray start --head` prints, e.g. 10.0.0.1:6379);
    empty: a local Ray started and shut down by fastdqn."""
    weight_sync_every: int = _reads(400, algos=("dqn",), when=("apex",))
    """Ape-X: learner steps between weight publications; each actor loads the newest weights
    with its next block request."""
    actor_block: int = _reads(32, algos=("dqn",), when=("apex",))
    """Ape-X: vector steps an actor plays per block it ships (a block holds about
    actor_block x num_envs rows)."""
    actor_epsilon: float = _reads(0.4, algos=("dqn",), when=("apex",))
    """Ape-X: actor i explores with actor_epsilon ** (1 + actor_alpha * i / (actors - 1))."""
    actor_alpha: float = _reads(7.0, algos=("dqn",), when=("apex",))
    """Ape-X: the exponent's spread over actors (see actor_epsilon)."""
    actor_restarts: int = _reads(3, algos=("dqn",), when=("apex",))
    """Ape-X: times Ray restarts each actor whose process or node dies; past actors x this many
    losses the run stops (checkpoint written)."""
    actor_timeout: float = _reads(120.0, algos=("dqn",), when=("apex",))
    """Ape-X: seconds without a block from any actor before the run stops (checkpoint written):
    the learner never waits forever."""
    log_every: int = 2_000
    """Env steps between TensorBoard scalar writes (the only host syncs of device values)."""
    num_threads: int = 1
    """torch CPU threads for the learner (1 is fastest for DQN-sized nets: measured)."""
    cuda_graphs: bool = _reads(True, algos=("dqn",))
    """On a CUDA device, replay the MLP's act step and K learner steps as CUDA graphs, and a
    CNN's whole update as one (any module learner's but --learner reference's and a network
    passed from Python); each graph is checked against the eager step on first use. No effect
    elsewhere: the CPU uses its native or Numba-fused step, MPS plain torch ops."""
    progress: bool = True
    """Show the console progress line."""
    wandb: str = ""
    """Weights & Biases project to send the run's TensorBoard scalars, config and summary to
    (pip install "fastdqn[wandb]"; WANDB_MODE=offline keeps them under the run dir for `wandb
    sync`); empty: TensorBoard only. A --seeds population logs one wandb run per agent, grouped."""
    wandb_group: str = _reads("", when=("wandb",))
    """The wandb group of the run (a population's agents are grouped by its run dir's name)."""
    resume: bool = False
    """Continue the run in run_dir from its checkpoint.pt, with its settings (flags and --config
    override them), except where the run connects: --actors and --ray-address come from the
    command line or --config only (unset, the resumed run is local, with no actors); a file's
    process, env, thread and episode counts beyond this machine's limits must be passed again."""
    overwrite: bool = False
    """Start afresh in a run_dir that already holds a run (its files are replaced)."""


    def validate(self) -> Config:
        """Reject nonsensical settings before any work starts, with a fix in the message.

        Each value is first coerced to its field's type (`coerce_as`, the one path that TOML,
        flags, `train(...)` keywords and a Config built in Python all take, so `True` is no
        count and `[1.9]` no layer size anywhere) and checked on its own (`check_alone`); then
        the settings are checked together, a concern a step, in this order: the first refusal
        is the one reported."""
        for step in (self._coerce_each, self._validate_algo_values, self._refuse_unread,
                     self._validate_apex, self._validate_prioritized, self._validate_network,
                     self._validate_head,
                     self._validate_evaluation, self._validate_learning,
                     self._validate_exploration, self._validate_run):
            step()
        return self

    def _coerce_each(self) -> None:
        """Every field as its type, within the bounds it has on its own."""
        for f in fields(self):
            value = coerce_as(str(f.type), f.name, getattr(self, f.name))
            check_alone(f.name, value)
            setattr(self, f.name, value)

    def _validate_algo_values(self) -> None:
        """reinforce's and PQN's own bounds, and PQN's minibatches within a rollout."""
        if not 0 <= self.entropy_coef < float("inf"):
            raise ConfigError(f"--entropy-coef must be a number >= 0, got {self.entropy_coef}")
        for name in ["pqn_rollout", "pqn_epochs", "pqn_minibatches"]:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{flag_name(name)} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.pqn_lambda <= 1:
            raise ConfigError(f"--pqn-lambda must be in [0, 1], got {self.pqn_lambda}")
        batch = self.pqn_rollout * self.num_envs
        if self.algo == "pqn" and self.pqn_minibatches > batch:  # else some would be empty
            raise ConfigError(f"--pqn-minibatches {self.pqn_minibatches} is more than the "
                              f"{batch} transitions of a rollout (--pqn-rollout "
                              f"{self.pqn_rollout} x --num-envs {self.num_envs}); lower it or "
                              "raise those")

    def _refuse_unread(self) -> None:
        """A setting that the chosen algorithm does not read, or reads only under conditions
        that do not hold, is refused when set away from its default, rather than silently
        ignored: both come from the fields' tags (`_reads`), the one table of what reads what."""
        for f in fields(self):
            if self.algo not in f.metadata.get("algos", ALGOS) and self.is_set(f.name):
                owners = [a for a in ALGOS if a in f.metadata["algos"]]
                raise ConfigError(f"--{flag_name(f.name)} applies to --algo {' or '.join(owners)} "
                                  f"only, not --algo {self.algo}; drop it or pass --algo "
                                  f"{owners[0]}")
        for f in fields(self):
            for when in f.metadata.get("when", ()):
                if not CONDITIONS[when].holds(self) and self.is_set(f.name):
                    raise ConfigError(f"--{flag_name(f.name)} {CONDITIONS[when].refusal}")

    def is_set(self, name: str) -> bool:
        """Whether setting `name` is away from the value it has when left unset: the dataclass
        default, or this algorithm's own (`ALGO_DEFAULTS`). What the refusals of settings that
        nothing reads look for (a flag, a preset or a file set it)."""
        value = getattr(self, name)
        own = ALGO_DEFAULTS.get(self.algo, {})
        return value != getattr(Config, name) and (name not in own or value != own[name])

    def check_network(self, kind: str, why: str = "") -> None:
        """Refuse a setting of the network's shape, set away from its default, that the network
        training does not read (the fields' `networks` tags). `kind` is mlp, cnn or rbf, or
        "custom" for a `q_network` of your own; auto, before the env is known, refuses only
        what neither kind auto picks (mlp, cnn) reads. `why` says how the kind was chosen."""
        for f in fields(self):
            kinds = f.metadata.get("networks")
            if kinds is None or not self.is_set(f.name):
                continue
            if kind in kinds or (kind == "auto" and {"mlp", "cnn"} & set(kinds)):
                continue
            flag = f"--{flag_name(f.name)}"
            if kind == "custom":
                raise ConfigError(f"q_network is a network of your own, {flag} "
                                  f"{show_value(getattr(self, f.name))} sets fastdqn's own network, "
                                  "which yours replaces; pass one of them")
            raise ConfigError(f"{flag} applies to --network {' or '.join(kinds)} only{why}; "
                              f"drop {flag} or pass --network {kinds[0]}")

    def _validate_apex(self) -> None:
        """--actors' own bounds. It replaces the single-machine exploration schedule and
        vector-env loop: its own settings without --actors, and the settings it replaces with
        it, are refused by their `when` tags ("apex", "one_machine")."""
        if not 0 <= self.actors <= MAX_ACTORS:
            raise ConfigError(f"--actors must be in 0..{MAX_ACTORS}, got {self.actors}")
        if not self.actors:
            return
        for name in ["weight_sync_every", "actor_block"]:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{flag_name(name)} must be >= 1, got {getattr(self, name)}")
        if self.actor_restarts < 0:
            raise ConfigError(f"--actor-restarts must be >= 0, got {self.actor_restarts}")
        if not 0 < self.actor_timeout < float("inf"):
            raise ConfigError(f"--actor-timeout must be a number of seconds > 0, got "
                              f"{self.actor_timeout}")
        if not 0 <= self.actor_epsilon <= 1:
            raise ConfigError(f"--actor-epsilon must be in [0, 1], got {self.actor_epsilon}")
        if not 0 <= self.actor_alpha < float("inf"):
            raise ConfigError(f"--actor-alpha must be a number >= 0, got {self.actor_alpha}")
        if self.total_episodes:
            raise ConfigError("--total-episodes counts one machine's episodes; with --actors "
                              "budget in --total-timesteps")
        rows = self.actor_block * self.num_envs * self.n_step
        if rows > self.buffer_size:
            raise ConfigError(f"an actor's block (--actor-block {self.actor_block} x --num-envs "
                              f"{self.num_envs}, up to {rows} rows with n-step) exceeds --buffer-size "
                              f"{self.buffer_size}; lower --actor-block or raise --buffer-size")

    def _validate_prioritized(self) -> None:
        """Prioritized replay's exponents and floor."""
        if not 0 <= self.per_alpha <= 1:
            raise ConfigError(f"--per-alpha must be in [0, 1], got {self.per_alpha}")
        if not 0 <= self.per_beta <= 1:
            raise ConfigError(f"--per-beta must be in [0, 1], got {self.per_beta}")
        if not self.per_eps > 0:
            raise ConfigError(f"--per-eps must be > 0, got {self.per_eps}")

    def _validate_network(self) -> None:
        """--network rbf's sizes; then what the named network (or, for auto, either kind it may
        pick) does not read is refused. The trainer checks again once auto has picked."""
        if self.network == "rbf":
            self._validate_rbf()
        if self.algo == "dqn":
            self.check_network(self.network, "" if self.network == "auto"
                               else f", not --network {self.network}")

    def _validate_head(self) -> None:
        """The distributional head's atoms and support, and noisy nets beside Ape-X's actors."""
        if self.atoms and not 2 <= self.atoms <= MAX_ATOMS:
            raise ConfigError(f"--atoms must be in 2..{MAX_ATOMS} (0: the head's own), got {self.atoms}")
        if self.v_min is not None and self.v_max is not None and not self.v_min < self.v_max:
            fix = "swap them" if self.v_min > self.v_max else "the support needs two ends"
            raise ConfigError(f"--v-min {self.v_min} must be below --v-max {self.v_max}; {fix}")
        if self.noisy and self.actors:
            raise ConfigError("--noisy with --actors: Ape-X actors explore by their own fixed "
                              "epsilons (--actor-epsilon); drop --noisy or --actors")

    def _validate_rbf(self) -> None:
        """--network rbf's own sizes, and no dueling head on its one linear layer."""
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

    def _validate_evaluation(self) -> None:
        """The confirming evaluation extends the screening one, so it is at least as long."""
        if self.eval_every and self.solve_episodes < self.eval_episodes:
            raise ConfigError(
                f"--solve-episodes {self.solve_episodes} is below --eval-episodes "
                f"{self.eval_episodes}; the confirming evaluation extends the screening one, so "
                "raise --solve-episodes or lower --eval-episodes")

    def _validate_learning(self) -> None:
        """A batch the buffer can hold, and the optimizer's and the TD target's numbers."""
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

    def _validate_exploration(self) -> None:
        """Epsilons in [0, 1] that decay downwards, and a positive Boltzmann temperature."""
        for name in ["eps_start", "eps_end"]:
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"--{flag_name(name)} must be in [0, 1], got {getattr(self, name)}")
        if self.eps_end > self.eps_start:
            raise ConfigError(
                f"--eps-end {self.eps_end} is above --eps-start {self.eps_start}; swap them"
            )
        if not 0 < self.eps_episode_decay <= 1:
            raise ConfigError(f"--eps-episode-decay must be in (0, 1], got {self.eps_episode_decay}")
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be > 0, got {self.temperature}")

    def _validate_run(self) -> None:
        """The env workers' timeout, gradient clipping, and what to do with an existing run."""
        if not 0 <= self.env_timeout < float("inf"):
            raise ConfigError(f"--env-timeout must be a number of seconds >= 0 (0 waits forever), "
                              f"got {self.env_timeout}")
        if not self.max_grad_norm >= 0:
            raise ConfigError(f"--max-grad-norm must be >= 0 (0 disables), got {self.max_grad_norm}")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pick one")
        self.population()

    def population(self) -> list[int]:
        """The run seeds of --seeds, in the order given ([] without --seeds); a one-line error
        for text that is not a list of seeds and ranges, a repeated seed or too many agents."""
        seeds = parse_seeds(self.seeds, self.vector)
        if seeds and self.actors:
            raise ConfigError("--seeds with --actors: Ape-X spreads one agent over Ray actors, a "
                              "population trains many agents in one process; drop one of them")
        return seeds

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-friendly values (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["policy_hidden"] = list(self.policy_hidden)
        d["rbf_scales"] = list(self.rbf_scales)
        return d


def parse_seeds(text: str, vector: str = "sharded") -> list[int]:
    """`--seeds` text (`1-8`, `3,5,9`, `1-4,10`) as a list of run seeds."""
    if not text.strip():
        return []
    seeds: list[int] = []
    example = "e.g. --seeds 1-8 or --seeds 3,5,9"
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi if dash else lo)
        except ValueError:
            raise ConfigError(f"--seeds takes seeds and ranges of seeds, {example}; got "
                              f"{text!r}") from None
        if not 0 <= first <= last <= MAX_SEED:
            raise ConfigError(f"--seeds: {part.strip()!r} is not a range of seeds in "
                              f"0..{MAX_SEED} (low-high, low <= high); {example}")
        if last - first + 1 + len(seeds) > MAX_POPULATION:
            raise ConfigError(f"--seeds {text!r} names more than {MAX_POPULATION} agents; "
                              "train fewer per process")
        seeds.extend(range(first, last + 1))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds names seed {repeated[0]} twice; two agents of one seed "
                          "would be the same run")
    if vector == "async":
        raise ConfigError("--seeds with --vector async: a population steps its agents' envs "
                          "as one vector env, which async cannot step in part; use --vector "
                          "sharded, sync or envpool")
    return seeds


class Condition(NamedTuple):
    """A condition a field's `when` tag names: `holds` on a Config, `scope` in the words of the
    flags that make it hold (the help shows it), `refusal` the rest of the one-line error after
    the flag, when the field is set away from its default where the condition does not hold."""

    holds: Callable[[Config], bool]
    scope: str
    refusal: str


CONDITIONS: dict[str, Condition] = {
    "wandb": Condition(lambda c: bool(c.wandb), "--wandb PROJECT",
                       "applies with --wandb PROJECT only; drop it or pass --wandb"),
    "adam": Condition(lambda c: c.optimizer == "adam", "--optimizer adam",
                      "applies to --optimizer adam (rmsprop's eps is the MinAtar paper's 0.01); "
                      "drop it or pass --optimizer adam"),
    "prioritized": Condition(lambda c: c.prioritized or c.actors > 0, "--prioritized or --actors",
                             "applies to prioritized replay only (--prioritized, always on with "
                             "--actors); drop it or pass --prioritized"),
    "one_machine": Condition(lambda c: c.actors == 0, "no --actors",
                             "sets one machine's exploration; Ape-X actors each keep their own "
                             "epsilon (--actor-epsilon, --actor-alpha): drop it or drop --actors"),
    "egreedy": Condition(lambda c: c.exploration == "egreedy", "--exploration egreedy",
                         "applies to --exploration egreedy only (boltzmann samples by "
                         "--temperature); drop it or pass --exploration egreedy"),
    "boltzmann": Condition(lambda c: c.exploration == "boltzmann", "--exploration boltzmann",
                           "applies to --exploration boltzmann only; drop it or pass "
                           "--exploration boltzmann"),
    "step_decay": Condition(lambda c: c.eps_schedule in ("linear", "exponential"),
                            "--eps-schedule linear or exponential",
                            "applies to --eps-schedule linear and exponential only (per_episode "
                            "decays by --eps-episode-decay); drop it or pass --eps-schedule "
                            "linear"),
    "episode_decay": Condition(lambda c: c.eps_schedule == "per_episode",
                               "--eps-schedule per_episode",
                               "applies to --eps-schedule per_episode only; drop it or pass "
                               "--eps-schedule per_episode"),
    "workers": Condition(lambda c: c.vector in ("auto", "sharded", "envpool"),
                         "--vector sharded or envpool",
                         "applies to --vector sharded (worker processes) and envpool (threads) "
                         "only; drop it or pass --vector sharded"),
    "worker_replies": Condition(lambda c: c.vector in ("auto", "sharded", "async"),
                                "--vector sharded or async",
                                "applies to env worker processes (--vector sharded or async) "
                                "only; drop it or pass --vector sharded"),
    "distributional": Condition(lambda c: c.distributional != "none", "--distributional c51 or qr",
                                "applies to a distributional head only; drop it or pass "
                                "--distributional c51 (or qr)"),
    "c51": Condition(lambda c: c.distributional == "c51", "--distributional c51",
                     "sets C51's support, which only --distributional c51 has (qr's quantiles "
                     "need none); drop it or pass --distributional c51"),
    "scalar": Condition(lambda c: c.distributional == "none", "--distributional none",
                        "sets the TD loss of one Q per action; a distributional head trains with "
                        "its own (c51: cross-entropy, qr: quantile Huber): drop it"),
    "apex": Condition(lambda c: c.actors > 0, "--actors K",
                      "applies to Ape-X runs only; drop it or pass --actors K"),
}
"""The conditions a field's `when` tag names: a setting is read only where they all hold, and
refused (with the condition's words) where one does not and it is set away from its default."""


def reads(name: str) -> dict[str, Any]:
    """Field `name`'s row of the table of what reads it: algos, networks, when (see `_reads`)."""
    f = {f.name: f for f in fields(Config)}[name]
    return {"algos": f.metadata.get("algos", ALGOS), "networks": f.metadata.get("networks"),
            "when": f.metadata.get("when", ())}



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
    """The settings' names, in field order (the order of the flags and of validation)."""
    return [f.name for f in fields(Config)]


def coerce(name: str, value: Any) -> Any:
    """`value`, from TOML, a flag or Python, as setting `name`'s type (`coerce_as` on its
    field's annotation), or a ConfigError naming the setting's flag."""
    kind = {f.name: f for f in fields(Config)}[name].type
    return coerce_as(str(kind), name, value)


def check_value(name: str, value: Any, flag: str | None = None) -> Any:
    """`value` coerced to setting `name`'s type and checked by that setting's own rules, as
    `validate` checks it, with errors that name `flag` (default: the setting's own flag): how
    `fastdqn eval` checks the flags it shares with training, with no second copy of the rules."""
    try:
        value = coerce(name, value)
        check_alone(name, value)
    except ConfigError as e:
        own = f"--{flag_name(name)}"
        if flag is None or flag == own:
            raise
        raise ConfigError(str(e).replace(own, flag, 1)) from None
    return value


def check_episode_seed(value: Any, episodes: int, flag: str = "--seed") -> int:
    """`fastdqn eval --seed`: the first of `episodes` episode seeds (episode j is reset with
    seed + j), coerced as --seed is and kept in the range of a run's own episode seeds
    (0..MAX_EPISODE_SEED: what every seed stream takes, seeds.py)."""
    try:
        seed = coerce("seed", value)
    except ConfigError as e:
        raise ConfigError(str(e).replace("--seed", flag, 1)) from None
    last = MAX_EPISODE_SEED - episodes + 1
    if not 0 <= seed <= last:
        raise ConfigError(f"{flag} must be an episode seed in 0..{last} (episode j of {episodes} "
                          f"gets {flag.lstrip('-').upper()} + j), got {seed}")
    return seed


def _algo_defaults() -> dict[str, dict[str, Any]]:
    """Each algorithm's own defaults, from the fields' `algo_defaults` tags, in field order; an
    algorithm with none has no entry."""
    table = {algo: {f.name: f.metadata["algo_defaults"][algo] for f in fields(Config)
                    if algo in f.metadata.get("algo_defaults", {})} for algo in ALGOS}
    return {algo: own for algo, own in table.items() if own}


NOISY_DEFAULTS: dict[str, Any] = {"eps_start": 0.0, "eps_end": 0.0}
"""With --noisy, the network's noise explores (Fortunato et al. 2018 act greedily on the noisy
net): epsilon-greedy is off unless a flag, preset or file sets these (`make_config`)."""

ALGO_DEFAULTS: dict[str, dict[str, Any]] = _algo_defaults()
"""Per-algorithm defaults of shared settings, where an algorithm's own best values differ from
the dataclass defaults (which are DQN's), derived from the fields' tags (`_reads`). `make_config`
applies them to the settings the user left unset; the CLI help shows them next to each default.
PQN's: MSE as in the paper and CleanRL's pqn.py; lr 1e-3 with 16 envs solved CartPole in 20k-90k
steps over 3 seeds where lr 2.5e-4 (CleanRL's, with 32 envs) took 280k; epsilon decays over 25k
steps (measured, the PQN section of bench/README.md)."""
