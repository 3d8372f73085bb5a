"""Prioritized replay: sum tree against a plain-list model, sampled frequencies, IS weights,
priority writes, checkpoint round trips, and the device version against the CPU one."""

from __future__ import annotations

import bisect
import io
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdqn.replay.prioritized import PrioritizedSampler, TorchPrioritized, beta_at

ONE_MINUS = float(np.nextafter(1.0, 0.0))
"""The largest uniform below 1: with B = 4, (3 + u) rounds to 4 and the target to the total."""


def check_tree(s: PrioritizedSampler) -> None:
    """Every internal node is exactly the sum of its children; rows past capacity hold 0."""
    tree, n = s.tree, s.leaves
    assert np.array_equal(tree[1:n], tree[2:2 * n:2] + tree[3:2 * n:2])
    assert not tree[n + s.capacity:].any()
    assert not tree[n + s.filled:].any()


def sample_u(s: PrioritizedSampler, size: int, u, beta: float) -> tuple[np.ndarray, np.ndarray]:
    u = np.atleast_2d(np.asarray(u, dtype=np.float64))
    idx = np.empty(u.shape, dtype=np.int64)
    w = np.empty(u.shape, dtype=np.float32)
    s.sample_from_uniforms(size, u, beta, idx, w)
    return idx, w


def sample_block(s: PrioritizedSampler, size: int, k: int, b: int,
                 beta: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    idx = np.empty((k, b), dtype=np.int64)
    w = np.empty((k, b), dtype=np.float32)
    s.sample_block(size, beta, idx, w)
    return idx, w


def filled_sampler(td_abs, alpha: float, eps: float, capacity: int | None = None,
                   seed: int = 0) -> PrioritizedSampler:
    """Rows [0, len(td_abs)) added, then given priorities (|td| + eps) ** alpha."""
    n = len(td_abs)
    s = PrioritizedSampler(capacity or n, alpha, eps, seed)
    s.on_add(np.arange(n))
    s.update(np.arange(n), np.asarray(td_abs, dtype=np.float64))
    return s


def model_rows(p: list[float], targets: np.ndarray, tol: float) -> list[tuple[int, int]]:
    """For each target, the rows a prefix-sum descent over p may give, allowing round-off of
    `tol`: (lo, hi) with lo == hi unless the target is within tol of an interval boundary."""
    cdf = list(itertools.accumulate(p))
    last = max(i for i, v in enumerate(p) if v > 0)
    return [(min(bisect.bisect_right(cdf, t - tol), last), min(bisect.bisect_right(cdf, t + tol), last))
            for t in targets]


# ---------------------------------------------------------------------------------------------
# beta annealing and arguments
# ---------------------------------------------------------------------------------------------


def test_beta_at_anneals_linearly_to_one():
    assert beta_at(0, 1000, 0.4) == pytest.approx(0.4)
    assert beta_at(250, 1000, 0.4) == pytest.approx(0.55)
    assert beta_at(1000, 1000, 0.4) == pytest.approx(1.0)
    assert beta_at(5000, 1000, 0.4) == pytest.approx(1.0)
    assert beta_at(-3, 1000, 0.4) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="total_steps"):
        beta_at(0, 0, 0.4)


@pytest.mark.parametrize("impl", ["numba", "torch"])
@pytest.mark.parametrize(("capacity", "alpha", "eps", "match"),
                         [(0, 0.6, 0.01, "capacity"), (10, -0.1, 0.01, "alpha"),
                          (10, float("nan"), 0.01, "alpha"), (10, 0.6, 0.0, "eps")])
def test_bad_hyperparameters_raise(impl, capacity, alpha, eps, match):
    with pytest.raises(ValueError, match=match):
        if impl == "numba":
            PrioritizedSampler(capacity, alpha, eps, seed=0)
        else:
            TorchPrioritized(capacity, alpha, eps)


# ---------------------------------------------------------------------------------------------
# Sum tree against a list model, under random add / update / zero / sample sequences
# ---------------------------------------------------------------------------------------------


class ListModel:
    """The priorities as a plain list, with the ring buffer's write order."""

    def __init__(self, capacity: int, alpha: float, eps: float) -> None:
        self.capacity, self.alpha, self.eps = capacity, alpha, eps
        self.p = [0.0] * capacity
        self.pos = self.size = 0
        self.max_priority = 1.0

    def add(self, n: int) -> list[int]:
        rows = [(self.pos + i) % self.capacity for i in range(n)]
        for r in rows:
            self.p[r] = self.max_priority ** self.alpha
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        return rows

    def update(self, idx: list[int], td: list[float]) -> None:
        for i, d in zip(idx, td):
            v = abs(d) + self.eps
            self.max_priority = max(self.max_priority, v)
            self.p[i] = v ** self.alpha


