"""fastdqn tune: the search space as data, the score, the pruner's reports, and a study in SQLite
that resumes, keeps completed trials through Ctrl-C and writes a preset train takes."""

from __future__ import annotations

import signal

import pytest
import tomllib

from fastdqn.cli import main
from fastdqn.config.files import make_config
from fastdqn.errors import ConfigError

optuna = pytest.importorskip("optuna")

from fastdqn.runtime import tune as tune_mod  # noqa: E402
from fastdqn.runtime.tune import Pruning, parse_space, trial_score, tune  # noqa: E402

TINY = dict(env_id="CartPole-v1", total_timesteps=600, num_envs=4, learning_starts=100,
            batch_size=16, buffer_size=1_000, eval_every=300, eval_episodes=2, solve_episodes=2,
            hidden=(8,), vector="sync", progress=False, seeds="1-2")
SPACE = {"lr": {"low": 1e-4, "high": 1e-2, "log": True},
         "hidden": {"choices": [[8], [16, 16]]},
         "train_every": {"low": 1, "high": 4}}


def test_the_space_is_data_checked_setting_by_setting():
    params = {p.name: p for p in parse_space(SPACE, "space.toml")}
    assert params["hidden"].choices == ((8,), (16, 16))
    assert params["train_every"].low == 1 and isinstance(params["train_every"].high, int)
    assert params["lr"].log
    for bad, words in [
        ({"nonsense": {"low": 1, "high": 2}}, "is no setting"),
        ({"seed": {"low": 1, "high": 2}}, "cannot be searched"),
        ({"total_timesteps": {"low": 1, "high": 2}}, "cannot be searched"),
        ({"lr": {"low": 1e-2, "high": 1e-4}}, "needs low < high"),
        ({"lr": {"low": 0.0, "high": 1.0, "log": True}}, "log only above 0"),
        ({"lr": {"low": 1e-4, "high": 1.0, "import": "os"}}, "takes low, high, log, step or choices"),
        ({"hidden": {"low": 1, "high": 2}}, "needs low and high (a number setting) or choices"),
        ({"hidden": {"choices": [[0]]}}, "hidden"),
        ({"batch_size": {"choices": list(range(100))}}, "1 to 64 values"),
        ({"lr": {"low": "a", "high": 1.0}}, "lr"),
    ]:
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse_space(bad, "space.toml")


def test_a_space_file_holds_tune_tables_only(tmp_path):
    f = tmp_path / "space.toml"
    f.write_text("lr = 0.1\n[tune.gamma]\nlow = 0.9\nhigh = 0.99\n")
    assert main(["tune", "--space", str(f), "--run-dir", str(tmp_path / "r")]) == 2


def test_the_score_over_seeds():
    solved = {"solved": True, "steps_to_solve": 1000, "final_eval": {"mean": 500.0},
              "target_return": 475.0}
    close = {"solved": False, "steps_to_solve": None, "final_eval": {"mean": 380.0},
             "target_return": 475.0}
    far = {**close, "final_eval": {"mean": -50.0}}
    assert trial_score("steps", [solved, close], 5000) == (1000 + 5000 * 1.2) / 2
    assert trial_score("steps", [far], 5000) == 10_000  # no better than returning nothing
    assert trial_score("steps", [{**far, "target_return": None}], 5000) == 10_000
    assert trial_score("final", [solved, close], 5000) == 440.0


class FakeTrial:
    def __init__(self, prune_at: int | None = None) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune_at = prune_at

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.prune_at is not None and self.reports[-1][1] >= self.prune_at


