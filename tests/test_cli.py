"""End to end: `fastdqn train` writes the run-dir contract, `eval` reads it, `--resume` continues."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastdqn.cli import main

CONTRACT = ["env_id", "total_env_steps", "wall_time_s", "sps", "solved", "time_to_solve_s",
            "steps_to_solve", "final_eval", "config", "version"]


def fastdqn(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastdqn", *args], capture_output=True,
                          text=True, timeout=timeout)


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


def test_eval_reads_the_checkpoint_once(run_dir: Path, monkeypatch, capsys) -> None:
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or real(*a, **k))
    assert main(["eval", str(run_dir / "best.pt"), "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2
    assert len(loads) == 1


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


# ---------------------------------------------------------------------------------------------
# eval --compare / --plot / --gif / --render
# ---------------------------------------------------------------------------------------------


def tiny_checkpoint(root: Path, env_id: str) -> Path:
    """best.pt of an untrained learner, written by the real training path in a fraction of a second."""
    from fastdqn import train

    run = root / env_id
    train(env_id=env_id, num_envs=2, total_timesteps=2, vector="sync", eval_every=0,
          checkpoint_every=0, solve_episodes=1, eval_envs=1, learning_starts=1000,
          buffer_size=1000, batch_size=32, progress=False, run_dir=str(run))
    return run / "best.pt"


@pytest.fixture(scope="module")
def lunar_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "LunarLander-v3")


@pytest.fixture(scope="module")
def cartpole_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), "CartPole-v1")


STATS = {"mean", "std", "min", "max", "episodes", "success_rate"}


def test_eval_compare_json_has_every_policy(lunar_ckpt: Path, capsys) -> None:
    from PIL import Image

    assert main(["eval", str(lunar_ckpt), "--episodes", "3", "--compare", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    for policy in ("greedy", "random", "heuristic"):
        assert set(out[policy]) == STATS, policy
        assert out[policy]["episodes"] == 3
        assert 0.0 <= out[policy]["success_rate"] <= 1.0
    assert {k: out[k] for k in ("mean", "std", "min", "max", "episodes")} == {
        k: out["greedy"][k] for k in ("mean", "std", "min", "max", "episodes")}
    assert out["heuristic"]["mean"] > out["greedy"]["mean"]  # an untrained net crashes
    assert out["success_threshold"] == 200
    plot = lunar_ckpt.parent / "compare.png"
    assert out["plot"] == str(plot)
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size == (800, 450)
    assert "wrote" in captured.err


def test_eval_compare_prints_a_table(lunar_ckpt: Path, tmp_path: Path, capsys) -> None:
    plot = tmp_path / "cmp.svg"
    assert main(["eval", str(lunar_ckpt), "--episodes", "2", "--compare", "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("LunarLander-v3: 2 episodes per policy, the same seeds")
    assert lines[1].split()[:5] == ["policy", "mean", "std", "min", "max"]
    assert lines[1].endswith("success (return >= 200)")
    assert [ln.split()[0] for ln in lines[2:5]] == ["greedy", "random", "heuristic"]
    assert lines[5] == f"wrote {plot}: histogram of the returns"
    assert plot.read_text().lstrip().startswith("<?xml")


def test_eval_compare_without_heuristic(cartpole_ckpt: Path, tmp_path: Path, capsys) -> None:
    plot = tmp_path / "c.png"
    assert main(["eval", str(cartpole_ckpt), "--episodes", "3", "--compare", "--json",
                 "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "heuristic" not in out and set(out["random"]) == STATS
    assert out["success_threshold"] == 475
    assert captured.err.splitlines()[0] == ("gymnasium has no heuristic controller for CartPole-v1; "
                                            "comparing greedy and random only")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_gif(lunar_ckpt: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    gif = tmp_path / "episode.gif"
    assert main(["eval", str(lunar_ckpt), "--episodes", "1", "--gif", str(gif), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gif"] == str(gif) and out["episodes"] == 1
    with Image.open(gif) as im:
        assert im.format == "GIF"
        assert im.n_frames > 1
        assert im.size == (300, 200)


def eval_without(checkpoint: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`fastdqn eval --render` in a subprocess whose display variables are exactly `env`."""
    import os

    clean = {k: v for k, v in os.environ.items()
             if k not in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")}
    return subprocess.run([sys.executable, "-m", "fastdqn", "eval", str(checkpoint), "--render",
                           "--episodes", "1", *args], capture_output=True, text=True,
                          timeout=120, env={**clean, **env})


def test_eval_render_without_display_is_one_line_exit_2(cartpole_ckpt: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("DISPLAY decides only on Linux")
    r = eval_without(cartpole_ckpt, {})
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == ("error: --render: no display to open a window on (DISPLAY and "
                        "WAYLAND_DISPLAY are unset); use --gif FILE to record an episode instead\n")


def test_eval_render_unreachable_display_is_one_line_exit_2(cartpole_ckpt: Path) -> None:
    if not sys.platform.startswith("linux") or Path("/tmp/.X11-unix/X97").exists():
        pytest.skip("needs Linux and no X server on :97")
    r = eval_without(cartpole_ckpt, {"DISPLAY": ":97"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: --render: pygame could not open a window on DISPLAY=:97")
    assert lines[0].endswith("use --gif FILE to record an episode instead")


def test_eval_render_plays_in_a_window(cartpole_ckpt: Path) -> None:
    r = eval_without(cartpole_ckpt, {"SDL_VIDEODRIVER": "dummy"}, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["episodes"] == 1


@pytest.mark.parametrize("args, message", [
    (["--gif", "{tmp}/ep.png"], "--gif {tmp}/ep.png: --gif does not write .png files; "
                                "end the name in .gif"),
    (["--gif", "{tmp}/missing/ep.gif"], "--gif {tmp}/missing/ep.gif: folder {tmp}/missing does "
                                        "not exist; create it or pick another path"),
    (["--plot", "{tmp}/c.png"], "--plot names the --compare histogram; add --compare or drop --plot"),
    (["--compare", "--plot", "{tmp}"], "--plot {tmp} is a folder; give a file name"),
    (["--compare", "--plot", "{tmp}/c.txt"], "--plot {tmp}/c.txt: --plot does not write .txt "
                                             "files; end the name in .png, .svg or .pdf"),
    (["--compare", "--gif", "{tmp}/ep.jpg"], "--gif {tmp}/ep.jpg: --gif does not write .jpg files; "
                                             "end the name in .gif"),
])
def test_eval_bad_outputs_are_one_line_and_write_nothing(cartpole_ckpt: Path, tmp_path: Path,
                                                         capsys, args, message) -> None:
    before = sorted(cartpole_ckpt.parent.iterdir())
    code = main(["eval", str(cartpole_ckpt), *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: {message.format(tmp=tmp_path)}\n"
    assert sorted(cartpole_ckpt.parent.iterdir()) == before
    assert list(tmp_path.iterdir()) == []
