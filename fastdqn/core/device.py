"""Where tensors live and what fits there: the device a run asks for, the torch dtype a
numpy observation is stored as, and the memory check that refuses an allocation that cannot fit
in one line before anything is allocated."""

from __future__ import annotations

import os

import numpy as np
import torch

from fastdqn.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """auto picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} asked for, but this torch sees no CUDA device; "
                              "use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA "
                              "device(s) here; use cuda:0")
        return dev
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise ConfigError("--device mps asked for, but MPS is not available here; "
                          "use --device cpu or auto")
    return torch.device(name)


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device` without swapping, or None if unknown:
    free memory on a CUDA device, MemAvailable of the host otherwise (MPS shares it)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes: int, device: torch.device, what: str, fix: str) -> None:
    """Refuse, in one line naming `what` and the `fix`, an allocation of `nbytes` on `device`
    that cannot fit (the check_fits_memory of other sizes than the replay's rows)."""
    free = available_memory(device)
    if free is not None and nbytes > free:
        where = "on the GPU" if device.type == "cuda" else "in RAM"
        raise ConfigError(f"{what} needs {nbytes / 1e9:.1f} GB, but only {free / 1e9:.1f} GB is "
                          f"available {where}; {fix}")


def torch_dtype(np_dtype: np.dtype) -> torch.dtype:
    """The torch dtype the replay, the n-step windows and the acting stage store observations
    of numpy dtype `np_dtype` in: their own (uint8 images stay uint8), or STORED_AS's."""
    return torch.from_numpy(np.zeros(1, dtype=stored_dtype(np_dtype))).dtype


STORED_AS = {np.dtype(np.float16): np.dtype(np.float32), np.dtype(np.uint16): np.dtype(np.int32),
             np.dtype(np.uint32): np.dtype(np.int64), np.dtype(np.uint64): np.dtype(np.int64)}


def stored_dtype(np_dtype: np.dtype) -> np.dtype:
    """The numpy dtype observations of `np_dtype` are stored and acted on in (STORED_AS)."""
    np_dtype = np.dtype(np_dtype)
    return STORED_AS.get(np_dtype, np_dtype)
