"""Atomic writes and a checkpoint loader that never runs code and explains every failure."""

from __future__ import annotations

import contextlib
import json
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdqn.core.checkpoint import (
    FORMAT,
    atomic_write_bytes,
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
)
from fastdqn.errors import CheckpointError, ConfigError
from fastdqn.evaluation.policies import load_policy
from fastdqn.nets.mlp import MLP
from fastdqn.runtime.rundir import remove_temp_run_files


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
    assert str(info.value) == (f"checkpoint {path} is truncated or corrupted (its zip directory "
                               "is missing: the end of the file is cut off); use another checkpoint")


def test_flipped_bits_in_tensor_data_are_caught(tmp_path):
    """torch.load itself would load them silently as wrong weights."""
    good = tmp_path / "good.pt"
    save_checkpoint(good, sample_state())
    data = bytearray(good.read_bytes())
    loaded = torch.load(good, weights_only=True)
    raw = loaded["learner"]["params"].numpy().tobytes()
    at = bytes(data).index(raw)  # the params' bytes are stored as they are
    data[at + 5] ^= 0x40
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["learner"]["params"],
                           loaded["learner"]["params"])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path} is corrupted (data/0 fails its CRC check); "
                               "use another checkpoint")


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


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6),
                                                           st.integers(1, 255)), max_size=4),
       garbage=st.binary(max_size=64))
def test_any_damaged_file_is_a_checkpoint_error_never_a_crash(tmp_path, cut, flips, garbage):
    """Truncation, flipped bytes and garbage anywhere: load or CheckpointError, nothing else."""
    good = tmp_path / "good.pt"
    if not good.exists():
        save_checkpoint(good, sample_state())
    data = bytearray(good.read_bytes())
    for at, mask in flips:
        data[at % len(data)] ^= mask
    data = data[: cut % (len(data) + 1)] + garbage
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(data))
    try:
        state = load_checkpoint(path)
    except CheckpointError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    else:
        assert state["format"] == FORMAT


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=512) | st.binary(max_size=256).map(
    lambda b: pickle.dumps({"format": FORMAT})[:-1] + b))
def test_arbitrary_bytes_are_a_checkpoint_error_never_a_crash(tmp_path, data):
    path = tmp_path / "garbage.pt"
    path.write_bytes(data)
    try:
        load_checkpoint(path)
    except CheckpointError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize("obj", [{"a": 1}, [1, 2, 3], {"format": "other/1"}, torch.zeros(3)])
def test_non_fastdqn_torch_file(tmp_path, obj):
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"{path} is not a fastdqn checkpoint; "
                               "pass a checkpoint.pt or best.pt")


def test_legacy_torch_format_is_refused(tmp_path):
    """Its data pickle sits behind others, so it could not be checked before torch.load reads
    it; fastdqn never writes it."""
    path = tmp_path / "legacy.pt"
    torch.save({"format": FORMAT, **sample_state()}, path, _use_new_zipfile_serialization=False)
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


# ---------------------------------------------------------------------------------------------
# Memory bombs: what a file declares is checked before anything is sized from it
# ---------------------------------------------------------------------------------------------


def expand_bomb(hidden: tuple[int, ...]) -> tuple[dict, int]:
    """A well-formed state whose parameters are 4 real bytes viewed with stride 0 as a network
    of `hidden` layers; returns it and its parameter count."""
    n = MLP(4, 2, hidden).num_params
    state = sample_state()
    state["net"]["hidden"] = state["config"]["hidden"] = list(hidden)
    state["learner"]["params"] = torch.zeros(1).expand(n)
    state["learner"]["target"] = torch.zeros(1).expand(n)
    return state, n


def test_stride_0_bomb_is_refused_by_the_loader(tmp_path):
    """Cloning these parameters (as Policy does) would allocate 324 MB from an 8 KB file."""
    state, n = expand_bomb((9000, 9000))
    path = tmp_path / "bomb.pt"
    save_checkpoint(path, state)
    assert path.stat().st_size < 10_000
    message = (f"checkpoint {path}: learner.params is a view of 4 bytes declaring {4 * n:,d} "
               "bytes; the file is crafted or damaged")
    for load in (load_checkpoint, load_policy):
        with pytest.raises(CheckpointError) as info:
            load(path)
        assert str(info.value) == message


