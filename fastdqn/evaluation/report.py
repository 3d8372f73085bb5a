"""`fastdqn report`: claims over several runs, with their uncertainty.

One run's score is one draw: a claim about a method ("rainbow beats the default", "solves in 40k
steps") needs several seeds and an interval. This module reads finished run dirs (any algorithm:
they all write the same summary.json), and per group of runs and env id computes the mean,
median and interquartile mean (IQM) of each run's final evaluation and of its steps and seconds
to solve, each with a 95% stratified bootstrap confidence interval (Agarwal et al. 2021, "Deep
RL at the Edge of the Statistical Precipice"), through the `rliable` package that paper ships.
It prints a table, writes every number as JSON, and plots each run's curve with the mean and its
band. docs/report.md defines every number.

rliable is an optional extra (`pip install "fastdqn[report]"`): it is imported only here, and
only when statistics are computed.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastdqn.core.checkpoint import atomic_write_bytes, atomic_write_json
from fastdqn.errors import ConfigError
from fastdqn.version import __version__

CONFIDENCE = 0.95
DEFAULT_REPS = 2000
"""Bootstrap draws per interval: rliable's own default for performance profiles; its interval
estimates default to 50,000, which is the cap (about 20 s per quantity on two cores)."""
MIN_REPS, MAX_REPS = 100, 50_000
DEFAULT_SEED = 0
MAX_SUMMARY_BYTES = 16 * 2**20
"""summary.json is data: a real one is ~300 bytes per evaluation (16 MiB: ~50,000 of them)."""
MAX_RUNS = 10_000
CURVE_POINTS = 200
"""The common step grid of the mean curve has at most this many points."""
MAX_PANELS = 24
"""--png draws one panel per env id, at most this many."""
RUN_FILES = ("checkpoint.pt", "best.pt", "returns.png")
INSTALL = 'pip install "fastdqn[report]"'
STATISTICS = ("mean", "median", "iqm")


# ---------------------------------------------------------------------------------------------
# Runs: read from summary.json, checked as data
# ---------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """What the report reads from one run's summary.json."""

    run_dir: str
    env_id: str
    algo: str
    total_env_steps: int
    wall_time_s: float
    solved: bool
    steps_to_solve: int | None
    time_to_solve_s: float | None
    target_return: float | None
    final: dict | None
    """The run's last evaluation (step, wall_time_s, kind, mean, std, episodes), or None."""
    steps: np.ndarray
    returns: np.ndarray
    """Each evaluation's step and mean return, in step order (the curve)."""
    diverged: bool = False
    stopped: str | None = None

    def to_dict(self) -> dict:
        return {"run_dir": self.run_dir, "env_id": self.env_id, "algo": self.algo,
                "total_env_steps": self.total_env_steps, "wall_time_s": self.wall_time_s,
                "final_eval": self.final, "solved": self.solved,
                "steps_to_solve": self.steps_to_solve, "time_to_solve_s": self.time_to_solve_s,
                "target_return": self.target_return, "diverged": self.diverged,
                "stopped": self.stopped}


class Unfinished(Exception):
    """A run dir whose run has not finished (no summary.json yet, or interrupted): skipped."""


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _damaged(shown: str, problem: str) -> ConfigError:
    return ConfigError(f"{shown}: summary.json {problem}; it is damaged or not fastdqn's")


