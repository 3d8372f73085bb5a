"""`fastdqn tune`: hyperparameter search with Optuna, each trial a population of agents.

A trial's configuration (train's own settings, with the searched ones drawn by the sampler)
trains on --seeds (default 1-3) as one population, and is scored by the objective the user
picks over those seeds: the env steps to solve (minimized; an unsolved seed counts as the
budget times 2 - final / target, so closer misses rank better) or the final evaluation's mean
return (maximized). Wall-clock seconds are no
objective: they swing +-30% on a shared machine. Up to --concurrent trials train at once, all
of their agents in one population (each agent has its own settings, so trials can differ in
anything but the env and the vector env); TPE's `constant_liar` keeps concurrent trials from
drawing the same point. The pruner reads the evaluation curve: after each evaluation a trial
reports the mean over its seeds of their latest screening returns, and a trial the pruner
stops ends there (its runs are stopped, the trial PRUNED).

The study lives in the storage (`--storage sqlite:///tune.db --study NAME`): the same command
again adds --trials more to it. Ctrl-C stops cleanly: completed trials stay, the running ones
are marked FAIL (not left RUNNING). optuna-dashboard reads the file.

The search space is a TOML file of `[tune.NAME]` tables (`low`, `high`, optional `log` and
`step`; or `choices`), or DEFAULT_SPACE. The space is data: each name must be a setting that
a trial may change, and every value is coerced and checked as the setting's own.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastdqn.config.coerce import show_value
from fastdqn.config.files import load_toml_table, make_config
from fastdqn.config.settings import Config
from fastdqn.errors import ConfigError
from fastdqn.runtime.population import check_population, member_config, train_agents
from fastdqn.runtime.run import Signals
from fastdqn.runtime.train import settings_of

INSTALL = 'pip install "fastdqn[tune]"'
OBJECTIVES = {"steps": "minimize", "final": "maximize"}
"""--objective: env steps to solve (an unsolved seed: between --total-timesteps and twice it,
by its final evaluation's shortfall; `trial_score`), or the final evaluation's mean return."""
FIXED = ("algo", "env_id", "vector", "num_workers", "env_timeout", "seed", "seeds", "device",
         "run_dir", "resume", "overwrite", "progress", "total_timesteps", "total_episodes",
         "actors", "ray_address", "wandb", "wandb_group", "target_return", "eval_every",
         "eval_episodes", "solve_episodes", "eval_envs", "eval_epsilon", "num_threads",
         "save_buffer")
"""Settings a trial may not change: the population's shared vector env, the budget and the
yardstick every trial is scored by, and where and how the run is kept."""
MAX_CHOICES = 64
MAX_PARAMS = 64

WARMUP = 5
"""The pruner judges no trial before a 1/WARMUP of the budget: a 10-episode screen at 10 000
LunarLander steps says nothing of the end (a study pruned 9 trials of 14 there, 2026-12-07)."""

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"low": 1e-4, "high": 3e-3, "log": True},
    "gamma": {"low": 0.95, "high": 0.999},
    "tau": {"low": 1e-3, "high": 5e-2, "log": True},
    "batch_size": {"choices": [64, 128, 256]},
    "hidden": {"choices": [[64, 64], [128, 128], [256, 256]]},
    "learning_starts": {"low": 500, "high": 10_000, "log": True},
    "train_every": {"low": 1, "high": 8},
    "eps_decay_steps": {"low": 5_000, "high": 100_000, "log": True},
}
"""The space searched without --space: DQN's learning rate, discount, soft-update rate, batch,
network, warm-up, update ratio and exploration length."""


@dataclass(frozen=True)
class Param:
    """One searched setting: a float or int range (`log`, `step`), or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            shown = [show_value(c) for c in self.choices]
            return self.choices[shown.index(trial.suggest_categorical(self.name, shown))]
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def value_of(self, stored: Any) -> Any:
        """The setting's value of a parameter as the study stores it."""
        if self.choices is not None:
            shown = [show_value(c) for c in self.choices]
            return self.choices[shown.index(stored)] if stored in shown else stored
        return stored


def parse_space(table: dict[str, Any], where: str) -> list[Param]:
    """The `[tune.NAME]` tables as Params, each checked: a setting a trial may change, a range
    (low < high, both the setting's type; log only above 0) or 1..MAX_CHOICES choices, every
    value one the setting takes."""
    from fastdqn.config.settings import check_value, field_names

    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{where}: no [tune.NAME] tables; write e.g. [tune.lr] low = 1e-4, "
                          "high = 3e-3, log = true")
    if len(table) > MAX_PARAMS:
        raise ConfigError(f"{where} searches {len(table)} settings; at most {MAX_PARAMS}")
    types = {f.name: str(f.type) for f in dataclasses.fields(Config)}
    params = []
    for raw_name, spec in table.items():
        name = str(raw_name).replace("-", "_")
        if name not in field_names():
            raise ConfigError(f"{where}: [tune.{raw_name}] is no setting; see `fastdqn train "
                              "--help`")
        if name in FIXED:
            raise ConfigError(f"{where}: [tune.{name}] cannot be searched (a trial's {name} is "
                              "fixed by the tune command); set it as a flag instead")
        if not isinstance(spec, dict) or not (set(spec) <= {"low", "high", "log", "step",
                                                             "choices"}):
            raise ConfigError(f"{where}: [tune.{name}] takes low, high, log, step or choices")
        if "choices" in spec:
            choices = spec["choices"]
            if set(spec) != {"choices"} or not isinstance(choices, list) or not (
                    1 <= len(choices) <= MAX_CHOICES):
                raise ConfigError(f"{where}: [tune.{name}] choices must be a list of 1 to "
                                  f"{MAX_CHOICES} values, alone")
            values = tuple(_value(check_value, name, c, where) for c in choices)
            params.append(Param(name, choices=values))
            continue
        kind = types[name]
        if kind not in ("int", "float") or "low" not in spec or "high" not in spec:
            raise ConfigError(f"{where}: [tune.{name}] needs low and high (a number setting) "
                              "or choices")
        low, high = (_value(check_value, name, spec[k], where) for k in ("low", "high"))
        log, step = spec.get("log", False), spec.get("step")
        if not isinstance(log, bool) or not low < high or (log and low <= 0) or (
                step is not None and (log or not isinstance(step, (int, float))
                                      or isinstance(step, bool) or not 0 < step <= high - low)):
            raise ConfigError(f"{where}: [tune.{name}] needs low < high, log = true or false "
                              "(log only above 0, without step), step in (0, high - low]")
        if kind == "int" and step is not None and step != int(step):
            raise ConfigError(f"{where}: [tune.{name}] is a whole number; its step must be too")
        params.append(Param(name, low, high, log, step))
    return params


