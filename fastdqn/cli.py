"""`fastdqn train` and `fastdqn eval`: thin wrappers over the Python API.

Exit codes: 0 done; 1 training failed (an env crashed or hung, or training diverged: one line
says which); 2 user error (bad flags, values, env or files: one line, before any work starts,
never a traceback); 130 / 143 interrupted by SIGINT / SIGTERM (one line says how to resume).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import sys
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from fastdqn.config.choices import ALGOS
from fastdqn.config.coerce import show_value
from fastdqn.config.files import load_toml, make_config, preset_names
from fastdqn.config.settings import (
    ALGO_DEFAULTS,
    CONDITIONS,
    Config,
    check_episode_seed,
    check_value,
    coerce,
    field_docs,
    field_names,
    reads,
)
from fastdqn.core.checkpoint import (
    check_file_settings,
    file_setting_problem,
    load_checkpoint,
    settings_from_file,
)
from fastdqn.core.clock import process_start
from fastdqn.errors import CheckpointError, ConfigError, RouteFallbackWarning

if TYPE_CHECKING:
    from fastdqn.evaluation.compare import Comparison
    from fastdqn.evaluation.episodes import EvalResult
    from fastdqn.evaluation.policies import Policy
    from fastdqn.runtime.run import TrainResult

SHORT = {"env_id": "--env"}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and flag suggestions."""

    def error(self, message: str):  # type: ignore[override]
        if "unrecognized arguments" in message:
            bad = [b for b in message.split(":", 1)[1].split() if b.startswith("-")]
            known = [s for a in self._actions for s in a.option_strings]
            for a in self._actions:  # the top parser reports its subcommands' flags too
                if isinstance(a, argparse._SubParsersAction):
                    for sp in a.choices.values():
                        known += [s for b in sp._actions for s in b.option_strings]
            hints = []
            for b in bad:
                close = difflib.get_close_matches(b.split("=")[0], known, n=1)
                if close:
                    hints.append(f"{b} (did you mean {close[0]}?)")
                else:
                    hints.append(b)
            if hints:  # values after an unknown flag are its own
                message = f"unknown flags: {', '.join(hints)}"
            else:  # a value after a switch (--progress false) or a word on its own
                stray = [b for b in message.split(":", 1)[1].split() if not b.startswith("-")]
                argv = getattr(self, "argv", [])
                after = [argv[i - 1] for i, b in enumerate(argv) if i and b in stray
                         and argv[i - 1].startswith("--")]
                message = f"unexpected values: {', '.join(stray)}"
                if after:
                    switch = after[0].split("=")[0]
                    switch = "--" + switch[5:] if switch.startswith("--no-") else switch
                    both = f" or --no-{switch[2:]}" if f"--no-{switch[2:]}" in known else ""
                    message += f" (a switch takes no value: {switch}{both})"
        raise SystemExit(_fail(f"{self.prog}: {message}; see {self.prog} --help"))

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """argparse's, keeping the words parsed, so that an error can name the flag before a
        stray value."""
        self.argv = list(sys.argv[1:] if args is None else args)
        return super().parse_args(args, namespace)


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"error: {message}\n")
    return code


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    docs = field_docs()
    for f in fields(Config):
        flag = SHORT.get(f.name, "--" + f.name.replace("_", "-"))
        names = [flag] if f.name not in SHORT else [flag, "--" + f.name.replace("_", "-")]
        per_algo = "".join(f"; {algo}: {show_value(d[f.name])}" for algo, d in ALGO_DEFAULTS.items()
                           if f.name in d)
        row = reads(f.name)
        scope = [] if set(row["algos"]) == set(ALGOS) else [f"--algo {', '.join(row['algos'])} only"]
        scope += [f"with {CONDITIONS[w].scope}" for w in row["when"]]
        only = f" [{'; '.join(scope)}]" if scope else ""
        helptext = f"{docs.get(f.name, '')} (default: {show_value(f.default)}{per_algo}){only}"
        if isinstance(f.default, bool):
            p.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=helptext)
        else:
            p.add_argument(*names, dest=f.name, metavar=f.name.upper(),
                           default=argparse.SUPPRESS, help=helptext)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastdqn", description="Fast DQN on vectorized gymnasium envs.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    t = sub.add_parser("train", help="train an agent (defaults: LunarLander-v3, 16 envs)",
                       description="Train a DQN, PQN or REINFORCE agent. Every setting is a "
                                   "flag; --config takes a preset name or a TOML file. A "
                                   "default shown as 'pqn: X' or 'reinforce: X' is that algo's "
                                   "own, used unless a flag or the preset sets the field. A "
                                   "setting that the run would not read (another algo's, "
                                   "marked [--algo ... only], or one whose condition does not "
                                   "hold) is refused, never ignored.")
    t.add_argument("--config", default=None, metavar="PRESET_OR_TOML",
                   help=f"preset ({', '.join(preset_names()) or 'none'}) or TOML file; a name "
                        "that is a preset means the preset even where a file of that name "
                        "exists (write ./NAME for the file); flags override it")
    _add_config_flags(t)
    e = sub.add_parser("eval", help="evaluate a checkpoint's greedy policy",
                       description="Evaluate a checkpoint's policy on held-out episode seeds: "
                                   "greedy, or epsilon-greedy as the run evaluated it "
                                   "(--epsilon). Flags are checked as train's are.")
    e.add_argument("checkpoint", help="checkpoint.pt or best.pt of a run")
    e.add_argument("--episodes", default=100, help="episodes to play (default: 100)")
    e.add_argument("--seed", default=None,
                   help="episode seed of the first episode; episode j is reset with SEED + j "
                        "(default: the start of the run's held-out TEST stream, episodes that "
                        "neither training nor checkpoint selection played)")
    e.add_argument("--num-envs", default=16, help="envs stepped together (default: 16)")
    e.add_argument("--device", default="cpu",
                   help="device for the network: cpu, cuda, cuda:N, mps or auto (default: cpu)")
    e.add_argument("--env", default=None, metavar="ENV_ID",
                   help="env to evaluate on instead of the checkpoint's, e.g. my_module:MyEnv-v0 "
                        "(a module-qualified id is only imported when named here); its spaces "
                        "must fit the network")
    e.add_argument("--epsilon", default=None,
                   help="probability of a uniformly random action at each step (default: the "
                        "run's --eval-epsilon: 0.05 for Atari ids, 0 otherwise)")
    e.add_argument("--json", action="store_true", help="print the result as one JSON object")
    e.add_argument("--compare", action="store_true",
                   help="also run a random policy and gymnasium's heuristic controller (LunarLander) "
                        "on the same seeds; prints a table and writes a histogram (--plot)")
    e.add_argument("--success-return", default=None, metavar="R",
                   help="the return --compare counts an episode a success at (default: the "
                        "run's --target-return; set it where that target was a stopping rule "
                        "above the env's own bar, e.g. 200 for LunarLander)")
    e.add_argument("--plot", default=None, metavar="FILE",
                   help="where --compare writes its histogram (default: compare.png next to the "
                        "checkpoint)")
    e.add_argument("--gif", default=None, metavar="FILE",
                   help="record the first episode (greedy, or --epsilon) as an animated GIF (no "
                        "display needed)")
    e.add_argument("--render", action="store_true",
                   help="play the episodes in a live window (needs a display; else use --gif)")
    sub.add_parser("presets", help="list the shipped presets")
    _add_report_parser(sub)
    _add_tune_parser(sub)
    return p


