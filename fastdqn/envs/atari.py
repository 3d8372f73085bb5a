"""Atari (through ale-py) and MinAtar (through the minatar package): registration, the standard
DQN preprocessing, and the life-loss signal.

Atari ids (`ALE/...-v5`, `...NoFrameskip-v4`) are built as gymnasium's own wrappers build the
Machado et al. (2018) preprocessing, with the DQN settings of Mnih et al. (2015):

    gym.make(id, frameskip=1, repeat_action_probability=p)
    -> AtariPreprocessing(noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True)
       (up to 30 no-ops after each reset, each action repeated for 4 frames, the last two
        frames max-pooled, 84x84 grayscale uint8)
    -> FrameStackObservation(4)            observations [4, 84, 84] uint8, channels first
    -> LifeLossInfo                        info["life_loss"] on every step

Sticky actions follow the ids' own protocol: p = 0.25 for the v5 ids (Machado et al.'s
recommendation, and ale-py's default for them), p = 0 for the NoFrameskip-v4 ids (the
deterministic emulator of the DQN papers, which CleanRL's published scores use). Episodes end
at game over, never at a life loss (terminal_on_life_loss=False, as Machado et al. advise), and
at ale-py's 108 000 frames (27 000 agent steps), so evaluation and summary.json score whole
games in raw points. What DQN trains on differs on purpose: it clips rewards to their sign and
treats a life loss as terminal in its TD targets (`--clip-rewards`, `--life-loss-terminal`,
both on for Atari by default), reading the loss of a life from `info["life_loss"]`. No FIRE is
pressed at reset: the agent learns to press it (Machado et al. add no such step), and
gymnasium's wrappers have none.

MinAtar ids (`MinAtar/Breakout-v1`, ...) are minatar's own gymnasium envs: [10, 10, C] bool
observations, channels last, with minatar's sticky actions (p = 0.1) and no frame stacking.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from fastdqn.errors import ConfigError

NOOP_MAX = 30
"""Most no-op actions after a reset (Mnih et al. 2015)."""
FRAME_SKIP = 4
"""Frames each action is repeated for; the last two are max-pooled."""
SCREEN_SIZE = 84
"""Side of the square grayscale frame."""
FRAME_STACK = 4
"""Frames stacked into one observation."""
STICKY_V5 = 0.25
"""repeat_action_probability of the v5 ids (Machado et al. 2018)."""


def env_name(env_id: str) -> str:
    """The registry name of an id (a `module:Name-v0` id's part after the colon)."""
    return env_id.split(":", 1)[-1]


def is_atari(env_id: str) -> bool:
    """An ale-py Atari id: `ALE/<Game>-v5` (or -v0) or `<Game>NoFrameskip-v4`."""
    name = env_name(env_id)
    return name.startswith("ALE/") or name.endswith("NoFrameskip-v4")


def is_minatar(env_id: str) -> bool:
    return env_name(env_id).startswith("MinAtar/")


def sticky_probability(env_id: str) -> float:
    """Sticky actions per Machado et al. 2018 for the v5 ids, none for NoFrameskip-v4."""
    return STICKY_V5 if env_name(env_id).startswith("ALE/") else 0.0


def register(env_id: str) -> None:
    """Register the ids of the package an Atari or MinAtar id needs (idempotent); a one-line
    ConfigError naming the extra to install when the package is missing."""
    name = env_name(env_id)
    if is_atari(env_id):
        try:
            import ale_py
        except ImportError:
            raise ConfigError(f"--env {env_id} needs ale-py: pip install -e \".[atari]\""
                              ) from None
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner on stderr
        gym.register_envs(ale_py)
    elif is_minatar(env_id) and name not in gym.registry:
        try:
            from minatar.gym import register_envs
        except ImportError:
            raise ConfigError(f"--env {env_id} needs minatar: pip install -e \".[minatar]\""
                              ) from None
        register_envs()


def make_env(env_id: str, **kwargs) -> gym.Env:
    """`gym.make(env_id, **kwargs)`, or for an Atari id the preprocessed chain above."""
    register(env_id)
    if is_minatar(env_id):
        return MinAtarSeeding(gym.make(env_id, **kwargs))
    if not is_atari(env_id):
        return gym.make(env_id, **kwargs)
    try:
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation
        kwargs = {"frameskip": 1, "repeat_action_probability": sticky_probability(env_id),
                  **kwargs}
        env = gym.make(env_id, **kwargs)
        env = AtariPreprocessing(env, noop_max=NOOP_MAX, frame_skip=FRAME_SKIP,
                                 screen_size=SCREEN_SIZE, terminal_on_life_loss=False,
                                 grayscale_obs=True, scale_obs=False)
    except gym.error.DependencyNotInstalled:
        raise ConfigError(f"--env {env_id} needs opencv for its preprocessing: "
                          "pip install -e \".[atari]\"") from None
    return LifeLossInfo(FrameStackObservation(env, FRAME_STACK))


class MinAtarSeeding(gym.Wrapper):
    """Seeds each MinAtar game from the env's gymnasium generator.

    minatar seeds a numpy RandomState, which takes 32-bit seeds, and only when reset is given
    one; fastdqn's episode seeds are 64-bit (seeds.py) and its autoresets pass none. So every
    reset seeds the game with 4 words drawn from `np_random` (itself seeded by the reset's seed,
    of any size): the same seed gives the same game, and a seedless reset continues the stream,
    which is the state a checkpoint saves for an episode in flight (envs.EpisodeStart).
    """

    def reset(self, *, seed=None, options=None):
        from gymnasium.utils import seeding

        game = self.env.unwrapped
        if seed is not None:
            game._np_random, game._np_random_seed = seeding.np_random(seed)
        game.seed(game.np_random.integers(0, 2**32, size=4, dtype=np.uint64).astype(np.uint32))
        return self.env.reset(options=options)


class LifeLossInfo(gym.Wrapper):
    """Puts `info["life_loss"]` in every step's info (and False in reset's): True when the
    emulator's life counter dropped during the step and the game goes on.

    The episode does not end there: the agent decides what a life loss means for its targets.
    `reports_life_loss` tells the vector envs (and the trainer) that this env has the key.
    """

    reports_life_loss = True

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives = 0

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.lives = self.env.unwrapped.ale.lives()
        info["life_loss"] = False
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self.env.unwrapped.ale.lives()
        info["life_loss"] = bool(lives < self.lives and not terminated)
        self.lives = lives
        return obs, reward, terminated, truncated, info


def reports_life_loss(env: gym.Env) -> bool:
    """Whether `env` (through its wrappers) puts info["life_loss"] in its steps."""
    try:
        return bool(env.get_wrapper_attr("reports_life_loss"))
    except AttributeError:
        return False


def auto_on(setting: str, env_id: str) -> bool:
    """An auto|on|off setting of the Atari training protocol, resolved for `env_id`."""
    return setting == "on" or (setting == "auto" and is_atari(env_id))


EVAL_EPSILON_ATARI = 0.05
"""Epsilon of Atari evaluation episodes (Mnih et al. 2015's protocol; CleanRL's evaluation of
dqn_atari.py too): a purely greedy policy that never presses FIRE would stall a Breakout game
until its 27 000-step limit."""


def eval_epsilon(setting: float | None, env_id: str) -> float:
    """--eval-epsilon resolved: the value given, else 0.05 for Atari ids and 0 (greedy) else."""
    if setting is not None:
        return float(setting)
    return EVAL_EPSILON_ATARI if is_atari(env_id) else 0.0


def sign_rewards(rewards: np.ndarray) -> np.ndarray:
    """Rewards clipped to their sign, {-1, 0, 1} (Mnih et al. 2015)."""
    return np.sign(rewards)