def test_the_pruner_sees_each_trials_mean_over_its_seeds_once_per_evaluation():
    trials = {0: FakeTrial(), 1: FakeTrial(prune_at=200)}
    keys = {"t0 s1": 0, "t0 s2": 0, "t1 s1": 1, "t1 s2": 1}
    pruning = Pruning(trials, keys, sign=-1.0)
    assert pruning({"t0 s1": {"step": 100, "mean": 10.0}}) == set()  # seed 2 not yet
    assert trials[0].reports == []
    latest = {"t0 s1": {"step": 100, "mean": 10.0}, "t0 s2": {"step": 100, "mean": 30.0},
              "t1 s1": {"step": 100, "mean": 1.0}, "t1 s2": {"step": 100, "mean": 3.0}}
    assert pruning(latest) == set()
    assert pruning(latest) == set()  # the same evaluations are not reported twice
    assert trials[0].reports == [(-20.0, 100)] and trials[1].reports == [(-2.0, 100)]
    later = {k: {"step": 200, "mean": v["mean"]} for k, v in latest.items()}
    assert pruning(later) == {"t1 s1", "t1 s2"}
    assert 1 in pruning.pruned and 0 not in pruning.pruned


def test_a_study_resumes_from_its_sqlite_file_and_writes_a_preset(tmp_path):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    params = parse_space(SPACE, "space")
    base = make_config(run_dir=str(tmp_path / "runs"), **TINY)
    first = tune(base, params, trials=2, storage=storage, study="s", concurrent=2,
                 out=str(tmp_path / "best.toml"), sampler_seed=1, pruner="none")
    assert first.added == 2 and len(first.study.trials) == 2
    again = tune(base, params, trials=1, storage=storage, study="s",
                 out=str(tmp_path / "best.toml"), sampler_seed=2, pruner="none")
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert again.best["trial"] == study.best_trial.number
    for t in study.trials:  # each trial trained its own population, one dir per seed
        assert {p.name for p in (tmp_path / "runs" / f"trial-{t.number}").iterdir()} == {
            "seed-1", "seed-2"}
    preset = tomllib.loads((tmp_path / "best.toml").read_text())
    cfg = make_config(str(tmp_path / "best.toml"))
    assert cfg.lr == pytest.approx(study.best_trial.params["lr"])
    assert preset["hidden"] in ([8], [16, 16]) and "seeds" not in preset
    with pytest.raises(ConfigError, match="maximizes its objective|minimizes its objective"):
        tune(base, params, trials=1, storage=storage, study="s", objective="final")
    other = make_config(run_dir=str(tmp_path / "runs"), **{**TINY, "env_id": "Acrobot-v1"})
    with pytest.raises(ConfigError, match="tunes CartPole-v1, not Acrobot-v1; pass --env "
                                          "CartPole-v1 or another --study"):
        tune(other, params, trials=1, storage=storage, study="s")


def test_ctrl_c_keeps_completed_trials_and_fails_running_ones(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    params = parse_space(SPACE, "space")
    base = make_config(run_dir=str(tmp_path / "runs"), **TINY)
    tune(base, params, trials=1, storage=storage, study="s", sampler_seed=1)
    original = tune_mod.Pruning.__call__

    def interrupt(self, latest):
        signal.raise_signal(signal.SIGINT)  # during the second trial's first evaluation
        return original(self, latest)

    monkeypatch.setattr(tune_mod.Pruning, "__call__", interrupt)
    result = tune(base, params, trials=3, storage=storage, study="s", sampler_seed=2)
    assert result.signal == signal.SIGINT
    states = [t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == ["COMPLETE", "FAIL"]  # none left RUNNING, no new trial after the signal


def test_tune_on_the_command_line(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text("[tune.lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\n")
    flags = [f"--{k.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
             for k, v in TINY.items() if k not in ("progress",)]
    rc = main(["tune", "--trials", "2", "--space", str(space), "--run-dir", str(tmp_path / "r"),
               "--study", "cli", "--no-progress", *flags])
    assert rc == 0
    out = capsys.readouterr().out
    assert "best: trial" in out and (tmp_path / "r" / "best.toml").is_file()
    assert (tmp_path / "r" / "study.db").is_file()
    assert main(["tune", "--trials", "0", "--run-dir", str(tmp_path / "r")]) == 2
