"""--seeds: a population of agents in one process is each agent's solo run, agent for agent.

The populations here step `--vector sync` envs (in-process, so that a scripted env can signal
the trainer) and are compared with solo runs of the same seeds: the weights, evaluations,
episode returns and every stored transition must match. They match bit for bit: each agent's
arithmetic runs on its own tensors in its own order (the native batched call loops over the
agents' own steps), which the docs say is what makes a population reproduce its solo runs.
"""

from __future__ import annotations

import json
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from scripted_envs import FixedLengthEnv

from fastdqn.cli import main
from fastdqn.config.files import make_config
from fastdqn.core.seeds import describe
from fastdqn.envs.backends import make_vector_env
from fastdqn.errors import ConfigError
from fastdqn.learners import native
from fastdqn.runtime.population import train_population
from fastdqn.runtime.train import train

SMALL = dict(total_timesteps=1_600, num_envs=4, learning_starts=200, batch_size=32,
             buffer_size=1_000, eval_every=400, eval_episodes=2, solve_episodes=4, hidden=(16, 16),
             log_every=200, vector="sync", progress=False, eps_decay_steps=800, save_buffer=True)

VARIANTS = {
    "native": {},
    "per-nstep-dueling": dict(prioritized=True, n_step=3, dueling=True),
    "c51-noisy": dict(distributional="c51", v_min=-10.0, v_max=10.0, atoms=11, noisy=True),
    "qr": dict(distributional="qr", atoms=8),
    # these two share one vmapped gradient a step (learners/stacked.py)
    "reference-stacked": dict(learner="reference", dueling=True),
    "c51-stacked": dict(distributional="c51", atoms=11, n_step=2),
}


class RunSeedEnv(FixedLengthEnv):
    """A FixedLengthEnv that knows the run seed its episodes were seeded from (the TRAIN and
    SELECT streams carry it in their high bits), for envs that must tell the agents apart."""

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.run_seed = describe(int(seed))[0]
        return super().reset(seed=seed, options=options)


