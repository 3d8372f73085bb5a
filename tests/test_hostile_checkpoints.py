"""What a checkpoint file may make fastdqn do: nothing but be read as data.

Every value the learner steps index with or trust is checked when a run resumes; a file that
torch.load would read another way than the checks is refused before torch.load sees it; a file
never decides where a run connects, nor how many processes, envs, threads or bytes it takes.
Each refusal is one line and exit 2, with the run dir untouched.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import shutil
import socket
import struct
import subprocess
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import fastdqn_command, subprocess_env

from fastdqn.cli import main
from fastdqn.core.checkpoint import FORMAT, load_checkpoint, save_checkpoint, settings_from_file
from fastdqn.errors import CheckpointError
from fastdqn.runtime.train import train

TINY = ["--env", "CartPole-v1", "--vector", "sync", "--num-envs", "2", "--total-timesteps",
        "300", "--learning-starts", "64", "--batch-size", "32", "--buffer-size", "500",
        "--hidden", "16", "--eval-every", "0", "--eval-episodes", "2", "--solve-episodes", "2",
        "--eval-envs", "2", "--seed", "3", "--no-progress"]
"""A CartPole run of a few seconds; 300 rows of a 500-row buffer when saved."""

DAMAGED = ("the file is damaged or not fastdqn's: start a new run or resume from another "
           "checkpoint")


def tiny_run(folder: Path, *extra: str) -> Path:
    run = folder / "run"
    assert main(["train", *TINY, "--run-dir", str(run), *extra]) == 0
    return run


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A finished run whose checkpoint.pt holds its replay buffer."""
    return tiny_run(tmp_path_factory.mktemp("saved"), "--save-buffer")


@pytest.fixture(scope="module")
def saved_per(tmp_path_factory) -> Path:
    """The same with prioritized replay and 3-step returns."""
    return tiny_run(tmp_path_factory.mktemp("saved_per"), "--save-buffer", "--prioritized",
                    "--n-step", "3")


ON_POLICY = [a for a in TINY if a not in ("--batch-size", "32", "--buffer-size", "500",
                                          "--learning-starts", "64")]
"""TINY without DQN's own settings."""


