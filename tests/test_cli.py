"""End to end: `fastdqn train` writes the run-dir contract, `eval` reads it, `--resume` continues."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import run_fastdqn

from fastdqn.cli import main

CONTRACT = ["env_id", "total_env_steps", "wall_time_s", "sps", "solved", "time_to_solve_s",
            "steps_to_solve", "final_eval", "config", "version"]


def fastdqn(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_fastdqn(*args, timeout=timeout)


SHORT_RUN = ["--env", "CartPole-v1", "--num-envs", "4", "--total-timesteps", "3000",
             "--learning-starts", "500", "--eval-every", "1000", "--eval-episodes", "3",
             "--solve-episodes", "5", "--eval-envs", "4", "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli") / "run"
    r = fastdqn("train", *SHORT_RUN, "--run-dir", str(d))
    assert r.returncode == 0, r.stderr
    return d


def test_train_writes_every_file_of_the_contract(run_dir: Path) -> None:
    for name in ["checkpoint.pt", "best.pt", "returns.png", "summary.json"]:
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in CONTRACT:
        assert key in summary, key
    assert summary["env_id"] == "CartPole-v1"
    assert summary["total_env_steps"] == 3000
    assert summary["sps"] > 0 and summary["wall_time_s"] > 0
    assert set(summary["final_eval"]) >= {"mean", "std", "episodes"}
    assert summary["final_eval"]["episodes"] == 5
    assert summary["config"]["num_envs"] == 4
    assert (run_dir / "returns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_has_the_promised_scalars(run_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ["charts/episodic_return", "charts/episodic_length", "charts/mean_return_100",
                "losses/td_loss", "losses/q_values", "charts/epsilon", "charts/sps",
                "time/env_wait_us_per_iter", "time/act_us_per_iter", "time/learn_us_per_iter",
                "eval/mean_return"]:
        assert tag in tags, tag


def test_eval_reads_the_checkpoint(run_dir: Path) -> None:
    r = fastdqn("eval", str(run_dir / "checkpoint.pt"), "--episodes", "4", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert set(result) >= {"mean", "std", "min", "max", "episodes"}
    assert result["episodes"] == 4
    assert result["min"] <= result["mean"] <= result["max"]


def test_eval_is_deterministic_per_seed(run_dir: Path) -> None:
    a = fastdqn("eval", str(run_dir / "best.pt"), "--episodes", "3", "--seed", "7", "--json")
    b = fastdqn("eval", str(run_dir / "best.pt"), "--episodes", "3", "--seed", "7", "--json",
                "--num-envs", "1")
    assert json.loads(a.stdout) == json.loads(b.stdout)


def test_resume_continues_the_step_count(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "resumed"
    shutil.copytree(run_dir, d)
    before = torch.load(d / "checkpoint.pt", weights_only=True)
    r = fastdqn("train", "--resume", "--run-dir", str(d), "--total-timesteps", "5000",
                "--no-progress")
    assert r.returncode == 0, r.stderr
    summary = json.loads((d / "summary.json").read_text())
    assert summary["total_env_steps"] == 5000
    after = torch.load(d / "checkpoint.pt", weights_only=True)
    assert after["counters"]["step"] == 5000
    assert after["learner"]["steps"] > before["learner"]["steps"]
    assert after["counters"]["episodes"] > before["counters"]["episodes"]
    assert after["config"]["num_envs"] == 4  # settings come from the checkpoint


def test_existing_run_is_refused_without_resume_or_overwrite(run_dir: Path, capsys) -> None:
    code = main(["train", *SHORT_RUN, "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, words", [
    (["train", "--num-envs", "0"], ["--num-envs", ">= 1"]),
    (["train", "--lr", "-1"], ["--lr", "> 0"]),
    (["train", "--gamma", "1.5"], ["--gamma"]),
    (["train", "--env", "CartPol-v1"], ["CartPole-v1"]),
    (["train", "--env", "Pendulum-v1"], ["Discrete"]),
    (["train", "--nume-envs", "4"], ["--num-envs"]),
    (["train", "--batch-size", "512", "--buffer-size", "100"], ["--batch-size", "--buffer-size"]),
    (["train", "--device", "tpu"], ["--device"]),
    (["eval", "/nonexistent/checkpoint.pt"], ["does not exist"]),
])
def test_bad_input_is_one_line_exit_2(argv, words, capsys, tmp_path) -> None:
    code = main([*argv, "--run-dir", str(tmp_path / "r")] if argv[0] == "train" else argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert "Traceback" not in err
