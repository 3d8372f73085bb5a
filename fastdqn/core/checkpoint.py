"""Crash-safe files: atomic writes (temp file, fsync, rename) and a loader that treats a file
as data: it runs no code from it and sizes no memory by what it merely declares.

`kill -9` at any moment leaves either the previous complete file or the new complete file,
never a torn one, because the rename is the only step that touches the real name.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fastdqn.config.limits import MAX_HIDDEN_LAYERS, MAX_INT_SETTING, MAX_NETWORK_PARAMS
from fastdqn.config.settings import Config, reads
from fastdqn.errors import CheckpointError

FORMAT = "fastdqn-checkpoint/1"

"""Most parameters a checkpoint's network may declare (268M: 1 GiB of float32 per copy, and the
learner keeps five copies). DQN's MLPs have 10^4 to 10^7; a network this big is a crafted or
damaged file, and sizing memory by it would exhaust the machine before any other check."""

"""Most hidden layers a checkpoint's network may declare (DQN uses 1 to 3): beyond it the layer
list alone makes the forward pass a loop of thousands of tiny steps."""

MAX_NESTING = 32
"""Deepest nesting of containers a checkpoint may hold. fastdqn writes 5 levels at most; a
crafted file nested thousands deep (or a list holding itself) would send anything that walks
it recursively, such as json.dumps of the config, past Python's recursion limit."""




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


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def checkpoint_bytes(state: dict) -> bytes:
    """`state` (tensors, numbers, strings, lists, dicts only) as a checkpoint file's bytes: a
    snapshot that later training cannot change."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    return buf.getvalue()


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Serialize `state` (tensors, numbers, strings, lists, dicts only) atomically."""
    atomic_write_bytes(path, checkpoint_bytes(state))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a fastdqn checkpoint without executing code from it; one-line errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file; pass the .pt file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (truncated); use another checkpoint")
    crafted = _zip_problem(path)
    if crafted:
        raise CheckpointError(f"checkpoint {path}: {crafted}; the file is crafted or damaged")
    damaged = _failed_crc(path)
    if damaged:
        raise CheckpointError(f"checkpoint {path} is corrupted ({damaged} fails its CRC check); "
                              "use another checkpoint")
    if _cut_off_zip(path):
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted (its zip directory is "
                              "missing: the end of the file is cut off); use another checkpoint")
    _dry_run(path)  # first: weights_only itself calls bytearray(n), OrderedDict(memo), ...
    try:
        # an open file, not the path: torch.load picks a reader by the path's suffix too
        with warnings.catch_warnings(), open(path, "rb") as f:
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupted ({_reason(e)}); use another checkpoint"
        ) from None
    except Exception as e:  # weights_only ran no code: whatever broke, the bytes are bad
        if "not resizable" in str(e):  # torch refused a view beyond its storage's bytes
            raise CheckpointError(f"checkpoint {path}: a tensor declares more elements than its "
                                  "stored data holds; the file is crafted or damaged") from None
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted ({_reason(e)}); use another checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastdqn checkpoint; pass a checkpoint.pt or best.pt")
    _check_contents(path, state)
    return state


def _zip_problem(path: Path) -> str | None:
    """What in a torch zip file's directory torch never writes, if anything.

    torch stores every member uncompressed, once, so the members add up to less than the file.
    A deflated member would be inflated by torch.load (and by the CRC check before it): 50 KB
    can become 50 MB, a few MB gigabytes. A name given twice could make the pickle scanned for
    code here another than the one torch loads.
    """
    try:
        if not zipfile.is_zipfile(path):
            return None
        layout = _layout_problem(path)
        if layout:
            return layout
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except Exception:  # unreadable as a zip (any way): the checks below report it
        return None
    first = min((m.header_offset for m in members), default=0)
    if first != 0:
        return (f"its first zip member starts at byte {first:,d}, not at the start of the file "
                "as torch writes it")
    seen: set[str] = set()
    for m in members:
        name = m.filename.split("/", 1)[-1]
        if m.compress_type != zipfile.ZIP_STORED:
            return (f"zip member {name} is compressed ({m.file_size:,d} bytes once inflated), "
                    "which torch never writes")
        if m.filename.lower() in seen:
            return f"zip member {name} appears twice, which torch never writes"
        seen.add(m.filename.lower())
    total, size = sum(m.file_size for m in members), path.stat().st_size
    if total > size:
        return (f"its zip members declare {total:,d} bytes in all, more than the whole file "
                f"({size:,d} bytes)")
    return None


