"""The run lifecycle's parts on their own: the Evaluator's cadence, records, choice of best.pt and
solved decision, evaluations cut short by a signal, Signals, which run dirs hold a run and what
--overwrite may delete."""

from __future__ import annotations

import json
import math
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
from scripted_envs import env_id

from fastdqn import train
from fastdqn.algos.contract import Counters
from fastdqn.config.settings import Config
from fastdqn.errors import ConfigError
from fastdqn.evaluation.episodes import EvalResult, run_episodes
from fastdqn.runtime.run import Evaluator, Signals
from fastdqn.runtime.rundir import prepare_run_dir, remove_run_files, resume_checkpoint


class FakeLogger:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def message(self, text: str) -> None:
        pass


class Script:
    """A `play(episodes, first)` whose episode j returns returns[j] (the same for every call,
    as a fixed policy on fixed seeds would), recording what it was asked to play."""

    def __init__(self, returns: list[float], cut_at: int | None = None) -> None:
        self.returns, self.calls, self.cut_at = returns, [], cut_at

    def __call__(self, episodes: int, first: int, policy=None) -> EvalResult:
        """(A signal at episode `cut_at` ends the play with the episodes before it.)"""
        self.calls.append((episodes, first))
        end = first + episodes if self.cut_at is None else min(first + episodes, self.cut_at)
        r = self.returns[first:end]
        if not r:
            return EvalResult(math.nan, math.nan, math.nan, math.nan, 0)
        mean = sum(r) / len(r)
        return EvalResult(mean, 0.0, min(r), max(r), len(r), list(r), [1] * len(r))


def evaluator(returns: list[float], target: float | None = 100.0, cut_at: int | None = None,
              **cfg):
    c = Counters(next_eval=10)
    play = Script(returns, cut_at)
    config = Config(**{"eval_every": 10, "eval_episodes": 2, "solve_episodes": 4, **cfg})
    return Evaluator(config, c, target, play, FakeLogger(), lambda: 1.5), c, play


def test_screening_below_the_target_plays_only_the_screening_episodes():
    ev, c, play = evaluator([10, 20, 300, 400])
    c.step = 10
    assert ev.due()
    result, improved, solved = ev.periodic()
    assert (result.mean, improved, solved) == (15, True, False)
    assert play.calls == [(2, 0)] and c.next_eval == 20 and not ev.due()
    assert c.evals[-1]["kind"] == "screen" and c.evals[-1]["seeds"]["count"] == 2


def test_reaching_the_target_confirms_on_the_next_episodes_and_decides_on_all_of_them():
    ev, c, play = evaluator([150, 150, 0, 0])  # screen 150 >= 100, but all four: 75
    c.step = 10
    result, improved, solved = ev.periodic()
    assert play.calls == [(2, 0), (2, 2)]
    assert (result.episodes, result.mean, solved) == (4, 75, False)
    assert c.evals[-1]["kind"] == "confirm"
    ev2, c2, _ = evaluator([150, 150, 120, 100])
    c2.step = 10
    assert ev2.periodic()[2] is True


def test_best_is_chosen_on_the_screening_episodes_only():
    """A confirming evaluation's mean over 4 episodes never competes with screening means."""
    ev, c, _ = evaluator([150, 150, 0, 0])
    c.step = 10
    ev.periodic()
    assert c.best_eval == 150 and c.best_step == 10  # its first two episodes, not 75
    assert ev.best() == {"mean": 150, "step": 10, "episodes": 2, "seeds": ev.seeds(2)}


def test_the_final_evaluation_extends_one_made_at_the_same_step_instead_of_replaying_it():
    ev, c, play = evaluator([10, 20, 30, 40])
    c.step = 10
    ev.periodic()
    result, improved, solved = ev.final()
    assert play.calls == [(2, 0), (2, 2)]  # episodes 0-1 once, then 2-3
    assert result.episodes == 4 and not improved and not solved
    assert [e["kind"] for e in c.evals] == ["final"] and c.evals[0]["final"] is True
    c.step = 20  # nothing at this step yet: the final evaluation plays all four
    ev.final()
    assert play.calls[-1] == (4, 0)


@pytest.mark.parametrize(("returns", "solved"), [
    ([150, 150, 120, 100], True), ([150, 150, 0, 0], False), ([100, 100, 100, 99.9], False)])
def test_the_final_evaluation_decides_solved_as_a_confirming_one_does(returns, solved):
    """With --eval-every 0 the final evaluation is the only one: it must be able to solve."""
    ev, c, play = evaluator(returns, eval_every=0)
    c.step = 40
    result, improved, got = ev.final()
    assert play.calls == [(4, 0)]  # --solve-episodes episodes from the first selection seed
    assert got is solved and result.mean == sum(returns) / 4
    assert c.evals[-1]["kind"] == "final" and c.evals[-1]["seeds"]["count"] == 4


