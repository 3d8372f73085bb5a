"""Watching a policy: a GIF of one episode (works anywhere) and a live window (needs a display).
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import gymnasium as gym
import numpy as np

from fastdqn.core.checkpoint import atomic_write_bytes
from fastdqn.core.seeds import Purpose, episode_generator
from fastdqn.envs.atari import make_env as make_game
from fastdqn.envs.spaces import zero_based
from fastdqn.errors import ConfigError, DisplayError
from fastdqn.evaluation.episodes import EvalResult, run_episodes


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

    from fastdqn.envs.spaces import check_env_id

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
