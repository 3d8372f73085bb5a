"""Config: defaults, every validation rule, coercion, docs, TOML loading."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdqn.config.files import load_toml, make_config, preset_names
from fastdqn.config.settings import Config, coerce, field_docs, field_names
from fastdqn.errors import ConfigError


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
    ({"vector": "foo"}, "--vector must be one of auto, sharded, async, sync, envpool, got 'foo'"),
    ({"loss": "l1"}, "--loss must be one of huber, mse"),
    ({"exploration": "ucb"}, "--exploration must be one of egreedy, boltzmann"),
    ({"eps_schedule": "cosine"}, "--eps-schedule must be one of linear, exponential, per_episode"),
    ({"hidden": ()}, "--hidden needs positive layer sizes"),
    ({"hidden": (64, 0)}, "--hidden needs positive layer sizes"),
    ({"batch_size": 200, "buffer_size": 100}, "--batch-size 200 is larger than --buffer-size 100"),
    ({"buffer_size": 2**30 + 1}, "--buffer-size must be <= 1,073,741,824, got 1073741825"),
    ({"lr": 0.0}, "--lr must be > 0"),
    ({"lr": -1e-3}, "--lr must be > 0"),
    ({"lr": float("nan")}, "--lr: cannot use nan (expected a finite number)"),
    ({"adam_eps": 0.0}, "--adam-eps must be > 0"),
    ({"gamma": 0.0}, "--gamma must be in (0, 1]"),
    ({"gamma": 1.5}, "--gamma must be in (0, 1]"),
    ({"tau": 0.0}, "--tau must be in (0, 1]"),
    ({"tau": 2.0}, "--tau must be in (0, 1]"),
    ({"eps_start": 1.5}, "--eps-start must be in [0, 1]"),
    ({"eps_end": -0.1}, "--eps-end must be in [0, 1]"),
    ({"eps_start": 0.1, "eps_end": 0.5}, "--eps-end 0.5 is above --eps-start 0.1"),
    ({"eps_schedule": "per_episode", "eps_episode_decay": 0.0},
     "--eps-episode-decay must be in (0, 1]"),
    ({"eps_schedule": "per_episode", "eps_episode_decay": 1.01},
     "--eps-episode-decay must be in (0, 1]"),
    ({"exploration": "boltzmann", "temperature": 0.0}, "--temperature must be > 0"),
    ({"max_grad_norm": -1.0}, "--max-grad-norm must be >= 0"),
    ({"env_timeout": -1.0}, "--env-timeout must be a number of seconds >= 0 (0 waits forever)"),
    ({"env_timeout": float("nan")}, "--env-timeout: cannot use nan (expected a finite number)"),
    ({"env_timeout": float("inf")}, "--env-timeout: cannot use inf (expected a finite number)"),
    ({"resume": True, "overwrite": True}, "--resume and --overwrite contradict"),
    ({"device": "tpu"}, "unknown --device 'tpu'"),
    ({"device": "cuda:"}, "unknown --device 'cuda:'"),
    ({"device": "cuda:x"}, "unknown --device 'cuda:x'"),
    ({"device": "CPU"}, "unknown --device 'CPU'"),
    ({"seed": -1}, "--seed must be in 0..4294967295 (the 32-bit seeds numpy and torch take), "
                   "got -1"),
    ({"seed": 2**32}, "--seed must be in 0..4294967295"),
    ({"seed": 10**23}, "--seed must be in 0..4294967295"),
    ({"hidden": (2**20, 2**20)}, "--hidden 1048576,1048576: over the 64 layers or 268,435,456 "
                                 "parameters a checkpoint may hold"),
    ({"hidden": (8,) * 65}, "over the 64 layers"),
    ({"policy_hidden": (10**20,)}, "--policy-hidden 100000000000000000000: over the 64 layers"),
    ({"device": "cuda:128"}, "unknown --device 'cuda:128'"),
    ({"num_threads": 2**31}, "--num-threads must be <= 1024, got 2147483648"),
    ({"num_threads": 100_000}, "--num-threads must be <= 1024, got 100000"),
    ({"solve_episodes": 10**12}, "--solve-episodes must be <= 10,000,000, got 1000000000000"),
    ({"eval_episodes": 10**9, "solve_episodes": 10**9}, "--eval-episodes must be <= 10,000,000"),
    ({"num_envs": 10**9}, "--num-envs must be <= 65,536, got 1000000000"),
    ({"eval_envs": 2**63 - 1}, "--eval-envs must be <= 65,536"),
    ({"total_timesteps": 10**30}, "--total-timesteps 1000000000000000000000000000000 is beyond "
                                  "any run (over 2**53 = 9,007,199,254,740,992)"),
    ({"n_step": 2**63}, "--n-step 9223372036854775808 is beyond any run"),
    ({"target_update_interval": 2**63 - 1}, "--target-update-interval 9223372036854775807 is "
                                            "beyond any run"),
    ({"eps_decay_steps": 2**53 + 1}, "--eps-decay-steps 9007199254740993 is beyond any run"),
    ({"algo": "pqn", "num_envs": 2, "pqn_rollout": 3, "pqn_minibatches": 7},
     "--pqn-minibatches 7 is more than the 6 transitions of a rollout (--pqn-rollout 3 x "
     "--num-envs 2)"),
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
    {"batch_size": 64, "buffer_size": 64}, {"eps_schedule": "per_episode", "eps_episode_decay": 1.0},
    {"hidden": (1,)}, {"seed": 0}, {"seed": 2**32 - 1}, {"device": "cuda:127"},
    {"num_threads": 1024}, {"num_envs": 2**16, "eval_envs": 2**16},
    {"total_timesteps": 2**53, "eval_every": 2**53, "target_update_interval": 2**53},
    {"algo": "pqn", "num_envs": 2, "pqn_rollout": 3, "pqn_minibatches": 6},
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
    ("num_envs", "1.5", "--num-envs: cannot use '1.5' (expected an integer)"),
    ("num_envs", 2.5, "--num-envs: cannot use 2.5 (expected an integer)"),
    ("num_envs", "four", "--num-envs: cannot use 'four'"),
    ("double_dqn", "maybe", "--double-dqn: cannot use 'maybe' (expected true or false)"),
    ("double_dqn", 1, "--double-dqn: cannot use 1 (expected true or false)"),
    ("lr", "fast", "--lr: cannot use 'fast' (expected a finite number)"),
    ("lr", True, "--lr: cannot use True (expected a finite number)"),
    ("hidden", "64,x", "(expected layer sizes like 128,128)"),
    ("target_return", "high",
     "--target-return: cannot use 'high' (expected a finite number or none)"),
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
    """Valid settings of every kind: the conditional ones only where they are read (epsilons
    with egreedy, each decay with its schedule, the temperature with boltzmann)."""
    buffer_size = draw(st.integers(1, 10**7))
    exploration = draw(st.sampled_from(["egreedy", "boltzmann"]))
    greedy = exploration == "egreedy"
    schedule = draw(st.sampled_from(["linear", "exponential", "per_episode"])) if greedy \
        else "linear"
    eps_start = draw(st.floats(0, 1)) if greedy else Config.eps_start
    vector = draw(st.sampled_from(["sharded", "async", "sync", "envpool"]))
    return Config(
        env_id=draw(st.text(max_size=20)),
        num_envs=draw(st.integers(1, 256)),
        vector=vector,
        num_workers=draw(st.integers(0, 64)) if vector in ("sharded", "envpool") else 0,
        total_timesteps=draw(st.integers(1, 10**9)),
        seed=draw(st.integers(0, 2**32 - 1)),
        device=draw(st.sampled_from(["auto", "cpu", "cuda", "mps"])
                    | st.integers(0, 99).map(lambda i: f"cuda:{i}")),
        target_return=draw(st.none() | st.floats(allow_nan=False, allow_infinity=False)),
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
        exploration=exploration,
        eps_schedule=schedule,
        eps_start=eps_start,
        eps_end=draw(st.floats(0, eps_start)) if greedy else Config.eps_end,
        eps_decay_steps=(draw(st.integers(0, 10**7)) if greedy and schedule != "per_episode"
                         else Config.eps_decay_steps),
        eps_episode_decay=(draw(st.floats(0, 1, exclude_min=True)) if schedule == "per_episode"
                           else Config.eps_episode_decay),
        temperature=Config.temperature if greedy else draw(st.floats(1e-9, 1e6)),
        eval_every=draw(st.integers(0, 10**6)),
        checkpoint_every=draw(st.integers(0, 10**6)),
        save_buffer=draw(st.booleans()),
        env_timeout=(draw(st.floats(0, 1e6)) if vector in ("sharded", "async")
                     else Config.env_timeout),
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
    from fastdqn.config.files import make_config, preset_names

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


# ---------------------------------------------------------------------------------------------
# loose types: one coercion path for TOML, flags, train(...) keywords and Config(...)
# ---------------------------------------------------------------------------------------------

LOOSE = [  # TOML text of the value, Python value, message
    ("hidden", "[1.9, 64.7]", [1.9, 64.7], "--hidden: cannot use [1.9, 64.7] (expected layer sizes"),
    ("hidden", "{128 = 1}", {"128": 1}, "--hidden: cannot use {'128': 1} (expected layer sizes"),
    ("hidden", "[true, 64]", [True, 64], "--hidden: cannot use [True, 64]"),
    ("policy_hidden", "[64.5]", [64.5], "--policy-hidden: cannot use [64.5]"),
    ("rbf_scales", "[nan]", [float("nan")], "--rbf-scales: cannot use [nan]"),
    ("rbf_scales", "{a = 1.0}", {"a": 1.0}, "--rbf-scales: cannot use {'a': 1.0}"),
    ("num_envs", "true", True, "--num-envs: cannot use True (expected an integer)"),
    ("num_envs", "4.5", 4.5, "--num-envs: cannot use 4.5 (expected an integer)"),
    ("num_envs", "[4]", [4], "--num-envs: cannot use [4] (expected an integer)"),
    ("total_timesteps", "inf", float("inf"), "--total-timesteps: cannot use inf"),
    ("target_return", "nan", float("nan"),
     "--target-return: cannot use nan (expected a finite number or none)"),
    ("target_return", "inf", float("inf"), "--target-return: cannot use inf"),
    ("target_return", "true", True, "--target-return: cannot use True"),
    ("eval_epsilon", "nan", float("nan"), "--eval-epsilon: cannot use nan"),
    ("lr", "inf", float("inf"), "--lr: cannot use inf (expected a finite number)"),
    ("lr", "-inf", float("-inf"), "--lr: cannot use -inf (expected a finite number)"),
    ("max_grad_norm", "inf", float("inf"), "--max-grad-norm: cannot use inf"),
    ("per_eps", "inf", float("inf"), "--per-eps: cannot use inf"),
    ("temperature", "[1.0]", [1.0], "--temperature: cannot use [1.0] (expected a finite number)"),
    ("double_dqn", "1", 1, "--double-dqn: cannot use 1 (expected true or false)"),
    ("env_id", "[\"CartPole-v1\"]", ["CartPole-v1"], "--env-id: cannot use ['CartPole-v1']"),
    ("seed", "100000000000000000000000", 10**23,
     "--seed must be in 0..4294967295 (the 32-bit seeds numpy and torch take), got "
     "100000000000000000000000"),
    ("seed", "4294967296", 2**32, "--seed must be in 0..4294967295"),
    ("seed", "false", False, "--seed: cannot use False (expected an integer)"),
]


@pytest.mark.parametrize(("name", "toml", "value", "message"), LOOSE,
                         ids=[f"{n}={t}" for n, t, _, _ in LOOSE])
def test_a_loose_value_is_refused_alike_from_toml_python_and_config(tmp_path, name, toml, value,
                                                                     message):
    """TOML, `make_config` / `train(...)` keywords and a Config built in Python take the same
    coercion path, so each refuses the value with the same one-line message."""
    path = tmp_path / "run.toml"
    path.write_text(f"{name} = {toml}\n")
    errors = []
    for make in (lambda: make_config(str(path)), lambda: make_config(**{name: value}),
                 lambda: Config(**{name: value}).validate()):
        with pytest.raises(ConfigError) as info:
            make()
        errors.append(str(info.value))
    assert errors[0] == errors[1] == errors[2], errors
    assert errors[0].startswith(message), errors[0]
    assert "\n" not in errors[0]


def test_a_config_built_in_python_is_coerced_by_validate():
    import numpy as np

    cfg = Config(num_envs=np.int64(4), lr=1, network="rbf", rbf_scales=[5, 2]).validate()
    assert Config(hidden=[64, 32]).validate().hidden == (64, 32)
    assert type(cfg.num_envs) is int and cfg.num_envs == 4
    assert type(cfg.lr) is float and cfg.rbf_scales == (5.0, 2.0)
    assert make_config(hidden=[128.0, 64.0]).hidden == (128, 64)  # whole floats are whole


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1])
def test_every_seed_stream_of_the_largest_seed_is_one_numpy_and_torch_take(seed):
    """A run seed in range gives episode seeds gymnasium takes (SeedSequence), generator seeds
    torch.manual_seed takes, and the old arithmetic (seed + k, episode seeds) stays in range."""
    import gymnasium as gym
    import numpy as np
    import torch

    from fastdqn.config.limits import MAX_EPISODE_SEED, MAX_SEED
    from fastdqn.core.seeds import FIT, TRAIN, episode_seed

    assert make_config(seed=seed).seed == seed <= MAX_SEED
    last = episode_seed(seed, FIT, 2**32 - 1)
    assert last <= MAX_EPISODE_SEED
    gym.utils.seeding.np_random(last)
    np.random.default_rng(last)
    torch.Generator().manual_seed(seed + 8)  # the old per-purpose offsets
    torch.manual_seed(episode_seed(seed, TRAIN, 0) % 2**64)


def test_an_eval_episode_seed_is_checked_against_the_episodes_it_starts():
    from fastdqn.config.limits import MAX_EPISODE_SEED
    from fastdqn.config.settings import check_episode_seed

    assert check_episode_seed("7", 10) == 7
    assert check_episode_seed(MAX_EPISODE_SEED - 9, 10) == MAX_EPISODE_SEED - 9
    for bad, words in [(-1, "--seed must be an episode seed in 0.."), (MAX_EPISODE_SEED - 8,
                       "got 73786976294838206455"), ("1.5", "--seed: cannot use '1.5'"),
                       (True, "--seed: cannot use True")]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            check_episode_seed(bad, 10)


def test_check_value_names_the_flag_it_checks_for():
    from fastdqn.config.settings import check_value

    assert check_value("eval_envs", "8", "--num-envs") == 8
    for name, value, flag, message in [
            ("eval_envs", 0, "--num-envs", "--num-envs must be >= 1, got 0"),
            ("eval_envs", "2.5", "--num-envs", "--num-envs: cannot use '2.5' (expected an integer)"),
            ("device", "gpu", "--device", "unknown --device 'gpu'; use auto, cpu, cuda, cuda:N"),
            ("eval_epsilon", "1.5", "--epsilon", "--epsilon must be in [0, 1] (or none), got 1.5"),
            ("eval_episodes", "0", "--episodes", "--episodes must be >= 1, got 0")]:
        with pytest.raises(ConfigError) as info:
            check_value(name, value, flag)
        assert str(info.value).startswith(message), str(info.value)


# ---------------------------------------------------------------------------------------------
# refused, not ignored: one table (the fields' tags) of what reads each setting
# ---------------------------------------------------------------------------------------------

ALT = {  # a valid value other than the default, for every setting that not every run reads
    "network": "mlp", "hidden": (64,), "rbf_features": 200, "rbf_scales": (1.0,),
    "rbf_fit_steps": 10, "adam_eps": 1e-6, "optimizer": "rmsprop", "loss": "mse",
    "clip_rewards": "on", "life_loss_terminal": "off", "double_dqn": False, "batch_size": 64,
    "buffer_size": 5_000, "learning_starts": 10, "train_every": 2, "gradient_steps": 2,
    "tau": 0.5, "target_update_interval": 10, "n_step": 3, "prioritized": True,
    "per_alpha": 0.5, "per_beta": 0.5, "per_eps": 1e-3, "frame_replay": "off", "dueling": True,
    "learner": "reference", "pqn_rollout": 8, "pqn_lambda": 0.5, "pqn_epochs": 2,
    "pqn_minibatches": 2, "pqn_anneal_lr": True, "policy_hidden": (8,), "reinforce_episodes": 2,
    "reinforce_baseline": "none", "entropy_coef": 0.01, "exploration": "boltzmann",
    "eps_schedule": "exponential", "eps_start": 0.5, "eps_end": 0.01, "eps_decay_steps": 1234,
    "eps_episode_decay": 0.9, "temperature": 2.0, "save_buffer": True, "actors": 2,
    "ray_address": "10.0.0.1:6379", "weight_sync_every": 10, "actor_block": 8,
    "actor_epsilon": 0.3, "actor_alpha": 3.0, "actor_restarts": 1, "actor_timeout": 10.0,
    "cuda_graphs": False, "num_workers": 1, "env_timeout": 5.0, "distributional": "qr",
    "atoms": 11, "v_min": -5.0, "v_max": 5.0, "noisy": True, "seeds": "1-3",
    "wandb_group": "sweep",
}

HOLDS = {"adam": {}, "prioritized": {"prioritized": True}, "one_machine": {}, "egreedy": {},
         "boltzmann": {"exploration": "boltzmann"}, "step_decay": {},
         "episode_decay": {"eps_schedule": "per_episode"}, "apex": {"actors": 2},
         "workers": {}, "worker_replies": {}, "distributional": {"distributional": "qr"},
         "c51": {"distributional": "c51"}, "scalar": {}, "wandb": {"wandb": "proj"}}
"""Settings under which each condition holds (with the defaults of the others)."""
BREAKS = {"adam": {"optimizer": "rmsprop"}, "prioritized": {"prioritized": False},
          "one_machine": {"actors": 2}, "egreedy": {"exploration": "boltzmann"},
          "boltzmann": {"exploration": "egreedy"}, "step_decay": {"eps_schedule": "per_episode"},
          "episode_decay": {"eps_schedule": "linear"}, "apex": {"actors": 0},
          "workers": {"vector": "sync"}, "worker_replies": {"vector": "envpool"},
          "distributional": {"distributional": "none"}, "c51": {"distributional": "qr"},
          "scalar": {"distributional": "c51"}, "wandb": {"wandb": ""}}
"""Settings under which each condition fails."""


def _table():
    from fastdqn.config.settings import reads

    return {name: reads(name) for name in field_names()}


def test_the_table_covers_every_setting_and_condition():
    from fastdqn.config.choices import ALGOS, NETWORK_KINDS
    from fastdqn.config.settings import ALGO_DEFAULTS, CONDITIONS

    table = _table()
    partial = {n for n, row in table.items()
               if set(row["algos"]) != set(ALGOS) or row["networks"] or row["when"]}
    assert partial == set(ALT)  # every such setting is exercised below
    assert set(HOLDS) == set(BREAKS) == set(CONDITIONS)
    for name, row in table.items():
        assert row["algos"] and set(row["algos"]) <= set(ALGOS), name
        assert set(row["networks"] or ()) <= set(NETWORK_KINDS), name
        assert set(row["when"]) <= set(CONDITIONS), name
    for algo, defaults in ALGO_DEFAULTS.items():  # an own default only for what it reads
        assert all(algo in table[n]["algos"] for n in defaults), algo


@pytest.mark.parametrize("algo", ["dqn", "pqn", "reinforce"])
def test_every_setting_an_algorithm_does_not_read_is_refused_under_it(algo):
    table = _table()
    unread = [n for n, row in table.items() if algo not in row["algos"]]
    assert unread or algo == "dqn"
    for name in unread:
        owners = " or ".join(a for a in ("dqn", "pqn", "reinforce") if a in table[name]["algos"])
        with pytest.raises(ConfigError) as info:
            make_config(algo=algo, **{name: ALT[name]})
        assert str(info.value) == (
            f"--{name.replace('_', '-')} applies to --algo {owners} only, not --algo {algo}; "
            f"drop it or pass --algo {owners.split(' or ')[0]}"), name
    read = [n for n, row in table.items() if algo in row["algos"] and n in ALT
            and not row["when"] and not row["networks"]]
    for name in read:  # and what it reads (where no condition applies) is taken
        extra = {"network": "mlp"} if name == "network" else {}
        assert getattr(make_config(algo=algo, **{name: ALT[name]}, **extra), name) == ALT[name]


def test_a_setting_read_under_a_condition_is_refused_where_it_does_not_hold():
    from fastdqn.config.settings import CONDITIONS

    checked = 0
    for name, row in _table().items():
        holding = {k: v for when in row["when"] for k, v in HOLDS[when].items()}
        if not row["when"]:
            continue
        assert getattr(make_config(**holding, **{name: ALT[name]}), name) == ALT[name], name
        for when in row["when"]:
            broken = {**holding, **BREAKS[when]}
            if name in broken or any(w != when and not CONDITIONS[w].holds(Config(**broken))
                                     for w in row["when"]):
                continue  # the field itself, or another of its conditions, is what breaks
            try:
                make_config(**broken)
            except ConfigError:
                continue  # the settings that make the others hold are refused there themselves
            with pytest.raises(ConfigError) as info:
                make_config(**broken, **{name: ALT[name]})
            assert str(info.value) == f"--{name.replace('_', '-')} {CONDITIONS[when].refusal}", name
            checked += 1
    assert checked >= 15


def test_an_algorithms_own_default_is_not_a_setting_it_ignores():
    cfg = make_config(algo="pqn", eps_schedule="per_episode")  # pqn's eps_decay_steps is its own
    assert cfg.eps_decay_steps == 25_000
    with pytest.raises(ConfigError, match="--eps-decay-steps applies to --eps-schedule linear"):
        make_config(algo="pqn", eps_schedule="per_episode", eps_decay_steps=1000)


def test_the_algorithms_own_defaults_come_from_the_fields_as_the_table_kept_by_hand():
    """ALGO_DEFAULTS is derived from the fields' `algo_defaults` tags: the same table, in the
    same order, as the one written out by hand before, each default set only on a field its
    algorithm reads and of the field's type."""
    from fastdqn.config.settings import ALGO_DEFAULTS

    assert ALGO_DEFAULTS == {
        "pqn": {"lr": 1e-3, "loss": "mse", "eps_decay_steps": 25_000},
        "reinforce": {"lr": 1e-3},
    }
    assert [list(own) for own in ALGO_DEFAULTS.values()] == [["lr", "loss", "eps_decay_steps"], ["lr"]]
    table = _table()
    for algo, own in ALGO_DEFAULTS.items():
        for name, value in own.items():
            assert algo in table[name]["algos"], (algo, name)
            assert coerce(name, value) == value and type(coerce(name, value)) is type(value)
            assert getattr(make_config(algo=algo), name) == value