class DivergesForSeed2(RunSeedEnv):
    """Rewards of 1e39 (TD targets overflow to inf) for run seed 2's episodes only."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, (1e39 if getattr(self, "run_seed", None) == 2 else reward), terminated, \
            truncated, info


class Interrupts:
    """Env factory whose envs raise SIGINT once, in the trainer's process, on the `at`-th
    training step taken by all of them together (no clock: a count; evaluation episodes, reset
    from the SELECT stream, do not count)."""

    def __init__(self, at: int) -> None:
        self.at, self.steps = at, 0

    def __call__(self) -> gym.Env:
        owner = self

        class Env(FixedLengthEnv):
            training = False

            def reset(self, *, seed=None, options=None):
                if seed is not None:
                    self.training = describe(int(seed))[1] == "train"
                return super().reset(seed=seed, options=options)

            def step(self, action):
                if self.training:
                    owner.steps += 1
                    if owner.steps == owner.at:
                        signal.raise_signal(signal.SIGINT)
                return super().step(action)

        return Env()


def state_of(run_dir) -> dict:
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    learner = ckpt["learner"]
    weights = learner.get("params", learner.get("online"))
    # every generator a DQN agent draws from; torch's global one (which none does) is the
    # population's, seeded by its first seed
    rng = {k: v for k, v in ckpt["rng"].items() if k != "torch"}
    return {"weights": weights, "buffer": ckpt.get("buffer"), "evals": ckpt["counters"]["evals"],
            "returns": ckpt["counters"]["returns"], "rng": rng}


def assert_same(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


def without_clock(evals: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "wall_time_s"} for e in evals]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_agent_is_its_solo_run(tmp_path, variant):
    """Agent 3 of --seeds 1,3 draws seed 3's envs, weights, sampling and exploration: its
    weights, evaluations, returns and every stored transition equal `--seed 3` alone."""
    settings = {**SMALL, **VARIANTS[variant]}
    pop = train_population(make_config(seeds="1,3", run_dir=str(tmp_path / "pop"), **settings),
                           env_factory=FixedLengthEnv)
    assert sorted(pop.results) == [1, 3]
    solo = train(make_config(seed=3, run_dir=str(tmp_path / "solo"), **settings),
                 env_factory=FixedLengthEnv)
    got, want = state_of(tmp_path / "pop" / "seed-3"), state_of(solo.run_dir)
    got["evals"], want["evals"] = without_clock(got["evals"]), without_clock(want["evals"])
    assert_same(got, want, variant)
    assert len(got["evals"]) == 4 and got["buffer"] is not None
    other = state_of(tmp_path / "pop" / "seed-1")  # and the other agent is another run
    assert not torch.equal(other["buffer"]["obs"], got["buffer"]["obs"])
    assert pop.results[3].summary["learner_route"] == solo.summary["learner_route"]


def test_an_envpool_population_is_its_solo_runs(tmp_path):
    """--vector envpool: each agent's envs are seeded as its solo run's pool seeds them."""
    pytest.importorskip("envpool")
    settings = {**SMALL, "vector": "envpool", "env_id": "CartPole-v1", "num_workers": 1}
    train_population(make_config(seeds="1-2", run_dir=str(tmp_path / "pop"), **settings))
    solo = train(make_config(seed=2, run_dir=str(tmp_path / "solo"), **settings))
    got, want = state_of(tmp_path / "pop" / "seed-2"), state_of(solo.run_dir)
    assert_same(got["buffer"], want["buffer"], "envpool")
    assert_same(got["weights"], want["weights"], "envpool")


def test_the_native_call_for_many_learners_equals_their_separate_steps(tmp_path):
    """steps_many runs each learner's block exactly as its own NativeStep.steps would."""
    from test_native import buffer, learner

    buffers = [buffer(300 + 50 * i) for i in range(3)]
    got = [learner(target_update_interval=3, tau=1.0) for _ in range(3)]
    want = [learner(target_update_interval=3, tau=1.0) for _ in range(3)]
    rng = np.random.default_rng(7)
    blocks = [rng.integers(0, b.size, (1 + i, 32)) for i, b in enumerate(buffers)]
    steps = [lr.cpu_step(b, 32) for lr, b in zip(got, buffers)]
    assert all(isinstance(s, native.NativeStep) for s in steps)
    native.steps_many(steps, blocks)
    for lr, b, idx in zip(want, buffers, blocks):
        lr.cpu_step(b, 32).steps(idx)
    for g, w in zip(got, want):
        assert g.steps == w.steps
        for name in ("params", "target"):
            assert torch.equal(getattr(g, name), getattr(w, name))
        assert_same(g.state_dict(), w.state_dict())
        assert np.array_equal(g.fused_stats, w.fused_stats)


@pytest.mark.parametrize("head", ["none", "c51"])
def test_the_stacked_gradient_equals_each_learners_own_update(head):
    """One vmapped gradient for 3 learners (their own lr and clipping), then each one's own
    optimizer step and target update: the same learners as 3 separate `step` calls."""
    from fastdqn.learners.reference import ReferenceLearner
    from fastdqn.learners.stacked import stackable, stacked_steps
    from fastdqn.nets.heads import HeadSpec
    from fastdqn.nets.mlp import QNetwork
    from fastdqn.replay.rows import Batch

    spec = HeadSpec("c51", 11, -5.0, 5.0) if head == "c51" else HeadSpec()

    def learners():
        out = []
        for i in range(3):
            torch.manual_seed(i)
            net = QNetwork(5, 3, (16, 16), dueling=True, head=spec)
            out.append(ReferenceLearner(net, lr=1e-3 * (i + 1), gamma=0.99, tau=0.1,
                                        target_update_interval=2, max_grad_norm=(0.5, 10, 0)[i],
                                        head=head))
        return out

    g = torch.Generator().manual_seed(3)
    batches = [[Batch(torch.randn(8, 5, generator=g), torch.randint(3, (8,), generator=g),
                      torch.randn(8, generator=g), torch.randn(8, 5, generator=g),
                      (torch.rand(8, generator=g) < 0.3).float(), torch.full((8,), 0.9))
                for _ in range(3)] for _ in range(3)]  # [learner][step]
    got, want = learners(), learners()
    assert all(stackable(lr) is None for lr in got)
    stacked_steps(got, lambda i, j: batches[i][j], [3, 2, 3], {})
    for lr, own, k in zip(want, batches, [3, 2, 3]):
        for j in range(k):
            lr.step(own[j])
    for a, b in zip(got, want):
        assert a.steps == b.steps and a.stat_count == b.stat_count
        for x, y in zip([*a.params, *a.target_params], [*b.params, *b.target_params]):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
        assert a.pop_stats() == pytest.approx(b.pop_stats(), rel=1e-5)


