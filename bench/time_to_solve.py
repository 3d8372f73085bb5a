"""Time to solve: `fastdqn train` on its defaults (LunarLander-v3) once per seed, each in its own
process, and how long it took to solve across seeds.

One seed says little about an RL method; the median over seeds and the solve rate say what a
user can expect, and the worst seed what they must budget for. A run that never solves counts
as infinitely slow, so a median is only reported when more than half the seeds solved.

    python bench/time_to_solve.py                           # 5 seeds, package defaults
    python bench/time_to_solve.py --seeds 5 --json tts.json -- --config lunarlander-notebook
    python bench/time_to_solve.py --smoke                   # CartPole, tiny runs; what CI runs
    python bench/time_to_solve.py --against /tmp/base       # another checkout, side by side

Arguments after `--` go to `fastdqn train` unchanged (presets, --device, ...).

Time to solve is what the run's summary.json says (counted from the process's start; before
the change that made it so, 2026-12-07, from the run's start, after imports and set-up); `command_s` is
the whole `fastdqn train` command, measured here around it. With --against DIR each seed runs
there (that checkout's fastdqn: a `git archive` of an older commit) and then here, one after
the other, so both share the machine's phase, and the report gives both medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SMOKE_TRAIN_ARGS = ["--env", "CartPole-v1", "--num-envs", "4", "--total-timesteps", "3000",
                    "--learning-starts", "500", "--eval-every", "1000", "--eval-episodes", "3",
                    "--solve-episodes", "5", "--eval-envs", "4", "--target-return", "20"]
"""A few thousand CartPole steps with a low target, so both solved and unsolved paths can occur."""

PER_SEED = ["seed", "solved", "steps_to_solve", "time_to_solve_s", "wall_time_s", "command_s",
            "final_eval_mean", "total_env_steps", "sps", "env_id", "version"]
AGGREGATE = ["seeds", "solve_rate", "median_time_to_solve_s", "median_command_s",
             "median_steps_to_solve", "max_steps_to_solve", "failed_seeds", "train_args"]
OWNED_FLAGS = ("--seed", "--run-dir", "--resume")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This script's own flags, and everything after `--` (the `fastdqn train` arguments)."""
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                usage="%(prog)s [options] [-- fastdqn train arguments]")
    p.add_argument("--seeds", type=int, default=None,
                   help="number of seeds, one training run each (default: 5; --smoke: 2)")
    p.add_argument("--seed-base", type=int, default=1, help="first seed (default: 1)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    p.add_argument("--runs-dir", default=None, metavar="DIR",
                   help="keep each run in DIR/seed_S (default: a temporary folder, deleted)")
    p.add_argument("--smoke", action="store_true",
                   help="CartPole-v1, a few thousand steps, 2 seeds; checks every field (CI)")
    p.add_argument("--against", default=None, metavar="DIR",
                   help="also run each seed from the checkout in DIR, alternating with this one")
    args = p.parse_args(own)
    if args.seeds is None:
        args.seeds = 2 if args.smoke else 5
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    refuse_owned_flags(p, extra)
    return args, (SMOKE_TRAIN_ARGS if args.smoke else []) + extra


def refuse_owned_flags(p: argparse.ArgumentParser, extra: list[str]) -> None:
    """`fastdqn train` arguments that would override what a per-seed benchmark sets: refused."""
    clash = [a for a in extra if a.split("=")[0] in OWNED_FLAGS]
    if clash:
        p.error(f"{', '.join(clash)} after -- would override what this benchmark sets per run; "
                "use --seeds/--seed-base (and --runs-dir) instead")


def run_train(seed: int, run_dir: Path, train_args: list[str], root: Path = ROOT) -> dict:
    """One `fastdqn train` in a fresh process (the fastdqn of checkout `root`): its
    summary.json as a dict with the command's wall time (`command_s`), or {"error": "exit N:
    last line of stderr"}."""
    cmd = [sys.executable, "-m", "fastdqn", "train", "--seed", str(seed), "--run-dir", str(run_dir),
           "--no-progress", *train_args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=root)
    took = time.perf_counter() - began
    summary_file = run_dir / "summary.json"
    if proc.returncode != 0 or not summary_file.is_file():
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return {**json.loads(summary_file.read_text()), "command_s": round(took, 3)}


def train_one(seed: int, run_dir: Path, train_args: list[str], root: Path = ROOT) -> dict:
    """One seed's row: its summary's figures, or why it failed."""
    s = run_train(seed, run_dir, train_args, root)
    if "error" in s:
        return {"seed": seed, "error": s["error"]}
    return {
        "seed": seed, "solved": s["solved"], "steps_to_solve": s["steps_to_solve"],
        "time_to_solve_s": s["time_to_solve_s"], "wall_time_s": s["wall_time_s"],
        "command_s": s["command_s"],
        "final_eval_mean": s["final_eval"]["mean"] if s["final_eval"] else None,
        "total_env_steps": s["total_env_steps"], "sps": s["sps"], "env_id": s["env_id"],
        "version": s["version"],
    }


