"""The registry of network kinds: every kind round-trips through a saved checkpoint (build, spec,
weights, file, rebuild: the same Q-values or logits), builds what its algorithm builds, and the
registry covers every network the settings can name."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from fastdqn.algos.dqn.agent import DQN
from fastdqn.algos.pqn import PQN
from fastdqn.algos.reinforce import Reinforce
from fastdqn.config.choices import ALGOS, CHOICES, NETWORK_KINDS
from fastdqn.config.settings import Config
from fastdqn.core.checkpoint import load_checkpoint, save_checkpoint
from fastdqn.errors import CheckpointError
from fastdqn.nets.kinds import FLAT, KINDS, REFERENCE, checkpoint_kind, known_kind, resolve_network
from fastdqn.nets.mlp import preprocess

VECTOR = gym.spaces.Box(-2.0, 2.0, (6,), np.float32)
IMAGE = gym.spaces.Box(0, 255, (10, 10, 4), np.uint8)  # MinAtar's layout: channels last
N_ACTIONS = 3
CFG = Config(hidden=(16, 8), policy_hidden=(12,), dueling=True, rbf_features=40,
             rbf_scales=(1.0, 0.25), reinforce_baseline="value", seed=7)
HEADED = dataclasses.replace(CFG, distributional="c51", atoms=5, v_min=-3.0, v_max=3.0, noisy=True)
"""The MLP with a head the flat layout has not: the "mlp_module" kind."""
BUILT = [name for name, kind in KINDS.items() if kind.build is not None]


def cfg_of(name: str) -> Config:
    return HEADED if name == "mlp_module" else CFG


def space_of(name: str) -> gym.spaces.Box:
    return IMAGE if name == "cnn" else VECTOR


def observations(space: gym.spaces.Box, n: int = 5) -> torch.Tensor:
    space.seed(0)
    return preprocess(torch.as_tensor(np.stack([space.sample() for _ in range(n)])))


def scores(model, x: torch.Tensor) -> torch.Tensor:
    """What the model gives for x; a module in eval mode (noisy layers play their means)."""
    with torch.no_grad():
        return model.eval()(x) if isinstance(model, torch.nn.Module) else model(x)


def trained(model) -> None:
    """Move every weight off its init (the RBF head starts at zero, LayerNorm biases too) and
    give the RBF model a scaler: the round trip must carry all of it."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if hasattr(model, "set_scaler"):
            model.set_scaler(np.full(model.in_dim, 0.5), np.full(model.in_dim, 2.0))
        tensors = [model.params] if not isinstance(model, torch.nn.Module) else list(model.parameters())
        for t in tensors:
            t.add_(torch.randn(t.shape, generator=gen) * 0.1)


@pytest.mark.parametrize("name", BUILT)
def test_every_kind_round_trips_through_a_saved_checkpoint(tmp_path, name):
    kind = KINDS[name]
    model = kind.build(cfg_of(name), space_of(name), N_ACTIONS, True)
    trained(model)
    spec = kind.spec(model)
    assert spec["kind"] == name
    path = tmp_path / "ckpt.pt"
    weights = {k: ({n: t.clone() for n, t in v.items()} if isinstance(v, dict) else v.clone())
               for k, v in kind.weights(model).items()}
    save_checkpoint(path, {"net": spec, "learner": weights})
    ckpt = load_checkpoint(path)
    assert checkpoint_kind(path, ckpt["net"]) is kind
    rebuilt = kind.load(path, ckpt)
    assert kind.spec(rebuilt) == spec
    x = observations(space_of(name))
    assert torch.equal(scores(model, x), scores(rebuilt, x))


@pytest.mark.parametrize("name", BUILT)
def test_a_rebuilt_kind_refuses_weights_of_another_shape(tmp_path, name):
    kind = KINDS[name]
    model = kind.build(cfg_of(name), space_of(name), N_ACTIONS, True)
    other = kind.build(cfg_of(name), space_of(name), N_ACTIONS + 1, True)
    ckpt = {"net": kind.spec(model), "learner": kind.weights(other)}
    with pytest.raises(CheckpointError, match="damaged"):
        kind.load(tmp_path / "ckpt.pt", ckpt)


