"""End to end: `fastdqn train` writes the run-dir contract, `eval` reads it, `--resume` continues."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DICT_OBS_ENV_ID, fastdqn_command, run_fastdqn, subprocess_env
from scripted_envs import env_id as scripted_env_id

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
    assert summary["route_fallbacks"] == []  # CPU: no fast route to fall back from
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


def test_run_dir_refusal_touches_nothing_and_overwrite_starts_afresh(tmp_path, capsys) -> None:
    d = tmp_path / "run"
    tiny = ["train", "--env", scripted_env_id("FixedLength-v0"), "--vector", "sync",
            "--num-envs", "2", "--total-timesteps", "40", "--learning-starts", "8",
            "--eval-every", "0", "--solve-episodes", "1", "--eval-envs", "1", "--hidden", "8",
            "--no-progress", "--run-dir", str(d)]
    assert main([*tiny, "--seed", "1"]) == 0
    (d / "notes.txt").write_text("from the old run")
    before = snapshot(d)
    capsys.readouterr()
    assert main([*tiny, "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {d} already holds a run; pass --resume to continue it, --overwrite "
                   "to replace it, or pick another --run-dir\n")
    assert snapshot(d) == before
    # --overwrite removes fastdqn's own files only: a file it did not write makes it refuse
    assert main([*tiny, "--seed", "2", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --overwrite: {d} also holds files fastdqn did not write (notes.txt); "
                   "move them away or pick another --run-dir\n")
    assert snapshot(d) == before
    (d / "notes.txt").unlink()
    (d / ".checkpoint.pt.x1y2.tmp").write_bytes(b"left by a kill -9")
    assert main([*tiny, "--seed", "2", "--overwrite"]) == 0
    assert not (d / ".checkpoint.pt.x1y2.tmp").exists()
    assert json.loads((d / "summary.json").read_text())["config"]["seed"] == 2


def test_overwrite_of_a_project_folder_deletes_nothing(tmp_path, capsys, monkeypatch) -> None:
    """`--run-dir . --overwrite` in a project folder that once held a run must not wipe it."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print('hi')\n")
    (project / "README.md").write_text("# mine\n")
    (project / "summary.json").write_text("{}")  # an old run's file makes it 'hold a run'
    monkeypatch.chdir(project)
    before = snapshot(project)
    assert main(["train", "--env", "CartPole-v1", "--run-dir", ".", "--overwrite",
                 "--no-progress", "--total-timesteps", "16"]) == 2
    assert capsys.readouterr().err == (
        "error: --overwrite: . also holds files fastdqn did not write (README.md, src); move "
        "them away or pick another --run-dir\n")
    assert snapshot(project) == before
    assert (project / "src" / "main.py").read_text() == "print('hi')\n"


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
    (["train", "--num-envs", "-4"], ["--num-envs must be >= 1, got -4"]),
    (["train", "--lr", "0"], ["--lr must be > 0, got 0.0"]),
    (["train", "--gamma", "0"], ["--gamma must be in (0, 1], got 0.0"]),
    (["train", "--tau", "0"], ["--tau must be in (0, 1], got 0.0"]),
    (["train", "--tau", "1.5"], ["--tau must be in (0, 1], got 1.5"]),
    (["train", "--eps-start", "1.5"], ["--eps-start must be in [0, 1], got 1.5"]),
    (["train", "--eps-end", "-0.1"], ["--eps-end must be in [0, 1], got -0.1"]),
    (["train", "--env-timeout", "-1"], ["--env-timeout must be a number of seconds >= 0"]),
    (["train", "--config", "lunarlander-notebok"],
     ["unknown preset 'lunarlander-notebok'; did you mean 'lunarlander-notebook'? presets: "]),
    (["train", "--config", "pytorch-tutorial"],
     ["preset 'pytorch-tutorial' is now 'lunarlander-notebook' (it is the LunarLander notebooks' "
      "configuration, not PyTorch's DQN tutorial itself); use --config lunarlander-notebook"]),
    (["train", "--env", scripted_env_id("MultiDiscreteAction-v0")],
     ["has MultiDiscrete actions; DQN needs Discrete actions"]),
    (["train", "--env", DICT_OBS_ENV_ID], ["has Dict observations; fastdqn needs a Box"]),
    (["train", "--env", scripted_env_id("TupleObs-v0")],
     ["has Tuple observations; fastdqn needs a Box"]),
    (["train", "--env", scripted_env_id("TextObs-v0")],
     ["has Text observations; fastdqn needs a Box"]),
    (["train", "--env", scripted_env_id("Broken-v0")],
     ["failed to construct: FileNotFoundError: level file 'maze.txt' not found"]),
    (["train", "--env", "no_such_module_xyz:Maze-v0"],
     ["cannot import module 'no_such_module_xyz'"]),
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
    assert not (tmp_path / "r").exists()  # refused before any work started


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


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_accelerator_that_is_not_there_is_refused(device, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    code = main(["train", "--env", "CartPole-v1", "--device", device,
                 "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    kind = "CUDA device" if device.startswith("cuda") else "MPS"
    assert err.startswith(f"error: --device {device} asked for, but ")
    assert kind in err and err.rstrip().endswith("use --device cpu or auto")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("num_envs = = 4\n", "is not valid TOML (Invalid value (at line 1, column 12)); fix the file"),
    ("num_envs = 4\nlearning_rate = 0.1\nbogus = 1\n",
     "has unknown keys: bogus, learning_rate; see `fastdqn train --help` for the settings"),
    ('num_envs = "many"\n', "--num-envs: cannot use 'many' (expected an integer)"),
    ("gamma = 2.0\n", "--gamma must be in (0, 1], got 2.0"),
])
def test_bad_toml_is_one_line_exit_2(text, message, capsys, tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(text)
    code = main(["train", "--config", str(path), "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [err.strip()]
    assert message in err, err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# eval / --resume with bad checkpoint files: say which, touch nothing
# ---------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict:
    """Bytes and mtime of every file under `folder` (names relative to it)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def damage(path: Path, how: str, good: Path) -> None:
    """Write a bad checkpoint at `path`, derived from the good one where that makes sense."""
    data = good.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupted":
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:])
    elif how == "random":
        path.write_bytes(np.random.default_rng(7).bytes(4096))
    elif how == "not-fastdqn":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    elif how == "code":
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {path.parent / 'pwned'}",))

        path.write_bytes(pickle.dumps({"format": "fastdqn-checkpoint/1", "x": Evil()}))
    elif how == "stride-0":  # the real network's size, in 4 bytes of the file
        state = torch.load(good, weights_only=True)
        n = state["learner"]["params"].numel()
        state["learner"]["params"] = state["learner"]["target"] = torch.zeros(1).expand(n)
        torch.save(state, path)
    elif how == "huge-network":
        state = torch.load(good, weights_only=True)
        state["net"]["hidden"] = state["config"]["hidden"] = [100_000, 100_000]
        torch.save(state, path)
    elif how == "huge-buffer":  # 10**15 rows: no machine can hold it, whatever the rows hold
        state = torch.load(good, weights_only=True)
        state["config"]["buffer_size"] = 10**15
        torch.save(state, path)
    elif how == "buffer-rows":  # a --save-buffer checkpoint claiming rows it does not hold
        state = torch.load(good, weights_only=True)
        rows = {"obs": torch.zeros(5, 4), "next_obs": torch.zeros(5, 4),
                "actions": torch.zeros(5, dtype=torch.int64), "rewards": torch.zeros(5),
                "dones": torch.zeros(5)}
        state["buffer"] = {**rows, "pos": 10, "size": 10,
                           "capacity": state["config"]["buffer_size"]}
        torch.save(state, path)
    elif how == "env-starts-call":  # numpy.random.<name>() is called: np.random.test() would
        state = torch.load(good, weights_only=True)  # run numpy's test suite
        state["env_starts"] = [{"seed": None, "rng": {"bit_generator": "seed"}}] * 4
        torch.save(state, path)
    elif how == "counters-due":  # the next block of sampled batches would be 10**12 / 4 long
        state = torch.load(good, weights_only=True)
        state["counters"]["due"] = 10**12
        torch.save(state, path)
    elif how == "target-shape":
        state = torch.load(good, weights_only=True)
        state["learner"]["target"] = torch.zeros(3)
        torch.save(state, path)
    elif how == "other-env-version":  # same fields, but its network cannot play its env
        state = torch.load(good, weights_only=True)
        state["env"]["id"] = "Acrobot-v1"
        state["config"]["env_id"] = "Acrobot-v1"
        torch.save(state, path)
    else:
        raise ValueError(how)


BAD_FILES = {
    "truncated": "is truncated or corrupted (",
    "corrupted": "is corrupted (data/",
    "random": "corrupted (",
    "not-fastdqn": "is not a fastdqn checkpoint; pass a checkpoint.pt or best.pt",
    "code": "contains code or objects a checkpoint must not hold; refusing to load it",
    "other-env-version": "its network takes 4 inputs and gives 2 actions, but Acrobot-v1 has 6 "
                         "observation values and 3 actions",
    "stride-0": ": learner.params is a view of 4 bytes declaring 69,640 bytes; the file is "
                "crafted or damaged",
    "huge-network": " declares a network of 10,000,800,002 parameters (4 inputs, hidden "
                    "100000,100000, 2 actions), over the limit of 268,435,456; refusing to load it",
}


@pytest.mark.parametrize("how", list(BAD_FILES))
def test_eval_of_a_bad_checkpoint_says_which_and_touches_nothing(run_dir, tmp_path, capsys,
                                                                  how) -> None:
    path = tmp_path / "checkpoint.pt"
    damage(path, how, run_dir / "checkpoint.pt")
    before = snapshot(tmp_path)
    code = main(["eval", str(path), "--episodes", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err
    assert BAD_FILES[how] in err, err
    assert str(path) in err
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "pwned").exists()


RESUME_CASES = {
    "missing": ([], "cannot be resumed; start it again with --overwrite"),
    "truncated": ([], BAD_FILES["truncated"]),
    "corrupted": ([], BAD_FILES["corrupted"]),
    "random": ([], BAD_FILES["random"]),
    "code": ([], BAD_FILES["code"]),
    "other-env": (["--env", "Acrobot-v1"],
                  "is from env 'CartPole-v1', not 'Acrobot-v1'; pass the matching --env or "
                  "another checkpoint"),
    "other-hidden": (["--hidden", "64"],
                     "has hidden layers [128, 128], not [64]; pass --hidden to match"),
    "stride-0": ([], BAD_FILES["stride-0"]),
    "huge-network": ([], " holds settings fastdqn refuses (--hidden 100000,100000: over the 64 "
                         "layers or 268,435,456 parameters a checkpoint may hold; use fewer or "
                         "smaller layers); it is damaged or crafted"),
    "huge-buffer": ([], " holds settings fastdqn refuses (--buffer-size must be <= "
                        "1,073,741,824, got 1000000000000000); it is damaged or crafted"),
    "buffer-rows": ([], ": its replay buffer says it holds 10 rows, but buffer.obs has shape "
                        "[5, 4], not [10, 4]; the file is damaged"),
    "target-shape": ([], ": learner.target has shape [3], not [17410]; the file is damaged"),
    "env-starts-call": ([], ": env_starts[0] names bit generator 'seed', which numpy does not "
                            "have; the file is damaged or crafted"),
    "counters-due": (["--total-timesteps", "4000"],
                     ": its counters are inconsistent (due 1000000000000, not in [0, 4) as "
                     "--train-every 4 leaves it); the file is damaged or crafted"),
}


@pytest.mark.parametrize("how", list(RESUME_CASES))
def test_resume_from_a_bad_checkpoint_says_which_and_touches_nothing(run_dir, tmp_path, capsys,
                                                                      how) -> None:
    import shutil

    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    if how == "missing":
        (d / "checkpoint.pt").unlink()
    elif not how.startswith("other"):
        damage(d / "checkpoint.pt", how, run_dir / "checkpoint.pt")
    before = snapshot(d)
    extra, message = RESUME_CASES[how]
    code = main(["train", "--resume", "--run-dir", str(d), *extra, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err
    assert message in err, err
    assert snapshot(d) == before
    assert not (d / "pwned").exists()


# ---------------------------------------------------------------------------------------------
# A checkpoint is data: it never picks a module to import, and never sizes memory by itself
# ---------------------------------------------------------------------------------------------


def evil_module(folder: Path) -> tuple[str, Path]:
    """A module in `folder` that leaves a marker file when imported: what an attacker would put
    next to a checkpoint (`python -m` puts the working directory on sys.path)."""
    import uuid

    name = f"evil_{uuid.uuid4().hex[:8]}"
    marker = folder / f"{name}.imported"
    (folder / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return name, marker


def naming_module(good: Path, path: Path, module: str) -> str:
    """Write `good` at `path` with its env id turned into `module:<the id>`; return the new id."""
    state = torch.load(good, weights_only=True)
    env_id = f"{module}:{state['env']['id']}"
    state["env"]["id"] = state["config"]["env_id"] = env_id
    torch.save(state, path)
    return env_id


def fastdqn_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m fastdqn ...` run from `folder`, as a user in that folder would run it."""
    return subprocess.run(fastdqn_command(*args), capture_output=True, text=True, timeout=240,
                          env=subprocess_env(), cwd=folder)


def refusal(path: Path, env_id: str) -> str:
    module = env_id.split(":", 1)[0]
    return (f"error: checkpoint {path} names env {env_id!r}, which would import module "
            f"{module!r} (running its code); a checkpoint never chooses what gets imported: "
            f"pass --env {env_id} on the command line if you trust that module\n")


def test_eval_never_imports_a_module_the_checkpoint_names(run_dir, tmp_path) -> None:
    module, marker = evil_module(tmp_path)
    path = tmp_path / "checkpoint.pt"
    env_id = naming_module(run_dir / "checkpoint.pt", path, module)
    before = snapshot(tmp_path)
    r = fastdqn_in(tmp_path, "eval", str(path), "--episodes", "2")
    assert r.returncode == 2
    assert r.stderr == refusal(path, env_id) and r.stdout == ""
    assert not marker.exists()
    assert snapshot(tmp_path) == before


def test_eval_env_flag_names_the_env_and_its_module(run_dir, tmp_path, capsys,
                                                    monkeypatch) -> None:
    module, marker = evil_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "checkpoint.pt"
    env_id = naming_module(run_dir / "checkpoint.pt", path, module)
    assert main(["eval", str(path), "--episodes", "2", "--env", "CartPole-v1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2
    assert not marker.exists()
    assert main(["eval", str(path), "--episodes", "2", "--env", env_id]) == 0  # trusted by you
    assert capsys.readouterr().out.startswith(f"{env_id}: mean ")
    assert marker.exists()
    assert main(["eval", str(path), "--episodes", "2", "--env", "Acrobot-v1"]) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: its network takes 4 inputs and gives 2 actions, but Acrobot-v1 has 6 "
        "observation values and 3 actions; the checkpoint is from another env version\n")


def test_resume_imports_only_a_module_you_name(run_dir, tmp_path, monkeypatch) -> None:
    import shutil

    module, marker = evil_module(tmp_path)
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    env_id = naming_module(run_dir / "checkpoint.pt", d / "checkpoint.pt", module)
    before = snapshot(d)
    r = fastdqn_in(tmp_path, "train", "--resume", "--run-dir", str(d), "--no-progress")
    assert r.returncode == 2
    assert r.stderr == refusal(d / "checkpoint.pt", env_id) and r.stdout == ""
    assert not marker.exists()
    assert snapshot(d) == before
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["train", "--resume", "--run-dir", str(d), "--env", env_id, "--no-progress"]) == 0
    assert marker.exists()  # named on the command line: your decision, so it is imported
    assert json.loads((d / "summary.json").read_text())["env_id"] == env_id


def test_a_stopped_module_env_run_says_how_to_resume_it(tmp_path, capsys) -> None:
    """The printed resume command names the env again, since resume will not import it alone."""
    d = tmp_path / "run"
    env_id = scripted_env_id("Crash-v0")
    # --seed 0: training resets use seeds 0, 1, ... (seeds.py), and env 1's seed 1 crashes
    code = main(["train", "--env", env_id, "--vector", "sync", "--num-envs", "2", "--hidden", "8",
                 "--seed", "0",
                 "--learning-starts", "8", "--checkpoint-every", "16", "--eval-every", "0",
                 "--total-timesteps", "1000", "--run-dir", str(d), "--no-progress"])
    assert code == 1
    assert capsys.readouterr().err.rstrip().endswith(
        f"(resume with: fastdqn train --resume --run-dir {d} --env {env_id})")


def peak_rss_mb(*args: str) -> tuple[int, float]:
    """Exit code and peak resident memory (MB) of `python -m fastdqn ...` in a child process."""
    proc = subprocess.Popen(fastdqn_command(*args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=subprocess_env())
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024


def test_stride_0_bomb_costs_eval_no_memory(run_dir, tmp_path) -> None:
    """324 MB of parameters declared by a small file: eval refuses it before copying them."""
    from fastdqn.nets.mlp import MLP

    state = torch.load(run_dir / "best.pt", weights_only=True)
    hidden = [9000, 9000]
    n = MLP(4, 2, tuple(hidden)).num_params
    state["net"]["hidden"] = state["config"]["hidden"] = hidden
    state["learner"]["params"] = state["learner"]["target"] = torch.zeros(1).expand(n)
    state["learner"]["optimizer"]["exp_avg"] = torch.zeros(1).expand(n)
    state["learner"]["optimizer"]["exp_avg_sq"] = torch.zeros(1).expand(n)
    bomb = tmp_path / "bomb.pt"
    torch.save(state, bomb)
    assert bomb.stat().st_size < 40_000
    other = tmp_path / "other.pt"
    torch.save({"a": 1}, other)
    code, baseline = peak_rss_mb("eval", str(other), "--episodes", "1")
    assert code == 2
    code, peak = peak_rss_mb("eval", str(bomb), "--episodes", "1")
    assert code == 2
    assert peak < baseline + 100, (peak, baseline)


def test_a_value_after_a_switch_names_the_value(capsys):
    from fastdqn.cli import main

    assert main(["train", "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert "unexpected values: false (a switch takes no value: --progress or --no-progress)" in err
    assert "unknown flags: ;" not in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# loose types, settings nothing reads, eval's flags, --config names: one line, exit 2, no files
# ---------------------------------------------------------------------------------------------


def _refused(argv: list[str], capsys) -> str:
    """main(argv)'s one stderr line, after checking exit 2 and no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.strip().splitlines() == [err.strip()], err
    assert "Traceback" not in err
    return err.strip()


@pytest.mark.parametrize(("argv", "message"), [
    (["--seed", "100000000000000000000000"],
     "--seed must be in 0..4294967295 (the 32-bit seeds numpy and torch take), got "
     "100000000000000000000000"),
    (["--seed", "4294967296"], "--seed must be in 0..4294967295"),
    (["--seed", "1e30"], "--seed must be in 0..4294967295"),
    (["--lr", "inf"], "--lr: cannot use 'inf' (expected a finite number)"),
    (["--lr", "nan"], "--lr: cannot use 'nan' (expected a finite number)"),
    (["--target-return", "nan"], "--target-return: cannot use 'nan' (expected a finite number or"),
    (["--max-grad-norm", "1e400"], "--max-grad-norm: cannot use '1e400'"),
    (["--hidden", "1.9,64.7"], "--hidden: cannot use '1.9,64.7' (expected layer sizes like"),
    (["--num-envs", "true"], "--num-envs: cannot use 'true' (expected an integer)"),
    (["--device", "cuda:99999"], "unknown --device 'cuda:99999'"),
    (["--algo", "reinforce", "--hidden", "64"],
     "--hidden applies to --algo dqn or pqn only, not --algo reinforce; drop it or pass --algo dqn"),
    (["--algo", "reinforce", "--eps-start", "0.5"],
     "--eps-start applies to --algo dqn or pqn only, not --algo reinforce"),
    (["--algo", "reinforce", "--loss", "mse"], "--loss applies to --algo dqn or pqn only"),
    (["--algo", "reinforce", "--tau", "0.1"], "--tau applies to --algo dqn only, not --algo "
                                               "reinforce"),
    (["--algo", "reinforce", "--batch-size", "64"], "--batch-size applies to --algo dqn only"),
    (["--algo", "pqn", "--batch-size", "64"], "--batch-size applies to --algo dqn only, not "
                                               "--algo pqn"),
    (["--algo", "pqn", "--no-double-dqn"], "--double-dqn applies to --algo dqn only"),
    (["--algo", "pqn", "--temperature", "2"], "--temperature applies to --algo dqn only"),
    (["--algo", "pqn", "--no-cuda-graphs"], "--cuda-graphs applies to --algo dqn only"),
    (["--temperature", "2"], "--temperature applies to --exploration boltzmann only"),
    (["--exploration", "boltzmann", "--eps-end", "0.1"],
     "--eps-end applies to --exploration egreedy only"),
    (["--per-alpha", "0.5"], "--per-alpha applies to prioritized replay only"),
    (["--eps-schedule", "per_episode", "--eps-decay-steps", "10"],
     "--eps-decay-steps applies to --eps-schedule linear and exponential only"),
    (["--num-envs", str(2**63 - 1)], "--num-envs must be <= 65,536"),
    (["--num-threads", "100000"], "--num-threads must be <= 1024, got 100000"),
    (["--n-step", str(2**63 - 1)], "--n-step 9223372036854775807 is beyond any run"),
    (["--target-update-interval", str(2**63 - 1)], "--target-update-interval 92233720368547758"),
    (["--gradient-steps", str(10**15)], "the indices of "),
    (["--network", "rbf", "--rbf-fit-steps", str(10**15)],
     "storing the 1,000,000,000,000,000 observations of --rbf-fit-steps needs"),
    (["--algo", "pqn", "--pqn-minibatches", str(2**40)], "--pqn-minibatches 1099511627776 is more "
                                                          "than the 512 transitions of a rollout"),
    (["--config", ""], "--config '' names nothing; give a preset name"),
])
def test_a_bad_setting_is_refused_before_anything_is_written(argv, message, capsys, tmp_path,
                                                             monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default run dir, runs/..., would land here
    err = _refused(["train", "--env", "CartPole-v1", *argv], capsys)
    assert err.startswith(f"error: {message}"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("text", "message"), [
    ("hidden = [1.9, 64.7]\n", "--hidden: cannot use [1.9, 64.7] (expected layer sizes"),
    ("hidden = {128 = 1}\n", "--hidden: cannot use {'128': 1}"),
    ("num_envs = true\n", "--num-envs: cannot use True (expected an integer)"),
    ("target_return = nan\n", "--target-return: cannot use nan"),
    ("lr = inf\n", "--lr: cannot use inf (expected a finite number)"),
    ("seed = 100000000000000000000000\n", "--seed must be in 0..4294967295"),
    ('algo = "reinforce"\nhidden = [64]\n', "--hidden applies to --algo dqn or pqn only"),
    ("train-every = 2\ntrain_every = 3\n", "run.toml sets train_every twice (train-every and "
                                           "train_every); keep one"),
    ("hidden = " + "[" * 5000 + "]" * 5000 + "\n", "run.toml nests arrays or tables too deep"),
    ("".join(f"k{i} = 1\n" for i in range(20)), "run.toml has unknown keys: k0, k1, k10, k11, "
                                                 "k12, k13, k14, k15 and 12 more; see"),
])
def test_a_loose_toml_value_is_refused_before_anything_is_written(text, message, capsys,
                                                                  tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text(text)
    err = _refused(["train", "--env", "CartPole-v1", "--config", "run.toml"], capsys)
    assert err.startswith(f"error: {message}"), err
    assert [p.name for p in tmp_path.iterdir()] == ["run.toml"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "gpu"], "unknown --device 'gpu'; use auto, cpu, cuda, cuda:N"),
    (["--device", "cuda:x"], "unknown --device 'cuda:x'"),
    (["--seed", "-1"], "--seed must be an episode seed in 0..73786976294838206364 (episode j of "
                       "100 gets SEED + j), got -1"),
    (["--seed", "73786976294838206464"], "--seed must be an episode seed in 0.."),
    (["--seed", "1.5"], "--seed: cannot use '1.5' (expected an integer)"),
    (["--num-envs", "0"], "--num-envs must be >= 1, got 0"),
    (["--num-envs", "2.5"], "--num-envs: cannot use '2.5' (expected an integer)"),
    (["--episodes", "0"], "--episodes must be >= 1, got 0"),
    (["--episodes", "1000000000000"], "--episodes must be <= 10,000,000, got 1000000000000"),
    (["--episodes", "1000000000"], "--episodes must be <= 10,000,000, got 1000000000"),
    (["--num-envs", str(2**63 - 1)], "--num-envs must be <= 65,536, got 9223372036854775807"),
    (["--json", "out.json"], "fastdqn: unexpected values: out.json (a switch takes no value: "
                             "--json)"),
    (["--episodes", "true"], "--episodes: cannot use 'true' (expected an integer)"),
    (["--epsilon", "1.5"], "--epsilon must be in [0, 1] (or none), got 1.5"),
    (["--epsilon", "nan"], "--epsilon: cannot use 'nan' (expected a finite number or none)"),
])
def test_eval_checks_its_flags_as_train_does_before_reading_the_checkpoint(argv, message, capsys,
                                                                           tmp_path) -> None:
    """The flags are checked first: a checkpoint that does not exist is not what is named."""
    err = _refused(["eval", str(tmp_path / "nope.pt"), *argv], capsys)
    assert err == f"error: {message}" or err.startswith(f"error: {message}"), err
    assert list(tmp_path.iterdir()) == []


def test_eval_refuses_a_missing_accelerator_in_one_line(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _refused(["eval", str(tmp_path / "nope.pt"), "--device", "cuda"], capsys)
    assert err.startswith("error: --device cuda asked for, but this torch sees no CUDA device")


@pytest.mark.parametrize("seed", [-1, 2**40, True])
def test_eval_refuses_a_checkpoint_whose_run_seed_no_run_has(cartpole_ckpt, tmp_path, capsys,
                                                             seed) -> None:
    from fastdqn.core.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(cartpole_ckpt)
    state["config"]["seed"] = seed
    path = tmp_path / "best.pt"
    save_checkpoint(path, state)
    err = _refused(["eval", str(path), "--episodes", "1"], capsys)
    assert str(path) in err and "seed" in err and "damaged or crafted" in err, err


def test_eval_help_names_the_test_stream_and_train_help_the_algorithms(capsys) -> None:
    assert main(["eval", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "held-out TEST stream" in text and "the run's eval seeds" not in text
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Train a DQN, PQN or REINFORCE agent" in text
    assert "a name that is a preset means the preset even where a file of that name exists" in text


def test_each_flag_says_which_algorithms_read_it() -> None:
    """The [--algo ... only] marks come from the same table the refusals do."""
    import argparse

    from fastdqn.cli import build_parser
    from fastdqn.config.choices import ALGOS
    from fastdqn.config.settings import CONDITIONS, field_names, reads

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = {a.dest: a for a in sub.choices["train"]._actions}
    for name in field_names():
        row, text = reads(name), actions[name].help
        mark = f"--algo {', '.join(row['algos'])} only"
        assert (mark in text) == (set(row["algos"]) != set(ALGOS)), name
        assert all(f"with {CONDITIONS[w].scope}" in text for w in row["when"]), name
        assert text.endswith("]") == bool(mark in text or row["when"]), name
    assert actions["temperature"].help.endswith(
        "[--algo dqn only; with no --actors; with --exploration boltzmann]")
    assert "pqn's" in actions["hidden"].help and not actions["hidden"].help.startswith("dqn:")


def test_a_preset_name_is_the_preset_whatever_the_folder_holds(tmp_path, monkeypatch,
                                                                capsys) -> None:
    """A folder, or a file without a suffix, named like a preset does not hide the preset;
    ./NAME names the file, and a folder given as a path is refused as a folder."""
    from fastdqn.config.files import load_toml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "minatar").mkdir()
    (tmp_path / "pqn").write_text("num_envs = 3\n")
    preset = load_toml("minatar")
    assert preset["env_id"] == "MinAtar/Breakout-v1"
    assert load_toml("pqn")["algo"] == "pqn"  # the preset, not the file named pqn
    assert load_toml("./pqn") == {"num_envs": 3}  # the file, named as a path
    # the preset loads (its --num-envs 0 is what is refused), not "does not exist"
    err = _refused(["train", "--config", "minatar", "--num-envs", "0"], capsys)
    assert err == "error: --num-envs must be >= 1, got 0"
    for name in ["./minatar", "minatar/"]:
        err = _refused(["train", "--config", name], capsys)
        assert err.startswith(f"error: config file {name} is a folder; give a TOML file or a "
                              "preset name (atari, "), err
    err = _refused(["train", "--config", "minatar.toml"], capsys)
    assert err == ("error: config file minatar.toml does not exist; did you mean the preset "
                   "'minatar' (--config minatar)?")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minatar", "pqn"]


def test_a_config_path_that_is_no_settings_file_is_refused(tmp_path, capsys) -> None:
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)  # reading it would block: refused before it is opened
    err = _refused(["train", "--config", str(fifo)], capsys)
    assert err == f"error: config file {fifo} is not a regular file; give a TOML file"
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (2 << 20))
    err = _refused(["train", "--config", str(big)], capsys)
    assert "is over 1,048,576 bytes" in err
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    assert "is a folder" in _refused(["train", "--config", str(folder)], capsys)


def test_a_config_file_is_utf8_text_a_bom_allowed_and_a_broken_link_named(tmp_path, capsys,
                                                                          monkeypatch) -> None:
    """An editor's BOM is no setting; other encodings and a dangling symlink (even one named
    like no preset) are one line naming what the file is."""
    from fastdqn.config.files import load_toml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbfnum_envs = 3\n")
    assert load_toml("bom.toml") == {"num_envs": 3}
    (tmp_path / "latin.toml").write_bytes("# caf\u00e9\nnum_envs = 3\n".encode("latin-1"))
    err = _refused(["train", "--config", "latin.toml"], capsys)
    assert err == ("error: config file latin.toml is not UTF-8 text (byte 5); TOML files are "
                   "UTF-8: save it as UTF-8")
    (tmp_path / "wide.toml").write_bytes("num_envs = 3\n".encode("utf-16"))
    assert "is not UTF-8 text" in _refused(["train", "--config", "wide.toml"], capsys)
    os.symlink(tmp_path / "gone.toml", tmp_path / "settings")
    err = _refused(["train", "--config", "settings"], capsys)
    assert err.startswith("error: config file settings is a broken symlink (to "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bom.toml", "latin.toml", "settings", "wide.toml"]


def test_eval_compare_success_return_sets_the_bar(lunar_ckpt: Path, tmp_path: Path, capsys) -> None:
    """--success-return replaces the run's --target-return as --compare's success bar (a run
    whose target was a stopping rule above the env's own bar is compared on that bar)."""
    rates = {}
    for bar in ("-1000", "1000"):
        assert main(["eval", str(lunar_ckpt), "--episodes", "2", "--compare", "--json",
                     "--success-return", bar, "--plot", str(tmp_path / "c.png")]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["success_threshold"] == float(bar)
        rates[bar] = [out[p]["success_rate"] for p in ("greedy", "random", "heuristic")]
    assert rates == {"-1000": [1.0, 1.0, 1.0], "1000": [0.0, 0.0, 0.0]}
    assert main(["eval", str(lunar_ckpt), "--success-return", "200"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --success-return is --compare's success bar; add --compare or drop "
        "--success-return")
