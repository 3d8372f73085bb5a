"""Config: defaults, every validation rule, coercion, docs, TOML loading."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdqn.config import (
    Config,
    ConfigError,
    coerce,
    field_docs,
    field_names,
    load_toml,
    make_config,
    preset_names,
)


def test_defaults_validate():
    cfg = Config()
    assert cfg.validate() is cfg


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


POSITIVE_INTS = ["num_envs", "total_timesteps", "batch_size", "buffer_size", "train_every",
                 "gradient_steps", "target_update_interval", "eval_episodes", "solve_episodes",
                 "eval_envs", "log_every"]
NON_NEGATIVE_INTS = ["learning_starts", "eval_every", "checkpoint_every", "num_workers",
                     "eps_decay_steps"]

RULES = [
    *[({name: 0}, f"--{name.replace('_', '-')} must be >= 1") for name in POSITIVE_INTS],
    *[({name: -1}, f"--{name.replace('_', '-')} must be >= 0") for name in NON_NEGATIVE_INTS],
    ({"num_threads": 0}, "--num-threads must be >= 1, got 0"),
    ({"vector": "foo"}, "--vector must be one of sharded, async, sync, envpool, got 'foo'"),
    ({"loss": "l1"}, "--loss must be one of huber, mse"),
    ({"exploration": "ucb"}, "--exploration must be one of egreedy, boltzmann"),
    ({"eps_schedule": "cosine"}, "--eps-schedule must be one of linear, exponential, per_episode"),
    ({"hidden": ()}, "--hidden needs positive layer sizes"),
    ({"hidden": (64, 0)}, "--hidden needs positive layer sizes"),
    ({"batch_size": 200, "buffer_size": 100}, "--batch-size 200 is larger than --buffer-size 100"),
    ({"buffer_size": 2**30 + 1}, "--buffer-size must be <= 1,073,741,824, got 1073741825"),
    ({"lr": 0.0}, "--lr must be > 0"),
    ({"lr": -1e-3}, "--lr must be > 0"),
    ({"lr": float("nan")}, "--lr must be > 0"),
    ({"adam_eps": 0.0}, "--adam-eps must be > 0"),
    ({"gamma": 0.0}, "--gamma must be in (0, 1]"),
    ({"gamma": 1.5}, "--gamma must be in (0, 1]"),
    ({"tau": 0.0}, "--tau must be in (0, 1]"),
    ({"tau": 2.0}, "--tau must be in (0, 1]"),
    ({"eps_start": 1.5}, "--eps-start must be in [0, 1]"),
    ({"eps_end": -0.1}, "--eps-end must be in [0, 1]"),
    ({"eps_start": 0.1, "eps_end": 0.5}, "--eps-end 0.5 is above --eps-start 0.1"),
    ({"eps_episode_decay": 0.0}, "--eps-episode-decay must be in (0, 1]"),
    ({"eps_episode_decay": 1.01}, "--eps-episode-decay must be in (0, 1]"),
    ({"temperature": 0.0}, "--temperature must be > 0"),
    ({"max_grad_norm": -1.0}, "--max-grad-norm must be >= 0"),
    ({"env_timeout": -1.0}, "--env-timeout must be a number of seconds >= 0 (0 waits forever)"),
    ({"env_timeout": float("nan")}, "--env-timeout must be a number of seconds >= 0"),
    ({"env_timeout": float("inf")}, "--env-timeout must be a number of seconds >= 0"),
    ({"resume": True, "overwrite": True}, "--resume and --overwrite contradict"),
    ({"device": "tpu"}, "unknown --device 'tpu'"),
    ({"device": "cuda:"}, "unknown --device 'cuda:'"),
    ({"device": "cuda:x"}, "unknown --device 'cuda:x'"),
    ({"device": "CPU"}, "unknown --device 'CPU'"),
    ({"seed": -1}, "--seed must be >= 0, got -1"),
    ({"eval_episodes": 20, "solve_episodes": 10}, "--solve-episodes 10 is below --eval-episodes 20"),
]


@pytest.mark.parametrize(("overrides", "message"), RULES,
                         ids=[",".join(f"{k}={v}" for k, v in o.items()) for o, _ in RULES])
def test_validation_rule_names_the_flag(overrides, message):
    cfg = dataclasses.replace(Config(), **overrides)
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert message in str(info.value)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_valid_devices(device):
    Config(device=device).validate()


@pytest.mark.parametrize("overrides", [
    {"gamma": 1.0}, {"tau": 1.0}, {"eps_start": 0.0, "eps_end": 0.0}, {"max_grad_norm": 0.0},
    {"learning_starts": 0, "eval_every": 0, "checkpoint_every": 0, "num_workers": 0},
    {"num_threads": 1}, {"vector": "sharded"}, {"vector": "async"}, {"vector": "sync"},
    {"vector": "envpool"},
    {"batch_size": 64, "buffer_size": 64}, {"eps_episode_decay": 1.0}, {"hidden": (1,)},
    {"resume": True}, {"overwrite": True}, {"env_timeout": 0.0}, {"env_timeout": 0.5},
    {"save_buffer": True},
])
def test_boundary_values_are_valid(overrides):
    dataclasses.replace(Config(), **overrides).validate()


@pytest.mark.parametrize("device", ["cuda:\u00b2", "cuda:01"])
def test_validate_rejects_devices_torch_cannot_parse(device):
    import torch

    with pytest.raises(RuntimeError):
        torch.device(device)
    with pytest.raises(ConfigError, match="--device"):
        Config(device=device).validate()


def test_to_dict_lists_hidden():
    d = Config(hidden=(64, 32)).to_dict()
    assert d["hidden"] == [64, 32]
    assert set(d) == set(field_names())


# ---------------------------------------------------------------------------------------------
# coerce
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("hidden", "256,256", (256, 256)),
    ("hidden", "64", (64,)),
    ("hidden", "32 16", (32, 16)),
    ("hidden", [8, 4], (8, 4)),
    ("hidden", 16, (16,)),
    ("target_return", "none", None),
    ("target_return", "None", None),
    ("target_return", "", None),
    ("target_return", None, None),
    ("target_return", "200", 200.0),
    ("target_return", 195, 195.0),
    ("total_timesteps", "1e5", 100_000),
    ("total_timesteps", "2.5E3", 2500),
    ("buffer_size", "12345", 12345),
    ("num_envs", 4.0, 4),
    ("double_dqn", "false", False),
    ("double_dqn", "False", False),
    ("double_dqn", "0", False),
    ("double_dqn", "no", False),
    ("progress", "true", True),
    ("progress", "YES", True),
    ("resume", True, True),
    ("lr", "3e-4", 3e-4),
    ("lr", 1, 1.0),
    ("gamma", "0.9", 0.9),
    ("env_id", "CartPole-v1", "CartPole-v1"),
])
def test_coerce(name, value, expected):
    result = coerce(name, value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("num_envs", "1.5", "--num-envs: cannot use 1.5 (expected an integer)"),
    ("num_envs", 2.5, "--num-envs: cannot use 2.5 (expected an integer)"),
    ("num_envs", "four", "--num-envs: cannot use 'four'"),
    ("double_dqn", "maybe", "--double-dqn: cannot use 'maybe' (expected true or false)"),
    ("double_dqn", 1, "--double-dqn: cannot use 1 (expected true or false)"),
    ("lr", "fast", "--lr: cannot use 'fast' (expected a number)"),
    ("lr", True, "--lr: cannot use True (expected a number)"),
    ("hidden", "64,x", "(expected layer sizes like 128,128)"),
    ("target_return", "high", "--target-return: cannot use 'high' (expected a number or none)"),
    ("env_id", 5, "--env-id: cannot use 5 (expected text)"),
])
def test_coerce_rejects_with_flag_name(name, value, message):
    with pytest.raises(ConfigError) as info:
        coerce(name, value)
    assert str(info.value).startswith(f"--{name.replace('_', '-')}: cannot use ")
    assert message in str(info.value)


def test_field_docs_cover_every_field():
    docs = field_docs()
    names = field_names()
    assert names == [f.name for f in dataclasses.fields(Config)]
    assert set(docs) == set(names)
    for name in names:
        assert docs[name].strip(), name
    assert docs["gamma"] == "Discount factor."


# ---------------------------------------------------------------------------------------------
# TOML and make_config
# ---------------------------------------------------------------------------------------------


def test_load_toml_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('env-id = "CartPole-v1"\nnum_envs = 4\nhidden = [64, 32]\nlr = 0.001\n'
                    'total-timesteps = "1e4"\ndouble_dqn = false\ntarget_return = "none"\n')
    values = load_toml(str(path))
    assert values == {"env_id": "CartPole-v1", "num_envs": 4, "hidden": (64, 32), "lr": 0.001,
                      "total_timesteps": 10_000, "double_dqn": False, "target_return": None}
    cfg = make_config(str(path), seed=7)
    assert (cfg.env_id, cfg.num_envs, cfg.hidden, cfg.seed) == ("CartPole-v1", 4, (64, 32), 7)


def test_make_config_overrides_beat_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("num_envs = 4\nseed = 3\n")
    cfg = make_config(str(path), num_envs="8")
    assert (cfg.num_envs, cfg.seed) == (8, 3)


def test_make_config_validates(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("gamma = 1.5\n")
    with pytest.raises(ConfigError, match=re.escape("--gamma must be in (0, 1]")):
        make_config(str(path))


def test_make_config_unknown_override_suggests():
    with pytest.raises(ConfigError, match="unknown setting 'num_env'; did you mean 'num_envs'"):
        make_config(num_env=4)


def test_load_toml_unknown_keys_named(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("num_envs = 4\nbogus_key = 1\nlearning-rate = 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_toml(str(path))
    msg = str(info.value)
    assert "unknown keys: bogus_key, learning-rate" in msg
    assert str(path) in msg
    assert "num_envs" not in msg


def test_load_toml_bad_value_named(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('num_envs = "many"\n')
    with pytest.raises(ConfigError, match="--num-envs: cannot use 'many'"):
        load_toml(str(path))


def test_load_toml_malformed(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("num_envs = = 4\n[unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_toml(str(path))
    assert f"{path} is not valid TOML" in str(info.value)


def test_load_toml_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(str(path))


def test_unknown_preset_errors():
    names = preset_names()
    assert "no-such-preset-xyz" not in names
    with pytest.raises(ConfigError) as info:
        load_toml("no-such-preset-xyz")
    msg = str(info.value)
    assert "unknown preset 'no-such-preset-xyz'" in msg
    assert msg.endswith("presets: " + ", ".join(names))


def test_shipped_presets_load_and_validate():
    for name in preset_names():
        make_config(name)


# ---------------------------------------------------------------------------------------------
# hypothesis
# ---------------------------------------------------------------------------------------------


@st.composite
def valid_configs(draw):
    buffer_size = draw(st.integers(1, 10**7))
    eps_start = draw(st.floats(0, 1))
    return Config(
        env_id=draw(st.text(max_size=20)),
        num_envs=draw(st.integers(1, 256)),
        vector=draw(st.sampled_from(["sharded", "async", "sync", "envpool"])),
        num_workers=draw(st.integers(0, 64)),
        total_timesteps=draw(st.integers(1, 10**9)),
        seed=draw(st.integers(0, 2**31)),
        device=draw(st.sampled_from(["auto", "cpu", "cuda", "mps"])
                    | st.integers(0, 99).map(lambda i: f"cuda:{i}")),
        target_return=draw(st.none() | st.floats(allow_nan=False)),
        hidden=tuple(draw(st.lists(st.integers(1, 1024), min_size=1, max_size=4))),
        lr=draw(st.floats(1e-12, 10)),
        adam_eps=draw(st.floats(1e-12, 1)),
        gamma=draw(st.floats(0, 1, exclude_min=True)),
        loss=draw(st.sampled_from(["huber", "mse"])),
        double_dqn=draw(st.booleans()),
        max_grad_norm=draw(st.floats(0, 1e6)),
        batch_size=draw(st.integers(1, buffer_size)),
        buffer_size=buffer_size,
        learning_starts=draw(st.integers(0, 10**6)),
        train_every=draw(st.integers(1, 100)),
        gradient_steps=draw(st.integers(1, 100)),
        tau=draw(st.floats(0, 1, exclude_min=True)),
        target_update_interval=draw(st.integers(1, 10**5)),
        exploration=draw(st.sampled_from(["egreedy", "boltzmann"])),
        eps_schedule=draw(st.sampled_from(["linear", "exponential", "per_episode"])),
        eps_start=eps_start,
        eps_end=draw(st.floats(0, eps_start)),
        eps_decay_steps=draw(st.integers(0, 10**7)),
        eps_episode_decay=draw(st.floats(0, 1, exclude_min=True)),
        temperature=draw(st.floats(1e-9, 1e6)),
        eval_every=draw(st.integers(0, 10**6)),
        checkpoint_every=draw(st.integers(0, 10**6)),
        save_buffer=draw(st.booleans()),
        env_timeout=draw(st.floats(0, 1e6)),
        num_threads=draw(st.integers(1, 64)),
        resume=draw(st.booleans()),
        overwrite=False,
    )


@settings(max_examples=150, deadline=None)
@given(valid_configs())
def test_random_valid_configs_validate(cfg):
    assert cfg.validate() is cfg


def _values_of_field_type(field: dataclasses.Field):
    default = field.default
    if field.name == "hidden":
        return st.lists(st.integers(-5, 2000), max_size=4).map(tuple)
    if field.name == "target_return":
        return st.none() | st.floats()
    if field.name == "rbf_scales":
        return st.lists(st.floats(), max_size=5).map(tuple)
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(-(10**12), 10**12)
    if isinstance(default, float):
        return st.floats()  # includes nan and +-inf
    return st.text(max_size=12) | st.sampled_from(
        ["sharded", "async", "sync", "huber", "mse", "egreedy", "boltzmann", "linear",
         "exponential", "per_episode", "cpu", "cuda:1", "auto", "mlp", "rbf"])


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries(
    {}, optional={f.name: _values_of_field_type(f) for f in dataclasses.fields(Config)}))
def test_validate_raises_only_config_error(values):
    cfg = Config(**values)
    try:
        cfg.validate()
    except ConfigError as e:
        assert str(e).strip()


@pytest.mark.parametrize("name", ["lunarlander-notebook", "udacity-lunarlander",
                                  "hard-target-fixed-eps"])
def test_shipped_presets_load_and_apply(name):
    from fastdqn.config import make_config, preset_names

    assert name in preset_names()
    cfg = make_config(name, seed=5)
    raw = load_toml(name)
    for key, value in raw.items():
        assert getattr(cfg, key) == value, key
    assert cfg.seed == 5  # explicit settings win over the preset


def _outside(low: float, high: float, low_open: bool = False):
    """Floats outside [low, high] ((low, high] when low_open), plus NaN."""
    below = st.floats(max_value=low) if low_open else st.floats(max_value=low, exclude_max=True)
    return below | st.floats(min_value=high, exclude_min=True) | st.just(float("nan"))


BREAKERS = {
    **{name: st.integers(-(10**9), 0) for name in POSITIVE_INTS},
    **{name: st.integers(-(10**9), -1) for name in NON_NEGATIVE_INTS},
    "num_threads": st.integers(-100, 0),
    "seed": st.integers(-(10**9), -1),
    "lr": st.floats(max_value=0) | st.just(float("nan")),
    "adam_eps": st.floats(max_value=0) | st.just(float("nan")),
    "gamma": _outside(0, 1, low_open=True),
    "tau": _outside(0, 1, low_open=True),
    "eps_start": _outside(0, 1),
    "eps_end": _outside(0, 1),
    "eps_episode_decay": _outside(0, 1, low_open=True),
    "temperature": st.floats(max_value=0) | st.just(float("nan")),
    "max_grad_norm": st.floats(max_value=0, exclude_max=True) | st.just(float("nan")),
    "env_timeout": st.floats(max_value=0, exclude_max=True) | st.just(float("inf")),
    "device": st.text(max_size=8).filter(
        lambda d: d not in ("auto", "cpu", "cuda", "mps") and not re.fullmatch(r"cuda:(0|[1-9]\d*)", d)),
    "vector": st.text(max_size=8).filter(lambda v: v not in ("sharded", "async", "sync", "envpool")),
    "hidden": st.lists(st.integers(-5, 0), min_size=1, max_size=3).map(tuple) | st.just(()),
}


@settings(max_examples=300, deadline=None)
@given(valid_configs(), st.sampled_from(sorted(BREAKERS)).flatmap(
    lambda name: st.tuples(st.just(name), BREAKERS[name])))
def test_breaking_any_one_rule_of_a_valid_config_names_that_flag(cfg, broken):
    name, value = broken
    bad = dataclasses.replace(cfg, **{name: value})
    with pytest.raises(ConfigError) as info:
        bad.validate()
    assert f"--{name.replace('_', '-')}" in str(info.value), (name, value, str(info.value))


@settings(max_examples=100, deadline=None)
@given(valid_configs(), st.integers(1, 10**6))
def test_any_batch_larger_than_the_buffer_is_refused(cfg, extra):
    bad = dataclasses.replace(cfg, batch_size=cfg.buffer_size + extra)
    with pytest.raises(ConfigError, match=r"^--batch-size \d+ is larger than --buffer-size \d+"):
        bad.validate()