def _read_summary(path: Path, shown: str) -> dict:
    """summary.json, read with a byte cap and parsed; one line naming the run dir otherwise."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SUMMARY_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read summary.json ({e.strerror}); check its "
                          "permissions") from None
    if len(raw) > MAX_SUMMARY_BYTES:
        raise _damaged(shown, f"is larger than {MAX_SUMMARY_BYTES // 2**20} MiB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise _damaged(shown, "is not valid JSON") from None
    if not isinstance(data, dict):
        raise _damaged(shown, "is not a JSON object")
    return data


def _check_summary(d: dict, shown: str) -> None:
    """The keys the report reads, with the types run.py writes them."""
    for key, ok, what in (
            ("env_id", lambda v: isinstance(v, str) and 0 < len(v) <= 200, "a string"),
            ("algo", lambda v: isinstance(v, str) and 0 < len(v) <= 50, "a string"),
            ("total_env_steps", _count, "a step count"),
            ("wall_time_s", lambda v: _number(v) and v >= 0, "seconds"),
            ("solved", lambda v: isinstance(v, bool), "true or false"),
            ("steps_to_solve", lambda v: v is None or _count(v), "a step count or null"),
            ("time_to_solve_s", lambda v: v is None or (_number(v) and v >= 0), "seconds or null"),
            ("target_return", lambda v: v is None or _number(v), "a number or null"),
            ("interrupted", lambda v: isinstance(v, bool), "true or false"),
            ("evals", lambda v: isinstance(v, list), "a list")):
        if key not in d:
            raise _damaged(shown, f"lacks {key!r}")
        if not ok(d[key]):
            raise _damaged(shown, f"has {key!r} that is not {what}")
    if d["solved"] and (d["steps_to_solve"] is None or d["time_to_solve_s"] is None):
        raise _damaged(shown, "says solved but gives no steps_to_solve or time_to_solve_s")
    for i, e in enumerate(d["evals"]):
        if not (isinstance(e, dict) and _count(e.get("step")) and _number(e.get("mean"))
                and _count(e.get("episodes")) and _number(e.get("wall_time_s", 0.0))):
            raise _damaged(shown, f"has an evaluation (evals[{i}]) without a step, a finite "
                                  "mean and an episode count")


def _holds_run_files(run_dir: Path) -> bool:
    """Has fastdqn written here (a checkpoint, TensorBoard's events) though no summary yet?"""
    return any(p.name in RUN_FILES or p.name.startswith("events.out.tfevents.")
               for p in run_dir.iterdir())


def load_run(path: str | os.PathLike) -> RunRecord:
    """One run dir (or its summary.json) as a RunRecord.

    Raises ConfigError (one line naming the dir) for what is not a finished fastdqn run and
    cannot become one; Unfinished for a run still in progress or interrupted (a resume finishes
    it), which the report skips with a note.
    """
    shown = str(path)
    run_dir = Path(path)
    if not run_dir.exists():
        raise ConfigError(f"{shown}: no such run dir; check the path")
    if run_dir.is_file():
        if run_dir.name != "summary.json":
            raise ConfigError(f"{shown} is a file, not a run dir; pass the folder "
                              "`fastdqn train --run-dir` wrote")
        run_dir = run_dir.parent
        shown = str(run_dir)
    summary = run_dir / "summary.json"
    if not summary.is_file():
        if (run_dir / "checkpoint.pt").is_file():
            raise Unfinished("no summary.json yet: still running, or stopped before it finished "
                             f"(fastdqn train --resume --run-dir {shown} finishes it)")
        if _holds_run_files(run_dir):
            raise Unfinished("no summary.json yet: still running, or stopped before its first "
                             "checkpoint")
        raise ConfigError(f"{shown} is not a fastdqn run dir (no summary.json); pass the folder "
                          "`fastdqn train --run-dir` wrote")
    d = _read_summary(summary, shown)
    _check_summary(d, shown)
    if d["interrupted"]:
        raise Unfinished(f"interrupted at {d['total_env_steps']:,d} steps (fastdqn train --resume "
                         f"--run-dir {shown} finishes it)")
    evals = sorted(enumerate(d["evals"]), key=lambda ie: (ie[1]["step"], ie[0]))
    by_step = {e["step"]: float(e["mean"]) for _, e in evals}  # a repeated step: the later one
    last = d["evals"][-1] if d["evals"] else None
    final = None if last is None else {
        k: last[k] for k in ("step", "wall_time_s", "kind", "mean", "std", "episodes") if k in last}
    if final is not None and not all(_number(final.get(k, 0.0)) for k in ("std", "wall_time_s")):
        raise _damaged(shown, "has a last evaluation whose std or wall_time_s is not a number")
    if final is not None and not isinstance(final.get("kind", ""), str):
        raise _damaged(shown, "has a last evaluation whose kind is not a string")
    return RunRecord(
        run_dir=shown, env_id=d["env_id"], algo=d["algo"], total_env_steps=d["total_env_steps"],
        wall_time_s=float(d["wall_time_s"]), solved=d["solved"],
        steps_to_solve=d["steps_to_solve"] if d["solved"] else None,
        time_to_solve_s=float(d["time_to_solve_s"]) if d["solved"] else None,
        target_return=None if d["target_return"] is None else float(d["target_return"]),
        final=final, steps=np.array(list(by_step), dtype=np.float64),
        returns=np.array(list(by_step.values()), dtype=np.float64),
        diverged=d.get("diverged") is True,
        stopped=d["stopped"][:200] if isinstance(d.get("stopped"), str) else None)


# ---------------------------------------------------------------------------------------------
# Groups: which run dirs are compared with which
# ---------------------------------------------------------------------------------------------


@dataclass
class Group:
    name: str
    runs: list[RunRecord] = field(default_factory=list)


def parse_group(spec: str) -> tuple[str, list[str]]:
    """--group NAME=GLOB: the name and the paths the glob matches (sorted), never none."""
    name, eq, pattern = spec.partition("=")
    name = name.strip()
    if not eq or not name or not pattern:
        raise ConfigError(f"--group {spec}: write --group NAME=GLOB, e.g. --group "
                          "rainbow='runs/rainbow-*'")
    paths = sorted(glob.glob(os.path.expanduser(pattern)))
    if not paths:
        raise ConfigError(f"--group {spec}: {pattern} matches nothing; check the pattern (quote "
                          "it, so that fastdqn expands it)")
    return name, paths


def group_name(paths: Sequence[str], fallback: str) -> str:
    """A group given by paths is named after their common folder (runs/rainbow for
    runs/rainbow/s1 .. s5; the dir itself for one run)."""
    dirs = [os.path.dirname(p) if os.path.basename(p) == "summary.json" else p for p in paths]
    try:
        common = os.path.commonpath([os.path.normpath(p) for p in dirs])
    except ValueError:  # absolute mixed with relative
        common = ""
    return common if common not in ("", ".") else fallback


def load_groups(specs: Sequence[tuple[str, Sequence[str]]]
                ) -> tuple[list[Group], list[tuple[str, str]]]:
    """Each (name, paths) as a Group of finished runs; the unfinished ones as (path, why).

    A name given twice gathers both lists; a run dir given twice in one group counts once, and
    one in two groups is refused (it would count for both sides of a comparison).
    """
    groups: dict[str, Group] = {}
    owner: dict[str, str] = {}
    skipped: list[tuple[str, str]] = []
    total = sum(len(p) for _, p in specs)
    if total > MAX_RUNS:
        raise ConfigError(f"{total} run dirs given; fastdqn report reads at most {MAX_RUNS:,d}")
    for name, paths in specs:
        group = groups.setdefault(name, Group(name))
        for p in paths:
            try:
                key = str(Path(p).resolve())
            except (OSError, RuntimeError):
                key = p
            if key.endswith(os.sep + "summary.json"):
                key = key[: -len("summary.json") - 1]
            if key in owner:
                if owner[key] != name:
                    raise ConfigError(f"{p} is in both group {owner[key]!r} and group {name!r}; "
                                      "a run counts for one side only")
                continue
            owner[key] = name
            try:
                group.runs.append(load_run(p))
            except Unfinished as e:
                skipped.append((p, str(e)))
    empty = [g.name for g in groups.values() if not g.runs]
    if empty:
        why = f"; {skipped[-1][0]}: {skipped[-1][1]}" if skipped else ""
        raise ConfigError(f"group {empty[0]!r} has no finished run to report{why}")
    return list(groups.values()), skipped


# ---------------------------------------------------------------------------------------------
# Statistics: rliable's aggregates and stratified bootstrap
# ---------------------------------------------------------------------------------------------


def _rliable():
    """rliable's `library` and `metrics`, or one line saying how to install them."""
    try:
        from rliable import library, metrics
    except ImportError:
        raise ConfigError(f"fastdqn report needs the rliable package: {INSTALL}") from None
    except Exception as e:  # arch 7 (rliable caps arch < 8) fails to import under pandas 3
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise ConfigError(f"rliable failed to import ({type(e).__name__}: {first}); {INSTALL} "
                          "installs versions that work together (arch 7 needs pandas < 3)"
                          ) from None
    return library, metrics


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """rliable's StratifiedBootstrap draws its resamples from numpy's global generator (its
    `random_state` argument does not reach them), so the seed goes there, and the caller's
    global state comes back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _bootstrap(scores: np.ndarray, func, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """rliable's point estimates and percentile stratified-bootstrap CI of `func` on the score
    matrix `scores` [runs x tasks (x ...)]: (point, [low, high])."""
    library, _ = _rliable()
    with _seeded(seed):
        point, interval = library.get_interval_estimates(
            {"x": scores}, func, method="percentile", reps=reps,
            confidence_interval_size=CONFIDENCE)
    return np.asarray(point["x"], dtype=np.float64), np.asarray(interval["x"], dtype=np.float64)


@dataclass(frozen=True)
class Stats:
    """Mean, median and IQM of n values, each with its 95% bootstrap CI (low, high)."""

    n: int
    mean: float
    median: float
    iqm: float
    ci: dict[str, tuple[float, float]]

    def to_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "median": self.median, "iqm": self.iqm,
                "ci": {k: list(v) for k, v in self.ci.items()}}


def aggregate(values: Sequence[float], reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED
              ) -> Stats | None:
    """Mean, median and IQM of `values` (one per run) with their CIs, or None for no values.

    The runs are one task's: a [runs x 1] score matrix, so the stratified bootstrap is the
    plain bootstrap over runs. Mean and IQM are rliable's (IQM: scipy's 25% trimmed mean, which
    drops floor(n / 4) values from each end, none below 4 runs: the mean there). The median is
    the runs' own: rliable's `aggregate_median` is the median over tasks of per-task means, which
    for one task is the mean. Each call reseeds, so a number does not move when other groups or
    quantities are added.
    """
    if len(values) == 0:
        return None
    _, metrics = _rliable()
    scores = np.asarray(values, dtype=np.float64).reshape(-1, 1)

    def func(s: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_mean(s), np.median(s), metrics.aggregate_iqm(s)])

    point, interval = _bootstrap(scores, func, reps, seed)
    return Stats(len(values), *map(float, point),
                 ci={k: (float(interval[0, i]), float(interval[1, i]))
                     for i, k in enumerate(STATISTICS)})


@dataclass
class Curve:
    """The runs' evaluation curves on a common step grid, their mean and its 95% CI."""

    steps: np.ndarray
    values: np.ndarray  # [runs x points]
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def to_dict(self) -> dict:
        return {"steps": self.steps.tolist(), "mean": self.mean.tolist(),
                "ci_low": self.low.tolist(), "ci_high": self.high.tolist()}