def _add_tune_parser(sub) -> None:
    u = sub.add_parser(
        "tune", help="search hyperparameters with Optuna, each trial a population of seeds",
        description="Hyperparameter search with Optuna (TPE, constant_liar; a median pruner on "
                    "the evaluation curve). Each trial trains its configuration on --seeds "
                    "(default 1-3) as one population and scores it by --objective. Train's own "
                    "flags and --config fix what is not searched. The study lives in --storage "
                    "(running the command again adds --trials more); Ctrl-C keeps completed "
                    "trials and marks running ones failed. Needs: " + 'pip install "fastdqn[tune]"')
    u.add_argument("--config", default=None, metavar="PRESET_OR_TOML",
                   help="preset or TOML file of the fixed settings; flags override it")
    u.add_argument("--trials", default="20", help="trials this invocation adds (default: 20)")
    u.add_argument("--storage", default=None,
                   help="Optuna storage URL, e.g. sqlite:///tune.db (default: sqlite:///RUN/"
                        "study.db, RUN being --run-dir)")
    u.add_argument("--study", default="fastdqn", help="study name in the storage (default: "
                                                      "fastdqn)")
    u.add_argument("--objective", default="steps", choices=["steps", "final"],
                   help="steps: mean env steps to solve over the seeds, minimized (an unsolved "
                        "seed counts as --total-timesteps x (2 - final eval / target), the "
                        "fraction clamped to [0, 1]); final: mean final evaluation, maximized "
                        "(default: steps)")
    u.add_argument("--space", default=None, metavar="TOML",
                   help="search space: [tune.NAME] tables with low, high (log, step) or choices "
                        "(default: lr, gamma, tau, batch_size, hidden, learning_starts, "
                        "train_every, eps_decay_steps; see docs/tune.md)")
    u.add_argument("--concurrent", default="1",
                   help="trials trained at once, all their agents in one population (default: 1)")
    u.add_argument("--pruner", default="median", choices=["median", "none"],
                   help="median: stop a trial whose evaluation curve falls below the median of "
                        "earlier trials at the same step, after 5 trials (default); none")
    u.add_argument("--sampler-seed", default=None, help="seed of the TPE sampler (default: "
                                                        "none, a fresh one)")
    u.add_argument("--out", default=None, metavar="TOML",
                   help="where the best configuration goes, as a preset for fastdqn train "
                        "--config (default: RUN/best.toml)")
    _add_config_flags(u)