unit = st.floats(0.0, 1.0, exclude_max=True)
op = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 12)),
    st.tuples(st.just("update"), st.lists(st.tuples(st.integers(0, 10**6),
                                                    st.floats(-50, 50, allow_subnormal=False)),
                                          min_size=1, max_size=8)),
    st.tuples(st.just("zero"), st.integers(0, 10**6)),
    st.tuples(st.just("sample"), st.lists(unit, min_size=1, max_size=8), st.floats(0, 1)),
)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 40), alpha=st.sampled_from([0.0, 0.5, 0.6, 1.0]),
       eps=st.floats(1e-6, 1.0), ops=st.lists(op, max_size=25), seed=st.integers(0, 2**32))
def test_sum_tree_matches_list_model(capacity, alpha, eps, ops, seed):
    s = PrioritizedSampler(capacity, alpha, eps, seed)
    m = ListModel(capacity, alpha, eps)
    for o in ops:
        kind = o[0]
        if kind == "add":
            s.on_add(np.array(m.add(min(o[1], capacity))))
        elif kind == "update" and m.size:
            idx = [i % m.size for i, _ in o[1]]  # repeats are likely with small sizes
            td = [d for _, d in o[1]]
            s.update(np.array(idx), np.array(td))
            m.update(idx, td)
        elif kind == "zero" and m.size:
            state = s.get_state()
            state["priorities"][o[1] % m.size] = 0.0
            s.set_state(state)
            m.p[o[1] % m.size] = 0.0
        elif kind == "sample":
            if m.size == 0 or not any(m.p):
                with pytest.raises(ValueError):
                    sample_u(s, m.size, o[1], o[2])
                continue
            idx, w = sample_u(s, m.size, o[1], o[2])
            idx, w = idx[0], w[0]
            p = np.array(m.p)
            assert (idx >= 0).all() and (idx < m.size).all()
            assert (p[idx] > 0).all(), "drew a row with zero priority"
            assert (np.diff(idx) >= 0).all(), "strata are ordered, so are their rows"
            total = math.fsum(m.p)
            b = len(o[1])
            targets = (np.arange(b) + np.array(o[1])) * (total / b)
            for j, (lo, hi) in enumerate(model_rows(m.p, targets, 1e-9 * total)):
                assert lo <= idx[j] <= hi, (j, targets[j], idx[j], lo, hi)
            np.testing.assert_allclose(w, (p[idx].min() / p[idx]) ** o[2], rtol=1e-6)
            rng_idx, _ = sample_block(s, m.size, 3, 5)
            assert (rng_idx < m.size).all() and (p[rng_idx] > 0).all()

        check_tree(s)
        assert s.filled == m.size
        assert s.max_priority == m.max_priority
        np.testing.assert_allclose(s.tree[s.leaves: s.leaves + capacity], m.p, rtol=1e-12, atol=0)
        assert s.total == pytest.approx(math.fsum(m.p), rel=1e-12, abs=0)


def dyadic_td(rng: np.random.Generator, n: int, b: int) -> np.ndarray:
    """TD errors giving (alpha = 1, eps = 1/2) priorities that are multiples of 1/2 summing to
    b times a power of two: every sum, remainder and target below is then exact."""
    td = rng.integers(0, 20, size=n).astype(np.float64)
    total = td.sum() + 0.5 * n
    td[-1] += b * 2.0 ** math.ceil(math.log2(total / b)) - total
    return td


def tie_uniforms(cdf: list[float], b: int) -> np.ndarray:
    """Rows of stratum offsets whose targets land exactly on prefix-sum boundaries, each
    boundary once (offset 0 where a stratum has no boundary left)."""
    seg = cdf[-1] / b
    per = [[c / seg - j for c in cdf[:-1] if j * seg <= c < (j + 1) * seg] for j in range(b)]
    return np.array([[x[i] if i < len(x) else 0.0 for x in per]
                     for i in range(max(map(len, per)))])