@pytest.fixture(scope="module")
def saved_pqn(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("saved_pqn") / "run"
    assert main(["train", *ON_POLICY, "--algo", "pqn", "--pqn-rollout", "8",
                 "--run-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def saved_reinforce(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("saved_reinforce") / "run"
    args = [a for a in ON_POLICY if a not in ("--hidden", "16")]
    assert main(["train", *args, "--algo", "reinforce", "--policy-hidden", "8",
                 "--run-dir", str(run)]) == 0
    return run


@pytest.fixture
def nothing_starts(monkeypatch) -> None:
    """Building an agent or envs fails the test: a refusal must come first. (Without it, the
    settings these tests hand a run would start 100 000 processes or allocate terabytes.)"""
    import fastdqn.runtime.run
    from fastdqn.algos.registry import ALGOS

    def refuse(*args, **kwargs):
        raise AssertionError("the run went on to build its agent or envs")

    for name, algo in ALGOS.items():
        monkeypatch.setitem(ALGOS, name, replace(algo, make_agent=refuse))
    monkeypatch.setattr(fastdqn.runtime.run, "make_vector_env", refuse)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def resume_refused(run: Path, tmp_path: Path, capsys, edit: Callable[[dict], None] | None,
                   *extra: str, data: bytes | None = None) -> str:
    """Resume a copy of `run` whose checkpoint `edit` changed (or that holds `data`): exit 2,
    one line, every file of the run dir as it was; returns the line."""
    d = tmp_path / "resumed"
    shutil.copytree(run, d)
    if edit is not None:
        state = torch.load(d / "checkpoint.pt", weights_only=True)
        edit(state)
        torch.save(state, d / "checkpoint.pt")
    if data is not None:
        (d / "checkpoint.pt").write_bytes(data)
    capsys.readouterr()
    before = snapshot(d)
    code = main(["train", "--resume", "--run-dir", str(d), "--total-timesteps", "400", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert snapshot(d) == before
    return one_line(err)


def setter(*where: object, value: object) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        node = state
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = value(node[where[-1]]) if callable(value) else value
    return edit


def filled(value: float, dtype: torch.dtype | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Replace a tensor's first element by `value` (converting it to `dtype` first)."""
    def change(t: torch.Tensor) -> torch.Tensor:
        t = t.clone() if dtype is None else t.to(dtype)
        t.view(-1)[0] = value
        return t
    return change


# ---------------------------------------------------------------------------------------------
# 1. Every value of a saved buffer that the learner steps index with or trust
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["saved", "saved_per", "saved_pqn", "saved_reinforce"])
def test_a_genuine_checkpoint_passes_every_check(request, tmp_path, capsys, fixture):
    """Guard: the checks below refuse what no run writes, and nothing a run writes."""
    d = tmp_path / "run"
    shutil.copytree(request.getfixturevalue(fixture), d)
    assert main(["train", "--resume", "--run-dir", str(d), "--total-timesteps", "400",
                 "--no-progress"]) == 0, capsys.readouterr().err

BUFFER_VALUES = {
    "action-huge": (("buffer", "actions"), filled(50_000_000),
                    "buffer.actions holds 50000000, outside 0..1"),
    "action-negative": (("buffer", "actions"), filled(-1), "buffer.actions holds -1, outside 0..1"),
    "action-neighbour-row": (("buffer", "actions"), filled(-5000),
                             "buffer.actions holds -5000, outside 0..1"),
    "action-float": (("buffer", "actions"), filled(1.0, torch.float32),
                     "buffer.actions holds float32 values, not int64"),
    "done-2": (("buffer", "dones"), filled(2.0), "buffer.dones holds 2, not 0 or 1"),
    "done-half": (("buffer", "dones"), filled(0.5), "buffer.dones holds 0.5, not 0 or 1"),
    "done-bool": (("buffer", "dones"), lambda t: t.bool(),
                  "buffer.dones holds bool values, not float32"),
    "discount-above-1": (("buffer", "discounts"), filled(1.5),
                         "buffer.discounts holds 1.5, outside [0, 1]"),
    "discount-negative": (("buffer", "discounts"), filled(-0.1),
                          "buffer.discounts holds -0.1, outside [0, 1]"),
    "discount-nan": (("buffer", "discounts"), filled(float("nan")),
                     "buffer.discounts holds nan, outside [0, 1]"),
    "reward-inf": (("buffer", "rewards"), filled(float("inf")),
                   "buffer.rewards holds inf, not a finite number"),
    "reward-nan": (("buffer", "rewards"), filled(float("nan")),
                   "buffer.rewards holds nan, not a finite number"),
    "obs-nan": (("buffer", "obs"), filled(float("nan")),
                "buffer.obs holds nan, not a finite number"),
    "next-obs-inf": (("buffer", "next_obs"), filled(float("-inf")),
                     "buffer.next_obs holds -inf, not a finite number"),
    "obs-float64": (("buffer", "obs"), lambda t: t.double(),
                    "buffer.obs holds float64 values, not float32"),
}


@pytest.mark.parametrize("case", list(BUFFER_VALUES))
def test_a_saved_buffer_value_out_of_range_is_refused(saved, tmp_path, capsys, case):
    where, value, problem = BUFFER_VALUES[case]
    err = resume_refused(saved, tmp_path, capsys, setter(*where, value=value))
    assert err == f"error: {tmp_path / 'resumed' / 'checkpoint.pt'}: {problem}; {DAMAGED}\n"


COUNTS = {
    "pos-behind-size": ({"pos": 100}, "size 300 and position 100 do not fit its capacity 500"),
    "size-bool": ({"size": True, "pos": 1}, "size True and position 1 do not fit"),
    "pos-negative": ({"pos": -1}, "size 300 and position -1 do not fit"),
}


@pytest.mark.parametrize("case", list(COUNTS))
def test_buffer_counters_that_no_run_leaves_are_refused(saved, tmp_path, capsys, case):
    change, problem = COUNTS[case]
    err = resume_refused(saved, tmp_path, capsys, lambda s: s["buffer"].update(change))
    assert problem in err


@pytest.mark.parametrize("learner", ["auto", "numba"])
def test_a_huge_saved_action_ends_in_one_line_not_a_crash(saved, tmp_path, learner):
    """Before: the native and the Numba step wrote outside the network's buffers (exit 139 or
    a heap corruption abort, no output)."""
    d = tmp_path / "run"
    shutil.copytree(saved, d)
    state = torch.load(d / "checkpoint.pt", weights_only=True)
    state["buffer"]["actions"][:] = 50_000_000 if learner == "auto" else -1
    torch.save(state, d / "checkpoint.pt")
    r = subprocess.run(fastdqn_command("train", "--resume", "--run-dir", str(d), "--learner",
                                       learner, "--total-timesteps", "600", "--no-progress"),
                       capture_output=True, text=True, timeout=240, env=subprocess_env())
    assert r.returncode == 2, r.stderr
    assert one_line(r.stderr).endswith(f"outside 0..1; {DAMAGED}\n")


SAMPLER = {
    "priority-negative": (("rng", "sampler", "priorities"), filled(-1.0),
                          "rng.sampler.priorities holds a value that is not finite and positive"),
    "priority-nan": (("rng", "sampler", "priorities"), filled(float("nan")),
                     "rng.sampler.priorities holds a value that is not finite and positive"),
    "priority-zero": (("rng", "sampler", "priorities"), lambda t: torch.zeros_like(t),
                      "rng.sampler.priorities holds a value that is not finite and positive"),
    "priorities-too-many": (("rng", "sampler", "priorities"), lambda t: torch.cat([t, t[:5]]),
                            "rng.sampler holds {n+5} priorities for the {n} rows of its buffer"),
    "priorities-float32": (("rng", "sampler", "priorities"), lambda t: t.float(),
                           "rng.sampler.priorities is not a float64 vector"),
    "max-priority-inf": (("rng", "sampler", "max_priority"), float("inf"),
                         "rng.sampler.max_priority is inf, not a finite positive number"),
    "capacity": (("rng", "sampler", "capacity"), 10**9,
                 "rng.sampler's priorities are for a buffer of 1000000000 rows, not 500"),
    "words-negative": (("rng", "sampler", "rng"), [-1, 5],
                       "rng.sampler does not hold the sampler's two nonzero 64-bit words"),
    "words-three": (("rng", "sampler", "rng"), [1, 2, 3],
                    "rng.sampler does not hold the sampler's two nonzero 64-bit words"),
    "words-zero": (("rng", "sampler", "rng"), [0, 0],
                   "rng.sampler does not hold the sampler's two nonzero 64-bit words"),
}


@pytest.mark.parametrize("case", list(SAMPLER))
def test_saved_priorities_and_sampler_words_are_checked(saved_per, tmp_path, capsys, case):
    where, value, problem = SAMPLER[case]
    n = torch.load(saved_per / "checkpoint.pt", weights_only=True)["buffer"]["size"]
    problem = problem.replace("{n+5}", str(n + 5)).replace("{n}", str(n))
    err = resume_refused(saved_per, tmp_path, capsys, setter(*where, value=value))
    assert err == f"error: {tmp_path / 'resumed' / 'checkpoint.pt'}: {problem}; {DAMAGED}\n"


def test_another_per_alpha_is_a_flag_to_pass(saved_per, tmp_path, capsys):
    """Before: a ValueError traceback from the sampler's own check."""
    err = resume_refused(saved_per, tmp_path, capsys, None, "--per-alpha", "0.5")
    assert err.endswith("was trained with --per-alpha 0.6; pass --per-alpha 0.6 to resume it\n")


def test_uniform_sampler_words_are_checked(saved, tmp_path, capsys):
    err = resume_refused(saved, tmp_path, capsys, setter("rng", "sampler", value=[2**64, 1]))
    assert "rng.sampler does not hold the sampler's two nonzero 64-bit words" in err


STATES = {
    "act": (("rng", "act"), lambda t: t[:10], "rng.act"),
    "act-position": (("rng", "act"), lambda t: torch.full_like(t, 255), "rng.act"),
    "per": (("rng", "per"), lambda t: t.float(), "rng.per"),
    "torch": (("rng", "torch"), lambda t: torch.zeros_like(t), "rng.torch"),
}


@pytest.mark.parametrize("case", list(STATES))
def test_generator_states_are_checked_before_they_are_set(saved, tmp_path, capsys, case):
    where, value, name = STATES[case]
    err = resume_refused(saved, tmp_path, capsys, setter(*where, value=value))
    assert f": {name} is not a state of this run's cpu random generator; the file is " in err


LEARNER = {
    "params-nan": (("learner", "params"), filled(float("nan")), "learner.params is not a tensor "
                   "of finite float32 values"),
    "target-float64": (("learner", "target"), lambda t: t.double(), "learner.target is not a "
                       "tensor of finite float32 values"),
    "exp-avg-sq-negative": (("learner", "optimizer", "exp_avg_sq"), filled(-1.0),
                            "learner.optimizer.exp_avg_sq is not a tensor of finite "
                            "non-negative float32 values"),
    "step-inf": (("learner", "optimizer", "step"), lambda t: torch.tensor(float("inf")),
                 "learner.optimizer.step is not a tensor of finite non-negative float32 "
                 "values"),
    "steps-text": (("learner", "steps"), "many", "learner.steps is many, not a count of "
                   "learner steps"),
}


@pytest.mark.parametrize("case", list(LEARNER))
def test_the_flat_learners_values_are_checked(saved, tmp_path, capsys, case):
    """Before: a NaN loaded silently and the run diverged after writing to its run dir."""
    where, value, problem = LEARNER[case]
    err = resume_refused(saved, tmp_path, capsys, setter(*where, value=value))
    assert err == f"error: {tmp_path / 'resumed' / 'checkpoint.pt'}: {problem}; {DAMAGED}\n"


def test_the_reference_learners_module_and_optimizer_are_checked(tmp_path, capsys):
    run = tiny_run(tmp_path / "ref", "--learner", "reference")
    name = next(iter(torch.load(run / "checkpoint.pt", weights_only=True)["learner"]["online"]))
    err = resume_refused(run, tmp_path, capsys,
                         setter("learner", "online", name, value=filled(np.nan)))
    assert f"learner.online.{name} is not a finite float32 tensor" in err
    first = next(iter(torch.load(run / "checkpoint.pt", weights_only=True)["learner"]
                      ["optimizer"]["state"]))

    def swap(state: dict) -> None:  # the slots of two parameters of other shapes, exchanged
        groups = state["learner"]["optimizer"]["param_groups"]
        groups[0]["params"] = list(reversed(groups[0]["params"]))

    shutil.rmtree(tmp_path / "resumed")
    err = resume_refused(run, tmp_path, capsys, swap)
    assert "learner.optimizer is not an optimizer state of this network's parameters" in err
    assert first == 0


COUNTERS = {
    "step-negative": ({"step": -5}, "step -5 is negative"),
    "end-after-step": ({"end_steps": "last+1000"}, "the episodes' end steps are not in order"),
    "return-nan": ({"returns": "nan"}, "a return is not a finite number"),
    "length-zero": ({"lengths": "zero"}, "an episode length is not a whole number >= 1"),
    "eval-tensor": ({"evals": [{"step": 1, "x": torch.zeros(1)}]},
                    "an evaluation record is not one a run writes"),
    "eval-no-step": ({"evals": [{"mean": 1.0}]}, "an evaluation record is not one a run writes"),
    "wall-time-nan": ({"wall_time": float("nan")}, "wall_time nan is not a number"),
}


@pytest.mark.parametrize("case", list(COUNTERS))
def test_counters_no_run_leaves_are_refused(saved, tmp_path, capsys, case):
    change, problem = COUNTERS[case]

    def edit(state: dict) -> None:
        c = state["counters"]
        assert c["episodes"] > 0
        for key, value in change.items():
            if value == "last+1000":
                c[key][-1] = c["step"] + 1000
            elif value == "nan":
                c[key][0] = float("nan")
            elif value == "zero":
                c[key][0] = 0
            else:
                c[key] = value

    err = resume_refused(saved, tmp_path, capsys, edit)
    assert f"its counters are inconsistent ({problem}" in err


@pytest.mark.parametrize("start", [{"seed": -1, "rng": None},
                                   {"seed": None, "rng": {"bit_generator": "PCG64",
                                                          "state": {"state": "x"}}}])
def test_episode_starts_numpy_would_refuse_are_refused_before_the_envs_start(saved, tmp_path,
                                                                            capsys, start):
    err = resume_refused(saved, tmp_path, capsys,
                         lambda s: s.__setitem__("env_starts", [start] * 2))
    assert "env_starts[0] is not an episode start" in err


def test_pqn_state_is_checked(saved_pqn, tmp_path, capsys):
    err = resume_refused(saved_pqn, tmp_path, capsys, lambda s: s["learner"]["online"].update(
        {k: filled(np.inf)(v) for k, v in list(s["learner"]["online"].items())[:1]}))
    assert "is not a finite float32 tensor" in err and "learner.online." in err
    for edit, problem in [(setter("learner", "steps", value=-1), "learner.steps is -1"),
                          (setter("rng", "shuffle", value=lambda t: t[:3]), "rng.shuffle is not")]:
        shutil.rmtree(tmp_path / "resumed")
        assert problem in resume_refused(saved_pqn, tmp_path, capsys, edit)


def test_reinforce_state_is_checked(saved_reinforce, tmp_path, capsys):
    state = torch.load(saved_reinforce / "checkpoint.pt", weights_only=True)
    assert len(state["episodes"]["rewards"]), "no finished episode was saved"
    for edit, problem in [
            (setter("episodes", "rewards", value=filled(np.nan)), "its stored episodes are "
             "inconsistent"),
            (setter("episodes", "obs", value=lambda t: t.double()), "its stored episodes are "
             "inconsistent"),
            (setter("learner", "updates", value=2.5), "learner.updates is 2.5"),
            (lambda s: s["learner"]["weights"].update(
                {k: filled(np.nan)(v) for k, v in list(s["learner"]["weights"].items())[:1]}),
             "is not a finite float32 tensor")]:
        shutil.rmtree(tmp_path / "resumed", ignore_errors=True)
        assert problem in resume_refused(saved_reinforce, tmp_path, capsys, edit)


class StackEnv(gym.Env):
    """Observations of rank 2 (two frames of three values), for --frame-replay on."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2, 3), np.float32)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros((2, 3), np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.full((2, 3), self.t / 20, np.float32)
        return obs, 1.0, self.t >= 20, False, {}


def test_a_frame_replays_actions_are_checked(tmp_path):
    run = tmp_path / "run"
    cfg = dict(env_id="Stack", env_factory=StackEnv, vector="sync", num_envs=2, hidden=(8,),
               network="mlp", frame_replay="on", batch_size=8, buffer_size=64,
               learning_starts=16, eval_every=0, eval_episodes=1, solve_episodes=1, eval_envs=1,
               progress=False, save_buffer=True, run_dir=str(run))
    train(**cfg, total_timesteps=40)
    state = load_checkpoint(run / "checkpoint.pt")
    state["buffer"]["actions"][3] = 3
    save_checkpoint(run / "checkpoint.pt", state)
    with pytest.raises(CheckpointError) as info:
        train(**cfg, total_timesteps=80, resume=True)
    assert str(info.value) == (f"{run / 'checkpoint.pt'}: buffer.actions holds 3, outside 0..2; "
                               f"{DAMAGED}")


# ---------------------------------------------------------------------------------------------
# 2. Files torch.load would read another way than the checks here
# ---------------------------------------------------------------------------------------------


class Call:
    """Unpickles as func(*args)."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def legacy(obj: object) -> bytes:
    """torch's legacy (non-zip) serialization of `obj`: what torch.load reads from a file whose
    first bytes are not a zip's."""
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def payload(kind: str, nbytes: int = 1_500_000_000) -> object:
    if kind == "bytearray":
        return Call(bytearray, nbytes)
    if kind == "sparse":
        return torch.sparse_coo_tensor(torch.tensor([[0]]), torch.tensor([1.0]), (10**9,))
    return torch.empty(10**12, device="meta")


def polyglot(good: Path, kind: str, nbytes: int = 1_500_000_000) -> bytes:
    """A legacy pickle of a hostile checkpoint, then a genuine checkpoint's zip: Python's
    zipfile finds the zip (it reads the end), torch.load reads the legacy pickle (it reads the
    start)."""
    return legacy({"format": FORMAT, "learner": payload(kind, nbytes)}) + good.read_bytes()


class Storage:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class Tensor:
    """Pickles as a float tensor over `storage`, as torch.save writes one."""

    def __init__(self, storage: Storage, size: int) -> None:
        self.storage, self.size = storage, size

    def __reduce_ex__(self, protocol):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, (self.size,), (1,), False, OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def declared_storage(numel: int, held: int) -> bytes:
    """A torch zip whose one tensor's storage declares `numel` floats over `held` bytes."""
    pkl = io.BytesIO()
    _Pickler(pkl, protocol=2).dump({"format": FORMAT, "x": Tensor(Storage("0", numel), 4)})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl.getvalue())
        z.writestr("archive/data/0", bytes(held))
        z.writestr("archive/version", "3\n")
    return out.getvalue()


def hostile(kind: str, good: Path) -> bytes:
    data = good.read_bytes()
    if kind.startswith("polyglot-"):
        return polyglot(good, kind.removeprefix("polyglot-"))
    if kind == "zip64-after-other-bytes":  # a local header's signature, then the genuine zip
        return data[:30] + data
    if kind == "zip-after-other-bytes":  # the same zip as Python writes it (no zip64 records)
        out = io.BytesIO()
        with zipfile.ZipFile(good) as zin, zipfile.ZipFile(out, "w") as zout:
            for info in zin.infolist():
                zout.writestr(info, zin.read(info))
        return data[:30] + out.getvalue()
    if kind == "zip-comment":
        out = io.BytesIO(data)
        with zipfile.ZipFile(out, "a") as z:
            z.comment = b"x" * 30
        return out.getvalue()
    if kind == "zip64-locator-elsewhere":
        end = len(data) - 42
        assert data[end:end + 4] == b"PK\x06\x07"
        return data[:end + 8] + struct.pack("<Q", 0) + data[end + 16:]
    if kind == "storage-larger-than-held":
        return declared_storage(10**9, 16)
    if kind == "storage-not-held":
        return declared_storage(4, 0)[:0] or declared_storage(4, 16).replace(b"archive/data/0",
                                                                            b"archive/data/9")
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "learner": payload(kind.removeprefix("zip-"))}, buf)
    return buf.getvalue()


HOSTILE = {
    "polyglot-bytearray": "it is a zip archive that does not start at its first byte",
    "polyglot-sparse": "it is a zip archive that does not start at its first byte",
    "polyglot-meta": "it is a zip archive that does not start at its first byte",
    "zip-after-other-bytes": "its zip directory is recorded at byte",
    "zip64-after-other-bytes": "its zip64 locator points elsewhere than its zip64 record",
    "zip-comment": "its zip directory record is not the file's last 22 bytes",
    "zip64-locator-elsewhere": "its zip64 locator points elsewhere than its zip64 record",
    "storage-larger-than-held": "a tensor's storage declares 4,000,000,000 bytes, but the file "
                                "holds 16 bytes for it",
    "storage-not-held": "a tensor's storage declares 16 bytes, but the file holds no such storage",
    "zip-sparse": "contains code or objects a checkpoint must not hold",
    "zip-meta": "contains code or objects a checkpoint must not hold",
}


def no_torch_load(*args, **kwargs):
    raise AssertionError("torch.load ran on a file the checks should have refused")


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_eval_refuses_a_file_torch_would_read_otherwise(saved, tmp_path, capsys, monkeypatch,
                                                        kind):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(hostile(kind, saved / "checkpoint.pt"))
    monkeypatch.setattr(torch, "load", no_torch_load)
    before = snapshot(tmp_path)
    assert main(["eval", str(path), "--episodes", "2"]) == 2
    err = one_line(capsys.readouterr().err)
    assert str(path) in err and HOSTILE[kind] in err, err
    assert snapshot(tmp_path) == before


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_resume_refuses_a_file_torch_would_read_otherwise(saved, tmp_path, capsys, monkeypatch,
                                                          kind):
    data = hostile(kind, saved / "checkpoint.pt")
    monkeypatch.setattr(torch, "load", no_torch_load)
    err = resume_refused(saved, tmp_path, capsys, None, data=data)
    assert HOSTILE[kind] in err, err


def test_the_genuine_zip_inside_a_polyglot_still_loads(saved, tmp_path):
    """Guard: the polyglot's zip is a good checkpoint, so only its first bytes are refused."""
    data = polyglot(saved / "checkpoint.pt", "sparse")
    zip_start = data.index(b"PK\x03\x04")
    (tmp_path / "c.pt").write_bytes(data[zip_start:])
    assert load_checkpoint(tmp_path / "c.pt")["format"] == FORMAT


def peak_rss_mb(*args: str) -> tuple[int, str, float]:
    """Exit code, stderr and peak resident memory (MB) of `python -m fastdqn ...`."""
    proc = subprocess.Popen(fastdqn_command(*args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=subprocess_env())
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.stderr.close()
    return os.waitstatus_to_exitcode(status), err, usage.ru_maxrss / 1024


def test_a_polyglot_costs_eval_no_memory(saved, tmp_path):
    """Before: a 2 KB file made torch.load allocate the bytearray its legacy pickle asks for."""
    path = tmp_path / "poly.pt"
    path.write_bytes(polyglot(saved / "checkpoint.pt", "bytearray", 800_000_000))
    assert path.stat().st_size < 100_000
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    code, _, baseline = peak_rss_mb("eval", str(tmp_path / "random.pt"))
    assert code == 2
    code, err, peak = peak_rss_mb("eval", str(path), "--episodes", "2")
    assert code == 2 and "does not start at its first byte" in one_line(err)
    assert peak < baseline + 200, (peak, baseline)


# ---------------------------------------------------------------------------------------------
# 3. Where a run connects, and how much it starts, is never a file's decision
# ---------------------------------------------------------------------------------------------


def test_resume_never_connects_where_the_file_says(saved, tmp_path, capsys, monkeypatch):
    """Before: the resumed run joined the Ray cluster the file named (and hung there)."""
    import fastdqn.algos.apex

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    calls = []
    monkeypatch.setattr(fastdqn.algos.apex, "connect", lambda cfg: calls.append(cfg) or False)
    d = tmp_path / "run"
    shutil.copytree(saved, d)
    state = torch.load(d / "checkpoint.pt", weights_only=True)
    state["config"].update(actors=2, ray_address=address)
    torch.save(state, d / "checkpoint.pt")
    try:
        assert main(["train", "--resume", "--run-dir", str(d), "--total-timesteps", "400",
                     "--no-progress"]) == 0, capsys.readouterr().err
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()
    assert calls == []
    summary = (d / "summary.json").read_text()
    assert '"actors": 0' in summary and '"ray_address": ""' in summary


def test_an_apex_checkpoint_resumes_only_where_you_say(saved_per, tmp_path, capsys):
    def apex(state: dict) -> None:
        state["config"].update(actors=3, prioritized=False, ray_address="10.0.0.1:6379",
                               weight_sync_every=100)

    err = resume_refused(saved_per, tmp_path, capsys, apex)
    assert err.endswith("is an Ape-X run (3 actors), and a checkpoint never decides where a run "
                        "connects: pass --actors 3 (and --ray-address for a cluster) to resume it "
                        "on Ray, or --prioritized to resume it on this machine alone\n")


def test_settings_from_a_file_leave_out_where_the_run_connects():
    saved = {"actors": 4, "ray_address": "10.0.0.1:6379", "weight_sync_every": 100,
             "actor_block": 8, "lr": 0.01}
    assert settings_from_file(saved, {}) == {"lr": 0.01}
    assert settings_from_file(saved, {"actors": 2}) == {"weight_sync_every": 100,
                                                         "actor_block": 8, "lr": 0.01}


def test_resume_help_says_where_a_resumed_run_connects(capsys):
    assert main(["train", "--help"]) == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines at hyphens too
    assert "--actorsand--ray-addresscomefromthecommandlineor--configonly" in text


FILE_SETTINGS = {
    "async-processes": ({"vector": "async", "num_envs": 10_000},
                        "sets --num-envs 10000, which starts 10000 env processes"),
    "envs": ({"num_envs": 10_000}, "sets --num-envs 10000, more than 4096 envs"),
    "eval-envs": ({"eval_envs": 10_000}, "sets --eval-envs 10000, more than 4096 envs"),
    "workers": ({"vector": "sharded", "num_workers": 10**6}, "sets --num-workers 1000000, more than"),
    "threads": ({"num_threads": 1000}, "sets --num-threads 1000, more threads than this "
                "machine's"),
    "episodes": ({"solve_episodes": 10**6}, "sets --solve-episodes 1000000, more than "
                 "100,000 episodes per evaluation"),
}


@pytest.mark.parametrize("case", list(FILE_SETTINGS))
def test_a_files_settings_stay_under_this_machines_limits(saved, tmp_path, capsys, case,
                                                         nothing_starts):
    change, problem = FILE_SETTINGS[case]
    err = resume_refused(saved, tmp_path, capsys, lambda s: s["config"].update(change))
    assert problem in err, err
    flag = err.split(" sets ")[1].split(",")[0]
    assert err.endswith(f"pass {flag} on the command line if you mean it\n")


def test_a_setting_beyond_a_files_limit_is_yours_to_give(saved, tmp_path, capsys):
    d = tmp_path / "run"
    shutil.copytree(saved, d)
    state = torch.load(d / "checkpoint.pt", weights_only=True)
    state["config"]["eval_envs"] = 10_000
    torch.save(state, d / "checkpoint.pt")
    assert main(["train", "--resume", "--run-dir", str(d), "--total-timesteps", "400",
                 "--eval-envs", "10000", "--no-progress"]) == 0, capsys.readouterr().err


def test_a_batch_that_cannot_fit_is_refused_before_anything_is_allocated(saved, tmp_path,
                                                                         capsys, nothing_starts,
                                                                         monkeypatch):
    import fastdqn.replay.rows

    monkeypatch.setattr(fastdqn.replay.rows, "available_memory", lambda device: 8 * 10**9)
    rows = 1 << 22  # the buffer fits (218 MB of the 8 GB); the batch's activations (275 GB) not
    err = resume_refused(saved, tmp_path, capsys, lambda s: s["config"].update(
        batch_size=rows, buffer_size=rows, hidden=[4096]))
    assert f"a learner batch of {rows:,d} rows needs" in err and err.endswith(
        "; lower --batch-size\n")
    fresh = tmp_path / "fresh"
    assert main(["train", *TINY, "--batch-size", str(rows), "--buffer-size", str(rows),
                 "--hidden", "4096", "--run-dir", str(fresh)]) == 2
    assert "lower --batch-size" in one_line(capsys.readouterr().err)
    assert not fresh.exists()


def test_a_files_network_settings_are_capped_before_the_agent_is_built(saved_reinforce,
                                                                       tmp_path, capsys,
                                                                       nothing_starts):
    """Before: the policy network the file's settings describe was allocated (40 GB) before
    the file's network was compared with it."""
    err = resume_refused(saved_reinforce, tmp_path, capsys, lambda s: s["config"].update(
        policy_hidden=[100_000, 100_000]))
    assert "268,435,456" in err, err


# ---------------------------------------------------------------------------------------------
# Second review: what eval trusted, counters beyond any run, settings stored as text
# ---------------------------------------------------------------------------------------------


def eval_refused(run: Path, tmp_path: Path, capsys, edit: Callable[[dict], None],
                 *extra: str, name: str = "checkpoint.pt") -> str:
    """`fastdqn eval` on a copy of `run`'s `name` that `edit` changed: exit 2, one line, nothing
    written; returns the line."""
    d = tmp_path / "evaluated"
    shutil.copytree(run, d)
    state = torch.load(d / name, weights_only=True)
    edit(state)
    torch.save(state, d / name)
    capsys.readouterr()
    before = snapshot(d)
    code = main(["eval", str(d / name), "--episodes", "1", "--num-envs", "1", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert snapshot(d) == before
    return one_line(err)


@pytest.mark.parametrize("name", ["checkpoint.pt", "best.pt"])
@pytest.mark.parametrize("value,problem", [
    (filled(float("nan")), "learner.params is not a tensor of finite float32 values"),
    (lambda t: t.double(), "learner.params is not a tensor of finite float32 values"),
    (lambda t: t.int(), "learner.params is not a tensor of finite float32 values"),
    (lambda t: t.view(1, -1), "parameter count does not match its network shape"),
])
def test_eval_checks_the_flat_networks_parameters(saved, tmp_path, capsys, name, value, problem):
    """Before: a NaN played action 0 everywhere and reported its score (exit 0); a [1, n]
    tensor ended in a RuntimeError traceback."""
    err = eval_refused(saved, tmp_path, capsys, setter("learner", "params", value=value),
                       name=name)
    assert f": {problem}; the file is damaged" in err


def test_eval_checks_pqn_and_reinforce_weights(saved_pqn, saved_reinforce, tmp_path, capsys):
    """Before: NaN weights evaluated (exit 0), and a PQN file's layer list was not capped."""
    def nan_first(group: str) -> Callable[[dict], None]:
        def edit(state: dict) -> None:
            weights = state["learner"][group]
            name = next(iter(weights))
            weights[name] = filled(float("nan"))(weights[name])
        return edit

    err = eval_refused(saved_pqn, tmp_path, capsys, nan_first("online"))
    assert "learner.online.body.0.weight is not a finite float32 tensor" in err
    shutil.rmtree(tmp_path / "evaluated")
    err = eval_refused(saved_reinforce, tmp_path, capsys, nan_first("weights"))
    assert "learner.weights.pi.0.weight is not a finite float32 tensor" in err
    shutil.rmtree(tmp_path / "evaluated")
    err = eval_refused(saved_pqn, tmp_path, capsys, setter("net", "hidden", value=[1] * 65))
    assert "declares a network of 65 hidden layers, over the limit of 64" in err


@pytest.mark.parametrize("fixture,where", [
    ("saved", ("counters", "step")), ("saved", ("counters", "next_eval")),
    ("saved", ("counters", "iteration")), ("saved", ("learner", "steps")),
    ("saved_pqn", ("counters", "next_log")), ("saved_pqn", ("learner", "steps")),
    ("saved_reinforce", ("counters", "step")), ("saved_reinforce", ("learner", "updates")),
])
def test_a_count_beyond_any_run_is_refused(request, tmp_path, capsys, fixture, where):
    """Before: a step count of 2**63 - 1 resumed, 'finished' at once and wrote a summary of
    9.2e18 steps; one more step overflows int64."""
    err = resume_refused(request.getfixturevalue(fixture), tmp_path, capsys,
                         setter(*where, value=2**63 - 1))
    assert "9223372036854775807" in err


@pytest.mark.parametrize("edit", [
    setter("counters", value={}),
    lambda s: s["counters"].pop("evals"),
    lambda s: s["counters"].pop("step"),
])
def test_counters_a_file_lacks_are_refused_not_restarted_from_zero(saved, tmp_path, capsys,
                                                                   edit):
    """Before: missing counters took their defaults: the trained weights resumed at step 0."""
    err = resume_refused(saved, tmp_path, capsys, edit)
    assert "its counters are not fastdqn's" in err


def test_an_evaluation_record_json_cannot_hold_is_refused(saved, tmp_path, capsys):
    """Before: a NaN mean resumed, and summary.json was written with NaN (not JSON)."""
    err = resume_refused(saved, tmp_path, capsys, lambda s: s["counters"]["evals"][0].update(
        mean=float("nan")))
    assert "an evaluation record is not one a run writes" in err


@pytest.mark.parametrize("name,value,problem", [
    ("lr", "0.1", "lr is '0.1', not a number"),
    ("num_envs", "2", "num_envs is '2', not a whole number"),
    ("total_timesteps", 300.0, "total_timesteps is 300.0, not a whole number"),
    ("hidden", "16", "hidden is '16', not a list of whole numbers"),
    ("double_dqn", "true", "double_dqn is 'true', not true or false"),
    ("target_return", "10", "target_return is '10', not a number or none"),
])
def test_a_files_settings_are_taken_only_as_fastdqn_writes_them(saved, tmp_path, capsys, name,
                                                                value, problem):
    """Before: the file's text went through the command line's parsing ("0.1" became 0.1)."""
    err = resume_refused(saved, tmp_path, capsys, setter("config", name, value=value))
    assert f"holds settings fastdqn refuses ({problem}); it is damaged or crafted" in err


@pytest.mark.parametrize("value", ["x", float("nan"), float("inf")])
def test_eval_compare_checks_the_runs_target_return(saved, tmp_path, capsys, value):
    """Before: a text ended in a numpy UFuncTypeError traceback, a NaN counted no successes."""
    plot = tmp_path / "compare.png"
    err = eval_refused(saved, tmp_path, capsys, setter("config", "target_return", value=value),
                       "--compare", "--plot", str(plot))
    assert "its target_return" in err and "is not a finite number or none" in err
    assert not plot.exists()


@pytest.mark.parametrize("value", [2**40, 0, None])
def test_a_buffer_capacity_its_settings_do_not_name_is_damage(saved, tmp_path, capsys, value):
    """Before: the refusal advised --buffer-size 1099511627776 (or 0, or None)."""
    edit = setter("buffer", value=[1]) if value is None else setter("buffer", "capacity",
                                                                    value=value)
    err = resume_refused(saved, tmp_path, capsys, edit)
    assert "is not the --buffer-size its settings name" in err and err.endswith(f"{DAMAGED}\n")


@pytest.mark.parametrize("where,value", [
    (("rng", "sampler", "priorities"), filled(1e308)),
    (("rng", "sampler", "max_priority"), 1e308),
])
def test_priorities_no_float32_step_reaches_are_refused(saved_per, tmp_path, capsys, where,
                                                        value):
    """Before: accepted; a few rows of 1e308 overflow the sum tree's total, and sampling fails
    mid-run."""
    err = resume_refused(saved_per, tmp_path, capsys, setter(*where, value=value))
    assert "more than a float32 TD error can reach" in err


@pytest.fixture(scope="module")
def saved_rbf(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("saved_rbf") / "run"
    args = [a for a in TINY[2:] if a not in ("--hidden", "16")]
    assert main(["train", *args, "--env", "MountainCar-v0", "--network", "rbf",
                 "--rbf-features", "8", "--rbf-fit-steps", "50", "--run-dir", str(run)]) == 0
    return run


@pytest.mark.parametrize("change,problem", [
    ({"in_dim": 3}, "declares an rbf network of 3 inputs and 3 actions, but MountainCar-v0 "
                    "has 2 and 3"),
    ({"n_actions": 2}, "declares an rbf network of 2 inputs and 2 actions"),
    ({"scales": ["5.0", 2.0, 1.0, 0.5]}, "declares an rbf network without valid sizes"),
])
def test_resume_checks_the_rbf_spec_it_reads(saved_rbf, tmp_path, capsys, change, problem):
    """Before: a spec that fits neither the env nor the weights resumed (and was rewritten)."""
    err = resume_refused(saved_rbf, tmp_path, capsys, lambda s: s["net"].update(change))
    assert problem in err


@pytest.mark.skipif(importlib.util.find_spec("minatar") is None,
                    reason="the minatar extra is not installed")
def test_resume_checks_the_cnn_specs_types(tmp_path, capsys):
    """Before: [[16.0, 3, 1]] equals [[16, 3, 1]], so the comparison passed what eval refuses."""
    run = tmp_path / "cnn"
    assert main(["train", "--env", "MinAtar/Breakout-v1", "--vector", "sync", "--num-envs", "2",
                 "--total-timesteps", "64", "--learning-starts", "32", "--batch-size", "8",
                 "--buffer-size", "128", "--eval-every", "0", "--eval-episodes", "1",
                 "--solve-episodes", "1", "--eval-envs", "1", "--no-progress",
                 "--run-dir", str(run)]) == 0
    err = resume_refused(run, tmp_path, capsys, setter("net", "convs", value=[[16.0, 3, 1]]))
    assert "declares a cnn network without valid sizes" in err