def _resume_command(run_dir, env_id: str) -> str:
    """The command that continues a run; it names a `module:Env-v0` env again, because resume
    imports no module that only the checkpoint names."""
    env = f" --env {shlex.quote(env_id)}" if ":" in env_id else ""
    return f"fastdqn train --resume --run-dir {shlex.quote(str(run_dir))}{env}"


def _kept(cfg: Config, which: str = "complete") -> str:
    """What a stopped run leaves behind: the last complete checkpoint, if there is one."""
    if (Path(cfg.run_dir) / "checkpoint.pt").exists():
        return (f"the last {which} checkpoint is kept (resume with: "
                f"{_resume_command(cfg.run_dir, cfg.env_id)})")
    return "no checkpoint was written yet"


def checkpoint_env(path: str | os.PathLike, env_id: str) -> str:
    """The env id a checkpoint names, refused if building it would import a module.

    gymnasium imports `module` to build `module:Env-v0`, and importing runs the module's code: a
    file must never choose that (a module placed next to a checkpoint is importable from there).
    Only an id the user names on the command line is imported.
    """
    if ":" not in env_id:
        return env_id
    module = env_id.split(":", 1)[0]
    named = shlex.quote(env_id) if env_id.isprintable() else "MODULE:ENV_ID"
    raise CheckpointError(f"checkpoint {path} names env {env_id!r}, which would import module "
                          f"{module!r} (running its code); a checkpoint never chooses what gets "
                          f"imported: pass --env {named} on the command line if you trust that "
                          "module")


def _train(args: argparse.Namespace) -> int:
    """`fastdqn train`: the settings (a resumed run's from its checkpoint), the run, its line."""
    from fastdqn.errors import EnvError, TrainingDiverged
    from fastdqn.runtime.rundir import default_run_dir
    from fastdqn.runtime.train import train

    explicit = {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}
    if explicit.get("resume") and _holds_population(explicit.get("run_dir", "")):
        return _train_population(_resumed_population(args, explicit))
    if explicit.get("resume"):
        cfg = _resumed_config(args, explicit)
    else:
        cfg = make_config(args.config, **explicit)
    if cfg.population():
        return _train_population(cfg)
    if not cfg.run_dir:  # fixed here so that every message can name it
        cfg.run_dir = str(default_run_dir(cfg))
    try:
        result = train(cfg, started=process_start())
    except (EnvError, TrainingDiverged) as e:
        return _fail(f"{e}; stopped, {_kept(cfg, 'good')}", 1)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        sys.stderr.write(f"interrupted: stopped at once, {_kept(cfg)}\n")
        return 130
    return _ended(cfg, result)


def _holds_population(run_dir: str) -> bool:
    return bool(run_dir) and (Path(run_dir) / "population.json").is_file()