def test_an_algorithm_default_for_a_field_the_algorithm_does_not_read_is_refused_at_definition():
    from fastdqn.config.settings import _reads

    with pytest.raises(ValueError, match="reinforce"):
        _reads(1, algos=("dqn",), algo_defaults={"reinforce": 2})


def test_validate_is_short_named_steps_in_a_fixed_order():
    """Config.validate runs one short step per concern; the first refusal wins, so a config
    breaking two rules names the earlier step's (here: exploration before the run's own)."""
    import inspect

    steps = [name for name, _ in inspect.getmembers(Config, inspect.isfunction)
             if name.startswith("_validate") or name in ("validate", "_coerce_each", "_refuse_unread")]
    for name in steps:
        assert len(inspect.getsource(getattr(Config, name)).splitlines()) < 50, name
    with pytest.raises(ConfigError, match="--temperature"):
        Config(temperature=0.0, resume=True, overwrite=True).validate()


@pytest.mark.parametrize(("flags", "message"), [
    ({"network": "cnn", "hidden": (64,)},
     "--hidden applies to --network mlp only, not --network cnn; drop --hidden or pass "
     "--network mlp"),
    ({"network": "mlp", "rbf_fit_steps": 10},
     "--rbf-fit-steps applies to --network rbf only, not --network mlp; drop --rbf-fit-steps or "
     "pass --network rbf"),
    ({"rbf_features": 200}, "--rbf-features applies to --network rbf only; drop --rbf-features"),
    ({"network": "rbf", "dueling": True}, "--dueling needs --network mlp"),
])
def test_a_network_setting_the_network_does_not_read_is_refused(flags, message):
    with pytest.raises(ConfigError) as info:
        make_config(**flags)
    assert str(info.value).startswith(message), str(info.value)


