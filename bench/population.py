"""Many seeds in one process against one process per seed, measured side by side.

    python bench/population.py --seeds 8 --rounds 2 --json pop.json   # LunarLander, defaults
    python bench/population.py --steps-only --agents 1,4,16,64         # the learner step alone
    python bench/population.py --smoke                                 # CartPole, tiny (CI)

Whole runs: `fastdqn train --seeds 1-N` (one process) against N `fastdqn train --seed K`
processes started two at a time (the best a user does on 2 cores), each timed as a whole from
launch to exit; the two alternate within each round, so a machine's drift hits both. Beside
them, the 2-core bound of the population: its agents' env steps times the env's and the
learner's core-time per env step (each measured here, alone, on one core), over 2 cores.

The learner step: N agents' native steps as one call (`native.steps_many`, on 1 thread and on
one per core) against N separate `NativeStep.steps` calls; N separate reference-route steps
against one vmapped gradient for all of them a step (`learners.stacked`); in microseconds per
agent step.

Arguments after `--` go to every `fastdqn train` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--env", "CartPole-v1", "--num-envs", "4", "--total-timesteps", "2000",
         "--learning-starts", "500", "--eval-every", "1000", "--eval-episodes", "3",
         "--solve-episodes", "5", "--eval-envs", "4", "--no-progress"]


def fastdqn(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastdqn", "train", *args]


def timed(commands: list[list[str]], parallel: int) -> float:
    """Wall seconds to run `commands`, at most `parallel` at once, each to a clean exit."""
    start, queue, running = time.perf_counter(), list(commands), []
    while queue or running:
        while queue and len(running) < parallel:
            running.append(subprocess.Popen(queue.pop(0), stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE))
        done = running.pop(0)
        _, err = done.communicate()
        if done.returncode != 0:
            raise SystemExit(f"a run failed ({done.returncode}): {err.decode()[-400:]}")
    return time.perf_counter() - start


def whole_runs(seeds: int, extra: list[str], folder: Path, rounds: int) -> dict:
    """Population and separate processes, alternating, `rounds` times each."""
    out: dict = {"population_s": [], "separate_s": [], "population": None, "separate": []}
    for r in range(rounds):
        order = ["population", "separate"] if r % 2 == 0 else ["separate", "population"]
        for kind in order:
            d = folder / f"r{r}-{kind}"
            if kind == "population":
                t = timed([fastdqn("--seeds", f"1-{seeds}", "--run-dir", str(d), *extra)], 1)
                out["population_s"].append(round(t, 2))
                out["population"] = json.loads((d / "population.json").read_text())
            else:
                cmds = [fastdqn("--seed", str(k), "--run-dir", str(d / f"seed-{k}"), *extra)
                        for k in range(1, seeds + 1)]
                t = timed(cmds, 2)
                out["separate_s"].append(round(t, 2))
                out["separate"] = [json.loads((d / f"seed-{k}" / "summary.json").read_text())
                                   for k in range(1, seeds + 1)]
    pop, sep = statistics.median(out["population_s"]), statistics.median(out["separate_s"])
    out["ratio"] = round(pop / sep, 3)
    return out


def env_us_per_step(env_id: str, num_envs: int, steps: int = 3000) -> float:
    """Core-time of one env step: a sync vector env of `num_envs` stepped with random actions
    in this process (one core)."""
    from fastdqn.envs.backends import make_vector_env

    envs = make_vector_env(env_id, num_envs, "sync")
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    n = envs.single_action_space.n
    t = time.perf_counter()
    for _ in range(steps // num_envs):
        envs.step(rng.integers(n, size=num_envs))
    us = (time.perf_counter() - t) / (steps // num_envs * num_envs) * 1e6
    envs.close()
    return us


def learner_fixture(obs: int, actions: int, hidden: tuple[int, ...], batch: int, rows: int):
    """A native-route learner and a filled buffer of the run's shapes."""
    from fastdqn.learners.flat import Learner
    from fastdqn.nets.mlp import MLP
    from fastdqn.replay.rows import ReplayBuffer

    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(rows, (obs,), torch.float32)
    buf.add(torch.randn(rows, obs, generator=g), torch.randint(actions, (rows,), generator=g),
            torch.randn(rows, generator=g), torch.randn(rows, obs, generator=g),
            (torch.rand(rows, generator=g) < 0.05).float(), torch.full((rows,), 0.99))
    net = MLP(obs, actions, hidden)
    lr = Learner(net, init=net.init(g), lr=6.3e-4, gamma=0.99, tau=0.005,
                 target_update_interval=1, adam_eps=1e-8)
    return lr, buf


def step_times(agents: list[int], obs: int = 8, actions: int = 4, hidden=(128, 128),
               batch: int = 128, k: int = 4, repeats: int = 20) -> list[dict]:
    """Microseconds per agent step: one native call for N agents (1 thread, one per core),
    N separate native calls, N separate reference-route steps."""
    torch.set_num_threads(1)
    from fastdqn.envs.workers import usable_cores

    cores = usable_cores()
    return [one_size(n, cores, obs, actions, hidden, batch, k, repeats) for n in agents]