@pytest.mark.parametrize(("where", "name"), [
    (("learner", "target"), "learner.target"),
    (("learner", "optimizer", "exp_avg"), "learner.optimizer.exp_avg"),
    (("buffer", "obs"), "buffer.obs"),
    (("counters", "evals", 0, "x"), "counters.evals[0].x"),
    (("rng", "extra", "two words"), "rng.extra['two words']"),
])
def test_every_tensor_anywhere_in_the_file_must_be_dense(tmp_path, where, name):
    state = sample_state()
    state.setdefault("buffer", {})
    state["learner"]["optimizer"] = {}
    state["counters"]["evals"] = [{}]
    state["rng"]["extra"] = {}
    node = state
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = torch.zeros(1).expand(1_000_000)
    path = tmp_path / "c.pt"
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path}: {name} is a view of 4 bytes declaring "
                               "4,000,000 bytes; the file is crafted or damaged")


def test_strided_view_is_refused(tmp_path):
    state = sample_state()
    state["learner"]["params"] = torch.zeros(4, 3).t()  # all its bytes, in another order
    path = tmp_path / "c.pt"
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path}: learner.params is a strided view (shape "
                               "[3, 4], strides [1, 3]), not the dense tensor fastdqn writes; "
                               "the file is crafted or damaged")


def what_weights_only_builds(kind: str) -> object:
    """Objects torch.load(weights_only=True) rebuilds from a file although fastdqn never writes
    them: callables that allocate what the file asks, tensors without bytes in the file."""
    if kind == "bytearray":
        return Payload(bytearray, 100_000_000)  # zero-filled inside torch.load: 100 MB
    if kind == "FloatTensor":
        return Payload(torch.FloatTensor, 100_000_000)  # 400 MB of uninitialized memory
    if kind == "meta":
        return torch.empty(10**9, device="meta")
    if kind == "sparse":
        return torch.sparse_coo_tensor(torch.tensor([[0]]), torch.tensor([1.0]), (10**9,))
    # The pickle memo lets one stored argument feed many calls, each of which copies it:
    # 100 calls on one 10,000-item list build 1,000,000 items from a file of ~100 KB.
    import _codecs
    from collections import OrderedDict

    pairs = [(i, 0) for i in range(10_000)]
    text = "x" * 1_000_000
    func, arg = {"OrderedDict": (OrderedDict, (pairs,)), "Size": (torch.Size, (pairs,)),
                 "encode": (_codecs.encode, (text, "latin1"))}[kind]
    return [Payload(func, *arg) for _ in range(100)]


@pytest.mark.parametrize("kind", ["bytearray", "FloatTensor", "meta", "sparse", "OrderedDict",
                                  "Size", "encode"])
def test_objects_beyond_plain_tensors_are_refused_before_torch_load(tmp_path, monkeypatch,
                                                                     kind):
    state = sample_state()
    state["learner"]["params"] = what_weights_only_builds(kind)
    path = tmp_path / "c.pt"
    save_checkpoint(path, state)
    assert path.stat().st_size < 1_100_000

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load ran")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path} contains code or objects a checkpoint must not "
                               "hold; refusing to load it (only load files you trust)")


def test_zip_member_named_twice_is_refused(tmp_path):
    """Two data.pkl: the one scanned for code could be another than the one torch loads."""
    import zipfile

    good = tmp_path / "good.pt"
    save_checkpoint(good, sample_state())
    path = tmp_path / "c.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w") as zout:
        pkl = next(n for n in zin.namelist() if n.endswith("/data.pkl"))
        zout.writestr(pkl, zin.read(pkl))
        for info in zin.infolist():
            with pytest.warns(UserWarning, match="Duplicate name") if info.filename == pkl \
                    else contextlib.nullcontext():
                zout.writestr(info.filename, zin.read(info))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path}: zip member data.pkl appears twice, which "
                               "torch never writes; the file is crafted or damaged")


