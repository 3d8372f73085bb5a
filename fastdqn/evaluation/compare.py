"""`--compare`: the trained policy, random actions and (where gymnasium ships one) the env's
heuristic controller on the same episode seeds; a score means little until it is set against
doing nothing clever. The table and the returns histogram.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from fastdqn.core.checkpoint import atomic_write_bytes
from fastdqn.envs.atari import env_name
from fastdqn.envs.atari import make_env as make_game
from fastdqn.evaluation.episodes import EvalResult, run_episodes
from fastdqn.evaluation.policies import HeuristicPolicy, RandomPolicy, has_heuristic


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
