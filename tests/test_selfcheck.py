"""The fast-route self-check: its tolerance, NaN handling, and the fast/restore/eager order."""

from __future__ import annotations

import pytest
import torch

from fastdqn.core.selfcheck import ATOL, RTOL, check_route, disagreement, fallback_message


def test_tolerance_scales_with_how_far_eager_moved_each_tensor():
    before = {"x": torch.full((4,), 5.0)}
    eager = {"x": torch.full((4,), 5.0 + 1e-2)}  # moved by 1e-2: tolerance 1e-6 + 1e-5
    assert ATOL + RTOL * 1e-2 == pytest.approx(1.1e-5)
    near = {"x": eager["x"].double() + 5e-6}
    far = {"x": eager["x"].double() + 5e-5}
    assert disagreement(near, eager, before) is None
    assert disagreement(far, eager, before) == "max |diff| 5.0e-05 on x vs eager"
    # without `before` the scale is the value itself (5.01): 5e-5 is well inside
    assert disagreement(far, eager) is None


def test_a_fast_route_that_did_nothing_disagrees_however_small_the_step():
    before = {"p": torch.ones(3)}
    eager = {"p": torch.ones(3) + 1e-4}  # a tiny learning rate still moves params
    assert disagreement(before, eager, before) == "max |diff| 1.0e-04 on p vs eager"


def test_first_disagreeing_tensor_is_named():
    eager = {"a": torch.zeros(2), "b": torch.zeros(2), "c": torch.zeros(2)}
    fast = {"a": torch.zeros(2), "b": torch.tensor([0.0, 3.0]), "c": torch.ones(2)}
    assert disagreement(fast, eager) == "max |diff| 3.0e+00 on b vs eager"


def test_nan_and_inf():
    nan, inf = float("nan"), float("inf")
    eager = {"x": torch.tensor([1.0, nan, inf])}
    assert disagreement({"x": torch.tensor([1.0, nan, inf])}, eager) is None  # same values
    assert disagreement({"x": torch.tensor([nan, nan, inf])}, eager) == \
        "max |diff| nan on x vs eager"
    assert disagreement({"x": torch.tensor([1.0, nan, -inf])}, eager) == \
        "max |diff| inf on x vs eager"


def test_eager_runs_after_restore_whatever_fast_does():
    calls: list[str] = []

    def raising():
        calls.append("fast")
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    def eager():
        calls.append("eager")
        return {"x": torch.zeros(1)}

    reason = check_route(raising, eager, lambda: calls.append("restore"))
    assert reason == "raised RuntimeError: operation not permitted when stream is capturing"
    assert calls == ["fast", "restore", "eager"]

    calls.clear()
    assert check_route(lambda: calls.append("fast") or {"x": torch.zeros(1)}, eager,
                       lambda: calls.append("restore")) is None
    assert calls == ["fast", "restore", "eager"]


def test_exception_without_message():
    def raising():
        raise ValueError()

    assert check_route(raising, lambda: {}) == "raised ValueError"


def test_fallback_message():
    assert fallback_message("learner CUDA graphs", "eager torch ops", "max |diff| 3.0e-02 on "
                            "params vs eager") == (
        "fastdqn: learner CUDA graphs failed the self-check (max |diff| 3.0e-02 on params vs "
        "eager); using eager torch ops")