def common_grid(curves: Sequence[np.ndarray], points: int = CURVE_POINTS) -> np.ndarray:
    """The steps the mean curve is computed at: every step at which some run evaluated, from
    the latest first evaluation (before it some run has none) to the last one; past `points`
    of them, `points` evenly spaced steps over that range instead."""
    start = max(float(s[0]) for s in curves)
    end = max(float(s[-1]) for s in curves)
    steps = np.unique(np.concatenate(curves))
    steps = steps[(steps >= start) & (steps <= end)]
    if len(steps) > points:
        steps = np.unique(np.round(np.linspace(start, end, points)))
    return steps


def mean_curve(runs: Sequence[RunRecord], reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED
               ) -> Curve | None:
    """Each run's curve linearly interpolated onto the common grid and held at its last
    evaluation past it (a run that solved early stopped there, keeping that policy); the mean
    over runs at each step with its percentile bootstrap CI (runs resampled as whole curves)."""
    runs = [r for r in runs if len(r.steps)]
    if not runs:
        return None
    grid = common_grid([r.steps for r in runs])
    values = np.stack([np.interp(grid, r.steps, r.returns) for r in runs])
    point, interval = _bootstrap(values[:, None, :], lambda s: s[:, 0, :].mean(axis=0), reps, seed)
    return Curve(grid, values, point, interval[0], interval[1])


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One group's runs on one env id, and their statistics."""

    group: str
    env_id: str
    runs: list[RunRecord]
    final: Stats | None
    steps: Stats | None
    seconds: Stats | None
    curve: Curve | None

    @property
    def evaluated(self) -> int:
        return sum(r.final is not None for r in self.runs)

    @property
    def solved(self) -> int:
        return sum(r.solved for r in self.runs)

    def to_dict(self) -> dict:
        out = {"group": self.group, "env_id": self.env_id, "runs": len(self.runs),
               "evaluated": self.evaluated, "solved": self.solved}
        for key, stats in (("final_return", self.final), ("steps_to_solve", self.steps),
                           ("seconds_to_solve", self.seconds)):
            out[key] = stats.to_dict() if stats else None
        out["curve"] = self.curve.to_dict() if self.curve else None
        return out


