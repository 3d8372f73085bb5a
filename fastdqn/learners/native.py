"""The native CPU learner step (`csrc/fused_step.cpp`): built once per machine, loaded by ctypes.

Why native: the Numba route (`flat.CpuStep`) is about 20 Python-level calls a step, each a
few microseconds of dispatch; the native one runs a whole block of K steps in one call, with the
matrix products going straight to the sgemm_ that torch's CPU build exports (MKL in the pip
wheels) and the narrow products as loops. Nothing is compiled at install: the source needs no
torch headers, so the system C++ compiler builds it in about 2 s. `prepare()` starts that build
as a background process when a run starts (it overlaps env creation and warm-up), and the first
learner step waits for it, so every run on a machine takes the same route from its first step
(a seeded run is reproducible; a route switched mid-run would not be). Where it cannot be built
(no compiler, a torch without sgemm_, not Linux) or does not load, the Numba route runs, and
summary.json's route says so.

The library lives in a per-user cache directory named by a hash of everything that decides its
code (source, compiler and its version, flags, torch build, CPU flags): a changed input builds a
new file and never loads a stale one. Only a directory owned by the user and writable by nobody
else, under parents no one else can write either, is used: a library is code, so one that
another user could have written or swapped is never loaded. A build is fsync'd and renamed into
place with a sidecar SHA-256 of its bytes; the hash is checked before every load (a truncated
library would kill the process with SIGBUS inside dlopen), and a library that fails it, or fails
to load, is deleted and rebuilt. Every failure on this path (an unwritable cache, a compiler that
stalls past `BUILD_TIMEOUT`) is one console line and the Numba step, never a traceback.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fastdqn.errors import NativeUnavailable, NativeUnsupported, ReplayCorrupt, RouteFallbackWarning

_HERE = Path(__file__).resolve().parent.parent  # the fastdqn package
SOURCE = next((p for p in (_HERE / "_csrc" / "fused_step.cpp",
                           _HERE.parent / "csrc" / "fused_step.cpp") if p.is_file()),
              _HERE.parent / "csrc" / "fused_step.cpp")
"""The C++ source: inside the package in a wheel (fastdqn/_csrc), `csrc/` at the repository
root in a checkout or an editable install."""
ABI = 5
MAX_LAYERS = 8
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC", "-pthread",
         "-Wl,-z,defs"]
"""-march=native: the library is built on the machine that runs it, and its name hashes the CPU
flags; -z defs: a torch without sgemm_ fails at link time, not at the first step."""
BUILD_TIMEOUT = 600.0
"""Seconds a build may take before the compiler (its whole process group) is killed and the run
falls back: generous (the build takes about 2 s), but a stalled compiler never blocks the first
learner step forever."""
PROBE_TIMEOUT = 60.0
"""Seconds `$CXX --version` may take (it runs when a run starts, before the build)."""
STALE_AFTER = 24 * 3600.0
"""Age after which a temporary build file of another host's (or a reused pid's) build is removed."""


class Spec(ctypes.Structure):
    """The `Spec` struct of csrc/fused_step.cpp, field for field."""

    _fields_ = [("abi", ctypes.c_int64), ("n_layers", ctypes.c_int64),
                ("sizes", ctypes.c_int64 * (MAX_LAYERS + 1)), ("batch", ctypes.c_int64),
                ("double_dqn", ctypes.c_int64), ("dueling", ctypes.c_int64),
                ("huber", ctypes.c_int64), ("obs_kind", ctypes.c_int64),
                ("interval", ctypes.c_int64), ("capacity", ctypes.c_int64),
                ("lr", ctypes.c_double), ("beta1", ctypes.c_double), ("beta2", ctypes.c_double),
                ("eps", ctypes.c_double), ("max_norm", ctypes.c_double), ("tau", ctypes.c_double),
                ("params", ctypes.c_void_p), ("grad", ctypes.c_void_p),
                ("target", ctypes.c_void_p), ("exp_avg", ctypes.c_void_p),
                ("exp_avg_sq", ctypes.c_void_p), ("step_count", ctypes.c_void_p),
                ("obs", ctypes.c_void_p), ("next_obs", ctypes.c_void_p),
                ("actions", ctypes.c_void_p), ("rewards", ctypes.c_void_p),
                ("dones", ctypes.c_void_p), ("discounts", ctypes.c_void_p)]


OBS_KINDS = {torch.float32: 0, torch.uint8: 1, torch.bool: 2, torch.float64: 3}
"""Observation dtypes the native step reads (csrc ObsKind); uint8 is scaled to [0, 1]."""








def replay_fault(idx: np.ndarray, size: int, actions: np.ndarray, n_actions: int
                 ) -> ReplayCorrupt:
    """The error naming the first bad row of the sampled rows `idx` (only called once a step
    has refused them, so its cost is off the step's path)."""
    for r in np.asarray(idx).reshape(-1).tolist():
        if not 0 <= r < size:
            return ReplayCorrupt(f"sampled replay row {r} is outside the buffer's {size} filled "
                                 "rows: the sampler's state is damaged")
        a = int(actions[r])
        if not 0 <= a < n_actions:
            return ReplayCorrupt(f"replay row {r} holds action {a}, outside 0..{n_actions - 1}: "
                                 "the replay buffer is damaged or crafted (resume without it)")
    return ReplayCorrupt("the native step refused a batch whose rows are all in range")


def cache_dir() -> Path:
    """$FASTDQN_CACHE_DIR, else $XDG_CACHE_HOME/fastdqn, else ~/.cache/fastdqn."""
    env = os.environ.get("FASTDQN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no $HOME and no passwd entry (a bare container)
            raise NativeUnavailable("no home folder for the native cache (set "
                                    "FASTDQN_CACHE_DIR)") from None
    return Path(base) / "fastdqn"


def _check_parents(path: Path) -> None:
    """Refuse `path` if another user could swap it: every folder above it (as written and as
    resolved through symlinks) must belong to this user or root and be writable by no one else,
    unless its sticky bit keeps others from renaming what they do not own (/tmp). ssh checks
    the folders above its files the same way."""
    uid = os.getuid()
    above = {*Path(os.path.abspath(path)).parents, *Path(os.path.realpath(path)).parents}
    for parent in sorted(above, key=lambda p: len(p.parts)):
        st = parent.stat()
        if st.st_uid not in (0, uid):
            raise NativeUnavailable(f"cache directory {path} is inside {parent}, which belongs "
                                    "to another user (set FASTDQN_CACHE_DIR to a folder of yours)")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            raise NativeUnavailable(f"cache directory {path} is inside {parent}, which others "
                                    f"can write (chmod go-w {parent}, or set FASTDQN_CACHE_DIR)")


def _private_dir(path: Path) -> Path:
    """`path`, created 0700 if missing; refused unless it is a directory of this user that no
    one else can write or swap (a library there is code this process will run). A symlink is
    judged as the folder it points to, and the folders above both."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            st = path.stat()
    except FileExistsError:
        st = None
    except OSError as e:
        raise NativeUnavailable(f"cache directory {path} unusable ({e.strerror})") from None
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise NativeUnavailable(f"cache path {path} is not a directory (set FASTDQN_CACHE_DIR "
                                "to a folder)")
    if st.st_uid != os.getuid():
        raise NativeUnavailable(f"cache directory {path} belongs to another user")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise NativeUnavailable(f"cache directory {path} is writable by others (chmod 700 it)")
    _check_parents(path)
    return path


def compiler() -> list[str]:
    """$CXX split as a shell splits words (`ccache g++`, `g++ -fdiagnostics-color=never`), else
    c++ or g++ on PATH."""
    env = os.environ.get("CXX")
    if env and env.strip():
        try:
            words = shlex.split(env)
        except ValueError as e:
            raise NativeUnavailable(f"CXX={env!r} does not parse ({e})") from None
        if words:
            return words
    cxx = shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise NativeUnavailable("no C++ compiler (set CXX or install g++)")
    return [cxx]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _torch_lib() -> Path:
    return Path(torch.__file__).resolve().parent / "lib"


def command(cxx: list[str], out: Path) -> list[str]:
    """The compiler command (`cxx`: the compiler's words) that builds the library into `out`."""
    lib = _torch_lib()
    return [*cxx, *FLAGS, str(SOURCE), "-o", str(out), f"-L{lib}", "-ltorch_cpu",
            f"-Wl,-rpath,{lib}"]


def _start(cmd: list[str], log=subprocess.PIPE) -> subprocess.Popen:
    """`cmd` in its own process group (so a stalled compiler and every process it started can
    be killed at once), output piped (or written to the file `log`), no stdin."""
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    """Kill `proc`'s whole process group and reap it. Its pipe is closed, not read: a child that
    left the group may still hold the other end."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def library_path() -> Path:
    """Where the library for this source, compiler, torch and CPU lives in the cache."""
    if not sys.platform.startswith("linux"):
        raise NativeUnsupported(f"the native step is built on Linux only (this is {sys.platform})")
    if not SOURCE.is_file():
        raise NativeUnavailable(f"{SOURCE} is not installed (pip install -e . ships it)")
    cxx = compiler()
    name = shlex.join(cxx)
    try:
        probe = _start([*cxx, "--version"])
    except OSError as e:
        raise NativeUnavailable(f"compiler {name} does not run ({e})") from None
    try:
        version, _ = probe.communicate(timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill(probe)
        raise NativeUnavailable(f"compiler {name} does not answer --version within "
                                f"{PROBE_TIMEOUT:g} s (stopped)") from None
    if probe.returncode != 0:
        raise NativeUnavailable(f"compiler {name} --version exits {probe.returncode} (set CXX "
                                "to a C++ compiler)")
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), version.encode(), " ".join(command(cxx, Path())).encode(),
                 torch.__version__.encode(), str(_torch_lib()).encode(), _cpu_flags().encode()):
        key.update(part)
        key.update(b"\0")
    return _private_dir(cache_dir()) / f"fused_step-{key.hexdigest()[:20]}.so"


_TEMP = re.compile(r"\.tmp-([0-9a-f]{8})-(\d+)-[0-9a-f]+$")
"""A temporary build file: `<final name>.tmp-<host tag>-<pid>-<random>`."""


def _host_tag() -> str:
    """This host and pid namespace, so that a temp file's pid is only judged where it means
    this process table (a cache in a home folder shared between machines or containers)."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    return hashlib.sha256(f"{socket.gethostname()}\0{ns}".encode()).hexdigest()[:8]


def _temp(path: Path) -> Path:
    """A new temporary name beside `path` that names this process (see `_sweep`)."""
    return path.with_name(f"{path.name}.tmp-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def _sweep(folder: Path) -> None:
    """Remove the temporary build files that no live build owns: those of a process of this
    host that is gone (a run killed by SIGTERM or SIGKILL mid-build: no handler or atexit ran),
    and any older than STALE_AFTER (another host's, or a pid since reused)."""
    tag, old = _host_tag(), time.time() - STALE_AFTER
    for entry in folder.iterdir():
        m = _TEMP.search(entry.name)
        if m is None or not entry.name.startswith("fused_step-"):
            continue
        try:
            dead = m[1] == tag and not _alive(int(m[2]))
            if dead or entry.lstat().st_mtime < old:
                entry.unlink()
        except FileNotFoundError:
            pass  # another run swept it first


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # ~100 KB: well under a millisecond


def _intact(path: Path) -> bool:
    """Whether `path` holds exactly the bytes its sidecar hash names (False if either is missing)."""
    try:
        want = _sidecar(path).read_text().strip()
        return _digest(path) == want
    except FileNotFoundError:
        return False


def _remove(path: Path) -> None:
    """Delete a library and its sidecar (a damaged one is rebuilt, never loaded)."""
    path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(built: Path, path: Path) -> None:
    """Put the compiler's output `built` in place as `path`, crash-safe: the file is fsync'd,
    its hash written to a fsync'd sidecar renamed into place, then the file renamed into place
    whole and the folder fsync'd. A crash at any point leaves either nothing, a temp file the
    next sweep removes, or a library whose hash check fails and is rebuilt."""
    _fsync(built)
    digest = _digest(built)
    side = _temp(_sidecar(path))
    fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(digest + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(side, _sidecar(path))
    finally:
        side.unlink(missing_ok=True)
    os.replace(built, path)
    _fsync(path.parent)


class Build:
    """The library at `path`: the cached one if its hash checks, else compiled by a background
    process (`fresh`: compiled even if cached)."""

    def __init__(self, path: Path, fresh: bool = False) -> None:
        self.path = path
        self.proc: subprocess.Popen | None = None
        self.built = False  # compiled by this process (a load failure is then final)
        _sweep(path.parent)
        if not fresh and _intact(path):
            return
        _remove(path)
        cxx = compiler()
        self.tmp = _temp(path)
        try:  # created here, so that an unwritable cache is named as such
            os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as e:
            raise NativeUnavailable(f"cache directory {path.parent} is not writable "
                                    f"({e.strerror})") from None
        cmd = command(cxx, self.tmp)
        self.deadline = time.monotonic() + BUILD_TIMEOUT
        try:  # a nameless file, not a pipe: nobody reads a pipe before the first learner step,
            # and a compiler that fills one (pages of warnings) would stall until then
            self.log = tempfile.TemporaryFile(dir=path.parent)
            self.proc = _start(cmd, self.log)
        except OSError as e:
            self.tmp.unlink(missing_ok=True)
            raise NativeUnavailable(f"compiler does not start ({e.strerror})") from None
        self.built = True
        atexit.register(self.abandon)

    def abandon(self) -> None:
        """At exit with the build never waited for (the run failed before its first step), or
        on a stall: stop the compiler and everything it started, remove its half-written file."""
        if self.proc is not None:
            _kill(self.proc)
            self.proc = None
            self.log.close()
            self.tmp.unlink(missing_ok=True)
            atexit.unregister(self.abandon)

    def _last_line(self) -> str:
        """The last line the compiler wrote (its error), read from the log's tail only."""
        self.log.seek(0, os.SEEK_END)
        self.log.seek(max(0, self.log.tell() - 4096))
        tail = self.log.read().decode(errors="replace").strip().splitlines()
        self.log.close()
        return tail[-1][:200] if tail else "no output"

    def wait(self) -> Path:
        """The built library (waits for the compiler, up to BUILD_TIMEOUT from its start; one
        that finished in time is taken however late the first learner step asks); the file is
        renamed into place whole, so a concurrent run never loads half a library."""
        if self.proc is None:
            return self.path
        try:
            code = self.proc.poll()
            if code is None:
                code = self.proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.abandon()
            raise NativeUnavailable(f"the compiler ran past {BUILD_TIMEOUT:g} s and was "
                                    "stopped") from None
        self.proc = None
        atexit.unregister(self.abandon)
        try:
            last = self._last_line()
            if code != 0:
                raise NativeUnavailable(f"build failed ({last})")
            _install(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)
        return self.path


_build: Build | None = None
_library: ctypes.CDLL | None = None
_error: str | None = None


def _os_reason(e: OSError) -> str:
    """One line for an OSError on the build and cache path."""
    where = f" on {e.filename}" if e.filename else ""
    return f"native cache failed{where} ({e.strerror or type(e).__name__})"


def prepare() -> None:
    """Start building the library in the background if the cache lacks it (cheap otherwise).
    A failure is remembered and reported by `load`."""
    global _build, _error
    if _build is not None or _library is not None or _error is not None:
        return
    try:
        _build = Build(library_path())
    except NativeUnavailable as e:
        _error = str(e)
    except OSError as e:
        _error = _os_reason(e)


def _dlopen(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise NativeUnavailable(f"{path} does not load ({e})") from None
    lib.fdqn_abi.restype = ctypes.c_int64
    if lib.fdqn_abi() != ABI:
        raise NativeUnavailable(f"{path} is another version (abi {lib.fdqn_abi()})")
    return lib


def _open(build: Build) -> ctypes.CDLL:
    """The library `build` yields, loaded; a cached one that does not load, or whose hash no
    longer checks (it is hashed again right before dlopen), is deleted and built again, once."""
    path = build.wait()
    if build.built or _intact(path):
        try:
            return _dlopen(path)
        except NativeUnavailable:
            if build.built:
                _remove(path)
                raise
    _remove(path)
    rebuild = Build(path, fresh=True)
    try:
        return _dlopen(rebuild.wait())
    except NativeUnavailable:
        _remove(path)
        raise


def load() -> ctypes.CDLL:
    """The loaded library (building it first if needed); NativeUnavailable says why not."""
    global _library, _error, _build
    if _library is not None:
        return _library
    prepare()
    if _error is not None:
        raise NativeUnavailable(_error)
    try:
        lib = _open(_build)
    except NativeUnavailable as e:
        _error = str(e)
        raise
    except OSError as e:
        _error = _os_reason(e)
        raise NativeUnavailable(_error) from None
    lib.fdqn_create.restype = ctypes.c_void_p
    lib.fdqn_create.argtypes = [ctypes.POINTER(Spec)]
    lib.fdqn_destroy.argtypes = [ctypes.c_void_p]
    lib.fdqn_steps.restype = ctypes.c_int64
    lib.fdqn_steps.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    lib.fdqn_steps_start.restype = ctypes.c_int64
    lib.fdqn_steps_start.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                     ctypes.c_int64]
    lib.fdqn_steps_copied.restype = None
    lib.fdqn_steps_copied.argtypes = [ctypes.c_void_p]
    lib.fdqn_steps_stop.restype = None
    lib.fdqn_steps_stop.argtypes = [ctypes.c_void_p]
    lib.fdqn_steps_wait.restype = ctypes.c_int64
    lib.fdqn_steps_wait.argtypes = [ctypes.c_void_p]
    lib.fdqn_steps_many.restype = ctypes.c_int64
    lib.fdqn_steps_many.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 8 + [ctypes.c_int64]
    lib.fdqn_act.restype = ctypes.c_int64
    lib.fdqn_act.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                             ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p]
    _library, _build = lib, None
    return lib


def reset() -> None:
    """Forget the loaded library and any failure (tests build into other cache dirs)."""
    global _build, _library, _error
    _build = _library = _error = None


def _spec(learner, obs_dtype: torch.dtype, batch_size: int, buffer=None,
          params: torch.Tensor | None = None) -> tuple[Spec, tuple[torch.Tensor, ...]]:
    """The Spec of `learner` (and `buffer`'s storage, if given), and the tensors it points into,
    each checked to hold the dtype and element count the native side reads and writes;
    `params` in place of the learner's (an actor on a copy of them)."""
    net, opt = learner.net, learner.optimizer
    sizes = [net.in_dim, *net.hidden, net.n_out]
    if len(sizes) - 1 > MAX_LAYERS:
        raise NativeUnsupported(f"more than {MAX_LAYERS} layers")
    if obs_dtype not in OBS_KINDS:
        raise NativeUnsupported(f"{str(obs_dtype).replace('torch.', '')} observations")
    spec = Spec(abi=ABI, n_layers=len(sizes) - 1, batch=batch_size,
                double_dqn=int(learner.double), dueling=int(net.dueling),
                huber=int(learner.loss_kind == "huber"), obs_kind=OBS_KINDS[obs_dtype],
                interval=learner.interval, lr=opt.lr, beta1=opt.betas[0], beta2=opt.betas[1],
                eps=opt.eps, max_norm=learner.max_grad_norm, tau=learner.tau)
    spec.sizes[:len(sizes)] = sizes
    n = sum(i * o + o for i, o in zip(sizes, sizes[1:]))
    f32 = torch.float32
    params = learner.params if params is None else params
    fields = {"params": (params, f32, n), "grad": (learner.grad, f32, n),
              "target": (learner.target, f32, n), "exp_avg": (opt.exp_avg, f32, n),
              "exp_avg_sq": (opt.exp_avg_sq, f32, n), "step_count": (opt.step_count, f32, 1)}
    if buffer is not None:
        cap = spec.capacity = buffer.capacity
        fields |= {"obs": (buffer.obs, obs_dtype, cap * net.in_dim),
                   "next_obs": (buffer.next_obs, obs_dtype, cap * net.in_dim),
                   "actions": (buffer.actions, torch.int64, cap),
                   "rewards": (buffer.rewards, f32, cap), "dones": (buffer.dones, f32, cap),
                   "discounts": (buffer.discounts, f32, cap)}
    for name, (t, dtype, numel) in fields.items():
        if not t.is_contiguous() or t.device.type != "cpu":
            raise NativeUnavailable(f"{name} is not a contiguous CPU tensor")
        if t.dtype != dtype or t.numel() != numel:
            raise NativeUnavailable(f"{name} is {t.dtype} of {t.numel()} values, the native "
                                    f"step reads {dtype} of {numel}")
        setattr(spec, name, t.data_ptr())
    return spec, tuple(t for t, _, _ in fields.values())


class _Handle:
    """A native Step object for one Spec, destroyed with this Python object."""

    def __init__(self, spec: Spec, keep: tuple) -> None:
        self.lib = load()
        self._keep = keep  # the native side holds raw pointers into these
        self.handle = self.lib.fdqn_create(ctypes.byref(spec))
        if not self.handle:
            raise NativeUnavailable(f"the library refused batch {spec.batch} on layers "
                                    f"{list(spec.sizes[:spec.n_layers + 1])} (beyond what it "
                                    "indexes, or more memory than it could allocate)")

    def __del__(self) -> None:
        handle = getattr(self, "handle", None)
        if handle:
            self.lib.fdqn_destroy(handle)
            self.handle = None


class NativeActor(_Handle):
    """Q-values and epsilon-greedy actions of the acting batch under the learner's live
    parameters (or `params`, a copy of them), in one native call (the plain forward pass is
    about ten torch ops)."""

    def __init__(self, learner, obs_dtype: torch.dtype, params: torch.Tensor | None = None
                 ) -> None:
        super().__init__(*_spec(learner, obs_dtype, 1, params=params))
        self.n_actions, self.in_dim = learner.net.n_actions, learner.net.in_dim
        self.obs_dtype = obs_dtype

    def _call(self, obs: torch.Tensor, uniforms: torch.Tensor | None, eps: float
              ) -> tuple[torch.Tensor, np.ndarray]:
        n = obs.shape[0]
        if obs.dtype != self.obs_dtype or obs.device.type != "cpu" or obs.numel() != n * self.in_dim:
            raise ValueError(f"the native actor takes {self.obs_dtype} CPU observations of "
                             f"{self.in_dim} values, got {obs.dtype} {list(obs.shape)}")
        obs = obs.contiguous()
        q = torch.empty(n, self.n_actions)
        actions = np.empty(n, dtype=np.int64)
        u = None if uniforms is None else uniforms.contiguous()
        if u is not None and (u.dtype != torch.float32 or u.device.type != "cpu"
                              or u.numel() != 2 * n):
            raise ValueError(f"the native actor takes [2, {n}] float32 CPU uniforms, got "
                             f"{u.dtype} {list(u.shape)}")
        code = self.lib.fdqn_act(self.handle, obs.data_ptr(), n,
                                 None if u is None else u.data_ptr(), eps, q.data_ptr(),
                                 actions.ctypes.data)
        if code == -2:
            raise MemoryError(f"the native actor could not allocate its scratch for {n} rows")
        if code != 0:
            raise ValueError(f"the native actor cannot take {n} rows at once")
        return q, actions

    def q(self, obs: torch.Tensor) -> torch.Tensor:
        """Q-values [n, n_actions] of a batch of observations."""
        return self._call(obs, None, 0.0)[0]

    def act(self, obs: torch.Tensor, eps: float, uniforms: torch.Tensor) -> torch.Tensor:
        """`explore.epsilon_greedy`'s actions for the uniforms [2, n] it would draw."""
        return torch.from_numpy(self._call(obs, uniforms, eps)[1])


class NativeStep(_Handle):
    """`flat.CpuStep`'s math as one native call per block of steps, on the learner's tensors
    and the replay buffer's storage in place (no copies; the checkpoint format is unchanged)."""

    def __init__(self, learner, buffer, batch_size: int) -> None:
        super().__init__(*_spec(learner, buffer.obs.dtype, batch_size, buffer))
        self.learner, self.buffer, self.b = learner, buffer, batch_size
        self.td_abs = np.empty(batch_size, dtype=np.float32)
        self._block: tuple[np.ndarray, int, int] | None = None  # started: idx, k, rows
        self.detached = 0  # blocks that ran beside the caller (summary.json reports it)

    def _block_of(self, idx: np.ndarray) -> tuple[np.ndarray, int]:
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        k = 1 if idx.ndim == 1 else idx.shape[0]
        if idx.size != k * self.b:
            raise ValueError(f"an index block of {self.b} columns, got {list(idx.shape)}")
        return idx, k

    @property
    def busy(self) -> bool:
        """Whether a block `start` began has not been waited for: until `wait`, the learner's
        tensors and stats are the block's."""
        return self._block is not None

    def start(self, idx: np.ndarray) -> None:
        """`steps(idx)` on a thread of the library's own, returning at once: the caller writes
        the replay only after `wait_copied` (each step copies its rows out just before it
        runs), and acts, logs or saves only after `wait`. The result is `steps(idx)`'s bit for
        bit."""
        self.wait()
        idx, k = self._block_of(idx)
        size = self.buffer.size
        code = self.lib.fdqn_steps_start(self.handle, idx.ctypes.data, k, self.td_abs.ctypes.data,
                                         self.learner.fused_stats.ctypes.data,
                                         self.learner.steps, size)
        if code < 0:
            raise RuntimeError("the native step refused its arguments")
        self._block = (idx, k, size)
        self.detached += code == 0

    def wait_copied(self) -> None:
        """Wait until the block in flight has copied the last of its rows out of the replay
        (at once if none is): from then on the replay may take new rows."""
        if self._block is not None:
            self.lib.fdqn_steps_copied(self.handle)

    def wait(self) -> None:
        """Wait for the block `start` began (nothing if none): count its steps, raise
        ReplayCorrupt as `steps` would if it found a bad row."""
        if self._block is None:
            return
        idx, k, size = self._block
        self._block = None
        done = self.lib.fdqn_steps_wait(self.handle)
        if done < 0:
            raise RuntimeError("the native step lost its block")
        self.learner.steps += done
        if done < k:
            raise replay_fault(idx.reshape(k, self.b)[done], size, self.buffer.actions.numpy(),
                               self.learner.net.n_actions)

    def stop(self) -> None:
        """`wait`, then end the thread the blocks ran on (the next `start` begins another): a
        process must have no thread of its own running when it forks."""
        try:
            self.wait()
        finally:
            self.lib.fdqn_steps_stop(self.handle)

    def steps(self, idx: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """The steps of a [K, B] int64 index block (or one [B] row), each with its target update
        when due; returns |TD error| of the last step's rows (a view the next call overwrites)."""
        self.wait()
        idx, k = self._block_of(idx)
        if weights is not None:
            weights = np.ascontiguousarray(weights, dtype=np.float32)
            if weights.size != idx.size:
                raise ValueError(f"weights {list(weights.shape)} for indices {list(idx.shape)}")
        size = self.buffer.size
        done = self.lib.fdqn_steps(self.handle, idx.ctypes.data, k,
                                   None if weights is None else weights.ctypes.data,
                                   self.td_abs.ctypes.data, self.learner.fused_stats.ctypes.data,
                                   self.learner.steps, size)
        if done < 0:
            raise RuntimeError("the native step refused its arguments")
        self.learner.steps += done
        if done < k:  # that step refused a row before changing anything
            raise replay_fault(idx.reshape(k, self.b)[done], size, self.buffer.actions.numpy(),
                               self.learner.net.n_actions)
        return self.td_abs


def steps_many(steps: list[NativeStep], blocks: list[np.ndarray], threads: int = 1) -> None:
    """Learner i's steps on the [K_i, B] index block blocks[i], for every learner in one native
    call (a population's agents), on up to `threads` threads: each learner's steps are exactly
    the ones `steps[i].steps` would run, in the same order on its own tensors, so the result
    is the separate calls' bit for bit, however many threads share them. A refused row raises
    as `NativeStep.steps` does (the other learners have stepped)."""
    n = len(steps)
    if n == 0:
        return
    if len(blocks) != n:
        raise ValueError(f"{len(blocks)} index blocks for {n} learners")
    blocks = [np.ascontiguousarray(b, dtype=np.int64) for b in blocks]
    ks = np.empty(n, dtype=np.int64)
    for i, (st, b) in enumerate(zip(steps, blocks)):
        ks[i] = 1 if b.ndim == 1 else b.shape[0]
        if b.size != ks[i] * st.b:
            raise ValueError(f"learner {i}: an index block of {st.b} columns, got {list(b.shape)}")
        if st.lib is not steps[0].lib:
            raise ValueError("the learners' steps come from different native libraries")
    ptr = ctypes.c_void_p * n
    handles = ptr(*[st.handle for st in steps])
    idx = ptr(*[b.ctypes.data for b in blocks])
    td = ptr(*[st.td_abs.ctypes.data for st in steps])
    stats = ptr(*[st.learner.fused_stats.ctypes.data for st in steps])
    counts = np.array([st.learner.steps for st in steps], dtype=np.int64)
    rows = np.array([st.buffer.size for st in steps], dtype=np.int64)
    done = np.empty(n, dtype=np.int64)
    code = steps[0].lib.fdqn_steps_many(n, handles, idx, ks.ctypes.data, td, stats,
                                        counts.ctypes.data, rows.ctypes.data, done.ctypes.data,
                                        max(1, int(threads)))
    if code != 0 or (done < 0).any():
        raise RuntimeError("the native step refused its arguments")
    for st, d in zip(steps, done):
        st.learner.steps += int(d)
    for st, b, k, d in zip(steps, blocks, ks, done):
        if d < k:
            raise replay_fault(b.reshape(int(k), st.b)[d], int(st.buffer.size),
                               st.buffer.actions.numpy(), st.learner.net.n_actions)


def warn_unavailable(reason: str) -> None:
    """The one console line when the native step cannot run here."""
    warnings.warn(f"fastdqn: native learner step unavailable ({reason}); using the Numba step",
                  RouteFallbackWarning, stacklevel=3)