def _reads_in(module: str) -> set[str]:
    """The Config fields module `module` reads as cfg.X, c.X, config.X or self.cfg.X;
    "path::function" reads that function of the module only."""
    import ast
    from pathlib import Path

    import fastdqn

    module, _, function = module.partition("::")
    tree = ast.parse((Path(fastdqn.__file__).parent / module).read_text())
    if function:
        tree = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (
                (isinstance(node.value, ast.Name) and node.value.id in ("cfg", "c", "config"))
                or (isinstance(node.value, ast.Attribute) and node.value.attr == "cfg")):
            names.add(node.attr)
    return names & set(field_names())


def _algorithm_modules() -> dict[str, list[str]]:
    """Each algorithm's own modules, and the build function of each network kind it trains
    (nets/kinds.py builds every algorithm's network from the settings)."""
    from fastdqn.nets.kinds import KINDS

    own = {"dqn": ["algos/dqn/agent.py", "algos/dqn/loop.py", "algos/dqn/checkpoint.py",
                   "algos/dqn/preflight.py", "algos/apex.py", "nets/kinds.py::head_of_config"],
           "pqn": ["algos/pqn.py"], "reinforce": ["algos/reinforce.py"]}
    for kind in KINDS.values():
        if kind.build is not None:
            own[kind.algo].append(f"nets/kinds.py::{kind.build.__name__}")
    return own