def _resumed_population(args: argparse.Namespace, explicit: dict) -> Config:
    """A resumed population's settings: those of its first agent that is not finished (read
    and checked as a resumed run's are), with the population's seeds and dir."""
    from fastdqn.runtime.population import finished, read_population, seeds_text

    root = Path(explicit["run_dir"])
    seeds = read_population(root)["seeds"]
    todo = [k for k in seeds if not finished(root / f"seed-{k}")] or seeds
    member = {**explicit, "run_dir": str(root / f"seed-{todo[0]}"), "seeds": ""}
    cfg = _resumed_config(args, member)
    cfg.seeds, cfg.run_dir = explicit.get("seeds") or seeds_text(seeds), str(root)
    cfg.validate()
    return cfg


def _tune(args: argparse.Namespace) -> int:
    """`fastdqn tune`: the fixed settings, the space, the study; the trials' table and the
    best configuration's preset."""
    import dataclasses

    from fastdqn.runtime.tune import import_optuna, load_space, trials_table, tune

    import_optuna()  # its absence is one line, before anything is made
    explicit = {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}
    if explicit.get("resume"):
        raise ConfigError("fastdqn tune continues its study by itself: drop --resume")
    explicit.setdefault("seeds", "1-3")
    cfg = make_config(args.config, **explicit)
    trials = _whole_number(args.trials, "--trials", 1, 100_000)
    concurrent = _whole_number(args.concurrent, "--concurrent", 1, 256)
    sampler_seed = (None if args.sampler_seed is None
                    else _whole_number(args.sampler_seed, "--sampler-seed", 0, 2**32 - 1))
    if not cfg.run_dir:
        cfg = dataclasses.replace(cfg, run_dir=str(Path("runs") / f"tune-{args.study}"))
    params = load_space(args.space)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{Path(cfg.run_dir) / 'study.db'}"
    out = args.out if args.out is not None else str(Path(cfg.run_dir) / "best.toml")
    _output(out, "--out", ["toml"])
    try:
        result = tune(cfg, params, trials=trials, storage=storage, study=args.study,
                      objective=args.objective, concurrent=concurrent, out=out,
                      pruner=args.pruner, sampler_seed=sampler_seed)
    except KeyboardInterrupt:
        sys.stderr.write(f"interrupted: stopped at once; running trials marked failed; run the "
                         f"same command to continue study {args.study!r}\n")
        return 130
    print(trials_table(result.study))
    if result.best is None:
        print(f"no trial completed; study {args.study!r} in {storage}")
    else:
        print(f"best: trial {result.best['trial']}, {args.objective} {result.best['value']:,.2f}"
              f"; {result.added} trials added in {result.seconds:.0f} s; preset {result.out} "
              f"(fastdqn train --config {result.out}); study {args.study!r} in {storage}")
    if result.signal is not None:
        sys.stderr.write(f"interrupted; completed trials kept, running ones marked failed; run "
                         f"the same command to continue study {args.study!r}\n")
        return 128 + int(result.signal)
    return 0


def _whole_number(value: str, flag: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} takes a whole number, got {value!r}") from None
    if not low <= n <= high:
        raise ConfigError(f"{flag} must be in {low}..{high}, got {n}")
    return n


def _train_population(cfg: Config) -> int:
    """`fastdqn train --seeds ...`: the population, then one line for it (and the command that
    resumes it after a Ctrl-C)."""
    from fastdqn.runtime.population import population_dir, train_population

    cfg.run_dir = str(population_dir(cfg))
    try:
        result = train_population(cfg, started=process_start())
    except KeyboardInterrupt:
        sys.stderr.write(f"interrupted: stopped at once; resume with: "
                         f"{_resume_command(cfg.run_dir, cfg.env_id)}\n")
        return 130
    s = result.summary
    if result.signal is not None:
        sys.stderr.write(f"interrupted; every agent's checkpoint saved. Resume with: "
                         f"{_resume_command(result.run_dir, cfg.env_id)}\n")
        return 128 + int(result.signal)
    stats = s.get("statistics") or {}
    final = (stats.get("final_return") or {}).get("iqm")
    steps = (stats.get("steps_to_solve") or {}).get("iqm")
    parts = [f"{len(s['seeds'])} agents on {s['env_id']} in {s['wall_time_s']:.1f} s",
             f"solved {s['solved']}"]
    if steps is not None:
        parts.append(f"IQM steps to solve {steps:,.0f}")
    if final is not None:
        parts.append(f"IQM final eval {final:.1f}")
    diverged = [a["seed"] for a in s["agents"] if a.get("diverged")]
    if diverged:
        parts.append(f"diverged: seed {', '.join(map(str, diverged))}")
    print(f"{'; '.join(parts)}; run dir {result.run_dir} (population.json)")
    return 0


