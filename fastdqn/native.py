"""The native CPU learner step (`csrc/fused_step.cpp`): built once per machine, loaded by ctypes.

Why native: the Numba route (`learner.CpuStep`) is about 20 Python-level calls a step, each a
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
else is used: a library is code, so one that another user could have written is never loaded.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .selfcheck import RouteFallbackWarning, disagreement

_HERE = Path(__file__).resolve().parent
SOURCE = next((p for p in (_HERE / "_csrc" / "fused_step.cpp",
                           _HERE.parent / "csrc" / "fused_step.cpp") if p.is_file()),
              _HERE.parent / "csrc" / "fused_step.cpp")
"""The C++ source: inside the package in a wheel (fastdqn/_csrc), `csrc/` at the repository
root in a checkout or an editable install."""
ABI = 3
MAX_LAYERS = 8
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC", "-Wl,-z,defs"]
"""-march=native: the library is built on the machine that runs it, and its name hashes the CPU
flags; -z defs: a torch without sgemm_ fails at link time, not at the first step."""


class Spec(ctypes.Structure):
    """The `Spec` struct of csrc/fused_step.cpp, field for field."""

    _fields_ = [("abi", ctypes.c_int64), ("n_layers", ctypes.c_int64),
                ("sizes", ctypes.c_int64 * (MAX_LAYERS + 1)), ("batch", ctypes.c_int64),
                ("double_dqn", ctypes.c_int64), ("dueling", ctypes.c_int64),
                ("huber", ctypes.c_int64), ("obs_kind", ctypes.c_int64),
                ("interval", ctypes.c_int64),
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


class NativeUnavailable(RuntimeError):
    """The native step cannot be built or loaded here; the message says why in one line."""


class NativeUnsupported(NativeUnavailable):
    """The native step does not take this run's layout (not a fault of the machine: the Numba
    step runs it, noted in the route, without a warning)."""


def cache_dir() -> Path:
    """$FASTDQN_CACHE_DIR, else $XDG_CACHE_HOME/fastdqn, else ~/.cache/fastdqn."""
    env = os.environ.get("FASTDQN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fastdqn"


def _private_dir(path: Path) -> Path:
    """`path`, created 0700 if missing; refused unless it is a directory of this user that no
    one else can write (a library there is code this process will run)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as e:
        raise NativeUnavailable(f"cache directory {path} unusable ({e.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise NativeUnavailable(f"cache path {path} is not a directory")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise NativeUnavailable(f"cache directory {path} belongs to another user")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise NativeUnavailable(f"cache directory {path} is writable by others (chmod 700 it)")
    return path


def compiler() -> str:
    """$CXX, else c++ or g++ on PATH."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise NativeUnavailable("no C++ compiler (set CXX or install g++)")
    return cxx


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _torch_lib() -> Path:
    return Path(torch.__file__).resolve().parent / "lib"


def command(cxx: str, out: Path) -> list[str]:
    """The compiler command that builds the library into `out`."""
    lib = _torch_lib()
    return [cxx, *FLAGS, str(SOURCE), "-o", str(out), f"-L{lib}", "-ltorch_cpu",
            f"-Wl,-rpath,{lib}"]


def library_path() -> Path:
    """Where the library for this source, compiler, torch and CPU lives in the cache."""
    if not sys.platform.startswith("linux"):
        raise NativeUnsupported(f"the native step is built on Linux only (this is {sys.platform})")
    if not SOURCE.is_file():
        raise NativeUnavailable(f"{SOURCE} is not installed (pip install -e . ships it)")
    cxx = compiler()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NativeUnavailable(f"compiler {cxx} does not run ({e})") from None
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), version.encode(), " ".join(command(cxx, Path())).encode(),
                 torch.__version__.encode(), str(_torch_lib()).encode(), _cpu_flags().encode()):
        key.update(part)
        key.update(b"\0")
    return _private_dir(cache_dir()) / f"fused_step-{key.hexdigest()[:20]}.so"


class Build:
    """The library at `path`, compiled by a background process if the cache lacks it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen | None = None
        if path.exists():
            return
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        try:
            self.proc = subprocess.Popen(command(compiler(), self.tmp), stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         text=True)
        except OSError as e:
            self.tmp.unlink(missing_ok=True)
            raise NativeUnavailable(f"compiler does not start ({e.strerror})") from None
        atexit.register(self.abandon)

    def abandon(self) -> None:
        """At exit with the build never waited for (the run failed before its first step):
        stop the compiler and remove its half-written file."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self.tmp.unlink(missing_ok=True)

    def wait(self) -> Path:
        """The built library (waits for the compiler); the file is renamed into place whole,
        so a concurrent run never loads half a library."""
        if self.proc is None:
            return self.path
        out, _ = self.proc.communicate()
        code, self.proc = self.proc.returncode, None
        atexit.unregister(self.abandon)
        if code != 0:
            self.tmp.unlink(missing_ok=True)
            last = (out or "").strip().splitlines()[-1:] or ["no output"]
            raise NativeUnavailable(f"build failed ({last[0][:200]})")
        os.replace(self.tmp, self.path)
        return self.path


_build: Build | None = None
_library: ctypes.CDLL | None = None
_error: str | None = None


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


def load() -> ctypes.CDLL:
    """The loaded library (building it first if needed); NativeUnavailable says why not."""
    global _library, _error, _build
    if _library is not None:
        return _library
    prepare()
    if _error is not None:
        raise NativeUnavailable(_error)
    try:
        path = _build.wait()
        lib = ctypes.CDLL(str(path))
        if lib.fdqn_abi() != ABI:
            raise NativeUnavailable(f"{path} is another version (abi {lib.fdqn_abi()})")
    except NativeUnavailable as e:
        _error = str(e)
        raise
    except OSError as e:
        _error = f"{_build.path} does not load ({e})"
        raise NativeUnavailable(_error) from None
    lib.fdqn_abi.restype = ctypes.c_int64
    lib.fdqn_create.restype = ctypes.c_void_p
    lib.fdqn_create.argtypes = [ctypes.POINTER(Spec)]
    lib.fdqn_destroy.argtypes = [ctypes.c_void_p]
    lib.fdqn_steps.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.fdqn_act.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                             ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p]
    _library, _build = lib, None
    return lib


def reset() -> None:
    """Forget the loaded library and any failure (tests build into other cache dirs)."""
    global _build, _library, _error
    _build = _library = _error = None


def _spec(learner, obs_dtype: torch.dtype, batch_size: int,
          buffer=None) -> tuple[Spec, tuple[torch.Tensor, ...]]:
    """The Spec of `learner` (and `buffer`'s storage, if given), and the tensors it points into."""
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
    names = ["params", "grad", "target", "exp_avg", "exp_avg_sq", "step_count"]
    tensors = [learner.params, learner.grad, learner.target, opt.exp_avg, opt.exp_avg_sq,
               opt.step_count]
    if buffer is not None:
        names += ["obs", "next_obs", "actions", "rewards", "dones", "discounts"]
        tensors += [buffer.obs, buffer.next_obs, buffer.actions, buffer.rewards, buffer.dones,
                    buffer.discounts]
    for name, t in zip(names, tensors):
        if not t.is_contiguous() or t.device.type != "cpu":
            raise NativeUnavailable(f"{name} is not a contiguous CPU tensor")
        setattr(spec, name, t.data_ptr())
    return spec, tuple(tensors)


class _Handle:
    """A native Step object for one Spec, destroyed with this Python object."""

    def __init__(self, spec: Spec, keep: tuple) -> None:
        self.lib = load()
        self._keep = keep  # the native side holds raw pointers into these
        self.handle = self.lib.fdqn_create(ctypes.byref(spec))
        if not self.handle:
            raise NativeUnavailable("the library refused the network or batch layout")

    def __del__(self) -> None:
        handle = getattr(self, "handle", None)
        if handle:
            self.lib.fdqn_destroy(handle)
            self.handle = None


class NativeActor(_Handle):
    """Q-values and epsilon-greedy actions of the acting batch under the learner's live
    parameters, in one native call (the plain forward pass is about ten torch ops)."""

    def __init__(self, learner, obs_dtype: torch.dtype) -> None:
        super().__init__(*_spec(learner, obs_dtype, 1))
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
        self.lib.fdqn_act(self.handle, obs.data_ptr(), n, None if u is None else u.data_ptr(),
                          eps, q.data_ptr(), actions.ctypes.data)
        return q, actions

    def q(self, obs: torch.Tensor) -> torch.Tensor:
        """Q-values [n, n_actions] of a batch of observations."""
        return self._call(obs, None, 0.0)[0]

    def act(self, obs: torch.Tensor, eps: float, uniforms: torch.Tensor) -> torch.Tensor:
        """`explore.epsilon_greedy`'s actions for the uniforms [2, n] it would draw."""
        return torch.from_numpy(self._call(obs, uniforms, eps)[1])


class NativeStep(_Handle):
    """`learner.CpuStep`'s math as one native call per block of steps, on the learner's tensors
    and the replay buffer's storage in place (no copies; the checkpoint format is unchanged)."""

    def __init__(self, learner, buffer, batch_size: int) -> None:
        super().__init__(*_spec(learner, buffer.obs.dtype, batch_size, buffer))
        self.learner, self.buffer, self.b = learner, buffer, batch_size
        self.td_abs = np.empty(batch_size, dtype=np.float32)

    def steps(self, idx: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """The steps of a [K, B] int64 index block (or one [B] row), each with its target update
        when due; returns |TD error| of the last step's rows (a view the next call overwrites)."""
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        k = 1 if idx.ndim == 1 else idx.shape[0]
        if weights is not None:
            weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.lib.fdqn_steps(self.handle, idx.ctypes.data, k,
                            None if weights is None else weights.ctypes.data,
                            self.td_abs.ctypes.data, self.learner.fused_stats.ctypes.data,
                            self.learner.steps)
        self.learner.steps += k
        return self.td_abs


def self_check(learner, buffer, batch_size: int) -> str | None:
    """Why the native step must not carry `learner` on `buffer` (None: it may).

    The native and Numba steps run three steps each (a [2, B] block, then one step with
    importance weights) from the same state on scratch copies of the learner: its parameters,
    options and network, but Adam's eps raised to 1e-3, because near eps = 1e-8 Adam's first
    update maps a gradient difference of float rounding (1e-9) onto a large step difference,
    and two correct routes would disagree. The step counter starts one short of a hard target
    update, so that update is compared too. The run's own state and random streams are untouched.
    Raises NativeUnavailable when the library cannot be built or loaded.
    """
    from .learner import CpuStep, Learner

    if buffer.size == 0:
        return "the replay buffer is empty"

    def scratch() -> Learner:
        lr = Learner(learner.net, lr=learner.optimizer.lr, gamma=learner.gamma, tau=learner.tau,
                     target_update_interval=learner.interval, loss=learner.loss_kind,
                     double_dqn=learner.double, max_grad_norm=learner.max_grad_norm,
                     adam_eps=1e-3, init=learner.params.detach().cpu(), native=False)
        lr.target.copy_(learner.target)
        lr.steps = learner.interval - 1
        return lr

    rng = np.random.default_rng(0)
    idx = rng.integers(0, buffer.size, (3, batch_size))
    weights = rng.uniform(0.2, 1.0, batch_size).astype(np.float32)
    fast, slow = scratch(), scratch()
    step = NativeStep(fast, buffer, batch_size)
    step.steps(idx[:2])
    td_fast = torch.from_numpy(step.steps(idx[2], weights).copy())
    ref = CpuStep(slow, buffer, batch_size)
    for j, row in enumerate(idx):
        td_slow = torch.from_numpy(ref(row, weights if j == 2 else None).copy())
        slow.steps += 1
        if not ref.soft_target:
            slow.maybe_update_target()

    def state(lr: Learner, td: torch.Tensor) -> dict[str, torch.Tensor]:
        opt = lr.optimizer
        return {"params": lr.params, "target": lr.target, "grad": lr.grad,
                "exp_avg": opt.exp_avg, "exp_avg_sq": opt.exp_avg_sq, "td_abs": td,
                "stats": torch.from_numpy(lr.fused_stats), "steps": torch.tensor(lr.steps)}

    start = state(scratch(), torch.zeros(batch_size))
    return disagreement(state(fast, td_fast), state(slow, td_slow), start)


def warn_unavailable(reason: str) -> None:
    """The one console line when the native step cannot run here."""
    warnings.warn(f"fastdqn: native learner step unavailable ({reason}); using the Numba step",
                  RouteFallbackWarning, stacklevel=3)