def _value(check, name: str, value: Any, where: str) -> Any:
    try:
        return check(name, value)
    except ConfigError as e:
        raise ConfigError(f"{where}: [tune.{name}]: {e}") from None


def load_space(path: str | None) -> list[Param]:
    """--space FILE's params, or DEFAULT_SPACE's."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "the default space")
    return parse_space(load_toml_table(path, "tune"), path)


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError(f"fastdqn tune needs Optuna: {INSTALL}") from None
    return optuna


@dataclass
class TuneResult:
    study: Any
    best: dict | None
    out: Path | None
    added: int
    seconds: float
    signal: int | None


def trial_score(objective: str, summaries: list[dict], budget: int) -> float:
    """A trial's value over its seeds' summaries: the mean steps to solve, or the mean final
    evaluation (a seed without one: -inf). For steps, an unsolved seed scores between the
    budget and twice it, by how far its final evaluation fell short of the target:
    budget x (2 - final / target), the fraction clamped to [0, 1]. It ranks behind every seed
    that solved, and the sampler still sees which unsolved configuration came closer."""
    if objective == "steps":
        return float(sum(_steps(s, budget) for s in summaries) / len(summaries))
    finals = [s["final_eval"]["mean"] if s.get("final_eval") else -math.inf for s in summaries]
    return float(sum(finals) / len(finals))


def _steps(summary: dict, budget: int) -> float:
    if summary.get("solved"):
        return float(summary["steps_to_solve"])
    target, final = summary.get("target_return"), summary.get("final_eval")
    if not target or target <= 0 or not final:
        return 2.0 * budget
    return budget * (2.0 - min(1.0, max(0.0, final["mean"] / target)))


class Pruning:
    """The pruner's view of the running trials: after an evaluation, each trial reports the
    mean over its seeds of their latest screening returns at that step (negated for the steps
    objective, which is minimized: a higher return is a better curve either way)."""

    def __init__(self, trials: dict[int, Any], keys: dict[str, int], sign: float) -> None:
        self.trials, self.keys, self.sign = trials, keys, sign
        self.reported: dict[int, int] = {}
        self.pruned: set[int] = set()

    def __call__(self, latest: dict[str, dict]) -> set[str]:
        by_trial: dict[int, list[dict]] = {}
        for key, entry in latest.items():
            by_trial.setdefault(self.keys[key], []).append(entry)
        stop = set()
        for number, entries in by_trial.items():
            step = max(e["step"] for e in entries)
            if number in self.pruned or self.reported.get(number, -1) >= step:
                continue
            if len(entries) < sum(1 for n in self.keys.values() if n == number):
                continue  # a seed has not evaluated yet
            self.reported[number] = step
            trial = self.trials[number]
            trial.report(self.sign * sum(e["mean"] for e in entries) / len(entries), step)
            if trial.should_prune():
                self.pruned.add(number)
                stop |= {k for k, n in self.keys.items() if n == number}
        return stop


def tune(base: Config, params: list[Param], *, trials: int, storage: str | None, study: str,
         objective: str = "steps", concurrent: int = 1, out: str | None = None,
         pruner: str = "median", sampler_seed: int | None = None,
         log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> TuneResult:
    """Add `trials` trials to the study, `concurrent` at a time, each trained as a population
    of `base.seeds`; write the best configuration as a TOML preset to `out`."""
    optuna = import_optuna()
    from optuna.trial import TrialState

    seeds = base.population()
    base = settings_of(base, {})  # --vector auto made the backend it picks, as train's
    # memory for every agent of `concurrent` trials at once
    env, device = check_population(dataclasses.replace(base, seeds=f"0-{concurrent * len(seeds) - 1}"))
    root = Path(base.run_dir)
    study_obj = optuna.create_study(
        storage=storage, study_name=study, direction=OBJECTIVES[objective], load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=True),
        pruner=(optuna.pruners.MedianPruner(n_startup_trials=5,
                                            n_warmup_steps=base.total_timesteps // WARMUP)
                if pruner == "median" else optuna.pruners.NopPruner()))
    _check_study(study_obj, objective, base)
    start, added, sign = time.perf_counter(), 0, (-1.0 if objective == "steps" else 1.0)
    with Signals() as signals:
        while added < trials and signals.received is None:
            batch = [study_obj.ask() for _ in range(min(concurrent, trials - added))]
            cfgs, keys, running = {}, {}, {}
            for trial in batch:
                try:
                    cfg = trial_config(base, params, trial)
                except ConfigError as e:
                    log(f"trial {trial.number}: {e}; marked failed")
                    study_obj.tell(trial, state=TrialState.FAIL)
                    continue
                running[trial.number] = trial
                for k in seeds:
                    key = f"trial {trial.number} seed {k}"
                    cfgs[key] = member_config(cfg, k, root / f"trial-{trial.number}")
                    keys[key] = trial.number
            added += len(batch)
            if not running:
                continue
            pruning = Pruning(running, keys, sign)
            try:
                members, _ = train_agents(base, cfgs, env, device, signals, on_eval=pruning)
            except BaseException:
                for trial in running.values():
                    study_obj.tell(trial, state=TrialState.FAIL)
                raise
            for number, trial in running.items():
                mine = [m for m in members if keys[m.key] == number]
                summaries = [m.result.summary for m in mine if m.result is not None]
                if signals.received is not None or len(summaries) < len(mine):
                    study_obj.tell(trial, state=TrialState.FAIL)
                    log(f"trial {number}: interrupted or diverged; marked failed")
                elif number in pruning.pruned:
                    study_obj.tell(trial, state=TrialState.PRUNED)
                    log(f"trial {number}: pruned at {pruning.reported[number]:,d} steps")
                else:
                    value = trial_score(objective, summaries, base.total_timesteps)
                    study_obj.tell(trial, value)
                    log(f"trial {number}: {objective} {value:,.1f}  {trial.params}")
    best = best_config(study_obj, params, base)
    written = None
    if best is not None and out is not None:
        written = write_preset(Path(out), best, study_obj, objective)
    return TuneResult(study_obj, best, written, added, time.perf_counter() - start,
                      signals.received)


def _check_study(study, objective: str, base: Config) -> None:
    """A study continued from storage must be the same search: its direction and env."""
    want = OBJECTIVES[objective]
    got = study.direction.name.lower()
    if got != want:
        raise ConfigError(f"study {study.study_name!r} {got}s its objective; --objective "
                          f"{objective} {want}s: pass the study's objective or another --study")
    env = study.user_attrs.get("env_id")
    if env is None:
        study.set_user_attr("env_id", base.env_id)
        study.set_user_attr("objective", objective)
    elif env != base.env_id:
        raise ConfigError(f"study {study.study_name!r} tunes {env}, not {base.env_id}; pass "
                          f"--env {env} or another --study")


def trial_config(base: Config, params: list[Param], trial) -> Config:
    """The base settings with this trial's draws, validated as train's are."""
    values = {p.name: p.suggest(trial) for p in params}
    return make_config(**{**base.to_dict(), **values})


def best_config(study, params: list[Param], base: Config) -> dict | None:
    """The best completed trial's settings (base + its parameters), or None."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    best = study.best_trial
    by_name = {p.name: p for p in params}
    values = {k: (by_name[k].value_of(v) if k in by_name else v) for k, v in best.params.items()}
    return {"trial": best.number, "value": best.value, "params": values,
            "settings": {**base.to_dict(), **values}}


PRESET_SKIP = ("seed", "seeds", "run_dir", "resume", "overwrite", "progress", "wandb",
               "wandb_group")


def write_preset(path: Path, best: dict, study, objective: str) -> Path:
    """The best configuration as a TOML preset `fastdqn train --config FILE` takes: every
    setting away from its default, the searched ones commented with the trial's score."""
    defaults = Config()
    lines = [f"# fastdqn tune: study {study.study_name!r}, best of "
             f"{len(study.trials)} trials: trial {best['trial']}, {objective} "
             f"{best['value']:,.2f}"]
    for name, value in best["settings"].items():
        if name in PRESET_SKIP:
            continue
        if name not in best["params"] and value == _plain(getattr(defaults, name)):
            continue
        lines.append(f"{name} = {_toml(value)}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value)
    return str(value)


def trials_table(study) -> str:
    """Every trial of the study: number, state, value, parameters."""
    rows = [["trial", "state", "value", "params"]]
    for t in study.trials:
        value = "" if t.value is None else f"{t.value:,.2f}"
        rows.append([str(t.number), t.state.name, value,
                     " ".join(f"{k}={_short(v)}" for k, v in t.params.items())])
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(" ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + " " + r[3]
                     for r in rows)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
