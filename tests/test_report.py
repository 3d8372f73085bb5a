"""`fastdqn report`: the statistics against hand-computed values, the bootstrap's determinism and
degenerate cases, run dirs read as data (real ones written by training, synthetic ones in the
same format), the table, JSON and PNG, and every refusal as one line with exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scripted_envs import env_id

from fastdqn import train
from fastdqn.cli import main
from fastdqn.errors import ConfigError
from fastdqn.evaluation import report
from fastdqn.evaluation.report import (
    Unfinished,
    aggregate,
    common_grid,
    load_groups,
    load_run,
    make_report,
    mean_curve,
)

pytest.importorskip("rliable", reason='needs the report extra: pip install -e ".[report]"')

REPS = 200  # enough for the properties tested, quick on two cores


def summary(env: str = "CartPole-v1", evals: list[tuple[int, float]] = ((1000, 20.0),),
            solved_at: tuple[int, float] | None = None, target: float | None = 475.0,
            algo: str = "dqn", interrupted: bool = False) -> dict:
    """A summary.json as runtime/run.py's Run._finish writes it (test_the_synthetic_summary_has_
    the_writers_keys keeps the two in step): `evals` are (step, mean return); the last one is
    the run's final evaluation (a confirming one when it solved the run)."""
    entries = []
    for i, (step, mean) in enumerate(evals):
        last = i == len(evals) - 1
        kind = ("confirm" if solved_at else "final") if last else "screen"
        entry = {"step": step, "wall_time_s": 0.01 * step, "kind": kind, "mean": mean,
                 "std": 1.0, "min": mean - 1, "max": mean + 1, "episodes": 100 if last else 10,
                 "seeds": {"stream": "select", "first": 21474836480, "count": 100 if last else 10}}
        if last and not solved_at:
            entry["final"] = True
        entries.append(entry)
    steps = evals[-1][0] if evals else 0
    final = {k: entries[-1][k] for k in ("mean", "std", "min", "max", "episodes")} if evals else None
    return {
        "env_id": env, "algo": algo, "total_env_steps": steps, "wall_time_s": 0.01 * steps + 1,
        "sps": 100.0, "solved": solved_at is not None,
        "time_to_solve_s": solved_at[1] if solved_at else None,
        "steps_to_solve": solved_at[0] if solved_at else None,
        "final_eval": final, "best_eval": None, "target_return": target, "episodes": 10,
        "train_mean_return_100": 1.0, "interrupted": interrupted, "diverged": False,
        "stopped": None, "device": "cpu", "learner_steps": 10, "learner_route": "reference",
        "learner_beside_loop": {"blocks": 0, "why": "no native step: the learner steps in line"},
        "replay": {"kind": "rows"}, "route_fallbacks": [], "stage_us_per_iter": {},
        "evals": entries, "config": {"algo": algo, "env_id": env}, "version": "0.1.0",
    }


def write_run(path: Path, **kw) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary(**kw), indent=2))
    (path / "checkpoint.pt").write_bytes(b"")
    return path


def finals(tmp_path: Path, name: str, values: list[float], **kw) -> list[str]:
    """Run dirs tmp_path/name/sN whose final evaluations are `values`."""
    return [str(write_run(tmp_path / name / f"s{i}", evals=[(1000, 0.0), (2000, v)], **kw))
            for i, v in enumerate(values)]


# -- statistics ----------------------------------------------------------------------------------


def test_mean_median_and_iqm_match_hand_computed_values():
    s = aggregate([1.0, 2.0, 3.0, 4.0, 100.0], reps=REPS)
    # IQM: floor(5/4) = 1 value dropped from each end, mean of 2, 3, 4
    assert (s.n, s.mean, s.median, s.iqm) == (5, 22.0, 3.0, 3.0)
    s = aggregate([7.0, 0.0, 6.0, 1.0, 5.0, 2.0, 4.0, 3.0], reps=REPS)
    assert (s.mean, s.median, s.iqm) == (3.5, 3.5, 3.5)  # 2 dropped from each end: 2, 3, 4, 5
    s = aggregate([0.0, 0.0, 0.0, 10.0], reps=REPS)
    assert (s.mean, s.median, s.iqm) == (2.5, 0.0, 0.0)  # IQM: mean of the middle 0, 0
    s = aggregate([1.0, 2.0, 9.0], reps=REPS)  # fewer than 4 runs: the IQM is the mean
    assert (s.median, s.iqm) == (2.0, 4.0)


