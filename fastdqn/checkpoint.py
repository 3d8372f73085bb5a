"""Crash-safe files: atomic writes (temp file, fsync, rename) and a loader that runs no code.

`kill -9` at any moment leaves either the previous complete file or the new complete file,
never a torn one, because the rename is the only step that touches the real name.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError

FORMAT = "fastdqn-checkpoint/1"

MAX_NETWORK_PARAMS = 2**28
"""Most parameters a checkpoint's network may declare (268M: 1 GiB of float32 per copy, and the
learner keeps five copies). DQN's MLPs have 10^4 to 10^7; a network this big is a crafted or
damaged file, and sizing memory by it would exhaust the machine before any other check."""

MAX_HIDDEN_LAYERS = 64
"""Most hidden layers a checkpoint's network may declare (DQN uses 1 to 3): beyond it the layer
list alone makes the forward pass a loop of thousands of tiny steps."""


class CheckpointError(ConfigError):
    """A checkpoint that is missing, damaged, unsafe or from another run (a user error)."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):
        dfd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def remove_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files of atomic writes that a kill -9 interrupted; return their paths.

    They never shadow a real file (the rename is what publishes a write), so this is tidying,
    not recovery.
    """
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Serialize `state` (tensors, numbers, strings, lists, dicts only) atomically."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a fastdqn checkpoint without executing code from it; one-line errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file; pass the .pt file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (truncated); use another checkpoint")
    damaged = _failed_crc(path)
    if damaged:
        raise CheckpointError(f"checkpoint {path} is corrupted ({damaged} fails its CRC check); "
                              "use another checkpoint")
    if _cut_off_zip(path):
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted (its zip directory is "
                              "missing: the end of the file is cut off); use another checkpoint")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol is reported as an error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _imports_foreign_code(path):
            raise CheckpointError(
                f"checkpoint {path} contains code or objects a checkpoint must not hold; "
                "refusing to load it (only load files you trust)"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is corrupted ({_reason(e)}); use another checkpoint"
        ) from None
    except Exception as e:  # weights_only ran no code: whatever broke, the bytes are bad
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted ({_reason(e)}); use another checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastdqn checkpoint; pass a checkpoint.pt or best.pt")
    return state


def _reason(e: Exception) -> str:
    """torch's error as a short clause, without its advice about weights_only (not ours to give)."""
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        return f"unpickling failed: {detail}"[:120]
    first = text.splitlines()[0].split(". ")[0].rstrip(".") if text else ""
    if not first or not isinstance(e, (RuntimeError, OSError, ValueError)):
        first = f"{type(e).__name__}: {first}".rstrip(": ")
    return first[:120]


def _cut_off_zip(path: Path) -> bool:
    """A torch zip file whose end is missing (its local header is there, its directory not)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def _failed_crc(path: Path) -> str | None:
    """The first member of a torch zip file whose bytes fail their CRC-32, if any.

    torch.load does not check the CRCs, so flipped bits in tensor data would load silently as
    wrong weights; reading the archive once more costs ~0.1 s per 100 MB.
    """
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except Exception:  # unreadable as a zip (any way): torch.load reports it below
        return None
    return bad.split("/", 1)[-1] if bad else None  # torch's members sit under one top folder


def _is_torch_data(module: str, name: str) -> bool:
    """The globals a torch.save of tensors and plain containers refers to, and nothing else."""
    if (module, name) in (("collections", "OrderedDict"), ("_codecs", "encode")):
        return True
    if not module.split(".")[0] == "torch":
        return False
    import torch

    return (name.startswith("_rebuild") or name.endswith("Storage") or name == "Size"
            or isinstance(getattr(torch, name, None), torch.dtype))


def _imports_foreign_code(path: Path) -> bool:
    """Does the file's pickle stream name a callable beyond tensor data (without running it)?"""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith("data.pkl"))
                data = z.read(name)
        else:
            data = path.read_bytes()
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                strings.append(arg)
            ref = None
            if op.name in ("GLOBAL", "INST"):
                ref = tuple(str(arg).split(" ", 1))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                ref = (strings[-2], strings[-1])
            if ref is not None and not _is_torch_data(*ref):
                return True
    except Exception:  # an unreadable stream is corruption, not code
        return False
    return False