@dataclass
class Report:
    groups: list[Group]
    cells: list[Cell]
    skipped: list[tuple[str, str]]
    reps: int
    seed: int

    @property
    def env_ids(self) -> list[str]:
        return list(dict.fromkeys(c.env_id for c in self.cells))

    def notes(self) -> list[str]:
        """What a reader must know that the numbers do not say: skipped runs, mixed targets."""
        out = [f"skipped {p}: {why}" for p, why in self.skipped]
        for c in self.cells:
            targets = sorted({r.target_return for r in c.runs if r.target_return is not None})
            if len(targets) > 1:
                out.append(f"{c.group} on {c.env_id}: the runs solve at different target returns "
                           f"({', '.join(f'{t:g}' for t in targets)}); their solve statistics "
                           "mix those bars")
            missing = len(c.runs) - c.evaluated
            if missing:
                out.append(f"{c.group} on {c.env_id}: {missing} run(s) made no evaluation and "
                           "count in no final-return statistic")
        return out

    def to_dict(self) -> dict:
        return {
            "version": __version__,
            "method": {"confidence": CONFIDENCE, "bootstrap": "percentile, stratified (rliable)",
                       "reps": self.reps, "seed": self.seed,
                       "iqm": "25% trimmed mean (scipy.stats.trim_mean, as rliable)",
                       "median": "median over runs",
                       "final_eval": "the last entry of each run's summary.json evals",
                       "solve_statistics": "over the runs that solved only"},
            "groups": [{"name": g.name, "run_dirs": [r.run_dir for r in g.runs]}
                       for g in self.groups],
            "runs": [{"group": g.name, **r.to_dict()} for g in self.groups for r in g.runs],
            "skipped": [{"run_dir": p, "reason": why} for p, why in self.skipped],
            "aggregates": [c.to_dict() for c in self.cells],
        }

    def table(self) -> str:
        """The per-run lines, then per env id each quantity with the groups side by side."""
        rows = [["group", "run", "env", "algo", "steps", "final eval", "solved at"]]
        for g in self.groups:
            for r in g.runs:
                rows.append([g.name, r.run_dir, r.env_id, r.algo, f"{r.total_env_steps:,d}",
                             _final_text(r), _solve_text(r)])
        parts = [_columns(rows)]
        for env in self.env_ids:
            cells = [c for c in self.cells if c.env_id == env]
            parts.append(_stats_table(
                f"{env}: final return (each run's last greedy evaluation)", "runs",
                [(c.group, _of(c.evaluated, len(c.runs)), c.final) for c in cells], ".1f"))
            for title, attr, fmt in (("steps to solve", "steps", ",.0f"),
                                     ("seconds to solve", "seconds", ".1f")):
                parts.append(_stats_table(
                    f"{env}: {title}, over the runs that solved", "solved",
                    [(c.group, f"{c.solved}/{len(c.runs)}", getattr(c, attr)) for c in cells],
                    fmt))
        parts.append(f"[low, high]: {CONFIDENCE:.0%} percentile stratified bootstrap CI "
                     f"(rliable), {self.reps:,d} resamples of the runs, seed {self.seed}; IQM: "
                     "interquartile mean")
        return "\n\n".join(parts)

    def plot(self, path: str | os.PathLike | None = None):
        """Every run's curve (thin), each group's mean curve and its 95% CI band, one panel
        per env id; written atomically to `path` (PNG) when given."""
        from matplotlib.figure import Figure

        envs = self.env_ids
        if len(envs) > MAX_PANELS:
            raise ConfigError(f"--png draws one panel per env id, at most {MAX_PANELS}; these runs "
                              f"span {len(envs)}: report fewer envs at a time")
        cols = min(3, len(envs))
        rows = math.ceil(len(envs) / cols)
        fig = Figure(figsize=(6 * cols, 4 * rows), dpi=100, layout="constrained")
        colors = {g.name: f"C{i % 10}" for i, g in enumerate(self.groups)}
        for i, env in enumerate(envs):
            ax = fig.add_subplot(rows, cols, i + 1)
            for c in (c for c in self.cells if c.env_id == env):
                color = colors[c.group]
                for r in c.runs:
                    ax.plot(r.steps, r.returns, color=color, alpha=0.3, linewidth=0.8)
                if c.curve is not None:
                    ax.fill_between(c.curve.steps, c.curve.low, c.curve.high, color=color,
                                    alpha=0.2, linewidth=0)
                    ax.plot(c.curve.steps, c.curve.mean, color=color, linewidth=2,
                            label=f"{c.group} (mean of {len(c.curve.values)} runs, 95% CI)")
            targets = {r.target_return for c in self.cells if c.env_id == env for r in c.runs}
            if len(targets) == 1 and None not in targets:
                ax.axhline(targets.pop(), color="gray", linestyle="--", linewidth=1,
                           label="target return")
            ax.set_title(env)
            ax.set_xlabel("env steps")
            ax.set_ylabel("eval mean return")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
        if path is not None:
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            atomic_write_bytes(path, buf.getvalue())
        return fig

    def write_json(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())