def test_descent_equals_exact_prefix_sums_on_dyadic_priorities():
    """With exact arithmetic the tree must give exactly the row of the prefix-sum search, a
    target on a boundary included (it belongs to the row that starts there)."""
    rng = np.random.default_rng(5)
    b = 16
    td = dyadic_td(rng, 37, b)
    s = filled_sampler(td, alpha=1.0, eps=0.5, capacity=50)
    cdf = list(itertools.accumulate(td + 0.5))
    ties = tie_uniforms(cdf, b)
    u = np.concatenate([rng.random((200, b)), np.zeros((1, b)), ties])
    idx, _ = sample_u(s, 37, u, 0.5)
    targets = (np.arange(b) + u) * (cdf[-1] / b)
    assert np.isin(targets[-len(ties):], cdf).sum() == 36  # every inner boundary is hit
    expected = [[bisect.bisect_right(cdf, t) for t in row] for row in targets]
    assert np.array_equal(idx, expected)


def test_round_off_past_the_total_lands_on_the_last_row_with_mass():
    s = PrioritizedSampler(8, 1.0, 0.5, 0)
    s.on_add(np.arange(5))
    s.update(np.arange(5), np.array([0.5, 1.5, 3.5, 7.5, 0.5]))  # p = 1, 2, 4, 8, 1
    idx, _ = sample_u(s, 5, [[0.0, 0.0, 0.0, ONE_MINUS]], 1.0)
    # (3 + ONE_MINUS) * 16 / 4 == 16 == the total: an unguarded descent ends on row 5 (empty).
    assert np.array_equal(idx, [[0, 2, 3, 4]])


def test_zero_priority_rows_are_never_drawn():
    s = PrioritizedSampler(64, 0.6, 0.01, 3)
    s.on_add(np.arange(40))
    state = s.get_state()
    zero = [0, 1, 7, 8, 20, 38, 39]
    state["priorities"][zero] = 0.0
    s.set_state(state)
    check_tree(s)
    idx, _ = sample_block(s, 40, 500, 64)
    assert not np.isin(idx, zero).any()
    assert set(np.unique(idx)) == set(range(40)) - set(zero)
    idx, _ = sample_u(s, 40, [[0.0, 0.0, 0.0, ONE_MINUS]], 1.0)
    assert idx[0, 0] == 2 and idx[0, -1] == 37


# ---------------------------------------------------------------------------------------------
# Sampled frequencies: chi-square at p = 0.001, and the same test rejects wrong distributions
# ---------------------------------------------------------------------------------------------

CHI2_CRIT_19_DOF = 43.82
"""P(chi2 with 19 degrees of freedom > 43.82) = 0.001."""
ROWS, ALPHA, EPS = 20, 0.6, 0.01
TD = np.linspace(0.1, 2.0, ROWS)[np.random.default_rng(0).permutation(ROWS)]


def chi2(counts: np.ndarray, weights: np.ndarray) -> float:
    expected = weights / weights.sum() * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("impl", ["numba", "torch"])
@pytest.mark.parametrize("batch_size", [1, 32])
def test_frequencies_follow_priorities_to_the_alpha(impl, batch_size):
    """200k draws over 20 rows. With batch_size 1 nothing is stratified (the statistic is a
    plain chi2(19) draw); with 32 strata it is far smaller, so the bound is conservative."""
    k = 200_000 // batch_size
    if impl == "numba":
        idx, _ = sample_block(filled_sampler(TD, ALPHA, EPS, seed=2016), ROWS, k, batch_size)
    else:
        t = TorchPrioritized(ROWS, ALPHA, EPS)
        t.on_add(torch.arange(ROWS))
        t.update(torch.arange(ROWS), torch.from_numpy(TD))
        idx, _ = t.sample(k, batch_size, 0.4, torch.Generator().manual_seed(2016))
        idx = idx.numpy()
    counts = np.bincount(idx.ravel(), minlength=ROWS)
    assert counts.shape == (ROWS,)
    assert chi2(counts, (TD + EPS) ** ALPHA) < CHI2_CRIT_19_DOF
    # Power: uniform sampling, alpha = 1 and alpha = 0.5 are all rejected by far.
    assert chi2(counts, np.ones(ROWS)) > 100 * CHI2_CRIT_19_DOF
    assert chi2(counts, TD + EPS) > 100 * CHI2_CRIT_19_DOF
    assert chi2(counts, (TD + EPS) ** 0.5) > 5 * CHI2_CRIT_19_DOF


# ---------------------------------------------------------------------------------------------
# Importance weights by hand
# ---------------------------------------------------------------------------------------------

