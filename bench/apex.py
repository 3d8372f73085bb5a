"""Ape-X capacity: how fast actors collect, how fast one learner ingests, and so how many actors
one learner can feed.

1. Actor throughput: K Ray actors (fastdqn's own `apex.Actor`, as `--actors K` runs them), each
   with its own vector env, collecting blocks with fixed weights for --seconds; env steps per
   second in total and per actor, for each K in --actors (default 1,2,4).
2. The learner's ingest ceiling: the driver alone, fed ready-made blocks (real rows and
   priorities from one actor, shipped through Ray's object store as in a run) as fast as it
   takes them, each followed by the learner steps it makes due (--train-every,
   --gradient-steps): transitions per second accepted while learning.
3. Actors one learner can feed = ingest ceiling / one actor's throughput, and the same
   arithmetic for a cluster of N nodes with C cores (one core per actor, the learner's node
   keeping one for itself).

    python bench/apex.py                                  # LunarLander-v3, 16 envs per actor
    python bench/apex.py --actors 1,2,4 --seconds 20 --json apex.json -- --env CartPole-v1

Arguments after `--` are `fastdqn train` settings (env, envs per actor, network, replay
ratio, ...), applied to both halves. On a 2-core machine K > 1 actors share the cores with
each other (and Ray's own processes): what the per-actor figure says about a real cluster is
the K = 1 row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastdqn.algos.apex import Actor, actor_epsilons, actor_weights, ingest, require_ray  # noqa: E402
from fastdqn.algos.contract import Counters  # noqa: E402
from fastdqn.algos.dqn.agent import DQN  # noqa: E402
from fastdqn.config.files import make_config  # noqa: E402
from fastdqn.envs.make import probe_env  # noqa: E402


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict]:
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                usage="%(prog)s [options] [-- fastdqn train settings]")
    p.add_argument("--actors", default="1,2,4", help="actor counts to measure (default: 1,2,4)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="collection time per actor count, after one warm-up block (default: 20)")
    p.add_argument("--ingest-blocks", type=int, default=400,
                   help="blocks fed to the learner for its ceiling (default: 400)")
    p.add_argument("--nodes", default="2,4,8,16", help="cluster sizes for the arithmetic")
    p.add_argument("--cores", type=int, default=16, help="cores per cluster node (default: 16)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    args = p.parse_args(own)
    from fastdqn.cli import build_parser

    parsed = vars(build_parser().parse_args(["train", *extra]))
    settings = {k: v for k, v in parsed.items() if k in make_config().to_dict()}
    settings.setdefault("vector", "sync")  # an actor is already its own process
    settings.setdefault("device", "cpu")
    settings["config"] = parsed.get("config")
    return args, settings


def config(settings: dict, actors: int):
    """The run's Config as `fastdqn train <settings> --actors K` would build it."""
    explicit = {k: v for k, v in settings.items() if k != "config"}
    return make_config(settings["config"], **{**explicit, "actors": actors, "progress": False})


def actor_throughput(settings: dict, k: int, seconds: float) -> dict:
    """Env steps per second of k actors collecting side by side (weights fixed)."""
    ray = require_ray()
    cfg = config(settings, k)
    obs_space, act_space, _ = probe_env(cfg.env_id)
    agent = DQN(cfg, obs_space, act_space, torch.device("cpu"))
    weights = [ray.put(actor_weights(agent))]
    remote = ray.remote(num_cpus=1)(Actor)
    actors = [remote.remote(cfg.to_dict(), i, eps, agent.actor_modules()[0], None, i << 24)
              for i, eps in enumerate(actor_epsilons(k))]
    ray.get([a.collect.remote(weights, 0, cfg.actor_block) for a in actors])  # warm-up
    steps = [0] * k
    pending = {a.collect.remote(weights, 0, cfg.actor_block): i for i, a in enumerate(actors)}
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            i = pending.pop(ref)
            steps[i] += ray.get(ref)["env_steps"]
            pending[actors[i].collect.remote(weights, 0, cfg.actor_block)] = i
    elapsed = time.perf_counter() - start
    for a in actors:
        ray.kill(a)
    return {"actors": k, "total_sps": sum(steps) / elapsed,
            "per_actor_sps": [s / elapsed for s in steps]}


