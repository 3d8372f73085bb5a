"""Greedy evaluation: per-episode seeds independent of num_envs; the Policy object."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import set_layers

from fastdqn.evaluate import EVAL_SEED_OFFSET, EvalResult, Policy, eval_seed, run_episodes
from fastdqn.networks import MLP


class CountingPolicy:
    """A deterministic, mediocre CartPole policy that counts the observations it is given."""

    def __init__(self) -> None:
        self.rows = 0
        self.calls = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        assert obs.ndim == 2 and obs.shape[1] == 4
        self.rows += obs.shape[0]
        self.calls += 1
        # angular velocity only: balances for ~150-250 steps, different on every seed
        return (obs[:, 3] > 0).astype(np.int64)


def play_one(policy, seed: int) -> tuple[float, int]:
    """Reference: one CartPole episode reset with `seed`, stepped one obs at a time."""
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    total, length = 0.0, 0
    while True:
        obs, r, term, trunc, _ = env.step(int(policy(obs[None])[0]))
        total += float(r)
        length += 1
        if term or trunc:
            env.close()
            return total, length


@pytest.fixture(scope="module")
def results():
    out = {}
    for n in (1, 3, 8):
        policy = CountingPolicy()
        out[n] = (run_episodes(policy, "CartPole-v1", 6, seed=100, num_envs=n), policy)
    return out


def test_same_result_for_any_num_envs(results):
    ref = results[1][0]
    for n in (3, 8):
        res = results[n][0]
        assert res.returns == ref.returns
        assert res.lengths == ref.lengths
        assert (res.mean, res.std, res.min, res.max) == (ref.mean, ref.std, ref.min, ref.max)


def test_episode_j_uses_seed_plus_j(results):
    res = results[8][0]
    expected = [play_one(CountingPolicy(), 100 + j) for j in range(6)]
    assert res.returns == [r for r, _ in expected]
    assert res.lengths == [n for _, n in expected]
    assert len(set(res.lengths)) > 1  # distinct seeds really give distinct episodes


def test_counts_and_statistics(results):
    for res, policy in results.values():
        assert isinstance(res, EvalResult)
        assert res.episodes == 6
        assert len(res.returns) == len(res.lengths) == 6
        assert sum(res.lengths) == policy.rows  # every policy row was one env step
        assert res.returns == [float(n_) for n_ in res.lengths]  # CartPole pays 1 per step
        r = np.array(res.returns)
        assert res.mean == pytest.approx(r.mean())
        assert res.std == pytest.approx(r.std())
        assert (res.min, res.max) == (r.min(), r.max())
    # stepping 8 envs together needs fewer policy calls than stepping one
    assert results[8][1].calls < results[1][1].calls


def test_more_envs_than_episodes():
    res = run_episodes(CountingPolicy(), "CartPole-v1", 2, seed=7, num_envs=16)
    ref = run_episodes(CountingPolicy(), "CartPole-v1", 2, seed=7, num_envs=1)
    assert res.returns == ref.returns
    assert res.episodes == 2


def test_to_dict():
    res = EvalResult(1.0, 0.5, 0.5, 1.5, 2, [0.5, 1.5], [3, 4])
    assert res.to_dict() == {"mean": 1.0, "std": 0.5, "min": 0.5, "max": 1.5, "episodes": 2}
    assert res.to_dict(with_returns=True)["lengths"] == [3, 4]


def test_eval_seed_disjoint_from_training_seeds():
    assert eval_seed(3) == 3 + EVAL_SEED_OFFSET
    assert EVAL_SEED_OFFSET > 1000  # training envs use seed .. seed + num_envs - 1


@pytest.fixture
def policy(gen):
    net = MLP(4, 3, (16, 8))
    return Policy(net, torch.randn(net.num_params, generator=gen))


def identity_q_policy() -> Policy:
    """Q(obs) = obs[:3] exactly: h = [relu(x), relu(-x)], Q_k = h_k - h_{k+4}."""
    net = MLP(4, 3, (8,))
    eye = torch.eye(4)
    w1 = torch.cat([torch.eye(4), -torch.eye(4)], 1)[:3]
    params = set_layers(net, torch.zeros(net.num_params),
                        [(torch.cat([eye, -eye]).tolist(), [0.0] * 8), (w1.tolist(), [0.0] * 3)])
    return Policy(net, params)


def test_policy_q_values_hand_set():
    pol = identity_q_policy()
    obs = np.array([[1.0, -2.0, 0.5, 9.0], [-1.0, 3.0, -4.0, 0.0]], dtype=np.float32)
    assert pol.q_values(obs).tolist() == [[1.0, -2.0, 0.5], [-1.0, 3.0, -4.0]]


def test_policy_call_is_argmax_of_q_values(gen):
    pol = identity_q_policy()
    obs = torch.randn(60, 4, generator=gen).numpy()
    q = pol.q_values(obs)
    assert q.shape == (60, 3)
    actions = pol(obs)
    assert isinstance(actions, np.ndarray)
    assert actions.tolist() == q.argmax(1).tolist() == obs[:, :3].argmax(1).tolist()
    assert set(actions.tolist()) == {0, 1, 2}  # the check is not vacuous
    assert pol.act(obs[7]) == int(obs[7, :3].argmax())
    assert isinstance(pol.act(obs[7]), int)


def test_policy_to_module_same_q_values(policy, gen):
    obs = torch.randn(20, 4, generator=gen)
    mod = policy.to_module()
    assert isinstance(mod, torch.nn.Sequential)
    with torch.no_grad():
        assert torch.allclose(mod(obs), policy.q_values(obs.numpy()), atol=1e-6)


def test_policy_copies_params(gen):
    net = MLP(4, 2, (8,))
    params = net.init(gen)
    pol = Policy(net, params)
    obs = np.ones((1, 4), dtype=np.float32)
    before = pol.q_values(obs).clone()
    params.add_(1.0)
    assert torch.equal(pol.q_values(obs), before)


def test_policy_scales_uint8_observations(gen):
    net = MLP(3, 2, (4,))
    pol = Policy(net, net.init(gen))
    obs_u8 = np.array([[0, 128, 255]], dtype=np.uint8)
    obs_f = obs_u8.astype(np.float32) / 255.0
    assert torch.allclose(pol.q_values(obs_u8), pol.q_values(obs_f))
