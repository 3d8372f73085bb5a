"""n-step rows: hand-computed windows, episode ends inside the window, every vector mode, the ring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_counting_env

from fastdqn.envs.autoreset import real_next_obs
from fastdqn.envs.backends import make_vector_env
from fastdqn.replay.nstep import NStepWriter
from fastdqn.replay.rows import ReplayBuffer

G = 0.5


def rows(out) -> list[tuple]:
    """The writer's output as sorted plain tuples (obs, action, return, next_obs, done, disc)."""
    obs, act, ret, nxt, done, disc = (t.tolist() for t in out)
    return sorted(zip(map(tuple, obs), act, ret, map(tuple, nxt), done, disc))


def step(w: NStepWriter, obs, act, rew, nxt, term, trunc):
    f = np.array
    return rows(w.push(torch.tensor(obs, dtype=torch.float32), f(act), f(rew, dtype=float),
                       torch.tensor(nxt, dtype=torch.float32), f(term), f(trunc)))


def test_a_full_window_then_a_termination_inside_it_cuts_the_sums_and_stops_bootstrapping():
    """One env, n = 3: obs are [t], rewards 1, 2, 3, 4, then termination after the 4th step."""
    w = NStepWriter(3, G, 1, (1,), torch.float32)
    assert step(w, [[0]], [0], [1], [[1]], [False], [False]) == []
    assert step(w, [[1]], [1], [2], [[2]], [False], [False]) == []
    assert step(w, [[2]], [2], [3], [[3]], [False], [False]) == [
        ((0.0,), 0, 1 + G * 2 + G * G * 3, (3.0,), 0.0, G**3)]
    # the 4th step terminates: windows starting at t = 1, 2, 3 are flushed, cut at the end
    assert step(w, [[3]], [0], [4], [[99]], [True], [False]) == sorted([
        ((1.0,), 1, 2 + G * 3 + G * G * 4, (99.0,), 1.0, G**3),
        ((2.0,), 2, 3 + G * 4, (99.0,), 1.0, G**2),
        ((3.0,), 0, 4.0, (99.0,), 1.0, G)])
    # a new episode starts with an empty window
    assert step(w, [[10]], [1], [5], [[11]], [False], [False]) == []


def test_a_truncation_inside_the_window_bootstraps_from_the_final_obs_with_gamma_to_the_k():
    w = NStepWriter(4, G, 1, (1,), torch.float32)
    step(w, [[0]], [0], [1], [[1]], [False], [False])
    got = step(w, [[1]], [1], [2], [[7]], [False], [True])
    assert got == sorted([((0.0,), 0, 1 + G * 2, (7.0,), 0.0, G**2),
                          ((1.0,), 1, 2.0, (7.0,), 0.0, G)])


def test_n_equal_one_gives_the_one_step_transition():
    w = NStepWriter(1, G, 2, (1,), torch.float32)
    got = step(w, [[0], [5]], [1, 2], [3, 4], [[1], [6]], [False, True], [False, False])
    assert got == [((0.0,), 1, 3.0, (1.0,), 0.0, G), ((5.0,), 2, 4.0, (6.0,), 1.0, G)]


def reference_rows(trajectory: list[dict], n: int, gamma: float) -> list[tuple]:
    """Plain-Python n-step windows from a recorded per-env trajectory."""
    out = []
    num_envs = len(trajectory[0]["act"])
    for i in range(num_envs):
        episode: list[dict] = []
        for t, s in enumerate(trajectory):
            episode.append({k: (v[i] if k != "t" else t) for k, v in s.items() if k != "t"})
            ended = s["term"][i] or s["trunc"][i]
            # windows that complete now: the one starting n-1 steps ago, or all on an end
            starts = range(len(episode)) if ended else [len(episode) - n] if len(episode) >= n else []
            for j in starts:
                if j < 0 or episode[j].get("done_row"):
                    continue
                window = episode[j:j + n] if not ended else episode[j:]
                k = len(window)
                ret = sum(gamma**m * window[m]["rew"] for m in range(k))
                out.append((tuple(episode[j]["obs"]), int(episode[j]["act"]), ret,
                            tuple(window[-1]["next"]), float(s["term"][i] and ended), gamma**k))
                episode[j]["done_row"] = True
            if ended:
                episode = []
    return sorted(out)


@pytest.mark.parametrize("vector", ["sync", "sharded", "async"])
@pytest.mark.parametrize("n", [1, 3, 5])
def test_rows_equal_a_plain_python_reference_in_every_vector_mode(vector, n):
    """CountingEnv episodes of several lengths and a time limit: terminations and truncations
    land at every position of the window across 4 envs."""
    num_envs, steps = 4, 60
    envs = make_vector_env("unused", num_envs, vector, make_counting_env, num_workers=2)
    w = NStepWriter(n, 0.9, num_envs, (2,), torch.float32)
    got, trajectory = [], []
    try:
        obs, _ = envs.reset(seed=3)
        real = np.empty_like(obs)
        for t in range(steps):
            act = (obs[:, 1].astype(np.int64) + t) % 3
            envs.step_async(act)
            nxt, rew, term, trunc, infos = envs.step_wait()
            real_next_obs(nxt, infos, real)
            trajectory.append({"obs": obs.copy(), "act": act, "rew": rew, "next": real.copy(),
                               "term": term, "trunc": trunc})
            got += rows(w.push(torch.from_numpy(obs), act, rew, torch.from_numpy(real), term,
                               trunc))
            obs = nxt
    finally:
        envs.close()
    assert any(s["trunc"].any() for s in trajectory) and any(s["term"].any() for s in trajectory)
    want = reference_rows(trajectory, n, 0.9)
    assert len(got) == len(want)
    for g, r in zip(sorted(got), want):
        assert g[:2] == r[:2] and g[3:5] == r[3:5]
        assert g[2] == pytest.approx(r[2], rel=1e-6) and g[5] == pytest.approx(r[5], rel=1e-6)


def test_rows_across_the_ring_wrap_around_are_whole():
    """A 10-row ring fed 3-step windows for 40 steps: every stored row is one whole window."""
    w = NStepWriter(3, G, 2, (1,), torch.float32)
    buf = ReplayBuffer(10, (1,), torch.float32)
    for t in range(40):
        end = t % 5 == 4  # both envs end an episode every 5 steps, env 1 by truncation
        out = w.push(torch.tensor([[t], [100 + t]], dtype=torch.float32), np.array([0, 1]),
                     np.array([1.0, 1.0]), torch.tensor([[t + 1], [101 + t]], dtype=torch.float32),
                     np.array([end, False]), np.array([False, end]))
        buf.add(*out)
    assert buf.size == 10
    for r in range(10):
        s0, s1 = buf.obs[r].item() % 100, buf.next_obs[r].item() % 100
        k = round(s1 - s0)
        assert 1 <= k <= 3 and int(s0) // 5 == int(s1 - 1) // 5  # never spans two episodes
        assert buf.rewards[r].item() == pytest.approx(sum(G**m for m in range(k)))
        assert buf.discounts[r].item() == pytest.approx(G**k)
        env1 = buf.obs[r].item() >= 100  # env 1's episodes end by truncation: no done
        assert buf.dones[r].item() == float(not env1 and int(s1) % 5 == 0)
