"""The network kinds, one entry each: every "kind" a checkpoint's "net" entry can name, and what
the rest of fastdqn needs to know of it (how a run builds one, its checkpoint spec, how a
checkpoint rebuilds and checks one, which learner routes train it, what it takes of the env).

A new network kind is its module in nets/ and one entry in `KINDS`; the agents, the checkpoint
checks, `load_policy` and the env checks look the kind up here instead of switching on names.
The `network` setting's choices (config.choices.NETWORK_KINDS) are DQN's kinds (a test keeps
them covered), PQN's and REINFORCE's networks are kinds of their own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from fastdqn.config.settings import Config
from fastdqn.core.checkpoint import check_module_state
from fastdqn.core.seeds import Purpose, generator_seed, torch_generator
from fastdqn.errors import CheckpointError
from fastdqn.nets import cnn, layernorm, mlp, policy, rbf
from fastdqn.nets.heads import HeadSpec, head_of

FLAT, REFERENCE = "flat", "reference"
"""DQN's learner routes: the fused flat learner (fastdqn's MLP) and the reference one (any
nn.Module, autograd)."""

DEFAULT_KIND = "mlp"
"""The kind of a "net" entry that names none: fastdqn wrote MLP checkpoints before kinds."""

PathLike = str | os.PathLike


def _any_obs(shape: tuple[int, ...], env_id: str, channels_last_hint: bool = False) -> None:
    """Any observation shape: the network flattens it."""


@dataclass(frozen=True)
class NetworkKind:
    """What fastdqn knows of one network kind. A "model" below is what `build` and `load` give:
    a torch module, or for the flat MLP its layout with its parameters (`mlp.FlatQ`)."""

    name: str
    algo: str
    """The algorithm that trains it."""
    routes: tuple[str, ...]
    """The DQN learner routes that can train it (none: another algorithm's network)."""
    build: Callable[[Config, gym.Space, int, bool], Any] | None
    """A new model for these settings, observation space, action count and channel-layout
    hint (the env family's), initialized from the run seed's INIT stream as its algorithm
    initializes it; None for a network of your own."""
    spec: Callable[[Any], dict]
    """The checkpoint's "net" entry of a model (for "mlp", the layout `mlp.MLP` will do)."""
    weights: Callable[[Any], dict] | None
    """The learner entries of a checkpoint that hold a model's trained weights."""
    load: Callable[[PathLike, dict], Any]
    """The trained model of a checkpoint, every size checked before it is allocated and every
    tensor before it is copied; KeyError or TypeError where a field is missing (the caller
    reports the file as damaged)."""
    check_resume: Callable[[PathLike, dict, dict, str], None] | None = None
    """(path, saved spec, this run's spec, env id): a resumed DQN checkpoint's network against
    the one the run builds, naming the flags that would match it."""
    check_state: Callable[[PathLike, object, torch.nn.Module, str], None] = check_module_state
    """(path, state, module, where): a module's tensors in a checkpoint, exactly `module`'s."""
    check_obs: Callable[[tuple[int, ...], str, bool], None] = _any_obs
    """(shape, env id, channel-layout hint): the observations it takes, or a ConfigError."""
    flat_net: bool = False
    """The network is fastdqn's flat MLP (a layout and one parameter vector) on every route;
    its checkpoint holds `learner.params` and its greedy policy runs the flat forward pass."""
    replays_observations: bool = True
    """Its replay rows are sized by the observations (so the frame replay may store them); the
    RBF network's flat route stores its features instead."""
    sized_by_hidden: bool = False
    """--hidden sizes its layers: a resumed file's are checked against it before anything else."""
    flat: Callable[[Any], tuple[mlp.MLP, torch.Tensor, torch.nn.Module | None]] | None = None
    """What the flat learner trains of a model (FLAT in `routes`): the flat MLP, its initial
    parameters, and the fixed encoder (or None) that turns each observation into its input
    rows as it arrives."""
    reference_why: str = ""
    """Why it trains on the reference route, for summary.json's route (default: its name)."""


def head_of_config(cfg: Config) -> HeadSpec:
    """The value head a DQN run's settings name (C51's support as resolved into `cfg` by the
    agent, which picks the automatic one)."""
    support = None if cfg.v_min is None or cfg.v_max is None else (cfg.v_min, cfg.v_max)
    return head_of(cfg.distributional, cfg.atoms, support, cfg.noisy)


def _build_mlp(cfg: Config, obs_space: gym.Space, n_actions: int, hint: bool = False) -> mlp.FlatQ:
    net = mlp.MLP(int(np.prod(obs_space.shape)), n_actions, tuple(cfg.hidden), cfg.dueling)
    return mlp.FlatQ(net, net.init(torch_generator(cfg.seed, Purpose.INIT)))


def _build_mlp_module(cfg: Config, obs_space: gym.Space, n_actions: int, hint: bool = False
                      ) -> mlp.QNetwork:
    """The MLP with a distributional or noisy head, torch's default init from the INIT seed
    (inside a fork that restores the global CPU generator, as the CNN's)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(generator_seed(cfg.seed, Purpose.INIT))
        return mlp.QNetwork(int(np.prod(obs_space.shape)), n_actions, tuple(cfg.hidden),
                            cfg.dueling, head_of_config(cfg))


def _build_cnn(cfg: Config, obs_space: gym.Space, n_actions: int, hint: bool = False
               ) -> cnn.ConvQNetwork:
    return cnn.cnn_for(obs_space, n_actions, cfg.dueling, generator_seed(cfg.seed, Purpose.INIT),
                       hint, head_of_config(cfg))


def _build_rbf(cfg: Config, obs_space: gym.Space, n_actions: int, hint: bool = False
               ) -> rbf.RBFQNetwork:
    """Features drawn from the run seed; the scaler is the identity until the agent fits it."""
    return rbf.RBFQNetwork(int(np.prod(obs_space.shape)), n_actions, cfg.rbf_features,
                           cfg.rbf_scales, torch_generator(cfg.seed, Purpose.INIT))


def _build_layernorm(cfg: Config, obs_space: gym.Space, n_actions: int, hint: bool = False
                     ) -> layernorm.LayerNormQNetwork:
    return layernorm.LayerNormQNetwork(int(np.prod(obs_space.shape)), n_actions, tuple(cfg.hidden),
                                       torch_generator(cfg.seed, Purpose.INIT))


def _build_policy(cfg: Config, obs_space: gym.Space, n_actions: int, hint: bool = False
                  ) -> policy.PolicyNetwork:
    net = policy.PolicyNetwork(int(np.prod(obs_space.shape)), n_actions, tuple(cfg.policy_hidden),
                               cfg.reinforce_baseline == "value")
    return net.init(torch_generator(cfg.seed, Purpose.INIT))


def _custom_spec(module: torch.nn.Module) -> dict:
    return {"kind": "custom", "class": type(module).__qualname__}


def _refuse_custom(path: PathLike, ckpt: dict) -> None:
    """A module of your own is yours to rebuild: its class is not in the file."""
    spec = ckpt.get("net")
    name = spec.get("class") if isinstance(spec, dict) and isinstance(spec.get("class"), str) else "?"
    raise CheckpointError(
        f"{path} holds a network of your own ({name[:80]}); fastdqn cannot rebuild it from a "
        "file: load it in Python with module.load_state_dict(ckpt['learner']['online'])")


def _spec_of(model: Any) -> dict:
    return model.spec()


def _online(model: torch.nn.Module) -> dict:
    return {"online": model.state_dict()}


def _params(model: mlp.FlatQ) -> dict:
    return {"params": model.params}


def _weights(model: torch.nn.Module) -> dict:
    return {"weights": model.state_dict()}


def _flat_mlp(model: mlp.FlatQ) -> tuple[mlp.MLP, torch.Tensor, None]:
    return model.net, model.params, None


def _same_class(path: PathLike, saved: dict, want: dict, env_id: str) -> None:
    """A module of your own: only its kind is compared (its tensors are, by the learner)."""


KINDS: dict[str, NetworkKind] = {k.name: k for k in (
    NetworkKind("mlp", "dqn", (FLAT, REFERENCE), _build_mlp, _spec_of,
                _params, mlp.flat_from_checkpoint,
                check_resume=mlp.check_resume, flat_net=True, sized_by_hidden=True,
                flat=_flat_mlp),
    NetworkKind("mlp_module", "dqn", (REFERENCE,), _build_mlp_module, _spec_of, _online,
                mlp.module_from_checkpoint, check_resume=mlp.check_resume, sized_by_hidden=True,
                reference_why="a distributional or noisy head trains on the reference route (the "
                "flat MLP's fused step has neither)"),
    NetworkKind("cnn", "dqn", (REFERENCE,), _build_cnn, _spec_of, _online,
                cnn.module_from_checkpoint, check_resume=cnn.check_resume,
                check_state=cnn.check_state, check_obs=cnn.check_obs),
    NetworkKind("rbf", "dqn", (FLAT, REFERENCE), _build_rbf, _spec_of, _online,
                rbf.module_from_checkpoint, check_resume=rbf.check_resume,
                check_state=rbf.check_state, replays_observations=False, flat=rbf.linear_head),
    NetworkKind("custom", "dqn", (REFERENCE,), None, _custom_spec, None, _refuse_custom,
                check_resume=_same_class),
    NetworkKind("layernorm_mlp", "pqn", (), _build_layernorm, _spec_of, _online,
                layernorm.module_from_checkpoint, sized_by_hidden=True),
    NetworkKind("policy", "reinforce", (), _build_policy, _spec_of,
                _weights, policy.module_from_checkpoint),
)}


def kind_of(spec: object) -> object:
    """The kind a checkpoint's "net" entry names, as written (DEFAULT_KIND where it names none,
    or is no dict: its own checks then refuse it)."""
    return spec.get("kind", DEFAULT_KIND) if isinstance(spec, dict) else DEFAULT_KIND


def known_kind(spec: object) -> NetworkKind | None:
    """The registry entry of the kind a "net" entry names, or None for a name fastdqn does not
    know (any value a file holds: a list is no kind, not a TypeError)."""
    name = kind_of(spec)
    return KINDS.get(name) if isinstance(name, str) else None


def checkpoint_kind(path: PathLike, spec: object) -> NetworkKind:
    """The registry entry of a checkpoint's network, or a one-line CheckpointError."""
    kind = known_kind(spec)
    if kind is None:
        raise CheckpointError(f"{path} holds a network fastdqn does not know; it is damaged or "
                              "from a newer fastdqn")
    return kind


def resolve_network(network: str, obs_space: gym.Space, custom: bool = False,
                    plain_head: bool = True) -> str:
    """The kind a DQN run trains: "custom" for a module of your own, else --network with auto
    resolved (cnn for an image space, mlp otherwise); an MLP with a distributional or noisy
    head (`plain_head` False) is the "mlp_module" kind, which the flat layout cannot hold."""
    if custom:
        return "custom"
    kind = network if network != "auto" else "cnn" if cnn.is_image_space(obs_space) else "mlp"
    return "mlp_module" if kind == "mlp" and not plain_head else kind