MODULES = _algorithm_modules()
SHARED = ["runtime/run.py", "runtime/rundir.py", "runtime/train.py", "runtime/population.py"]
HANDED_ON = {"save_buffer": "run.py hands it to the agent's state_dict(with_buffer), which only "
                            "DQN's replay reads",
             "seeds": "runtime/population.py trains DQN agents, one per seed (--seeds)"}
"""Tagged settings an algorithm reads through the run (run.py), not its own module."""


def test_the_table_matches_the_code_that_reads_each_setting():
    """Each algorithm's module reads every setting tagged as its own, and reads nothing tagged
    as not its own: the table cannot drift from the code."""
    from fastdqn.config.choices import ALGOS

    table = _table()
    shared = set().union(*(_reads_in(m) for m in SHARED))
    for algo, modules in MODULES.items():
        code = set().union(*(_reads_in(m) for m in modules))
        untagged = {n for n in code if algo not in table[n]["algos"]}
        assert not untagged, f"{algo} reads {sorted(untagged)}, tagged as not read by it"
        own = {n for n, row in table.items() if set(row["algos"]) != set(ALGOS)
               and algo in row["algos"]}
        unread = own - code - set(HANDED_ON)
        assert not unread, f"{algo} is tagged as reading {sorted(unread)}, which it never reads"
    assert set(HANDED_ON) <= shared
    everyone = {n for n, row in table.items() if set(row["algos"]) == set(ALGOS)}
    every_algo = set.intersection(*(set().union(*(_reads_in(m) for m in ms))
                                    for ms in MODULES.values()))
    assert not everyone - shared - every_algo, sorted(everyone - shared - every_algo)


