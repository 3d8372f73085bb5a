"""Evaluations beside the training: a screen of a snapshot plays on a worker while training
goes on and counts at a step fixed by the screen itself (never by the clock), best.pt is the
screened snapshot, longer evaluations split across the workers return what one process
would, a worker's failure is an error (never a hang), and the CLI's clock starts with its
process."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from fastdqn import train
from fastdqn.core.checkpoint import load_checkpoint
from fastdqn.core.seeds import SELECT, episode_seed
from fastdqn.evaluation.episodes import run_episodes
from fastdqn.evaluation.policies import load_policy
from fastdqn.evaluation.pool import EvalPool

RUN = dict(env_id="CartPole-v1", vector="sync", num_envs=4, hidden=(16,), batch_size=16,
           buffer_size=512, learning_starts=64, total_timesteps=1_200, eval_every=400,
           eval_episodes=3, solve_episodes=4, eval_envs=2, target_return=1e9, seed=3,
           progress=False)


def screens(summary: dict) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "wall_time_s"} for e in summary["evals"]]


def test_a_screen_counts_at_a_step_of_its_own_and_best_pt_is_its_snapshot(tmp_path):
    a = train(**RUN, run_dir=str(tmp_path / "a")).summary
    b = train(**RUN, run_dir=str(tmp_path / "b")).summary
    assert screens(a) == screens(b)  # a run repeats exactly, evaluations and all
    evals = [e for e in a["evals"] if e["kind"] == "screen"]
    assert [e["step"] for e in evals] == [400, 800]  # the last, at the end, became the final
    best = a["best_eval"]
    ckpt = load_checkpoint(tmp_path / "a" / "best.pt")
    assert ckpt["counters"]["step"] == best["step"]  # the snapshot, not the run when it counted
    policy, _ = load_policy(str(tmp_path / "a" / "best.pt"))
    replay = run_episodes(policy, "CartPole-v1", 3, episode_seed(3, SELECT, 0), 2)
    assert math.isclose(replay.mean, best["mean"])
    # it counted once training had played as many steps as it did (in whole vector steps of
    # 4), or at the next screen's step at the latest
    entry = next(e for e in a["evals"] if e["step"] == best["step"])
    due = entry["step"] + 4 * math.ceil(sum(replay.lengths) / 4)
    assert entry.get("known_at_step", entry["step"]) == min(due, entry["step"] + 400)


class Half:
    """CartPole by angular velocity: deterministic, different on every seed."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return (obs[:, 3] > 0).astype(np.int64)


def test_an_evaluation_split_across_workers_is_the_one_process_result():
    pool = EvalPool(2, "CartPole-v1", 3, None, 0.0)
    try:
        jobs = [pool.submit(Half(), 5, 100), pool.submit(Half(), 4, 105)]
        got = [j.get() for j in jobs]
    finally:
        pool.close()
    whole = run_episodes(Half(), "CartPole-v1", 9, 100, 3)
    assert got[0].returns + got[1].returns == whole.returns
    assert got[0].lengths + got[1].lengths == whole.lengths


class Raises:
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        raise ValueError("policy broke")


class Exits:
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        import os

        os._exit(3)


def test_a_failing_evaluation_raises_and_a_dead_worker_is_an_error_not_a_hang():
    pool = EvalPool(1, "CartPole-v1", 2, None, 0.0)
    try:
        with pytest.raises(ValueError, match="policy broke"):
            pool.submit(Raises(), 2, 0).get()
        assert pool.submit(Half(), 2, 0).get().episodes == 2  # the worker goes on
        with pytest.raises(RuntimeError, match="evaluation worker died"):
            pool.submit(Exits(), 2, 0).get()
    finally:
        pool.close()


def test_the_cli_clock_counts_from_the_process_start():
    code = ("import time; t0 = time.perf_counter(); import torch, fastdqn.cli; "
            "from fastdqn.core.clock import process_age; "
            "print(process_age() >= time.perf_counter() - t0 > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_a_run_solved_by_a_snapshot_returns_that_snapshot(tmp_path):
    """Training goes on while the solving screen plays; the policy handed back (and best.pt)
    is the snapshot that solved, not the policy training went on to."""
    cfg = {**RUN, "target_return": 5.0, "total_timesteps": 4_000}
    result = train(**cfg, run_dir=str(tmp_path / "r"))
    s = result.summary
    assert s["solved"] and s["steps_to_solve"] == 400
    assert s["total_env_steps"] > 400  # the result counted later; training went on meanwhile
    snapshot, _ = load_policy(str(tmp_path / "r" / "best.pt"))
    later, _ = load_policy(str(tmp_path / "r" / "checkpoint.pt"))
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    assert np.array_equal(result.policy.q_values(obs).numpy(), snapshot.q_values(obs).numpy())
    assert not np.array_equal(later.q_values(obs).numpy(), snapshot.q_values(obs).numpy())


def test_a_policy_of_tensors_reaches_the_worker_without_a_thread_in_the_trainer():
    """The policy goes to the worker pickled by value: multiprocessing's own pickler would share
    its tensors through a file-descriptor server, a thread of the trainer's (a later fork would
    copy it mid-work, and at a signal's exit it printed a traceback after the one-line message).
    Run in a subprocess, whose threads are its own."""
    code = """
import threading, torch
from fastdqn.evaluation.episodes import run_episodes
from fastdqn.evaluation.policies import Policy
from fastdqn.evaluation.pool import EvalPool
from fastdqn.nets.mlp import MLP
net = MLP(4, 2, (8,))
policy = Policy(net, torch.randn(net.num_params, generator=torch.Generator().manual_seed(0)))
pool = EvalPool(1, "CartPole-v1", 2, None, 0.0)
got = pool.submit(policy, 3, seed=11).get()
want = run_episodes(policy, "CartPole-v1", 3, 11, 2)
pool.close()
print(threading.active_count(), list(got.returns) == list(want.returns))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "True"], out.stdout
