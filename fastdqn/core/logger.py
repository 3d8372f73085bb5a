"""What the user sees: TensorBoard scalars, the console progress line, returns.png."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


class RunLogger:
    """TensorBoard writer plus a throttled one-line console progress display."""

    def __init__(self, run_dir: Path, total_steps: int, progress: bool = True,
                 purge_step: int | None = None, label: str = "",
                 tracker: WandbTracker | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step)
        self.label = label  # a population's "seed K: " before each message
        self.tracker = tracker
        self.total = total_steps
        self.progress_on = progress
        self.tty = sys.stderr.isatty()
        self._last_print = 0.0
        self._interval = 0.5 if self.tty else 10.0
        self.inline = InlineImage()

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)
        if self.tracker is not None:
            self.tracker.log({tag: value}, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        if self.tracker is not None:
            self.tracker.log(values, step)

    def progress_due(self) -> bool:
        """Whether `progress` would print now (lets the caller skip preparing its figures)."""
        return self.progress_on and time.monotonic() - self._last_print >= self._interval

    def progress(self, step: int, sps: float, mean_return: float | None, eps: float | None,
                 force: bool = False) -> None:
        """Print `steps  SPS  mean return  eps`, at most twice a second (once per 10 s to logs)."""
        if not self.progress_on:
            return
        now = time.monotonic()
        if not force and now - self._last_print < self._interval:
            return
        self._last_print = now
        frac = min(1.0, step / max(1, self.total))
        bar = "#" * int(frac * 20)
        ret = "   n/a" if mean_return is None else f"{mean_return:7.1f}"
        line = (f"[{bar:<20}] {step:>9,d}/{self.total:,d} steps  {sps:7.0f} SPS  "
                f"return(100) {ret}" + (f"  eps {eps:.3f}" if eps is not None else ""))
        if self.tty:
            sys.stderr.write("\r" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        if self.progress_on and self.tty:
            sys.stderr.write("\r\033[K")
        sys.stderr.write(self.label + text + "\n")
        sys.stderr.flush()

    def show_plot(self, path: Path) -> None:
        """Show (then refresh in place) the returns plot in the notebook cell that is training."""
        self.inline.show(path)

    def close(self, summary: dict | None = None) -> None:
        if self.progress_on and self.tty:
            sys.stderr.write("\n")
        self.writer.flush()
        self.writer.close()
        if self.tracker is not None:
            self.tracker.close(summary)


WANDB_INSTALL = 'pip install "fastdqn[wandb]"'


def check_wandb() -> None:
    """--wandb needs the wandb package: one line saying how to get it, before any run starts."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        from fastdqn.errors import ConfigError

        raise ConfigError(f"--wandb needs the wandb package: {WANDB_INSTALL} (or drop --wandb)"
                          ) from None


class WandbTracker:
    """A run's copy of its TensorBoard scalars, its config and its summary in Weights & Biases
    (--wandb PROJECT). Every scalar is logged against `global_step` (the env step TensorBoard
    uses), declared as the step metric, so the episode returns written in a batch at log time,
    stamped with earlier steps, keep their own x. Each run is its own wandb run (`create_new`:
    a population's agents log at once from one process), named after its run dir and grouped
    by `group`. WANDB_MODE=offline writes it under the run dir for `wandb sync` later; a
    resumed run starts a new wandb run of the same name and group."""

    def __init__(self, project: str, run_dir: Path, config: dict, group: str | None = None,
                 resumed_at: int | None = None) -> None:
        import wandb

        name = run_dir.name if resumed_at is None else f"{run_dir.name} (resumed at {resumed_at})"
        self.run = wandb.init(project=project, dir=str(run_dir), name=name, group=group,
                              config=config, reinit="create_new")
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log({**values, "global_step": step})

    def close(self, summary: dict | None = None) -> None:
        if summary is not None:
            self.run.summary.update({k: v for k, v in summary.items()
                                     if isinstance(v, (int, float, str, bool)) or v is None})
        self.run.finish()


