"""Seed streams: disjoint by construction, and the ones the trainer and `fastdqn eval` really use."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fastdqn import train
from fastdqn.config.files import make_config
from fastdqn.core.seeds import (
    FIT,
    SELECT,
    TEST,
    TRAIN,
    Purpose,
    describe,
    episode_generator,
    episode_seed,
    generator_seed,
    numpy_generator,
    seed_sequence,
    split,
    torch_generator,
)
from fastdqn.evaluation.episodes import eval_seed, run_episodes
from fastdqn.evaluation.policies import RandomPolicy
from fastdqn.replay.uniform import seed_state

STREAMS = [TRAIN, SELECT, TEST, FIT]


@given(st.integers(0, 2**20), st.sampled_from(STREAMS), st.integers(0, 2**32 - 1),
       st.integers(0, 2**20), st.sampled_from(STREAMS), st.integers(0, 2**32 - 1))
def test_two_seeds_are_equal_only_for_the_same_run_stream_and_episode(s1, k1, j1, s2, k2, j2):
    assert (episode_seed(s1, k1, j1) == episode_seed(s2, k2, j2)) == ((s1, k1, j1) == (s2, k2, j2))


def test_describe_inverts_episode_seed():
    assert describe(episode_seed(7, SELECT, 12)) == (7, "select", 12)
    assert describe(episode_seed(0, TRAIN, 2**32 - 1)) == (0, "train", 2**32 - 1)
    assert describe(episode_seed(3, FIT, 4)) == (3, "fit", 4)


@pytest.mark.parametrize("args", [(-1, TRAIN, 0), (1, 4, 0), (1, TRAIN, -1), (1, TRAIN, 2**32)])
def test_out_of_range_inputs_are_refused(args):
    with pytest.raises(ValueError):
        episode_seed(*args)


def test_fastdqn_eval_defaults_to_the_held_out_test_stream():
    assert describe(eval_seed(5)) == (5, "test", 0)


class SeedLog(gym.Env):
    """A 3-step env that logs every reset seed into its class's list, or into its class's
    `log_file` where it plays in other processes too (evaluations play on the worker)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)
    seeds: list[int] = []
    log_file = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None and type(self).log_file is not None:
            with open(type(self).log_file, "a") as f:
                f.write(f"{int(seed)}\n")
        elif seed is not None:
            type(self).seeds.append(int(seed))
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), float(action), self.t >= 3, False, {}


class TrainLog(SeedLog):
    seeds: list[int] = []


class EvalLog(SeedLog):
    seeds: list[int] = []


def test_the_trainer_draws_each_purpose_from_its_own_stream_also_after_a_resume(tmp_path):
    """Training resets come from TRAIN at the step they happen (env i adds i), every evaluation
    from SELECT starting at episode 0, and a resume with another --num-envs stays in TRAIN."""
    TrainLog.seeds.clear()
    EvalLog.log_file = tmp_path / "eval_seeds"

    def eval_seeds() -> list[int]:
        return [int(x) for x in EvalLog.log_file.read_text().split()]
    common = dict(env_id="CartPole-v1", vector="sync", seed=9, hidden=(8,), batch_size=8,
                  buffer_size=64, learning_starts=8, eval_every=24, eval_episodes=2,
                  solve_episodes=3, eval_envs=1, checkpoint_every=0, progress=False,
                  run_dir=str(tmp_path / "run"), target_return=1e9)
    train(**common, num_envs=2, total_timesteps=24, env_factory=TrainLog,
          eval_env_factory=EvalLog)
    assert TrainLog.seeds == [episode_seed(9, TRAIN, 0), episode_seed(9, TRAIN, 1)]
    # one screening eval at step 24, extended (not replayed) by the final eval at that step
    assert eval_seeds() == [episode_seed(9, SELECT, j) for j in range(3)]
    train(**common, num_envs=3, total_timesteps=48, env_factory=TrainLog,
          eval_env_factory=EvalLog, resume=True)
    assert TrainLog.seeds[2:] == [episode_seed(9, TRAIN, 24 + i) for i in range(3)]
    assert {describe(s)[1] for s in TrainLog.seeds} == {"train"}
    assert {describe(s)[1] for s in eval_seeds()} == {"select"}
    EvalLog.log_file = None


