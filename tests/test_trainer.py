"""The run lifecycle: when learning starts, what evaluations record, when checkpoints are written,
where divergence is caught."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import fastdqn_command, subprocess_env
from scripted_envs import env_id

from fastdqn import train
from fastdqn.algos.explore import boltzmann
from fastdqn.algos.registry import ALGOS
from fastdqn.config.choices import ALGOS as ALGO_CHOICES
from fastdqn.config.settings import Config
from fastdqn.core.checkpoint import load_checkpoint
from fastdqn.core.seeds import SELECT, episode_seed
from fastdqn.errors import TrainingDiverged

TINY = dict(vector="sync", num_envs=2, hidden=(8,), batch_size=8, buffer_size=64,
            eval_envs=1, progress=False, checkpoint_every=0)


def test_learning_starts_zero_waits_for_one_batch_then_learns(tmp_path):
    """--learning-starts 0 used to sample an empty buffer; it now waits for batch_size rows."""
    result = train(env_id="CartPole-v1", **TINY, learning_starts=0, total_timesteps=32,
                   eval_every=0, solve_episodes=1, run_dir=str(tmp_path / "run"))
    # rows 0..6 are too few for a batch of 8; from step 8 on, 2 transitions per 4 = train_every
    # give 1 learner step every other iteration: steps 8, 12, ..., 28 -> 6 steps
    assert result.summary["learner_steps"] == 6


def test_boltzmann_of_huge_finite_q_values_still_samples():
    q = torch.tensor([[3e38, -3e38, 0.0], [1.0, 2.0, 3.0]])
    actions = boltzmann(q, 1e-3, torch.Generator().manual_seed(0))
    assert actions.tolist() == [0, 2]  # |Q|/T overflowed float32 before: NaN probabilities


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_boltzmann_acting_on_nan_q_values_is_a_divergence_not_a_crash(tmp_path):
    """Rewards of 1e39 make NaN weights at the first update (in the iteration from step 32);
    the next act step, at 36 (2 envs, 2 steps an iteration), meets them before any log check."""
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"^training diverged at step 36 \(NaN or inf "
                                               r"Q-values while acting\); likely causes"):
        train(env_id=env_id("HugeReward-v0"), **{**TINY, "hidden": (16,), "batch_size": 16},
              exploration="boltzmann", loss="mse", learning_starts=32, log_every=10_000,
              eval_every=0, total_timesteps=10_000, run_dir=str(run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["diverged"] is True


def test_every_evaluation_records_its_episodes_and_seeds_and_writes_checkpoint_pt(tmp_path):
    run_dir = tmp_path / "run"
    result = train(env_id="CartPole-v1", **TINY, learning_starts=8, eval_every=16,
                   eval_episodes=2, solve_episodes=3, total_timesteps=40, target_return=1e9,
                   run_dir=str(run_dir))
    evals = result.summary["evals"]
    assert [(e["step"], e["kind"], e["episodes"]) for e in evals] == [
        (16, "screen", 2), (32, "screen", 2), (40, "final", 3)]
    walls = [e["wall_time_s"] for e in evals]  # the run's clock at each, for curves vs time
    assert 0 < walls[0] <= walls[1] <= walls[2] <= result.summary["wall_time_s"]
    for e in evals:
        assert e["seeds"] == {"stream": "select", "first": episode_seed(1, SELECT),
                              "count": e["episodes"]}
    best = result.summary["best_eval"]
    assert best["episodes"] == 2 and best["seeds"]["count"] == 2
    assert best["step"] in (16, 32, 40)
    # the step-40 checkpoint is the end's; the step-16 and 32 ones were written by the evals
    assert load_checkpoint(run_dir / "checkpoint.pt")["counters"]["best_step"] == best["step"]


def test_checkpoint_every_zero_still_checkpoints_at_each_evaluation(tmp_path, monkeypatch):
    """--checkpoint-every 0 promises checkpoints at evaluations (when each one's result is in:
    a screen plays beside the training) and the end: both must happen."""
    from fastdqn.runtime.run import Run

    written = []
    real = Run.save

    def spy(self, name, with_buffer=False, state=None):
        written.append((name, self.c.step))
        real(self, name, with_buffer, state)

    monkeypatch.setattr(Run, "save", spy)
    result = train(env_id="CartPole-v1", **TINY, learning_starts=8, eval_every=16,
                   eval_episodes=1, solve_episodes=1, total_timesteps=40, target_return=1e9,
                   run_dir=str(tmp_path / "r"))
    evals = result.summary["evals"]
    assert [e["step"] for e in evals if e["kind"] == "screen"] == [16, 32]
    known = [e.get("known_at_step", e["step"]) for e in evals if e["kind"] == "screen"]
    assert [s for name, s in written if name == "checkpoint.pt"] == [*known, 40]


def test_a_default_run_killed_after_its_first_evaluation_resumes(tmp_path):
    """kill -9 as soon as the first evaluation's best.pt appears: checkpoint.pt is already there
    (it is written first), and --resume continues from the evaluation's step."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(fastdqn_command("train", "--run-dir", str(run_dir), "--no-progress"),
                            env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:  # waits for the file, however long the machine takes; the run's own end bounds it
        while not (run_dir / "best.pt").exists():
            assert proc.poll() is None, "the run ended without an evaluation"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    step = load_checkpoint(run_dir / "checkpoint.pt")["counters"]["step"]
    assert step >= 10_000
    r = subprocess.run(fastdqn_command("train", "--resume", "--run-dir", str(run_dir),
                                       "--total-timesteps", str(step + 16), "--solve-episodes",
                                       "10", "--no-progress"),
                       env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert json.loads(Path(run_dir / "summary.json").read_text())["total_env_steps"] == step + 16


def test_the_registry_holds_one_entry_per_algo_choice():
    """--algo's choices are the registry's keys: an algorithm the config offers that train
    cannot look up (or an entry no flag reaches) fails here, not in a user's run."""
    assert list(ALGOS) == list(ALGO_CHOICES)
    for name, algo in ALGOS.items():
        assert algo.name == name
        assert "log" in algo.stages  # the run laps it at every maybe_log
        assert all(isinstance(h, int) for h in getattr(Config(), algo.hidden_field))


def test_train_drives_an_algorithm_through_its_entry(tmp_path, monkeypatch):
    """train sizes, builds, trains and resumes an algorithm by its registry entry alone: every
    hook of an entry wrapped in spies is called, in the order a run needs them."""
    calls = []
    real = ALGOS["reinforce"]

    def spy(name):
        def called(*args, **kwargs):
            calls.append(name)
            return getattr(real, name)(*args, **kwargs)
        return called

    hooks = ("check_memory", "make_agent", "check_checkpoint", "loop")
    monkeypatch.setitem(ALGOS, "reinforce", replace(real, **{h: spy(h) for h in hooks}))
    kw = dict(algo="reinforce", env_id="CartPole-v1", vector="sync", num_envs=2,
              policy_hidden=(8,), eval_every=0, eval_episodes=1, solve_episodes=1, eval_envs=1,
              progress=False, run_dir=str(tmp_path / "run"))
    train(**kw, total_timesteps=32)
    assert calls == ["check_memory", "make_agent", "loop"]
    calls.clear()
    result = train(**kw, total_timesteps=64, resume=True)
    assert calls == ["check_memory", "make_agent", "check_checkpoint", "loop"]
    assert result.summary["total_env_steps"] == 64