class TensorSpec:
    """Pickles as a tensor of any shape over a given storage, as a crafted file can declare."""

    def __init__(self, storage, size: tuple[int, ...]) -> None:
        self.storage, self.size = storage, size

    def __reduce_ex__(self, protocol):
        from collections import OrderedDict

        stride = tuple(int(np.prod(self.size[i + 1:])) for i in range(len(self.size)))
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, self.size, stride, False, OrderedDict()))


def test_tensor_larger_than_its_storage_is_refused(tmp_path):
    import warnings

    state = sample_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated, and what torch.save writes
        state["learner"]["params"] = TensorSpec(torch.zeros(1).storage(), (1_000_000,))
    path = tmp_path / "c.pt"
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path}: a tensor declares more elements than its "
                               "stored data holds; the file is crafted or damaged")


def test_containers_nest_a_bounded_depth(tmp_path):
    """Too deep (or a cycle, which is endless) is refused; lists shared 2**30 ways are fine,
    because a walk of the file visits each container once."""
    deep: list = []
    for _ in range(40):
        deep = [deep]
    cycle: list = []
    cycle.append(cycle)
    shared: list = [1.0]
    for _ in range(30):
        shared = [shared, shared]
    path = tmp_path / "c.pt"
    for nested in (deep, cycle):
        state = sample_state()
        state["counters"]["evals"] = nested
        save_checkpoint(path, state)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(info.value) == (f"checkpoint {path} nests containers more than 32 deep "
                                   "(under counters); the file is crafted or damaged")
    state = sample_state()
    state["counters"]["evals"] = shared
    save_checkpoint(path, state)
    assert load_checkpoint(path)["counters"]["evals"][0][1][0] is not None


@pytest.mark.parametrize(("hidden", "problem"), [
    ([100_000, 100_000], "a network of 10,000,800,002 parameters (4 inputs, hidden "
                         "100000,100000, 2 actions), over the limit of 268,435,456"),
    ([8] * 65, "a network of 65 hidden layers, over the limit of 64"),
])
def test_oversized_network_is_refused_before_it_is_built(tmp_path, hidden, problem):
    state = sample_state()
    state["net"]["hidden"] = hidden
    path = tmp_path / "c.pt"
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError) as info:
        load_policy(str(path))
    assert str(info.value) == f"checkpoint {path} declares {problem}; refusing to load it"


@pytest.mark.parametrize("spec", [{"in_dim": 4, "n_actions": 2, "hidden": [0]},
                                  {"in_dim": -4, "n_actions": 2, "hidden": [8]},
                                  {"in_dim": 4.5, "n_actions": 2, "hidden": [8]}])
def test_malformed_network_description_is_damage(tmp_path, spec):
    state = sample_state()
    state["net"] = spec
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointError, match="lacks fields a fastdqn checkpoint has"):
        load_policy(str(tmp_path / "c.pt"))


