"""Greedy evaluation on seeds disjoint from training, the trained policy object, and what puts
a score in context: random and heuristic baselines on the same seeds, a returns histogram, a GIF
of one episode and a live window.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch

from fastdqn.core.checkpoint import (
    atomic_write_bytes,
    check_declared_size,
    check_module_state,
    load_checkpoint,
)
from fastdqn.core.seeds import TEST, Purpose, episode_generator, episode_seed
from fastdqn.envs.atari import env_name
from fastdqn.envs.atari import make_env as make_game
from fastdqn.envs.vector import zero_based
from fastdqn.errors import CheckpointError, ConfigError, DisplayError
from fastdqn.nets.mlp import MLP, LayerNormQNetwork, network_of, preprocess


def eval_seed(seed: int) -> int:
    """`fastdqn eval`'s default first episode seed for a run seeded `seed`: the held-out TEST
    stream, disjoint from every seed training and checkpoint selection used (see seeds.py)."""
    return episode_seed(seed, TEST)


@dataclass
class EvalResult:
    mean: float
    std: float
    min: float
    max: float
    episodes: int
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def to_dict(self, with_returns: bool = False) -> dict:
        d = asdict(self)
        if not with_returns:
            d.pop("returns")
            d.pop("lengths")
        return d

    def success_rate(self, threshold: float) -> float:
        """Fraction of episodes whose return reached `threshold` (the env's bar for solved)."""
        return float(np.mean(np.asarray(self.returns) >= threshold)) if self.returns else 0.0


class Policy:
    """The greedy policy of a trained network: call it on a batch of observations.

    The network gives one score per action (a Q-network's values, a policy network's logits);
    the greedy action is the highest-scoring one either way.
    """

    def __init__(self, net: MLP | None, params: torch.Tensor | None,
                 device: torch.device | str = "cpu", module: torch.nn.Module | None = None
                 ) -> None:
        """The flat MLP `net` with its `params`, or else an nn.Module `module` (used as is)."""
        self.net, self.module = net, module
        self.device = torch.device(device)
        if net is not None:
            self.params = params.detach().to(self.device, torch.float32).clone()
            self.views = net.views(self.params)

    @classmethod
    def of_module(cls, module: torch.nn.Module, device: torch.device | str = "cpu") -> Policy:
        """The greedy policy of a network of your own (a copy of it)."""
        import copy

        return cls(None, None, device, copy.deepcopy(module).to(device).eval())

    @torch.no_grad()
    def q_values(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Q-values [B, n_actions] of a batch of observations."""
        x = preprocess(torch.as_tensor(np.asarray(obs), device=self.device))
        if self.module is not None:
            return self.module(x)
        return self.net.forward(self.views, x)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions for a batch of observations [B, *obs_shape]."""
        return self.q_values(obs).argmax(1).cpu().numpy()

    def act(self, obs: np.ndarray) -> int:
        """Greedy action for a single observation."""
        return int(self(np.asarray(obs)[None])[0])

    def to_module(self) -> torch.nn.Module:
        """The Q-network as a plain torch module, a `QNetwork` (a copy)."""
        if self.module is not None:
            import copy

            return copy.deepcopy(self.module)
        return self.net.to_module(self.params)


def run_episodes(policy: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int,
                 seed: int, num_envs: int = 16, env_kwargs: dict | None = None,
                 make_env: Callable[[], gym.Env] | None = None,
                 epsilon: float = 0.0, stop: Callable[[], bool] | None = None) -> EvalResult:
    """Play `episodes` episodes, episode j reset with seed+j, `num_envs` stepped together.

    Each episode's seed is fixed whatever num_envs is, so a deterministic policy always gets
    the same result: evaluations compare across runs and across evaluation settings.
    `make_env` builds the envs instead of `gym.make(env_id, **env_kwargs)` (with Atari's
    preprocessing for Atari ids; a run trained on its own env factory is evaluated on the same
    envs). With `epsilon` > 0 each action is uniformly random with that probability (Atari's
    evaluation protocol), drawn from the episode's own EVAL_EPSILON generator (seeds.py: keyed
    by the episode, never a copy of the env's reset randomness), so the result still does not
    depend on num_envs. Returns are the env's raw rewards summed. Actions are indices 0..n-1,
    as the policy's: a `Discrete(n, start)` env receives start + a (envs.zero_based).

    `stop` is asked before every step (a run's signal cuts its evaluation short): once it says
    True, play ends and the result covers the episodes 0..m-1 that all ended (m may be 0,
    then every statistic is NaN), so its seeds are still seed..seed+m-1.
    """
    k = max(1, min(num_envs, episodes))
    if make_env is None:
        def make_env() -> gym.Env:
            return make_game(env_id, **(env_kwargs or {}))
    envs = [zero_based(make_env()) for _ in range(k)]
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    ended = np.zeros(episodes, dtype=bool)
    slot_episode = [-1] * k
    obs: list = [None] * k
    rngs: list = [None] * k
    next_episode = 0

    def start(i: int) -> None:
        nonlocal next_episode
        if next_episode < episodes:
            slot_episode[i] = next_episode
            obs[i], _ = envs[i].reset(seed=seed + next_episode)
            if epsilon > 0:
                rngs[i] = episode_generator(seed + next_episode, Purpose.EVAL_EPSILON)
            next_episode += 1
        else:
            slot_episode[i] = -1

    try:
        for i in range(k):
            start(i)
        while True:
            active = [i for i in range(k) if slot_episode[i] >= 0]
            if not active or (stop is not None and stop()):
                break
            actions = policy(np.stack([obs[i] for i in active]))
            for j, i in enumerate(active):
                action = actions[j]
                if epsilon > 0 and rngs[i].random() < epsilon:
                    action = rngs[i].integers(envs[i].action_space.n)
                o, r, terminated, truncated, _ = envs[i].step(action)
                ep = slot_episode[i]
                returns[ep] += float(r)
                lengths[ep] += 1
                if terminated or truncated:
                    ended[ep] = True
                    start(i)
                else:
                    obs[i] = o
    finally:
        for env in envs:
            env.close()
    done = episodes if ended.all() else int(np.argmin(ended))
    if done == 0:
        return EvalResult(math.nan, math.nan, math.nan, math.nan, 0)
    returns, lengths = returns[:done], lengths[:done]
    return EvalResult(float(returns.mean()), float(returns.std()), float(returns.min()),
                      float(returns.max()), done, returns.tolist(), lengths.tolist())


def load_policy(path: str, device: str = "cpu") -> tuple[Policy, dict]:
    """The greedy policy stored in a checkpoint, and the whole checkpoint it came from.

    The checkpoint comes back too (env description under "env", settings under "config") so a
    caller that needs more than the network reads the file once, not twice.
    """
    state = load_checkpoint(path)
    damaged = CheckpointError(f"{path} lacks fields a fastdqn checkpoint has; "
                              "it is damaged or from another program")
    try:
        spec = state["net"]
        if not isinstance(state["env"]["id"], str) or not isinstance(state["config"]["seed"], int):
            raise damaged
        if isinstance(spec, dict) and spec.get("kind") == "layernorm_mlp":
            net = _layernorm_net(path, spec, state["learner"]["online"])
            return Policy(None, None, device, net.to(device).eval()), state
        if isinstance(spec, dict) and spec.get("kind") == "policy":
            from fastdqn.algos.reinforce import load_weights, policy_network_of

            module = policy_network_of(path, spec)
            load_weights(path, module, state["learner"]["weights"])
            return Policy(None, None, device, module.to(device).eval()), state
        if isinstance(spec, dict) and spec.get("kind") == "rbf":
            from fastdqn.nets.rbf import module_from_checkpoint

            module = module_from_checkpoint(path, state)
            return Policy(None, None, device, module.to(device).eval()), state
        if isinstance(spec, dict) and spec.get("kind") == "cnn":
            from fastdqn.nets.cnn import module_from_checkpoint as cnn_from_checkpoint

            module = cnn_from_checkpoint(path, state)
            return Policy(None, None, device, module.to(device).eval()), state
        net = network_of(path, spec)
        params = state["learner"]["params"]
        if not (isinstance(params, torch.Tensor) and params.shape == (net.num_params,)):
            raise CheckpointError(f"{path}: parameter count does not match its network shape; "
                                  "the file is damaged")
        if params.dtype != torch.float32 or not bool(torch.isfinite(params).all()):
            # the flat MLP reads them as they are: another dtype fails mid-episode, a NaN
            # plays action 0 everywhere and reports it as the policy's score
            raise CheckpointError(f"{path}: learner.params is not a tensor of finite float32 "
                                  "values; the file is damaged")
        return Policy(net, params, device), state
    except (KeyError, TypeError, AttributeError):
        raise damaged from None


def _layernorm_net(path: str, spec: dict, weights: dict) -> LayerNormQNetwork:
    """PQN's network from a checkpoint's spec and weights, every size checked before the
    network is allocated: its parameter count must equal that of the tensors already loaded."""
    sizes = [spec["in_dim"], spec["n_actions"], *spec["hidden"]]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes):
        raise CheckpointError(f"{path}: its network sizes {str(sizes)[:80]} are not positive "
                              "integers; the file is damaged")
    check_declared_size(path, spec["in_dim"], spec["hidden"], spec["n_actions"], lambda: 0)
    stored = sum(t.numel() for t in weights.values() if isinstance(t, torch.Tensor))
    want = LayerNormQNetwork.count_params(spec["in_dim"], spec["n_actions"], tuple(spec["hidden"]))
    if stored != want or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"{path}: parameter count does not match its network shape; "
                              "the file is damaged")
    net = LayerNormQNetwork(spec["in_dim"], spec["n_actions"], tuple(spec["hidden"]))
    check_module_state(path, weights, net, "learner.online")  # names, shapes, dtypes, finite
    net.load_state_dict(weights)
    return net