def _resumed_config(args: argparse.Namespace, explicit: dict) -> Config:
    """A resumed run's settings: its checkpoint's, checked alone first so that a refusal blames
    the file, not a flag; then the --config file's and the flags on top of them."""
    from fastdqn.runtime.rundir import resume_checkpoint

    run_dir = explicit.get("run_dir", "")
    if not run_dir:
        raise ConfigError("--resume needs --run-dir DIR of the run to continue")
    path = resume_checkpoint(run_dir)
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path} lacks its config; it is damaged or from another program")
    try:  # the file's settings alone first, so that a refusal blames the file, not a flag
        stored = {k: v for k, v in ckpt["config"].items() if k in field_names()}
        typed = next(filter(None, map(file_setting_problem, stored, stored.values())), None)
        if typed:
            raise ConfigError(typed)
        base = {k: coerce(k, v) for k, v in stored.items()}
        base.update({"resume": False, "overwrite": False})
        make_config(**base)
    except ConfigError as e:
        raise CheckpointError(f"{path} holds settings fastdqn refuses ({e}); it is damaged or "
                              "crafted") from None
    chosen = load_toml(args.config) if args.config is not None else {}  # yours to trust
    if "env_id" not in explicit and "env_id" not in chosen:
        checkpoint_env(path, base.get("env_id", Config.env_id))
    given = {**chosen, **explicit}
    base = settings_from_file(base, given)  # never where the run connects
    cfg = make_config(**{**base, **given})
    check_file_settings(path, cfg, set(base) - set(given))
    return cfg


def _ended(cfg: Config, result: TrainResult) -> int:
    """How a run that returned ended, in one line, and its exit code: done (stdout, 0), stopped
    (1) or interrupted (128 + the signal, with the command that resumes it)."""
    s = result.summary
    solved = (f"solved in {s['time_to_solve_s']:.1f} s, {s['steps_to_solve']:,d} steps"
              if s["solved"] else "not solved")
    fe = s["final_eval"]
    evals = f"; eval {fe['mean']:.1f} ± {fe['std']:.1f} ({fe['episodes']} episodes)" if fe else ""
    if s.get("stopped"):
        return _fail(f"{s['stopped']}; stopped at {s['total_env_steps']:,d} steps, "
                     f"{_kept(cfg)}", 1)
    if result.signal is not None:
        sys.stderr.write(f"interrupted at {s['total_env_steps']:,d} steps; checkpoint saved. "
                         f"Resume with: {_resume_command(result.run_dir, cfg.env_id)}\n")
        return 128 + int(result.signal)
    print(f"{s['env_id']}: {s['total_env_steps']:,d} steps in {s['wall_time_s']:.1f} s "
          f"({s['sps']:.0f} SPS), {solved}{evals}; run dir {result.run_dir}")
    return 0


def _output(value: str, flag: str, suffixes: list[str]) -> Path:
    """A file we may write: known format, existing writable folder; checked before any work."""
    path = Path(value)
    if path.is_dir():
        raise ConfigError(f"{flag} {value} is a folder; give a file name")
    if path.suffix.lower().lstrip(".") not in suffixes:
        kind = f"{path.suffix} files" if path.suffix else "files without a suffix"
        ends = [f".{x}" for x in suffixes[:3]]
        ends_in = ends[0] if len(ends) == 1 else f"{', '.join(ends[:-1])} or {ends[-1]}"
        raise ConfigError(f"{flag} {value}: {flag} does not write {kind}; end the name in {ends_in}")
    if not path.parent.is_dir():
        raise ConfigError(f"{flag} {value}: folder {path.parent} does not exist; "
                          "create it or pick another path")
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"{flag} {value}: folder {path.parent} is not writable; "
                          "pick another path")
    return path


@dataclass
class _Report:
    """What `fastdqn eval` prints: its result as one JSON object (--json) or as lines, and notes
    of what it wrote or lacks, which go to stderr under --json, so that stdout stays JSON."""

    out: dict
    lines: list[str]
    notes: list[str] = field(default_factory=list)

    def show(self, as_json: bool) -> None:
        if as_json:
            print(json.dumps(self.out))
            for note in self.notes:
                print(note, file=sys.stderr)
        else:
            print("\n".join(self.lines + self.notes))


