"""FrameReplay: what it returns equals a row buffer of stacked obs/next_obs fed the same steps
(through episode ends, truncations, resets padded either way, non-stack observations, n-step
windows, checkpoint round trips and the ring's wrap-around), prioritized replay on it, and its
memory: about one frame per row."""

from __future__ import annotations

import io
from collections import deque

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TimeLimit
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdqn import train
from fastdqn.core.checkpoint import load_checkpoint, save_checkpoint
from fastdqn.envs.autoreset import real_next_obs
from fastdqn.envs.backends import make_vector_env
from fastdqn.errors import CheckpointError, ConfigError
from fastdqn.learners.reference import ReferenceLearner
from fastdqn.replay.frames import FrameReplay, check_state, frame_slots, is_frame_stack
from fastdqn.replay.nstep import NStepWriter
from fastdqn.replay.prioritized import PrioritizedSampler, TorchPrioritized
from fastdqn.replay.rows import FIELDS, ReplayBuffer

GAMMA = 0.9


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as training uses (--num-threads 1): with two, the copies and small
    GEMMs of these tests ran up to 100x slower on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class StackedEnvs:
    """N envs giving stacks of k frames the way FrameStackObservation does (a reset stack is
    padded with the reset frame or with zeros; each step shifts in one new frame; the final
    observation of an ended episode is a shift too), with frames drawn from a tiny alphabet so
    that equal frames across steps, envs and episodes are common. With `odd` > 0 an env
    sometimes breaks the pattern: its observation is not the stack it gave last, or its next
    observation is not a shift of it."""

    def __init__(self, rng: np.random.Generator, n: int, k: int, frame: tuple[int, ...],
                 alphabet: int, padding: str, p_end: float, odd: float) -> None:
        self.rng, self.n, self.k, self.frame = rng, n, k, frame
        self.alphabet, self.padding, self.p_end, self.odd = alphabet, padding, p_end, odd
        self.queues = [self._reset() for _ in range(n)]

    def _frame(self) -> np.ndarray:
        return self.rng.integers(0, self.alphabet, self.frame, dtype=np.uint8)

    def _reset(self) -> deque:
        first = self._frame()
        pad = first if self.padding == "reset" else np.zeros_like(first)
        return deque([pad] * (self.k - 1) + [first], maxlen=self.k)

    def _random_stack(self) -> deque:
        return deque([self._frame() for _ in range(self.k)], maxlen=self.k)

    def step(self) -> tuple[np.ndarray, ...]:
        """(obs, actions, rewards, real next obs, terminated, truncated) of one vector step."""
        n, rng = self.n, self.rng
        for i in range(n):
            if rng.random() < self.odd:
                self.queues[i] = self._random_stack()
        obs = np.stack([np.stack(q) for q in self.queues])
        nxt = np.empty_like(obs)
        for i, q in enumerate(self.queues):
            if rng.random() < self.odd:
                self.queues[i] = q = self._random_stack()
            else:
                q.append(self._frame())
            nxt[i] = np.stack(q)
        ended = rng.random(n) < self.p_end
        terminated = ended & (rng.random(n) < 0.5)
        truncated = ended & ~terminated
        for i in np.flatnonzero(ended):
            self.queues[i] = self._reset()
        actions = rng.integers(0, 3, n)
        rewards = rng.standard_normal(n).astype(np.float32)
        return obs, actions, rewards, nxt, terminated, truncated


def naive_add(buf: ReplayBuffer, obs, actions, rewards, nxt, terminated) -> tuple[int, int]:
    n = len(obs)
    return buf.add(torch.from_numpy(obs), torch.from_numpy(actions), torch.from_numpy(rewards),
                   torch.from_numpy(nxt), torch.from_numpy(terminated).float(),
                   torch.full((n,), GAMMA))


def assert_same_rows(naive: ReplayBuffer, frames: FrameReplay, idx: torch.Tensor | None = None
                     ) -> None:
    assert (naive.size, naive.pos) == (frames.size, frames.pos)
    if idx is None:
        idx = torch.arange(naive.size)
    a, b = naive.gather(idx), frames.gather(idx)
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape, f
        assert torch.equal(x, y), f