def test_a_bad_row_of_one_learner_is_named_and_the_others_stepped(tmp_path):
    from test_native import buffer, learner

    from fastdqn.errors import ReplayCorrupt

    buffers = [buffer(), buffer()]
    lrs = [learner(), learner()]
    steps = [lr.cpu_step(b, 32) for lr, b in zip(lrs, buffers)]
    good = np.zeros((2, 32), dtype=np.int64)
    bad = good.copy()
    bad[1, 5] = 10_000
    with pytest.raises(ReplayCorrupt, match="row 10000 is outside"):
        native.steps_many(steps, [good, bad])
    assert [lr.steps for lr in lrs] == [2, 1]


def test_one_agent_diverging_stops_only_it(tmp_path):
    pop = train_population(make_config(seeds="1-2", run_dir=str(tmp_path / "p"), **SMALL),
                           env_factory=DivergesForSeed2)
    s = json.loads((tmp_path / "p" / "population.json").read_text())
    by_seed = {a["seed"]: a for a in s["agents"]}
    assert by_seed[2]["diverged"] and not by_seed[1]["diverged"]
    one = json.loads((tmp_path / "p" / "seed-1" / "summary.json").read_text())
    two = json.loads((tmp_path / "p" / "seed-2" / "summary.json").read_text())
    assert one["total_env_steps"] == SMALL["total_timesteps"]
    assert two["total_env_steps"] < SMALL["total_timesteps"] and two["diverged"]
    assert 1 in pop.results and 2 not in pop.results


def test_ctrl_c_then_resume_equals_the_uninterrupted_population(tmp_path):
    """SIGINT stops every agent with its checkpoint; --resume continues each one to the run
    it would have been."""
    whole = tmp_path / "whole"
    train_population(make_config(seeds="1-2", run_dir=str(whole), **SMALL),
                     env_factory=FixedLengthEnv)
    cut = tmp_path / "cut"
    # on the last env's step of a vector step that ends every episode (FixedLengthEnv's are
    # 4 steps long), so that no episode is in flight: a resume restarts an in-flight episode
    # from its start, which continues the run exactly only at such a boundary (envs.make)
    first = train_population(make_config(seeds="1-2", run_dir=str(cut), **SMALL),
                             env_factory=Interrupts(at=8 * 4 * 30))
    assert first.signal == signal.SIGINT
    s = json.loads((cut / "population.json").read_text())
    assert not s["finished"] and all("unfinished" in a for a in s["agents"])
    steps = [json.loads((cut / f"seed-{k}" / "summary.json").read_text())["total_env_steps"]
             for k in (1, 2)]
    assert 0 < steps[0] == steps[1] < SMALL["total_timesteps"]
    train_population(make_config(seeds="1-2", run_dir=str(cut), resume=True, **SMALL),
                     env_factory=FixedLengthEnv)
    for k in (1, 2):
        got, want = state_of(cut / f"seed-{k}"), state_of(whole / f"seed-{k}")
        assert_same(got["weights"], want["weights"], f"seed {k}")
        assert_same(got["buffer"], want["buffer"], f"seed {k}")
        assert_same(without_clock(got["evals"]), without_clock(want["evals"]))
    assert json.loads((cut / "population.json").read_text())["finished"]


def test_population_json_sums_the_agents_up(tmp_path):
    train_population(make_config(seeds="4,2,9", run_dir=str(tmp_path / "p"), **SMALL),
                     env_factory=FixedLengthEnv)
    s = json.loads((tmp_path / "p" / "population.json").read_text())
    assert s["seeds"] == [4, 2, 9] and [a["seed"] for a in s["agents"]] == [4, 2, 9]
    finals = [json.loads((tmp_path / "p" / f"seed-{k}" / "summary.json").read_text())
              ["evals"][-1]["mean"] for k in (4, 2, 9)]
    assert [a["final_eval"]["mean"] for a in s["agents"]] == finals
    stats = s["statistics"]
    assert stats["runs"] == 3 and stats["final_return"]["mean"] == pytest.approx(np.mean(finals))
    assert stats["final_return"]["median"] == pytest.approx(np.median(finals))
    assert stats["steps_to_solve"] is None  # no target: nothing solves
    assert (tmp_path / "p" / "population.png").stat().st_size > 0
    for k in (4, 2, 9):  # each agent's dir is a whole run
        d = tmp_path / "p" / f"seed-{k}"
        assert {"checkpoint.pt", "best.pt", "summary.json", "returns.png"} <= {
            p.name for p in d.iterdir()}
    again = main(["train", "--seeds", "4,2,9", "--run-dir", str(tmp_path / "p")])
    assert again == 2  # a population is never mixed with another