def make_report(groups: Sequence[Group], skipped: Sequence[tuple[str, str]] = (),
                reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED) -> Report:
    """The statistics of every (env id, group): a group's runs on different env ids are never
    pooled (raw returns of two envs are not one scale); env ids in order of first appearance."""
    envs = list(dict.fromkeys(r.env_id for g in groups for r in g.runs))
    cells = []
    for env in envs:
        for g in groups:
            runs = [r for r in g.runs if r.env_id == env]
            if not runs:
                continue
            solved = [r for r in runs if r.solved]
            cells.append(Cell(
                g.name, env, runs,
                final=aggregate([r.final["mean"] for r in runs if r.final is not None], reps, seed),
                steps=aggregate([r.steps_to_solve for r in solved], reps, seed),
                seconds=aggregate([r.time_to_solve_s for r in solved], reps, seed),
                curve=mean_curve(runs, reps, seed)))
    return Report(list(groups), cells, list(skipped), reps, seed)


def check_reps(value: object) -> int:
    """--reps: a whole number of bootstrap resamples within [MIN_REPS, MAX_REPS]."""
    n = _whole(value, "--reps", "2000")
    if not MIN_REPS <= n <= MAX_REPS:
        raise ConfigError(f"--reps {n}: give {MIN_REPS} to {MAX_REPS:,d} bootstrap resamples "
                          f"(fewer make a noisy CI; default {DEFAULT_REPS})")
    return n