def test_each_algorithm_builds_what_its_kind_builds():
    """The same settings and seed give the same network, built by the registry or the agent."""
    x = observations(VECTOR)
    pqn = PQN(Config(algo="pqn", hidden=(16, 8), seed=7), VECTOR, gym.spaces.Discrete(3), torch.device("cpu"))
    assert torch.equal(scores(pqn.net, x), scores(KINDS["layernorm_mlp"].build(CFG, VECTOR, 3, False), x))
    assert pqn.net_spec() == KINDS["layernorm_mlp"].spec(pqn.net)
    cfg = Config(algo="reinforce", policy_hidden=(12,), reinforce_baseline="value", seed=7)
    agent = Reinforce(cfg, VECTOR, gym.spaces.Discrete(3), torch.device("cpu"))
    assert torch.equal(scores(agent.net, x), scores(KINDS["policy"].build(CFG, VECTOR, 3, False), x))
    dqn = DQN(Config(hidden=(16, 8), dueling=True, seed=7, learner="reference", buffer_size=64),
              VECTOR, gym.spaces.Discrete(3), torch.device("cpu"))
    built = KINDS["mlp"].build(CFG, VECTOR, 3, False)
    assert dqn.net_spec() == KINDS["mlp"].spec(built)
    assert torch.equal(dqn.policy().q_values(x.numpy()), scores(built, x))


def test_a_network_of_your_own_is_specced_by_class_and_never_rebuilt(tmp_path):
    kind = KINDS["custom"]
    module = torch.nn.Linear(6, 3)
    spec = kind.spec(module)
    assert spec == {"kind": "custom", "class": "Linear"}
    with pytest.raises(CheckpointError, match=r"holds a network of your own \(Linear\)"):
        kind.load(tmp_path / "ckpt.pt", {"net": spec, "learner": {}})


@pytest.mark.parametrize("spec", [{"kind": "transformer"}, {"kind": ["mlp"]}, {"kind": None}])
def test_a_kind_fastdqn_does_not_know_is_refused_in_one_line(spec):
    assert known_kind(spec) is None
    with pytest.raises(CheckpointError, match="holds a network fastdqn does not know"):
        checkpoint_kind("ckpt.pt", spec)


def test_a_net_entry_without_a_kind_is_an_mlp_as_fastdqn_wrote_them_first():
    assert known_kind({"in_dim": 4, "n_actions": 2, "hidden": [8]}) is KINDS["mlp"]
    assert known_kind("not a dict") is KINDS["mlp"]  # its own checks refuse it


def test_the_registry_covers_every_network_the_settings_name():
    dqn_kinds = {name for name, kind in KINDS.items() if kind.algo == "dqn"}
    assert dqn_kinds == set(NETWORK_KINDS)
    assert set(CHOICES["network"]) - {"auto"} <= dqn_kinds
    assert {kind.algo for kind in KINDS.values()} == set(ALGOS)
    assert all(kind.name == name for name, kind in KINDS.items())


def test_dqn_kinds_name_the_routes_that_train_them():
    for kind in KINDS.values():
        assert set(kind.routes) <= {FLAT, REFERENCE}
        assert bool(kind.routes) == (kind.algo == "dqn")
    assert [name for name, kind in KINDS.items() if FLAT in kind.routes] == ["mlp", "rbf"]
    assert [name for name, kind in KINDS.items() if kind.flat_net] == ["mlp"]


def test_auto_resolves_by_the_observations_and_a_module_of_your_own_is_custom():
    assert resolve_network("auto", IMAGE) == "cnn"
    assert resolve_network("auto", VECTOR) == "mlp"
    assert resolve_network("rbf", VECTOR) == "rbf"
    assert resolve_network("auto", IMAGE, custom=True) == "custom"
