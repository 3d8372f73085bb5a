"""Learning curves: `fastdqn train` once per seed, each in its own process, one after another,
and the greedy evaluations' mean return plotted against env steps and against wall time.

A time-to-solve table needs a target; a pixel game like MinAtar Breakout has none, so what a
user wants to know is how the return grows with the budget they give it. Each evaluation in
summary.json carries its step and the run's wall clock, so the curves come from the runs
themselves. The dashed line is a uniformly random policy's mean over the same number of
episodes (played here on the env fastdqn's evaluations play, seeds 0..n-1), the floor any learning must clear.

    python bench/learning_curve.py --png bench/minatar_breakout.png --json curve.json \
        -- --config minatar --total-timesteps 250000

Arguments after `--` go to `fastdqn train` unchanged. Runs are sequential: one training
process at a time, so no two runs share the CPU and the wall-time axis means something.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_solve import refuse_owned_flags, run_train  # noqa: E402


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                usage="%(prog)s [options] [-- fastdqn train arguments]")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default: 3)")
    p.add_argument("--seed-base", type=int, default=1, help="first seed (default: 1)")
    p.add_argument("--png", default=None, metavar="FILE", help="draw the curves into FILE")
    p.add_argument("--json", default=None, metavar="FILE", help="write the curves as JSON")
    p.add_argument("--runs-dir", default=None, metavar="DIR",
                   help="keep each run in DIR/seed_S (default: a temporary folder, deleted)")
    p.add_argument("--random-episodes", type=int, default=100,
                   help="episodes of the random policy for the baseline (default: 100; 0: none)")
    args = p.parse_args(own)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    refuse_owned_flags(p, extra)
    return args, extra


def curve(summary: dict) -> dict:
    """One run's curve: each evaluation's step, wall time and mean return (a confirming
    evaluation repeats its screening one's step, so only the first result at a step is kept)."""
    points: dict[int, tuple[float, float]] = {}
    for e in summary["evals"]:
        points.setdefault(e["step"], (e["wall_time_s"], e["mean"]))
    steps = sorted(points)
    return {"steps": steps, "wall_time_s": [points[s][0] for s in steps],
            "mean_return": [points[s][1] for s in steps]}


def random_baseline(env_id: str, episodes: int) -> float:
    """Mean return of uniformly random actions over `episodes` episodes (seeds 0..episodes-1)."""
    from fastdqn.envs.atari import make_env

    env = make_env(env_id)
    env.action_space.seed(0)
    total = 0.0
    for ep in range(episodes):
        env.reset(seed=ep)
        done = False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            total += float(r)
            done = term or trunc
    env.close()
    return total / episodes


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for run in result["seeds"]:
        if "error" in run:
            continue
        label = f"seed {run['seed']}"
        axes[0].plot(run["steps"], run["mean_return"], label=label)
        axes[1].plot(np.array(run["wall_time_s"]) / 60, run["mean_return"], label=label)
    for ax, xlabel in zip(axes, ["env steps", "wall time (min)"]):
        if result["random_mean_return"] is not None:
            ax.axhline(result["random_mean_return"], ls="--", c="gray", label="random policy")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("greedy evaluation mean return")
    axes[0].legend()
    fig.suptitle(f"{result['env_id']}: fastdqn train {' '.join(result['train_args'])}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args, train_args = parse_args(sys.argv[1:] if argv is None else argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.runs_dir) if args.runs_dir else Path(tmp)
        for seed in range(args.seed_base, args.seed_base + args.seeds):
            s = run_train(seed, base / f"seed_{seed}", train_args)
            if "error" in s:
                runs.append({"seed": seed, "error": s["error"]})
                print(f"seed {seed}: failed: {s['error']}", flush=True)
                continue
            runs.append({"seed": seed, **curve(s), "sps": s["sps"], "env_id": s["env_id"],
                         "total_env_steps": s["total_env_steps"], "version": s["version"]})
            print(f"seed {seed}: {s['total_env_steps']:,d} steps in {s['wall_time_s']:.0f} s "
                  f"({s['sps']:.0f} SPS), last eval {runs[-1]['mean_return'][-1]:.2f}", flush=True)
    ok = [r for r in runs if "error" not in r]
    env_id = ok[0]["env_id"] if ok else None
    result = {"env_id": env_id, "train_args": train_args, "seeds": runs,
              "random_mean_return": (random_baseline(env_id, args.random_episodes)
                                     if env_id and args.random_episodes else None),
              "machine": f"{platform.processor() or platform.machine()}, {platform.system()}"}
    if result["random_mean_return"] is not None:
        print(f"random policy: {result['random_mean_return']:.2f} over "
              f"{args.random_episodes} episodes")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.png and ok:
        plot(result, Path(args.png))
    return 0 if len(ok) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