def check_seed(value: object) -> int:
    """--seed: numpy's global generator takes 0 .. 2**32 - 1."""
    n = _whole(value, "--seed", "0")
    if not 0 <= n < 2**32:
        raise ConfigError(f"--seed {n}: give a seed from 0 to {2**32 - 1}")
    return n


def _whole(value: object, flag: str, example: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if not text.lstrip("-").isdigit() or len(text) > 12:
        raise ConfigError(f"{flag} {str(value)[:20]}: not a whole number; e.g. {flag} {example}")
    return int(text)


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


def _of(k: int, n: int) -> str:
    return str(n) if k == n else f"{k} of {n}"


def _final_text(r: RunRecord) -> str:
    if r.final is None:
        return "no evaluation"
    f = r.final
    text = f"{f['mean']:.1f}"
    if "std" in f:
        text += f" ± {f['std']:.1f}"
    text += f" ({f['episodes']} ep at {f['step']:,d}{', ' + f['kind'] if f.get('kind') else ''})"
    return text


def _solve_text(r: RunRecord) -> str:
    if r.solved:
        return f"{r.steps_to_solve:,d} steps, {r.time_to_solve_s:.1f} s"
    return "diverged" if r.diverged else (f"stopped: {r.stopped}" if r.stopped else "not solved")


def _estimate(stats: Stats, key: str, fmt: str) -> str:
    low, high = stats.ci[key]
    return f"{getattr(stats, key):{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _stats_table(title: str, count: str, rows: list[tuple[str, str, Stats | None]], fmt: str
                 ) -> str:
    out = [["group", count, "mean [95% CI]", "median [95% CI]", "IQM [95% CI]"]]
    for name, n, stats in rows:
        if stats is None:
            out.append([name, n, "none" if count == "runs" else "none solved", "", ""])
        else:
            out.append([name, n, *(_estimate(stats, k, fmt) for k in STATISTICS)])
    return f"{title}\n{_columns(out)}"


def _columns(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
