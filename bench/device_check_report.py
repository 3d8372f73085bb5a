"""One row of bench/device_check.sh's table: a step's verdict and figures, read from what it wrote.

A step that exited 0 still fails where its own figures show that the CUDA route under test was
not the one measured (a fast route that fell back, a learner route that is not the CUDA graphs),
that no test ran, or that the training run did not solve. Standard library only: it runs on the
GPU machine's bare Python before anything is installed.

    python bench/device_check_report.py KIND STATUS LOG [FILE...]

KIND: tests (FILE: pytest's JUnit XML), learner_step (its --json), throughput (its --json, then
the CPU run's --json to compare against, if any), train (the run's summary.json). STATUS: what
the exit status said (PASS, FAIL, TIMEOUT, NOT RUN). Prints `RESULT<TAB>figures`.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

FALLBACK = "failed the self-check"
"""What every fast route's fallback warning says (fastdqn/core/selfcheck.py)."""


def why(log: Path) -> str:
    """The line that explains a step: a fallback warning if there is one, else the log's last."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"no log ({log.name})"
    hit = next((ln for ln in lines if FALLBACK in ln), lines[-1] if lines else "empty log")
    return hit[:200]


def fell_back(log: Path) -> bool:
    try:
        return FALLBACK in log.read_text(errors="replace")
    except OSError:
        return False


def tests(status: str, log: Path, xml: Path) -> tuple[str, str]:
    suite = next(ET.parse(xml).getroot().iter("testsuite"))
    cases = list(suite.iter("testcase"))
    bad = [c.get("name", "?") for c in cases
           if c.find("failure") is not None or c.find("error") is not None]
    skips = Counter((c.find("skipped").get("message") or "")[:60] for c in cases
                    if c.find("skipped") is not None)
    ran = len(cases) - len(bad) - sum(skips.values())
    text = f"{ran} passed, {len(bad)} failed, {sum(skips.values())} skipped"
    text += "".join(f" ({n}: {reason})" for reason, n in skips.items())
    if bad:
        text += f"; failed: {', '.join(bad[:4])}" + (" ..." if len(bad) > 4 else "")
    if status == "PASS" and (ran == 0 or bad):
        status = "FAIL"
    return status, text


def learner_step(status: str, log: Path, fig: Path) -> tuple[str, str]:
    us = json.loads(fig.read_text())["us_per_step"]
    text = ", ".join(f"{k} {v:.1f} us" for k, v in us.items()) + " per step"
    if "cuda-graphs" in us and "torch-ops" in us:
        text += f"; CUDA graphs {us['torch-ops'] / us['cuda-graphs']:.2f}x torch-ops"
    if status == "PASS" and ("cuda-graphs" not in us or fell_back(log)):
        status, text = "FAIL", f"{text}; {why(log)}"
    return status, text


def throughput(status: str, log: Path, fig: Path, cpu: Path | None = None) -> tuple[str, str]:
    d = json.loads(fig.read_text())
    route = d["learner_route"]
    text = (f"{d['train_sps']:,.0f} SPS training, {d['env_only_sps']:,.0f} env-only "
            f"({d['train_to_env_ratio']:.0%}), {d['config']['steps']:,} steps of "
            f"{d['config']['env']}; learner: {route}")
    cuda = d["device"].startswith("cuda")
    if status == "PASS" and cuda and (not route.startswith("cuda-graphs") or "fell back" in route
                                      or fell_back(log)):
        status = "FAIL"
    if cpu is not None and cpu.is_file():
        text += f"; {d['train_sps'] / json.loads(cpu.read_text())['train_sps']:.2f}x the CPU's"
    return status, text


def train(status: str, log: Path, summary: Path) -> tuple[str, str]:
    d = json.loads(summary.read_text())
    if d["solved"]:
        text = f"solved at step {d['steps_to_solve']:,} in {d['time_to_solve_s']:.1f} s"
    else:
        text = f"not solved: {d['total_env_steps']:,} steps in {d['wall_time_s']:.1f} s"
        if d.get("interrupted"):
            text += " (stopped by the timeout)"
    final = d.get("final_eval")
    text += (f", {d['sps']:,.0f} SPS; final eval "
             + (f"{final['mean']:.1f}" if final else "none")
             + f"; learner: {d['learner_route']}; fallbacks: {d['route_fallbacks'] or 'none'}")
    if status == "PASS" and (not d["solved"] or d["route_fallbacks"]):
        status = "FAIL"
    return status, text


def population(status: str, log: Path, summary: Path) -> tuple[str, str]:
    """A --seeds population on CUDA: every agent finished on the CUDA route, none diverged or
    fell back (each agent's summary.json says)."""
    d = json.loads(summary.read_text())
    agents = [json.loads((Path(a["run_dir"]) / "summary.json").read_text()) for a in d["agents"]]
    routes = sorted({a["learner_route"].split(" (")[0] for a in agents})
    fallbacks = [f for a in agents for f in a["route_fallbacks"]]
    bad = [a for a in agents if a["diverged"] or a["interrupted"]]
    text = (f"{len(agents)} agents, solved {d['solved']}, {d['sps']:,.0f} SPS together; "
            f"routes: {', '.join(routes)}; fallbacks: {fallbacks or 'none'}")
    if status == "PASS" and (bad or fallbacks or not d["finished"]):
        status = "FAIL"
    return status, text


KINDS = {"tests": tests, "learner_step": learner_step, "throughput": throughput, "train": train,
         "population": population}


def report(kind: str, status: str, log: Path, files: list[Path]) -> tuple[str, str]:
    """The row's result and figures; a step that did not pass shows why from its log (the
    training run its summary, written on the timeout's SIGINT too)."""
    if status != "PASS" and not (kind == "train" and files and files[0].is_file()):
        return status, why(log)
    try:
        return KINDS[kind](status, log, *files)
    except (OSError, ValueError, KeyError, TypeError, StopIteration, ET.ParseError) as e:
        return ("FAIL" if status == "PASS" else status,
                f"no figures ({type(e).__name__}: {e}); {why(log)}"[:300])


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in KINDS:
        print(f"usage: device_check_report.py {{{','.join(KINDS)}}} STATUS LOG [FILE...]",
              file=sys.stderr)
        return 2
    kind, status, log, *files = argv
    result, text = report(kind, status, Path(log), [Path(f) for f in files])
    print(f"{result}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