ZIP_MAGIC = b"PK\x03\x04"
"""A zip's local file header: torch.load reads a file as a zip exactly when it starts so."""


def _layout_problem(path: Path) -> str | None:
    """Why `zipfile` (the checks here) and torch.load could read different things from a file
    that Python sees as a zip, or None.

    torch.load decides by the first bytes: anything else is read as a legacy pickle (which the
    dry run never saw), whatever zip sits further on. And the zip's directory must be found at
    one place by both readers: torch writes no comment, a zip64 record right before its
    locator, and its directory right before them; Python ignores the locator's pointer, which
    torch's reader follows, and shifts every offset by any bytes found before the directory.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(0, size - 98))
        tail = f.read()
    if head != ZIP_MAGIC:
        return ("it is a zip archive that does not start at its first byte (torch.load would read "
                "the bytes before it as a legacy pickle, not the zip)")
    end = tail[-22:]
    if len(end) < 22 or end[:4] != b"PK\x05\x06" or end[-2:] != b"\0\0" or b"PK\x05\x06" in end[1:]:
        return "its zip directory record is not the file's last 22 bytes, as torch writes it"
    cd_size, cd_offset = struct.unpack("<LL", end[12:20])
    end_of_cd = size - 22
    if tail[-42:-38] == b"PK\x06\x07":  # zip64: the locator points at its record
        record = size - 22 - 20 - 56
        if (len(tail) < 98 or struct.unpack("<Q", tail[-34:-26])[0] != record
                or tail[-98:-94] != b"PK\x06\x06"):
            return "its zip64 locator points elsewhere than its zip64 record"
        cd_size, cd_offset = struct.unpack("<QQ", tail[-98 + 40:-98 + 56])
        end_of_cd = record
    if cd_offset + cd_size != end_of_cd:
        return (f"its zip directory is recorded at byte {cd_offset:,d} but lies elsewhere (torch "
                "and Python would read different members)")
    return None


def _check_contents(path: Path, state: dict) -> None:
    """Every tensor in `state` is dense over its own bytes of the file, and containers nest at
    most MAX_NESTING deep; a one-line CheckpointError otherwise.

    weights_only runs no code, but it rebuilds each tensor exactly as the file declares it: 4
    real bytes viewed with stride 0 as a billion elements load fine, and the first copy of them
    allocates 4 GB. (A tensor's storage can only be one of the file's members: the pickle scan
    admits no constructor.) Checked here, once, every consumer (eval, resume, the Python API)
    can size copies by a tensor's shape.
    """
    heights: dict[int, int] = {}  # id -> containers nested in it: a shared one is walked once

    def walk(obj: object, where: str, depth: int) -> int:
        if isinstance(obj, torch.Tensor):
            _check_tensor(path, obj, where)
            return 0
        if depth + heights.get(id(obj), 1) - 1 > MAX_NESTING:  # its deepest container
            top = where.split(".", 1)[0].split("[", 1)[0]
            raise CheckpointError(f"checkpoint {path} nests containers more than {MAX_NESTING} "
                                  f"deep (under {top}); the file is crafted or damaged")
        if id(obj) not in heights:
            pairs = (((c, k) for k, v in obj.items() for c in (k, v)) if isinstance(obj, dict)
                     else ((c, i) for i, c in enumerate(obj)))  # type: ignore[attr-defined]
            heights[id(obj)] = 1 + max((walk(c, _child(where, k), depth + 1) for c, k in pairs
                                        if isinstance(c, _NESTED)), default=0)
        return heights[id(obj)]

    walk(state, "", 0)


_NESTED = (torch.Tensor, dict, list, tuple, set, frozenset)
"""What can hold a tensor, or more containers, in a weights_only load."""


def _child(where: str, key: object) -> str:
    """The name of `where[key]` in messages: learner.params, counters.evals[0], x['a b']."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    if isinstance(key, str) and key.isidentifier():
        return f"{where}.{key}" if where else key
    return f"{where}[{repr(key)[:40]}]"