def median_or_none(values: list[float]) -> float | None:
    """Median with unsolved runs as +inf: None when the median run did not solve."""
    m = statistics.median(values) if values else math.inf
    return None if math.isinf(m) else m


def aggregate(runs: list[dict], train_args: list[str]) -> dict:
    ok = [r for r in runs if "error" not in r]
    times = [r["time_to_solve_s"] if r["solved"] else math.inf for r in ok]
    steps = [r["steps_to_solve"] if r["solved"] else math.inf for r in ok]
    worst = max(steps) if steps else math.inf
    return {
        "seeds": runs,
        "solve_rate": sum(r["solved"] for r in ok) / len(runs),
        "median_time_to_solve_s": median_or_none(times),
        "median_command_s": statistics.median(r["command_s"] for r in ok) if ok else None,
        "median_steps_to_solve": median_or_none(steps),
        "max_steps_to_solve": None if math.isinf(worst) else worst,
        "failed_seeds": [r["seed"] for r in runs if "error" in r],
        "train_args": train_args,
    }


def show(v, fmt: str = "") -> str:
    return "-" if v is None else format(v, fmt)


def report(result: dict) -> str:
    lines = [f"{'seed':>6} {'solved':>7} {'steps_to_solve':>15} {'time_to_solve_s':>16} "
             f"{'wall_time_s':>12} {'command_s':>10} {'final eval mean':>16}"]
    for r in result["seeds"]:
        if "error" in r:
            lines.append(f"{r['seed']:>6}  failed: {r['error']}")
            continue
        lines.append(f"{r['seed']:>6} {'yes' if r['solved'] else 'no':>7} "
                     f"{show(r['steps_to_solve'], ',d'):>15} {show(r['time_to_solve_s'], '.1f'):>16} "
                     f"{r['wall_time_s']:>12.1f} {r['command_s']:>10.1f} "
                     f"{show(r['final_eval_mean'], '.1f'):>16}")
    unsolved = "not reached (at least half the seeds did not solve)"
    t, n, worst = (result[k] for k in ("median_time_to_solve_s", "median_steps_to_solve",
                                       "max_steps_to_solve"))
    lines += [
        f"solve rate            {100 * result['solve_rate']:.0f}% of {len(result['seeds'])} seeds",
        f"median time to solve  {unsolved if t is None else f'{t:.1f} s'}",
        f"median command        {show(result['median_command_s'], '.1f')} s",
        f"median steps to solve {unsolved if n is None else f'{n:,.0f}'}",
        f"max steps to solve    {'unsolved (some seed did not solve)' if worst is None else f'{worst:,d}'}",
    ]
    return "\n".join(lines)


def check_fields(result: dict) -> list[str]:
    """Fields the JSON promises that are missing (smoke mode fails on any)."""
    missing = [k for k in AGGREGATE if k not in result]
    for r in result["seeds"]:
        missing += [f"seeds[{r['seed']}].{k}" for k in PER_SEED if k not in r]
    return missing


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def main(argv: list[str] | None = None) -> int:
    args, train_args = parse_args(sys.argv[1:] if argv is None else argv)
    seeds = list(range(args.seed_base, args.seed_base + args.seeds))
    checkouts = {"this": ROOT}
    if args.against:
        checkouts = {"against": Path(args.against).resolve(), "this": ROOT}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="time_to_solve_") as tmp:
        root = Path(args.runs_dir) if args.runs_dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        runs: dict[str, list[dict]] = {name: [] for name in checkouts}
        for seed in seeds:
            for name, checkout in checkouts.items():
                try:
                    where = root / name if args.against else root
                    run = train_one(seed, where / f"seed_{seed}", train_args, checkout)
                except KeyboardInterrupt:
                    print(f"interrupted during seed {seed}; no results written", file=sys.stderr)
                    return 130
                runs[name].append(run)
                state = run.get("error") or (
                    f"solved at {run['steps_to_solve']:,d} steps, {run['time_to_solve_s']:.1f} s"
                    if run["solved"] else f"not solved in {run['total_env_steps']:,d} steps")
                print(f"{name} seed {seed}: {state}, command {run.get('command_s', 0):.1f} s",
                      file=sys.stderr, flush=True)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "bench_wall_time_s": round(time.time() - started, 1),
        **aggregate(runs["this"], train_args),
    }
    if args.against:
        other = aggregate(runs["against"], train_args)
        result["against"] = {"dir": str(checkouts["against"]), **other}
        result["ratio_time_to_solve"] = ratio(result["median_time_to_solve_s"],
                                              other["median_time_to_solve_s"])
        result["ratio_command"] = ratio(result["median_command_s"], other["median_command_s"])
        print(f"--- {checkouts['against']}\n{report(other)}\n--- this checkout")
    print(report(result))
    if args.against:
        print(f"ratio (this / against): time to solve {show(result['ratio_time_to_solve'])}, "
              f"command {show(result['ratio_command'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.smoke:
        missing = check_fields(result)
        if missing:
            print(f"smoke check failed: missing fields {', '.join(missing)}", file=sys.stderr)
            return 1
    return 1 if result["failed_seeds"] else 0


if __name__ == "__main__":
    sys.exit(main())