# -- the run's generators: each a distinct child of the run seed ------------------------------

KEYS = {Purpose.APEX_ACT: (1, 5), Purpose.EVAL_EPSILON: (SELECT, 0), Purpose.BASELINE: (TEST, 0)}
"""Representative keys of the purposes that take them."""


def all_generators(run_seeds=(1, 2, 3)) -> list[tuple[int, Purpose]]:
    return [(s, p) for s in run_seeds for p in Purpose]


def assert_pairwise_distinct(draws: dict) -> None:
    """No two streams' first draws are equal (or within float rounding of each other)."""
    names = list(draws)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(draws[a], draws[b], atol=1e-6), (a, b)


def test_every_purpose_of_seeds_1_to_3_draws_its_own_stream():
    """torch (CPU keeps the low 32 bits of a seed) and numpy streams of every purpose of runs
    1..3: no two equal, and none equal to an env's reset randomness in any seed stream."""
    torch_draws, numpy_draws, low_words = {}, {}, set()
    for s, p in all_generators():
        keys = KEYS.get(p, ())
        torch_draws[s, p.name] = torch.rand(16, generator=torch_generator(s, p, *keys))
        numpy_draws[s, p.name] = torch.from_numpy(numpy_generator(s, p, *keys).random(16))
        low_words.add(generator_seed(s, p, *keys) & 0xFFFFFFFF)
        for stream in STREAMS:  # what gymnasium's env.np_random draws after reset(seed=...)
            rng, _ = gym.utils.seeding.np_random(episode_seed(s, stream, 0))
            numpy_draws[s, f"env {stream}"] = torch.from_numpy(rng.random(16))
    assert len(low_words) == len(all_generators())
    assert_pairwise_distinct(torch_draws)
    assert_pairwise_distinct(numpy_draws)


def test_the_functions_are_deterministic_and_take_seeds_up_to_2_to_the_128():
    for s in (0, 1, 2**32 - 1, 2**63, 2**64, 2**128 - 1):
        assert generator_seed(s, Purpose.ACT) == generator_seed(s, Purpose.ACT)
        assert 0 <= generator_seed(s, Purpose.ACT) < 2**64
        a = torch.rand(4, generator=torch_generator(s, Purpose.INIT))
        assert torch.equal(a, torch.rand(4, generator=torch_generator(s, Purpose.INIT)))
        assert np.array_equal(numpy_generator(s, Purpose.FIT_ACTIONS, 3).random(4),
                              numpy_generator(s, Purpose.FIT_ACTIONS, 3).random(4))
    # a key is part of the identity: (A, 1) is not (A, 1, 0), nor (A,) of another purpose
    assert len({generator_seed(1, Purpose.APEX_ACT, *k) for k in [(), (1,), (1, 0), (0, 1)]}) == 4


@pytest.mark.parametrize("bad", [
    dict(run_seed=-1), dict(run_seed=2**128), dict(run_seed=True), dict(run_seed=1.0),
    dict(keys=(-1,)), dict(keys=(2**32,)), dict(purpose=2)])
def test_bad_generator_inputs_are_refused(bad):
    args = {"run_seed": 1, "purpose": Purpose.ACT, "keys": (), **bad}
    with pytest.raises(ValueError):
        seed_sequence(args["run_seed"], args["purpose"], *args["keys"])


def test_split_is_episode_seeds_inverse_and_refuses_negative_seeds():
    assert split(episode_seed(7, TEST, 12)) == (7, TEST, 12)
    assert split(5) == (0, TRAIN, 5)
    with pytest.raises(ValueError):
        split(-1)


def first_uniforms(gen: torch.Generator, n: int = 64) -> torch.Tensor:
    """The next n uniforms of a copy of `gen` (which is left as it was)."""
    twin = torch.Generator(gen.device)
    twin.set_state(gen.get_state())
    return torch.rand(n, generator=twin)


