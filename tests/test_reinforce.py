"""REINFORCE: returns-to-go and the loss by hand, the episode storage, the checkpoint round trip,
the CLI run-dir contract with resume and eval, and CartPole learned on its defaults."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from fastdqn.algos.reinforce import (
    EpisodeStorage,
    Reinforce,
    reinforce_loss,
    returns_to_go,
    sample_categorical,
)
from fastdqn.cli import main
from fastdqn.config.files import load_toml, make_config
from fastdqn.config.settings import ALGO_DEFAULTS, Config
from fastdqn.core.checkpoint import load_checkpoint, save_checkpoint
from fastdqn.errors import CheckpointError, ConfigError
from fastdqn.evaluation.policies import load_policy
from fastdqn.nets.policy import policy_network_of

# ---------------------------------------------------------------------------------------------
# Returns-to-go: three envs whose episodes end at different steps, gamma 0.5
#   env 0: an episode of rewards 1, 2 (ends at row 1), then one of 3, 4, 5 (ends at row 4)
#   env 1: an episode of 1, 1, 1, 1 (ends at row 3), then one in flight (7 at row 4)
#   env 2: an episode of 10 (ends at row 0), one of 2, 4 (ends at row 2), then one in flight
# ---------------------------------------------------------------------------------------------

REWARDS = np.array([[1, 1, 10],
                    [2, 1, 2],
                    [3, 1, 4],
                    [4, 1, 6],
                    [5, 7, 8]], dtype=np.float64)
DONES = np.array([[0, 0, 1],
                  [1, 0, 0],
                  [0, 0, 1],
                  [0, 1, 0],
                  [1, 0, 0]], dtype=bool)
FINISHED = np.array([[1, 1, 1],
                     [1, 1, 1],
                     [1, 1, 1],
                     [1, 1, 0],
                     [1, 0, 0]], dtype=bool)
"""The steps that belong to finished episodes (the rest are in flight)."""


def test_returns_to_go_by_hand_with_episodes_ending_at_different_steps() -> None:
    g = returns_to_go(REWARDS, DONES, 0.5)
    want = np.array([[1 + 0.5 * 2, 1 + 0.5 * (1 + 0.5 * (1 + 0.5 * 1)), 10],
                     [2, 1 + 0.5 * (1 + 0.5 * 1), 2 + 0.5 * 4],
                     [3 + 0.5 * (4 + 0.5 * 5), 1 + 0.5 * 1, 4],
                     [4 + 0.5 * 5, 1, np.nan],
                     [5, np.nan, np.nan]])
    assert want[0].tolist() == [2.0, 1.875, 10.0]
    assert want[2, 0] == 6.25
    np.testing.assert_allclose(g[FINISHED], want[FINISHED], rtol=0, atol=1e-12)


def test_returns_to_go_bootstraps_only_where_asked() -> None:
    """Env 1's episode was cut at row 3 with V(final obs) = 8: its returns gain gamma^k * 8."""
    boot = np.zeros_like(REWARDS)
    boot[3, 1] = 8.0
    g = returns_to_go(REWARDS, DONES, 0.5, boot)
    np.testing.assert_allclose(g[:4, 1], [1 + 0.5 * 2.75, 1 + 0.5 * 3.5, 1 + 0.5 * 5, 1 + 0.5 * 8])
    plain = returns_to_go(REWARDS, DONES, 0.5)
    others = FINISHED.copy()
    others[:, 1] = False
    np.testing.assert_array_equal(g[others], plain[others])


def test_returns_to_go_gamma_one_is_the_sum_of_the_rest_of_the_episode() -> None:
    g = returns_to_go(REWARDS, DONES, 1.0)
    assert g[0].tolist() == [3.0, 4.0, 10.0]
    assert g[2, 0] == 12.0


# ---------------------------------------------------------------------------------------------
# The episode storage: the same steps fed one vector step at a time
# ---------------------------------------------------------------------------------------------


def fill(store: EpisodeStorage, rows: int = 5) -> None:
    for t in range(rows):
        obs = np.array([[t, i] for i in range(3)], dtype=np.float32)
        store.add(obs, np.array([t % 2, 1, 0]), REWARDS[t], DONES[t], np.zeros(3))


def test_storage_batches_the_finished_episodes_and_carries_the_rest_over() -> None:
    store = EpisodeStorage(3, (2,), np.float32, capacity=2)  # grows twice on the way
    fill(store)
    assert store.finished == 5
    t, mask = store.finished_rows()
    assert t == 5
    np.testing.assert_array_equal(mask, FINISHED)
    np.testing.assert_array_equal(store.obs[:t][mask][:, 0], np.nonzero(FINISHED)[0])
    store.drop_finished()
    # env 1's in-flight step (row 4) and env 2's (rows 3, 4) now start their columns
    np.testing.assert_array_equal(store.pos, [0, 1, 2])
    assert store.finished == 0 and store.ends.tolist() == [0, 0, 0]
    assert store.obs[0, 1].tolist() == [4, 1] and store.rewards[0, 1] == 7
    assert store.obs[:2, 2, 0].tolist() == [3, 4] and store.rewards[:2, 2].tolist() == [6, 8]


def test_storage_state_keeps_finished_episodes_whatever_the_number_of_envs() -> None:
    store = EpisodeStorage(3, (2,), np.float32)
    fill(store)
    state = store.state_dict()
    assert state["finished"] == 5 and len(state["actions"]) == int(FINISHED.sum())
    other = EpisodeStorage(2, (2,), np.float32)  # a resumed run may use other --num-envs
    other.load_state_dict(state, "ckpt", n_actions=2)
    assert other.finished == 5
    t, mask = other.finished_rows()
    g_saved = returns_to_go(other.rewards[:t], other.dones[:t], 0.5)[mask]
    g_orig = returns_to_go(REWARDS, DONES, 0.5).T[FINISHED.T]
    np.testing.assert_allclose(np.sort(g_saved), np.sort(g_orig))
    bad = {**state, "finished": 4}
    with pytest.raises(CheckpointError, match="inconsistent"):
        other.load_state_dict(bad, "ckpt", n_actions=2)
    bad = {**state, "actions": state["actions"] + 5}
    with pytest.raises(CheckpointError, match="inconsistent"):
        other.load_state_dict(bad, "ckpt", n_actions=2)


# ---------------------------------------------------------------------------------------------
# The loss, by hand: two steps, two actions; pi(.|s0) = (1/2, 1/2), pi(.|s1) = (3/4, 1/4)
# ---------------------------------------------------------------------------------------------

LN2 = math.log(2)
ENTROPY = (LN2 + -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))) / 2


def loss_case(baseline: str, entropy_coef: float = 0.0, values=None):
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]], dtype=torch.float64,
                          requires_grad=True)
    actions = torch.tensor([0, 1])
    returns = torch.tensor([2.0, 4.0], dtype=torch.float64)
    v = None if values is None else torch.tensor(values, dtype=torch.float64, requires_grad=True)
    terms = reinforce_loss(logits, actions, returns, baseline, entropy_coef, v)
    return terms, logits, v


def test_loss_without_baseline_by_hand() -> None:
    # -(2 ln 1/2 + 4 ln 1/4) / 2 = 5 ln 2
    terms, logits, _ = loss_case("none")
    assert terms.policy_loss.item() == pytest.approx(5 * LN2)
    assert terms.entropy.item() == pytest.approx(ENTROPY)
    assert terms.value_loss.item() == 0.0
    terms.loss.backward()
    # d loss / d logits = -(onehot(a) - pi) * G / M: the taken action's logit rises with G > 0
    np.testing.assert_allclose(logits.grad.numpy(), [[-0.5, 0.5], [1.5, -1.5]])


def test_loss_with_normalized_returns_by_hand() -> None:
    # returns 2, 4: mean 3, population std 1, so advantages -1, +1: -(ln 2 - 2 ln 2) / 2
    terms, _, _ = loss_case("normalize")
    assert terms.policy_loss.item() == pytest.approx(LN2 / 2)


def test_loss_with_value_baseline_by_hand() -> None:
    # V = 1, 5: advantages 1, -1: -(-ln 2 + 2 ln 2) / 2; value loss ((1-2)^2 + (5-4)^2) / 2
    terms, logits, v = loss_case("value", values=[1.0, 5.0])
    assert terms.policy_loss.item() == pytest.approx(-LN2 / 2)
    assert terms.value_loss.item() == pytest.approx(1.0)
    assert terms.loss.item() == pytest.approx(-LN2 / 2 + 1.0)
    terms.loss.backward()
    # the policy term does not move V: its gradient is the squared error's alone, 2(V-G)/M
    np.testing.assert_allclose(v.grad.numpy(), [-1.0, 1.0])


def test_entropy_bonus_lowers_the_loss_by_coef_times_entropy() -> None:
    plain, _, _ = loss_case("none")
    bonus, logits, _ = loss_case("none", entropy_coef=0.1)
    assert bonus.loss.item() == pytest.approx(5 * LN2 - 0.1 * ENTROPY)
    bonus.loss.backward()
    # the bonus pushes the peaked row (3/4, 1/4) toward uniform: its first logit's gradient
    # is larger than without the bonus (gradient descent lowers that logit more)
    assert logits.grad[1, 0].item() > 1.5


def test_sampled_actions_follow_the_policy() -> None:
    """200 000 draws per row: each frequency within 5 standard errors of its probability, and an
    action of probability 0 never drawn."""
    probs = torch.tensor([[0.1, 0.2, 0.7, 0.0], [0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25]])
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    draws = sample_categorical(probs.repeat(n, 1), gen).view(n, 3)
    for row in range(3):
        freq = torch.bincount(draws[:, row], minlength=4).double() / n
        se = (probs[row].double() * (1 - probs[row].double()) / n).sqrt()
        assert ((freq - probs[row]).abs() <= 5 * se + 1e-12).all(), (row, freq)
        assert (freq[probs[row] == 0] == 0).all()


def test_policy_network_is_its_sequential_layers() -> None:
    """The functional forward pass computes what the registered layers compute."""
    net = policy_network_of("x", {"kind": "policy", "in_dim": 3, "n_actions": 2,
                                  "hidden": [5, 4], "value": True})
    x = torch.randn(7, 3)
    torch.testing.assert_close(net(x), net.pi(x))
    torch.testing.assert_close(net.value(x), net.v(x).squeeze(1))


# ---------------------------------------------------------------------------------------------
# The agent: checkpoint round trip
# ---------------------------------------------------------------------------------------------


def make_agent(**kw) -> Reinforce:
    cfg = make_config(algo="reinforce", num_envs=3, reinforce_episodes=2, **kw)
    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    return Reinforce(cfg, obs_space, gym.spaces.Discrete(2), torch.device("cpu"))


@pytest.mark.parametrize("baseline", ["none", "value"])
def test_agent_state_round_trip_through_a_file(baseline: str, tmp_path: Path) -> None:
    """Weights, Adam, the sampler and the finished episodes of the batch all come back: the
    next actions and the next update are the same as if nothing had happened."""
    agent = make_agent(reinforce_baseline=baseline)
    fill(agent.store)
    agent.update()
    fill(agent.store, 3)  # finished episodes waiting for the next update
    save_checkpoint(tmp_path / "c.pt", agent.state_dict(with_buffer=False))
    state = load_checkpoint(tmp_path / "c.pt")
    other = make_agent(reinforce_baseline=baseline, seed=7)
    other.check_checkpoint(state, "ckpt")
    other.load_state_dict(state)
    for p, q in zip(agent.net.parameters(), other.net.parameters()):
        assert torch.equal(p, q)
    assert other.updates == 1 and other.store.finished == agent.store.finished
    obs = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    np.testing.assert_array_equal(agent.act(obs), other.act(obs))  # same sampler state
    agent.update()
    other.update()
    for p, q in zip(agent.net.parameters(), other.net.parameters()):
        torch.testing.assert_close(p, q)


def test_update_on_episodes_ending_at_different_steps_by_hand() -> None:
    """The agent's own update on the three envs above: a linear policy with zero weights is
    uniform over its 2 actions, so log pi = -ln 2 at every step and, without a baseline, the
    policy loss is ln 2 * mean G over the 12 finished steps (the in-flight ones left out).
    G by hand (gamma 0.5): env 0: 2, 2, 6.25, 6.5, 5; env 1: 1.875, 1.75, 1.5, 1; env 2: 10, 4, 4.
    d loss / d bias_0 = -(1/12) sum_t (1[a_t = 0] - 1/2) G_t, actions 0,1,0,1,0 / 1 / 0:
    -(0.5 (2 + 6.25 + 5) - 0.5 (2 + 6.5) - 0.5 * 6.125 + 0.5 * 18) / 12 = -8.3125 / 12 < 0,
    so Adam's first step (lr times the gradient's sign) raises bias_0 and lowers bias_1 by lr."""
    agent = make_agent(reinforce_baseline="none", policy_hidden="", gamma=0.5, lr=0.01,
                       max_grad_norm=0.0)
    with torch.no_grad():
        for p in agent.net.parameters():
            p.zero_()
    fill(agent.store)
    agent.update()
    stats = agent.pop_stats()
    mean_g = 45.875 / 12
    assert stats["losses/mean_return_to_go"] == pytest.approx(mean_g)
    assert stats["losses/policy_loss"] == pytest.approx(LN2 * mean_g, rel=1e-6)
    assert stats["losses/entropy"] == pytest.approx(LN2, rel=1e-6)
    bias = agent.net.pi[0].bias.detach()
    torch.testing.assert_close(bias, torch.tensor([0.01, -0.01]), rtol=0, atol=1e-6)
    assert agent.store.finished == 0 and agent.store.pos.tolist() == [0, 1, 2]


def test_checkpoint_of_another_network_is_refused() -> None:
    state = make_agent(policy_hidden=(8,)).state_dict(with_buffer=False)
    with pytest.raises(CheckpointError, match="--policy-hidden 8"):
        make_agent(policy_hidden=(16,)).check_checkpoint(state, "ckpt")
    with pytest.raises(CheckpointError, match="--reinforce-baseline"):
        make_agent(policy_hidden=(8,), reinforce_baseline="none").check_checkpoint(state, "ckpt")


def test_policy_spec_sizes_are_checked_before_building() -> None:
    spec = {"kind": "policy", "in_dim": 8, "n_actions": 4, "hidden": [2**20, 2**20], "value": True}
    with pytest.raises(CheckpointError, match="over the limit"):
        policy_network_of("ckpt", spec)
    with pytest.raises(CheckpointError, match="hidden layers"):
        policy_network_of("ckpt", {**spec, "hidden": [1] * 1000})
    for bad in ({**spec, "in_dim": -1}, {**spec, "hidden": ["64"]}, {**spec, "value": 1}, []):
        with pytest.raises(CheckpointError, match="lacks fields"):
            policy_network_of("ckpt", bad)
    net = policy_network_of("ckpt", {**spec, "hidden": []})
    assert net(torch.zeros(5, 8)).shape == (5, 4) and net.value(torch.zeros(5, 8)).shape == (5,)


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def test_algo_defaults_apply_only_where_nothing_set_the_field(tmp_path: Path) -> None:
    assert make_config(algo="reinforce").lr == ALGO_DEFAULTS["reinforce"]["lr"]
    assert make_config(algo="reinforce", lr=0.05).lr == 0.05
    assert make_config().lr == Config.lr
    toml = tmp_path / "x.toml"
    toml.write_text('algo = "reinforce"\nlr = 0.02\n')
    assert make_config(str(toml)).lr == 0.02
    toml.write_text('algo = "reinforce"\n')
    assert make_config(str(toml)).lr == ALGO_DEFAULTS["reinforce"]["lr"]


def test_help_names_the_per_algo_default(capsys) -> None:
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"reinforce: {ALGO_DEFAULTS['reinforce']['lr']}" in text
    assert "--reinforce-baseline" in text and "--policy-hidden" in text


@pytest.mark.parametrize("value", ["", "none", "None"])
def test_empty_policy_hidden_is_a_linear_policy(value: str) -> None:
    cfg = make_config(algo="reinforce", policy_hidden=value)
    assert cfg.policy_hidden == () and cfg.to_dict()["policy_hidden"] == []


@pytest.mark.parametrize("kw, flag", [
    ({"reinforce_baseline": "mean"}, "--reinforce-baseline"),
    ({"reinforce_episodes": 0}, "--reinforce-episodes"),
    ({"entropy_coef": -0.1}, "--entropy-coef"),
    ({"entropy_coef": float("nan")}, "--entropy-coef"),
    ({"policy_hidden": "64,0"}, "--policy-hidden"),
])
def test_bad_settings_are_one_line_errors(kw: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        make_config(algo="reinforce", **kw)


def test_notebook_preset_is_the_notebooks_linear_policy() -> None:
    p = load_toml("reinforce-notebook")
    assert p["algo"] == "reinforce" and p["env_id"] == "LunarLander-v3"
    assert p["policy_hidden"] == () and p["lr"] == 1e-3 and p["gamma"] == 0.99
    assert p["reinforce_baseline"] == "none" and p["entropy_coef"] == 0.0
    assert make_config("reinforce-notebook").lr == 1e-3


# ---------------------------------------------------------------------------------------------
# End to end through the CLI: the run-dir contract, --resume, eval
# ---------------------------------------------------------------------------------------------

TINY = ["train", "--algo", "reinforce", "--env", "CartPole-v1", "--num-envs", "4",
        "--vector", "sync", "--reinforce-episodes", "4", "--eval-every", "1000",
        "--eval-episodes", "3", "--solve-episodes", "5", "--eval-envs", "4", "--seed", "3",
        "--no-progress"]


def test_cli_run_dir_contract_resume_and_eval(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main([*TINY, "--total-timesteps", "3000", "--run-dir", str(run_dir)]) == 0
    for name in ["checkpoint.pt", "best.pt", "summary.json", "returns.png"]:
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["algo"] == "reinforce" and s["total_env_steps"] == 3000
    assert s["final_eval"]["episodes"] == 5 and s["learner_steps"] > 0
    assert s["config"]["lr"] == ALGO_DEFAULTS["reinforce"]["lr"]
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["algo"] == "reinforce" and ckpt["net"]["kind"] == "policy"
    first_updates = s["learner_steps"]

    capsys.readouterr()
    assert main(["train", "--resume", "--run-dir", str(run_dir), "--total-timesteps", "5000",
                 "--no-progress"]) == 0
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["total_env_steps"] == 5000 and s["learner_steps"] > first_updates
    assert s["config"]["lr"] == ALGO_DEFAULTS["reinforce"]["lr"]  # the run's, not DQN's

    capsys.readouterr()
    assert main(["eval", str(run_dir / "checkpoint.pt"), "--episodes", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["episodes"] == 4 and out["mean"] > 0
    policy, _ = load_policy(str(run_dir / "best.pt"))
    obs = np.zeros((2, 4), dtype=np.float32)
    assert policy(obs).shape == (2,)


def test_eval_refuses_a_checkpoint_with_damaged_weights(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    assert main([*TINY, "--total-timesteps", "1000", "--eval-every", "0",
                 "--run-dir", str(run_dir)]) == 0
    state = load_checkpoint(run_dir / "checkpoint.pt")
    weights = state["learner"]["weights"]
    weights["pi.0.weight"] = weights["pi.0.weight"][:, :3].clone()  # dense, of the wrong shape
    save_checkpoint(tmp_path / "bad.pt", {k: v for k, v in state.items() if k != "format"})
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "bad.pt")]) == 2
    assert "do not match its network shape" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------

CARTPOLE_BUDGET = 150_000
"""Env steps. This setting (defaults, 16 sync envs, evaluations every 5 000 steps) solved CartPole-v1
at 40 000, 20 000 and 40 000 steps at seeds 1, 2, 3 (3-7 s each on the loaded 2-core CPU)."""


@pytest.mark.slow
def test_defaults_solve_cartpole(tmp_path: Path) -> None:
    from fastdqn import train

    result = train(algo="reinforce", env_id="CartPole-v1", seed=1, device="cpu", vector="sync",
                   total_timesteps=CARTPOLE_BUDGET, eval_every=5000, run_dir=str(tmp_path / "r"),
                   progress=False)
    s = result.summary
    assert s["solved"], f"not solved in {CARTPOLE_BUDGET} steps; evals: {s['evals']}"
    assert s["final_eval"]["episodes"] == 100 and s["final_eval"]["mean"] >= 475
    assert s["steps_to_solve"] <= CARTPOLE_BUDGET
