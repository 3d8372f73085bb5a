"""Ape-X on Ray (apex.py).

Without Ray: the per-actor epsilons by hand; an actor's block (n-step windows, training-signal
shaping, episode ends and truncations) equals the rows one machine's DQN writes for the same
env, seeds and actions; its priorities equal the |TD error| the learner's own update computes;
the learner ingests them as the priorities of exactly those rows; the settings' refusals.
With Ray (the `ray` extra): 2 local actors learn CartPole; a two-node cluster simulated on this
machine survives the loss of an actor placed on its second node; actors that keep dying stop
the run with one line and a checkpoint; SIGINT checkpoints, stops every actor and leaves no Ray
process behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from fastdqn import train
from fastdqn.algos.apex import Actor, actor_epsilons, actor_weights, ingest, require_ray
from fastdqn.algos.dqn.agent import DQN
from fastdqn.config.files import make_config
from fastdqn.core.seeds import TRAIN, episode_seed
from fastdqn.envs.autoreset import real_next_obs
from fastdqn.envs.backends import make_vector_env
from fastdqn.errors import ConfigError
from fastdqn.learners.reference import ReferenceLearner
from fastdqn.replay.prioritized import PrioritizedSampler
from fastdqn.replay.rows import FIELDS, Batch

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="the ray extra is not installed")
ROOT = Path(__file__).resolve().parents[1]


def test_actor_epsilons_by_hand():
    assert actor_epsilons(1) == [0.4]
    assert actor_epsilons(2) == pytest.approx([0.4, 0.4 ** 8])
    eight = actor_epsilons(8)
    assert eight[0] == pytest.approx(0.4) and eight[7] == pytest.approx(0.4 ** 8)
    assert eight[3] == pytest.approx(0.4 ** (1 + 7 * 3 / 7))  # 0.4 ** 4 = 0.0256
    assert eight[3] == pytest.approx(0.0256)
    assert actor_epsilons(3, eps=0.5, alpha=2.0) == pytest.approx([0.5, 0.25, 0.125])


# ---------------------------------------------------------------------------------------------
# The actor's block against one machine's rows (no Ray)
# ---------------------------------------------------------------------------------------------

def short_cartpole() -> gym.Env:
    """CartPole truncated at 15 steps: random play ends episodes by both termination and
    truncation within a block."""
    return gym.make("CartPole-v1", max_episode_steps=15)


class ScriptedActor(Actor):
    """An actor whose actions come from a fixed script (the single-machine side replays it)."""

    script: np.ndarray

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        a = torch.from_numpy(self.script[self.t])
        self.t += 1
        return a


APEX_CFG = dict(env_id="CartPole-v1", vector="sync", num_envs=3, gamma=0.9, seed=3,
                buffer_size=4096, batch_size=8, learning_starts=8, device="cpu", actors=2,
                progress=False)


@pytest.mark.parametrize("n_step", [1, 3])
def test_an_actors_block_is_what_one_machine_writes_for_the_same_inputs(n_step):
    cfg = make_config(**APEX_CFG, n_step=n_step)
    space = short_cartpole()
    agent = DQN(cfg, space.observation_space, space.action_space, torch.device("cpu"))
    online, target = agent.actor_modules()
    steps, first = 40, 5
    actor = ScriptedActor(cfg.to_dict(), 1, 0.1, online, short_cartpole, first)
    actor.script = np.random.default_rng(0).integers(0, 2, (steps, cfg.num_envs))
    actor.t = 0
    block = actor.collect([actor_weights(agent)], 0, steps)
    assert block["env_steps"] == steps * cfg.num_envs and block["index"] == 1

    # one machine: the same env, seeds and actions through DQN.add
    envs = make_vector_env("CartPole-v1", cfg.num_envs, "sync", short_cartpole)
    obs, _ = envs.reset(seed=episode_seed(cfg.seed, TRAIN, first))
    real = np.empty_like(obs)
    ended = []
    for t in range(steps):
        x = agent.observe(obs)
        a = torch.from_numpy(actor.script[t])
        nxt, r, term, trunc, infos = envs.step(actor.script[t])
        ended += [(bool(te), bool(tr)) for te, tr in zip(term, trunc) if te or tr]
        agent.add(x, a, r, real_next_obs(nxt, infos, real), term, trunc, infos)
        obs = nxt
    assert any(te for te, _ in ended) and any(tr and not te for te, tr in ended)
    n = agent.buffer.size
    assert n == len(block["actions"]) and n > 0
    for f in FIELDS:
        want = getattr(agent.buffer, f)[:n]
        assert torch.equal(torch.from_numpy(block[f]).to(want.dtype), want), f
    assert len(block["ended"]) == len(ended)


def test_priorities_are_the_learners_own_td_errors_and_land_on_their_rows():
    cfg = make_config(**APEX_CFG, n_step=2, double_dqn=True)
    space = short_cartpole()
    agent = DQN(cfg, space.observation_space, space.action_space, torch.device("cpu"))
    online, _ = agent.actor_modules()
    actor = Actor(cfg.to_dict(), 0, 0.5, online, short_cartpole, 0)
    with torch.no_grad():  # a target unlike the online net: double DQN's choice matters
        agent.learner.target.copy_(torch.randn(agent.learner.target.shape,
                                               generator=torch.Generator().manual_seed(0)))
    block = actor.collect([actor_weights(agent)], 0, 12)
    batch = Batch(*(torch.from_numpy(block[f]) for f in FIELDS))
    ref_online, ref_target = agent.actor_modules()
    ref = ReferenceLearner(ref_online, lr=1e-3, gamma=cfg.gamma, tau=1.0,
                           target_update_interval=1000, double_dqn=True)
    ref.target.load_state_dict(ref_target.state_dict())
    td = ref.update(batch, None)  # the |TD error| of the learner's step, before it moves
    np.testing.assert_allclose(block["priorities"], td.numpy(), rtol=1e-5, atol=1e-6)

    agent.buffer.add(*(getattr(batch, f)[:5] for f in FIELDS))  # rows ahead, so ingest wraps on
    n = ingest(agent, block)
    assert n == len(block["actions"])
    sampler = agent.sampler
    assert isinstance(sampler, PrioritizedSampler)  # Ape-X replay is prioritized, flag or not
    rows = 5 + np.arange(n)
    leaves = sampler.tree[sampler.leaves + rows]
    want = (block["priorities"].astype(np.float64) + cfg.per_eps) ** cfg.per_alpha
    np.testing.assert_allclose(leaves, want, rtol=1e-6)
    for f in FIELDS:
        assert torch.equal(getattr(agent.buffer, f)[5:5 + n], getattr(batch, f).to(
            getattr(agent.buffer, f).dtype)), f


def test_a_greedy_actor_acts_as_the_online_net_says():
    cfg = make_config(**APEX_CFG)
    space = short_cartpole()
    agent = DQN(cfg, space.observation_space, space.action_space, torch.device("cpu"))
    actor = Actor(cfg.to_dict(), 0, 0.0, agent.actor_modules()[0], short_cartpole, 0)
    x = torch.randn(cfg.num_envs, 4)
    assert torch.equal(actor.act(x), actor.online(x).argmax(1))
    explorer = Actor(cfg.to_dict(), 0, 1.0, agent.actor_modules()[0], short_cartpole, 0)
    draws = torch.cat([explorer.act(x) for _ in range(300)])
    assert 0.4 < draws.float().mean() < 0.6  # epsilon 1: uniform over the 2 actions


@pytest.mark.parametrize("settings, message", [
    (dict(actor_block=8), "--actor-block applies to Ape-X runs only"),
    (dict(ray_address="10.0.0.1:6379"), "--ray-address applies to Ape-X runs only"),
    (dict(actors=2, eps_start=0.5), "--eps-start sets one machine's exploration"),
    (dict(actors=2, algo="pqn"), "--actors applies to --algo dqn only"),
    (dict(actors=2, actor_block=4096, num_envs=16), "exceeds --buffer-size"),
    (dict(actors=257), "--actors must be in 0..256"),
    (dict(actors=2, total_episodes=10), "budget in --total-timesteps"),
])
def test_apex_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        make_config(**settings)


def test_the_frame_replay_is_refused_with_actors():
    from fastdqn.algos.dqn.preflight import check_dqn_env

    stacks = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)  # what --frame-replay auto takes
    with pytest.raises(ConfigError, match="--frame-replay off"):
        check_dqn_env(make_config(actors=2), stacks, torch.device("cpu"), short_cartpole)
    check_dqn_env(make_config(actors=2, frame_replay="off"), stacks, torch.device("cpu"),
                  short_cartpole)
    check_dqn_env(make_config(frame_replay="auto"), stacks, torch.device("cpu"), short_cartpole)


def test_without_ray_actors_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[ray\]"'):
        require_ray()


# ---------------------------------------------------------------------------------------------
# With Ray
# ---------------------------------------------------------------------------------------------

CARTPOLE_APEX = dict(env_id="CartPole-v1", actors=2, num_envs=4, vector="sync", seed=1,
                     device="cpu", hidden=(128, 128), lr=1e-3, batch_size=64, buffer_size=50_000,
                     learning_starts=1000, train_every=4, tau=1.0, target_update_interval=250,
                     eval_every=2500, eval_episodes=10, solve_episodes=100, progress=False)
"""The single-machine CartPole learning test's DQN setting, its epsilon schedule replaced by
Ape-X's per-actor epsilons (2 actors: 0.4 and 0.4 ** 8)."""
BUDGET_STEPS = 150_000