def test_each_ci_contains_its_estimate_and_is_the_same_for_the_same_seed():
    values = [3.0, 9.0, 4.0, 12.0, 5.0, 30.0, 7.0]
    a, b = aggregate(values, reps=REPS, seed=3), aggregate(values, reps=REPS, seed=3)
    assert a == b
    for k in report.STATISTICS:
        low, high = a.ci[k]
        assert low <= getattr(a, k) <= high and low < high
    assert aggregate(values, reps=REPS, seed=4).ci != a.ci  # the seed is what fixes it


def test_the_bootstrap_leaves_numpys_global_generator_as_it_was():
    np.random.seed(11)
    expected = np.random.rand(3)
    np.random.seed(11)
    aggregate([1.0, 5.0, 2.0], reps=REPS)
    assert np.array_equal(np.random.rand(3), expected)


def test_all_equal_scores_and_a_single_run_give_a_zero_width_ci():
    s = aggregate([4.5] * 6, reps=REPS)
    assert (s.mean, s.median, s.iqm) == (4.5, 4.5, 4.5)
    assert all(v == (4.5, 4.5) for v in s.ci.values())
    s = aggregate([8.0], reps=REPS)
    assert all(v == (8.0, 8.0) for v in s.ci.values())
    assert aggregate([], reps=REPS) is None


def test_the_ci_of_two_runs_is_their_range():
    """Resampling {0, 1} twice gives means 0, 1/2, 1 with probability 1/4, 1/2, 1/4: the 2.5%
    and 97.5% percentiles are 0 and 1 (the median of two draws is their mean)."""
    s = aggregate([0.0, 1.0], reps=2000)
    assert s.ci == {"mean": (0.0, 1.0), "median": (0.0, 1.0), "iqm": (0.0, 1.0)}


def test_the_mean_curve_interpolates_onto_the_runs_steps_and_holds_a_finished_run():
    a = load_from(evals=[(1000, 10.0), (2000, 20.0), (3000, 30.0)])
    b = load_from(evals=[(1000, 0.0), (2500, 30.0)])  # solved early: held at 30 after 2500
    assert common_grid([a.steps, b.steps]).tolist() == [1000, 2000, 2500, 3000]
    c = mean_curve([a, b], reps=REPS)
    assert c.values.tolist() == [[10, 20, 25, 30], [0, 20, 30, 30]]
    assert c.mean.tolist() == [5, 20, 27.5, 30]
    assert np.all(c.low <= c.mean) and np.all(c.mean <= c.high)
    assert (c.low[1], c.high[1]) == (20, 20)  # both runs at 20: no spread
    late = load_from(evals=[(2000, 5.0), (4000, 5.0)])  # no values before its first evaluation
    assert common_grid([a.steps, late.steps]).tolist() == [2000, 3000, 4000]
    many = [np.arange(1, 1001) * 10.0, np.arange(1, 501) * 20.0 + 5]
    assert len(common_grid(many, points=50)) == 50


def load_from(**kw):
    return report.RunRecord(
        run_dir="x", env_id="E", algo="dqn", total_env_steps=0, wall_time_s=0.0, solved=False,
        steps_to_solve=None, time_to_solve_s=None, target_return=None, final=None,
        steps=np.array([s for s, _ in kw["evals"]], dtype=float),
        returns=np.array([m for _, m in kw["evals"]], dtype=float))


# -- run dirs --------------------------------------------------------------------------------------


TINY_RUN = dict(env_id=env_id("FixedLength-v0"), vector="sync", num_envs=2, hidden=(8,),
                batch_size=8, buffer_size=64, learning_starts=8, eval_envs=1, progress=False,
                checkpoint_every=0, eval_every=8, eval_episodes=2, solve_episodes=3,
                total_timesteps=24)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory) -> list[Path]:
    """Three real training runs: two solve at their first evaluation (every FixedLength
    episode returns more than -10), one never does."""
    root = tmp_path_factory.mktemp("real")
    dirs = []
    for seed, target in ((1, -10.0), (2, -10.0), (3, 1e9)):
        train(**TINY_RUN, seed=seed, target_return=target, run_dir=str(root / f"s{seed}"))
        dirs.append(root / f"s{seed}")
    return dirs


def test_real_run_dirs_are_read_as_training_wrote_them(real_runs):
    runs = [load_run(d) for d in real_runs]
    for d, r in zip(real_runs, runs):
        s = json.loads((d / "summary.json").read_text())
        assert r.final["mean"] == s["evals"][-1]["mean"] == s["final_eval"]["mean"]
        assert r.steps.tolist() == [e["step"] for e in s["evals"]]
        assert (r.solved, r.steps_to_solve, r.time_to_solve_s) == (
            s["solved"], s["steps_to_solve"], s["time_to_solve_s"])
    assert [r.solved for r in runs] == [True, True, False]
    assert runs[0].final["kind"] == "confirm" and runs[2].final["kind"] == "final"
    groups, skipped = load_groups([("tiny", [str(d) for d in real_runs])])
    rep = make_report(groups, skipped, reps=REPS)
    (cell,) = rep.cells
    assert (cell.solved, cell.evaluated, cell.steps.n) == (2, 3, 2)
    assert cell.steps.mean == np.mean([r.steps_to_solve for r in runs[:2]])
    assert cell.final.mean == pytest.approx(np.mean([r.final["mean"] for r in runs]))


