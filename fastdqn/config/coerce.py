"""Values as settings take them: a TOML, CLI or Python value turned into a setting's type, the rules
of one setting that need no other, and a value shown back as a flag takes it.

It knows a setting by its name and its field's type annotation (`kind`, e.g. "tuple[int, ...]"),
never the Config class itself: settings.py builds on it (`Config.validate`, `coerce`), not the
other way round.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from fastdqn.config.choices import CHOICES
from fastdqn.config.limits import (
    MAX_BUFFER_SIZE,
    MAX_ENVS,
    MAX_EVAL_EPISODES,
    MAX_HIDDEN_LAYERS,
    MAX_INT_SETTING,
    MAX_NETWORK_PARAMS,
    MAX_SEED,
    MAX_THREADS,
)
from fastdqn.errors import ConfigError


def flag_name(name: str) -> str:
    """Setting `name`'s flag without its dashes: num_envs -> num-envs."""
    return name.replace("_", "-")


def brief(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def show_value(value: Any) -> str:
    """A setting's value as a flag takes it: layer sizes as 128,128, none for None."""
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or '""'
    return "none" if value is None else str(value)


_KIND_WORDS = {
    "tuple[int, ...]": "layer sizes like 128,128",
    "tuple[float, ...]": "finite numbers like 5,2,1,0.5",
    "float | None": "a finite number or none",
    "bool": "true or false",
    "int": "an integer",
    "float": "a finite number",
    "str": "text",
}
"""Each field type a setting has, as a refusal says what it expected."""


def coerce_as(kind: str, name: str, value: Any) -> Any:
    """`value` turned into `kind`, the type annotation of setting `name`'s field, or a ConfigError
    naming --name: the one coercion path of every setting. A count takes whole numbers only (not
    a bool, not 2.5, not a list), a float setting finite numbers only (no setting means "no
    limit" by inf: each has its own 0 or none for that), layer sizes a list or a comma-separated
    text, never a table."""
    if kind not in _KIND_WORDS:
        raise TypeError(f"setting {name} has type {kind}, which coerce_as does not know")
    try:
        return _convert(kind, value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"--{flag_name(name)}: cannot use {brief(value)} "
                          f"(expected {_KIND_WORDS[kind]})") from None


def _convert(kind: str, value: Any) -> Any:
    """`value` as `kind`; a ValueError or TypeError where it is none."""
    if kind.startswith("tuple["):
        return _sequence(kind, value)
    if kind == "float | None":
        if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
            return None
        return _finite(value)
    if kind == "bool":
        return _truth(value)
    if kind == "int":
        return _whole(value)
    if kind == "float":
        return _finite(value)
    if not isinstance(value, str):
        raise ValueError(value)
    return value


def _sequence(kind: str, value: Any) -> tuple:
    """Layer sizes (tuple[int, ...]; "none" or "" is none) or widths (tuple[float, ...]) from a
    list, one number, or a text separated by commas or spaces."""
    floats = kind == "tuple[float, ...]"
    if isinstance(value, str):
        text = "" if value.strip().lower() == "none" and not floats else value
        value = [v for v in text.replace(" ", ",").split(",") if v]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(value)
    return tuple(_finite(v) for v in value) if floats else tuple(_whole(v) for v in value)


def _truth(value: Any) -> bool:
    """A bool, or one of the texts true/1/yes and false/0/no."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ValueError(value)


def _whole(value: Any) -> int:
    """A whole number from an int, an integral float or a text like 1e5; never a bool."""
    if isinstance(value, str):
        value = float(value) if any(c in value for c in ".eE") else int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise ValueError(value)


def _finite(value: Any) -> float:
    """A finite float from a number or a text; never a bool, an inf or a nan."""
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
        raise ValueError(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


_AT_LEAST_1 = ("num_envs", "total_timesteps", "batch_size", "buffer_size", "train_every",
               "gradient_steps", "target_update_interval", "eval_episodes", "solve_episodes",
               "eval_envs", "log_every", "num_threads", "n_step", "reinforce_episodes")
_AT_LEAST_0 = ("learning_starts", "eval_every", "checkpoint_every", "num_workers",
               "eps_decay_steps", "total_episodes")


def check_alone(name: str, value: Any) -> None:
    """The rules of one setting (its value already coerced) that need no other setting:
    `Config.validate` applies them to every field, `check_value` to a flag of `fastdqn eval`
    that means the same."""
    _check_size(name, value)
    if name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(f"--{flag_name(name)} must be one of {', '.join(CHOICES[name])}, "
                          f"got {value!r}")
    _check_text_and_range(name, value)
    if name in ("hidden", "policy_hidden"):
        _check_layers(name, value)
    if type(value) is int and not -MAX_INT_SETTING <= value <= MAX_INT_SETTING:
        raise ConfigError(f"--{flag_name(name)} {brief(value)} is beyond any run (over 2**53 = "
                          f"{MAX_INT_SETTING:,d}); use a smaller number")


def _check_size(name: str, value: Any) -> None:
    """A count's own bounds: at least 1 or 0, and at most what it may allocate."""
    flag = f"--{flag_name(name)}"
    if name in ("eval_episodes", "solve_episodes") and value > MAX_EVAL_EPISODES:
        raise ConfigError(f"{flag} must be <= {MAX_EVAL_EPISODES:,d}, got {value}")
    if name == "num_threads" and value > MAX_THREADS:
        raise ConfigError(f"--num-threads must be <= {MAX_THREADS}, got {value}")
    if name in ("num_envs", "eval_envs") and value > MAX_ENVS:
        raise ConfigError(f"{flag} must be <= {MAX_ENVS:,d}, got {value}")
    if name in _AT_LEAST_1 and value < 1:
        raise ConfigError(f"{flag} must be >= 1, got {value}")
    if name in _AT_LEAST_0 and value < 0:
        raise ConfigError(f"{flag} must be >= 0, got {value}")
    if name == "buffer_size" and value > MAX_BUFFER_SIZE:
        raise ConfigError(f"--buffer-size must be <= {MAX_BUFFER_SIZE:,d}, got {value}")


def _check_text_and_range(name: str, value: Any) -> None:
    """--seed's 32 bits, --device's forms and --eval-epsilon's [0, 1]."""
    if name == "seed" and not 0 <= value <= MAX_SEED:
        raise ConfigError(f"--seed must be in 0..{MAX_SEED} (the 32-bit seeds numpy and torch "
                          f"take), got {value}")
    if name == "device" and not (value in ("auto", "cpu", "mps", "cuda") or (
            re.fullmatch(r"cuda:(0|[1-9][0-9]{0,2})", value) and int(value[5:]) <= 127)):
        raise ConfigError(f"unknown --device {value!r}; use auto, cpu, cuda, cuda:N (N <= 127, "
                          "torch's limit) or mps")
    if name == "eval_epsilon" and value is not None and not 0 <= value <= 1:
        raise ConfigError(f"--eval-epsilon must be in [0, 1] (or none), got {value}")


def _check_layers(name: str, value: tuple[int, ...]) -> None:
    """Layer sizes: positive (--hidden's not empty), and within what a checkpoint may hold."""
    flag = f"--{flag_name(name)}"
    example = "128,128" if name == "hidden" else '64,64 (or "" for a linear policy)'
    if (name == "hidden" and not value) or any(h < 1 for h in value):
        raise ConfigError(f"{flag} needs positive layer sizes like {example}, got {value}")
    weights = sum(a * b for a, b in zip(value, value[1:])) + max(value, default=0)
    if len(value) > MAX_HIDDEN_LAYERS or weights > MAX_NETWORK_PARAMS:
        raise ConfigError(f"{flag} {show_value(value)[:40]}: over the {MAX_HIDDEN_LAYERS} layers "
                          f"or {MAX_NETWORK_PARAMS:,d} parameters a checkpoint may hold; "
                          "use fewer or smaller layers")