def first_layer_uniforms(weight: torch.Tensor, n: int = 64) -> torch.Tensor:
    """The uniforms U(0, 1) a Linear(4, .) default init drew for its first n weights (+-1/2)."""
    return weight.detach().reshape(-1)[:n] + 0.5


SPACE = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)


def test_no_agent_generator_of_seeds_1_to_3_replays_another_seeds_or_purposes():
    """The reported collision: seed 1's epsilon-greedy uniforms were seed 2's init uniforms
    (and PQN's seed 1 shuffle was seed 2's acting). Every stream of DQN, PQN and REINFORCE,
    the init recovered from the weights, across seeds 1..3, is its own."""
    from fastdqn.algos.dqn.agent import DQN
    from fastdqn.algos.pqn import PQN
    from fastdqn.algos.reinforce import Reinforce

    draws, states = {}, {}
    act = gym.spaces.Discrete(2)
    for s in (1, 2, 3):
        dqn = DQN(make_config(env_id="CartPole-v1", num_envs=2, hidden=(16,), seed=s), SPACE,
                  act, torch.device("cpu"))
        per = DQN(make_config(env_id="CartPole-v1", num_envs=2, hidden=(16,), seed=s,
                              prioritized=True), SPACE, act, torch.device("cpu"))
        pqn = PQN(make_config(algo="pqn", env_id="CartPole-v1", num_envs=2, seed=s), SPACE,
                  act, torch.device("cpu"))
        pg = Reinforce(make_config(algo="reinforce", env_id="CartPole-v1", num_envs=2, seed=s),
                       SPACE, act, torch.device("cpu"))
        draws[s, "dqn init"] = first_layer_uniforms(dqn.learner.params)
        draws[s, "dqn act"] = first_uniforms(dqn.act_gen)
        draws[s, "dqn per device"] = first_uniforms(dqn.learner.per_generator)
        draws[s, "pqn act"] = first_uniforms(pqn.act_gen)
        draws[s, "pqn shuffle"] = first_uniforms(pqn.shuffle_gen)
        linear = next(m for m in pg.net.modules() if isinstance(m, torch.nn.Linear))
        draws[s, "reinforce init"] = first_layer_uniforms(linear.weight)
        draws[s, "reinforce act"] = first_uniforms(pg.act_gen)
        states[s, "replay"] = tuple(dqn.sampler.state.tolist())
        states[s, "per"] = tuple(per.sampler.state.tolist())
    # one algorithm's init and acting are one purpose each: the same stream across algorithms
    for s in (1, 2, 3):
        assert torch.equal(draws.pop((s, "pqn act")), draws[s, "dqn act"])
        assert torch.equal(draws.pop((s, "reinforce act")), draws[s, "dqn act"])
        assert torch.allclose(draws.pop((s, "reinforce init")), draws[s, "dqn init"], atol=1e-6)
    assert_pairwise_distinct(draws)
    words = [w for state in states.values() for w in state]
    assert len(set(words)) == len(words)  # no state, nor any shifted splitmix overlap, shared
    for (s, purpose), state in states.items():  # the Numba samplers' xoroshiro seeds
        assert state == tuple(seed_state(generator_seed(s, Purpose[purpose.upper()])))


def test_a_runs_global_torch_generator_is_its_own_child(tmp_path):
    train(env_id="CartPole-v1", vector="sync", seed=4, hidden=(8,), batch_size=8,
          buffer_size=64, learning_starts=8, num_envs=1, total_timesteps=8, eval_every=0,
          eval_episodes=1, solve_episodes=1, checkpoint_every=0, progress=False,
          run_dir=str(tmp_path / "run"))
    assert torch.initial_seed() == generator_seed(4, Purpose.TORCH_GLOBAL)


