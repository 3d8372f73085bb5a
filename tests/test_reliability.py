"""Interruptions and faults end to end: signals, crashing and hanging envs, NaN, exact resume.

Subprocess tests run `python -m fastdqn` of this checkout with FASTDQN_TEST_TAG=<uuid> in its
environment; every worker inherits it, so scanning /proc for the tag after the trainer exits
proves that no worker process survived it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from conftest import (
    REPO_ROOT,
    fastdqn_command,
    run_fastdqn,
    subprocess_env,
    tagged_pids,
    wait_for_no_tagged,
)
from scripted_envs import EPISODE_LENGTH, env_id

from fastdqn import train
from fastdqn.core.checkpoint import load_checkpoint, save_checkpoint
from fastdqn.core.seeds import SELECT, episode_seed
from fastdqn.errors import TrainingDiverged


def start_train(run_dir: Path, *args: str, tag: str, **env: str) -> subprocess.Popen:
    """`fastdqn train` in its own process group (a terminal's Ctrl-C signals the whole group),
    with SIGINT at Python's default as a terminal starts it: pytest run as a background job has
    it ignored, and the child would inherit that."""
    return subprocess.Popen(
        fastdqn_command("train", *args, "--run-dir", str(run_dir), "--no-progress"),
        env=subprocess_env(FASTDQN_TEST_TAG=tag, **env), cwd=REPO_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Wait until the trainer writes `path` (`timeout`: only a hang guard, far beyond need)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"trainer exited early ({proc.returncode}): {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {path.name} after {timeout} s")
        time.sleep(0.02)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


CARTPOLE = ["--env", "CartPole-v1", "--num-envs", "4", "--num-workers", "2", "--hidden", "32",
            "--learning-starts", "200", "--checkpoint-every", "1000", "--eval-every", "0",
            "--solve-episodes", "5", "--eval-envs", "4", "--seed", "2",
            "--total-timesteps", "100000000"]


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_the_whole_group_checkpoints_and_says_how_to_resume(tmp_path, sig, code):
    """Ctrl-C (and Slurm's or systemd's SIGTERM) reach the trainer and its workers alike."""
    tag = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    proc = start_train(run_dir, *CARTPOLE, tag=tag)
    wait_for_file(run_dir / "checkpoint.pt", proc)  # a periodic save: training is under way
    assert len(tagged_pids(tag)) >= 3  # trainer and two workers: the final check can fail
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == code, err
    summary = json.loads((run_dir / "summary.json").read_text())
    steps = summary["total_env_steps"]
    assert summary["interrupted"] is True and summary["diverged"] is False
    assert steps >= 1000 and steps % 4 == 0
    assert err.strip().splitlines()[-1] == (
        f"interrupted at {steps:,d} steps; checkpoint saved. "
        f"Resume with: fastdqn train --resume --run-dir {run_dir}")
    assert "Traceback" not in err
    assert load_checkpoint(run_dir / "checkpoint.pt")["counters"]["step"] == steps
    assert wait_for_no_tagged(tag) == []
    if sig != signal.SIGINT:
        return
    # ... and the printed command continues the run from there
    before = load_checkpoint(run_dir / "checkpoint.pt")
    r = run_fastdqn("train", "--resume", "--run-dir", str(run_dir), "--total-timesteps",
                    str(steps + 400), "--no-progress", FASTDQN_TEST_TAG=tag)
    assert r.returncode == 0, r.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["total_env_steps"] == steps + 400 and summary["interrupted"] is False
    after = load_checkpoint(run_dir / "checkpoint.pt")
    assert after["counters"]["step"] == steps + 400
    assert after["learner"]["steps"] > before["learner"]["steps"]
    assert after["counters"]["returns"][:len(before["counters"]["returns"])] == \
        before["counters"]["returns"]
    assert wait_for_no_tagged(tag) == []


def signal_env(sig: str, **when: str) -> dict[str, str]:
    """The environment variables that make scripted_envs.SignalEnv signal the trainer."""
    return {"FASTDQN_TEST_SIGNAL": sig,
            **{f"FASTDQN_TEST_SIGNAL_{k.upper()}": v for k, v in when.items()}}


def test_second_sigint_exits_at_once_and_keeps_the_last_complete_checkpoint(tmp_path):
    """The env (in its worker) sends SIGINT at env step 10, and again when the trainer closes
    it: the second one lands after the first was seen, while the workers are being closed."""
    tag = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    proc = start_train(run_dir, "--env", env_id("Signal-v0"), "--vector", "sharded",
                       "--num-envs", "1", "--num-workers", "1", "--hidden", "8",
                       "--learning-starts", "10000", "--checkpoint-every", "4",
                       "--eval-every", "0", "--total-timesteps", "100000", tag=tag,
                       **signal_env("SIGINT", step="10", again="close"))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    # Python's resource tracker (its own process) may add a warning about the env workers' shared
    # memory when the second Ctrl-C lands while they are being closed: that is not fastdqn's line
    ours = [line for line in err.strip().splitlines() if "resource_tracker" not in line]
    assert ours[-1] == (
        "interrupted: stopped at once, the last complete checkpoint is kept "
        f"(resume with: fastdqn train --resume --run-dir {run_dir} --env {env_id('Signal-v0')})")
    assert "Traceback" not in err
    assert load_checkpoint(run_dir / "checkpoint.pt")["counters"]["step"] == 8
    assert not (run_dir / "summary.json").exists()  # the second signal left before it
    assert wait_for_no_tagged(tag) == []


FINAL_EVAL = ["--env", env_id("Signal-v0"), "--vector", "sync", "--num-envs", "2", "--seed", "4",
              "--hidden", "8", "--learning-starts", "16", "--checkpoint-every", "16",
              "--eval-every", "0", "--solve-episodes", "6", "--eval-envs", "1",
              "--target-return", "-100", "--total-timesteps", "40"]
"""A run whose only evaluation is the final one: 6 episodes of 4 steps, one after another, on
the selection seeds; every policy reaches the target, so an uninterrupted run is solved."""


@pytest.mark.parametrize(("sig", "code", "episode"), [
    (signal.SIGINT, 130, 2), (signal.SIGTERM, 143, 2), (signal.SIGTERM, 143, 0)])
def test_a_signal_during_the_final_evaluation_still_writes_the_checkpoint_and_summary(
        tmp_path, sig, code, episode):
    """The signal arrives on the first step of the final evaluation's episode `episode`: the
    evaluation stops there, its ended episodes are kept, and the run ends as an interrupted
    one does (it used to die at once, the default handlers back in place, leaving neither)."""
    tag = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    proc = start_train(run_dir, *FINAL_EVAL, tag=tag, **signal_env(
        sig.name, seed=str(episode_seed(4, SELECT, episode))))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == (
        "interrupted at 40 steps; checkpoint saved. Resume with: fastdqn train --resume "
        f"--run-dir {run_dir} --env {env_id('Signal-v0')}")
    assert "Traceback" not in err
    assert load_checkpoint(run_dir / "checkpoint.pt")["counters"]["step"] == 40
    assert (run_dir / "best.pt").exists()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["interrupted"] is True and s["total_env_steps"] == 40
    assert s["solved"] is False  # 6 episodes decide it; fewer ended
    if episode == 0:  # none ended: no evaluation to report
        assert s["final_eval"] is None and s["evals"] == []
    else:
        assert s["final_eval"]["episodes"] == episode and s["final_eval"]["interrupted"] is True
        assert [(e["kind"], e["episodes"], e["seeds"]["count"], e.get("interrupted"))
                for e in s["evals"]] == [("final", episode, episode, True)]
    # resumed, the run plays its final evaluation in full, and is solved by it
    r = run_fastdqn("train", "--resume", "--run-dir", str(run_dir), "--env",
                    env_id("Signal-v0"), "--no-progress", FASTDQN_TEST_SIGNAL="SIGINT")
    assert r.returncode == 0, r.stderr
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["interrupted"] is False and s["final_eval"]["episodes"] == 6 and s["solved"]
    assert wait_for_no_tagged(tag) == []


def test_a_signal_while_a_screen_plays_beside_the_training_drops_it(tmp_path):
    """SIGTERM on the first step of the step-16 screen's second episode, which plays on the
    evaluation worker while training goes on: the trainer, pacing on the screen, cannot pass
    step 20 before it comes (the screen's 4-step first episode is as far as it may run ahead;
    a fast worker sends it sooner); the run stops after that iteration, and the screen in
    flight is dropped (never recorded, never best.pt)."""
    tag = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    proc = start_train(run_dir, *FINAL_EVAL, "--eval-every", "16", "--eval-episodes", "2",
                       tag=tag, **signal_env("SIGTERM", seed=str(episode_seed(4, SELECT, 1))))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err
    s = json.loads((run_dir / "summary.json").read_text())
    stop = s["total_env_steps"]
    assert stop in (16, 18, 20), stop
    assert err.strip().splitlines()[-1].startswith(f"interrupted at {stop} steps; checkpoint saved.")
    assert s["interrupted"] is True and s["final_eval"] is None
    assert s["evals"] == [] and s["best_eval"] is None
    assert load_checkpoint(run_dir / "checkpoint.pt")["counters"]["step"] == stop


def test_a_second_signal_during_the_final_evaluation_exits_at_once(tmp_path):
    tag = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    proc = start_train(run_dir, *FINAL_EVAL, tag=tag, **signal_env(
        "SIGINT", seed=str(episode_seed(4, SELECT, 1)), again="now"))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "interrupted: stopped at once, the last complete checkpoint is kept "
        f"(resume with: fastdqn train --resume --run-dir {run_dir} --env {env_id('Signal-v0')})")
    assert "Traceback" not in err
    assert load_checkpoint(run_dir / "checkpoint.pt")["counters"]["step"] == 32  # the last save
    assert not (run_dir / "summary.json").exists()


SCRIPTED = ["--num-envs", "4", "--num-workers", "2", "--seed", "0", "--hidden", "16",
            "--learning-starts", "32", "--checkpoint-every", "64", "--eval-every", "0",
            "--total-timesteps", "100000"]


@pytest.mark.parametrize(("env", "extra", "error"), [
    # env 1 (seed 1) raises on its 40th step, i.e. at env step 160; saves were at 64 and 128
    ("Crash-v0", [], "error: env 1 crashed in step: RuntimeError: simulated crash after 40 steps"),
    # (--env-timeout bounds every reply, the workers' start included: 5 s, far beyond what a
    # reply of a live worker takes on a loaded machine, so only the hang can trip it)
    ("Hang-v0", ["--env-timeout", "5"],
     "error: env worker for envs 0..1 hung: no reply within 5 s (--env-timeout); killed the "
     "env workers"),
], ids=["crash", "hang"])
def test_failing_env_stops_with_one_line_naming_it_and_keeps_the_checkpoint(env, extra, error,
                                                                            tmp_path):
    tag = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    r = run_fastdqn("train", "--env", env_id(env), *SCRIPTED, *extra, "--run-dir", str(run_dir),
                    "--no-progress", FASTDQN_TEST_TAG=tag)
    assert r.returncode == 1, r.stderr
    assert error_lines(r.stderr) == [
        f"{error}; stopped, the last good checkpoint is kept "
        f"(resume with: fastdqn train --resume --run-dir {run_dir} --env {env_id(env)})"]
    assert "Traceback" not in r.stderr
    assert load_checkpoint(run_dir / "checkpoint.pt")["counters"]["step"] == 128
    assert wait_for_no_tagged(tag) == []


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    """Rewards of 1e39 overflow float32: with the MSE loss the first update makes NaN weights."""
    run_dir = tmp_path / "run"
    r = run_fastdqn("train", "--env", env_id("HugeReward-v0"), "--vector", "sync",
                    "--num-envs", "2", "--hidden", "16", "--loss", "mse", "--batch-size", "16",
                    "--learning-starts", "32", "--checkpoint-every", "16", "--log-every", "64",
                    "--eval-every", "0", "--total-timesteps", "100000", "--run-dir",
                    str(run_dir), "--no-progress")
    assert r.returncode == 1, r.stderr
    assert error_lines(r.stderr) == [
        "error: training diverged at step 48 (NaN or inf in the network); likely causes: a "
        "learning rate too high (--lr 0.00063, try 3-10x lower) or rewards too large (scale "
        "them down, e.g. with gymnasium.wrappers.TransformReward); --max-grad-norm 10 is on, a "
        "lower value damps the updates; stopped, the last good checkpoint is kept "
        f"(resume with: fastdqn train --resume --run-dir {run_dir} "
        f"--env {env_id('HugeReward-v0')})"]
    assert "Traceback" not in r.stderr
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["counters"]["step"] == 32  # saved before learning started; 48 was refused
    assert torch.isfinite(ckpt["learner"]["params"]).all()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["diverged"] is True and summary["interrupted"] is False
    assert summary["total_env_steps"] == 48
    assert not (run_dir / "best.pt").exists()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_infinite_loss_is_caught_at_log_time(tmp_path):
    """With the Huber loss the weights stay finite but the TD loss is inf: the log check sees it."""
    with pytest.raises(TrainingDiverged) as info:
        train(env_id=env_id("HugeReward-v0"), vector="sync", num_envs=2, hidden=(16,),
              batch_size=16, learning_starts=32, checkpoint_every=16, log_every=64,
              max_grad_norm=0.0, eval_every=0, total_timesteps=10_000,
              run_dir=str(tmp_path / "run"), progress=False)
    assert str(info.value).startswith("training diverged at step 64 (TD loss inf, mean Q ")
    assert str(info.value).endswith("gradient clipping is off, try --max-grad-norm 10")
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["counters"]["step"] == 48
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["diverged"] is True


# ---------------------------------------------------------------------------------------------
# Exact resume
# ---------------------------------------------------------------------------------------------

NUM_ENVS = 2
HALF = 12 * EPISODE_LENGTH * NUM_ENVS
"""Env steps of the first leg: whole episodes for every env, so the stop is at a boundary."""
EXACT = dict(env_id=env_id("FixedLength-v0"), num_envs=NUM_ENVS, seed=3, device="cpu",
             hidden=(16,), batch_size=8, buffer_size=64, learning_starts=16, train_every=2,
             eval_every=0, solve_episodes=1, eval_envs=1, log_every=8, progress=False,
             eps_decay_steps=60, checkpoint_every=0, save_buffer=True)


def final_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoint.pt")


def interrupted_run(tmp_path: Path, vector: str, save_buffer: bool, keep_env_starts: bool = True
                    ) -> dict:
    """HALF steps, then --resume to 2*HALF; the final checkpoint."""
    run_dir = tmp_path / f"B-{vector}-{save_buffer}-{keep_env_starts}"
    cfg = {**EXACT, "vector": vector, "save_buffer": save_buffer}
    train(**cfg, total_timesteps=HALF, run_dir=str(run_dir))
    if not keep_env_starts:  # what resuming did before episode starts were checkpointed
        state = load_checkpoint(run_dir / "checkpoint.pt")
        del state["env_starts"]
        save_checkpoint(run_dir / "checkpoint.pt", state)
    train(**cfg, total_timesteps=2 * HALF, run_dir=str(run_dir), resume=True)
    return final_state(run_dir)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("exact") / "A"
    train(**EXACT, vector="sync", total_timesteps=2 * HALF, run_dir=str(run_dir))
    return final_state(run_dir)


def assert_same_run(a: dict, b: dict) -> None:
    la, lb = a["learner"], b["learner"]
    assert la["steps"] == lb["steps"] > 0
    assert torch.equal(la["params"], lb["params"])
    assert torch.equal(la["target"], lb["target"])
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(la["optimizer"][k], lb["optimizer"][k]), k
    for k in ("step", "episodes", "due", "returns", "lengths", "end_steps"):
        assert a["counters"][k] == b["counters"][k], k
    sa, sb = a["rng"]["sampler"], b["rng"]["sampler"]
    if isinstance(sa, dict):  # prioritized: the tree's leaves, its max and its RNG
        assert sa["rng"] == sb["rng"] and sa["max_priority"] == sb["max_priority"]
        assert torch.equal(sa["priorities"], sb["priorities"])
    else:
        assert sa == sb
    assert torch.equal(a["rng"]["act"], b["rng"]["act"])
    assert a["env_starts"] == b["env_starts"]
    for k in ("obs", "actions", "rewards", "next_obs", "dones", "discounts"):
        assert torch.equal(a["buffer"][k], b["buffer"][k]), k


@pytest.mark.parametrize("vector", ["sync", "sharded"])
def test_resume_with_save_buffer_equals_an_uninterrupted_run(tmp_path, uninterrupted, vector):
    assert HALF % (EPISODE_LENGTH * NUM_ENVS) == 0
    assert_same_run(uninterrupted, interrupted_run(tmp_path, vector, save_buffer=True))


RAINBOW = dict(n_step=3, prioritized=True, dueling=True, per_beta=1.0)
"""per_beta 1: beta anneals over --total-timesteps, which the two legs here set differently."""


def test_resume_with_n_step_priorities_and_dueling_equals_an_uninterrupted_run(tmp_path):
    """The sum tree, the beta schedule and the n-step writer resume too: no window is open at an
    episode boundary, and the priorities come back with the buffer."""
    run_dir = tmp_path / "A"
    train(**EXACT, **RAINBOW, vector="sync", total_timesteps=2 * HALF, run_dir=str(run_dir))
    a = final_state(run_dir)
    b_dir = tmp_path / "B"
    train(**EXACT, **RAINBOW, vector="sync", total_timesteps=HALF, run_dir=str(b_dir))
    train(**EXACT, **RAINBOW, vector="sync", total_timesteps=2 * HALF, run_dir=str(b_dir),
          resume=True)
    b = final_state(b_dir)
    assert_same_run(a, b)
    assert a["rng"]["sampler"]["max_priority"] > 1.0  # priorities were written back
    assert a["net"]["dueling"] is True and a["buffer"]["discounts"].unique().numel() == 3


def test_resume_without_save_buffer_differs(tmp_path, uninterrupted):
    """Guard: the comparison above can fail (the buffer refills from empty after resume)."""
    b = interrupted_run(tmp_path, "sync", save_buffer=False)
    assert b["counters"]["step"] == uninterrupted["counters"]["step"]
    assert not torch.equal(uninterrupted["learner"]["params"], b["learner"]["params"])


def test_resume_that_reseeds_the_envs_differs(tmp_path, uninterrupted):
    """Guard: without the saved episode starts the resumed envs draw other starts."""
    b = interrupted_run(tmp_path, "sync", save_buffer=True, keep_env_starts=False)
    assert b["counters"]["returns"] != uninterrupted["counters"]["returns"]
    assert not torch.equal(uninterrupted["learner"]["params"], b["learner"]["params"])


START_MOMENTS = {
    "envs": "import fastdqn.runtime.run as m; name = 'make_vector_env'",
    "rbf fit": "import fastdqn.algos.dqn.agent as m; name = 'fit_scaler'",
}
"""Where a signal lands before the first step: the training envs being built, the RBF fit."""


@pytest.mark.parametrize(("moment", "algo", "sig", "code"), [
    ("envs", "dqn", signal.SIGTERM, 143), ("envs", "pqn", signal.SIGINT, 130),
    ("envs", "reinforce", signal.SIGTERM, 143), ("rbf fit", "dqn", signal.SIGTERM, 143)])
def test_a_signal_before_the_first_step_still_leaves_a_resumable_run(tmp_path, moment, algo,
                                                                     sig, code):
    """A signal during the run's slow start (the envs, the RBF fit) stops it before its first
    step as one during the loop does: checkpoint.pt at step 0, summary.json, the resume line
    (it used to be the default handler's instant death: no file, no line). Resumed, it runs."""
    run_dir = tmp_path / "run"
    args = ["train", "--algo", algo, "--env", "CartPole-v1", "--vector", "sync", "--num-envs", "2",
            "--total-timesteps", "64", "--eval-every", "0", "--eval-episodes", "1",
            "--solve-episodes", "1", "--seed", "3", "--run-dir", str(run_dir), "--no-progress"]
    if moment == "rbf fit":
        args += ["--network", "rbf"]
    code_text = (f"import signal, sys\n{START_MOMENTS[moment]}\norig = getattr(m, name)\n"
                 "def hooked(*a, **k):\n"
                 f"    signal.raise_signal(signal.{sig.name})\n"
                 "    return orig(*a, **k)\n"
                 "setattr(m, name, hooked)\nfrom fastdqn.cli import main\n"
                 f"sys.exit(main({args!r}))\n")
    r = subprocess.run([sys.executable, "-c", code_text], capture_output=True, text=True,
                       timeout=600, env=subprocess_env(), cwd=REPO_ROOT,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.returncode == code, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"interrupted at 0 steps; checkpoint saved. Resume with: fastdqn train --resume "
        f"--run-dir {run_dir}")
    assert "Traceback" not in r.stderr
    assert load_checkpoint(run_dir / "checkpoint.pt")["counters"]["step"] == 0
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["interrupted"] is True and s["total_env_steps"] == 0 and s["final_eval"] is None
    r = run_fastdqn("train", "--resume", "--run-dir", str(run_dir), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads((run_dir / "summary.json").read_text())["total_env_steps"] >= 64