def _eval(args: argparse.Namespace) -> int:
    """`fastdqn eval`: every flag checked before any work, the policy loaded, its episodes
    played; then the comparison, the GIF and the histogram, each where asked for."""
    gif = _check_eval_flags(args)
    policy, ckpt, env_id = _eval_policy(args)
    seed, epsilon = _eval_seed_and_epsilon(args, ckpt, env_id)
    target, plot = _compare_settings(args, ckpt) if args.compare else (None, None)
    result = _play(args, policy, env_id, seed, epsilon)
    report = _Report(result.to_dict(), [
        f"{env_id}: mean {result.mean:.2f} ± {result.std:.2f}, min {result.min:.2f}, "
        f"max {result.max:.2f} over {result.episodes} episodes"])
    comparison = (_compare(args, policy, env_id, seed, epsilon, target, report)
                  if args.compare else None)
    if gif is not None:
        _record_gif(policy, env_id, gif, seed, epsilon, report)
    if comparison is not None:
        comparison.plot(plot)
        report.out["plot"] = str(plot)
        report.notes.append(f"wrote {plot}: histogram of the returns")
    report.show(args.json)
    return 0


def _check_eval_flags(args: argparse.Namespace) -> Path | None:
    """eval's flags, each that means what a training setting means checked by that setting's
    rules, before the checkpoint is read; returns the --gif file, if asked for."""
    args.episodes = check_value("eval_episodes", args.episodes, "--episodes")
    args.num_envs = check_value("eval_envs", args.num_envs, "--num-envs")
    if args.epsilon is not None:
        args.epsilon = check_value("eval_epsilon", args.epsilon, "--epsilon")
    if args.seed is not None:
        args.seed = check_episode_seed(args.seed, args.episodes)
    if args.plot and not args.compare:
        raise ConfigError("--plot names the --compare histogram; add --compare or drop --plot")
    if args.success_return is not None:
        if not args.compare:
            raise ConfigError("--success-return is --compare's success bar; add --compare or "
                              "drop --success-return")
        args.success_return = check_value("target_return", args.success_return,
                                          "--success-return")
    return _output(args.gif, "--gif", ["gif"]) if args.gif else None


def _eval_policy(args: argparse.Namespace) -> tuple[Policy, dict, str]:
    """The checkpoint's policy on --device, its checkpoint, and the env it plays (--env, else
    the checkpoint's), whose spaces must fit its network."""
    from fastdqn.core.device import resolve_device
    from fastdqn.evaluation.policies import load_policy

    device = resolve_device(check_value("device", args.device))
    policy, ckpt = load_policy(args.checkpoint, str(device))
    env_id = args.env if args.env is not None else checkpoint_env(args.checkpoint, ckpt["env"]["id"])
    check_fits_env(args.checkpoint, policy.network, env_id)
    return policy, ckpt, env_id


def _eval_seed_and_epsilon(args: argparse.Namespace, ckpt: dict, env_id: str
                           ) -> tuple[int, float]:
    """The first episode's seed (--seed, else the run's TEST stream) and the epsilon it plays
    with (--epsilon, else the run's own --eval-epsilon)."""
    from fastdqn.envs.atari import eval_epsilon
    from fastdqn.evaluation.episodes import eval_seed

    seed = args.seed if args.seed is not None else eval_seed(_run_seed(args.checkpoint, ckpt))
    epsilon = args.epsilon
    if epsilon is None:  # the run's own; a checkpoint from before --eval-epsilon has none
        saved = _run_setting(args.checkpoint, ckpt, "eval_epsilon", "a probability")
        epsilon = eval_epsilon(saved, env_id)
    return seed, epsilon


def _compare_settings(args: argparse.Namespace, ckpt: dict) -> tuple[float | None, Path]:
    """--compare's success threshold (--success-return, else the run's --target-return) and
    the file its histogram goes to (--plot, else compare.png next to the checkpoint), checked
    before any episode."""
    from matplotlib.backend_bases import FigureCanvasBase

    target = (args.success_return if args.success_return is not None else
              _run_setting(args.checkpoint, ckpt, "target_return", "a finite number or none"))
    formats = ["png", "svg", "pdf", *FigureCanvasBase.get_supported_filetypes()]
    plot = _output(args.plot or str(Path(args.checkpoint).parent / "compare.png"), "--plot",
                   list(dict.fromkeys(formats)))
    return target, plot


