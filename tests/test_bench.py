"""bench/ scripts in smoke mode: they run and report every figure (speed is not asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from statistics import median

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_smoke_writes_positive_figures(tmp_path) -> None:
    out = tmp_path / "tp.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--smoke",
                        "--env", "CartPole-v1", "--num-envs", "4", "--device", "cpu",
                        "--vs-pqn", "--json", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    fig = json.loads(out.read_text())
    for key in ["env_only_sps", "train_sps", "train_to_env_ratio", "pqn_sps", "pqn_to_dqn_ratio"]:
        assert fig[key] > 0, key
    stages = fig["stages_us_per_iter"]
    for stage in ["env_wait", "h2d", "act", "add", "sample", "learn", "log"]:
        assert stages[stage] > 0, stage
    assert abs(sum(fig["stages_share"].values()) - 1.0) < 0.01
    assert fig["learner_route"].startswith("cpu-fused")
    # The native step updates the target inside its one call per block; the Numba one laps it.
    assert (stages["target"] == 0) == ("native step" in fig["learner_route"])


@pytest.mark.skipif(importlib.util.find_spec("envpool") is None,
                    reason='envpool is not installed: pip install -e ".[envpool]"')
def test_throughput_compares_vector_envs_in_one_run(tmp_path) -> None:
    out = tmp_path / "tp.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--smoke",
                        "--env", "CartPole-v1", "--num-envs", "4", "--device", "cpu",
                        "--vector", "sync,envpool", "--rounds", "2", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    fig = json.loads(out.read_text())["by_vector"]
    assert set(fig) == {"sync", "envpool"}
    for v in fig.values():
        assert len(v["rounds"]) == 2
        assert v["env_only_sps"] == pytest.approx(median(x["env_only_sps"] for x in v["rounds"]))
        assert v["train_sps"] > 0 and v["rounds"][0]["stages_us_per_iter"]["env_wait"] > 0
    assert "--vector envpool (median of 2)" in r.stdout


PEER_MODULES = ("stable_baselines3", "tianshou", "torchrl")


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in PEER_MODULES),
                    reason='a peer library is not installed: pip install -e ".[bench]"')
def test_throughput_times_every_peer_in_one_run(tmp_path) -> None:
    out = tmp_path / "tp.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--smoke",
                        "--env", "CartPole-v1", "--num-envs", "4", "--device", "cpu",
                        "--vs", "sb3,tianshou,torchrl", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    fig = json.loads(out.read_text())
    for peer in ("sb3", "tianshou", "torchrl"):
        assert fig[f"{peer}_sps"] > 0, peer
        assert fig[f"speedup_vs_{peer}"] > 0, peer


def test_throughput_refuses_an_unknown_peer() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--vs", "sb3,rllib"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown: rllib" in r.stderr


def test_time_to_solve_smoke_reports_every_field(tmp_path) -> None:
    out = tmp_path / "tts.json"
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "time_to_solve.py"), "--smoke",
                        "--json", str(out), "--runs-dir", str(runs), "--", "--vector", "sync"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    for key in ["solve_rate", "median_time_to_solve_s", "median_steps_to_solve",
                "max_steps_to_solve", "failed_seeds", "train_args"]:
        assert key in res, key
    assert res["failed_seeds"] == []
    assert res["train_args"][-2:] == ["--vector", "sync"]  # args after -- reach fastdqn train
    assert [s["seed"] for s in res["seeds"]] == [1, 2]
    for s in res["seeds"]:
        assert s["env_id"] == "CartPole-v1" and s["total_env_steps"] <= 3000
        assert s["wall_time_s"] > 0 and isinstance(s["final_eval_mean"], float)
        assert s["solved"] == (s["steps_to_solve"] is not None) == (s["time_to_solve_s"] is not None)
        summary = json.loads((runs / f"seed_{s['seed']}" / "summary.json").read_text())
        assert summary["config"]["seed"] == s["seed"] and summary["config"]["vector"] == "sync"
    solved = sorted(s["steps_to_solve"] for s in res["seeds"] if s["solved"])
    assert res["solve_rate"] == len(solved) / 2
    assert res["max_steps_to_solve"] == (solved[-1] if len(solved) == 2 else None)
    table = r.stdout.splitlines()
    assert table[0].split() == ["seed", "solved", "steps_to_solve", "time_to_solve_s", "wall_time_s",
                                "command_s", "final", "eval", "mean"]
    assert table[-5].startswith("solve rate") and table[-3].startswith("median command")
    for s in res["seeds"]:  # the command holds the run, whose clock starts with the process
        assert s["command_s"] >= s["wall_time_s"] > 0


def test_time_to_solve_against_another_checkout_alternates_and_gives_ratios(tmp_path) -> None:
    out = tmp_path / "tts.json"
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "time_to_solve.py"), "--smoke",
                        "--seeds", "1", "--against", str(ROOT), "--json", str(out),
                        "--runs-dir", str(runs), "--", "--vector", "sync"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert [ln.split(" seed")[0] for ln in r.stderr.splitlines()] == ["against", "this"]
    assert (runs / "against" / "seed_1" / "summary.json").is_file()
    assert (runs / "this" / "seed_1" / "summary.json").is_file()
    assert res["against"]["dir"] == str(ROOT) and res["against"]["seeds"][0]["seed"] == 1
    assert res["ratio_command"] == round(res["median_command_s"]
                                         / res["against"]["median_command_s"], 3)
    assert r.stdout.splitlines()[-1].startswith("ratio (this / against): time to solve ")


def test_time_to_solve_refuses_flags_it_sets_itself() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "time_to_solve.py"), "--", "--seed", "3"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--seed after -- would override" in r.stderr and "--seed-base" in r.stderr


def test_learner_step_smoke_times_every_cpu_route(tmp_path) -> None:
    out = tmp_path / "ls.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "learner_step.py"), "--steps", "40",
                        "--buffer-size", "2000", "--hidden", "16,16", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    us = json.loads(out.read_text())["us_per_step"]
    assert set(us) == {"torch-ops", "cpu-fused", "cpu-fused+per", "cpu-native", "cpu-native+per",
                       "reference"}
    assert all(v > 0 for v in us.values())


def test_population_smoke_reports_both_sides_and_the_bound(tmp_path) -> None:
    out = tmp_path / "pop.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "population.py"), "--smoke",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    fig = json.loads(out.read_text())
    runs = fig["whole_runs"]
    assert len(runs["population_s"]) == len(runs["separate_s"]) == 1 and runs["ratio"] > 0
    assert len(runs["separate"]) == 2 and runs["population"]["solved"].endswith("/2")
    bound = runs["two_core_bound"]
    assert bound["agent_env_steps"] == 2 * 2000 and bound["bound_s"] > 0
    assert [row["agents"] for row in fig["learner_step"]] == [1, 2]
    for row in fig["learner_step"]:
        assert row["native_one_call_1_thread_us"] > 0 and row["native_separate_us"] > 0
        assert row["reference_separate_us"] > 0 and row["reference_one_vmap_us"] > 0


def test_notebooks_smoke_runs_every_row_for_its_episode_budget(tmp_path) -> None:
    out = tmp_path / "nb.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "notebooks.py"), "--smoke",
                        "--json", str(out), "--runs-dir", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [row["preset"] for row in rows] == ["lunarlander-notebook", "udacity-lunarlander",
                                              "reinforce-notebook", "rbf-lunarlander", ""]
    for row in rows:
        assert "error" not in row, row
        # one env stops exactly at the budget (3 episodes in smoke mode); 16 envs within the
        # vector step that ends the third
        single = row["preset"] in ("reinforce-notebook", "rbf-lunarlander")
        assert row["episodes_run"] == 3 if single else row["episodes_run"] >= 3, row
        assert isinstance(row["train_mean_return_100"], float)
        assert row["final_eval_mean"] is not None and row["wall_time_s"] > 0
        assert row["command"].startswith("fastdqn train ")
    assert "| REINFORCE, linear softmax policy | `reinforce-notebook` | 3 |" in r.stdout
    assert "20-25 min on Colab" in r.stdout


def test_notebooks_refuses_an_unknown_row() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "notebooks.py"), "--only", "nope"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown row nope" in r.stderr


def test_same_behaviour_refuses_an_unknown_case_or_commit(tmp_path) -> None:
    script = str(ROOT / "bench" / "same_behaviour.py")
    r = subprocess.run([sys.executable, script, "HEAD", "HEAD", "--only", "pqn", "nope"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown case nope" in r.stderr
    r = subprocess.run([sys.executable, script, "HEAD", "no-such-rev", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a commit: no-such-rev" in r.stderr


def test_replay_memory_smoke_measures_both_replays(tmp_path) -> None:
    out = tmp_path / "mem.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "replay_memory.py"), "--capacity",
                        "2000", "--naive", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    frames, rows = json.loads(out.read_text())
    assert (frames["replay"], rows["replay"]) == ("frames", "rows")
    assert frames["store_grew"] == 0 and 2000 <= frames["live_frames"] <= frames["frame_slots"]
    for fig in (frames, rows):
        for key in ["replay_rss_gib", "add_us_per_vector_step", "gather_us_batch_32"]:
            assert fig[key] > 0, key
    assert frames["tensor_gib"] < frames["row_buffer_tensor_gib"] / 4


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason='ray is not installed: pip install -e ".[ray]"')
def test_apex_bench_reports_throughput_ceiling_and_arithmetic(tmp_path) -> None:
    out = tmp_path / "apex.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "apex.py"), "--actors", "1,2",
                        "--seconds", "1", "--ingest-blocks", "10", "--nodes", "2",
                        "--json", str(out), "--", "--env", "CartPole-v1", "--num-envs", "2",
                        "--learning-starts", "64", "--batch-size", "16"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    fig = json.loads(out.read_text())
    assert [t["actors"] for t in fig["throughput"]] == [1, 2]
    assert all(s > 0 for t in fig["throughput"] for s in t["per_actor_sps"])
    assert len(fig["throughput"][1]["per_actor_sps"]) == 2
    ingest = fig["ingest"]
    assert ingest["rows_per_s"] > 0 and ingest["batch_size"] == 16
    assert ingest["learner_steps_per_s"] > 0
    per_actor = fig["throughput"][0]["per_actor_sps"][0]
    assert f"= {ingest['rows_per_s'] / per_actor:.2f} actors" in fig["arithmetic"][0]
    assert fig["arithmetic"][1].startswith("2 nodes x 16 cores: 31 actor cores")


def test_roofline_smoke_reports_both_cpu_steps(tmp_path) -> None:
    out = tmp_path / "roof.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "roofline.py"), "--min-time", "0.01",
                        "--hidden", "16,16", "--json", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    fig = json.loads(out.read_text())
    assert fig["gemm_calls_per_step"] == 11 and fig["flops_per_step"] == 2 * (
        256 * 8 * 16 + 256 * 16 * 16 + 256 * 16 * 4 + 128 * 8 * 16 + 128 * 16 * 16 + 128 * 16 * 4
        + 4 * 128 * 16 + 128 * 4 * 16 + 16 * 128 * 16 + 128 * 16 * 16 + 16 * 128 * 8)
    for key in ["fused_step_us", "numba_step_us", "sps_ceiling_peak", "peak_rate_us_per_step"]:
        assert fig[key] > 0, key