def through_bytes(state: dict) -> dict:
    """A state as a checkpoint holds it: saved and loaded back with weights_only=True."""
    blob = io.BytesIO()
    torch.save(state, blob)
    blob.seek(0)
    return torch.load(blob, weights_only=True)


streams = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "n": st.integers(1, 3),
    "k": st.integers(1, 4),
    "frame": st.sampled_from([(1,), (2, 2), (1, 3)]),
    "alphabet": st.integers(1, 3),
    "padding": st.sampled_from(["reset", "zero"]),
    "p_end": st.sampled_from([0.0, 0.1, 0.4, 1.0]),
    "odd": st.sampled_from([0.0, 0.0, 0.1, 0.5]),
    "extra_rows": st.integers(0, 12),
    "steps": st.integers(1, 40),
})


def make(p: dict, n_step: int = 1, **kwargs) -> tuple[StackedEnvs, ReplayBuffer, FrameReplay]:
    rng = np.random.default_rng(p["seed"])
    envs = StackedEnvs(rng, p["n"], p["k"], p["frame"], p["alphabet"], p["padding"],
                       p["p_end"], p["odd"])
    capacity = p["n"] * n_step + p["extra_rows"]  # an n-step step writes up to n rows an env
    shape = (p["k"], *p["frame"])
    naive = ReplayBuffer(capacity, shape, torch.uint8)
    frames = FrameReplay(capacity, shape, torch.uint8, num_envs=p["n"], n_step=n_step, **kwargs)
    return envs, naive, frames


@pytest.mark.filterwarnings("ignore:frame replay:RuntimeWarning")  # stores made to grow
@settings(max_examples=150, deadline=None)
@given(streams)
def test_gather_equals_a_row_buffer_of_stacks(p):
    """Every row, after every step, equals the naive buffer's; small stores grow when they must
    (short episodes, odd observations) and stay exact."""
    envs, naive, frames = make(p, frame_capacity=p["n"] + 1)
    for _ in range(p["steps"]):
        obs, actions, rewards, nxt, terminated, _ = envs.step()
        where = naive_add(naive, obs, actions, rewards, nxt, terminated)
        assert frames.add(obs, actions, rewards, nxt, terminated.astype(np.float32),
                          torch.full((p["n"],), GAMMA)) == where
        assert torch.equal(frames.rows(*where), naive.rows(*where))
        assert_same_rows(naive, frames)


@pytest.mark.filterwarnings("ignore:frame replay:RuntimeWarning")  # short episodes grow it
@settings(max_examples=100, deadline=None)
@given(streams, st.integers(2, 4), st.data())
def test_n_step_windows_of_frame_slots_equal_windows_of_stacks(p, n, data):
    """n-step rows formed over frame slots (as the DQN agent does with frames) equal n-step rows
    formed over whole stacks; a checkpoint round trip mid-stream changes nothing."""
    envs, naive, frames = make(p, n_step=n)
    shape = (p["k"], *p["frame"])
    writer = NStepWriter(n, GAMMA, p["n"], shape, torch.uint8)
    slots = NStepWriter(n, GAMMA, p["n"], (p["k"],), torch.int64)
    restart = data.draw(st.integers(0, p["steps"]))
    for step in range(p["steps"]):
        if step == restart:
            fresh = FrameReplay(frames.capacity, shape, torch.uint8, num_envs=p["n"], n_step=n)
            fresh.load_state_dict(through_bytes(frames.state_dict()))
            assert_same_rows(naive, fresh)
            frames = fresh
            writer.reset()
            slots.reset()
        obs, actions, rewards, nxt, terminated, truncated = envs.step()
        rows = writer.push(torch.from_numpy(obs), actions, rewards, torch.from_numpy(nxt),
                           terminated, truncated)
        where = naive.add(*rows) if len(rows[0]) else (naive.pos, 0)
        obs_ptr, next_ptr = frames.stacks(obs, nxt)
        ptr_rows = slots.push(torch.from_numpy(obs_ptr), actions, rewards,
                              torch.from_numpy(next_ptr), terminated, truncated)
        assert frames.add_rows(*ptr_rows) == where
        assert_same_rows(naive, frames)