def _play(args: argparse.Namespace, policy: Policy, env_id: str, seed: int, epsilon: float
          ) -> EvalResult:
    """The --episodes episodes: in a live window (--render) or on --num-envs envs at once."""
    from fastdqn.errors import DisplayError
    from fastdqn.evaluation.episodes import run_episodes
    from fastdqn.evaluation.media import render_episodes

    try:
        if args.render:
            return render_episodes(policy, env_id, args.episodes, seed, epsilon=epsilon)
        return run_episodes(policy, env_id, args.episodes, seed, args.num_envs, epsilon=epsilon)
    except DisplayError as e:
        raise ConfigError(f"--render: {e.problem}; use --gif FILE to record an episode instead"
                          ) from None


def _compare(args: argparse.Namespace, policy: Policy, env_id: str, seed: int, epsilon: float,
             target: float | None, report: _Report) -> Comparison:
    """--compare: a random policy and the heuristic controller on the same seeds; its table
    replaces the report's lines."""
    from fastdqn.evaluation.compare import compare_policies

    comparison = compare_policies(policy, env_id, args.episodes, seed, args.num_envs, target,
                                  epsilon=epsilon)
    report.out.update(comparison.to_dict())
    report.out["success_threshold"] = comparison.threshold
    report.lines = [comparison.table()]
    if comparison.note:
        (report.notes if args.json else report.lines).insert(0, comparison.note)
    return comparison


def _record_gif(policy: Policy, env_id: str, gif: Path, seed: int, epsilon: float,
                report: _Report) -> None:
    """--gif: the first episode, recorded."""
    from fastdqn.evaluation.media import save_gif

    rec = save_gif(policy, env_id, gif, seed, epsilon=epsilon)
    report.out["gif"] = str(rec.path)
    report.notes.append(f"wrote {rec.path}: one greedy episode (seed {seed}), {rec.steps} steps, "
                        f"return {rec.episode_return:.2f}, {rec.frames} frames")


def _run_seed(path: str, ckpt: dict) -> int:
    """The run seed a checkpoint names, checked as --seed is: its TEST stream is eval's default."""
    try:
        return check_value("seed", ckpt["config"]["seed"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its run seed is not one fastdqn takes ({e}); the file is "
                              "damaged or crafted") from None


def _run_setting(path: str, ckpt: dict, name: str, what: str) -> float | None:
    """The run's own setting `name` (--eval-epsilon, the default epsilon; --target-return,
    which --compare's success rates count against), stored as fastdqn writes it and checked by
    that setting's rules: a file that fails them is `what` it should be, damaged or crafted."""
    saved = ckpt["config"].get(name)
    try:
        problem = file_setting_problem(name, saved)
        if problem:
            raise ConfigError(problem)
        return check_value(name, saved)
    except ConfigError:
        raise CheckpointError(f"{path}: its {name} {str(saved)[:20]} is not {what}; the file is "
                              "damaged or crafted") from None


def check_fits_env(path: str, net, env_id: str) -> None:
    """The checkpoint's network (anything with in_dim and n_actions: an MLP, an RBFQNetwork, a
    ConvQNetwork, which must also match the observation's shape) must match its env's spaces
    here (same ids can change shape)."""
    import numpy as np

    from fastdqn.envs.make import probe_env

    obs_space, act_space, _ = probe_env(env_id)
    shape = getattr(net, "obs_shape", None)
    if shape is not None and tuple(shape) != tuple(obs_space.shape):
        raise CheckpointError(f"{path}: its CNN takes observations of shape {list(shape)}, but "
                              f"{env_id} has {list(obs_space.shape)}; the checkpoint is from "
                              "another env")
    in_dim = int(np.prod(obs_space.shape))
    if (net.in_dim, net.n_actions) != (in_dim, int(act_space.n)):
        raise CheckpointError(
            f"{path}: its network takes {net.in_dim} inputs and gives {net.n_actions} actions, "
            f"but {env_id} has {in_dim} observation values and {act_space.n} actions; "
            "the checkpoint is from another env version"
        )


def _add_report_parser(sub) -> None:
    """`fastdqn report`'s flags: run dirs in groups, the bootstrap's seed and size, the files."""
    from fastdqn.evaluation.report import DEFAULT_REPS, DEFAULT_SEED, MAX_REPS, MIN_REPS

    r = sub.add_parser(
        "report", help="statistics over finished runs: mean, median, IQM, 95%% bootstrap CIs",
        description="Per run and per group of runs (and env id): the mean, median and "
                    "interquartile mean of each run's final evaluation and of its steps and "
                    "seconds to solve (over the runs that solved), each with a 95% stratified "
                    "bootstrap CI (rliable; pip install \"fastdqn[report]\"). Unfinished runs "
                    "are skipped with a note. See docs/report.md.")
    r.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help="run dirs of the first group, named after their common folder")
    r.add_argument("--vs", nargs="+", default=[], metavar="RUN_DIR",
                   help="run dirs of a second group, compared side by side with the first: "
                        "fastdqn report runs/rainbow/* --vs runs/default/*")
    r.add_argument("--group", action="append", default=[], metavar="NAME=GLOB",
                   help="a named group of the run dirs GLOB matches (quote it: fastdqn expands "
                        "it); repeat for more groups, e.g. --group rainbow='runs/rainbow-*' "
                        "--group default='runs/default-*'")
    r.add_argument("--json", default=None, metavar="FILE", help="write every number as JSON")
    r.add_argument("--png", default=None, metavar="FILE",
                   help="plot every run's curve (eval mean return vs env steps) with each "
                        "group's mean curve and its 95%% CI band")
    r.add_argument("--seed", default=DEFAULT_SEED,
                   help=f"seed of the bootstrap: the same runs give the same numbers "
                        f"(default: {DEFAULT_SEED})")
    r.add_argument("--reps", default=DEFAULT_REPS,
                   help=f"bootstrap resamples per interval, {MIN_REPS} to {MAX_REPS:,d} "
                        f"(default: {DEFAULT_REPS})")