@needs_ray
@pytest.mark.slow
def test_two_local_actors_learn_cartpole(tmp_path):
    run_dir = tmp_path / "apex"
    result = train(**CARTPOLE_APEX, total_timesteps=BUDGET_STEPS, run_dir=str(run_dir))
    s = result.summary
    assert s["solved"], f"not solved in {BUDGET_STEPS} steps; evals: {s['evals']}"
    assert s["final_eval"]["mean"] >= 475 and s["final_eval"]["episodes"] == 100
    assert s["stopped"] is None and s["learner_route"].startswith("cpu-fused")
    scalars = tensorboard_scalars(run_dir)
    assert scalars["actors/epsilon_0"][-1] == pytest.approx(0.4)
    assert scalars["actors/epsilon_1"][-1] == pytest.approx(0.4 ** 8)
    assert min(scalars["actors/sps_0"][-1], scalars["actors/sps_1"][-1]) > 0
    assert scalars["actors/ingest_rows_per_s"][-1] > 0
    assert wait_until(lambda: not ray_processes(), RAY_GONE_S), ray_processes()


def tensorboard_scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {t: [e.value for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


RAY_PROCESS_NAMES = ("raylet", "gcs_server", "ray::", "default_worker.py", "log_monitor.py",
                     "dashboard", "runtime_env/agent")


RAY_GONE_S = 300
"""How long Ray's processes may take to exit after a run left Ray: they are waited for, never
assumed gone; this bound only keeps a broken shutdown from hanging the suite."""


def ray_processes() -> list[str]:
    """Command lines of the Ray processes alive on this machine."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            continue
        if state != "Z" and any(name in cmd for name in RAY_PROCESS_NAMES):
            found.append(f"{pid}: {cmd[:120]}")
    return found


def wait_until(condition, timeout: float, step: float = 0.2):
    """Poll `condition` until it holds (its value), or give up after `timeout` s (a hang
    guard: set it far beyond any machine's need, it must never be what a test measures)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return condition()


def kill_actor_after_blocks(monkeypatch, index: int, after: int) -> dict:
    """Kill actor `index`'s process (as a crash would; Ray may restart it) from the learner's own
    loop, once `after` blocks from it were ingested: it is surely built and collecting then,
    however fast or slow the machine. (A kill while it is still in its constructor is healed by
    Ray before any request reaches it: nothing would be lost, nothing fail.)

    Returns what the loop saw: `killed`, `lost` (its "actor `index` lost" lines) and
    `after_loss` (blocks from it after the first of them: the restarted actor's)."""
    from fastdqn.algos.apex import Fleet

    seen = {"blocks": 0, "killed": False, "lost": 0, "after_loss": 0}
    real = Fleet.poll

    def poll(self, timeout: float):
        blocks, losses = real(self, timeout)
        mine = sum(b["index"] == index for b in blocks)
        if seen["lost"]:
            seen["after_loss"] += mine
        seen["blocks"] += mine
        seen["lost"] += sum(line.startswith(f"actor {index} lost (") for line in losses)
        if not seen["killed"] and seen["blocks"] >= after:
            self.ray.kill(self.actors[index], no_restart=False)
            seen["killed"] = True
        return blocks, losses

    monkeypatch.setattr(Fleet, "poll", poll)
    return seen


@needs_ray
@pytest.mark.slow
def test_a_two_node_cluster_survives_losing_an_actor_on_its_second_node(tmp_path, capfd,
                                                                        monkeypatch):
    """Actor 1 is killed after its third block; the run goes on until the restarted actor has
    delivered a block and a TensorBoard log has followed the loss (the budget is only a cap)."""
    from ray.cluster_utils import Cluster

    from fastdqn.runtime.run import Run

    seen = kill_actor_after_blocks(monkeypatch, 1, 3)
    real_running = Run.running
    log_after_loss: list = []

    def running(run) -> bool:
        if seen["lost"] and not log_after_loss:
            log_after_loss.append(run.c.next_log)  # the first log that follows the loss
        survived = seen["after_loss"] > 0 and log_after_loss and run.c.next_log > log_after_loss[0]
        return real_running(run) and not survived

    monkeypatch.setattr(Run, "running", running)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        cluster.add_node(num_cpus=2)  # the head has no CPU: both actors run on this node
        cluster.wait_for_nodes()
        run_dir = tmp_path / "cluster"
        budget = 10**7
        result = train(**{**CARTPOLE_APEX, "eval_every": 0, "solve_episodes": 10},
                       total_timesteps=budget, ray_address=cluster.address, actor_timeout=60,
                       run_dir=str(run_dir))
        s = result.summary
        assert seen["killed"] and seen["lost"] == 1 and seen["after_loss"] > 0, seen
        assert s["stopped"] is None and not s["interrupted"] and s["total_env_steps"] < budget
        err = capfd.readouterr().err
        assert "actor 1 lost (" in err and "Ray restarts it" in err
        assert tensorboard_scalars(run_dir)["actors/lost"][-1] >= 1
    finally:
        cluster.shutdown()


@needs_ray
@pytest.mark.slow
def test_actors_that_keep_dying_stop_the_run_with_one_line_and_a_checkpoint(tmp_path,
                                                                           monkeypatch):
    seen = kill_actor_after_blocks(monkeypatch, 0, 2)
    run_dir = tmp_path / "dying"
    result = train(**{**CARTPOLE_APEX, "actors": 1, "eval_every": 0}, total_timesteps=10**7,
                   actor_restarts=0, actor_timeout=30, run_dir=str(run_dir))
    s = result.summary
    assert seen["killed"]
    assert s["stopped"].startswith("1 actor losses, more than --actor-restarts 0 x 1 actors")
    assert s["total_env_steps"] < 10**7 and s["final_eval"] is None
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "summary.json").exists()
    assert wait_until(lambda: not ray_processes(), RAY_GONE_S), ray_processes()


@needs_ray
@pytest.mark.slow
def test_sigint_checkpoints_stops_every_actor_and_leaves_no_ray_process(tmp_path):
    """Ctrl-C reaches the terminal's whole process group: so does this SIGINT."""
    assert wait_until(lambda: not ray_processes(), RAY_GONE_S), \
        f"Ray processes from elsewhere would blur this test: {ray_processes()}"
    run_dir = tmp_path / "sigint"
    cmd = [sys.executable, "-m", "fastdqn", "train", "--env", "CartPole-v1", "--actors", "2",
           "--num-envs", "4", "--vector", "sync", "--total-timesteps", "10000000",
           "--eval-every", "2000", "--eval-episodes", "2", "--solve-episodes", "2",
           "--run-dir", str(run_dir), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: (run_dir / "checkpoint.pt").exists() or proc.poll() is not None,
                          600), "no checkpoint after 600 s"
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted at" in err and "checkpoint saved" in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] is True
    from fastdqn.core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["counters"]["step"] == summary["total_env_steps"] > 0
    left = wait_until(lambda: not ray_processes(), RAY_GONE_S)
    assert left, f"Ray processes left behind: {ray_processes()}"


@needs_ray
@pytest.mark.parametrize("address, problem", [
    ("127.0.0.1:1", "nothing answers there"),
    ("nonsense", "not an address of the form HOST:PORT"),
])
def test_a_wrong_ray_address_is_one_line_and_touches_nothing(tmp_path, address, problem):
    from conftest import run_fastdqn

    run_dir = tmp_path / "run"
    r = run_fastdqn("train", "--env", "CartPole-v1", "--actors", "1", "--ray-address", address,
                    "--run-dir", str(run_dir), timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --ray-address {address}: {problem}")
    assert lines[0].endswith("drop --ray-address for a local Ray")
    assert not run_dir.exists()