def rewrite_zip(src, dst, deflate: str | None = None) -> None:
    """Copy a torch zip member by member (streamed), deflating the member named `deflate`."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            out = zipfile.ZipInfo(info.filename)
            if info.filename == deflate:
                out.compress_type = zipfile.ZIP_DEFLATED
            with zin.open(info) as r, zout.open(out, "w") as w:
                while chunk := r.read(1 << 20):
                    w.write(chunk)


def test_compressed_zip_member_is_refused_before_it_is_inflated(tmp_path):
    """torch.load inflates deflated members: 50 MB of memory from a 50 KB file."""
    import zipfile

    # numpy's zeros: a torch fill this big would start torch's thread pool, and the fork in the
    # kill -9 test below hangs in a child that inherits a started pool
    state = {**sample_state(), "blob": torch.from_numpy(np.zeros(50_000_000, dtype=np.uint8))}
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, state)
    del state
    path = tmp_path / "c.pt"
    with zipfile.ZipFile(plain) as z:
        blob = next(i for i in z.infolist() if i.file_size == 50_000_000).filename
    rewrite_zip(plain, path, deflate=blob)
    assert path.stat().st_size < 200_000
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path}: zip member {blob.split('/', 1)[1]} is "
                               "compressed (50,000,000 bytes once inflated), which torch never "
                               "writes; the file is crafted or damaged")


def test_zip_members_declaring_more_than_the_file_are_refused(tmp_path):
    import struct
    import zipfile

    good = tmp_path / "good.pt"
    save_checkpoint(good, sample_state())
    data = bytearray(good.read_bytes())
    at = data.index(b"PK\x01\x02")  # the central directory's first entry
    while data[at:at + 4] == b"PK\x01\x02":
        csize, usize, nlen, xlen, clen = struct.unpack_from("<IIHHH", data, at + 20)
        name = bytes(data[at + 46: at + 46 + nlen])
        if name.endswith(b"/data/0"):
            struct.pack_into("<II", data, at + 20, 0xF000_0000, 0xF000_0000)
        at += 46 + nlen + xlen + clen
    path = tmp_path / "c.pt"
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as z:
        total = sum(i.file_size for i in z.infolist())
    assert total > 0xF000_0000
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"checkpoint {path}: its zip members declare {total:,d} bytes in "
                               f"all, more than the whole file ({len(data):,d} bytes); the file "
                               "is crafted or damaged")


# ---------------------------------------------------------------------------------------------
# kill -9 at any moment
# ---------------------------------------------------------------------------------------------


def _save_forever(path: str, blob: torch.Tensor) -> None:
    """A tight checkpoint-writing loop (what a trainer killed by kill -9 was doing)."""
    state = sample_state()
    i = 0
    while True:
        i += 1
        save_checkpoint(path, {**state, "counters": {"step": i}, "blob": blob + i})


def test_kill_9_during_a_checkpoint_write_loop_leaves_a_loadable_checkpoint(tmp_path):
    import multiprocessing as mp
    import random
    import signal
    import time

    path = tmp_path / "checkpoint.pt"
    blob = torch.randn(1_000_000)  # 4 MB: each write takes a while, so kills land mid-write
    # spawn, not fork: a forked child inherits torch's intra-op thread pool in whatever state
    # earlier tests left it, and can hang in its first torch call
    ctx = mp.get_context("spawn")
    rng = random.Random(5)
    for _ in range(8):
        p = ctx.Process(target=_save_forever, args=(str(path), blob), daemon=True)
        p.start()
        while not path.exists():  # however long the spawned child takes to start
            assert p.is_alive(), f"the writer died (exit code {p.exitcode})"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.15))  # a random moment of the write loop, not a wait
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        state = load_checkpoint(path)
        step = state["counters"]["step"]
        assert torch.equal(state["blob"], blob + step)  # complete, not torn
        assert step >= 1
        names = {q.name for q in tmp_path.iterdir()}
        assert "checkpoint.pt" in names
        stray = names - {"checkpoint.pt"}
        assert all(n.startswith(".checkpoint.pt.") and n.endswith(".tmp") for n in stray), stray
    removed = remove_temp_run_files(tmp_path)
    assert all(q.name.endswith(".tmp") for q in removed)
    assert [q.name for q in tmp_path.iterdir()] == ["checkpoint.pt"]
    load_checkpoint(path)


def test_remove_temp_run_files_touches_only_atomic_write_leftovers(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"real")
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a write")
    (tmp_path / ".summary.json.x.tmp").write_bytes(b"")
    (tmp_path / "notes.tmp").write_text("a user's file, not a dot file")
    (tmp_path / ".notes.tmp").write_text("a user's dot file: not a temp file of fastdqn's")
    removed = remove_temp_run_files(tmp_path)
    assert sorted(q.name for q in removed) == [".checkpoint.pt.abc123.tmp", ".summary.json.x.tmp"]
    assert sorted(q.name for q in tmp_path.iterdir()) == [".notes.tmp", "checkpoint.pt",
                                                          "notes.tmp", "summary.json"]
