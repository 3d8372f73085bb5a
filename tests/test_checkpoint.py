"""Atomic writes and a checkpoint loader that never runs code and explains every failure."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from fastdqn.checkpoint import (
    FORMAT,
    CheckpointError,
    atomic_write_bytes,
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
)
from fastdqn.config import ConfigError
from fastdqn.evaluate import load_policy
from fastdqn.networks import MLP


def sample_state() -> dict:
    net = MLP(4, 2, (8,))
    params = net.init(torch.Generator().manual_seed(0))
    return {
        "version": "0.1.0",
        "config": {"env_id": "CartPole-v1", "hidden": [8], "seed": 5},
        "env": {"id": "CartPole-v1", "obs_shape": [4], "obs_dtype": "float32", "n_actions": 2},
        "net": {"in_dim": 4, "n_actions": 2, "hidden": [8]},
        "learner": {"params": params, "target": params.clone(), "steps": 3},
        "counters": {"step": 10, "returns": [1.0, 2.5], "best_eval": float("-inf")},
        "rng": {"sampler": [2**63 + 5, 17], "torch": torch.get_rng_state()},
    }


def test_checkpoint_error_is_a_config_error():
    assert issubclass(CheckpointError, ConfigError)


def test_atomic_write_bytes_leaves_no_temp_files(tmp_path):
    target = tmp_path / "data.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second version")
    assert target.read_bytes() == b"second version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_atomic_write_bytes_failure_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "data.bin"
    atomic_write_bytes(target, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_atomic_write_json(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"a": 1, "b": [1.5, None]})
    assert json.loads(target.read_text()) == {"a": 1, "b": [1.5, None]}
    assert target.read_text().endswith("\n")
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_save_load_round_trip(tmp_path):
    state = sample_state()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT
    assert set(loaded) == {"format", *state}
    assert torch.equal(loaded["learner"]["params"], state["learner"]["params"])
    assert torch.equal(loaded["learner"]["target"], state["learner"]["target"])
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert loaded["rng"]["sampler"] == [2**63 + 5, 17]
    assert loaded["counters"] == state["counters"]
    assert loaded["config"] == state["config"]
    assert loaded["env"] == state["env"]


def test_load_policy_from_checkpoint(tmp_path):
    state = sample_state()
    path = tmp_path / "best.pt"
    save_checkpoint(path, state)
    policy, ckpt = load_policy(str(path))
    assert ckpt["env"] == state["env"]
    assert ckpt["config"] == state["config"]  # callers need nothing else from the file
    assert torch.equal(policy.params, state["learner"]["params"])
    obs = np.ones((3, 4), dtype=np.float32)
    net = MLP(4, 2, (8,))
    ref = net.forward(net.views(state["learner"]["params"]), torch.as_tensor(obs))
    assert torch.equal(policy.q_values(obs), ref)


def test_load_policy_wrong_param_count(tmp_path):
    state = sample_state()
    state["learner"]["params"] = torch.zeros(5)
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointError, match="parameter count does not match"):
        load_policy(str(tmp_path / "c.pt"))


def test_load_policy_missing_fields(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"env": {}})
    with pytest.raises(CheckpointError, match="lacks fields a fastdqn checkpoint has"):
        load_policy(str(tmp_path / "c.pt"))


def test_load_policy_needs_the_seed_eval_uses(tmp_path):
    state = sample_state()
    del state["config"]["seed"]
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointError, match="lacks fields a fastdqn checkpoint has"):
        load_policy(str(tmp_path / "c.pt"))


# ---------------------------------------------------------------------------------------------
# Every way a file can be bad
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"checkpoint {path} does not exist; check the path"


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is not a file; pass the .pt file"):
        load_checkpoint(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"checkpoint {path} is empty (truncated); use another checkpoint"


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.1])
def test_truncated_file(tmp_path, fraction):
    good = tmp_path / "good.pt"
    save_checkpoint(good, sample_state())
    data = good.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"checkpoint {path} is truncated or corrupted (")
    assert msg.endswith("); use another checkpoint")
    assert "\n" not in msg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_file(tmp_path, seed):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    # damage, not code: the message must not send the user hunting for an attack
    assert msg.startswith(f"checkpoint {path} is corrupted (")
    assert msg.endswith("); use another checkpoint")
    assert "\n" not in msg


@pytest.mark.parametrize("obj", [{"a": 1}, [1, 2, 3], {"format": "other/1"}, torch.zeros(3)])
def test_non_fastdqn_torch_file(tmp_path, obj):
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"{path} is not a fastdqn checkpoint; "
                               "pass a checkpoint.pt or best.pt")


class Payload:
    """Unpickling this calls `func(*args)`: a checkpoint that executes code."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def shell_payload(marker) -> Payload:
    return Payload(os.system, f"touch '{marker}'")


def exec_payload(marker) -> Payload:
    return Payload(exec, f"open({str(marker)!r}, 'w').close()")


def eval_payload(marker) -> Payload:
    return Payload(eval, f"open({str(marker)!r}, 'w').close()")


PAYLOADS = {"os.system": shell_payload, "builtins.exec": exec_payload,
            "builtins.eval": eval_payload}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_payload_really_runs_when_unpickled_unsafely(tmp_path, kind):
    """Guard for the tests below: each crafted pickle does run its code under plain pickle."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(PAYLOADS[kind](marker)))
    assert marker.exists()


def write_evil(path, marker, kind: str, how: str) -> None:
    state = {"format": FORMAT, "learner": PAYLOADS[kind](marker)}
    if how == "torch.save":
        torch.save(state, path)
    elif how == "pickle":
        path.write_bytes(pickle.dumps(state))  # default protocol: STACK_GLOBAL opcodes
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))  # GLOBAL opcodes


CASES = [(kind, how) for kind in PAYLOADS for how in ("torch.save", "pickle", "pickle2")]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(("kind", "how"), CASES)
def test_code_executing_pickle_never_runs(tmp_path, kind, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    write_evil(path, marker, kind, how)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(("kind", "how"), CASES)
def test_code_executing_pickle_is_called_unsafe(tmp_path, kind, how):
    path = tmp_path / "evil.pt"
    write_evil(path, tmp_path / "pwned", kind, how)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"checkpoint {path} contains code or objects a checkpoint must not hold; "
        "refusing to load it (only load files you trust)"
    )