def test_network_auto_refuses_what_the_network_it_picks_does_not_read():
    import numpy as np
    import torch
    from gymnasium.spaces import Box

    from fastdqn.algos.dqn.preflight import check_dqn_env

    with pytest.raises(ConfigError) as info:
        check_dqn_env(make_config(hidden=(64,)), Box(0, 255, (4, 84, 84), np.uint8),
                      torch.device("cpu"), make_env=None)
    assert str(info.value) == ("--hidden applies to --network mlp only, but --network auto trains "
                               "a cnn on LunarLander-v3's observations; drop --hidden or pass "
                               "--network mlp")


CUSTOM_REFUSED = [(n, ALT[n]) for n in ALT if n in ("network", "hidden", "dueling", "rbf_features",
                                                    "rbf_scales", "rbf_fit_steps")]


@pytest.mark.parametrize(("name", "value"), CUSTOM_REFUSED, ids=[n for n, _ in CUSTOM_REFUSED])
def test_a_network_of_your_own_refuses_the_settings_of_fastdqns_networks(tmp_path, name, value):
    """Every network-shape setting that a q_network does not read (the table's `networks`
    tags without "custom") is refused with it, before the run dir exists."""
    import torch

    from fastdqn import train
    from fastdqn.config.settings import reads

    assert "custom" not in reads(name)["networks"]
    run = tmp_path / "r"
    with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')}"):
        train(env_id="CartPole-v1", run_dir=str(run), q_network=torch.nn.Linear(4, 2),
              **{name: value})
    assert not run.exists()


def test_a_network_of_your_own_with_dueling_and_hidden_is_refused_not_recorded(tmp_path):
    import torch

    from fastdqn import train

    run = tmp_path / "r"
    with pytest.raises(ConfigError) as info:
        train(env_id="CartPole-v1", run_dir=str(run), q_network=torch.nn.Linear(4, 2),
              dueling=True, hidden=(7, 7, 7))
    assert str(info.value) == ("q_network is a network of your own, --hidden 7,7,7 sets fastdqn's "
                               "own network, which yours replaces; pass one of them")
    assert not run.exists()
