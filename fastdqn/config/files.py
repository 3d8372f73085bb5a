"""Where settings come from besides flags: shipped presets and TOML files, each key coerced and
checked as a flag is, and `make_config`, which layers defaults, an algorithm's own defaults, a
file and explicit settings into one validated Config."""

from __future__ import annotations

import difflib
import os
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from fastdqn.config.coerce import brief
from fastdqn.config.limits import MAX_CONFIG_BYTES
from fastdqn.config.settings import ALGO_DEFAULTS, NOISY_DEFAULTS, Config, coerce, field_names
from fastdqn.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def preset_names() -> list[str]:
    """Names of the presets shipped in fastdqn/config/presets/."""
    folder = resources.files("fastdqn.config") / "presets"
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


RENAMED_PRESETS = {
    "pytorch-tutorial": ("lunarlander-notebook", "it is the LunarLander notebooks' configuration, "
                         "not PyTorch's DQN tutorial itself"),
}
"""Old preset names and what they became: a renamed preset is named, never silently missing."""


def _read_config_file(name: str, presets: list[str]) -> str:
    """The text of TOML file `name`, or a one-line ConfigError saying what it is instead."""
    path = Path(name)
    if path.is_dir():
        raise ConfigError(f"config file {name} is a folder; give a TOML file or a preset name "
                          f"({', '.join(presets)})")
    if path.exists() and not path.is_file():
        raise ConfigError(f"config file {name} is not a regular file; give a TOML file")
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"config file {name} is a broken symlink (to {os.readlink(path)}); "
                          "fix the link or give the file itself")
    if not path.is_file():
        hint = (f"; did you mean the preset {path.stem!r} (--config {path.stem})?"
                if path.stem in presets else "; check the path")
        raise ConfigError(f"config file {name} does not exist{hint}")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {name} is over {MAX_CONFIG_BYTES:,d} bytes, which no "
                              "settings file is; check the path")
        return data.decode("utf-8-sig")  # the BOM some editors write is no setting
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {name} is not UTF-8 text (byte {e.start}); TOML files "
                          "are UTF-8: save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"config file {name} cannot be read ({type(e).__name__}); fix the "
                          "file or its permissions") from None


def _read_preset(name: str, presets: list[str]) -> str:
    """The text of shipped preset `name`, or a ConfigError naming what it became or is close to."""
    if name in RENAMED_PRESETS:
        new, why = RENAMED_PRESETS[name]
        raise ConfigError(f"preset {name!r} is now {new!r} ({why}); use --config {new}")
    if name not in presets:
        close = difflib.get_close_matches(name, presets, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown preset {name!r}; {hint}presets: {', '.join(presets)}")
    return (resources.files("fastdqn.config") / "presets" / f"{name}.toml").read_text(encoding="utf-8")


def _parse(text: str, where: str) -> dict[str, Any]:
    """The TOML table of `text`, or a ConfigError saying what is wrong with the file `where`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where} is not valid TOML ({e}); fix the file") from None
    except RecursionError:  # arrays nested thousands deep: tomllib recurses once a level
        raise ConfigError(f"{where} nests arrays or tables too deep for settings; fix the "
                          "file") from None


def _check_keys(raw: dict[str, Any], where: str) -> None:
    """Every key names a setting, once (num-envs and num_envs are one setting: given twice,
    one would be ignored)."""
    unknown = sorted(k for k in raw if k.replace("-", "_") not in field_names())
    if unknown:
        shown = ", ".join(brief(k) if not re.fullmatch(r"[\w-]+", k) else k for k in unknown[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise ConfigError(f"{where} has unknown keys: {shown}{more}; see `fastdqn train --help` "
                          "for the settings")
    spelled: dict[str, str] = {}
    for key in raw:
        name = key.replace("-", "_")
        if name in spelled:
            raise ConfigError(f"{where} sets {name} twice ({spelled[name]} and {key}); keep one")
        spelled[name] = key


def load_toml(name_or_path: str) -> dict[str, Any]:
    """Settings from a shipped preset name or a TOML file path, validated key by key.

    A name that is a preset is the preset, whatever the working folder holds (`--config
    minatar` means the same run everywhere; ./minatar names a file of that name). Anything else
    with a .toml suffix or a folder in it, or naming something that exists, is a path: a file
    is read, a folder refused as one; a bare name is a preset or unknown."""
    names = preset_names()
    if not name_or_path.strip():
        raise ConfigError(f"--config {name_or_path!r} names nothing; give a preset name "
                          f"({', '.join(names)}) or a TOML file, or drop --config")
    path = Path(name_or_path)
    if name_or_path not in names and (path.suffix == ".toml" or path.name != name_or_path
                                      or path.exists() or path.is_symlink()):
        text, where = _read_config_file(name_or_path, names), str(path)
    else:
        text, where = _read_preset(name_or_path, names), f"preset {name_or_path}"
    raw = _parse(text, where)
    _check_keys(raw, where)
    return {k.replace("-", "_"): coerce(k.replace("-", "_"), v) for k, v in raw.items()}


def load_toml_table(path: str, table: str) -> dict[str, Any]:
    """The [`table`] table of TOML file `path` (a search space's [tune.NAME] tables), read as
    a --config file is; a one-line ConfigError if the file holds anything else."""
    text = _read_config_file(path, preset_names())
    raw = _parse(text, path)
    other = sorted(k for k in raw if k != table)
    if other or not isinstance(raw.get(table), dict):
        raise ConfigError(f"{path} holds {', '.join(map(brief, other)) or 'no tables'}; a search "
                          f"space is [{table}.NAME] tables only (settings go in --config or flags)")
    return raw[table]


def make_config(config_file: str | None = None, **overrides: Any) -> Config:
    """Defaults, then the chosen algorithm's defaults (`ALGO_DEFAULTS`) for what is left unset,
    then a preset or TOML file, then explicit overrides; validated. With --noisy, epsilon left
    unset is 0 (`NOISY_DEFAULTS`): the noise explores.

    A Config built directly (`Config(algo="pqn")`) has the dataclass defaults only: build it
    with make_config, or pass settings to `train(...)`, to get an algorithm's own defaults.
    """
    values: dict[str, Any] = {}
    if config_file is not None:  # "" is refused by name, never read as no file
        values.update(load_toml(config_file))
    for k, v in overrides.items():
        if k not in field_names():
            close = difflib.get_close_matches(k, field_names(), n=1)
            hint = f"; did you mean {close[0]!r}" if close else ""
            raise ConfigError(f"unknown setting {k!r}{hint}")
        values[k] = coerce(k, v)
    algo = values.get("algo", Config.algo)
    for k, v in ALGO_DEFAULTS.get(algo, {}).items():
        values.setdefault(k, coerce(k, v))
    if (values.get("noisy") and not values.get("actors")
            and values.get("exploration", Config.exploration) == "egreedy"):
        for k, v in NOISY_DEFAULTS.items():
            values.setdefault(k, v)
    return Config(**values).validate()