def test_the_synthetic_summary_has_the_writers_keys(real_runs):
    real = json.loads((real_runs[2] / "summary.json").read_text())
    mine = summary()
    assert set(mine) == set(real)
    assert set(mine["evals"][-1]) == set(real["evals"][-1])
    assert set(mine["final_eval"]) == set(real["final_eval"])


def test_the_final_evaluation_is_the_last_one_and_a_repeated_step_keeps_the_later(tmp_path):
    d = write_run(tmp_path / "r", evals=[(1000, 1.0), (2000, 2.0), (2000, 3.0)])
    r = load_run(d)
    assert r.final["mean"] == 3.0 and r.final["episodes"] == 100
    assert (r.steps.tolist(), r.returns.tolist()) == ([1000, 2000], [1.0, 3.0])
    assert load_run(d / "summary.json").run_dir == str(d)


def test_unfinished_runs_are_skipped_with_the_reason(tmp_path):
    running = tmp_path / "running"
    running.mkdir()
    (running / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(Unfinished, match="resume"):
        load_run(running)
    stopped = write_run(tmp_path / "stopped", interrupted=True)
    with pytest.raises(Unfinished, match="interrupted"):
        load_run(stopped)
    done = write_run(tmp_path / "done")
    groups, skipped = load_groups([("g", [str(done), str(running), str(stopped)])])
    assert [len(g.runs) for g in groups] == [1]
    assert [p for p, _ in skipped] == [str(running), str(stopped)]
    with pytest.raises(ConfigError, match="no finished run"):
        load_groups([("g", [str(running)])])


@pytest.mark.parametrize("content, problem", [
    ("{", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"env_id": "CartPole-v1"}', "lacks 'algo'"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
])
def test_a_damaged_summary_is_one_error_naming_the_dir(tmp_path, content, problem):
    d = tmp_path / "run"
    d.mkdir()
    (d / "summary.json").write_text(content)
    with pytest.raises(ConfigError, match=problem) as e:
        load_run(d)
    assert str(e.value).startswith(str(d))


@pytest.mark.parametrize("key, value", [
    ("total_env_steps", True), ("solved", 1), ("evals", {}), ("wall_time_s", float("nan")),
    ("steps_to_solve", -5), ("env_id", 3)])
def test_a_summary_with_a_wrong_type_is_refused(tmp_path, key, value):
    d = write_run(tmp_path / "run")
    data = json.loads((d / "summary.json").read_text())
    data[key] = value
    (d / "summary.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=key):
        load_run(d)


def test_an_evaluation_without_a_finite_mean_is_refused(tmp_path):
    d = write_run(tmp_path / "run")
    data = json.loads((d / "summary.json").read_text())
    data["evals"][0]["mean"] = "high"
    (d / "summary.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"evals\[0\]"):
        load_run(d)


def test_summary_json_is_read_with_a_byte_cap(tmp_path, monkeypatch):
    d = write_run(tmp_path / "run")
    monkeypatch.setattr(report, "MAX_SUMMARY_BYTES", 100)
    with pytest.raises(ConfigError, match="larger than"):
        load_run(d)


def test_runs_of_different_envs_are_never_pooled(tmp_path):
    dirs = finals(tmp_path, "c", [100.0, 200.0]) + finals(tmp_path, "l", [-50.0], env="LunarLander-v3")
    groups, _ = load_groups([("g", dirs)])
    rep = make_report(groups, reps=REPS)
    assert [(c.env_id, c.final.n, c.final.mean) for c in rep.cells] == [
        ("CartPole-v1", 2, 150.0), ("LunarLander-v3", 1, -50.0)]


def test_solve_statistics_cover_the_solved_runs_only(tmp_path):
    dirs = [str(write_run(tmp_path / f"s{i}", evals=[(1000, 1.0), (s, 480.0)],
                          solved_at=(s, t) if s else None))
            for i, (s, t) in enumerate([(3000, 30.0), (5000, 50.0), (0, 0.0)])]
    dirs[-1] = str(write_run(tmp_path / "unsolved", evals=[(1000, 1.0), (9000, 100.0)]))
    groups, _ = load_groups([("g", dirs)])
    (cell,) = make_report(groups, reps=REPS).cells
    assert (cell.solved, len(cell.runs)) == (2, 3)
    assert (cell.steps.n, cell.steps.mean, cell.seconds.mean) == (2, 4000.0, 40.0)
    assert cell.final.n == 3


# -- the command ----------------------------------------------------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["report", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_report_prints_both_groups_side_by_side_and_writes_json_and_png(tmp_path, capsys):
    a = finals(tmp_path, "rainbow", [400.0, 450.0, 500.0, 480.0, 300.0])
    b = finals(tmp_path, "default", [100.0, 200.0, 150.0])
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    code, out, err = run_cli(capsys, *a, "--vs", *b, "--json", str(out_json), "--png",
                             str(out_png), "--reps", str(REPS))
    assert code == 0, err
    names = [str(tmp_path / "rainbow"), str(tmp_path / "default")]
    lines = out.splitlines()
    head = lines.index("CartPole-v1: final return (each run's last greedy evaluation)")
    assert lines[head + 1].split()[:2] == ["group", "runs"] and "IQM" in lines[head + 1]
    expected = aggregate([400.0, 450.0, 500.0, 480.0, 300.0], reps=REPS)
    assert lines[head + 2].split()[:4] == [names[0], "5", f"{expected.mean:.1f}",
                                           f"[{expected.ci['mean'][0]:.1f},"]
    assert lines[head + 3].startswith(names[1])
    assert "0/5     none solved" in out
    data = json.loads(out_json.read_text())
    assert [g["name"] for g in data["groups"]] == names
    cell = data["aggregates"][0]
    assert cell["final_return"]["iqm"] == expected.iqm
    assert cell["final_return"]["ci"]["iqm"] == list(expected.ci["iqm"])
    assert cell["steps_to_solve"] is None and cell["solved"] == 0
    assert cell["curve"]["steps"] == [1000.0, 2000.0]
    assert cell["curve"]["mean"] == [0.0, expected.mean]
    assert len(data["runs"]) == 8 and data["method"]["reps"] == REPS
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, again, _ = run_cli(capsys, *a, "--vs", *b, "--reps", str(REPS))
    assert again.splitlines()[:len(lines) - 2] == lines[:-2]  # same runs, same numbers


def test_named_groups_from_globs(tmp_path, capsys, monkeypatch):
    finals(tmp_path, "x", [1.0, 2.0])
    finals(tmp_path, "y", [3.0])
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "--group", "first=x/*", "--group", "second=y/s*",
                             "--reps", str(REPS))
    assert code == 0, err
    assert any(line.startswith("first   2     1.5 [") for line in out.splitlines())
    assert any(line.startswith("second  1     3.0 [3.0, 3.0]") for line in out.splitlines())


def test_an_unfinished_run_is_a_note_on_stderr(tmp_path, capsys):
    done = finals(tmp_path, "g", [1.0])
    running = tmp_path / "g" / "running"
    running.mkdir()
    (running / "checkpoint.pt").write_bytes(b"")
    code, out, err = run_cli(capsys, *done, str(running), "--reps", str(REPS))
    assert code == 0
    assert err.startswith(f"note: skipped {running}: no summary.json yet")


def bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    ok = finals(tmp_path, "ok", [1.0])[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text('{"env_id": ')
    return [
        ([str(tmp_path / "missing")], f"{tmp_path / 'missing'}: no such run dir"),
        ([str(empty)], f"{empty} is not a fastdqn run dir"),
        ([str(broken)], f"{broken}: summary.json is not valid JSON"),
        ([ok, "--reps", "10"], "--reps 10: give 100 to 50,000"),
        ([ok, "--reps", "many"], "--reps many: not a whole number"),
        ([ok, "--seed", "-1"], "--seed -1: give a seed from 0"),
        ([ok, "--json", str(tmp_path / "r.txt")], "--json"),
        ([ok, "--png", str(tmp_path / "nowhere" / "r.png")], "does not exist"),
        (["--vs", ok], "--vs compares with the run dirs given first"),
        ([], "needs run dirs"),
        (["--group", "nameless"], "--group NAME=GLOB"),
        (["--group", f"g={tmp_path}/none*"], "matches nothing"),
        ([ok, "--vs", ok], "is in both group"),
    ]


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    for args, message in bad_inputs(tmp_path):
        code, out, err = run_cli(capsys, *args)
        assert code == 2, (args, out, err)
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, (args, err)
        assert out == ""


def test_without_rliable_it_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    ok = finals(tmp_path, "ok", [1.0])
    monkeypatch.setitem(sys.modules, "rliable", None)  # an import of it now fails
    code, out, err = run_cli(capsys, *ok)
    assert code == 2 and out == ""
    assert err == 'error: fastdqn report needs the rliable package: pip install "fastdqn[report]"\n'
