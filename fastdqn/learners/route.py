"""The one place where a DQN run's learner route is chosen, with the reason for each choice.

`choose_route` takes the settings that decide the route: --learner (auto | numba | reference),
--optimizer (adam | rmsprop), the network kind (mlp | rbf | cnn | custom, a module passed from
Python), whether the replay stores frames (--frame-replay), the device, --cuda-graphs and the
cores the process may use. It
returns the choices, and the agent, the env checks and the acting path read them without
deciding again. For each choice, the first rule that applies wins:

| choice         | value     | when                                                            |
|----------------|-----------|-----------------------------------------------------------------|
| learner        | reference | a cnn or custom network (the flat learner is fastdqn's MLP)     |
|                | reference | a distributional or noisy head (the "mlp_module" kind: the flat |
|                |           | MLP's fused step has neither; measured in bench/README.md)      |
|                | reference | --learner reference                                             |
|                | reference | the frame replay (the fused CPU step reads a row buffer)        |
|                | reference | --optimizer rmsprop (the flat learner's optimizer is Adam)      |
|                | flat      | otherwise: the MLP, or the RBF model's linear head              |
| native         | no        | the reference learner; a device other than the CPU              |
|                | no        | --learner numba                                                 |
|                | yes       | otherwise: tried first, the Numba step where it does not build, |
|                |           | load or pass its self-check                                     |
| overlap        | no        | no native step                                                  |
|                | no        | one usable core (a detached block would take turns with the     |
|                |           | loop on it)                                                     |
|                | yes       | otherwise: a uniform block's native steps run on a thread of    |
|                |           | their own while the loop steps the envs; the loop stores the    |
|                |           | transitions once the block has copied its rows out of the       |
|                |           | replay, and acts once the block is done, so the result is the   |
|                |           | in-line call's bit for bit (prioritized replay and --seeds      |
|                |           | populations step in line)                                       |
| update graphs  | no        | a device other than CUDA; --no-cuda-graphs                      |
|                | no        | --learner reference (the reference is never graphed)            |
|                | no        | a custom network (its forward may not be capturable)            |
|                | no        | --noisy (its noise generator is not registered with a capture)  |
|                | yes       | otherwise, each graph proven against the eager step first       |
| acting graphs  | no        | the reference learner (it acts with its module's forward)       |
|                | no        | a device other than CUDA; --no-cuda-graphs                      |
|                | yes       | otherwise, proven against the plain forward pass first          |
| refusal        | message   | --learner numba where the learner is not the flat one on the    |
|                |           | CPU: the device's reason first, then the learner's              |

A route chosen here may still fall back while the run goes on (a native step that does not
build, a graph that fails its self-check): that is no choice, and summary.json's
`route_fallbacks` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastdqn.nets.kinds import FLAT, KINDS, REFERENCE


@dataclass(frozen=True)
class Route:
    """The learner route's choices, each with why; `refusal` is the one-line error for a
    --learner numba that this run would not take (None: nothing to refuse)."""

    learner: str
    learner_why: str
    native: bool
    native_why: str
    update_graphs: bool
    update_graphs_why: str
    acting_graphs: bool
    acting_graphs_why: str
    refusal: str | None = None
    overlap: bool = False
    overlap_why: str = "one usable core: a detached block would take turns with the loop on it"


def choose_route(learner: str, optimizer: str, kind: str, frames: bool, device: torch.device,
                 cuda_graphs: bool, noisy: bool = False, cores: int = 1) -> Route:
    """The route for these settings, by the rules table in this module's docstring (deciding
    needs no CUDA: only `device.type` is read); `cores`: the CPUs the process may run on."""
    which, learner_why = _learner(learner, optimizer, kind, frames)
    flat = which == FLAT
    native, native_why = _native(flat, learner, device)
    overlap, overlap_why = _overlap(native, cores)
    update, update_why = _update_graphs(learner, kind, device, cuda_graphs, noisy)
    if flat:
        acting, acting_why = _graphs_on(device, cuda_graphs, "the acting forward pass is captured "
                                        "once, proven against the plain forward pass first")
    else:
        acting, acting_why = False, "the reference learner acts with its module's forward pass"
    return Route(which, learner_why, native, native_why, update, update_why, acting, acting_why,
                 _refusal(learner, device, flat, learner_why), overlap, overlap_why)


def _learner(learner: str, optimizer: str, kind: str, frames: bool) -> tuple[str, str]:
    if FLAT not in KINDS[kind].routes:
        return REFERENCE, KINDS[kind].reference_why or f"a {kind} network trains on the reference route"
    if learner == "reference":
        return REFERENCE, "--learner reference"
    if frames:
        return REFERENCE, "the frame replay trains on the reference route"
    if optimizer != "adam":
        return REFERENCE, f"--optimizer {optimizer} trains on the reference route"
    what = "the RBF model's linear head" if kind == "rbf" else "the MLP"
    return FLAT, f"the flat learner trains {what} with Adam on a row replay"


def _native(flat: bool, learner: str, device: torch.device) -> tuple[bool, str]:
    if not flat:
        return False, "the reference learner has no native step"
    if device.type != "cpu":
        return False, f"device {device.type}: the native step runs on the CPU only"
    if learner == "numba":
        return False, "--learner numba"  # summary.json's route quotes it
    return True, ("tried first, the Numba step where it does not build, load or pass its "
                  "self-check")


def _overlap(native: bool, cores: int) -> tuple[bool, str]:
    if not native:
        return False, "no native step: the learner steps in line"
    if cores < 2:
        return False, "one usable core: a detached block would take turns with the loop on it"
    return True, ("a uniform block's native steps run on a thread of their own while the loop "
                  "steps the envs, stores the transitions once the block has copied its rows, "
                  "and logs")


def _graphs_on(device: torch.device, cuda_graphs: bool, why: str) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, f"device {device.type}: CUDA graphs run on CUDA only"
    if not cuda_graphs:
        return False, "--no-cuda-graphs"
    return True, why


def _update_graphs(learner: str, kind: str, device: torch.device, cuda_graphs: bool,
                   noisy: bool) -> tuple[bool, str]:
    on, why = _graphs_on(device, cuda_graphs, "the update is captured once per batch layout, "
                         "each graph proven against the eager step first")
    if not on:
        return on, why
    if learner == "reference":
        return False, "--learner reference: the reference is never graphed"
    if kind == "custom":
        return False, "a custom network: fastdqn cannot promise its forward is capturable"
    if noisy:
        return False, ("--noisy: its noise comes from the run's own torch.Generator, which the "
                       "capture does not register (kept eager)")
    return on, why


def _refusal(learner: str, device: torch.device, flat: bool, learner_why: str) -> str | None:
    """The error for --learner numba where the run would not take the Numba CPU step."""
    if learner != "numba":
        return None
    why = f"device {device.type}" if device.type != "cpu" else None if flat else learner_why
    if why is None:
        return None
    return (f"--learner numba picks the flat MLP's Numba CPU step, which this run does not take "
            f"({why}); drop it")
