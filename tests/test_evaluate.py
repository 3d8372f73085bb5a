"""Greedy evaluation: per-episode seeds independent of num_envs; the Policy object; baselines,
comparison, GIF and live window."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import set_layers

from fastdqn.errors import ConfigError, DisplayError
from fastdqn.evaluation.compare import Comparison, compare_policies
from fastdqn.evaluation.episodes import EvalResult, run_episodes
from fastdqn.evaluation.media import render_episodes, save_gif
from fastdqn.evaluation.policies import HeuristicPolicy, Policy, RandomPolicy, has_heuristic
from fastdqn.nets.mlp import MLP, QNetwork


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
    assert isinstance(mod, QNetwork) and isinstance(mod.body, torch.nn.Sequential)
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


# ---------------------------------------------------------------------------------------------
# Baselines, comparison, GIF, live window
# ---------------------------------------------------------------------------------------------


def test_random_policy_is_uniform_and_seeded():
    obs = np.zeros((4000, 8), dtype=np.float32)
    a = RandomPolicy(4, seed=3)(obs)
    assert a.shape == (4000,) and set(a.tolist()) == {0, 1, 2, 3}
    assert np.all(np.abs(np.bincount(a) / 4000 - 0.25) < 0.03)
    assert np.array_equal(a, RandomPolicy(4, seed=3)(obs))
    assert not np.array_equal(a, RandomPolicy(4, seed=4)(obs))


def test_heuristic_policy_matches_gymnasium_row_by_row():
    from gymnasium.envs.box2d.lunar_lander import heuristic

    env = gym.make("LunarLander-v3")
    rows = [env.reset(seed=s)[0] for s in range(3)]
    for _ in range(30):
        rows.append(env.step(int(env.action_space.sample()))[0])
    env.close()
    obs = np.stack(rows)
    got = HeuristicPolicy("LunarLander-v3")(obs)
    assert got.dtype == np.int64
    assert got.tolist() == [int(heuristic(env, o)) for o in obs]
    assert len(set(got.tolist())) > 1


def test_heuristic_only_for_lunar_lander():
    assert has_heuristic("LunarLander-v3")
    assert not has_heuristic("CartPole-v1")
    with pytest.raises(ConfigError, match="no heuristic controller for CartPole-v1"):
        HeuristicPolicy("CartPole-v1")


@pytest.fixture(scope="module")
def lunar_comparison() -> Comparison:
    always_noop = lambda obs: np.zeros(len(obs), dtype=np.int64)  # noqa: E731
    return compare_policies(always_noop, "LunarLander-v3", episodes=6, seed=11, num_envs=3)


def test_compare_policies_runs_three_policies_on_the_same_seeds(lunar_comparison):
    c = lunar_comparison
    assert list(c.results) == ["greedy", "random", "heuristic"]
    assert c.note is None and c.threshold == 200 and c.seed == 11
    # the same seeds: each policy's result is what run_episodes gives it on seeds 11..16
    ref = run_episodes(HeuristicPolicy("LunarLander-v3"), "LunarLander-v3", 6, seed=11, num_envs=1)
    assert c.results["heuristic"].returns == ref.returns
    assert c.results["heuristic"].mean > c.results["random"].mean
    d = c.to_dict()
    for name in ("greedy", "random", "heuristic"):
        assert set(d[name]) == {"mean", "std", "min", "max", "episodes", "success_rate"}
        assert d[name]["episodes"] == 6
        r = np.array(c.results[name].returns)
        assert d[name]["success_rate"] == pytest.approx(np.mean(r >= 200))
    assert d["greedy"]["success_rate"] == 0.0  # doing nothing never lands


def test_comparison_table_names_the_threshold(lunar_comparison):
    lines = lunar_comparison.table().splitlines()
    assert "seeds 11..16" in lines[0]
    assert "success (return >= 200)" in lines[1]
    assert [ln.split()[0] for ln in lines[2:]] == ["greedy", "random", "heuristic"]
    assert lines[2].endswith(" 0%")


def test_comparison_plot_writes_an_image(lunar_comparison, tmp_path):
    from PIL import Image

    fig = lunar_comparison.plot(tmp_path / "cmp.png")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert [lb.split()[0] for lb in labels] == ["greedy", "random", "heuristic", "success:"]
    with Image.open(tmp_path / "cmp.png") as im:
        assert im.format == "PNG" and im.size == (800, 450)
    assert [p.name for p in tmp_path.iterdir()] == ["cmp.png"]  # no temp file left


def test_compare_without_heuristic_says_so():
    c = compare_policies(CountingPolicy(), "CartPole-v1", episodes=3, seed=5, threshold=100)
    assert list(c.results) == ["greedy", "random"]
    assert c.note == ("gymnasium has no heuristic controller for CartPole-v1; "
                      "comparing greedy and random only")
    assert c.threshold == 100
    assert c.results["greedy"].success_rate(100) == c.to_dict()["greedy"]["success_rate"]


def test_save_gif_records_one_episode(tmp_path):
    from PIL import Image

    rec = save_gif(CountingPolicy(), "CartPole-v1", tmp_path / "ep.gif", seed=100)
    ref_return, ref_steps = play_one(CountingPolicy(), 100)
    assert (rec.episode_return, rec.steps) == (ref_return, ref_steps)
    assert rec.frames == 1 + ref_steps // 2 + (ref_steps % 2)  # reset, every 2nd step, the last
    with Image.open(rec.path) as im:
        assert im.format == "GIF" and im.is_animated
        assert im.n_frames > 1
        assert im.size == (300, 200)  # CartPole renders 600x400; halved
        assert im.info["duration"] == 40  # 50 fps env, every 2nd frame: real time at 25 fps
    assert [p.name for p in tmp_path.iterdir()] == ["ep.gif"]


def test_open_display_without_one_names_the_problem(monkeypatch):
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(DisplayError) as info:
        render_episodes(CountingPolicy(), "CartPole-v1", 1, seed=0)
    assert info.value.problem == ("no display to open a window on "
                                  "(DISPLAY and WAYLAND_DISPLAY are unset)")
    assert "save_gif" in str(info.value)


def push_left(obs: np.ndarray) -> np.ndarray:
    """Falls over in about ten steps: a window at 50 fps shows it in a fraction of a second."""
    return np.zeros(len(obs), dtype=np.int64)


def test_render_episodes_scores_like_run_episodes(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # a headless "window"
    res = render_episodes(push_left, "CartPole-v1", 2, seed=100)
    assert res.returns == run_episodes(push_left, "CartPole-v1", 2, seed=100).returns
    assert res.episodes == 2


def test_env_that_cannot_render_is_refused_before_it_is_built(tmp_path, monkeypatch, recwarn):
    from conftest import DICT_OBS_ENV_ID

    with pytest.raises(ConfigError) as info:
        save_gif(push_left, DICT_OBS_ENV_ID, tmp_path / "ep.gif")
    assert str(info.value) == (f"{DICT_OBS_ENV_ID} has no rgb_array render mode (it has: none), so "
                               "it cannot be recorded or shown; evaluate it without --gif/--render")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    with pytest.raises(ConfigError, match="has no human render mode"):
        render_episodes(push_left, DICT_OBS_ENV_ID, 1, seed=0)
    assert list(tmp_path.iterdir()) == []
    assert not [w for w in recwarn if "render_mode" in str(w.message)]