@pytest.mark.filterwarnings("ignore:frame replay:RuntimeWarning")
@settings(max_examples=60, deadline=None)
@given(streams, st.data())
def test_checkpoint_round_trip(p, data):
    """state_dict -> torch.save/load -> load_state_dict into a new buffer: the same rows, the
    frames renumbered compactly, and adding goes on exactly as on the naive buffer."""
    envs, naive, frames = make(p)
    first = data.draw(st.integers(0, p["steps"]))
    for step in range(p["steps"]):
        if step == first:
            state = through_bytes(frames.state_dict())
            assert check_state(state, frames.capacity, frames.obs_shape, torch.uint8) is None
            assert len(state["frames"]) == frames.live_frames()
            frames = FrameReplay(frames.capacity, frames.obs_shape, torch.uint8,
                                 num_envs=p["n"])
            frames.load_state_dict(state)
            assert_same_rows(naive, frames)
        obs, actions, rewards, nxt, terminated, _ = envs.step()
        naive_add(naive, obs, actions, rewards, nxt, terminated)
        frames.add(obs, actions, rewards, nxt, terminated, torch.full((p["n"],), GAMMA))
        assert_same_rows(naive, frames)


def test_damaged_checkpoints_are_named_not_loaded():
    rng = np.random.default_rng(0)
    envs = StackedEnvs(rng, 2, 4, (3, 3), 5, "reset", 0.02, 0.0)
    frames = FrameReplay(16, (4, 3, 3), torch.uint8, num_envs=2)
    for _ in range(12):
        obs, actions, rewards, nxt, terminated, _ = envs.step()
        frames.add(obs, actions, rewards, nxt, terminated, torch.full((2,), GAMMA))
    good = frames.state_dict()
    assert check_state(good, 16, (4, 3, 3), torch.uint8) is None

    def broken(**changes) -> str | None:
        return check_state({**good, **changes}, 16, (4, 3, 3), torch.uint8)

    assert "no frame replay" in broken(kind=None)
    assert "position" in broken(size=17)
    assert good["size"] == 16 and "position" in broken(size=10)  # not full: head != size
    assert "frames" in broken(stack=3)
    assert "frames" in broken(frames=good["frames"].float())
    assert "points outside" in broken(obs_ptr=good["obs_ptr"] + len(good["frames"]))
    assert "points outside" in broken(next_ptr=good["next_ptr"] - 1 - good["next_ptr"].max())
    assert "more than they can point to" in broken(frames=torch.zeros(1000, 3, 3, dtype=torch.uint8))
    assert "rewards" in broken(rewards=good["rewards"][:-1])
    with pytest.raises(ValueError, match="points outside"):
        FrameReplay(16, (4, 3, 3), torch.uint8, num_envs=2).load_state_dict(
            {**good, "obs_ptr": good["obs_ptr"] + 10_000})


