"""Same behaviour: two commits of fastdqn train the same seeded CPU runs, and their records match.

A change meant to leave behaviour alone (a re-layout, a refactor) is shown to do so here: each
case trains once per commit (same seed, CPU, `--vector sync`, one torch thread), and its
summary.json (evaluation records included), its episode returns and lengths, and every other
TensorBoard scalar must be byte-identical, wall-clock fields aside. Then the OLD commit's
checkpoints must load with the NEW code: `fastdqn eval` of checkpoint.pt and best.pt gives the
same result under both, and `fastdqn train --resume` of the OLD run dir runs under both and
gives identical records again.

    python bench/same_behaviour.py OLD NEW                  # every case; exit 0 iff all match
    python bench/same_behaviour.py HEAD~1 HEAD --only pqn reinforce --out /tmp/sb

Each commit is `git archive`d into OUT/src/{old,new} and run as `python -m fastdqn` with
PYTHONPATH pointing there, so only the CLI is used and the working tree plays no part.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]

COMMON = ["--seed", "1", "--device", "cpu", "--vector", "sync", "--num-threads", "1", "--no-progress",
          "--log-every", "500"]
"""--log-every 500: the loss and Q statistics, compared too, are written at six points or more."""
CARTPOLE = ["--env", "CartPole-v1", "--total-timesteps", "3000", "--eval-every", "1000",
            "--eval-episodes", "3", "--solve-episodes", "5", "--eval-envs", "4"]
SHORT_EPS = ["--eps-decay-steps", "2000"]
"""The epsilon schedule shortened with the budget: left at 50 000 steps, a 3 000-step run acts at
random throughout and its greedy evaluations barely move."""
CASES: dict[str, list[str]] = {
    "dqn-defaults": CARTPOLE + SHORT_EPS,
    "nstep-per-dueling": CARTPOLE + SHORT_EPS + ["--n-step", "3", "--prioritized", "--dueling",
                                                 "--save-buffer"],
    "learner-reference": CARTPOLE + SHORT_EPS + ["--learner", "reference"],
    "rbf-mountaincar": ["--config", "rbf-mountaincar", "--total-timesteps", "2000", "--eval-every", "1000",
                        "--rbf-fit-steps", "1000", "--eval-episodes", "2", "--solve-episodes", "2"],
    "pqn": CARTPOLE + ["--algo", "pqn", "--num-envs", "8", "--total-timesteps", "3072",
                       "--eval-every", "1024"],
    "reinforce": CARTPOLE + ["--algo", "reinforce", "--num-envs", "4"],
    "minatar-cnn": ["--config", "minatar", "--total-timesteps", "3000", "--learning-starts", "500",
                    "--train-every", "4", "--buffer-size", "5000", "--target-update-interval", "250",
                    "--eval-every", "1000", "--eval-episodes", "2", "--solve-episodes", "2",
                    "--eval-envs", "2"] + SHORT_EPS,
}
"""Each case is shortened to seconds of training that still learns: hundreds of learner updates
(PQN: 192, REINFORCE: one per 4 episodes), two evaluations or more, finished episodes. MinAtar is
its preset (RMSprop, hard target copies, 1 env) with an update every 4 steps, not every step.
--save-buffer puts the replay buffer in one case's checkpoint, so its resume loads it and learns
at once."""

RESUME_EXTRA = 2000
"""Env steps a resumed run trains beyond the OLD run's budget: more than any case's
learning_starts, since a resume without --save-buffer refills the buffer before it learns."""
EVAL_ARGS = ["--episodes", "5", "--seed", "1000", "--num-envs", "4", "--json"]

TIMING_KEYS = {"wall_time_s", "sps", "time_to_solve_s", "stage_us_per_iter"}
"""summary.json fields (at any depth, e.g. each evals[] entry's wall_time_s) that are wall clock."""
TIMING_TAGS = ("time/", "charts/sps")
"""TensorBoard tags that are wall clock: the stage timer and steps per second."""
EPISODE_TAGS = ("charts/episodic_return", "charts/episodic_length")
T = TypeVar("T")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Two commits and where to put the runs; a bad commit or case name is refused (exit 2)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("old", help="the commit before the change (any git revision)")
    p.add_argument("new", help="the commit after it")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="empty or new folder for sources, runs and report.json (default: a new temp folder)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help=f"cases: {', '.join(CASES)}")
    p.add_argument("--jobs", type=int, choices=(1, 2), default=2,
                   help="runs at a time: 2 runs each OLD/NEW pair together, 1 one after the other")
    args = p.parse_args(argv)
    unknown = [n for n in args.only or [] if n not in CASES]
    if unknown:
        p.error(f"unknown case {', '.join(unknown)} (cases: {', '.join(CASES)})")
    for rev in (args.old, args.new):
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            p.error(f"not a commit: {rev}")
    if args.out is not None and Path(args.out).exists() and (
            not Path(args.out).is_dir() or any(Path(args.out).iterdir())):
        p.error(f"--out {args.out} is not an empty folder")
    args.out = Path(args.out or tempfile.mkdtemp(prefix="same_behaviour_")).resolve()
    return args


def unpack(rev: str, dest: Path) -> str:
    """`git archive` the commit into dest; return its full id, having checked that a process
    with PYTHONPATH=dest imports fastdqn from dest (not the venv's editable install)."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", f"{rev}^{{commit}}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    r = subprocess.run([sys.executable, "-c", "import fastdqn; print(fastdqn.__file__)"], cwd=dest.parent,
                       env=env_for(dest), capture_output=True, text=True, check=True)
    if not Path(r.stdout.strip()).resolve().is_relative_to(dest):
        sys.exit(f"error: with PYTHONPATH={dest}, fastdqn is imported from {r.stdout.strip()}")
    return sha


def env_for(src: Path) -> dict[str, str]:
    """The environment of a run: this one, with the archived commit first on the import path."""
    return {**os.environ, "PYTHONPATH": str(src)}


def fastdqn(src: Path, cwd: Path, args: list[str], log: str) -> subprocess.CompletedProcess[str]:
    """`python -m fastdqn ARGS` of the commit in src, in cwd; its output is kept in cwd/log."""
    cwd.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "fastdqn", *args], cwd=cwd, env=env_for(src),
                       capture_output=True, text=True, timeout=1200)
    (cwd / log).write_text(f"$ fastdqn {' '.join(args)}\n# rc {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def failure(r: subprocess.CompletedProcess[str], what: str) -> str | None:
    """None for a run that succeeded; else what failed and the last line it wrote."""
    if r.returncode == 0:
        return None
    lines = (r.stderr or r.stdout).strip().splitlines()
    return f"{what}: rc {r.returncode}: {lines[-1] if lines else '(no output)'}"


def strip_timing(obj: Any) -> Any:
    """A copy of a summary.json value without its wall-clock fields."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def read_scalars(run_dir: Path) -> list[tuple[str, int, float]]:
    """Every scalar (tag, step, value) of the run's TensorBoard event files, in file order (a
    resumed run has two files). The TFRecord framing is read here: length, CRC, payload, CRC."""
    from tensorboard.compat.proto.event_pb2 import Event

    out = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack_from("<Q", data, pos)
            event = Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                value = v.simple_value if v.HasField("simple_value") else v.tensor.float_val[0]
                out.append((v.tag, event.step, value))
    return out


def records(run_dir: Path) -> dict[str, Any]:
    """What must match: summary.json less wall clock, the episodes, the other non-timing scalars."""
    summary = strip_timing(json.loads((run_dir / "summary.json").read_text()))
    scalars = [s for s in read_scalars(run_dir) if not s[0].startswith(TIMING_TAGS)]
    returns = [(step, v) for tag, step, v in scalars if tag == EPISODE_TAGS[0]]
    lengths = [v for tag, _, v in scalars if tag == EPISODE_TAGS[1]]
    episodes = [[step, ret, length] for (step, ret), length in zip(returns, lengths, strict=True)]
    others = [list(s) for s in scalars if s[0] not in EPISODE_TAGS]
    return {"summary": summary, "episodes": episodes, "scalars": others}


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The path of the first value that differs (leaves compared by repr: 1 != 1.0, nan == nan)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'new' if k in b else 'old'}"
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None if len(a) == len(b) else f"{path}: {len(a)} items (old) vs {len(b)} (new)"
    return None if repr(a) == repr(b) else f"{path}: {a!r} (old) vs {b!r} (new)"


