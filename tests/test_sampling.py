"""UniformSampler: range, shape, determinism, checkpointable state, uniformity."""

from __future__ import annotations

import numpy as np
import pytest

from fastdqn.replay.uniform import UniformSampler, seed_state


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000, 100_003, 2**31 - 1, 2**32 - 1])
def test_indices_in_range(size):
    out = UniformSampler(5).sample(size, 8, 512)
    assert out.dtype == np.int64
    assert out.min() >= 0
    assert out.max() < size


def test_size_one_gives_only_zeros():
    assert not UniformSampler(3).sample(1, 4, 64).any()


def test_large_size_reaches_the_upper_part():
    size = 10**9
    out = UniformSampler(11).sample(size, 4, 1000)
    assert out.max() > size * 0.99  # not stuck in a low range (e.g. a truncated 32-bit draw)
    assert out.min() < size * 0.01


@pytest.mark.parametrize(("k", "b"), [(1, 1), (1, 128), (4, 32), (7, 3)])
def test_shape(k, b):
    out = UniformSampler(0).sample(50, k, b)
    assert out.shape == (k, b)


def test_out_buffer_is_filled_in_place():
    out = np.full((3, 5), -1, dtype=np.int64)
    res = UniformSampler(2).sample(10, 3, 5, out=out)
    assert res is out
    assert (out >= 0).all() and (out < 10).all()
    assert np.array_equal(out, UniformSampler(2).sample(10, 3, 5))


def test_same_seed_same_stream():
    a, b = UniformSampler(42), UniformSampler(42)
    for size in (10, 1000, 77):
        assert np.array_equal(a.sample(size, 3, 64), b.sample(size, 3, 64))


def test_different_seeds_differ():
    blocks = [UniformSampler(s).sample(1_000_000, 2, 64) for s in (0, 1, 2, 1000)]
    for i in range(len(blocks)):
        for j in range(i + 1, len(blocks)):
            assert (blocks[i] != blocks[j]).mean() > 0.99


def test_consecutive_calls_differ():
    s = UniformSampler(7)
    assert not np.array_equal(s.sample(1_000_000, 1, 64), s.sample(1_000_000, 1, 64))


def test_seed_state_is_nonzero_and_distinct():
    states = {tuple(seed_state(s).tolist()) for s in range(200)}
    assert len(states) == 200
    assert all(any(w != 0 for w in st) for st in states)


def test_get_state_set_state_reproduces_continuation():
    s = UniformSampler(9)
    s.sample(100, 5, 17)  # advance
    saved = s.get_state()
    assert isinstance(saved, list) and len(saved) == 2
    assert all(isinstance(w, int) for w in saved)
    expected = [s.sample(100, 2, 16), s.sample(33, 1, 8)]

    s.set_state(saved)
    assert np.array_equal(s.sample(100, 2, 16), expected[0])
    assert np.array_equal(s.sample(33, 1, 8), expected[1])

    other = UniformSampler(12345)
    other.set_state(saved)
    assert np.array_equal(other.sample(100, 2, 16), expected[0])
    assert np.array_equal(other.sample(33, 1, 8), expected[1])


def test_state_survives_a_json_like_round_trip():
    import json

    s = UniformSampler(3)
    s.sample(10, 1, 3)
    restored = UniformSampler(0)
    restored.set_state(json.loads(json.dumps(s.get_state())))
    assert np.array_equal(restored.sample(1000, 2, 10), s.sample(1000, 2, 10))


def test_roughly_uniform():
    out = UniformSampler(2024).sample(10, 100, 1000).ravel()  # 100k draws
    counts = np.bincount(out, minlength=10)
    assert counts.shape == (10,)
    expected = out.size / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 9 degrees of freedom: P(chi2 > 40) is about 1e-5; a broken sampler gives thousands.
    assert chi2 < 40.0, counts


def test_roughly_uniform_non_power_of_two():
    out = UniformSampler(99).sample(3, 30, 1000).ravel()
    freq = np.bincount(out, minlength=3) / out.size
    assert np.allclose(freq, 1 / 3, atol=0.015), freq


@pytest.mark.parametrize("size", [0, -1])
def test_empty_size_raises(size):
    with pytest.raises(ValueError, match="empty buffer"):
        UniformSampler(0).sample(size, 1, 4)
