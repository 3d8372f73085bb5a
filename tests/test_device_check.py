"""bench/device_check.sh, as far as it goes without a GPU: with no CUDA device it runs nothing,
says so on every row and exits 2; each row's verdict (bench/device_check_report.py) fails a
step that exited 0 but measured a fallback, ran no test or did not solve; `pytest -m cuda`
selects exactly the tests that are skipped without CUDA."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("device_check_report",
                                              ROOT / "bench" / "device_check_report.py")
report_module = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(report_module)
report = report_module.report


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs for real")
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_without_cuda_nothing_runs_every_row_says_why_and_it_exits_2(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE_CHECK_OUT": str(tmp_path)}
    r = subprocess.run(["bash", str(ROOT / "bench" / "device_check.sh")], capture_output=True,
                       text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    rows = [ln for ln in r.stdout.splitlines() if ln.count(" | ") == 2][1:]
    assert [ln.split(" | ")[0].strip() for ln in rows] == [
        "install (gymnasium, Box2D, pytest)", "CUDA tests (pytest -m cuda)",
        "learner_step.py --device cuda", "throughput.py --device cuda",
        "throughput.py --device cpu", "LunarLander-v3 to solved, --device cuda",
        "--seeds 1-4 population, --device cuda"]
    for ln in rows:
        assert ln.split(" | ")[1:] == ["NOT RUN ", "no CUDA device: nothing was run"], ln
    assert "torch.cuda.is_available() is False" in r.stdout
    assert (tmp_path / "device_check.txt").read_text().strip() in r.stdout
    assert not (tmp_path / "install.log").exists()  # nothing installed either


def write(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def junit(cases: str) -> str:
    return f'<testsuites><testsuite name="pytest">{cases}</testsuite></testsuites>'


PASSED = '<testcase name="test_a[cuda:0]"/><testcase name="test_b"/>'
SKIPPED = '<testcase name="test_a[cuda:1]"><skipped message="needs two CUDA devices"/></testcase>'
FAILED = '<testcase name="test_c"><failure message="boom"/></testcase>'

TESTS = {
    "ran and skipped": (PASSED + SKIPPED, "PASS",
                        "2 passed, 0 failed, 1 skipped (1: needs two CUDA devices)"),
    "a failure": (PASSED + FAILED, "FAIL", "2 passed, 1 failed, 0 skipped; failed: test_c"),
    "nothing ran": (SKIPPED, "FAIL", "0 passed, 0 failed, 1 skipped"),
}


@pytest.mark.parametrize("case", list(TESTS))
def test_the_tests_row_counts_what_ran(case, tmp_path):
    cases, result, text = TESTS[case]
    xml = write(tmp_path / "t.xml", junit(cases))
    got = report("tests", "PASS", tmp_path / "t.log", [xml])
    assert got[0] == result and got[1].startswith(text), got


LEARNER = {"device": "cuda", "us_per_step": {"torch-ops": 400.0, "cuda-graphs": 100.0}}
FALLBACK_LINE = ("UserWarning: fastdqn: learner CUDA graphs failed the self-check (raised "
                 "RuntimeError: x); using eager torch ops")


def test_a_learner_step_that_fell_back_fails(tmp_path):
    fig = write(tmp_path / "l.json", LEARNER)
    log = write(tmp_path / "l.log", "ok\n")
    assert report("learner_step", "PASS", log, [fig]) == (
        "PASS", "torch-ops 400.0 us, cuda-graphs 100.0 us per step; CUDA graphs 4.00x torch-ops")
    write(log, f"{FALLBACK_LINE}\n  torch-ops 400.0 us\n")
    result, text = report("learner_step", "PASS", log, [fig])
    assert result == "FAIL" and text.endswith(FALLBACK_LINE)


def throughput_fig(device: str, route: str, sps: float) -> dict:
    return {"device": device, "train_sps": sps, "env_only_sps": 4 * sps,
            "train_to_env_ratio": 0.25, "learner_route": route,
            "config": {"steps": 20000, "env": "LunarLander-v3"}}


@pytest.mark.parametrize("route, result", [
    ("cuda-graphs (Adam: fused)", "PASS"),
    ("torch-ops (Adam: fused; cuda-graphs fell back: raised RuntimeError: x)", "FAIL"),
    ("torch-ops (Adam: fused)", "FAIL"),
])
def test_cuda_throughput_passes_only_on_the_cuda_graphs(route, result, tmp_path):
    cuda = write(tmp_path / "cuda.json", throughput_fig("cuda", route, 30000.0))
    cpu = write(tmp_path / "cpu.json", throughput_fig("cpu", "cpu-fused (native step)", 20000.0))
    log = write(tmp_path / "t.log", "")
    got = report("throughput", "PASS", log, [cuda, cpu])
    assert got == (result, "30,000 SPS training, 120,000 env-only (25%), 20,000 steps of "
                   f"LunarLander-v3; learner: {route}; 1.50x the CPU's")
    assert report("throughput", "PASS", log, [cpu])[0] == "PASS"  # the CPU's own route is fine


def summary(**kw) -> dict:
    base = {"solved": True, "steps_to_solve": 150000, "time_to_solve_s": 61.25,
            "total_env_steps": 150000, "wall_time_s": 63.0, "interrupted": False,
            "sps": 2400.0, "final_eval": {"mean": 231.4}, "learner_route": "cuda-graphs",
            "route_fallbacks": []}
    return {**base, **kw}


TRAIN = {
    "solved": ("PASS", summary(), "PASS", "solved at step 150,000 in 61.2 s, 2,400 SPS; final "
               "eval 231.4; learner: cuda-graphs; fallbacks: none"),
    "not solved": ("PASS", summary(solved=False, steps_to_solve=None, time_to_solve_s=None),
                   "FAIL", "not solved: 150,000 steps in 63.0 s, 2,400 SPS"),
    "a fallback": ("PASS", summary(route_fallbacks=["acting cuda-graph: raised X"]), "FAIL",
                   "solved at step 150,000"),
    "stopped by the timeout": ("TIMEOUT", summary(solved=False, interrupted=True,
                                                  final_eval=None),
                               "TIMEOUT", "not solved: 150,000 steps in 63.0 s (stopped by the "
                               "timeout), 2,400 SPS; final eval none"),
}


@pytest.mark.parametrize("case", list(TRAIN))
def test_the_training_row_passes_only_a_solved_run_on_the_cuda_routes(case, tmp_path):
    status, content, result, text = TRAIN[case]
    got = report("train", status, tmp_path / "train.log", [write(tmp_path / "s.json", content)])
    assert got[0] == result and got[1].startswith(text), got


def test_a_step_that_did_not_pass_shows_its_log_and_missing_figures_fail(tmp_path):
    log = write(tmp_path / "x.log", "+ cmd\nTraceback ...\nRuntimeError: CUDA out of memory\n")
    missing = tmp_path / "missing.json"
    assert report("learner_step", "FAIL", log, [missing]) == (
        "FAIL", "RuntimeError: CUDA out of memory")
    assert report("train", "TIMEOUT", log, [missing]) == (
        "TIMEOUT", "RuntimeError: CUDA out of memory")
    result, text = report("throughput", "PASS", log, [missing])
    assert result == "FAIL" and text.startswith("no figures (FileNotFoundError")


def test_pytest_m_cuda_selects_exactly_the_tests_skipped_without_cuda():
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda",
                        "-p", "no:cacheprovider", "tests/test_graphed_update.py"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    ids = {ln.split("::")[1].split("[")[0] for ln in r.stdout.splitlines() if "::" in ln}
    assert ids == {"test_graphs_replay_the_reference_trajectory_on_cuda",
                   "test_a_module_that_cannot_be_captured_falls_back_to_the_eager_step",
                   "test_a_failed_capture_on_cuda_falls_back_and_leaves_the_learner_usable",
                   "test_a_cnn_run_on_cuda_trains_under_graphs"}
