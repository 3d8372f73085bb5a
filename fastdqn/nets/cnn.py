"""Convolutional Q-networks for image observations: `--network cnn` (and `--network auto`, the
default, on images: a Box of rank 3 with dtype uint8 or bool).

Two architectures, picked by the size of the image (its two spatial sides):
- Nature DQN (Mnih et al. 2015): conv 32 8x8 stride 4, conv 64 4x4 stride 2, conv 64 3x3
  stride 1, fc 512, ReLU after each; for images whose smaller side is at least 36 pixels, the
  least its three convolutions reduce to a 1x1 map (Atari's 84x84 stacks: a 7x7x64 map).
- MinAtar (Young & Tian 2019): conv 16 3x3 stride 1, fc 128; for images whose smaller side is
  3 to 35 pixels (MinAtar's 10x10: an 8x8x16 map).
A side below 3 fits neither and is refused.

Layout. The module takes observations as the env gives them and permutes channels-last ones
([H, W, C], MinAtar's) to torch's [C, H, W] inside `forward`. Which axis holds the channels is
read from the shape: channels last when the last axis is the smallest and smaller than the
first (MinAtar [10, 10, 4], RGB [210, 160, 3]), channels first otherwise (gymnasium's
FrameStackObservation of gray frames, [4, 84, 84]). A cube is ambiguous ([10, 10, 10] is
MinAtar Seaquest, channels last): the env family decides (MinAtar ids are channels last), and
else channels first, torch's convention.

Inputs arrive as `mlp.preprocess` makes them for every Q-network: float rows, uint8 scaled
by 1/255, bool cast to 0/1 (MinAtar's channels are object masks, not intensities), flattened;
`forward` views them back in the observation's shape. With `dueling`, the last layer gives
[V, A_1..A_n] off the fc layer and Q = V + A - mean(A), as the MLP's dueling head does.

The flat fused learner is MLP-only: a CNN trains on the reference route (autograd).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from fastdqn.config.limits import MAX_HIDDEN_LAYERS, MAX_NETWORK_PARAMS
from fastdqn.core.checkpoint import check_module_state, load_online
from fastdqn.errors import CheckpointError, ConfigError
from fastdqn.nets.heads import HeadSpec, ValueOutputs, head_from_spec
from fastdqn.nets.mlp import check_dueling
from fastdqn.nets.noisy import NoisyLinear

NATURE = {"convs": [(32, 8, 4), (64, 4, 2), (64, 3, 1)], "fc": [512]}
"""Mnih et al. 2015: (out channels, kernel, stride) per convolution, then the fc layer sizes."""
MINATAR = {"convs": [(16, 3, 1)], "fc": [128]}
"""Young & Tian 2019 (MinAtar's examples/dqn.py)."""
NATURE_MIN_SIDE = 36
"""Smallest image side the Nature CNN takes: 8x8/4, 4x4/2, 3x3/1 leave 1x1 of a 36x36 image."""
MIN_SIDE = 3
"""Smallest image side any CNN here takes (MinAtar's 3x3 convolution)."""

MAX_SIDE = 4096
"""Largest image side or channel count a checkpoint's CNN may declare."""
MAX_CONVS = 16
"""Most convolutions a checkpoint's CNN may declare (these have 1 or 3)."""
MAX_CHANNELS = 4096
"""Most output channels of one convolution in a checkpoint's CNN."""
MAX_ACTIVATIONS = 2**26
"""Most values one observation's feature maps may hold in a checkpoint's CNN (Nature on 84x84
has 22 000): the maps are allocated per batch row, whatever the parameter count."""
MAX_ACTIONS = 2**16
"""Most actions a checkpoint's CNN may declare."""


def is_image_space(space: gym.Space) -> bool:
    """A Box of rank 3 with dtype uint8 or bool: what --network auto trains a CNN on."""
    return (isinstance(space, gym.spaces.Box) and len(space.shape) == 3
            and space.dtype in (np.dtype(np.uint8), np.dtype(np.bool_)))


def channels_last_of(shape: Sequence[int], channels_last_hint: bool = False) -> bool:
    """Is [a, b, c] an [H, W, C] image? The last axis holds channels when it is the smallest
    and smaller than the first; a cube follows `channels_last_hint` (the env family's)."""
    a, _b, c = shape
    if len(set(shape)) == 1:
        return channels_last_hint
    return c == min(shape) and c < a


def chw(shape: Sequence[int], channels_last: bool) -> tuple[int, int, int]:
    """(channels, height, width) of an observation shape in the given layout."""
    return (shape[2], shape[0], shape[1]) if channels_last else (shape[0], shape[1], shape[2])


def architecture(shape: Sequence[int], channels_last: bool) -> tuple[str, dict]:
    """The architecture (name, layers) for an image of this shape; ConfigError if neither fits."""
    c, h, w = chw(shape, channels_last)
    side = min(h, w)
    if side >= NATURE_MIN_SIDE:
        return "nature", NATURE
    if side >= MIN_SIDE:
        return "minatar", MINATAR
    layout = "[H, W, C]" if channels_last else "[C, H, W]"
    raise ConfigError(f"--network cnn needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels, got "
                      f"shape {list(shape)} ({h}x{w} as {layout}); use --network mlp")


def conv_out(side: int, kernel: int, stride: int) -> int:
    return (side - kernel) // stride + 1


class ConvQNetwork(torch.nn.Module):
    """Convolutions (ReLU), fc layers (ReLU), a linear head: one Q-value per action.

    `obs_shape` is the observation as the env gives it; `convs` are (out channels, kernel,
    stride) triples, `fc` the hidden fc sizes. `spec()` names every size, so a checkpoint
    rebuilds exactly this network (`module_from_checkpoint`).
    """

    def __init__(self, obs_shape: Sequence[int], n_actions: int,
                 convs: Sequence[Sequence[int]], fc: Sequence[int], dueling: bool = False,
                 channels_last: bool = False, head: HeadSpec | None = None) -> None:
        super().__init__()
        self.head_spec = head or HeadSpec()
        self.value = ValueOutputs(self.head_spec, n_actions, dueling)
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.n_actions, self.dueling = int(n_actions), bool(dueling)
        self.channels_last = bool(channels_last)
        self.convs_spec = [tuple(int(v) for v in layer) for layer in convs]
        self.fc_spec = [int(f) for f in fc]
        self.in_dim = int(np.prod(self.obs_shape))
        c, h, w = chw(self.obs_shape, self.channels_last)
        layers: list[torch.nn.Module] = []
        for out, kernel, stride in self.convs_spec:
            layers += [torch.nn.Conv2d(c, out, kernel, stride), torch.nn.ReLU()]
            c, h, w = out, conv_out(h, kernel, stride), conv_out(w, kernel, stride)
        self.conv = torch.nn.Sequential(*layers)
        self.map_shape = (c, h, w)
        mlp: list[torch.nn.Module] = []
        prev = c * h * w
        noisy = self.head_spec.noisy
        for i, size in enumerate(self.fc_spec):
            last = i == len(self.fc_spec) - 1
            linear = NoisyLinear if noisy and last else torch.nn.Linear
            mlp += [linear(prev, size), torch.nn.ReLU()]
            prev = size
        self.fc = torch.nn.Sequential(*mlp)
        self.head = (NoisyLinear if noisy else torch.nn.Linear)(prev, self.value.n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last fc layer's activations of float observations (flat rows or shaped)."""
        x = x.reshape(x.shape[0], *self.obs_shape)
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return self.fc(self.conv(x).flatten(1))

    def dist(self, x: torch.Tensor) -> torch.Tensor:
        """The head's atoms per action [B, A, N] (N = 1 for the plain head, nets/heads.py)."""
        return self.value.dist(self.head(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(self.head(self.features(x)))

    def spec(self) -> dict:
        """The checkpoint's "net" entry: every size needed to rebuild the module."""
        return {"kind": "cnn", "obs_shape": list(self.obs_shape), "n_actions": self.n_actions,
                "convs": [list(layer) for layer in self.convs_spec], "fc": list(self.fc_spec),
                "dueling": self.dueling, "channels_last": self.channels_last,
                **self.head_spec.spec_entry()}

    def describe(self) -> str:
        """e.g. "cnn 32x8/4-64x4/2-64x3/1, fc 512" (for summary.json's learner route)."""
        convs = "-".join(f"{o}x{k}/{s}" for o, k, s in self.convs_spec)
        what = f"cnn {convs}, fc {','.join(map(str, self.fc_spec)) or 'none'}"
        return what if self.head_spec.plain else f"{what}, {self.head_spec.describe()}"


def cnn_for(obs_space: gym.spaces.Box, n_actions: int, dueling: bool, seed: int,
            channels_last_hint: bool = False, head: HeadSpec | None = None) -> ConvQNetwork:
    """The CNN for an image space (architecture by size, layout by shape), initialized with
    torch's defaults from `seed` (a run passes its INIT generator seed, seeds.py) without
    touching the global RNGs: only the CPU generator is seeded, inside a fork that restores it
    (torch.manual_seed would also reseed the CUDA generators)."""
    shape = tuple(obs_space.shape)
    last = channels_last_of(shape, channels_last_hint)
    _, layers = architecture(shape, last)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return ConvQNetwork(shape, n_actions, layers["convs"], layers["fc"], dueling, last, head)


def count_params(obs_shape: Sequence[int], n_actions: int, convs: Sequence[Sequence[int]],
                 fc: Sequence[int], dueling: bool, channels_last: bool,
                 head: HeadSpec | None = None) -> tuple[int, int, int]:
    """(parameters, largest feature-map values per observation, final map side) of a CNN
    spec, computed without building it (side < 1: the convolutions do not fit the image; a
    noisy layer has a sigma for each mean)."""
    head = head or HeadSpec()
    c, h, w = chw(obs_shape, channels_last)
    params, biggest = 0, 0
    for out, kernel, stride in convs:
        params += out * c * kernel * kernel + out
        c, h, w = out, conv_out(h, kernel, stride), conv_out(w, kernel, stride)
        if min(h, w) < 1:
            return params, biggest, min(h, w)
        biggest = max(biggest, c * h * w)
    prev = c * h * w
    linears = []
    for size in fc:
        linears.append(prev * size + size)
        prev = size
    outputs = (n_actions + int(dueling)) * head.atoms
    linears.append(prev * outputs + outputs)
    noisy = sum(linears[-2:]) if head.noisy else 0
    return params + sum(linears) + noisy, biggest, min(h, w)


def check_spec(path: str | Path, spec: object) -> dict:
    """A checkpoint's "cnn" net entry, every size checked against the caps before anything is
    allocated by it; a one-line CheckpointError otherwise. Returns ConvQNetwork's arguments."""
    def whole(v: object, lo: int, hi: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    bad = CheckpointError(f"{path} declares a cnn network without valid sizes (obs_shape of 3 "
                          f"sides <= {MAX_SIDE}, 1 to {MAX_CONVS} convolutions [out <= "
                          f"{MAX_CHANNELS}, kernel, stride], up to {MAX_HIDDEN_LAYERS} fc sizes, "
                          "n_actions, dueling and channels_last flags); it is damaged or from "
                          "another program")
    if not isinstance(spec, dict):
        raise bad
    shape, convs, fc = spec.get("obs_shape"), spec.get("convs"), spec.get("fc")
    if not (isinstance(shape, list) and len(shape) == 3 and all(whole(s, 1, MAX_SIDE) for s in shape)
            and isinstance(convs, list) and 1 <= len(convs) <= MAX_CONVS
            and all(isinstance(layer, list) and len(layer) == 3
                    and whole(layer[0], 1, MAX_CHANNELS) and whole(layer[1], 1, MAX_SIDE)
                    and whole(layer[2], 1, MAX_SIDE) for layer in convs)
            and isinstance(fc, list) and len(fc) <= MAX_HIDDEN_LAYERS
            and all(whole(f, 1, MAX_NETWORK_PARAMS) for f in fc)
            and whole(spec.get("n_actions"), 1, MAX_ACTIONS)
            and isinstance(spec.get("dueling"), bool) and isinstance(spec.get("channels_last"), bool)):
        raise bad
    args = {"obs_shape": shape, "n_actions": spec["n_actions"], "convs": convs, "fc": fc,
            "dueling": spec["dueling"], "channels_last": spec["channels_last"],
            "head": head_from_spec(path, spec)}
    params, biggest, side = count_params(**args)
    if side < 1:
        raise CheckpointError(f"{path}: its cnn's convolutions do not fit its {shape} "
                              "observations; the file is damaged")
    if params > MAX_NETWORK_PARAMS or biggest > MAX_ACTIVATIONS:
        raise CheckpointError(f"checkpoint {path} declares a cnn of {params:,d} parameters and "
                              f"{biggest:,d} feature-map values per observation, over the limits "
                              f"of {MAX_NETWORK_PARAMS:,d} and {MAX_ACTIVATIONS:,d}; refusing it")
    return args


def check_state(path: str | Path, state: object, module: torch.nn.Module, where: str) -> None:
    """A CNN's tensors in a checkpoint, exactly `module`'s (checkpoint.check_module_state)."""
    check_module_state(path, state, module, where, "cnn")


def module_from_checkpoint(path: str | Path, ckpt: dict) -> ConvQNetwork:
    """The trained CNN of a checkpoint (its online copy), validated field by field."""
    return load_online(path, ckpt, ConvQNetwork(**check_spec(path, ckpt.get("net"))), check_state)


def check_obs(shape: tuple[int, ...], env_id: str, channels_last_hint: bool = False) -> None:
    """--network cnn's observations: an image that one of the architectures takes, or a
    one-line ConfigError (before the run dir exists)."""
    if len(shape) != 3:
        raise ConfigError(f"--network cnn needs image observations (a Box of rank 3, e.g. "
                          f"[4, 84, 84] or [10, 10, 4]); {env_id} has shape {list(shape)}: "
                          "use --network mlp")
    architecture(shape, channels_last_of(shape, channels_last_hint))


def check_resume(path: str | Path, saved: dict, want: dict, env_id: str) -> None:
    """A resumed checkpoint's CNN (`saved`) must be exactly the one this run builds (`want`,
    its spec): the dueling flag named, anything else refused as damaged or another env's."""
    check_dueling(path, saved, want)
    check_spec(path, saved)  # its types too: 16.0 == 16 would pass the comparison
    if saved != want:
        raise CheckpointError(f"{path} holds another cnn than this run builds for "
                              f"{env_id}; it is damaged or from another env")