def test_the_cnn_init_reseeds_no_global_generator(monkeypatch):
    """cnn_for seeds only a forked CPU generator: torch.manual_seed would also have reseeded
    every CUDA generator with the INIT seed, after the run had seeded them."""
    from fastdqn.nets.cnn import cnn_for

    def refuse(seed):
        raise AssertionError("cnn_for reseeded the CUDA generators")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", refuse)
    before = torch.get_rng_state()
    a = cnn_for(gym.spaces.Box(0, 1, (10, 10, 4), np.uint8), 3, False, seed=5, channels_last_hint=True)
    b = cnn_for(gym.spaces.Box(0, 1, (10, 10, 4), np.uint8), 3, False, seed=5, channels_last_hint=True)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class WideActions(gym.Env):
    """Two-step episodes over 2**20 actions; each reset opens a new list in `episodes` that
    logs the episode's actions (in-process only)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2**20)
    episodes: list[list[int]] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.actions = 0, []
        type(self).episodes.append(self.actions)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.actions.append(int(action))
        self.t += 1
        return np.zeros(2, np.float32), 0.0, self.t >= 2, False, {}


def replayed_env_draws(seed: int, steps: int) -> list[int]:
    """The random actions an epsilon = 1 episode would take if its generator were the env's."""
    rng, _ = gym.utils.seeding.np_random(seed)
    out = []
    for _ in range(steps):
        rng.random()
        out.append(int(rng.integers(2**20)))
    return out


@pytest.mark.parametrize("num_envs", [1, 3])
def test_evaluation_epsilon_is_not_the_envs_reset_randomness(num_envs):
    """Each evaluation episode's epsilon draws come from its EVAL_EPSILON generator, keyed by
    (stream, j) under the run seed: not the env's own generator replayed (CartPole's start
    state was -0.05 + 0.1 * u of the very uniforms u that then chose the actions)."""
    first = episode_seed(3, SELECT, 0)
    WideActions.episodes.clear()
    run_episodes(lambda obs: np.zeros(len(obs), np.int64), "WideActions", 3, first, num_envs,
                 make_env=WideActions, epsilon=1.0)
    assert len(WideActions.episodes) == 3
    for j, actions in enumerate(WideActions.episodes):
        rng = numpy_generator(3, Purpose.EVAL_EPSILON, SELECT, j)
        assert actions == [int(rng.integers(2**20)) for _ in range(2) if rng.random() < 1.0]
        assert actions != replayed_env_draws(first + j, 2)

    env = gym.make("CartPole-v1")
    state, _ = env.reset(seed=first)
    u_env = (np.asarray(state, np.float64) + 0.05) / 0.1
    u_eval = episode_generator(first, Purpose.EVAL_EPSILON).random(4)
    assert not np.allclose(u_env, u_eval, atol=1e-6)


def test_the_random_baseline_is_not_the_envs_reset_randomness():
    seed = eval_seed(2)
    rng, _ = gym.utils.seeding.np_random(seed)
    assert not np.array_equal(RandomPolicy(2**20, seed)(np.zeros((8, 2))),
                              rng.integers(0, 2**20, size=8))


def test_an_apex_actor_explores_on_its_own_child_not_its_envs_reset_seed():
    """Actor i's epsilon-greedy generator is the run's APEX_ACT child keyed (i, first episode):
    it was seeded with the episode seed of its envs' first reset."""
    from fastdqn.algos.apex import Actor
    from fastdqn.algos.dqn.agent import DQN

    cfg = make_config(env_id="CartPole-v1", vector="sync", num_envs=2, seed=3, buffer_size=64,
                      batch_size=8, learning_starts=8, device="cpu", actors=2, progress=False)
    agent = DQN(cfg, SPACE, gym.spaces.Discrete(2), torch.device("cpu"))
    online, _ = agent.actor_modules()
    gens = []
    for i, first in [(0, 7), (1, (1 << 24) + 7)]:
        actor = Actor(cfg.to_dict(), i, 0.1, online, None, first)
        try:
            assert actor.gen.initial_seed() == generator_seed(3, Purpose.APEX_ACT, i, first)
            assert actor.gen.initial_seed() != episode_seed(3, TRAIN, first)
            gens.append(first_uniforms(actor.gen))
        finally:
            actor.close()
    assert not torch.allclose(gens[0], gens[1])
