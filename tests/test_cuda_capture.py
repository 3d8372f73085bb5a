"""The capture helpers every CUDA graph in fastdqn goes through (cuda_capture.py); CUDA only,
skipped elsewhere. A capture that fails, however it fails, leaves the current stream and device
as they were and nothing capturing; a capture on another device than the current one records
that device's work."""

from __future__ import annotations

import pytest
import torch
from conftest import CUDA_DEVICES

from fastdqn.core import cuda_capture


def where(device: str) -> tuple:
    """The current device and the current streams of cuda:0 and `device`."""
    return (torch.cuda.current_device(), torch.cuda.current_stream(0),
            torch.cuda.current_stream(device))


def doubling(x: torch.Tensor, y: torch.Tensor) -> None:
    torch.mul(x, 2.0, out=y)


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_a_capture_replays_the_work_of_its_own_device(device):
    with torch.cuda.device(0):
        before = where(device)
        x = torch.arange(4.0, device=device)
        y = torch.zeros(4, device=device)
        with torch.cuda.device(device):
            side, stream = torch.cuda.Stream(device=device), torch.cuda.Stream(device=device)
            cuda_capture.warm_up(side, lambda: doubling(x, y), 3)
            graph = torch.cuda.CUDAGraph()
            out = cuda_capture.capture(graph, stream, lambda: (doubling(x, y), y)[1])
            assert out is y
            x.copy_(torch.tensor([5.0, 6.0, 7.0, 8.0]))
            graph.replay()
        assert where(device) == before
        assert y.tolist() == [10.0, 12.0, 14.0, 16.0]


def syncing(x: torch.Tensor) -> None:
    """Reads a value on the host: under capture this invalidates it, so capture_end raises."""
    float(x.sum())


def raising(x: torch.Tensor) -> None:
    x.mul_(2.0)
    raise ValueError("refused under capture")


@pytest.mark.parametrize("device", CUDA_DEVICES)
@pytest.mark.parametrize("record", [syncing, raising])
def test_a_failed_capture_leaves_the_streams_as_they_were(device, record):
    with torch.cuda.device(0):
        before = where(device)
        x = torch.ones(4, device=device)
        with torch.cuda.device(device):
            stream = torch.cuda.Stream(device=device)
            with pytest.raises((RuntimeError, ValueError)):  # torch.AcceleratorError: a RuntimeError
                cuda_capture.capture(torch.cuda.CUDAGraph(), stream, lambda: record(x))
            assert not torch.cuda.is_current_stream_capturing()
        assert where(device) == before
        assert x.tolist() == [1.0] * 4  # a capture runs nothing
        # The same stream captures again afterwards.
        y = torch.zeros(4, device=device)
        with torch.cuda.device(device):
            graph = torch.cuda.CUDAGraph()
            cuda_capture.capture(graph, stream, lambda: doubling(x, y))
            graph.replay()
        assert y.tolist() == [2.0] * 4


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_a_warm_up_that_raises_leaves_the_streams_as_they_were(device):
    with torch.cuda.device(0):
        before = where(device)
        x = torch.ones(4, device=device)
        with torch.cuda.device(device):
            with pytest.raises(ValueError, match="refused"):
                cuda_capture.warm_up(torch.cuda.Stream(device=device), lambda: raising(x), 3)
        assert where(device) == before
        assert x.tolist() == [2.0] * 4  # ordered before the current stream's next work