def test_a_final_evaluation_extending_a_screening_one_below_the_target_can_solve():
    """The screen at the last step (mean 90) stays below the target; its four episodes (110)
    reach it, as a confirming evaluation's would have had the screen reached it."""
    ev, c, play = evaluator([90, 90, 130, 130])
    c.step = 10
    assert ev.periodic()[2] is False
    result, _, solved = ev.final()
    assert play.calls == [(2, 0), (2, 2)] and result.mean == 110 and solved


def test_a_final_evaluation_cut_short_by_a_signal_neither_solves_nor_counts_its_missing_episodes():
    ev, c, play = evaluator([150, 150, 150, 150], cut_at=3)
    c.step = 10
    result, improved, solved = ev.final()
    assert (result.episodes, solved, improved) == (3, False, True)  # 2 screening episodes ended
    assert c.evals[-1]["interrupted"] is True and c.evals[-1]["seeds"]["count"] == 3
    ev, c, _ = evaluator([150, 150, 150, 150], cut_at=1)
    c.step = 10
    result, improved, solved = ev.final()
    assert (result.episodes, solved, improved) == (1, False, False)  # short of the screening
    assert c.best_eval == -math.inf and ev.best() is None
    ev, c, _ = evaluator([150, 150, 150, 150], cut_at=0)
    c.step = 10
    assert ev.final() == (None, False, False) and c.evals == []


def test_a_periodic_evaluation_cut_short_by_a_signal_is_recorded_as_such_and_never_confirms():
    ev, c, play = evaluator([150, 150, 150, 150], cut_at=1)
    c.step = 10
    result, improved, solved = ev.periodic()
    assert play.calls == [(2, 0)] and (result.episodes, improved, solved) == (1, False, False)
    assert c.evals[-1]["interrupted"] is True and c.evals[-1]["kind"] == "screen"
    ev, c, play = evaluator([150, 150, 150, 150], cut_at=3)  # cut during the confirmation
    c.step = 10
    result, improved, solved = ev.periodic()
    assert play.calls == [(2, 0), (2, 2)] and (result.episodes, improved, solved) == (3, True, False)
    assert c.evals[-1]["interrupted"] is True and c.evals[-1]["kind"] == "confirm"


class SeededLengthEnv(gym.Env):
    """Episode j (reset with seed 100 + j) lasts LENGTHS[j] steps, each paying j."""

    LENGTHS = (1, 5, 1, 1)
    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        self.j, self.t = seed - 100, 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), float(self.j), self.t == self.LENGTHS[self.j], False, {}


def test_run_episodes_stopped_keeps_the_episodes_that_ended_in_seed_order():
    """Two envs: episodes 0, 2 and 3 end in the first three steps while episode 1 plays on.
    Stopped before the fourth step, the result covers episode 0 only: the longest run of ended
    episodes from the first, so the seeds it covers are still the first ones."""
    steps = []

    def stop() -> bool:
        steps.append(1)
        return len(steps) > 3

    def policy(obs: np.ndarray) -> np.ndarray:
        return np.zeros(len(obs), dtype=np.int64)

    cut = run_episodes(policy, "unused", 4, seed=100, num_envs=2, make_env=SeededLengthEnv,
                       stop=stop)
    assert (cut.episodes, cut.returns, cut.lengths, cut.mean) == (1, [0.0], [1], 0.0)
    full = run_episodes(policy, "unused", 4, seed=100, num_envs=2, make_env=SeededLengthEnv)
    assert (full.episodes, full.returns, full.lengths) == (4, [0, 5, 2, 3], [1, 5, 1, 1])
    none = run_episodes(policy, "unused", 4, seed=100, num_envs=2, make_env=SeededLengthEnv,
                        stop=lambda: True)
    assert none.episodes == 0 and none.returns == [] and math.isnan(none.mean)


def test_no_target_never_solves():
    ev, c, _ = evaluator([1e9, 1e9, 1e9, 1e9], target=None)
    c.step = 10
    assert ev.periodic()[2] is False


def test_a_first_signal_is_recorded_and_a_second_one_leaves_at_once():
    """(The handlers before are restored after, whatever they were: a shell starting pytest
    in the background hands it SIGINT ignored.)"""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with Signals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


TINY_RUN = dict(env_id=env_id("FixedLength-v0"), vector="sync", num_envs=2, hidden=(8,),
                batch_size=8, buffer_size=64, learning_starts=8, eval_envs=1, progress=False,
                checkpoint_every=0, eval_every=0, solve_episodes=3, total_timesteps=24)