def compared(case: str, check: str, old: Any, new: Any) -> dict[str, Any]:
    """One row of the table: how much was compared, and the first difference if any."""
    counts = (f"{len(old['summary'].get('evals', []))} evals, {len(old['episodes'])} episodes, "
              f"{len(old['scalars'])} scalars" if "summary" in old else "1 eval result")
    diff = first_difference(old, new)
    return {"case": case, "check": check, "compared": counts, "identical": diff is None,
            "difference": diff, "error": None}


def error_row(case: str, check: str, error: str) -> dict[str, Any]:
    return {"case": case, "check": check, "compared": "-", "identical": False, "difference": None,
            "error": error}


@dataclass(frozen=True)
class Sides:
    """The two archived commits, the output folder, and whether a pair of runs may overlap."""

    src: dict[str, Path]
    out: Path
    jobs: int

    def both(self, fn: Callable[[str], T]) -> dict[str, T]:
        """fn("old") and fn("new"), at the same time with --jobs 2 (each run is one thread, and
        its results do not depend on timing; only the wall-clock fields, not compared, do)."""
        with ThreadPoolExecutor(self.jobs) as pool:
            futures = {side: pool.submit(fn, side) for side in ("old", "new")}
            return {side: f.result() for side, f in futures.items()}


def train_case(case: str, s: Sides) -> list[dict[str, Any]]:
    """Train the case under OLD and NEW and compare; then load OLD's checkpoints with both."""
    args = ["train", *COMMON, *CASES[case], "--run-dir", "run"]
    runs = s.both(lambda side: fastdqn(s.src[side], s.out / side / case, args, "train.log"))
    errors = [failure(r, f"{side} train") for side, r in runs.items()]
    if any(errors):
        return [error_row(case, "train", "; ".join(e for e in errors if e))]
    old_run = s.out / "old" / case / "run"
    rows = [compared(case, "train", records(old_run), records(s.out / "new" / case / "run"))]
    for ckpt in ("checkpoint.pt", "best.pt"):
        if (old_run / ckpt).is_file():
            rows.append(eval_checkpoint(case, old_run / ckpt, s))
    return rows + [resume(case, old_run, s)]