# ---------------------------------------------------------------------------------------------
# Baselines: a score means little until it is set against doing nothing clever on the same seeds.
# ---------------------------------------------------------------------------------------------


class RandomPolicy:
    """Uniformly random actions for a batch of observations; seeded, so a comparison repeats.

    The draws follow the order run_episodes asks for actions in, so the same seed gives the same
    episodes for the same `num_envs`. `seed` is the first episode's seed: the draws come from
    its BASELINE generator (seeds.py), not from the env's own reset randomness.
    """

    def __init__(self, n_actions: int, seed: int = 0) -> None:
        self.n_actions = n_actions
        self.rng = episode_generator(seed, Purpose.BASELINE)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.integers(0, self.n_actions, size=len(obs))


def _heuristic_controller(env_id: str) -> Callable | None:
    """gymnasium's hand-written controller for `env_id`, if it ships one (LunarLander only)."""
    if gym.spec(env_name(env_id)).name == "LunarLander":
        from gymnasium.envs.box2d.lunar_lander import heuristic

        return heuristic
    return None


def has_heuristic(env_id: str) -> bool:
    """Does gymnasium ship a heuristic controller for this env?"""
    return _heuristic_controller(env_id) is not None


class HeuristicPolicy:
    """gymnasium's LunarLander heuristic controller, applied row by row to a batch of observations.

    The controller reads one observation at a time and only asks the env whether its actions are
    continuous, so one env built here serves every row.
    """

    def __init__(self, env_id: str, env_kwargs: dict | None = None) -> None:
        controller = _heuristic_controller(env_id)
        if controller is None:
            raise ConfigError(f"gymnasium has no heuristic controller for {env_id}; "
                              "compare against RandomPolicy instead")
        self.controller = controller
        self.env = gym.make(env_id, **(env_kwargs or {}))
        self.env.close()

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.fromiter((self.controller(self.env, row) for row in obs), dtype=np.int64,
                           count=len(obs))


