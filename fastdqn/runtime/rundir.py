"""The run directory: where a run's files go, and the rules that keep two runs from mixing in
one (an existing run needs --resume or --overwrite, and --overwrite deletes only what fastdqn
wrote there)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from fastdqn.config.settings import Config
from fastdqn.errors import ConfigError

RUN_FILES = ("checkpoint.pt", "best.pt", "summary.json", "returns.png", "compare.png")
"""The files fastdqn writes into a run dir, besides TensorBoard's `events.out.tfevents.*` and
the `.NAME.*.tmp` files an interrupted atomic write leaves."""


def default_run_dir(cfg: Config) -> Path:
    """runs/<env>__<seed>__<time>; a population's runs/<env>__seeds-<seeds>__<time>."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    who = f"seeds-{cfg.seeds.replace(',', '_').replace(' ', '')}" if cfg.seeds else cfg.seed
    return Path("runs") / f"{cfg.env_id.replace('/', '_')}__{who}__{stamp}"


def resume_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint.pt that --resume continues from, or a one-line error if there is none
    (which, for a run stopped before its first checkpoint, says that it can only start again)."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        if _holds_run_files(Path(run_dir)):
            raise ConfigError(f"--resume: {run_dir} holds a run with no checkpoint.pt (it stopped "
                              "before its first save), so it cannot be resumed; start it again "
                              "with --overwrite instead of --resume, or pick another --run-dir")
        raise ConfigError(f"--resume: no checkpoint.pt in {run_dir}; "
                          "check --run-dir or start without --resume")
    return path


_TEMP_NAME = re.compile(rf"\.(?:{'|'.join(map(re.escape, RUN_FILES))})\.[a-z0-9_]+\.tmp")
"""The temp file of an atomic write of a run file (`tempfile.mkstemp`'s `.NAME.XXXXXXXX.tmp`)."""


def _is_run_file(p: Path) -> bool:
    name = p.name
    if not p.is_file() or p.is_symlink():
        return False
    return (name in RUN_FILES or name.startswith("events.out.tfevents.")
            or _TEMP_NAME.fullmatch(name) is not None)


def remove_temp_run_files(run_dir: Path) -> list[Path]:
    """Delete the temp files that a kill -9 left from atomic writes of fastdqn's own files (a
    resume tidies with it): a user's `.notes.tmp` in the run dir is not one and stays."""
    stale = [p for p in run_dir.iterdir() if _TEMP_NAME.fullmatch(p.name) and _is_run_file(p)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _holds_run_files(run_dir: Path) -> bool:
    """Has a run written into `run_dir`: any file fastdqn writes there, TensorBoard's event
    files of a run stopped before its first checkpoint included?"""
    return run_dir.is_dir() and any(_is_run_file(p) for p in run_dir.iterdir())


def remove_run_files(run_dir: Path) -> None:
    """--overwrite: delete what fastdqn wrote in `run_dir` and nothing else.

    Anything else there (a project's files, a user's notes, a folder) makes it refuse, naming
    them, before a single file is deleted: `--run-dir . --overwrite` must never wipe a project.
    """
    foreign = sorted(p.name for p in run_dir.iterdir() if not _is_run_file(p))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(f"--overwrite: {run_dir} also holds files fastdqn did not write ({shown});"
                          " move them away or pick another --run-dir")
    for p in run_dir.iterdir():
        p.unlink()


def prepare_run_dir(cfg: Config) -> Path:
    """The run dir, refusing to mix two runs: an existing run needs --resume or --overwrite.

    A run is any file fastdqn writes there: one stopped before its first checkpoint left only
    TensorBoard's event files, and a new run writing next to them would mix two runs' curves.
    """
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file; pick a directory")
    if cfg.resume:
        resume_checkpoint(run_dir)
    elif _holds_run_files(run_dir):
        if not cfg.overwrite:
            if (run_dir / "checkpoint.pt").exists():
                raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, "
                                  "--overwrite to replace it, or pick another --run-dir")
            raise ConfigError(f"{run_dir} already holds a run with no checkpoint.pt yet (it "
                              "stopped, or is still running, before its first save, so it cannot "
                              "be resumed); pass --overwrite to replace it, or pick another "
                              "--run-dir")
        remove_run_files(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir
