"""PQN: Q(lambda) targets by hand, the bootstrap of every step through real envs, the flat
RAdam step against torch's per-tensor one, per-algorithm defaults, the run-dir contract with
--resume and `fastdqn eval`, and CartPole solved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_counting_env

from fastdqn import make_config, train
from fastdqn.algos.pqn import PQN, flatten_parameters, q_lambda_targets, successor_values
from fastdqn.cli import build_parser, main
from fastdqn.config.files import load_toml
from fastdqn.envs.autoreset import real_next_obs
from fastdqn.envs.backends import make_vector_env
from fastdqn.errors import CheckpointError, ConfigError
from fastdqn.evaluation.policies import load_policy
from fastdqn.nets.layernorm import LayerNormQNetwork

# ---------------------------------------------------------------------------------------------
# Q(lambda) targets
# ---------------------------------------------------------------------------------------------


def test_q_lambda_targets_by_hand() -> None:
    """gamma = lambda = 0.5 (exact in float32); T = 4 steps, 4 envs, each column a case:

    G_t = r_t + g (1 - term_t) [l C + (1 - l) V_t'], C = G_{t+1}, or V_t' at an episode end or
    the rollout's last step; V_t' = next_values[t] (99 marks a value that must not be used).
    """
    rewards = torch.tensor([[1., 1., 0., 0.],
                            [2., 1., 0., 0.],
                            [3., 1., 5., 0.],
                            [4., 1., 0., 2.]])
    next_values = torch.tensor([[10., 4., 2., 0.],
                                [99., 8., 4., 0.],
                                [20., 6., 99., 0.],
                                [30., 99., 6., 12.]])
    terminated = torch.tensor([[0, 0, 0, 0],
                               [1, 0, 0, 0],
                               [0, 0, 1, 0],
                               [0, 1, 0, 0]], dtype=torch.bool)
    truncated = torch.tensor([[0, 0, 0, 0],
                              [0, 1, 0, 0],
                              [0, 0, 1, 0],
                              [0, 0, 0, 1]], dtype=torch.bool)
    # env 0, terminated at t=1:  G3 = 4 + .5(.5*30 + .5*30) = 19 (last step: C = V)
    #   G2 = 3 + .5(.5*19 + .5*20) = 12.75;  G1 = 2 (terminated);  G0 = 1 + .5(.5*2 + .5*10) = 4
    # env 1, truncated at t=1 (final obs worth 8), terminated at t=3:  G3 = 1
    #   G2 = 1 + .5(.5*1 + .5*6) = 2.75;  G1 = 1 + .5(.5*8 + .5*8) = 5 (cut: not G2)
    #   G0 = 1 + .5(.5*5 + .5*4) = 3.25
    # env 2, terminated and truncated at t=2 (termination wins):  G3 = 0 + .5*6 = 3
    #   G2 = 5;  G1 = .5(.5*5 + .5*4) = 2.25;  G0 = .5(.5*2.25 + .5*2) = 1.0625
    # env 3, truncated at the last step (final obs worth 12):  G3 = 2 + .5*12 = 8
    #   G2 = .5(.5*8) = 2;  G1 = .5(.5*2) = .5;  G0 = .5(.5*.5) = .125
    want = torch.tensor([[4., 3.25, 1.0625, 0.125],
                         [2., 5., 2.25, 0.5],
                         [12.75, 2.75, 5., 2.],
                         [19., 1., 3., 8.]])
    got = q_lambda_targets(rewards, next_values, terminated, truncated, gamma=0.5, lam=0.5)
    assert torch.equal(got, want)


def forward_view(rewards, next_values, terminated, ends, gamma, lam) -> np.ndarray:
    """The lambda-return from its definition: (1 - l) sum_n l^(n-1) G^(n) + l^(N-1) G^(N), N the
    steps left in the episode or rollout, G^(n) the n-step return bootstrapped with max-Q."""
    T, n_envs = rewards.shape
    out = np.zeros((T, n_envs))
    for i in range(n_envs):
        for t in range(T):
            stop = next((k for k in range(t, T) if ends[k, i]), T - 1)
            horizon = stop - t + 1
            g = []
            for n in range(1, horizon + 1):
                last = t + n - 1
                ret = sum(gamma ** k * rewards[t + k, i] for k in range(n))
                g.append(ret + gamma ** n * (0.0 if terminated[last, i] else next_values[last, i]))
            out[t, i] = ((1 - lam) * sum(lam ** (n - 1) * g[n - 1] for n in range(1, horizon))
                         + lam ** (horizon - 1) * g[-1])
    return out


def test_q_lambda_targets_equal_the_forward_view_on_random_rollouts() -> None:
    rng = np.random.default_rng(0)
    for lam in (0.0, 0.65, 1.0):
        rewards = rng.normal(size=(12, 5))
        next_values = rng.normal(size=(12, 5))
        terminated = rng.random((12, 5)) < 0.15
        truncated = rng.random((12, 5)) < 0.15
        got = q_lambda_targets(torch.tensor(rewards), torch.tensor(next_values),
                               torch.tensor(terminated), torch.tensor(truncated), 0.9, lam)
        want = forward_view(rewards, next_values, terminated, terminated | truncated, 0.9, lam)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_successor_values_take_the_final_obs_only_where_truncated() -> None:
    values = torch.tensor([[1., 2.], [3., 4.], [5., 6.]])
    final = torch.tensor([[-1., -2.], [-3., -4.], [-5., -6.]])
    truncated = torch.tensor([[0, 1], [0, 0], [1, 0]], dtype=torch.bool)
    got = successor_values(values, torch.tensor([7., 8.]), final, truncated)
    assert torch.equal(got, torch.tensor([[3., -2.], [5., 6.], [-5., 8.]]))


def test_agent_bootstraps_every_step_from_its_true_successor() -> None:
    """Through real SAME_STEP vector envs with terminations and truncations inside the rollout:
    each non-terminated step's bootstrap is max-Q of the observation that truly followed it
    (the final one of a truncated episode, not the next episode's first)."""
    cfg = make_config(algo="pqn", env_id="unused", num_envs=3, pqn_rollout=9, device="cpu")
    envs = make_vector_env("unused", 3, "sync", make_counting_env)
    agent = PQN(cfg, envs.single_observation_space, envs.single_action_space,
                torch.device("cpu"))
    obs, _ = envs.reset(seed=[0, 1, 2])
    truth = np.zeros((9, 3), dtype=np.float32)
    for t in range(9):
        actions = agent.act(t, obs, eps=0.5)
        nxt, rewards, terminated, truncated, infos = envs.step(actions)
        truth[t] = agent.max_q(real_next_obs(nxt, infos, np.empty_like(nxt))).numpy()
        agent.store(t, rewards, terminated, truncated, nxt, infos)
        obs = nxt
    envs.close()
    assert agent.terminated[:-1].any() and agent.truncated[:-1].any()
    got = successor_values(agent.values, agent.max_q(obs), agent.final_values, agent.truncated)
    live = ~agent.terminated
    np.testing.assert_allclose(got[live].numpy(), truth[live.numpy()], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The update: one flat RAdam step equals torch's per-tensor RAdam with clipping
# ---------------------------------------------------------------------------------------------


def test_flat_parameters_update_like_per_tensor_radam(gen) -> None:
    net = LayerNormQNetwork(4, 3, (16, 8), generator=torch.Generator().manual_seed(0))
    ref = LayerNormQNetwork(4, 3, (16, 8), generator=torch.Generator().manual_seed(0))
    flat = flatten_parameters(net)
    assert all(p.grad.data_ptr() >= flat.grad.data_ptr() for p in net.parameters())
    opt = torch.optim.RAdam([flat], lr=1e-2)
    ref_opt = torch.optim.RAdam(ref.parameters(), lr=1e-2)
    for _ in range(8):
        x, target = torch.randn(32, 4, generator=gen), torch.randn(32, 3, generator=gen) * 50
        flat.grad.zero_()
        ((net(x) - target) ** 2).mean().backward()
        torch.nn.utils.clip_grad_norm_(flat, 1.0)
        opt.step()
        ref_opt.zero_grad()
        ((ref(x) - target) ** 2).mean().backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # the module still reads the flat storage the optimizer writes
    with torch.no_grad():
        flat.zero_()
    assert not net(torch.randn(2, 4)).any()


def test_anneal_lr_uses_the_rate_at_the_rollout_start() -> None:
    from fastdqn.algos.contract import Counters

    cfg = make_config(algo="pqn", num_envs=2, pqn_rollout=4, total_timesteps=1000, lr=0.01,
                      pqn_anneal_lr=True)
    agent = PQN(cfg, *_spaces(), torch.device("cpu"))
    agent.learn(np.zeros((2, 4), dtype=np.float32), 4, Counters(step=258))  # rollout from 250
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.75)
    agent.learn(np.zeros((2, 4), dtype=np.float32), 2, Counters(step=1004))  # from 1000
    assert agent.optimizer.param_groups[0]["lr"] == 0.0


def test_a_resume_uses_its_own_learning_rate() -> None:
    cfg = make_config(algo="pqn", num_envs=2, pqn_rollout=4)
    saved = PQN(cfg, *_spaces(), torch.device("cpu")).state_dict(False)
    resumed = PQN(make_config(algo="pqn", num_envs=2, pqn_rollout=4, lr=3e-5), *_spaces(),
                  torch.device("cpu"))
    resumed.load_state_dict(saved)
    assert resumed.optimizer.param_groups[0]["lr"] == 3e-5


def test_layernorm_network_shape_and_count() -> None:
    net = LayerNormQNetwork(4, 2, (120, 84))
    kinds = [type(m).__name__ for m in net.body]
    assert kinds == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU", "Linear"]
    assert LayerNormQNetwork.count_params(4, 2, (120, 84)) == sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------------------------
# Settings: per-algorithm defaults, explicit settings win, foreign settings refused
# ---------------------------------------------------------------------------------------------


def test_pqn_defaults_apply_only_where_unset(tmp_path) -> None:
    from fastdqn.config.settings import ALGO_DEFAULTS

    dqn, pqn = make_config(), make_config(algo="pqn")
    for name, value in ALGO_DEFAULTS["pqn"].items():
        assert getattr(pqn, name) == value and getattr(dqn, name) != value, name
    assert make_config(algo="pqn", lr=5e-4, eps_decay_steps=50_000).lr == 5e-4
    assert make_config(algo="pqn", lr=5e-4, eps_decay_steps=50_000).eps_decay_steps == 50_000
    toml = tmp_path / "mine.toml"
    toml.write_text('algo = "pqn"\nlr = 0.002\n')
    cfg = make_config(str(toml))
    assert cfg.lr == 0.002 and cfg.loss == ALGO_DEFAULTS["pqn"]["loss"]
    args = build_parser().parse_args(["train", "--algo", "pqn", "--loss", "huber"])
    assert make_config(algo=args.algo, loss=args.loss).loss == "huber"


def test_help_shows_the_pqn_defaults(capsys) -> None:
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: huber; pqn: mse)" in text


@pytest.mark.parametrize("flags, message", [
    ({"dueling": True}, "--dueling applies to --algo dqn only, not --algo pqn"),
    ({"n_step": 3}, "--n-step applies to --algo dqn only"),
    ({"exploration": "boltzmann"}, "--exploration applies to --algo dqn only"),
    ({"algo": "dqn", "pqn_lambda": 0.9}, "--pqn-lambda applies to --algo pqn only"),
    ({"network": "rbf"}, "--network applies to --algo dqn only"),
    ({"algo": "reinforce", "rbf_features": 200}, "--rbf-features applies to --algo dqn only"),
    ({"pqn_minibatches": 0}, "--pqn-minibatches must be >= 1"),
    ({"pqn_lambda": 1.5}, "--pqn-lambda must be in [0, 1]"),
])
def test_settings_that_do_not_apply_are_refused(flags, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_config(**{"algo": "pqn", **flags})


def test_q_network_is_refused_for_pqn(tmp_path) -> None:
    with pytest.raises(ConfigError, match="q_network trains with --algo dqn only"):
        train(algo="pqn", env_id="CartPole-v1", run_dir=str(tmp_path / "r"),
              q_network=torch.nn.Linear(4, 2))
    assert not (tmp_path / "r").exists()


def test_preset_is_cleanrl_classic_control() -> None:
    preset = load_toml("pqn")
    assert preset["algo"] == "pqn" and preset["pqn_lambda"] == 0.65
    make_config("pqn")


# ---------------------------------------------------------------------------------------------
# The run-dir contract through the CLI, --resume, fastdqn eval
# ---------------------------------------------------------------------------------------------

SHORT = ["--algo", "pqn", "--env", "CartPole-v1", "--num-envs", "4", "--vector", "sync",
         "--pqn-rollout", "16", "--total-timesteps", "3000", "--eval-every", "1000",
         "--eval-episodes", "3", "--solve-episodes", "5", "--eval-envs", "4", "--seed", "3",
         "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def pqn_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pqn") / "run"
    assert main(["train", *SHORT, "--run-dir", str(d)]) == 0
    return d


def test_cli_run_writes_the_contract(pqn_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in ["checkpoint.pt", "best.pt", "returns.png", "summary.json"]:
        assert (pqn_run / name).is_file(), name
    s = json.loads((pqn_run / "summary.json").read_text())
    assert s["algo"] == "pqn" and s["total_env_steps"] == 3000
    assert s["final_eval"]["episodes"] == 5
    assert s["config"]["lr"] == 1e-3  # the pqn default: --lr was not given
    assert s["learner_route"] == "pqn-torch-cpu"
    # 3000 steps = 46 rollouts of 16 x 4 and a last one of 14 x 4; 4 epochs x 4 minibatches each
    assert s["learner_steps"] == 47 * 16
    ckpt = torch.load(pqn_run / "checkpoint.pt", weights_only=True)
    assert ckpt["algo"] == "pqn" and ckpt["net"]["kind"] == "layernorm_mlp"
    acc = EventAccumulator(str(pqn_run))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ["charts/episodic_return", "charts/epsilon", "losses/td_loss", "losses/q_values",
                "time/learn_us_per_iter", "time/act_us_per_iter", "eval/mean_return"]:
        assert tag in tags, tag


def test_resume_continues_and_restores_the_agent(pqn_run: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "resumed"
    shutil.copytree(pqn_run, d)
    before = torch.load(d / "checkpoint.pt", weights_only=True)
    cfg = make_config(**before["config"])
    agent = PQN(cfg, *_spaces(), torch.device("cpu"))
    agent.load_state_dict(before)
    torch.testing.assert_close(agent.net.state_dict(), before["learner"]["online"])
    assert agent.optimizer.state_dict()["state"][0]["step"] == before["learner"]["steps"]
    assert torch.equal(agent.act_gen.get_state(), before["rng"]["act"])
    assert main(["train", "--resume", "--run-dir", str(d), "--total-timesteps", "5000",
                 "--no-progress"]) == 0
    after = torch.load(d / "checkpoint.pt", weights_only=True)
    assert after["counters"]["step"] == 5000
    assert after["learner"]["steps"] > before["learner"]["steps"]
    assert after["config"]["pqn_rollout"] == 16  # settings come from the checkpoint
    assert json.loads((d / "summary.json").read_text())["algo"] == "pqn"


def _spaces():
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    return env.observation_space, env.action_space


def test_resume_with_other_hidden_layers_is_refused(pqn_run: Path, tmp_path: Path,
                                                    capsys) -> None:
    import shutil

    d = tmp_path / "r"
    shutil.copytree(pqn_run, d)
    assert main(["train", "--resume", "--run-dir", str(d), "--hidden", "64",
                 "--no-progress"]) == 2
    assert "has hidden layers [128, 128], not [64]; pass --hidden to match" in capsys.readouterr().err


def test_eval_reads_the_checkpoint(pqn_run: Path, capsys) -> None:
    assert main(["eval", str(pqn_run / "best.pt"), "--episodes", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["episodes"] == 3
    policy, _ = load_policy(str(pqn_run / "checkpoint.pt"))
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    ckpt = torch.load(pqn_run / "checkpoint.pt", weights_only=True)
    net = LayerNormQNetwork(4, 2, (128, 128))
    net.load_state_dict(ckpt["learner"]["online"])
    assert np.array_equal(policy(obs), net(torch.from_numpy(obs)).argmax(1).numpy())


@pytest.mark.parametrize("hidden", [[10**9, 10**9], [0, 128], [128, -1], ["x", 1]])
def test_eval_refuses_damaged_sizes_before_allocating(pqn_run: Path, tmp_path: Path,
                                                      hidden) -> None:
    state = torch.load(pqn_run / "checkpoint.pt", weights_only=True)
    state["net"]["hidden"] = hidden
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="damaged"):
        load_policy(str(path))


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------

BUDGET_STEPS = 200_000


@pytest.mark.slow
def test_pqn_solves_cartpole(tmp_path) -> None:
    """Greedy mean >= 475 over the confirming 100 episodes within BUDGET_STEPS env steps, on the
    PQN defaults. Seed 1 solves at 60 416 steps: about 20 s of CPU on this 2-core machine (28 s
    of wall time with other jobs running); seeds 2 and 3 took 20 480 and 90 112 steps."""
    result = train(algo="pqn", env_id="CartPole-v1", num_envs=16, vector="sync", seed=1,
                   device="cpu", total_timesteps=BUDGET_STEPS, eval_every=5000,
                   run_dir=str(tmp_path / "pqn"), progress=False)
    s = result.summary
    assert s["solved"], f"not solved in {BUDGET_STEPS} steps; evals: {s['evals']}"
    assert s["final_eval"]["episodes"] == 100 and s["final_eval"]["mean"] >= 475
    from fastdqn import run_episodes

    assert run_episodes(result.policy, "CartPole-v1", 5, seed=12345).mean >= 400