def _check_tensor(path: Path, t: torch.Tensor, where: str) -> None:
    """`t` is what fastdqn writes: a dense tensor with bytes (not sparse, quantized, nested or
    meta), contiguous, and no larger than the storage it views."""
    if (t.layout != torch.strided or t.device.type == "meta" or t.is_quantized
            or getattr(t, "is_nested", False)):
        kind = "meta" if t.device.type == "meta" else str(t.layout).replace("torch.", "")
        raise CheckpointError(f"checkpoint {path}: {where} is a {kind} tensor, not the dense "
                              "tensor fastdqn writes; the file is crafted or damaged")
    size = t.element_size()
    declared, stored = t.numel() * size, t.untyped_storage().nbytes()
    if declared > stored - t.storage_offset() * size:
        raise CheckpointError(f"checkpoint {path}: {where} is a view of {stored:,d} bytes "
                              f"declaring {declared:,d} bytes; the file is crafted or damaged")
    if not t.is_contiguous():
        raise CheckpointError(f"checkpoint {path}: {where} is a strided view (shape "
                              f"{list(t.shape)}, strides {list(t.stride())}), not the dense "
                              "tensor fastdqn writes; the file is crafted or damaged")


def check_module_state(path: str | os.PathLike, state: object, module: torch.nn.Module,
                       where: str, what: str = "network") -> None:
    """The tensors of a module in a checkpoint (`where`, e.g. learner.online) must be exactly
    `module`'s: same names, shapes and dtypes, all finite; load_state_dict would otherwise
    raise a traceback, or broadcast a wrong shape."""
    want = module.state_dict()
    if not isinstance(state, dict) or set(state) != set(want):
        raise CheckpointError(f"{path}: {where} does not hold the {what}'s tensors "
                              f"({', '.join(list(want)[:6])}, ...); the file is damaged")
    for name, t in want.items():
        got = state[name]
        if (not isinstance(got, torch.Tensor) or got.shape != t.shape or got.dtype != t.dtype
                or (got.is_floating_point() and not bool(torch.isfinite(got).all()))):
            dtype = str(t.dtype).replace("torch.", "")
            raise CheckpointError(f"{path}: {where}.{name} is not a finite {dtype} tensor of "
                                  f"shape {list(t.shape)}; the file is damaged")


DAMAGED = "the file is damaged or not fastdqn's: start a new run or resume from another checkpoint"
"""The fix a refusal of a resumed checkpoint's contents names (nothing on the command line
repairs a file)."""


FROM_COMMAND_LINE = ("actors", "ray_address")
"""Settings a resumed run never takes from its checkpoint: where it connects (a Ray cluster)
and whether it starts actors there. Like a `module:Env` id, they come from the command line or
your --config only; unset there, the resumed run is local, with no actors."""

MAX_FILE_ENVS = 4096
"""Most envs (training or evaluation) a checkpoint's settings may ask for: each is an env object
in memory, and each vector env is its own process with --vector async. More must be given on
the command line."""

MAX_FILE_EPISODES = 100_000
"""Most evaluation episodes a checkpoint's settings may ask for per evaluation."""


def max_file_processes() -> int:
    """Most env processes a checkpoint's settings may start on this machine: a few per core (a
    run's own choice of more is confirmed by passing it on the command line)."""
    return max(64, 4 * (os.cpu_count() or 1))


