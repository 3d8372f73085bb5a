"""The DQN agent inside real runs: n-step rows in the buffer, routes named in summary.json, a
network of your own, and checkpoints of fastdqn 0.1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import episode_length, make_counting_env

from fastdqn import train
from fastdqn.core.checkpoint import load_checkpoint, save_checkpoint
from fastdqn.errors import CheckpointError, ConfigError
from fastdqn.evaluation.policies import load_policy

GAMMA = 0.9


@pytest.mark.parametrize("vector", ["sync", "sharded"])
def test_n_step_rows_written_by_a_run_are_whole_windows_of_one_episode(tmp_path, vector):
    """CountingEnv: obs [episode id, t], reward 10 t + action, episodes of several lengths
    under a time limit. Every stored row must be a window of k <= 3 steps of one episode:
    next t = t + k, discount gamma^k, done only at a termination, and a return between the
    sums of the smallest and largest possible actions."""
    run = tmp_path / "run"
    train(env_id="unused", env_factory=make_counting_env, vector=vector, num_envs=4,
          num_workers=2 if vector == "sharded" else 0, n_step=3, gamma=GAMMA,
          total_timesteps=400, learning_starts=10_000,
          buffer_size=512, batch_size=8, eval_every=0, solve_episodes=1, eval_envs=1,
          save_buffer=True, progress=False, run_dir=str(run))
    buf = load_checkpoint(run / "checkpoint.pt")["buffer"]
    assert buf["size"] > 300
    seen_k = set()
    for r in range(buf["size"]):
        (eid, t), (eid2, t2) = buf["obs"][r].tolist(), buf["next_obs"][r].tolist()
        k = round(t2 - t)
        seen_k.add(k)
        assert eid == eid2 and 1 <= k <= 3, (r, eid, t, eid2, t2)
        assert buf["discounts"][r].item() == pytest.approx(GAMMA**k)
        terminal = episode_length(int(eid)) == round(t2)
        assert buf["dones"][r].item() == float(terminal)
        base = sum(GAMMA**m * 10 * (t + m) for m in range(k))
        a0 = buf["actions"][r].item()
        low = base + a0
        high = low + sum(GAMMA**m * 2 for m in range(1, k))
        assert low - 1e-3 <= buf["rewards"][r].item() <= high + 1e-3
    assert seen_k == {1, 2, 3}


def test_summary_names_the_route_and_options(tmp_path):
    s = train(env_id="CartPole-v1", vector="sync", num_envs=2, hidden=(8,), batch_size=8,
              buffer_size=64, learning_starts=8, total_timesteps=64, eval_every=0,
              solve_episodes=1, eval_envs=1, progress=False, run_dir=str(tmp_path / "a"),
              dueling=True, prioritized=True, n_step=2).summary
    assert s["learner_route"].startswith("cpu-fused") and s["route_fallbacks"] == []
    assert s["config"]["dueling"] and s["config"]["prioritized"] and s["config"]["n_step"] == 2
    r = train(env_id="CartPole-v1", vector="sync", num_envs=2, hidden=(8,), batch_size=8,
              buffer_size=64, learning_starts=8, total_timesteps=64, eval_every=0,
              solve_episodes=1, eval_envs=1, progress=False, run_dir=str(tmp_path / "b"),
              learner="reference")
    assert r.summary["learner_route"].startswith("reference")
    assert r.summary["learner_steps"] > 0
    # the reference route's checkpoint holds the flat weights too: fastdqn eval reads it
    policy, _ = load_policy(str(tmp_path / "b" / "best.pt"))
    obs = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    assert (policy(obs) == r.policy(obs)).all()


class TwoHeads(torch.nn.Module):
    """A network of the user's own: not an MLP fastdqn knows."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh())
        self.head = torch.nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_a_network_of_your_own_trains_on_the_reference_route(tmp_path):
    module = TwoHeads()
    before = module.head.weight.detach().clone()
    result = train(env_id="CartPole-v1", vector="sync", num_envs=2, batch_size=8,
                   buffer_size=64, learning_starts=8, total_timesteps=64, eval_every=0,
                   solve_episodes=2, eval_envs=1, progress=False, run_dir=str(tmp_path / "r"),
                   q_network=module)
    assert result.summary["learner_route"].startswith("reference")
    assert not torch.equal(module.head.weight.detach(), before)  # the module itself learned
    obs = np.zeros((3, 4), np.float32)
    assert (result.policy(obs) == module(torch.from_numpy(obs)).argmax(1).numpy()).all()
    with pytest.raises(CheckpointError, match="holds a network of your own .TwoHeads."):
        load_policy(str(tmp_path / "r" / "best.pt"))


