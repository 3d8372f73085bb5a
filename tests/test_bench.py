"""bench/throughput.py in smoke mode: it runs and reports every figure (speed is not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_smoke_writes_positive_figures(tmp_path) -> None:
    out = tmp_path / "tp.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--smoke",
                        "--env", "CartPole-v1", "--num-envs", "4", "--device", "cpu",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    fig = json.loads(out.read_text())
    for key in ["env_only_sps", "train_sps", "train_to_env_ratio"]:
        assert fig[key] > 0, key
    stages = fig["stages_us_per_iter"]
    for stage in ["env_wait", "h2d", "act", "add", "sample", "learn", "target", "log"]:
        assert stages[stage] > 0, stage
    assert abs(sum(fig["stages_share"].values()) - 1.0) < 0.01