class InlineImage:
    """An image in a Jupyter cell's output that each `show` replaces; a no-op outside a kernel.

    IPython is only looked up in sys.modules, never imported: a kernel has it loaded already,
    and plain Python and the CLI must not pay for (or depend on) it. The PNG bytes are shown
    rather than the Figure, so it works whatever matplotlib backend the notebook uses.
    """

    def __init__(self) -> None:
        self.handle = None
        self.failed = False

    def show(self, path: Path) -> None:
        ipython = sys.modules.get("IPython")
        shell = ipython.get_ipython() if ipython is not None else None
        if getattr(shell, "kernel", None) is None:  # not in Jupyter (a terminal can't show PNGs)
            return
        if self.failed:
            return
        try:
            from IPython.display import Image, display

            image = Image(data=Path(path).read_bytes(), format="png")
            if self.handle is None:
                self.handle = display(image, display_id=True)
            else:
                self.handle.update(image)
        except Exception as e:  # a plot that cannot be shown must never stop a training run
            self.failed = True
            sys.stderr.write(f"cannot show the returns plot inline ({type(e).__name__}: {e}); "
                             f"it is saved in {path}\n")


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at each point (shorter at the start)."""
    if len(x) == 0:
        return x
    c = np.cumsum(np.insert(np.asarray(x, dtype=np.float64), 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_returns(path: Path, returns: list[float], end_steps: list[int], env_id: str,
                 target: float | None = None):
    """Episode returns and their 100-episode moving average against env steps, saved as PNG.

    A bare Figure needs no backend, so a notebook's own matplotlib backend is left alone.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    r = np.asarray(returns, dtype=np.float64)
    s = np.asarray(end_steps)
    if len(r):
        ax.plot(s, r, ".", ms=2, alpha=0.35, color="tab:blue", label="episode return")
        ax.plot(s, moving_average(r, 100), color="tab:orange", lw=2, label="mean of last 100")
    if target is not None:
        ax.axhline(target, color="tab:green", ls="--", lw=1, label=f"target {target:g}")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(f"{env_id}: {len(r)} episodes")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return fig


class StageTimer:
    """Wall time per stage of the training loop, accumulated lap by lap.

    `sync` (e.g. torch.cuda.synchronize) makes each lap wait for the device, so a stage's time
    is its real cost rather than its launch cost; the trainer's own timer never syncs. Laps
    before `warmup_steps` env steps are discarded, so JIT and warm-up stay out of the figures.
    """

    def __init__(self, stages: tuple[str, ...], sync=None, warmup_steps: int = 0) -> None:
        self.totals = dict.fromkeys(stages, 0.0)
        self.sync = sync
        self.warmup_steps = warmup_steps
        self.iterations = 0
        self.start_step = 0
        self.start_time = time.perf_counter()
        self.end_step = 0
        self.end_time = self.start_time
        self._t = self.start_time
        self._warm = warmup_steps == 0

    def lap(self, stage: str) -> None:
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        self.totals[stage] += now - self._t
        self._t = now

    def iteration_done(self, step: int) -> None:
        """Count an iteration; the first one past the warm-up restarts the clocks."""
        if not self._warm and step >= self.warmup_steps:
            self._warm = True
            self.totals = dict.fromkeys(self.totals, 0.0)
            self.iterations = 0
            self.start_step, self.start_time = step, time.perf_counter()
            self._t = self.start_time
            return
        self.iterations += 1
        self.end_step, self.end_time = step, time.perf_counter()

    def sps(self) -> float:
        """Env steps per second over the timed (post-warm-up) iterations."""
        dt = self.end_time - self.start_time
        return (self.end_step - self.start_step) / dt if dt > 0 else 0.0

    def us_per_iteration(self) -> dict[str, float]:
        n = max(1, self.iterations)
        return {k: 1e6 * v / n for k, v in self.totals.items()}