@pytest.mark.parametrize("eval_every", [0, 100])
def test_a_run_with_no_evaluation_before_its_end_is_solved_by_its_final_one(tmp_path,
                                                                           eval_every):
    """Every FixedLength episode returns more than -10: the final evaluation (the only one)
    reaches the target on --solve-episodes selection episodes, so the run is solved."""
    s = train(**{**TINY_RUN, "eval_every": eval_every}, eval_episodes=2, target_return=-10.0,
              run_dir=str(tmp_path / "run")).summary
    assert s["solved"] is True and s["steps_to_solve"] == 24
    assert 0 < s["time_to_solve_s"] <= s["wall_time_s"]
    assert [(e["kind"], e["episodes"]) for e in s["evals"]] == [("final", 3)]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["solved"] is True
    s = train(**TINY_RUN, target_return=1e9, run_dir=str(tmp_path / "unsolved")).summary
    assert s["solved"] is False and s["steps_to_solve"] is None and s["time_to_solve_s"] is None


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_the_signal_handlers_are_restored_however_the_run_ends(tmp_path):
    """They stay installed through the final evaluation and writes, and no longer: after a
    complete run, a crashed env and a divergence alike, the caller's handlers are back."""
    from fastdqn.errors import EnvError, TrainingDiverged

    def handlers() -> tuple:
        return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    before = handlers()
    train(**TINY_RUN, eval_episodes=2, run_dir=str(tmp_path / "done"))
    assert handlers() == before
    with pytest.raises(EnvError):
        train(**{**TINY_RUN, "env_id": env_id("Crash-v0"), "total_timesteps": 1000}, seed=0,
              eval_episodes=2, run_dir=str(tmp_path / "crash"))
    assert handlers() == before
    with pytest.raises(TrainingDiverged):
        train(**{**TINY_RUN, "env_id": env_id("HugeReward-v0"), "total_timesteps": 1000},
              loss="mse", eval_episodes=2, run_dir=str(tmp_path / "nan"))
    assert handlers() == before


@pytest.mark.parametrize("leftover", ["events.out.tfevents.1700000000.host.1.0", "summary.json",
                                      ".checkpoint.pt.x1y2.tmp"])
def test_a_run_dir_holding_a_run_without_a_checkpoint_is_not_reused_silently(tmp_path, capsys,
                                                                            leftover):
    """A run killed before its first checkpoint leaves only TensorBoard's event files (or a temp
    file, or a summary if it diverged first): a new run there would mix two runs' curves. It is
    refused (one line, exit 2, nothing touched) unless --overwrite, and --resume says why it
    cannot continue it."""
    from fastdqn.cli import main

    d = tmp_path / "run"
    d.mkdir()
    (d / leftover).write_bytes(b"the killed run's")
    refusal = (f"{d} already holds a run with no checkpoint.pt yet (it stopped, or is still "
               "running, before its first save, so it cannot be resumed); pass --overwrite to "
               "replace it, or pick another --run-dir")
    with pytest.raises(ConfigError) as info:
        prepare_run_dir(Config(run_dir=str(d)))
    assert str(info.value) == refusal
    assert main(["train", "--env", "CartPole-v1", "--total-timesteps", "16", "--no-progress",
                 "--run-dir", str(d)]) == 2
    assert capsys.readouterr().err == f"error: {refusal}\n"
    assert main(["train", "--resume", "--run-dir", str(d)]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume: {d} holds a run with no checkpoint.pt (it stopped before its first "
        "save), so it cannot be resumed; start it again with --overwrite instead of --resume, or "
        "pick another --run-dir\n")
    with pytest.raises(ConfigError, match="start it again with --overwrite instead of --resume"):
        prepare_run_dir(Config(run_dir=str(d), resume=True))
    assert [p.name for p in d.iterdir()] == [leftover]
    assert (d / leftover).read_bytes() == b"the killed run's"
    assert prepare_run_dir(Config(run_dir=str(d), overwrite=True)) == d
    assert list(d.iterdir()) == []
    (d / "notes.txt").write_text("mine")  # a folder holding no fastdqn file is a fresh one
    assert prepare_run_dir(Config(run_dir=str(d))) == d
    with pytest.raises(ConfigError, match="check --run-dir or start without --resume"):
        resume_checkpoint(d)


def test_remove_run_files_deletes_only_fastdqn_files(tmp_path):
    for name in ["checkpoint.pt", "best.pt", "summary.json", "returns.png",
                 "events.out.tfevents.1.host", ".checkpoint.pt.abc.tmp"]:
        (tmp_path / name).write_text("x")
    remove_run_files(tmp_path)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "summary.json").write_text("x")
    (tmp_path / ".hidden.tmp").write_text("mine")  # a temp file fastdqn did not write
    with pytest.raises(ConfigError, match=r"\(\.hidden\.tmp\)"):
        remove_run_files(tmp_path)
    assert (tmp_path / "summary.json").exists()


def test_a_resume_tidies_only_fastdqn_temp_files_never_a_users(tmp_path):
    """Resuming deletes the temp files a kill -9 left from fastdqn's atomic writes, and no other
    dot-file ending in .tmp (it used to delete every `.*.tmp` in the run dir: a user's too)."""
    d = tmp_path / "run"
    train(**TINY_RUN, run_dir=str(d))
    mine = [".notes.tmp", ".checkpoint.pt.tmp", ".my.checkpoint.pt.x.tmp"]
    for name in mine:
        (d / name).write_text("mine")
    (d / ".checkpoint.pt.k2j4_x9a.tmp").write_bytes(b"left by a kill -9")
    train(**{**TINY_RUN, "total_timesteps": 2 * TINY_RUN["total_timesteps"]}, run_dir=str(d),
          resume=True)
    assert not (d / ".checkpoint.pt.k2j4_x9a.tmp").exists()
    assert all((d / name).read_text() == "mine" for name in mine)