def _report(args: argparse.Namespace) -> int:
    """`fastdqn report`: flags and output files checked, runs read, statistics, outputs."""
    from fastdqn.evaluation.report import (
        check_reps,
        check_seed,
        group_name,
        load_groups,
        make_report,
        parse_group,
    )

    reps, seed = check_reps(args.reps), check_seed(args.seed)
    json_path = _output(args.json, "--json", ["json"]) if args.json else None
    png_path = _output(args.png, "--png", ["png"]) if args.png else None
    if args.vs and not args.runs:
        raise ConfigError("--vs compares with the run dirs given first; write "
                          "fastdqn report A_DIRS... --vs B_DIRS...")
    specs = [(group_name(args.runs, "runs"), args.runs)] if args.runs else []
    if args.vs:
        name = group_name(args.vs, "vs")
        specs.append((name if name != specs[0][0] else f"{name} (vs)", args.vs))
    specs += [parse_group(g) for g in args.group]
    if not specs:
        raise ConfigError("fastdqn report needs run dirs: fastdqn report RUN_DIR... "
                          "[--vs RUN_DIR...] or --group NAME=GLOB")
    groups, skipped = load_groups(specs)
    report = make_report(groups, skipped, reps, seed)
    wrote = []
    if png_path is not None:  # first: it is the one that can still refuse (too many env ids)
        report.plot(png_path)
        wrote.append(f"wrote {png_path}: every run's curve, each group's mean and 95% CI band")
    if json_path is not None:
        report.write_json(json_path)
        wrote.append(f"wrote {json_path}: every number")
    for note in report.notes():
        print(f"note: {note}", file=sys.stderr)
    print("\n".join([report.table(), *wrote]))
    return 0


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """fastdqn's own warnings (a route that falls back) print as one console line: Python's
    default adds the source line that raised it, which tells a user nothing."""
    if issubclass(category, RouteFallbackWarning):
        return f"warning: {message}\n"
    return _python_warning(message, category, filename, lineno, line)


_python_warning = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = _python_warning


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) and one-line usage errors (2)
        return int(e.code or 0)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "report":
            return _report(args)
        if args.command == "tune":
            return _tune(args)
        if args.command == "presets":
            for name in preset_names():
                print(name)
            return 0
        parser.print_help()
        return 2
    except ConfigError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        kept = "; the last complete checkpoint is kept" if args.command == "train" else ""
        sys.stderr.write(f"interrupted{kept}\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