def test_the_replay_check_covers_every_agent(monkeypatch, capsys):
    from fastdqn.replay import rows

    monkeypatch.setattr(rows, "available_memory", lambda device: 10**8)
    assert main(["train", "--seeds", "1-8", "--env", "CartPole-v1", "--buffer-size",
                 "1000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 8 agents' replay buffers of 1,000,000 rows each")
    fit = int(err.split("(e.g. ")[1].split(" rows")[0].replace(",", ""))
    row = 2 * 4 * 4 + rows.ROW_BYTES  # CartPole: obs and next_obs of 4 float32
    assert 8 * fit * row <= 10**8 * 4 // 5 < 8 * (fit + 1000) * row


@pytest.mark.parametrize("flags, words", [
    (["--seeds", "1-3", "--algo", "pqn"], "--seeds applies to --algo dqn only"),
    (["--seeds", "1-3", "--actors", "2"], "--seeds with --actors"),
    (["--seeds", "1-3", "--vector", "async"], "--seeds with --vector async"),
    (["--seeds", "3-1"], "not a range of seeds"),
    (["--seeds", "1,x"], "--seeds takes seeds and ranges"),
    (["--seeds", "1-3,2"], "names seed 2 twice"),
    (["--seeds", "0-5000"], "more than 1024 agents"),
])
def test_bad_seeds_are_one_line(flags, words, capsys, tmp_path):
    assert main(["train", "--run-dir", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("mode", ["sync", "sharded"])
def test_envs_of_stopped_agents_stand_still(mode):
    """Stepping with an `active` mask steps exactly the marked envs, as a vector env of only
    them would (SAME_STEP autoreset included); the others take no step."""
    envs = make_vector_env("CartPole-v1", 4, mode, FixedLengthEnv, 2)
    alone = make_vector_env("CartPole-v1", 2, "sync", FixedLengthEnv, 1)
    try:
        envs.reset(seed=[5, 6, 7, 8])
        alone.reset(seed=[5, 6])
        active = np.array([True, True, False, False])
        for t in range(25):
            actions = np.array([t % 2, 1, 0, 0])
            got = envs.step_async(actions, active) or envs.step_wait()
            want = alone.step(actions[:2])
            np.testing.assert_array_equal(got[0][:2], want[0])
            np.testing.assert_array_equal(got[1][:2], want[1])
            np.testing.assert_array_equal(got[2][:2], want[2])
            assert not got[2][2:].any() and not got[1][2:].any()
            if "_final_obs" in want[4]:
                np.testing.assert_array_equal(got[4]["_final_obs"][:2], want[4]["_final_obs"])
        assert list(envs.get_attr("steps_taken")) == [25, 25, 0, 0]
    finally:
        envs.close()
        alone.close()


def test_wandb_offline_writes_its_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = train(make_config(run_dir=str(tmp_path / "r"), wandb="fastdqn-test",
                               **{**SMALL, "save_buffer": False}), env_factory=FixedLengthEnv)
    runs = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = list(runs[0].glob("*.wandb"))
    assert data and data[0].stat().st_size > 0
    blob = data[0].read_bytes()
    assert b"charts/sps" in blob and b"global_step" in blob  # the scalars went there


def test_wandb_missing_is_one_line(monkeypatch, capsys, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(["train", "--env", "CartPole-v1", "--wandb", "p", "--run-dir",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert 'pip install "fastdqn[wandb]"' in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="--wandb-group applies with --wandb"):
        make_config(wandb_group="g")


def test_tune_without_optuna_is_one_line(monkeypatch, capsys, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(["tune", "--env", "CartPole-v1", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == 'error: fastdqn tune needs Optuna: pip install "fastdqn[tune]"\n'
    assert not (tmp_path / "r").exists()
