"""The seeds, reproduced and beaten: each notebook system as a fastdqn preset on LunarLander-v3,
run for the notebook's own episode budget, beside what the notebook reported.

fastdqn's users arrive from notebooks that try DQN (two configurations), REINFORCE and linear Q
on RBF features on LunarLander. Each row runs that system's preset in its own `fastdqn train`
process for the notebook's episode budget (a DQN run stops earlier once solved) and reports what
the notebook reported: the mean return of the last 100 training episodes, the wall time, and
whether it is solved by fastdqn's stricter test (greedy mean >= 200 over 100 held-out episodes).
The last row is fastdqn's own defaults, for the comparison a user makes.

    python bench/notebooks.py                          # every row, seed 1, on LunarLander-v3
    python bench/notebooks.py --only rbf-lunarlander --json rbf.json
    python bench/notebooks.py --smoke                  # a few episodes per row; what CI runs

Wall times include fastdqn's periodic and final greedy evaluations, which the notebooks did not
run; a notebook's own time is quoted as it reported it (its hardware, not this machine's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from time_to_solve import run_train, show  # bench/ is the script's own folder on sys.path

from fastdqn.config.files import load_toml


@dataclass(frozen=True)
class Notebook:
    """One notebook system: the preset that reproduces it and what the notebook reported."""

    name: str
    system: str
    preset: str
    episodes: int
    """The notebook's episode budget (DQN runs stop earlier when solved)."""
    reported_result: str
    reported_time: str


NOTEBOOKS = [
    Notebook("lunarlander-notebook", "DQN, the PyTorch-tutorial notebook configuration",
             "lunarlander-notebook", 2000,
             "landed (last-100 mean >= 200)", "about 25 min on a GPU"),
    Notebook("udacity-lunarlander", "DQN, the Udacity course notebook", "udacity-lunarlander", 2000,
             "stops when the last-100 mean reaches 200 (n_episodes 2000)", "not reported"),
    Notebook("reinforce-notebook", "REINFORCE, linear softmax policy", "reinforce-notebook", 1200,
             "running mean about -156 after 1200 episodes", "not reported"),
    Notebook("rbf-lunarlander", "linear Q on 400 RBF features", "rbf-lunarlander", 2000,
             "plateau after ~1000 episodes", "20-25 min on Colab"),
    Notebook("fastdqn defaults", "fastdqn's own DQN defaults, for comparison", "", 2000,
             "-", "-"),
]

SMOKE_ARGS = ["--total-episodes", "3", "--eval-every", "0", "--eval-episodes", "2",
              "--solve-episodes", "2", "--eval-envs", "2"]
"""A few episodes per row and a two-episode final evaluation: every field, no learning (DQN
rows also start learning at 64 transitions, so the smoke reaches the learner; other algorithms
refuse the setting, which they do not read)."""


def train_args(nb: Notebook, smoke: bool) -> list[str]:
    """The `fastdqn train` arguments of one row (the rbf flag only where the preset reads it)."""
    args = (["--config", nb.preset] if nb.preset else []) + ["--total-episodes", str(nb.episodes)]
    if smoke:
        algo = load_toml(nb.preset).get("algo", "dqn") if nb.preset else "dqn"
        args += SMOKE_ARGS + (["--learning-starts", "64"] if algo == "dqn" else [])
        args += ["--rbf-fit-steps", "200"] if nb.preset == "rbf-lunarlander" else []
    return args


def run_one(nb: Notebook, seed: int, run_dir: Path, smoke: bool) -> dict:
    """One `fastdqn train` in a fresh process; the row's figures from its summary.json."""
    args = train_args(nb, smoke)
    row = {**asdict(nb), "seed": seed, "command": "fastdqn train " + " ".join(args)
           + f" --seed {seed}"}
    s = run_train(seed, run_dir, args)
    if "error" in s:
        return {**row, "error": s["error"]}
    final = s["final_eval"] or {}
    return {**row, "episodes_run": s["episodes"], "env_steps": s["total_env_steps"],
            "wall_time_s": s["wall_time_s"], "sps": s["sps"],
            "train_mean_return_100": s["train_mean_return_100"],
            "solved": s["solved"], "time_to_solve_s": s["time_to_solve_s"],
            "final_eval_mean": final.get("mean"), "final_eval_std": final.get("std"),
            "best_eval_mean": (s["best_eval"] or {}).get("mean")}


def table(rows: list[dict]) -> str:
    """A markdown table: fastdqn's figures, then the notebook's beside them."""
    out = ["| system | preset | episodes | env steps | wall time | last-100 training mean | "
           "greedy eval (100 held-out) | solved (greedy >= 200) | notebook reported | "
           "notebook time |",
           "|" + "---|" * 10]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['system']} | `{r['preset'] or 'defaults'}` | failed: {r['error']} "
                       "|||||||")
            continue
        solved = f"yes, {r['time_to_solve_s']:.0f} s" if r["solved"] else "no"
        greedy = ("-" if r["final_eval_mean"] is None
                  else f"{r['final_eval_mean']:.1f} ± {r['final_eval_std']:.1f}")
        out.append(f"| {r['system']} | `{r['preset'] or 'defaults'}` | {r['episodes_run']:,d} | "
                   f"{r['env_steps']:,d} | {r['wall_time_s']:.0f} s | "
                   f"{show(r['train_mean_return_100'], '.1f')} | {greedy} | {solved} | "
                   f"{r['reported_result']} | {r['reported_time']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=1, help="training seed of every row (default: 1)")
    p.add_argument("--only", default="", metavar="NAMES",
                   help="comma-separated row names to run (default: all): "
                        + ", ".join(nb.name for nb in NOTEBOOKS))
    p.add_argument("--json", default=None, metavar="FILE", help="write the rows as JSON")
    p.add_argument("--runs-dir", default=None, metavar="DIR",
                   help="keep each run in DIR/NAME (default: a temporary folder, deleted)")
    p.add_argument("--smoke", action="store_true", help="a few episodes per row (CI)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - {nb.name for nb in NOTEBOOKS})
    if unknown:
        p.error(f"--only: unknown row {', '.join(unknown)}; pick from "
                + ", ".join(nb.name for nb in NOTEBOOKS))
    chosen = [nb for nb in NOTEBOOKS if not names or nb.name in names]
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="notebooks_") as tmp:
        root = Path(args.runs_dir) if args.runs_dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for nb in chosen:
            try:
                row = run_one(nb, args.seed, root / nb.name.replace(" ", "-"), args.smoke)
            except KeyboardInterrupt:
                print(f"interrupted during {nb.name}; no results written", file=sys.stderr)
                return 130
            rows.append(row)
            print(f"{nb.name}: " + (row.get("error") or f"{row['episodes_run']} episodes, "
                                    f"{row['wall_time_s']:.1f} s"), file=sys.stderr, flush=True)
    result = {"date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "bench_wall_time_s": round(time.time() - started, 1), "rows": rows}
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
