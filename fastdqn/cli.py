"""`fastdqn train` and `fastdqn eval`: thin wrappers over the Python API.

Exit codes: 0 done; 1 training failed (an env crashed or hung, or training diverged: one line
says which); 2 user error (bad flags, values, env or files: one line, before any work starts,
never a traceback); 130 / 143 interrupted by SIGINT / SIGTERM (one line says how to resume).
"""

from __future__ import annotations

import argparse
import difflib
import json
import shlex
import sys
from dataclasses import fields

from .checkpoint import CheckpointError, load_checkpoint
from .config import (
    Config,
    ConfigError,
    coerce,
    field_docs,
    field_names,
    load_toml,
    make_config,
    preset_names,
)

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
            message = f"unknown flags: {', '.join(hints)}"
        raise SystemExit(_fail(f"{self.prog}: {message}; see {self.prog} --help"))


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"error: {message}\n")
    return code


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    docs = field_docs()
    for f in fields(Config):
        flag = SHORT.get(f.name, "--" + f.name.replace("_", "-"))
        names = [flag] if f.name not in SHORT else [flag, "--" + f.name.replace("_", "-")]
        helptext = f"{docs.get(f.name, '')} (default: {_show(f.default)})"
        if isinstance(f.default, bool):
            p.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=helptext)
        else:
            p.add_argument(*names, dest=f.name, metavar=f.name.upper(),
                           default=argparse.SUPPRESS, help=helptext)


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastdqn", description="Fast DQN on vectorized gymnasium envs.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    t = sub.add_parser("train", help="train an agent (defaults: LunarLander-v3, 16 envs)",
                       description="Train a DQN agent. Every setting is a flag; "
                                   "--config takes a preset name or a TOML file.")
    t.add_argument("--config", default=None, metavar="PRESET_OR_TOML",
                   help=f"preset ({', '.join(preset_names()) or 'none'}) or TOML file; "
                        "flags override it")
    _add_config_flags(t)
    e = sub.add_parser("eval", help="evaluate a checkpoint's greedy policy",
                       description="Greedy evaluation of a checkpoint on fresh seeds.")
    e.add_argument("checkpoint", help="checkpoint.pt or best.pt of a run")
    e.add_argument("--episodes", type=int, default=100, help="episodes to play (default: 100)")
    e.add_argument("--seed", type=int, default=None,
                   help="seed of the first episode (default: the run's eval seeds)")
    e.add_argument("--num-envs", type=int, default=16, help="envs stepped together")
    e.add_argument("--device", default="cpu", help="device for the network (default: cpu)")
    e.add_argument("--json", action="store_true", help="print the result as one JSON object")
    sub.add_parser("presets", help="list the shipped presets")
    return p


def _resume_command(run_dir) -> str:
    return f"fastdqn train --resume --run-dir {shlex.quote(str(run_dir))}"


def _kept(run_dir: str, which: str = "complete") -> str:
    """What a stopped run leaves behind: the last complete checkpoint, if there is one."""
    from pathlib import Path

    if (Path(run_dir) / "checkpoint.pt").exists():
        return (f"the last {which} checkpoint is kept (resume with: "
                f"{_resume_command(run_dir)})")
    return "no checkpoint was written yet"


def _train(args: argparse.Namespace) -> int:
    from .envs import EnvError
    from .trainer import TrainingDiverged, default_run_dir, train

    explicit = {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}
    if explicit.get("resume"):
        from pathlib import Path

        run_dir = explicit.get("run_dir", "")
        if not run_dir:
            raise ConfigError("--resume needs --run-dir DIR of the run to continue")
        path = Path(run_dir) / "checkpoint.pt"
        if not path.exists():
            raise ConfigError(f"--resume: no checkpoint.pt in {run_dir}; "
                              "check --run-dir or start without --resume")
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt.get("config"), dict):
            raise CheckpointError(f"{path} lacks its config; it is damaged or from another program")
        base = {k: coerce(k, v) for k, v in ckpt["config"].items() if k in field_names()}
        base.update({"resume": False, "overwrite": False})
        if args.config:
            base.update(load_toml(args.config))
        cfg = make_config(**{**base, **explicit})
    else:
        cfg = make_config(args.config, **explicit)
    if not cfg.run_dir:  # fixed here so that every message can name it
        cfg.run_dir = str(default_run_dir(cfg))
    try:
        result = train(cfg)
    except (EnvError, TrainingDiverged) as e:
        return _fail(f"{e}; stopped, {_kept(cfg.run_dir, 'good')}", 1)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        sys.stderr.write(f"interrupted: stopped at once, {_kept(cfg.run_dir)}\n")
        return 130
    s = result.summary
    solved = (f"solved in {s['time_to_solve_s']:.1f} s, {s['steps_to_solve']:,d} steps"
              if s["solved"] else "not solved")
    fe = s["final_eval"]
    evals = f"; eval {fe['mean']:.1f} ± {fe['std']:.1f} ({fe['episodes']} episodes)" if fe else ""
    if result.signal is not None:
        sys.stderr.write(f"interrupted at {s['total_env_steps']:,d} steps; checkpoint saved. "
                         f"Resume with: {_resume_command(result.run_dir)}\n")
        return 128 + int(result.signal)
    print(f"{s['env_id']}: {s['total_env_steps']:,d} steps in {s['wall_time_s']:.1f} s "
          f"({s['sps']:.0f} SPS), {solved}{evals}; run dir {result.run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import eval_seed, load_policy, run_episodes
    from .trainer import resolve_device

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    device = resolve_device(args.device)
    policy, env = load_policy(args.checkpoint, str(device))
    check_fits_env(args.checkpoint, policy.net, env["id"])
    state = load_checkpoint(args.checkpoint)
    seed = args.seed if args.seed is not None else eval_seed(int(state["config"]["seed"]))
    result = run_episodes(policy, env["id"], args.episodes, seed, args.num_envs)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"{env['id']}: mean {result.mean:.2f} ± {result.std:.2f}, min {result.min:.2f}, "
              f"max {result.max:.2f} over {result.episodes} episodes")
    return 0


def check_fits_env(path: str, net, env_id: str) -> None:
    """The checkpoint's network must match its env's spaces here (same ids can change shape)."""
    import numpy as np

    from .envs import probe_env

    obs_space, act_space, _ = probe_env(env_id)
    in_dim = int(np.prod(obs_space.shape))
    if (net.in_dim, net.n_actions) != (in_dim, int(act_space.n)):
        raise CheckpointError(
            f"{path}: its network takes {net.in_dim} inputs and gives {net.n_actions} actions, "
            f"but {env_id} has {in_dim} observation values and {act_space.n} actions; "
            "the checkpoint is from another env version"
        )


def main(argv: list[str] | None = None) -> int:
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
        if args.command == "presets":
            for name in preset_names():
                print(name)
            return 0
        parser.print_help()
        return 2
    except ConfigError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