def old_checkpoint(tmp_path, with_buffer: bool) -> str:
    """A checkpoint as fastdqn 0.1 wrote it: no algo, no dueling, no discounts in the buffer."""
    run = tmp_path / "old"
    train(env_id="CartPole-v1", vector="sync", num_envs=2, hidden=(8,), batch_size=8,
          buffer_size=64, learning_starts=8, total_timesteps=32, eval_every=0,
          solve_episodes=1, eval_envs=1, progress=False, run_dir=str(run),
          save_buffer=with_buffer)
    state = load_checkpoint(run / "checkpoint.pt")
    del state["algo"]
    state["net"] = {k: state["net"][k] for k in ("in_dim", "n_actions", "hidden")}
    state["rng"].pop("per")
    if with_buffer:
        del state["buffer"]["discounts"]
    for k in [k for k in state["config"] if k in ("algo", "n_step", "prioritized", "per_alpha",
                                                 "per_beta", "per_eps", "dueling", "learner")]:
        del state["config"][k]
    save_checkpoint(run / "checkpoint.pt", state)
    return str(run / "checkpoint.pt")


def test_a_0_1_checkpoint_is_evaluated_and_resumed(tmp_path):
    path = old_checkpoint(tmp_path, with_buffer=False)
    policy, _ = load_policy(path)
    assert policy(np.zeros((2, 4), np.float32)).shape == (2,)
    r = train(env_id="CartPole-v1", vector="sync", num_envs=2, hidden=(8,), batch_size=8,
              buffer_size=64, learning_starts=8, total_timesteps=48, eval_every=0,
              solve_episodes=1, eval_envs=1, progress=False, run_dir=str(tmp_path / "old"),
              resume=True)
    assert r.summary["total_env_steps"] == 48


def test_a_0_1_checkpoint_with_its_buffer_gets_a_one_line_refusal(tmp_path):
    old_checkpoint(tmp_path, with_buffer=True)
    with pytest.raises(ConfigError, match=r"^.*checkpoint.pt holds a fastdqn 0.1 replay buffer "
                                          r"\(no discounts\); resume it without its buffer"):
        train(env_id="CartPole-v1", vector="sync", num_envs=2, hidden=(8,), batch_size=8,
              buffer_size=64, learning_starts=8, total_timesteps=48, eval_every=0,
              solve_episodes=1, eval_envs=1, progress=False, run_dir=str(tmp_path / "old"),
              resume=True, save_buffer=True)


def test_a_run_with_its_learner_beside_the_loop_is_the_in_line_run(tmp_path, monkeypatch):
    """With two usable cores the native blocks run beside the loop (route.py); the run is the
    one-core run bit for bit: its evaluations, its learner's parameters and its stats, with a
    64-row ring the envs overwrite while the blocks read it."""
    import fastdqn.algos.dqn.agent as agent_module

    def run(cores: int, name: str):
        monkeypatch.setattr(agent_module, "usable_cores", lambda: cores)
        r = train(env_id="CartPole-v1", vector="sync", num_envs=4, hidden=(16,), batch_size=16,
                  buffer_size=64, learning_starts=32, total_timesteps=1200, eval_every=400,
                  eval_episodes=2, solve_episodes=2, eval_envs=1, log_every=200, progress=False,
                  run_dir=str(tmp_path / name))
        ckpt = load_checkpoint(tmp_path / name / "checkpoint.pt")
        return r.summary, ckpt

    (inline, inline_ckpt), (beside, beside_ckpt) = run(1, "inline"), run(2, "beside")
    assert inline["learner_beside_loop"]["blocks"] == 0
    assert "one usable core" in inline["learner_beside_loop"]["why"]
    assert beside["learner_beside_loop"]["blocks"] > 50
    assert inline["learner_route"] == beside["learner_route"]
    assert inline["learner_steps"] == beside["learner_steps"] > 250
    strip = ("wall_time_s", "time_to_solve_s", "known_at_step")
    assert ([{k: v for k, v in e.items() if k not in strip} for e in inline["evals"]]
            == [{k: v for k, v in e.items() if k not in strip} for e in beside["evals"]])
    a, b = inline_ckpt["learner"], beside_ckpt["learner"]
    for key in ("params", "target"):
        assert torch.equal(a[key], b[key]), key