def eval_checkpoint(case: str, ckpt: Path, s: Sides) -> dict[str, Any]:
    """`fastdqn eval` of one OLD checkpoint by both commits: same seeds, same result."""
    res = s.both(lambda side: fastdqn(s.src[side], s.out / "eval" / side / case,
                                      ["eval", str(ckpt), *EVAL_ARGS], f"{ckpt.stem}.log"))
    errors = [failure(r, f"{side} eval") for side, r in res.items()]
    if any(errors):
        return error_row(case, f"eval {ckpt.name}", "; ".join(e for e in errors if e))
    old, new = (json.loads(res[side].stdout.strip().splitlines()[-1]) for side in ("old", "new"))
    return compared(case, f"eval {ckpt.name}", old, new)


def resume(case: str, old_run: Path, s: Sides) -> dict[str, Any]:
    """`fastdqn train --resume` of a copy of the OLD run dir by each commit, RESUME_EXTRA steps on."""
    total = json.loads((old_run / "summary.json").read_text())["config"]["total_timesteps"]
    args = ["train", "--resume", "--run-dir", "run", "--no-progress",
            "--total-timesteps", str(total + RESUME_EXTRA)]
    for side in ("old", "new"):
        shutil.copytree(old_run, s.out / "resume" / side / case / "run")
    runs = s.both(lambda side: fastdqn(s.src[side], s.out / "resume" / side / case, args, "resume.log"))
    errors = [failure(r, f"{side} resume") for side, r in runs.items()]
    if any(errors):
        return error_row(case, "resume", "; ".join(e for e in errors if e))
    old, new = (records(s.out / "resume" / side / case / "run") for side in ("old", "new"))
    return compared(case, "resume", old, new)


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per check: what was compared, whether it matched, else the first difference."""
    print(f"{'case':<18} {'check':<18} {'compared':<40} {'identical':<9}  first difference / error")
    for r in rows:
        note = r["error"] or r["difference"] or ""
        note = note if len(note) <= 100 else note[:97] + "..."
        same = "yes" if r["identical"] else "NO"
        print(f"{r['case']:<18} {r['check']:<18} {r['compared']:<40} {same:<9}  {note}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    sides = Sides({side: args.out / "src" / side for side in ("old", "new")}, args.out, args.jobs)
    shas = {side: unpack(rev, sides.src[side]) for side, rev in (("old", args.old), ("new", args.new))}
    print(f"old {shas['old']}\nnew {shas['new']}\nout {args.out}", flush=True)
    rows: list[dict[str, Any]] = []
    for case in args.only or CASES:
        case_start = time.perf_counter()
        rows += train_case(case, sides)
        print(f"{case}: {time.perf_counter() - case_start:.0f} s", flush=True)
    print_table(rows)
    ok = all(r["identical"] for r in rows)
    elapsed = round(time.perf_counter() - start, 1)
    report = {"old": shas["old"], "new": shas["new"], "all_identical": ok, "elapsed_s": elapsed,
              "common_args": COMMON, "cases": {c: CASES[c] for c in args.only or CASES},
              "eval_args": EVAL_ARGS, "jobs": args.jobs, "timing_keys": sorted(TIMING_KEYS),
              "timing_tags": list(TIMING_TAGS),
              "rows": rows}
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'all identical' if ok else 'DIFFERENCES'} in {elapsed:.0f} s; report {args.out / 'report.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