def ingest_ceiling(settings: dict, n_blocks: int) -> dict:
    """Transitions per second the learner takes in while learning, fed as fast as it can go."""
    ray = require_ray()
    cfg = config(settings, 1)
    obs_space, act_space, _ = probe_env(cfg.env_id)
    agent = DQN(cfg, obs_space, act_space, torch.device(cfg.device))
    actor = Actor(cfg.to_dict(), 0, 0.4, agent.actor_modules()[0], None, 0)
    refs = [ray.put(actor.collect([actor_weights(agent)], 0, cfg.actor_block)) for _ in range(8)]
    actor.close()
    c = Counters()
    while agent.buffer.size < agent.learning_starts:  # fill to where learning starts
        ingest(agent, ray.get(refs[0]))
    rows = 0
    start = time.perf_counter()
    for j in range(n_blocks):
        block = ray.get(refs[j % len(refs)])
        n = ingest(agent, block)
        agent.learn(c, lambda stage: None, n)
        rows += n
    if agent.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"rows_per_s": rows / elapsed, "learner_steps_per_s": agent.learner.steps / elapsed,
            "rows_per_block": rows / n_blocks, "learner_route": agent.learner.route(agent.device),
            "train_every": cfg.train_every, "gradient_steps": cfg.gradient_steps,
            "batch_size": cfg.batch_size}


def arithmetic(ceiling: float, one_actor: float, nodes: list[int], cores: int) -> list[str]:
    """The capacity arithmetic, written out: actors per learner, and per cluster size the
    actors' collection rate against what one learner takes."""
    fed = ceiling / one_actor
    lines = [f"one learner takes {ceiling:,.0f} transitions/s; one actor makes {one_actor:,.0f} "
             f"env steps/s; so one learner feeds {ceiling:,.0f} / {one_actor:,.0f} = {fed:.2f} "
             "actors at this replay ratio"]
    for n in nodes:
        slots = n * cores - 1
        collect = slots * one_actor
        lines.append(f"{n} nodes x {cores} cores: {slots} actor cores (one kept for the learner) "
                     f"x {one_actor:,.0f} = {collect:,.0f} env steps/s; one learner takes "
                     f"{min(ceiling, collect):,.0f} of them ({min(1.0, ceiling / collect):.1%}); "
                     f"to take them all it must be {max(1.0, collect / ceiling):,.0f}x faster (a "
                     "GPU learner, a bigger --batch-size with a higher --train-every)")
    return lines


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(sys.argv[1:] if argv is None else argv)
    ray = require_ray()
    counts = [int(k) for k in args.actors.split(",")]
    torch.set_num_threads(1)
    ray.init(num_cpus=max(os.cpu_count() or 1, max(counts)), include_dashboard=False,
             logging_level="ERROR")
    try:
        throughput = []
        for k in counts:
            r = actor_throughput(settings, k, args.seconds)
            throughput.append(r)
            per = ", ".join(f"{s:,.0f}" for s in r["per_actor_sps"])
            print(f"{k} actor(s): {r['total_sps']:,.0f} env steps/s in total ({per} per actor)",
                  flush=True)
        ceiling = ingest_ceiling(settings, args.ingest_blocks)
        print(f"learner ingest ceiling: {ceiling['rows_per_s']:,.0f} rows/s while taking "
              f"{ceiling['learner_steps_per_s']:,.0f} learner steps/s (batch "
              f"{ceiling['batch_size']}, {ceiling['gradient_steps']} step per "
              f"{ceiling['train_every']} rows; {ceiling['learner_route']})", flush=True)
    finally:
        ray.shutdown()
    one = next((r for r in throughput if r["actors"] == 1), throughput[0])
    lines = arithmetic(ceiling["rows_per_s"], one["per_actor_sps"][0],
                       [int(n) for n in args.nodes.split(",")], args.cores)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"settings": settings, "throughput": throughput, "ingest": ceiling,
             "arithmetic": lines, "machine": f"{platform.machine()}, {os.cpu_count()} cores"},
            indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