@pytest.mark.parametrize("sampler_kind", ["sum-tree", "device"])
def test_prioritized_learning_on_frames_equals_learning_on_rows(sampler_kind):
    """The reference learner with prioritized replay takes the same steps on a FrameReplay as on
    a row buffer holding the same transitions: same priorities, same parameters."""
    rng = np.random.default_rng(3)
    envs = StackedEnvs(rng, 4, 4, (5, 5), 256, "reset", 0.05, 0.0)
    capacity, shape = 64, (4, 5, 5)
    naive = ReplayBuffer(capacity, shape, torch.uint8)
    frames = FrameReplay(capacity, shape, torch.uint8, num_envs=4)

    def sampler():
        if sampler_kind == "sum-tree":
            return PrioritizedSampler(capacity, 0.6, 1e-6, seed=5)
        return TorchPrioritized(capacity, 0.6, 1e-6)

    def learner() -> ReferenceLearner:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(100, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        lr = ReferenceLearner(net, lr=1e-2, gamma=GAMMA, tau=1.0, target_update_interval=5)
        lr.per_generator.manual_seed(7)
        return lr

    runs = [(naive, sampler(), learner()), (frames, sampler(), learner())]
    for step in range(40):  # wraps the ring twice, learning as it goes
        obs, actions, rewards, nxt, terminated, _ = envs.step()
        first, n = naive_add(naive, obs, actions, rewards, nxt, terminated)
        frames.add(obs, actions, rewards, nxt, terminated, torch.full((4,), GAMMA))
        for buf, smp, lr in runs:
            if isinstance(smp, PrioritizedSampler):
                smp.on_add((first + np.arange(n)) % capacity)
            else:
                smp.on_add(buf.rows(first, n))
            if step >= 4:
                lr.learn(buf, smp, 2, 8, beta=0.5)
    (_, s0, l0), (_, s1, l1) = runs
    assert l0.steps == l1.steps == 72
    for p0, p1 in zip(l0.online.parameters(), l1.online.parameters()):
        assert torch.equal(p0, p1)
    assert torch.equal(s0.get_state()["priorities"], s1.get_state()["priorities"])
    assert len(set(s0.get_state()["priorities"].tolist())) > capacity // 2  # learned, not fresh


def test_memory_is_about_one_frame_per_row():
    """R rows of 4-stacks of 7x7 frames, episodes of 40-120 steps, the ring wrapped twice: the
    store keeps its planned size (no growth), which is R frames and a few percent, and the rows
    point to about R distinct frames, not the 2kR a row buffer holds."""
    capacity, n, k = 2_000, 4, 4
    rng = np.random.default_rng(1)
    envs = StackedEnvs(rng, n, k, (7, 7), 256, "reset", 1 / 80, 0.0)
    frames = FrameReplay(capacity, (k, 7, 7), torch.uint8, num_envs=n)
    planned = frame_slots(capacity, n, k)
    assert planned <= 1.04 * capacity + n * (k + 2)
    episodes = 0
    for _ in range(2 * capacity // n):
        obs, actions, rewards, nxt, terminated, truncated = envs.step()
        frames.add(obs, actions, rewards, nxt, terminated, torch.full((n,), GAMMA))
        episodes += int((terminated | truncated).sum())
    assert len(frames.frames) == planned and frames.generation == 0
    assert capacity <= frames.live_frames() <= capacity + n * k + episodes
    naive_bytes = 2 * capacity * k * 7 * 7
    frame_bytes = frames.frames.numel() * frames.frames.element_size()
    assert frame_bytes < 1.05 * naive_bytes / (2 * k)


def test_the_store_grows_rather_than_overwrite_a_live_frame():
    """Episodes of one step (each costs a reset frame) need about 2 frames a row: a store sized
    for long episodes grows, warns once per growth, and every row stays exact."""
    rng = np.random.default_rng(2)
    envs = StackedEnvs(rng, 2, 4, (2, 2), 256, "reset", 1.0, 0.0)
    naive = ReplayBuffer(64, (4, 2, 2), torch.uint8)
    frames = FrameReplay(64, (4, 2, 2), torch.uint8, num_envs=2)
    with pytest.warns(RuntimeWarning, match="grown to"):
        for _ in range(100):
            obs, actions, rewards, nxt, terminated, _ = envs.step()
            naive_add(naive, obs, actions, rewards, nxt, terminated)
            frames.add(obs, actions, rewards, nxt, terminated, torch.full((2,), GAMMA))
            assert_same_rows(naive, frames)
    assert frames.generation >= 1 and len(frames.frames) > frame_slots(64, 2, 4)


def test_a_reset_stack_costs_one_frame_and_final_observations_stay_apart():
    """By hand: env 0 ends (terminated) at step 2 and env 1 is truncated at step 1. The final
    observations are the rows' next stacks, the reset stacks the next rows' obs, and a reset
    stack padded by repeating its frame points to one slot k times."""
    k = 3
    f = [np.full((1, 2), v, dtype=np.uint8) for v in range(20)]

    def stack(*frames_):
        return np.stack(frames_)

    frames = FrameReplay(8, (k, 1, 2), torch.uint8, num_envs=2)
    steps = [  # (obs of env 0, env 1), (next of env 0, env 1), terminated, truncated
        ((stack(f[1], f[1], f[1]), stack(f[5], f[5], f[5])),
         (stack(f[1], f[1], f[2]), stack(f[5], f[5], f[6])), [False, False], [False, False]),
        ((stack(f[1], f[1], f[2]), stack(f[5], f[5], f[6])),
         (stack(f[1], f[2], f[3]), stack(f[5], f[6], f[7])), [False, False], [False, True]),
        ((stack(f[1], f[2], f[3]), stack(f[9], f[9], f[9])),
         (stack(f[2], f[3], f[4]), stack(f[9], f[9], f[10])), [True, False], [False, False]),
        ((stack(f[11], f[11], f[11]), stack(f[9], f[9], f[10])),
         (stack(f[11], f[11], f[12]), stack(f[9], f[10], f[13])), [False, False], [False, False]),
    ]
    new_frames = []
    for (o0, o1), (x0, x1), term, _trunc in steps:
        before = frames.head
        frames.add(np.stack([o0, o1]), np.zeros(2, dtype=np.int64), np.zeros(2),
                   np.stack([x0, x1]), np.array(term, dtype=np.float32), torch.full((2,), GAMMA))
        new_frames.append(frames.head - before)
    # first step: a reset stack (one frame) and a newest frame per env; then one frame per env,
    # plus one for each reset stack (env 1 at step 3, env 0 at step 4)
    assert new_frames == [4, 2, 3, 3]
    b = frames.gather(torch.arange(8))
    assert b.next_obs[3].tolist() == stack(f[5], f[6], f[7]).tolist()  # truncated: final obs
    assert b.obs[5].tolist() == stack(f[9], f[9], f[9]).tolist()  # ... next row: reset stack
    assert b.next_obs[4].tolist() == stack(f[2], f[3], f[4]).tolist()  # terminated: final obs
    assert b.obs[6].tolist() == stack(f[11], f[11], f[11]).tolist()
    assert b.dones.tolist()[:8] == [0, 0, 0, 0, 1, 0, 0, 0]
    assert len(set(frames.obs_ptr[6].tolist())) == 1  # the reset stack: one slot, k times


def test_auto_rule():
    assert is_frame_stack((4, 84, 84), np.uint8)
    assert not is_frame_stack((84, 84, 4), np.uint8)  # channels-last: an image, not a stack
    assert not is_frame_stack((10, 10, 4), np.bool_)  # MinAtar
    assert not is_frame_stack((4, 84, 84), np.float32)
    assert not is_frame_stack((8,), np.uint8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gather_on_cuda_equals_the_cpu():
    rng = np.random.default_rng(4)
    envs = StackedEnvs(rng, 3, 4, (6, 6), 256, "zero", 0.1, 0.05)
    cpu = FrameReplay(50, (4, 6, 6), torch.uint8, num_envs=3)
    gpu = FrameReplay(50, (4, 6, 6), torch.uint8, device="cuda", num_envs=3)
    for _ in range(60):
        obs, actions, rewards, nxt, terminated, _ = envs.step()
        for buf in (cpu, gpu):
            buf.add(obs, actions, rewards, nxt, terminated, torch.full((3,), GAMMA))
    idx = torch.randint(0, 50, (128,))
    a, b = cpu.gather(idx), gpu.gather(idx.cuda())
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f).cpu()), f


# ---------------------------------------------------------------------------------------------
# The DQN agent with frame replay, in real runs
# ---------------------------------------------------------------------------------------------

STACK = 4
FRAME_LENGTHS = (3, 8, 2, 5, 9, 1)
"""Termination lengths of FrameCounterEnv's episodes, cycled; 8 and 9 pass the time limit."""
FRAME_TIME_LIMIT = 6


class FrameCounterEnv(gym.Env):
    """7x7 uint8 frames that say which episode and step they belong to: pixel (0, 0) and (0, 1)
    hold the episode id (base 256), (0, 2) the step t, the rest a pattern of both. Episode e
    terminates after FRAME_LENGTHS[e % 6] steps; the reward pays for action e % 2."""

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (7, 7), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self.episode, self.t = -1, 0

    def _frame(self) -> np.ndarray:
        f = ((np.arange(49) * 7 + self.episode * 13 + self.t * 29) % 256).astype(np.uint8)
        f[:3] = self.episode // 256, self.episode % 256, self.t
        return f.reshape(7, 7)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.episode = (int(seed) % 200) * 300 - 1
        self.episode += 1
        self.t = 0
        return self._frame(), {}

    def step(self, action):
        self.t += 1
        terminated = self.t >= FRAME_LENGTHS[self.episode % len(FRAME_LENGTHS)]
        return self._frame(), float(int(action) == self.episode % 2), terminated, False, {}


def make_frame_env() -> gym.Env:
    env = TimeLimit(FrameCounterEnv(), max_episode_steps=FRAME_TIME_LIMIT)
    return FrameStackObservation(env, STACK)


def decode(stacks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(episode id, t) of every frame of [rows, k, 7, 7] stacks, each [rows, k]."""
    px = stacks.reshape(*stacks.shape[:2], -1).numpy().astype(np.int64)
    return px[..., 0] * 256 + px[..., 1], px[..., 2]


FRAME_RUN = dict(env_id="FrameCounter", env_factory=make_frame_env, vector="sync", num_envs=3,
                 hidden=(16,), network="mlp", batch_size=8, buffer_size=96, learning_starts=24,
                 gamma=GAMMA,
                 eval_every=0, solve_episodes=1, eval_envs=1, progress=False, save_buffer=True)


@pytest.mark.parametrize("n_step,prioritized", [(1, False), (3, True)])
def test_rows_a_run_stores_are_transitions_of_one_episode(tmp_path, n_step, prioritized):
    """A run on stacked frames (auto: frame replay, MLP on the reference route): every row of
    the saved buffer, its stacks rebuilt, holds k consecutive frames of one episode padded with
    the reset frame, and a next stack m <= n steps later of the same episode: the true final
    one at a termination (done) or truncation (not done), never the reset one."""
    run = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="frame store"):  # episodes of 1 to 6 steps
        r = train(**FRAME_RUN, n_step=n_step, prioritized=prioritized, total_timesteps=600,
                  run_dir=str(run))
    s = r.summary
    assert s["replay"]["kind"] == "frames"
    assert s["learner_route"].startswith("reference") and "frame replay" in s["learner_route"]
    assert s["learner_steps"] > 50
    buf = load_checkpoint(run / "checkpoint.pt")["buffer"]
    assert buf["size"] == 96
    frames = buf["frames"]
    eid, t = decode(frames[buf["obs_ptr"]])
    eid2, t2 = decode(frames[buf["next_ptr"]])
    ramp = np.arange(STACK) - (STACK - 1)
    assert (eid == eid[:, :1]).all() and (eid2 == eid[:, :1]).all()
    assert (t == np.maximum(t[:, -1:] + ramp, 0)).all()
    assert (t2 == np.maximum(t2[:, -1:] + ramp, 0)).all()
    m = t2[:, -1] - t[:, -1]
    assert set(m.tolist()) == set(range(1, n_step + 1))
    assert np.allclose(buf["discounts"].numpy(), GAMMA ** m)
    length = np.array(FRAME_LENGTHS)[eid[:, 0] % len(FRAME_LENGTHS)]
    terminal = t2[:, -1] == length
    assert (buf["dones"].numpy() == terminal).all()
    ends = (t2[:, -1] == np.minimum(length, FRAME_TIME_LIMIT))
    assert terminal.any() and (ends & ~terminal).any()  # both kinds of episode end are stored
    assert len(frames) < 1.5 * buf["size"]  # about one frame per row, not 2k


@pytest.mark.filterwarnings("ignore:frame replay:RuntimeWarning")  # short episodes grow it
def test_resume_with_a_saved_frame_buffer_and_refusals(tmp_path):
    run = tmp_path / "run"
    train(**FRAME_RUN, total_timesteps=150, run_dir=str(run))
    saved = load_checkpoint(run / "checkpoint.pt")
    assert saved["replay"] == "frames"
    r = train(**FRAME_RUN, total_timesteps=300, run_dir=str(run), resume=True)
    assert r.summary["total_env_steps"] == 300 and r.summary["replay"]["kind"] == "frames"
    with pytest.raises(CheckpointError, match="pass --frame-replay on to resume it"):
        train(**FRAME_RUN, total_timesteps=450, run_dir=str(run), resume=True,
              frame_replay="off")
    broken = load_checkpoint(run / "checkpoint.pt")
    broken["buffer"]["next_ptr"] = broken["buffer"]["next_ptr"] + 10**6
    save_checkpoint(run / "checkpoint.pt", broken)
    with pytest.raises(CheckpointError, match="next_ptr points outside"):
        train(**FRAME_RUN, total_timesteps=450, run_dir=str(run), resume=True)


def test_frame_replay_off_and_refusals(tmp_path):
    r = train(**FRAME_RUN, total_timesteps=60, run_dir=str(tmp_path / "off"),
              frame_replay="off")
    assert r.summary["replay"] == {"kind": "rows"}
    assert r.summary["learner_route"].startswith("cpu-fused")
    with pytest.raises(ConfigError, match="rank >= 2"):
        train(env_id="CartPole-v1", vector="sync", num_envs=1, frame_replay="on",
              run_dir=str(tmp_path / "cartpole"), progress=False)
    assert not (tmp_path / "cartpole").exists()
    with pytest.raises(ConfigError, match="--frame-replay applies to --algo dqn only"):
        train(env_id="CartPole-v1", algo="pqn", frame_replay="on", run_dir=str(tmp_path / "p"))


def make_breakout() -> gym.Env:
    """ALE Breakout through gymnasium's own DQN wrappers, cut at 60 agent steps (240 frames)
    to truncate often."""
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make("ALE/Breakout-v5", frameskip=1, max_episode_steps=240)
    return FrameStackObservation(AtariPreprocessing(env, frame_skip=4, noop_max=30), 4)


def test_real_atari_frames_through_the_vector_env_equal_a_row_buffer():
    """Breakout frames (real: static screens between lives repeat frames) from a SAME_STEP
    vector env, final observations from real_next_obs, the ring wrapped: the same rows as a row
    buffer, from about one frame per row."""
    pytest.importorskip("ale_py", reason='needs the atari extra: pip install -e ".[atari]"')
    envs = make_vector_env("ALE/Breakout-v5", 2, "sync", make_breakout)
    naive = ReplayBuffer(256, (4, 84, 84), torch.uint8)
    frames = FrameReplay(256, (4, 84, 84), torch.uint8, num_envs=2)
    real = np.empty((2, 4, 84, 84), dtype=np.uint8)
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    ends = 0
    try:
        for _ in range(400):
            actions = rng.integers(0, 4, 2)
            nxt, rewards, terminated, truncated, infos = envs.step(actions)
            real_next_obs(nxt, infos, real)
            naive_add(naive, obs, actions, rewards.astype(np.float32), real, terminated)
            frames.add(obs, actions, rewards, real, terminated, torch.full((2,), GAMMA))
            obs = nxt
            ends += int((terminated | truncated).sum())
    finally:
        envs.close()
    assert ends >= 4
    assert_same_rows(naive, frames)
    assert frames.generation == 0 and frames.live_frames() <= 256 + 2 * 4 + ends