def one_size(n: int, cores: int, obs: int, actions: int, hidden: tuple[int, ...], batch: int,
             k: int, repeats: int) -> dict:
    from fastdqn.learners import native
    from fastdqn.learners.reference import ReferenceLearner
    from fastdqn.learners.stacked import stacked_steps

    fixtures = [learner_fixture(obs, actions, hidden, batch, 2000) for _ in range(n)]
    steps = [lr.cpu_step(buf, batch) for lr, buf in fixtures]
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 2000, (k, batch)) for _ in range(n)]
    reps = max(2, repeats * 4 // max(n, 4))

    def clock(fn) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps / (n * k) * 1e6

    row = {"agents": n,
           "native_one_call_1_thread_us": clock(lambda: native.steps_many(steps, blocks, 1)),
           f"native_one_call_{cores}_threads_us": clock(
               lambda: native.steps_many(steps, blocks, cores)),
           "native_separate_us": clock(lambda: [s.steps(b) for s, b in zip(steps, blocks)])}
    refs = [ReferenceLearner(lr.net.to_module(lr.params), lr=6.3e-4, gamma=0.99, tau=0.005,
                             target_update_interval=1, adam_eps=1e-8)
            for lr, _ in fixtures[:min(n, 8)]]  # timed on up to 8: it is per agent

    def reference() -> None:
        for ref, (_, buf), idx in zip(refs, fixtures, blocks):
            for r in idx:
                ref.step(buf.gather(torch.from_numpy(r)))

    reference()
    t = time.perf_counter()
    reference()
    row["reference_separate_us"] = (time.perf_counter() - t) / (len(refs) * k) * 1e6
    every = [ReferenceLearner(lr.net.to_module(lr.params), lr=6.3e-4, gamma=0.99, tau=0.005,
                              target_update_interval=1, adam_eps=1e-8) for lr, _ in fixtures]
    stacks: dict = {}

    def stacked() -> None:
        stacked_steps(every, lambda i, j: fixtures[i][1].gather(torch.from_numpy(blocks[i][j])),
                      [k] * n, stacks)

    stacked()
    t = time.perf_counter()
    stacked()
    row["reference_one_vmap_us"] = (time.perf_counter() - t) / (n * k) * 1e6
    return {key: round(v, 1) if isinstance(v, float) else v for key, v in row.items()}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (
        argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--agents", default="1,4,16,64", help="learner-step bench agent counts")
    p.add_argument("--steps-only", action="store_true", help="only the learner-step bench")
    p.add_argument("--runs-only", action="store_true", help="only the whole runs")
    p.add_argument("--json", default=None)
    p.add_argument("--runs-dir", default=None, help="keep the runs here (default: temporary)")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(own)
    if args.smoke:
        args.seeds, extra, args.agents = 2, SMOKE + extra, "1,2"
    result: dict = {"machine": os.uname().machine, "cpus": os.cpu_count(),
                    "torch": torch.__version__, "train_args": extra}
    if not args.runs_only:
        result["learner_step"] = step_times([int(a) for a in args.agents.split(",")],
                                            repeats=2 if args.smoke else 20)
        for row in result["learner_step"]:
            print("learner step, us per agent step:", row)
    if not args.steps_only:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(args.runs_dir or tmp)
            runs = whole_runs(args.seeds, extra, folder, args.rounds)
        pop = runs["population"]
        env_id = pop["env_id"]
        num_envs = int(pop["config"]["num_envs"])
        env_us = env_us_per_step(env_id, num_envs)
        cfg = pop["config"]
        import gymnasium as gym

        probe = gym.make(env_id)
        obs, actions = int(np.prod(probe.observation_space.shape)), int(probe.action_space.n)
        probe.close()
        lr, buf = learner_fixture(obs, actions, tuple(cfg["hidden"]), int(cfg["batch_size"]),
                                  2000)
        step = lr.cpu_step(buf, int(cfg["batch_size"]))
        idx = np.random.default_rng(0).integers(0, 2000, (4, int(cfg["batch_size"])))
        step.steps(idx)
        t = time.perf_counter()
        for _ in range(50):
            step.steps(idx)
        learn_us = (time.perf_counter() - t) / 200 * 1e6
        per_env_step = env_us + learn_us * cfg["gradient_steps"] / cfg["train_every"]
        steps = sum(a.get("total_env_steps") or 0 for a in pop["agents"])
        bound = steps * per_env_step / 1e6 / 2
        runs["two_core_bound"] = {"env_us_per_step": round(env_us, 2),
                                  "learner_us_per_step": round(learn_us, 1),
                                  "agent_env_steps": steps, "bound_s": round(bound, 2),
                                  "population_loop_s": pop["wall_time_s"],
                                  "population_to_bound": round(pop["wall_time_s"] / bound, 2)}
        runs["population"] = {k: pop[k] for k in ("solved", "wall_time_s", "sps",
                                                  "stage_us_per_iter", "statistics")}
        runs["separate"] = [{k: s[k] for k in ("solved", "steps_to_solve", "wall_time_s",
                                               "total_env_steps")} for s in runs["separate"]]
        result["whole_runs"] = runs
        print(f"{args.seeds} seeds, whole processes: population {runs['population_s']} s, "
              f"separate (2 at a time) {runs['separate_s']} s, ratio {runs['ratio']}")
        print(f"2-core bound: {runs['two_core_bound']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
