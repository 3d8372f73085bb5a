"""Every exception fastdqn raises on purpose, in one module that imports nothing of fastdqn, so
that any layer can raise or catch them without importing the layer that first needed them.

A `ConfigError` (and its subclasses) is the user's to fix: the CLI prints its one line and exits
with code 2. The rest are faults of the run, the machine or a file, raised where they happen.
"""


class ConfigError(ValueError):
    """A user error in the settings: the message names the problem and the fix."""


class CheckpointError(ConfigError):
    """A checkpoint that is missing, damaged, unsafe or from another run (a user error)."""


class EnvError(RuntimeError):
    """An env crashed or hung during training; the message names the env index and the cause."""


class DisplayError(ConfigError):
    """No window can be opened here; `problem` says why (the caller adds the way out)."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"{problem}; record a GIF with save_gif instead")
        self.problem = problem


class NativeUnavailable(RuntimeError):
    """The native step cannot be built or loaded here; the message says why in one line."""


class NativeUnsupported(NativeUnavailable):
    """The native step does not take this run's layout (not a fault of the machine: the Numba
    step runs it, noted in the route, without a warning)."""


class ReplayCorrupt(ValueError):
    """A sampled replay row the learner step would index with is out of range (a row index past
    the filled rows, or a stored action outside the action space): the buffer was damaged or
    crafted. The native and Numba steps refuse it before writing anything for that step."""


class OldBufferError(ValueError):
    """A saved buffer from before rows carried their discount."""


class TrainingDiverged(RuntimeError):
    """The loss or the parameters became NaN or inf; the message names the step and likely causes."""


class RouteFallbackWarning(UserWarning):
    """A fast route failed its self-check; the eager route is used instead."""


class ActorsLost(RuntimeError):
    """The actors cannot go on (restarts used up, or none answering): the run stops."""
