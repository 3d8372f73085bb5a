"""ReplayBuffer: ring contents row by row, dtypes, gather/split, state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdqn.core.device import torch_dtype
from fastdqn.replay.rows import Batch, ReplayBuffer


def transitions(ids: list[int], obs_dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    """Transitions whose every field encodes its id k: obs [k, k+.5], action k % 7, ..."""
    k = torch.tensor(ids, dtype=torch.float32)
    obs = torch.stack([k, k + 0.5], 1).to(obs_dtype)
    actions = torch.tensor(ids, dtype=torch.int64) % 7
    rewards = 10.0 * k - 3.0
    next_obs = torch.stack([k + 100.0, k + 100.5], 1).to(obs_dtype)
    dones = (torch.tensor(ids) % 2).float()
    discounts = 0.5 ** (torch.tensor(ids, dtype=torch.float32) % 3 + 1)
    return obs, actions, rewards, next_obs, dones, discounts


def assert_row(buf: ReplayBuffer, row: int, k: int) -> None:
    assert buf.obs[row].tolist() == [k, k + 0.5]
    assert buf.actions[row].item() == k % 7
    assert buf.rewards[row].item() == 10.0 * k - 3.0
    assert buf.next_obs[row].tolist() == [k + 100.0, k + 100.5]
    assert buf.dones[row].item() == float(k % 2)
    assert buf.discounts[row].item() == 0.5 ** (k % 3 + 1)


def assert_empty_row(buf: ReplayBuffer, row: int) -> None:
    assert buf.obs[row].tolist() == [0.0, 0.0]
    assert buf.actions[row].item() == 0
    assert buf.rewards[row].item() == 0.0
    assert buf.next_obs[row].tolist() == [0.0, 0.0]
    assert buf.dones[row].item() == 0.0
    assert buf.discounts[row].item() == 0.0


def test_wrap_around_contents_row_by_row():
    buf = ReplayBuffer(5, (2,), torch.float32)
    assert (buf.pos, buf.size) == (0, 0)

    buf.add(*transitions([0, 1]))
    assert (buf.pos, buf.size) == (2, 2)
    for row, k in [(0, 0), (1, 1)]:
        assert_row(buf, row, k)
    for row in (2, 3, 4):
        assert_empty_row(buf, row)

    buf.add(*transitions([2, 3]))
    assert (buf.pos, buf.size) == (4, 4)
    for row, k in enumerate([0, 1, 2, 3]):
        assert_row(buf, row, k)
    assert_empty_row(buf, 4)

    buf.add(*transitions([4, 5]))  # wraps: 4 -> row 4, 5 -> row 0
    assert (buf.pos, buf.size) == (1, 5)
    for row, k in enumerate([5, 1, 2, 3, 4]):
        assert_row(buf, row, k)

    buf.add(*transitions([6, 7]))
    assert (buf.pos, buf.size) == (3, 5)
    for row, k in enumerate([5, 6, 7, 3, 4]):
        assert_row(buf, row, k)

    buf.add(*transitions([8, 9]))
    assert (buf.pos, buf.size) == (0, 5)  # ends exactly at capacity
    for row, k in enumerate([5, 6, 7, 8, 9]):
        assert_row(buf, row, k)


def test_add_a_full_capacity_block_at_an_offset():
    buf = ReplayBuffer(4, (2,), torch.float32)
    buf.add(*transitions([0]))
    buf.add(*transitions([1, 2, 3, 4]))  # wraps over the whole ring
    assert (buf.pos, buf.size) == (1, 4)
    for row, k in enumerate([4, 1, 2, 3]):
        assert_row(buf, row, k)


def test_adding_more_than_capacity_raises():
    buf = ReplayBuffer(3, (2,), torch.float32)
    with pytest.raises(ValueError, match="cannot add 4 transitions to a buffer of 3"):
        buf.add(*transitions([0, 1, 2, 3]))
    assert (buf.pos, buf.size) == (0, 0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64, torch.int16])
def test_obs_dtype_kept(dtype):
    buf = ReplayBuffer(4, (3, 2), dtype)
    assert buf.obs.dtype == dtype
    assert buf.next_obs.dtype == dtype
    obs = torch.full((2, 3, 2), 200).to(dtype)
    buf.add(obs, torch.tensor([1, 2]), torch.tensor([0.5, 1.5]), obs + 1,
            torch.tensor([0.0, 1.0]), torch.tensor([0.9, 0.81]))
    assert buf.obs.dtype == dtype
    batch = buf.gather(torch.tensor([0, 1]))
    assert batch.obs.dtype == dtype and batch.next_obs.dtype == dtype
    assert batch.obs.shape == (2, 3, 2)
    assert torch.equal(batch.obs, obs)
    assert torch.equal(batch.next_obs, obs + 1)
    assert batch.actions.dtype == torch.int64
    assert batch.rewards.dtype == torch.float32
    assert batch.dones.dtype == torch.float32


def test_uint8_values_survive_exactly():
    buf = ReplayBuffer(3, (4,), torch.uint8)
    obs = torch.tensor([[0, 1, 254, 255], [7, 128, 200, 3]], dtype=torch.uint8)
    buf.add(obs, torch.tensor([0, 1]), torch.zeros(2), obs.flip(1), torch.zeros(2),
            torch.ones(2))
    assert buf.obs[:2].tolist() == obs.tolist()
    assert buf.next_obs[:2].tolist() == obs.flip(1).tolist()


@pytest.mark.parametrize(("np_dtype", "expected"), [
    (np.uint8, torch.uint8), (np.float32, torch.float32), (np.float64, torch.float64),
    (np.int64, torch.int64),
])
def test_torch_dtype(np_dtype, expected):
    assert torch_dtype(np.dtype(np_dtype)) == expected


def test_gather_returns_the_indexed_rows():
    buf = ReplayBuffer(6, (2,), torch.float32)
    buf.add(*transitions([10, 11, 12, 13, 14, 15]))
    idx = torch.tensor([4, 0, 0, 5, 2])
    batch = buf.gather(idx)
    ks = [14, 10, 10, 15, 12]
    assert batch.obs.tolist() == [[k, k + 0.5] for k in ks]
    assert batch.actions.tolist() == [k % 7 for k in ks]
    assert batch.rewards.tolist() == [10.0 * k - 3.0 for k in ks]
    assert batch.next_obs.tolist() == [[k + 100.0, k + 100.5] for k in ks]
    assert batch.dones.tolist() == [float(k % 2) for k in ks]


def test_gather_copies_rather_than_aliases():
    buf = ReplayBuffer(3, (2,), torch.float32)
    buf.add(*transitions([0, 1, 2]))
    batch = buf.gather(torch.tensor([1]))
    buf.add(*transitions([7, 8, 9]))
    assert batch.obs.tolist() == [[1.0, 1.5]]


def test_batch_split_into_consecutive_views():
    buf = ReplayBuffer(8, (2,), torch.float32)
    buf.add(*transitions(list(range(8))))
    block = buf.gather(torch.tensor([7, 6, 5, 4, 3, 2]))
    parts = block.split(3)
    assert len(parts) == 3
    expected = [[7, 6], [5, 4], [3, 2]]
    for part, ks in zip(parts, expected):
        assert isinstance(part, Batch)
        assert part.obs.tolist() == [[k, k + 0.5] for k in ks]
        assert part.actions.tolist() == [k % 7 for k in ks]
        assert part.rewards.tolist() == [10.0 * k - 3.0 for k in ks]
        assert part.next_obs.tolist() == [[k + 100.0, k + 100.5] for k in ks]
        assert part.dones.tolist() == [float(k % 2) for k in ks]
    # views of the block, not copies
    parts[1].rewards[0] = -1.0
    assert block.rewards[2].item() == -1.0


def test_state_dict_round_trip_partial_and_continues_identically():
    src = ReplayBuffer(5, (2,), torch.float32)
    src.add(*transitions([0, 1, 2]))
    state = src.state_dict()
    assert state["pos"] == 3 and state["size"] == 3
    assert state["obs"].shape == (3, 2)

    dst = ReplayBuffer(5, (2,), torch.float32)
    dst.load_state_dict(state)
    assert (dst.pos, dst.size) == (3, 3)
    for row, k in enumerate([0, 1, 2]):
        assert_row(dst, row, k)

    for buf in (src, dst):
        buf.add(*transitions([3, 4, 5]))
    assert (dst.pos, dst.size) == (src.pos, src.size) == (1, 5)
    for name in ("obs", "actions", "rewards", "next_obs", "dones"):
        assert torch.equal(getattr(dst, name), getattr(src, name))


def test_state_dict_round_trip_full_wrapped_ring():
    src = ReplayBuffer(4, (2,), torch.uint8)
    src.add(*transitions([0, 1, 2], torch.uint8))
    src.add(*transitions([3, 4, 5], torch.uint8))
    state = src.state_dict()
    dst = ReplayBuffer(4, (2,), torch.uint8)
    dst.load_state_dict(state)
    assert (dst.pos, dst.size) == (2, 4)
    for name in ("obs", "actions", "rewards", "next_obs", "dones"):
        assert torch.equal(getattr(dst, name), getattr(src, name))
    assert dst.obs.dtype == torch.uint8


def test_load_state_dict_larger_than_capacity_raises():
    src = ReplayBuffer(5, (2,), torch.float32)
    src.add(*transitions([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="holds 4 rows, capacity is 3"):
        ReplayBuffer(3, (2,), torch.float32).load_state_dict(src.state_dict())


@settings(max_examples=60, deadline=None)
@given(data=st.data(), capacity=st.integers(1, 9))
def test_matches_a_list_ring_model(data, capacity):
    sizes = data.draw(st.lists(st.integers(1, capacity), min_size=1, max_size=12))
    buf = ReplayBuffer(capacity, (2,), torch.float32)
    model: list[int | None] = [None] * capacity
    pos = size = 0
    next_id = 0
    for n in sizes:
        ids = list(range(next_id, next_id + n))
        next_id += n
        buf.add(*transitions(ids))
        for k in ids:
            model[pos] = k
            pos = (pos + 1) % capacity
        size = min(size + n, capacity)
        assert (buf.pos, buf.size) == (pos, size)
        for row, k in enumerate(model):
            if k is None:
                assert_empty_row(buf, row)
            else:
                assert_row(buf, row, k)
    # the filled part holds exactly the `size` most recent transitions
    assert sorted(k for k in model if k is not None) == list(range(next_id - size, next_id))


def test_state_dict_holds_only_the_filled_rows():
    """A --save-buffer checkpoint grows with the filled part, not with the capacity."""
    import io

    big = ReplayBuffer(100_000, (8,), torch.float32)
    big.add(torch.ones(4, 8), torch.zeros(4, dtype=torch.int64), torch.zeros(4),
            torch.ones(4, 8), torch.zeros(4), torch.ones(4))
    f = io.BytesIO()
    torch.save(big.state_dict(), f)
    assert len(f.getvalue()) < 10_000  # the full obs tensor alone is 3.2 MB
    assert big.state_dict()["capacity"] == 100_000


def test_load_state_dict_refuses_another_capacity():
    src = ReplayBuffer(5, (2,), torch.float32)
    src.add(*transitions([0, 1]))
    with pytest.raises(ValueError, match="saved buffer has capacity 5, this one 6"):
        ReplayBuffer(6, (2,), torch.float32).load_state_dict(src.state_dict())


@settings(max_examples=60, deadline=None)
@given(data=st.data(), capacity=st.integers(1, 9))
def test_add_sample_and_reload_sequences_match_a_list_ring_model(data, capacity):
    """Random add / sample / save-reload sequences against a plain-Python ring.

    The model is a Python list of transition ids, written at `pos` and wrapping; sampling must
    return exactly the model's rows at indices the sampler draws from the filled part.
    """
    from fastdqn.replay.uniform import UniformSampler

    sampler = UniformSampler(data.draw(st.integers(0, 2**32)))
    buf = ReplayBuffer(capacity, (2,), torch.float32)
    model: list[int] = []
    pos = next_id = 0
    ops = data.draw(st.lists(st.sampled_from(["add", "sample", "reload"]), max_size=25))
    for op in ops:
        if op == "add":
            n = data.draw(st.integers(1, capacity))
            ids = list(range(next_id, next_id + n))
            next_id += n
            buf.add(*transitions(ids))
            for k in ids:
                if len(model) < capacity:
                    model.append(k)
                else:
                    model[pos] = k
                pos = (pos + 1) % capacity
        elif op == "sample" and model:
            k, b = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5))
            idx = sampler.sample(buf.size, k, b)
            assert idx.shape == (k, b)
            assert ((0 <= idx) & (idx < len(model))).all()
            batch = buf.gather(torch.from_numpy(idx).view(-1))
            ks = [model[i] for i in idx.reshape(-1)]
            assert batch.obs.tolist() == [[k, k + 0.5] for k in ks]
            assert batch.actions.tolist() == [k % 7 for k in ks]
            assert batch.rewards.tolist() == [10.0 * k - 3.0 for k in ks]
            assert batch.next_obs.tolist() == [[k + 100.0, k + 100.5] for k in ks]
            assert batch.dones.tolist() == [float(k % 2) for k in ks]
        elif op == "reload":
            fresh = ReplayBuffer(capacity, (2,), torch.float32)
            fresh.load_state_dict(buf.state_dict())
            buf = fresh
        assert (buf.pos, buf.size) == (pos, len(model))
    for row, k in enumerate(model):
        assert_row(buf, row, k)