def success_threshold(env_id: str, target: float | None = None) -> float | None:
    """The return an episode must reach to count as a success: `target`, else the env spec's."""
    return target if target is not None else gym.spec(env_name(env_id)).reward_threshold


@dataclass
class Comparison:
    """Several policies evaluated on the same episode seeds."""

    env_id: str
    seed: int
    threshold: float | None
    results: dict[str, EvalResult]
    note: str | None = None
    """Why a baseline is missing (e.g. no heuristic exists for the env), or None."""

    def success_rate(self, name: str) -> float | None:
        if self.threshold is None:
            return None
        return self.results[name].success_rate(self.threshold)

    def to_dict(self) -> dict[str, dict]:
        """Policy name -> mean, std, min, max, episodes, success_rate."""
        return {name: {**r.to_dict(), "success_rate": self.success_rate(name)}
                for name, r in self.results.items()}

    def table(self) -> str:
        """A plain-text table, one row per policy; the header says what counts as a success."""
        episodes = next(iter(self.results.values())).episodes
        bar = f"return >= {self.threshold:g}" if self.threshold is not None else "no threshold"
        lines = [f"{self.env_id}: {episodes} episodes per policy, the same seeds "
                 f"{self.seed}..{self.seed + episodes - 1} for each",
                 f"{'policy':<10} {'mean':>9} {'std':>9} {'min':>9} {'max':>9}  success ({bar})"]
        for name, r in self.results.items():
            rate = self.success_rate(name)
            shown = "n/a" if rate is None else f"{100 * rate:.0f}%"
            lines.append(f"{name:<10} {r.mean:9.2f} {r.std:9.2f} {r.min:9.2f} {r.max:9.2f}  {shown}")
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None):
        """Overlaid histograms of each policy's returns with the success line; saved if `path`.

        The file is written atomically in the format its suffix names (png, svg, pdf, ...).
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 4.5), dpi=100)
        ax = fig.add_subplot()
        everything = np.concatenate([r.returns for r in self.results.values()])
        bins = np.histogram_bin_edges(everything, bins=min(40, max(10, len(everything) // 10)))
        for name, r in self.results.items():
            ax.hist(r.returns, bins=bins, alpha=0.5, label=f"{name} (mean {r.mean:.1f})")
        if self.threshold is not None:
            ax.axvline(self.threshold, color="black", ls="--", lw=1.5,
                       label=f"success: return >= {self.threshold:g}")
        episodes = next(iter(self.results.values())).episodes
        ax.set_title(f"{self.env_id}: returns of {episodes} episodes per policy, same seeds")
        ax.set_xlabel("episode return")
        ax.set_ylabel("episodes")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        if path is not None:
            path = Path(path)
            buf = io.BytesIO()
            fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png")
            atomic_write_bytes(path, buf.getvalue())
        return fig


def compare_policies(policy: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int = 100,
                     seed: int = 0, num_envs: int = 16, threshold: float | None = None,
                     env_kwargs: dict | None = None, epsilon: float = 0.0) -> Comparison:
    """`policy` (as "greedy"), uniformly random actions and, where gymnasium ships one, the env's
    heuristic controller, each on the same episode seeds: what did training buy?

    `threshold` is the return that counts as a success (default: the env's reward threshold);
    `epsilon` is the greedy policy's evaluation epsilon (run_episodes).
    """
    env = make_game(env_id, **(env_kwargs or {}))
    n_actions = int(env.action_space.n)
    env.close()
    policies: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "greedy": policy, "random": RandomPolicy(n_actions, seed)}
    note = None
    if has_heuristic(env_id):
        policies["heuristic"] = HeuristicPolicy(env_id, env_kwargs)
    else:
        note = f"gymnasium has no heuristic controller for {env_id}; comparing greedy and random only"
    results = {name: run_episodes(p, env_id, episodes, seed, num_envs, env_kwargs,
                                  epsilon=epsilon if name == "greedy" else 0.0)
               for name, p in policies.items()}
    return Comparison(env_id, seed, success_threshold(env_id, threshold), results, note)


# ---------------------------------------------------------------------------------------------
# Watching: a GIF works anywhere; a live window needs a display.
# ---------------------------------------------------------------------------------------------


class Recording(NamedTuple):
    path: Path
    episode_return: float
    steps: int
    frames: int


def _render_env(env_id: str, mode: str, env_kwargs: dict | None) -> gym.Env:
    """The env in render mode `mode`, or a one-line error saying why it cannot render.

    The modes are read from the env class before it is built, as gymnasium itself does, so an
    env without them is refused without a construction error or a warning.
    """
    from gymnasium.envs.registration import load_env_creator

    from fastdqn.envs.vector import check_env_id

    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # keeps stdout clean for --json
    check_env_id(env_id)  # imports the module of a `module:Env-v0` id, which gym.spec does not
    entry = gym.spec(env_id.split(":", 1)[-1]).entry_point
    creator = load_env_creator(entry) if isinstance(entry, str) else entry
    modes = list(getattr(creator, "metadata", {}).get("render_modes", []))
    if mode not in modes:
        raise ConfigError(f"{env_id} has no {mode} render mode (it has: {', '.join(modes) or 'none'})"
                          ", so it cannot be recorded or shown; evaluate it without --gif/--render")
    try:
        return zero_based(make_game(env_id, render_mode=mode, **(env_kwargs or {})))
    except gym.error.DependencyNotInstalled as e:
        raise ConfigError(f"{env_id} cannot render: {e}") from None


def save_gif(policy: Callable[[np.ndarray], np.ndarray], env_id: str, path: str | Path,
             seed: int = 0, every: int = 2, fps: float | None = None, scale: float = 0.5,
             env_kwargs: dict | None = None, epsilon: float = 0.0) -> Recording:
    """Record one episode of `policy` (reset with `seed`) as an animated GIF; needs no display.

    Only every `every`-th frame is kept, shrunk by `scale`, and played at the env's own speed by
    default (fps = render_fps / every), which keeps the file small. Written atomically. With
    `epsilon`, actions are random with that probability, drawn as run_episodes draws them.
    """
    from PIL import Image

    if every < 1 or not 0 < scale <= 1:
        raise ConfigError(f"save_gif needs every >= 1 and 0 < scale <= 1, got {every} and {scale}")
    env = _render_env(env_id, "rgb_array", env_kwargs)
    rng = episode_generator(seed, Purpose.EVAL_EPSILON)
    frames, total, steps = [], 0.0, 0
    try:
        obs, _ = env.reset(seed=seed)
        frames.append(env.render())
        done = False
        while not done:
            action = int(policy(np.asarray(obs)[None])[0])
            if epsilon > 0 and rng.random() < epsilon:
                action = int(rng.integers(env.action_space.n))
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            steps += 1
            done = terminated or truncated
            if steps % every == 0 or done:
                frames.append(env.render())
        fps = fps or env.metadata.get("render_fps", 50) / every
    finally:
        env.close()
    h, w = frames[0].shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)).resize(size, Image.Resampling.BILINEAR)
              for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return Recording(path, total, steps, len(images))




def open_display() -> None:
    """Initialise a pygame display that can show a real window, or raise DisplayError.

    On Linux pygame silently falls back to an invisible offscreen driver when no display answers,
    so the drivers that show windows are tried by name. Setting SDL_VIDEODRIVER yourself (e.g.
    to dummy, for headless tests) skips the checks.
    """
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    if os.environ.get("SDL_VIDEODRIVER"):
        return
    linux = sys.platform.startswith("linux")
    drivers = [d for d, var in (("wayland", "WAYLAND_DISPLAY"), ("x11", "DISPLAY"))
               if os.environ.get(var)]
    if linux and not drivers:
        raise DisplayError("no display to open a window on (DISPLAY and WAYLAND_DISPLAY are unset)")
    try:
        import pygame
    except ImportError:
        raise DisplayError("pygame is not installed (pip install pygame)") from None
    errors = []
    for driver in drivers if linux else [None]:
        if driver is not None:
            os.environ["SDL_VIDEODRIVER"] = driver
        try:
            pygame.display.init()
        except pygame.error as e:
            errors.append(f"{driver}: {e}" if driver else str(e))
            continue
        got = pygame.display.get_driver()
        if got not in ("offscreen", "dummy"):
            return
        pygame.display.quit()
        errors.append(f"only its invisible {got} driver works")
    os.environ.pop("SDL_VIDEODRIVER", None)
    where = ", ".join(f"{v}={os.environ[v]}" for v in ("DISPLAY", "WAYLAND_DISPLAY") if os.environ.get(v))
    raise DisplayError(f"pygame could not open a window on {where or 'this machine'} "
                       f"({'; '.join(errors)})")


def render_episodes(policy: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int,
                    seed: int, env_kwargs: dict | None = None, epsilon: float = 0.0
                    ) -> EvalResult:
    """Play `episodes` episodes one at a time in a live window, on the seeds run_episodes uses.

    Episode j is reset with seed + j as in run_episodes (and the same `epsilon` draws), so a
    deterministic policy scores the same as in the batched evaluation: what you watch is what
    was measured.
    """
    open_display()
    _render_env(env_id, "human", env_kwargs).close()
    import pygame

    try:
        return run_episodes(policy, env_id, episodes, seed, num_envs=1,
                            env_kwargs={**(env_kwargs or {}), "render_mode": "human"},
                            epsilon=epsilon)
    except pygame.error as e:
        raise DisplayError(f"pygame could not open a window ({e})") from None