def settings_from_file(saved: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run takes from its checkpoint's config (`saved`), under the ones
    you give (`given`: flags and your --config): all but FROM_COMMAND_LINE, and the Ape-X ones
    only when you give --actors (without it they would not apply)."""
    kept = {k: v for k, v in saved.items() if k not in FROM_COMMAND_LINE}
    if not given.get("actors"):
        kept = {k: v for k, v in kept.items() if "apex" not in reads(k)["when"]}
    return kept


def file_setting_problem(name: str, value: object) -> str | None:
    """Why setting `name` is not stored as fastdqn writes it (the type coerce() returns: an int
    for a count, a number for a float, a bool, a text, a list of sizes), or None.

    A file is data, not input to parse: "0.1" or "16" in it is damage, where the same text on
    the command line or in a TOML file is a setting written as text.
    """
    field = next(f for f in dataclasses.fields(Config) if f.name == name)
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()

    def number(v: object) -> bool:
        return type(v) in (int, float)

    if str(field.type) == "float | None":
        ok = value is None or number(value)
        kind = "a number or none"
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(
            (number if name == "rbf_scales" else is_whole)(v) for v in value)
        kind = "a list of numbers" if name == "rbf_scales" else "a list of whole numbers"
    elif isinstance(default, bool):
        ok, kind = type(value) is bool, "true or false"
    elif isinstance(default, int):
        ok, kind = type(value) is int, "a whole number"
    elif isinstance(default, float):
        ok, kind = number(value), "a number"
    else:
        ok, kind = type(value) is str, "a text"
    return None if ok else f"{name} is {repr(value)[:40]}, not {kind}"


def check_file_settings(path: str | os.PathLike, cfg: Config, from_file: set[str]) -> None:
    """The settings a resumed run took from its checkpoint (`from_file`, now in `cfg`) stay
    under what a file may ask of this machine: processes, envs, threads, evaluation episodes.
    A file's number is data; a number you give on the command line is your decision, so the
    refusal says to pass it there."""
    def refuse(name: str, value: object, why: str) -> None:
        flag = "--" + name.replace("_", "-")
        raise CheckpointError(f"checkpoint {path} sets {flag} {value}, {why}; a checkpoint's "
                              f"settings stay under that: pass {flag} {value} on the command "
                              "line if you mean it")

    workers = cfg.num_workers or min(cfg.num_envs, max(1, (os.cpu_count() or 2) - 1))
    processes = cfg.num_envs if cfg.vector == "async" else min(workers, cfg.num_envs)
    limit = max_file_processes()
    name = next((n for n in ("num_envs", "num_workers", "vector") if n in from_file), None)
    if processes > limit and name:
        refuse(name, getattr(cfg, name), f"which starts {processes} env processes (--vector "
               f"{cfg.vector} --num-envs {cfg.num_envs}), more than the {limit} a file may "
               "start here")
    for name in ("num_envs", "eval_envs"):
        if name in from_file and getattr(cfg, name) > MAX_FILE_ENVS:
            refuse(name, getattr(cfg, name), f"more than {MAX_FILE_ENVS} envs")
    if "num_workers" in from_file and cfg.num_workers > limit:
        refuse("num_workers", cfg.num_workers, f"more than {limit} workers")
    cores = os.cpu_count() or 1
    if "num_threads" in from_file and cfg.num_threads > cores:
        refuse("num_threads", cfg.num_threads, f"more threads than this machine's {cores} cores")
    for name in ("eval_episodes", "solve_episodes"):
        if name in from_file and getattr(cfg, name) > MAX_FILE_EPISODES:
            refuse(name, getattr(cfg, name), f"more than {MAX_FILE_EPISODES:,d} episodes per "
                   "evaluation")


def is_whole(value: object, low: int = 0) -> bool:
    """A whole number (not a bool, a float or a tensor) of at least `low`."""
    return type(value) is int and value >= low


MAX_COUNT = MAX_INT_SETTING
"""Most steps, updates or episodes a checkpoint's counters may hold: the bound of every
whole-number setting (config.MAX_INT_SETTING), so a resumed run's additions, TensorBoard's
steps and numpy never overflow."""


def is_count(value: object, low: int = 0) -> bool:
    """A whole number from `low` to MAX_COUNT: a count a run can have reached."""
    return is_whole(value, low) and value <= MAX_COUNT


def check_count(path: str | os.PathLike, where: str, value: object, what: str) -> None:
    """The checkpoint's `where` is a count (is_count) of `what`; a one-line CheckpointError
    otherwise."""
    if not is_count(value):
        raise CheckpointError(f"{path}: {where} is {str(value)[:20]}, not a count of {what}; "
                              f"{DAMAGED}")


def check_generator_state(path: str | os.PathLike, where: str, state: object,
                          generator: torch.Generator) -> None:
    """A saved torch generator state that `generator` accepts; checked on a scratch generator
    of the same device, so that set_state's own refusal (its size, or an mt19937 position out
    of range) is one line here instead of a traceback after the run started loading."""
    try:
        if not (isinstance(state, torch.Tensor) and state.dtype == torch.uint8
                and state.shape == generator.get_state().shape):
            raise ValueError
        torch.Generator(device=generator.device).set_state(state)
    except (RuntimeError, TypeError, ValueError):
        raise CheckpointError(f"checkpoint {path}: {where} is not a state of this run's "
                              f"{generator.device.type} random generator; the file is damaged, "
                              "not fastdqn's or from a run on another device: resume on that "
                              "device, start a new run or resume from another checkpoint"
                              ) from None


def check_optimizer_state(path: str | os.PathLike, state: object,
                          params: list[torch.Tensor]) -> None:
    """A saved torch optimizer state (Adam, RAdam, RMSprop) for `params`: its slots mapped to
    them in order, per-parameter tensors of the parameter's shape, finite, the second moments and
    step counts non-negative (torch's load_state_dict checks only the counts; a wrong shape would
    fail mid-training, a NaN diverge after the run dir was written to)."""
    per_param = state.get("state") if isinstance(state, dict) else None
    groups = state.get("param_groups") if isinstance(state, dict) else None
    ids = None
    if isinstance(groups, list) and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                        for g in groups):
        ids = [i for g in groups for i in g["params"]]
    if not isinstance(per_param, dict) or ids != list(range(len(params))):
        # torch maps the saved slots to parameters through these ids: in another order, a
        # slot of one shape would land on a parameter of another
        raise CheckpointError(f"{path}: learner.optimizer is not an optimizer state of this "
                              "network's parameters; the file is damaged")
    for i, slots in per_param.items():
        if not (type(i) is int and 0 <= i < len(params) and isinstance(slots, dict)):
            raise CheckpointError(f"{path}: learner.optimizer holds state for parameter {i!r} of "
                                  f"{len(params)}; the file is damaged")
        for name, t in slots.items():
            shape = () if name == "step" else tuple(params[i].shape)
            if (not isinstance(t, torch.Tensor) or tuple(t.shape) != shape
                    or not t.is_floating_point() or not bool(torch.isfinite(t).all())
                    or (name in ("step", "exp_avg_sq", "square_avg") and bool((t < 0).any()))):
                raise CheckpointError(f"{path}: learner.optimizer.state[{i}].{str(name)[:20]} is "
                                      f"not a finite tensor of shape {list(shape)}; the file is "
                                      "damaged")


def load_online(path: str | os.PathLike, ckpt: dict, module: torch.nn.Module,
                check_state: Callable[[str | os.PathLike, object, torch.nn.Module, str], None]
                ) -> torch.nn.Module:
    """`module` (built from the checkpoint's checked spec) with the checkpoint's online weights,
    each tensor checked by `check_state` before load_state_dict sees it."""
    learner = ckpt.get("learner")
    online = learner.get("online") if isinstance(learner, dict) else None
    check_state(path, online, module, "learner.online")
    module.load_state_dict(online)
    return module




def check_declared_size(path: str | os.PathLike, in_dim: int, hidden: list | tuple,
                        n_actions: int, count: Callable[[], int]) -> None:
    """The caps every network a checkpoint declares must stay under (layers, then parameters,
    counted by `count` only once the layer list is known to be short), before it is built."""
    if len(hidden) > MAX_HIDDEN_LAYERS:
        raise CheckpointError(f"checkpoint {path} declares a network of {len(hidden)} hidden "
                              f"layers, over the limit of {MAX_HIDDEN_LAYERS}; refusing to load it")
    n = count()
    if n > MAX_NETWORK_PARAMS:
        raise CheckpointError(
            f"checkpoint {path} declares a network of {n:,d} parameters ({in_dim} inputs, hidden "
            f"{','.join(map(str, hidden)) or 'none'}, {n_actions} actions), over the limit of "
            f"{MAX_NETWORK_PARAMS:,d}; refusing to load it")


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


class _Foreign(Exception):
    """The pickle names a callable beyond plain tensor data, or calls one with contents."""


def _inert(*args: object, **kwargs: object) -> None:
    """Stands in for a tensor rebuild (and for storage types and dtypes) in a dry run."""


def _empty_ordered_dict(*args: object, **kwargs: object) -> dict:
    """torch.save writes OrderedDict() (a tensor's hooks), never one built from contents: that
    would copy an argument the pickle memo can hand to any number of calls."""
    if args or kwargs:
        raise _Foreign
    return {}


class _Declared(Exception):
    """A storage the pickle declares is not the zip member it names, byte for byte."""


class _StorageType:
    """Stands in for a storage class (torch.FloatStorage, ...) in a dry run: its element size."""

    def __init__(self, name: str) -> None:
        with warnings.catch_warnings():  # TypedStorage's deprecation, not the file's doing
            warnings.simplefilter("ignore")
            dtype = getattr(getattr(torch, name, None), "dtype", None)
        if name != "UntypedStorage" and not isinstance(dtype, torch.dtype):
            raise _Foreign
        self.itemsize = 1 if name == "UntypedStorage" else dtype.itemsize


class _DryRun(pickle.Unpickler):
    """Unpickles a stream with inert stand-ins, to learn what it holds before torch.load does.

    It resolves every global the way pickle does (GLOBAL, STACK_GLOBAL, INST, extension codes),
    so none escapes a name check, and it copies nothing the stream does not spell out. Each
    storage must be a zip member (`records`: name -> bytes) of exactly the bytes it declares,
    so that torch.load sizes nothing by a number the file merely states.
    """

    def __init__(self, file: io.BytesIO, records: dict[str, int]) -> None:
        super().__init__(file)
        self.records = records

    def find_class(self, module: str, name: str) -> object:
        if not _is_torch_data(module, name):
            raise _Foreign
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        return _empty_ordered_dict if (module, name) == ("collections", "OrderedDict") else _inert

    def persistent_load(self, pid: object) -> None:
        kind, key, numel = (pid[1], pid[2], pid[4]) if (
            isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[3], str)) else (None, None, None)
        if not (isinstance(kind, _StorageType) and type(key) is str and type(numel) is int
                and numel >= 0):
            raise _Declared("a tensor's storage is not declared as torch writes it")
        held = self.records.get(f"data/{key}")
        if held != numel * kind.itemsize:
            raise _Declared(f"a tensor's storage declares {numel * kind.itemsize:,d} bytes, but "
                            + ("the file holds no such storage" if held is None
                               else f"the file holds {held:,d} bytes for it"))
        return None


def _is_torch_data(module: str, name: str) -> bool:
    """The globals a torch.save of fastdqn's state refers to (plain tensors, OrderedDict()), and
    nothing else.

    Narrower than weights_only's own list, which also admits callables that allocate what the
    file asks (bytearray(n), torch.FloatTensor(n)) or copy an argument (torch.Size,
    _codecs.encode), and tensors without bytes in the file (meta, sparse, quantized, nested).
    """
    if (module, name) == ("collections", "OrderedDict"):
        return True
    if module == "torch._utils":
        return name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3")
    return module == "torch" and (name.endswith("Storage")  # storage types, not callable here
                                  or isinstance(getattr(torch, name, None), torch.dtype))


def _dry_run(path: Path) -> None:
    """Refuse the file unless its pickle holds only fastdqn's kind of data; only then may
    torch.load read it. Non-zip files are refused here too: fastdqn writes torch's zip format,
    and the legacy one hides its data pickle behind others."""
    with open(path, "rb") as f:
        zipped = f.read(4) == ZIP_MAGIC and zipfile.is_zipfile(path)  # as torch.load decides
    records: dict[str, int] = {}
    try:
        if zipped:
            with zipfile.ZipFile(path) as z:
                top = z.namelist()[0].split("/", 1)[0]
                data = z.read(f"{top}/data.pkl")
                records = {m.filename.split("/", 1)[-1]: m.file_size for m in z.infolist()
                           if m.filename.startswith(f"{top}/")}
        else:
            data = path.read_bytes()
        _DryRun(io.BytesIO(data), records).load()
    except _Foreign:
        raise CheckpointError(f"checkpoint {path} contains code or objects a checkpoint must not "
                              "hold; refusing to load it (only load files you trust)") from None
    except _Declared as e:
        raise CheckpointError(f"checkpoint {path}: {e}; the file is crafted or damaged") from None
    except Exception as e:  # the stream is broken: ran nothing, so it is damage
        raise CheckpointError(f"checkpoint {path} is corrupted ({_reason(e)}); use another "
                              "checkpoint") from None
    if not zipped:
        raise CheckpointError(f"{path} is not a fastdqn checkpoint; pass a checkpoint.pt or best.pt")
