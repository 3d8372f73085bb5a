"""The run lifecycle's parts on their own: the Evaluator's cadence, records and choice of best.pt,
Signals, and what --overwrite may delete."""

from __future__ import annotations

import os
import signal

import pytest

from fastdqn.config import Config, ConfigError
from fastdqn.evaluate import EvalResult
from fastdqn.run import Counters, Evaluator, Signals, remove_run_files


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

    def __init__(self, returns: list[float]) -> None:
        self.returns, self.calls = returns, []

    def __call__(self, episodes: int, first: int) -> EvalResult:
        self.calls.append((episodes, first))
        r = self.returns[first:first + episodes]
        mean = sum(r) / len(r)
        return EvalResult(mean, 0.0, min(r), max(r), len(r), list(r), [1] * len(r))


def evaluator(returns: list[float], target: float | None = 100.0, **cfg):
    c = Counters(next_eval=10)
    play = Script(returns)
    config = Config(eval_every=10, eval_episodes=2, solve_episodes=4, **cfg)
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
    result, improved = ev.final()
    assert play.calls == [(2, 0), (2, 2)]  # episodes 0-1 once, then 2-3
    assert result.episodes == 4 and not improved
    assert [e["kind"] for e in c.evals] == ["final"] and c.evals[0]["final"] is True
    c.step = 20  # nothing at this step yet: the final evaluation plays all four
    ev.final()
    assert play.calls[-1] == (4, 0)


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
