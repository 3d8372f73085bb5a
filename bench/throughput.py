"""Throughput of fastdqn's training loop against the ceiling set by the env itself.

Measures, in one run and at the same settings: (1) env-only SPS of the same vector env with
random actions, (2) training-loop SPS after warm-up, (3) their ratio, (4) where each iteration's
time goes, stage by stage; optionally (5) other libraries' DQN at the same settings, each in
a subprocess of its own, one after another (--vs: Stable-Baselines3, Tianshou, TorchRL), so
that every ratio comes from one run on one machine state.
Defaults are the canonical configuration of shared/DESIGN.md.

    python bench/throughput.py                    # canonical config on the best device
    python bench/throughput.py --vs sb3,tianshou,torchrl --json out.json
    python bench/throughput.py --vector sharded,envpool --rounds 3   # vector envs side by side
    python bench/throughput.py --smoke            # seconds; what CI runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fastdqn import __version__, train
from fastdqn.algos.dqn.loop import STAGES
from fastdqn.algos.pqn import STAGES as PQN_STAGES
from fastdqn.config.files import make_config
from fastdqn.core.device import resolve_device
from fastdqn.core.logger import StageTimer
from fastdqn.envs.backends import make_vector_env

VECTORS = ("sharded", "async", "sync", "envpool")
PEERS = ("sb3", "tianshou", "torchrl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="LunarLander-v3")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--vector", default="sharded",
                   help="vector env: sharded, async, sync or envpool; several, comma-separated "
                   "(sharded,envpool), are measured in turn in each round of this run")
    p.add_argument("--rounds", type=int, default=1,
                   help="with several --vector: rounds of measuring each in turn (medians)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", default="128,128")
    p.add_argument("--train-every", type=int, default=4, help="env transitions per update round")
    p.add_argument("--gradient-steps", type=int, default=1)
    p.add_argument("--buffer-size", type=int, default=100_000)
    p.add_argument("--learning-starts", type=int, default=1_000)
    p.add_argument("--steps", type=int, default=50_000, help="timed env steps after warm-up")
    p.add_argument("--warmup", type=int, default=5_000, help="untimed env steps first")
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--prioritized", action="store_true", help="prioritized replay")
    p.add_argument("--n-step", type=int, default=1, help="n-step returns")
    p.add_argument("--dueling", action="store_true", help="dueling head")
    p.add_argument("--distributional", default="none", choices=["none", "c51", "qr"],
                   help="value head (c51, qr: the reference route, with their default atoms)")
    p.add_argument("--noisy", action="store_true", help="noisy nets (the reference route)")
    p.add_argument("--learner", default="auto", choices=["auto", "numba", "reference"],
                   help="learner route (numba: the CPU step before the native one)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the figures as JSON")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="write a torch.profiler Chrome trace and top-ops table of the loop")
    p.add_argument("--vs", default="", metavar="LIST",
                   help="also time these libraries' DQN at the same settings, one after another: "
                   f"a comma-separated subset of {','.join(PEERS)} (pip install -e .[bench])")
    p.add_argument("--vs-pqn", action="store_true",
                   help="also time --algo pqn on its own defaults at the same envs and MLP")
    p.add_argument("--smoke", action="store_true", help="tiny step counts (CI)")
    args = p.parse_args(argv)
    args.vectors = args.vector.split(",")
    args.peers = list(dict.fromkeys(v for v in args.vs.split(",") if v))
    unknown = [v for v in args.peers if v not in PEERS]
    if unknown:
        p.error(f"--vs takes a comma-separated subset of {','.join(PEERS)}; unknown: {','.join(unknown)}")
    bad = [v for v in args.vectors if v not in VECTORS]
    if bad or args.rounds < 1:
        p.error(f"--vector takes {', '.join(VECTORS)} (comma-separated), got {args.vector}"
                if bad else "--rounds must be >= 1")
    if len(args.vectors) > 1 and (args.peers or args.vs_pqn or args.profile):
        p.error("--vs, --vs-pqn and --profile measure one --vector; pass one")
    if args.peers and (args.prioritized or args.dueling or args.n_step > 1
                       or args.distributional != "none" or args.noisy):
        p.error("--vs times the peers without prioritized replay, dueling, n-step or Rainbow's "
                "heads: drop those flags")
    args.vector = args.vectors[0]
    if args.smoke:
        args.steps, args.warmup, args.learning_starts = 2_000, 1_000, 500
    return args


def env_only_sps(args: argparse.Namespace) -> float:
    """SPS of the same vector env driven with random actions: the ceiling for training."""
    envs = make_vector_env(args.env, args.num_envs, args.vector, num_workers=args.num_workers)
    rng = np.random.default_rng(args.seed)
    n_actions = int(envs.single_action_space.n)
    try:
        envs.reset(seed=args.seed)
        iters_warm = max(1, args.warmup // args.num_envs)
        iters = max(1, args.steps // args.num_envs)
        for i in range(iters_warm + iters):
            if i == iters_warm:
                t = time.perf_counter()
            envs.step_async(rng.integers(0, n_actions, args.num_envs))
            envs.step_wait()
        return iters * args.num_envs / (time.perf_counter() - t)
    finally:
        envs.close()


def bench_config(args: argparse.Namespace, device: torch.device, run_dir: str):
    return make_config(
        env_id=args.env, num_envs=args.num_envs, vector=args.vector, num_workers=args.num_workers,
        device=str(device), batch_size=args.batch_size, hidden=args.hidden,
        train_every=args.train_every, gradient_steps=args.gradient_steps,
        buffer_size=args.buffer_size, learning_starts=args.learning_starts,
        total_timesteps=args.warmup + args.steps, seed=args.seed, run_dir=run_dir,
        eval_every=0, checkpoint_every=0, solve_episodes=1, eval_episodes=1, progress=False,
        num_threads=args.num_threads, log_every=5_000, target_return="none",
        prioritized=args.prioritized, n_step=args.n_step, dueling=args.dueling,
        learner=args.learner, distributional=args.distributional, noisy=args.noisy,
    )


def training_sps(args: argparse.Namespace, device: torch.device, run_dir: str, sync: bool = True
                 ) -> tuple[float, dict[str, float], dict]:
    """Training SPS after warm-up and the per-stage times.

    With `sync`, each stage lap waits for the device so the breakdown shows real costs (on the
    CPU that changes nothing); without it the loop runs exactly as users run it.
    """
    syncer = torch.cuda.synchronize if (sync and device.type == "cuda") else None
    timer = StageTimer(STAGES, sync=syncer, warmup_steps=max(args.warmup, args.learning_starts))
    result = train(bench_config(args, device, run_dir), timer=timer)
    return timer.sps(), timer.us_per_iteration(), result.summary


def pqn_sps(args: argparse.Namespace, device: torch.device, run_dir: str) -> float:
    """PQN's training SPS after warm-up, on its own defaults (rollout, epochs, minibatches,
    lr) at the same envs, vector mode and MLP sizes: DQN's batch and update settings do not
    apply to it."""
    cfg = make_config(
        algo="pqn", env_id=args.env, num_envs=args.num_envs, vector=args.vector,
        num_workers=args.num_workers, device=str(device), hidden=args.hidden,
        total_timesteps=args.warmup + args.steps, seed=args.seed, run_dir=run_dir, eval_every=0,
        checkpoint_every=0, solve_episodes=1, eval_episodes=1, progress=False,
        num_threads=args.num_threads, log_every=5_000, target_return="none")
    timer = StageTimer(PQN_STAGES, warmup_steps=args.warmup)
    train(cfg, timer=timer)
    return timer.sps()


# Each peer script reads the settings (bench args and fastdqn's own defaults) as JSON in argv[1],
# trains untimed for "warmup" env steps, then prints {"sps": ...} over the next "steps".
SB3_SCRIPT = r"""
import json, sys, time
import torch
from stable_baselines3 import DQN
from stable_baselines3.common.env_util import make_vec_env
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
env = make_vec_env(a["env"], n_envs=a["num_envs"], seed=a["seed"])  # DummyVecEnv, its default
hidden = [int(h) for h in a["hidden"].split(",")]
# One gradient step per train_every transitions: every vec step brings num_envs transitions.
grad_steps = max(1, a["num_envs"] * a["gradient_steps"] // a["train_every"])
# SB3's finest target update is one Polyak step per vec step (target_update_interval counts env
# steps); tau compounded over that vec step's gradient steps tracks the online net as fastdqn's
# per-step tau does. SB3's loss is Huber (smooth L1); its DQN has no double-DQN option.
tau = 1 - (1 - a["tau"]) ** (grad_steps / a["target_update_interval"])
# exploration_fraction is of each learn() call's total; the timed call's total is warmup + steps,
# so epsilon decays linearly over eps_decay_steps env steps there, as in fastdqn.
model = DQN("MlpPolicy", env, learning_rate=a["lr"], buffer_size=a["buffer_size"],
            learning_starts=a["learning_starts"], batch_size=a["batch_size"], gamma=a["gamma"],
            train_freq=1, gradient_steps=grad_steps, target_update_interval=a["num_envs"], tau=tau,
            exploration_initial_eps=a["eps_start"], exploration_final_eps=a["eps_end"],
            exploration_fraction=min(1.0, a["eps_decay_steps"] / (a["warmup"] + a["steps"])),
            max_grad_norm=a["max_grad_norm"],
            policy_kwargs={"net_arch": hidden, "optimizer_kwargs": {"eps": a["adam_eps"]}},
            device=a["device"], seed=a["seed"], verbose=0)
model.learn(total_timesteps=a["warmup"])
t = time.perf_counter()
model.learn(total_timesteps=a["steps"], reset_num_timesteps=False)
print(json.dumps({"sps": a["steps"] / (time.perf_counter() - t)}))
"""


TIANSHOU_SCRIPT = r"""
import json, sys, time
import gymnasium as gym
import numpy as np
import torch
from tianshou.algorithm import DQN
from tianshou.algorithm.modelfree.dqn import DiscreteQLearningPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Collector, CollectStats, VectorReplayBuffer
from tianshou.env import DummyVectorEnv
from tianshou.trainer import OffPolicyTrainerParams
from tianshou.utils.net.common import Net
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(a["seed"])
np.random.seed(a["seed"])
# DummyVectorEnv: Tianshou's docs advise it over SubprocVectorEnv for fast envs (no IPC).
envs = DummyVectorEnv([lambda: gym.make(a["env"]) for _ in range(a["num_envs"])])
envs.seed(a["seed"])
probe = gym.make(a["env"])
net = Net(state_shape=probe.observation_space.shape, action_shape=int(probe.action_space.n),
          hidden_sizes=[int(h) for h in a["hidden"].split(",")]).to(a["device"])
policy = DiscreteQLearningPolicy(model=net, action_space=probe.action_space,
                                 eps_training=a["eps_start"])
# Tianshou's DQN copies the target net whole (no soft update): one copy every interval / tau
# learner steps, the soft update's time constant (200 at tau 0.005). Its DQN takes no
# gradient-norm clipping, so it runs without.
algorithm = DQN(policy=policy, optim=AdamOptimizerFactory(lr=a["lr"], eps=a["adam_eps"]),
                gamma=a["gamma"], target_update_freq=max(1, round(a["target_update_interval"] / a["tau"])),
                is_double=a["double_dqn"], huber_loss_delta=1.0 if a["loss"] == "huber" else None)
collector = Collector[CollectStats](algorithm, envs, VectorReplayBuffer(a["buffer_size"], len(envs)),
                                    exploration_noise=True)
collector.reset()
# Its trainer has no learning-starts setting: the first transitions come from random actions.
collector.collect(n_step=-(-a["learning_starts"] // a["num_envs"]) * a["num_envs"], random=True)


def train(start, n):
    def set_eps(epoch, env_step):
        frac = min(1.0, (start + env_step) / a["eps_decay_steps"])
        policy.set_eps_training(a["eps_start"] + frac * (a["eps_end"] - a["eps_start"]))
    # One vec step of transitions per collection, then gradient_steps / train_every per transition.
    return algorithm.run_training(OffPolicyTrainerParams(
        training_collector=collector, max_epochs=1, epoch_num_steps=n,
        collection_step_num_env_steps=a["num_envs"], batch_size=a["batch_size"],
        update_step_num_gradient_steps_per_sample=a["gradient_steps"] / a["train_every"],
        training_fn=set_eps, verbose=False, show_progress=False))


if a["warmup"] > a["learning_starts"]:
    train(a["learning_starts"], a["warmup"] - a["learning_starts"])
t = time.perf_counter()
result = train(a["warmup"], a["steps"])
print(json.dumps({"sps": result.train_step / (time.perf_counter() - t)}))
"""


TORCHRL_SCRIPT = r"""
import json, sys, time
import torch
from tensordict.nn import TensorDictSequential
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import SerialEnv
from torchrl.envs.libs.gym import GymEnv
from torchrl.modules import MLP, EGreedyModule, QValueActor
from torchrl.objectives import DQNLoss, SoftUpdate
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
torch.manual_seed(a["seed"])
device = torch.device(a["device"])
# SerialEnv of GymEnv: the envs step in this process, like the other peers' vector envs. Its
# docs keep ParallelEnv (a process per env) for CPU-heavy env steps; GymEnv(num_envs=...) is
# gymnasium's AsyncVectorEnv, a process per env too.
env = SerialEnv(a["num_envs"], lambda: GymEnv(a["env"]))
env.set_seed(a["seed"])
proof = GymEnv(a["env"])
mlp = MLP(in_features=proof.observation_spec["observation"].shape[-1],
          out_features=proof.action_spec.space.n, activation_class=torch.nn.ReLU,
          num_cells=[int(h) for h in a["hidden"].split(",")], device=device)
actor = QValueActor(module=mlp, spec=proof.action_spec.to(device), in_keys=["observation"])
greedy = EGreedyModule(spec=actor.spec, eps_init=a["eps_start"], eps_end=a["eps_end"],
                       annealing_num_steps=a["eps_decay_steps"], device=device)
rb = TensorDictReplayBuffer(storage=LazyTensorStorage(max_size=a["buffer_size"], device=device),
                            batch_size=a["batch_size"])
# smooth_l1 is the Huber loss with delta 1.
loss = DQNLoss(value_network=actor, loss_function="smooth_l1" if a["loss"] == "huber" else "l2",
               delay_value=True, double_dqn=a["double_dqn"])
loss.make_value_estimator(gamma=a["gamma"])
target = SoftUpdate(loss, tau=a["tau"])
optim = torch.optim.Adam(loss.parameters(), lr=a["lr"], eps=a["adam_eps"])
# One vec step per batch; random actions for learning_starts frames. The policy is not
# recurrent: no InitTracker transform for it (0.14 warns and asks to choose).
collector = Collector(env, TensorDictSequential(actor, greedy), frames_per_batch=a["num_envs"],
                      total_frames=a["warmup"] + a["steps"], init_random_frames=a["learning_starts"],
                      device=device, storing_device=device, auto_register_policy_transforms=False)
updates_per_batch = max(1, a["num_envs"] * a["gradient_steps"] // a["train_every"])
frames, updates, t, timed_from = 0, 0, None, 0
for data in collector:
    frames += data.numel()
    rb.extend(data.reshape(-1))
    greedy.step(data.numel())
    if frames >= a["learning_starts"]:
        for _ in range(updates_per_batch):
            td_loss = loss(rb.sample())
            optim.zero_grad()
            td_loss["loss"].backward()
            torch.nn.utils.clip_grad_norm_(list(loss.parameters()), max_norm=a["max_grad_norm"])
            optim.step()
            updates += 1
            if updates % a["target_update_interval"] == 0:
                target.step()
    collector.update_policy_weights_()
    if t is None and frames >= a["warmup"]:
        t, timed_from = time.perf_counter(), frames
sps = (frames - timed_from) / (time.perf_counter() - t)
collector.shutdown()
print(json.dumps({"sps": sps}))
"""


PEER_SCRIPTS = {"sb3": SB3_SCRIPT, "tianshou": TIANSHOU_SCRIPT, "torchrl": TORCHRL_SCRIPT}
PEER_NAMES = {"sb3": "Stable-Baselines3 DQN", "tianshou": "Tianshou DQN", "torchrl": "TorchRL DQN"}


def peer_sps(peer: str, args: argparse.Namespace, device: torch.device) -> float:
    """A peer library's DQN training SPS at the bench's settings, after the same warm-up.

    Each peer runs in a subprocess of its own so that its imports, threads and globals cannot
    touch fastdqn's measurement or the next peer's. What the bench has no flag for (lr, gamma,
    target update, epsilon schedule, loss, gradient clipping) comes from fastdqn's defaults.
    """
    cfg = bench_config(args, device, run_dir="")
    payload = json.dumps({
        "env": args.env, "num_envs": args.num_envs, "seed": args.seed, "hidden": args.hidden,
        "buffer_size": args.buffer_size, "learning_starts": args.learning_starts,
        "batch_size": args.batch_size, "train_every": args.train_every,
        "gradient_steps": args.gradient_steps, "device": str(device),
        "warmup": max(args.warmup, args.learning_starts), "steps": args.steps,
        "threads": args.num_threads, "lr": cfg.lr, "adam_eps": cfg.adam_eps, "gamma": cfg.gamma,
        "tau": cfg.tau, "target_update_interval": cfg.target_update_interval,
        "max_grad_norm": cfg.max_grad_norm, "loss": cfg.loss, "double_dqn": cfg.double_dqn,
        "eps_start": cfg.eps_start, "eps_end": cfg.eps_end, "eps_decay_steps": cfg.eps_decay_steps,
    })
    out = subprocess.run([sys.executable, "-c", PEER_SCRIPTS[peer], payload], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{PEER_NAMES[peer]} run failed (pip install -e .[bench]?): "
                         f"{out.stderr.strip()[-500:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["sps"])


def profile_loop(args: argparse.Namespace, device: torch.device, out_dir: Path) -> str:
    from torch.profiler import ProfilerActivity, profile

    out_dir.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    small = argparse.Namespace(**{**vars(args), "steps": min(args.steps, 5_000)})
    with tempfile.TemporaryDirectory() as d, profile(activities=activities) as prof:
        training_sps(small, device, d)
    prof.export_chrome_trace(str(out_dir / "trace.json"))
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=30)
    (out_dir / "top_ops.txt").write_text(table)
    return table


def measure(args: argparse.Namespace, device: torch.device) -> dict:
    """Env-only and training SPS of args.vector, and the training loop's stage breakdown."""
    env_sps = env_only_sps(args)
    with tempfile.TemporaryDirectory() as d:
        train_sps, stages, summary = training_sps(args, device, d)
    plain_sps = train_sps
    if device.type == "cuda":
        with tempfile.TemporaryDirectory() as d:
            plain_sps = training_sps(args, device, d, sync=False)[0]
    total = sum(stages.values()) or 1.0
    return {
        "env_only_sps": round(env_sps, 1),
        "train_sps": round(plain_sps, 1),
        "train_sps_synced_timing": round(train_sps, 1),
        "train_to_env_ratio": round(plain_sps / env_sps, 3),
        "learner_route": summary["learner_route"],
        "stages_us_per_iter": {k: round(v, 1) for k, v in stages.items()},
        "stages_share": {k: round(v / total, 3) for k, v in stages.items()},
    }


def report(args: argparse.Namespace, fig: dict) -> None:
    env_sps, plain_sps = fig["env_only_sps"], fig["train_sps"]
    print(f"  env only (random actions): {env_sps:10,.0f} SPS")
    print(f"  training loop            : {plain_sps:10,.0f} SPS  "
          f"({100 * plain_sps / env_sps:.0f}% of env-only); learner: {fig['learner_route']}")
    print(f"  per-iteration breakdown (device-synced laps, {fig['train_sps_synced_timing']:,.0f} "
          "SPS while measured):")
    for k, v in fig["stages_us_per_iter"].items():
        print(f"    {k:<9} {v:9.1f} us  {100 * fig['stages_share'][k]:5.1f}%")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.num_threads)
    figures: dict = {
        "date": time.strftime("%Y-%m-%d"), "version": __version__, "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "profile", "vectors", "peers")},
    }
    extras = [name for name, on in (("prioritized", args.prioritized), ("dueling", args.dueling),
                                    (f"{args.n_step}-step", args.n_step > 1),
                                    (args.distributional, args.distributional != "none"),
                                    ("noisy", args.noisy)) if on]
    print(f"{args.env}, {args.num_envs} envs ({', '.join(args.vectors)}), device {device}, "
          f"batch {args.batch_size}, MLP {args.hidden}, {args.gradient_steps} update(s) per "
          f"{args.train_every} transitions, {args.steps:,d} timed steps"
          + (f", {' + '.join(extras)}" if extras else ""))
    if len(args.vectors) > 1:
        return compare_vectors(args, device, figures)
    fig = measure(args, device)
    figures.update(fig)
    report(args, fig)
    plain_sps = fig["train_sps"]
    if args.vs_pqn:
        with tempfile.TemporaryDirectory() as d:
            pqn = pqn_sps(args, device, d)
        figures["pqn_sps"] = round(pqn, 1)
        figures["pqn_to_dqn_ratio"] = round(pqn / plain_sps, 2)
        print(f"  PQN (--algo pqn defaults): {pqn:10,.0f} SPS  ({pqn / plain_sps:.2f}x DQN's, "
              f"{100 * pqn / fig['env_only_sps']:.0f}% of env-only)")
    for peer in args.peers:
        sps = peer_sps(peer, args, device)
        figures[f"{peer}_sps"] = round(sps, 1)
        figures[f"speedup_vs_{peer}"] = round(plain_sps / sps, 2)
        print(f"  {PEER_NAMES[peer]:<25}: {sps:10,.0f} SPS  -> fastdqn is "
              f"{plain_sps / sps:.1f}x faster", flush=True)
    if args.profile:
        print(profile_loop(args, device, Path(args.profile)))
        figures["profile_dir"] = args.profile
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def compare_vectors(args: argparse.Namespace, device: torch.device, figures: dict) -> int:
    """Each round measures every vector env in turn (the machine's speed drifts: interleaving
    keeps the comparison fair); the medians over rounds, and each round's figures."""
    rounds: dict[str, list[dict]] = {v: [] for v in args.vectors}
    for r in range(args.rounds):
        for vector in args.vectors:
            fig = measure(argparse.Namespace(**{**vars(args), "vector": vector}), device)
            rounds[vector].append(fig)
            print(f"round {r + 1}, --vector {vector}: env only {fig['env_only_sps']:,.0f} SPS, "
                  f"training {fig['train_sps']:,.0f} SPS", flush=True)
    figures["by_vector"] = {}
    for vector, figs in rounds.items():
        median = {k: float(np.median([f[k] for f in figs]))
                  for k in ("env_only_sps", "train_sps", "train_to_env_ratio")}
        figures["by_vector"][vector] = {**median, "rounds": figs}
        print(f"--vector {vector} (median of {len(figs)}):")
        report(args, {**figs[-1], **median, "train_sps_synced_timing": figs[-1]["train_sps_synced_timing"]})
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