# |delta| + eps = 1, 4, 16, 64 and alpha = 0.5 give p = 1, 2, 4, 8: total 15, cdf 1, 3, 7, 15.
HAND_TD, HAND_ALPHA, HAND_EPS = [0.5, 3.5, 15.5, 63.5], 0.5, 0.5


@pytest.mark.parametrize("impl", ["numba", "torch"])
def test_is_weights_by_hand(impl):
    cases = [
        # B = 4, u = 0.1: targets 0.375, 4.125, 7.875, 11.625 -> rows 0, 2, 3, 3.
        # w = (p_min / p) ** beta with p_min = 1, beta = 0.5: 1, 1/2, 1/sqrt(8), 1/sqrt(8).
        ([0.1] * 4, 0.5, [0, 2, 3, 3], [1.0, 0.5, 0.35355339, 0.35355339]),
        # B = 2, u = 0.5: targets 3.75, 11.25 -> rows 2, 3. Unnormalized (N P)^-beta with N = 4:
        # (16/15)^-0.5 = 0.96824584, (32/15)^-0.5 = 0.68465844; over their max: 1, 0.70710678.
        ([0.5] * 2, 0.5, [2, 3], [1.0, 0.70710678]),
        # Same rows with beta = 1: 1, 4/8.
        ([0.5] * 2, 1.0, [2, 3], [1.0, 0.5]),
        # beta = 0: all ones.
        ([0.1] * 4, 0.0, [0, 2, 3, 3], [1.0, 1.0, 1.0, 1.0]),
    ]
    s = filled_sampler(HAND_TD, HAND_ALPHA, HAND_EPS)
    assert np.array_equal(s.priorities(), [1.0, 2.0, 4.0, 8.0])
    t = TorchPrioritized(4, HAND_ALPHA, HAND_EPS)
    t.set_state(s.get_state())
    for u, beta, rows, weights in cases:
        if impl == "numba":
            idx, w = sample_u(s, 4, [u], beta)
        else:
            idx, w = (x.numpy() for x in t.sample_from_uniforms(torch.tensor([u]), beta))
        assert np.array_equal(idx[0], rows)
        assert w.dtype == np.float32
        np.testing.assert_allclose(w[0], weights, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Priority writes
# ---------------------------------------------------------------------------------------------


def test_update_with_repeated_rows_keeps_the_tree_consistent_in_any_order():
    idx = [3, 5, 3, 1, 3]
    td = [1.0, 2.0, 3.0, 4.0, 5.0]
    for perm in itertools.permutations(range(len(idx))):
        s = PrioritizedSampler(8, 0.6, 0.01, 0)
        s.on_add(np.arange(6))
        i, d = np.array(idx)[list(perm)], np.array(td)[list(perm)]
        s.update(i, d)
        check_tree(s)
        last = {r: v for r, v in zip(i, d)}  # the last occurrence of each row
        expected = [(last[r] + 0.01) ** 0.6 if r in last else 1.0 for r in range(6)]
        np.testing.assert_allclose(s.priorities(), expected, rtol=1e-12)
        assert s.total == pytest.approx(sum(expected), rel=1e-12)
        assert s.max_priority == pytest.approx(5.01)


def test_on_add_replaces_an_overwritten_rows_priority():
    s = PrioritizedSampler(6, 0.5, 0.01, 0)
    s.on_add(np.arange(6))
    assert np.array_equal(s.priorities(), np.ones(6))  # max_priority starts at 1
    s.update(np.array([0, 1, 2, 3]), np.array([8.99, 0.0, 3.99, 0.0]))  # 9, .01, 4, .01
    assert s.max_priority == pytest.approx(9.0)
    s.on_add(np.array([4, 5, 0, 1]))  # the ring wraps over rows 0 and 1
    check_tree(s)
    expected = [3.0, 3.0, 2.0, 0.1, 3.0, 3.0]  # 9 ** 0.5 for every (re)written row
    np.testing.assert_allclose(s.priorities(), expected, rtol=1e-12)
    assert s.total == pytest.approx(sum(expected), rel=1e-12)
    assert s.filled == 6


def test_rejected_updates_leave_the_tree_untouched():
    s = filled_sampler([1.0, 2.0, 3.0], 0.6, 0.01, capacity=8)
    before = s.tree.copy()
    with pytest.raises(IndexError):
        s.update(np.array([0, 3]), np.array([5.0, 5.0]))  # row 3 was never added
    with pytest.raises(IndexError):
        s.update(np.array([0, -1]), np.array([5.0, 5.0]))
    with pytest.raises(ValueError, match="non-finite"):
        s.update(np.array([0, 1]), np.array([5.0, np.nan]))
    with pytest.raises(ValueError, match="2 indices but 3"):
        s.update(np.array([0, 1]), np.array([5.0, 5.0, 5.0]))
    with pytest.raises(IndexError):
        s.on_add(np.array([2, 8]))
    assert np.array_equal(s.tree, before)
    assert s.max_priority == pytest.approx(3.01)


def test_sample_checks_its_arguments():
    s = filled_sampler([1.0, 2.0, 3.0], 0.6, 0.01, capacity=8)
    with pytest.raises(ValueError, match="size 4"):
        sample_block(s, 4, 1, 2)
    with pytest.raises(ValueError, match="empty"):
        sample_block(PrioritizedSampler(8, 0.6, 0.01, 0), 0, 1, 2)
    with pytest.raises(TypeError):
        s.sample_block(3, 0.4, np.empty((1, 2), np.int32), np.empty((1, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        s.sample(3, 4, 0.4, np.empty(3, np.int64), np.empty(3, np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        s.sample_block(3, 0.4, np.empty((2, 4), np.int64)[:, ::2], np.empty((2, 2), np.float32))


def test_sample_writes_in_place_and_one_batch_equals_a_block_row():
    a = filled_sampler(TD, ALPHA, EPS, seed=9)
    b = filled_sampler(TD, ALPHA, EPS, seed=9)
    idx = np.full(16, -1, dtype=np.int64)
    w = np.zeros(16, dtype=np.float32)
    a.sample(ROWS, 16, 0.7, idx, w)
    block_idx, block_w = sample_block(b, ROWS, 1, 16, beta=0.7)
    assert np.array_equal(idx, block_idx[0]) and np.array_equal(w, block_w[0])
    assert (idx >= 0).all() and w.max() == 1.0
    _, block_w = sample_block(b, ROWS, 50, 4)
    assert (block_w.max(axis=1) == 1.0).all(), "weights are normalized within each batch"


def test_same_seed_same_stream_and_calls_differ():
    a, b = filled_sampler(TD, ALPHA, EPS, seed=1), filled_sampler(TD, ALPHA, EPS, seed=1)
    first = sample_block(a, ROWS, 4, 8)[0]
    assert np.array_equal(first, sample_block(b, ROWS, 4, 8)[0])
    assert not np.array_equal(first, sample_block(a, ROWS, 4, 8)[0])
    other = filled_sampler(TD, ALPHA, EPS, seed=2)
    assert not np.array_equal(first, sample_block(other, ROWS, 4, 8)[0])


# ---------------------------------------------------------------------------------------------
# Checkpoint state
# ---------------------------------------------------------------------------------------------


def torch_round_trip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save({"prioritized": state}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)["prioritized"]


def test_state_round_trip_continues_the_same_stream():
    s = PrioritizedSampler(100, 0.6, 1e-3, 42)
    s.on_add(np.arange(70))
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx, _ = sample_block(s, 70, 2, 16)
        s.update(idx.ravel(), rng.normal(size=32))
    saved = torch_round_trip(s.get_state())

    def run(sampler: PrioritizedSampler) -> list[np.ndarray]:
        out = []
        td_rng = np.random.default_rng(1)
        for step in range(4):
            idx, w = sample_block(sampler, 70 + 10 * (step > 1), 3, 8)
            out += [idx, w]
            sampler.update(idx.ravel(), td_rng.normal(size=24))
            if step == 1:
                sampler.on_add(np.arange(70, 80))
        return out

    expected = run(s)
    restored = PrioritizedSampler(100, 0.6, 1e-3, seed=7)
    restored.set_state(saved)
    check_tree(restored)
    assert restored.filled == 70
    got = run(restored)
    for a, b in zip(expected, got):
        assert np.array_equal(a, b)
    assert np.array_equal(restored.tree, s.tree)
    assert restored.max_priority == s.max_priority


def test_set_state_rejects_a_mismatch():
    state = filled_sampler([1.0, 2.0], 0.6, 0.01, capacity=4).get_state()
    with pytest.raises(ValueError, match="capacity"):
        PrioritizedSampler(8, 0.6, 0.01, 0).set_state(state)
    with pytest.raises(ValueError, match="alpha"):
        PrioritizedSampler(4, 0.5, 0.01, 0).set_state(state)
    bad = dict(state, priorities=torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=">= 0"):
        PrioritizedSampler(4, 0.6, 0.01, 0).set_state(bad)
    with pytest.raises(ValueError, match=">= 0"):
        TorchPrioritized(4, 0.6, 0.01).set_state(bad)


# ---------------------------------------------------------------------------------------------
# TorchPrioritized against PrioritizedSampler
# ---------------------------------------------------------------------------------------------


def torch_from(s: PrioritizedSampler) -> TorchPrioritized:
    t = TorchPrioritized(s.capacity, s.alpha, s.eps)
    t.set_state(torch_round_trip(s.get_state()))
    return t


def test_torch_equals_numba_exactly_on_dyadic_priorities():
    """Exact sums on both sides: the same rows, targets on boundaries included."""
    rng = np.random.default_rng(11)
    s = filled_sampler(dyadic_td(rng, 300, 32), 1.0, 0.5, capacity=512)
    t = torch_from(s)
    ties = tie_uniforms(list(itertools.accumulate(s.priorities())), 32)
    u = np.concatenate([rng.random((64, 32)), np.zeros((1, 32)), ties,
                        np.full((1, 32), ONE_MINUS)])
    idx, w = sample_u(s, 300, u, 0.6)
    t_idx, t_w = t.sample_from_uniforms(torch.from_numpy(u), 0.6)
    assert t_idx.dtype == torch.int64 and t_w.dtype == torch.float32
    assert np.array_equal(t_idx.numpy(), idx)
    np.testing.assert_allclose(t_w.numpy(), w, rtol=1e-6)
    assert idx[-1, -1] == 299


def test_torch_equals_numba_on_irrational_priorities():
    """alpha = 0.6: the tree's sums and torch's cumsum round differently, so a target within
    1e-9 of the total from an interval boundary may go either way; all others must agree."""
    rng = np.random.default_rng(12)
    size = 1000
    s = filled_sampler(rng.exponential(size=size), 0.6, 1e-3, capacity=1500)
    t = torch_from(s)
    u = rng.random((128, 64))
    idx, w = sample_u(s, size, u, 0.4)
    t_idx, t_w = (x.numpy() for x in t.sample_from_uniforms(torch.from_numpy(u), 0.4))
    p = list(s.priorities())
    total = math.fsum(p)
    bounds = model_rows(p, ((np.arange(64) + u) * (total / 64)).ravel(), 1e-9 * total)
    near = np.array([lo != hi for lo, hi in bounds]).reshape(u.shape)
    assert near.mean() < 0.001
    assert np.array_equal(idx[~near], t_idx[~near])
    assert (np.abs(idx - t_idx) <= 1).all()
    same_rows = (idx == t_idx).all(axis=1)  # weights depend on the whole batch's p_min
    assert same_rows.mean() > 0.99
    np.testing.assert_allclose(t_w[same_rows], w[same_rows], rtol=1e-6)


def test_torch_and_numba_write_the_same_priorities():
    rng = np.random.default_rng(13)
    s = PrioritizedSampler(50, 0.7, 0.05, 0)
    t = TorchPrioritized(50, 0.7, 0.05)
    pos = 0
    for step in range(30):
        rows = (pos + np.arange(7)) % 50
        pos = (pos + 7) % 50
        s.on_add(rows)
        t.on_add(torch.from_numpy(rows))
        idx = rng.choice(s.filled, size=min(10, s.filled), replace=False)  # distinct rows
        td = rng.normal(scale=3.0 if step == 10 else 1.0, size=idx.size).astype(np.float32)
        s.update(idx, td)
        t.update(torch.from_numpy(idx), torch.from_numpy(td))
    np.testing.assert_allclose(t.priorities.numpy(), s.tree[s.leaves: s.leaves + 50], rtol=1e-12)
    assert float(t.max_priority) == pytest.approx(max(s.max_priority, 1.0), rel=1e-12)
    state = t.get_state()
    assert state["priorities"].shape == (50,)
    back = PrioritizedSampler(50, 0.7, 0.05, 0)
    back.set_state(torch_round_trip(state))
    assert back.filled == 50
    np.testing.assert_allclose(back.priorities(), s.priorities(), rtol=1e-12)


def test_torch_update_with_repeated_rows_keeps_one_of_the_values():
    t = TorchPrioritized(8, 0.6, 0.01)
    t.on_add(torch.arange(6))
    t.update(torch.tensor([3, 5, 3, 1, 3]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    p = t.priorities
    assert any(float(p[3]) == pytest.approx((v + 0.01) ** 0.6) for v in (1.0, 3.0, 5.0))
    assert float(p[5]) == pytest.approx(2.01 ** 0.6) and float(p[1]) == pytest.approx(4.01 ** 0.6)
    assert float(p[0]) == 1.0 and float(p[6]) == 0.0
    assert float(t.max_priority) == pytest.approx(5.01)
    t.on_add(torch.tensor([6, 0]))
    assert float(p[6]) == float(p[0]) == pytest.approx(5.01 ** 0.6)


def test_torch_on_add_and_trailing_rows():
    """Rows past the last added one have no mass; get_state keeps only up to the last."""
    t = TorchPrioritized(10, 0.6, 0.01)
    t.on_add(torch.arange(4))
    idx, w = t.sample(50, 8, 0.4, torch.Generator().manual_seed(0))
    assert idx.shape == (50, 8) and w.shape == (50, 8)
    assert int(idx.max()) < 4 and int(idx.min()) == 0
    assert torch.equal(w, torch.ones_like(w))  # equal priorities: equal weights
    assert t.get_state()["priorities"].shape == (4,)


def test_torch_sample_is_deterministic_and_takes_a_tensor_beta():
    s = filled_sampler(TD, ALPHA, EPS)
    t = torch_from(s)
    a = t.sample(4, 16, 0.4, torch.Generator().manual_seed(3))
    b = t.sample(4, 16, torch.tensor(0.4, dtype=torch.float64), torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert bool((a[1] <= 1).all()) and bool((a[1].amax(dim=1) == 1).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_prioritized_runs_in_a_cuda_graph_without_host_sync():
    dev = torch.device("cuda")
    s = filled_sampler(np.random.default_rng(4).exponential(size=700), 0.6, 0.01, capacity=1000)
    t = TorchPrioritized(1000, 0.6, 0.01, dev)
    t.set_state(s.get_state())
    u = torch.from_numpy(np.random.default_rng(5).random((4, 32))).to(dev)
    beta = torch.tensor(0.4, dtype=torch.float64, device=dev)
    td = torch.linspace(0.0, 20.0, 128, device=dev)
    new_rows = torch.tensor([700, 701], device=dev)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        i, w = t.sample_from_uniforms(u, beta)
        t.update(i, td)
        t.on_add(new_rows)
        return i, w

    torch.cuda.set_sync_debug_mode("error")
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            g_idx, g_w = step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    t.set_state(s.get_state())
    graph.replay()
    torch.cuda.synchronize()
    idx, w = sample_u(s, 700, u.cpu().numpy(), 0.4)
    g_idx, g_w = g_idx.cpu().numpy(), g_w.cpu().numpy()
    assert (g_idx < 700).all()
    same = (g_idx == idx).all(axis=1)  # a target on a boundary may round either way
    assert same.sum() >= 3
    np.testing.assert_allclose(g_w[same], w[same], rtol=1e-6)
    assert float(t.max_priority) == pytest.approx(20.01)
    assert float(t.priorities[701]) == pytest.approx(20.01 ** 0.6)


@pytest.mark.parametrize("save_buffer", [False, True])
def test_a_prioritized_run_resumes_with_or_without_its_buffer(tmp_path, save_buffer):
    """Without the buffer the rows start afresh, and so must their priorities: the sum tree
    of the checkpoint covered rows the resumed buffer no longer has (sampling them failed)."""
    from fastdqn import train
    from fastdqn.core.checkpoint import load_checkpoint

    run = dict(env_id="CartPole-v1", vector="sync", num_envs=2, hidden=(8,), batch_size=8,
               buffer_size=512, learning_starts=16, prioritized=True, eval_every=0,
               solve_episodes=1, eval_envs=1, progress=False, save_buffer=save_buffer,
               run_dir=str(tmp_path / "run"))
    train(**run, total_timesteps=300)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert saved["rng"]["sampler"]["priorities"].numel() == 300
    result = train(**run, total_timesteps=400, resume=True)
    assert result.summary["total_env_steps"] == 400
    priorities = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["rng"]["sampler"]["priorities"]
    assert priorities.numel() == (400 if save_buffer else 100)
