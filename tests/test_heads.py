"""Value heads and noisy layers (nets/heads.py, nets/noisy.py): NoisyLinear's factorized noise
against the paper's formula (one sample per training pass, one per row when acting, new at
every call, the mean weights in eval mode), dueling over atoms and each head's Q by hand, the
plain head left as it was, a checkpoint's head entry refused or named in one line, the agent's
independent noise streams and their exact resume, and each head kind through a real run's
checkpoint, `fastdqn eval` and --resume.

(The C51 projection and the quantile Huber loss are test_distributional.py's; the learner's
losses are test_losses.py's.)
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scripted_envs import EPISODE_LENGTH
from scripted_envs import env_id as scripted_env_id

from fastdqn import make_config, train
from fastdqn.algos.dqn.agent import DQN
from fastdqn.cli import build_parser, main
from fastdqn.config.choices import CHOICES
from fastdqn.config.limits import MAX_ATOMS
from fastdqn.core.checkpoint import load_checkpoint, save_checkpoint
from fastdqn.core.seeds import Purpose, torch_generator
from fastdqn.errors import CheckpointError
from fastdqn.evaluation.episodes import run_episodes
from fastdqn.evaluation.policies import load_policy
from fastdqn.learners.losses import LOSSES
from fastdqn.nets.cnn import ConvQNetwork, cnn_for, count_params
from fastdqn.nets.heads import HEADS, HeadSpec, ValueOutputs, check_head, head_from_spec, head_of
from fastdqn.nets.mlp import MLP, QNetwork, module_params, preprocess
from fastdqn.nets.noisy import (
    SIGMA0,
    NoisyLinear,
    noise_generator,
    noisy_layers,
    per_row_noise,
    seed_noise,
)
from fastdqn.replay.rows import Batch

needs_minatar = pytest.mark.skipif(importlib.util.find_spec("minatar") is None,
                                   reason="the minatar extra is not installed")

MINATAR_SPACE = gym.spaces.Box(0.0, 1.0, (10, 10, 4), bool)
CARTPOLE_SPACES = (gym.spaces.Box(-1.0, 1.0, (4,), np.float32), gym.spaces.Discrete(2))


def f(x: torch.Tensor) -> torch.Tensor:
    """The paper's transform of factorized noise, sign(x) sqrt(|x|)."""
    return x.sign() * x.abs().sqrt()


def clone(g: torch.Generator) -> torch.Generator:
    """A generator at `g`'s state: replays the draws `g` is about to make."""
    c = torch.Generator(g.device)
    c.set_state(g.get_state())
    return c


def noisy_layer(n_in: int = 6, n_out: int = 4, seed: int = 0) -> NoisyLinear:
    """A NoisyLinear initialized from `seed`, drawing its noise from a generator seeded 100 + seed
    (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = NoisyLinear(n_in, n_out)
    seed_noise(layer, torch.Generator().manual_seed(100 + seed))
    return layer


# ---------------------------------------------------------------------------------------------
# NoisyLinear
# ---------------------------------------------------------------------------------------------


def test_noisy_linear_has_a_mean_and_a_sigma_for_each_weight_and_the_factorized_init():
    layer = noisy_layer(6, 4)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {"weight": (4, 6), "bias": (4,), "weight_sigma": (4, 6), "bias_sigma": (4,)}
    bound = 1 / math.sqrt(6)
    assert bool((layer.weight.abs() <= bound).all()) and bool((layer.bias.abs() <= bound).all())
    assert layer.weight.std() > 0.1 * bound  # drawn, not a constant
    assert SIGMA0 == 0.5
    assert torch.equal(layer.weight_sigma, torch.full((4, 6), 0.5 / math.sqrt(6)))
    assert torch.equal(layer.bias_sigma, torch.full((4,), 0.5 / math.sqrt(6)))


def test_a_training_pass_draws_one_factorized_sample_for_its_rows():
    """The learner's passes: one sample per pass, the paper's noisy weights themselves."""
    layer = noisy_layer(6, 4)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    replay = clone(layer.generator)
    y = layer(x)
    eps_in = f(torch.randn(1, 6, generator=replay))[0]
    eps_out = f(torch.randn(1, 4, generator=replay))[0]
    assert torch.equal(torch.randn(4, generator=replay), torch.randn(4, generator=layer.generator))
    with torch.no_grad():
        # W = mu_W + sigma_W * (f(eps_out) f(eps_in)^T), b = mu_b + sigma_b * f(eps_out)
        weight = layer.weight + layer.weight_sigma * torch.outer(eps_out, eps_in)
        torch.testing.assert_close(y, x @ weight.T + layer.bias + layer.bias_sigma * eps_out)


def test_acting_draws_a_factorized_sample_per_row():
    layer = noisy_layer(6, 4)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    replay = clone(layer.generator)
    with per_row_noise(layer):
        y = layer(x)
    assert not layer.per_row  # put back: the learner's passes draw one sample each
    eps_in = f(torch.randn(3, 6, generator=replay))
    eps_out = f(torch.randn(3, 4, generator=replay))
    assert torch.equal(torch.randn(4, generator=replay), torch.randn(4, generator=layer.generator))
    with torch.no_grad():
        # the paper's definition, row by row: row b plays its own noisy weights
        rows = [(layer.weight + layer.weight_sigma * torch.outer(eps_out[b], eps_in[b])) @ x[b]
                + layer.bias + layer.bias_sigma * eps_out[b] for b in range(3)]
        torch.testing.assert_close(y, torch.stack(rows))
        # and its factorized form: mean + ((x * f(eps_in)) sigma_W^T + sigma_b) * f(eps_out)
        factorized = (F.linear(x, layer.weight, layer.bias)
                      + ((x * eps_in) @ layer.weight_sigma.T + layer.bias_sigma) * eps_out)
        torch.testing.assert_close(y, factorized)


def test_each_call_resamples_and_acting_rows_explore_apart():
    layer = noisy_layer()
    x = torch.ones(2, 6)  # two identical rows
    with torch.no_grad():
        first, second = layer(x), layer(x)
        torch.testing.assert_close(first[0], first[1])  # one sample for the pass
        assert not torch.allclose(first, second)  # resampled on every call
        with per_row_noise(layer):
            acting, again = layer(x), layer(x)
        assert not torch.allclose(acting[0], acting[1])  # each row its own sample
        assert not torch.allclose(acting, again)
        mean = layer.eval()(x)
    torch.testing.assert_close(mean[0], mean[1])


def test_eval_mode_plays_the_mean_weights_and_draws_nothing():
    layer = noisy_layer().eval()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    before = clone(layer.generator)
    with torch.no_grad():
        y = layer(x)
        assert torch.equal(y, F.linear(x, layer.weight, layer.bias))
        assert torch.equal(layer(x), y)
        with per_row_noise(layer):
            assert torch.equal(layer(x), y)
    assert torch.equal(torch.randn(4, generator=before), torch.randn(4, generator=layer.generator))
    layer.train()
    with torch.no_grad():
        assert not torch.allclose(layer(x), y)


def test_seed_noise_reproduces_a_run():
    a = noisy_layer()
    b = copy.deepcopy(a)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    seed_noise(a, torch.Generator().manual_seed(5))
    seed_noise(b, torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        with per_row_noise(a), per_row_noise(b):
            assert torch.equal(a(x), b(x))
        seed_noise(b, torch.Generator().manual_seed(6))
        assert not torch.allclose(a(x), b(x))


@pytest.mark.parametrize("per_row", [False, True])
def test_gradients_reach_the_means_and_the_sigmas(per_row):
    layer = noisy_layer()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    replay = clone(layer.generator)
    if per_row:
        with per_row_noise(layer):
            layer(x).sum().backward()
    else:
        layer(x).sum().backward()
    rows = 4 if per_row else 1
    eps_in = f(torch.randn(rows, 6, generator=replay)).expand(4, 6)
    eps_out = f(torch.randn(rows, 4, generator=replay)).expand(4, 4)
    # d sum(y) / d theta by hand: mu_W gets sum_b x_b, sigma_W sum_b f(eps_out_b) (x_b f(eps_in_b))^T
    torch.testing.assert_close(layer.weight.grad, x.sum(0).expand(4, 6))
    torch.testing.assert_close(layer.bias.grad, torch.full((4,), 4.0))
    torch.testing.assert_close(layer.weight_sigma.grad, eps_out.T @ (x * eps_in))
    torch.testing.assert_close(layer.bias_sigma.grad, eps_out.sum(0))
    assert layer.weight_sigma.grad.abs().sum() > 0


def test_noisy_layers_are_the_last_two_linear_layers_and_share_one_stream():
    net = QNetwork(4, 3, (8, 8), head=HeadSpec(noisy=True))
    assert [type(m).__name__ for m in net.linears()] == ["Linear", "NoisyLinear", "NoisyLinear"]
    g = torch.Generator().manual_seed(0)
    seed_noise(net, g)
    assert all(layer.generator is g for layer in noisy_layers(net)) and noise_generator(net) is g
    assert noise_generator(QNetwork(4, 3, (8,))) is None
    assert module_params(4, 3, (8, 8), False, HeadSpec(noisy=True)) == sum(
        p.numel() for p in net.parameters())
    cnn = cnn_for(MINATAR_SPACE, 3, True, seed=0, channels_last_hint=True,
                  head=HeadSpec("c51", 5, -1.0, 1.0, noisy=True))
    assert [type(m).__name__ for m in cnn.modules()
            if isinstance(m, (torch.nn.Linear, NoisyLinear, torch.nn.Conv2d))] == [
        "Conv2d", "NoisyLinear", "NoisyLinear"]
    assert cnn.head.out_features == (3 + 1) * 5
    assert count_params((10, 10, 4), 3, cnn.convs_spec, cnn.fc_spec, True, True,
                        HeadSpec("c51", 5, -1.0, 1.0, noisy=True))[0] == sum(
        p.numel() for p in cnn.parameters())


def test_noisy_nets_turn_epsilon_off_unless_it_is_set():
    cfg = make_config(noisy=True)
    assert (cfg.eps_start, cfg.eps_end) == (0.0, 0.0)
    cfg = make_config(noisy=True, eps_start=0.3)
    assert (cfg.eps_start, cfg.eps_end) == (0.3, 0.0)
    assert make_config().eps_start > 0


# ---------------------------------------------------------------------------------------------
# Heads: dueling over atoms, each kind's Q, the plain head unchanged
# ---------------------------------------------------------------------------------------------

C51 = HeadSpec("c51", 3, -1.0, 1.0)
QR = HeadSpec("qr", 3)
OUT = torch.tensor([[1.0, 2.0, 3.0, 0.0, 2.0, 4.0, 2.0, 0.0, -2.0]])
"""A last layer's outputs for 2 actions and 3 atoms: [V | A_0 | A_1] with dueling (mean_a A =
[1, 1, 1], so dist = [[0, 3, 6], [2, 1, 0]]), or the three actions' atoms without."""


def c51_q(logits: list[float]) -> float:
    """sum_j softmax(logits)_j z_j on the support [-1, 0, 1], written out."""
    e = [math.exp(v) for v in logits]
    return (e[2] - e[0]) / sum(e)


def test_dueling_works_over_atoms():
    dueling = ValueOutputs(C51, 2, dueling=True)
    assert dueling.n_out == 9
    assert dueling.dist(OUT).tolist() == [[[0.0, 3.0, 6.0], [2.0, 1.0, 0.0]]]
    plain = ValueOutputs(C51, 3, dueling=False)
    assert plain.dist(OUT).tolist() == [[[1.0, 2.0, 3.0], [0.0, 2.0, 4.0], [2.0, 0.0, -2.0]]]


def test_q_is_the_mean_of_each_actions_distribution():
    want = [c51_q([0.0, 3.0, 6.0]), c51_q([2.0, 1.0, 0.0])]
    torch.testing.assert_close(ValueOutputs(C51, 2, True)(OUT), torch.tensor([want]))
    assert ValueOutputs(QR, 2, True)(OUT).tolist() == [[3.0, 1.0]]
    assert ValueOutputs(QR, 3, False)(OUT).tolist() == [[2.0, 2.0, 0.0]]
    # a noisy-only head: one atom, dueling as the plain head's V + A - mean(A)
    scalar = ValueOutputs(HeadSpec(noisy=True), 2, True)
    assert scalar(torch.tensor([[1.0, 0.0, 2.0]])).tolist() == [[0.0, 2.0]]


def test_a_headed_network_reads_its_outputs_through_the_head():
    net = QNetwork(2, 2, (), dueling=True, head=C51)
    with torch.no_grad():
        net.body[0].weight.zero_()
        net.body[0].bias.copy_(OUT[0])
    x = torch.zeros(1, 2)
    assert net.dist(x).tolist() == [[[0.0, 3.0, 6.0], [2.0, 1.0, 0.0]]]
    torch.testing.assert_close(net(x), ValueOutputs(C51, 2, True)(OUT))
    assert torch.equal(net.value.support, torch.tensor([-1.0, 0.0, 1.0]))
    assert "support" not in net.state_dict()  # the spec holds it
    cnn = cnn_for(MINATAR_SPACE, 3, False, seed=0, channels_last_hint=True, head=QR)
    grids = torch.rand(2, 400, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert cnn.dist(grids).shape == (2, 3, 3)
        torch.testing.assert_close(cnn(grids), cnn.dist(grids).mean(2))


@pytest.mark.parametrize("dueling", [False, True])
def test_the_plain_heads_mlp_is_the_network_fastdqn_had(dueling):
    net = MLP(4, 3, (8, 8), dueling)
    flat = net.init(torch.Generator().manual_seed(0))
    exported = net.to_module(flat)
    plain = QNetwork(4, 3, (8, 8), dueling, head=HeadSpec())
    keys = ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "body.4.weight",
            "body.4.bias"]
    assert list(plain.state_dict()) == list(exported.state_dict()) == keys
    assert not plain.value.state_dict() and plain.body[4].out_features == 3 + dueling
    plain.load_state_dict(exported.state_dict())
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net.forward(net.views(flat), x))
        assert torch.equal(plain.dist(x), plain(x).unsqueeze(2))
    assert HeadSpec().plain and HeadSpec().spec_entry() == {}


@pytest.mark.parametrize("dueling", [False, True])
def test_the_plain_heads_cnn_is_the_network_fastdqn_had(dueling):
    plain = cnn_for(MINATAR_SPACE, 3, dueling, seed=0, channels_last_hint=True,
                    head=HeadSpec())
    before = cnn_for(MINATAR_SPACE, 3, dueling, seed=0, channels_last_hint=True)
    state = plain.state_dict()
    assert list(state) == ["conv.0.weight", "conv.0.bias", "fc.0.weight", "fc.0.bias",
                           "head.weight", "head.bias"]
    assert all(torch.equal(v, before.state_dict()[k]) for k, v in state.items())
    assert state["head.weight"].shape == (3 + dueling, 128)
    assert "head" not in plain.spec() and plain.describe() == "cnn 16x3/1, fc 128"
    # a head changes only the last layer: the body's init is the plain one's
    headed = cnn_for(MINATAR_SPACE, 3, dueling, seed=0, channels_last_hint=True, head=C51)
    assert all(torch.equal(v, headed.state_dict()[k]) for k, v in state.items()
               if not k.startswith("head."))
    grids = torch.rand(3, 400, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = plain.head(plain.features(grids))
        want = out[:, 1:] - out[:, 1:].mean(1, keepdim=True) + out[:, :1] if dueling else out
        assert torch.equal(plain(grids), want)


# ---------------------------------------------------------------------------------------------
# The head a checkpoint declares
# ---------------------------------------------------------------------------------------------

QR_OK = {"distributional": "qr", "atoms": 8, "noisy": False}
C51_OK = {"distributional": "c51", "atoms": 11, "noisy": True, "v_min": -5.0, "v_max": 5.0}
BAD_HEADS = {
    "not a dict": "c51",
    "unknown kind": {**QR_OK, "distributional": "iqn"},
    "kind not a string": {**QR_OK, "distributional": 1},
    "no atoms": {**QR_OK, "atoms": 0},
    "one atom": {**QR_OK, "atoms": 1},
    "atoms over the cap": {**QR_OK, "atoms": MAX_ATOMS + 1},
    "huge atoms": {**QR_OK, "atoms": 10**12},
    "bool atoms": {**QR_OK, "atoms": True},
    "float atoms": {**QR_OK, "atoms": 8.0},
    "none with atoms": {"distributional": "none", "atoms": 2, "noisy": True},
    "c51 without support": {k: v for k, v in C51_OK.items() if k != "v_max"},
    "nan support": {**C51_OK, "v_max": float("nan")},
    "infinite support": {**C51_OK, "v_min": float("-inf")},
    "empty support": {**C51_OK, "v_min": 5.0},
    "descending support": {**C51_OK, "v_min": 6.0},
    "bool support": {**C51_OK, "v_min": False},
    "string support": {**C51_OK, "v_min": "-5"},
    "noisy not a bool": {**QR_OK, "noisy": 1},
    "noisy a string": {**QR_OK, "noisy": "yes"},
    "noisy missing": {"distributional": "qr", "atoms": 8},
}


@pytest.mark.parametrize("head", list(BAD_HEADS.values()), ids=list(BAD_HEADS))
def test_a_damaged_head_entry_is_refused_in_one_line(head):
    with pytest.raises(CheckpointError) as e:
        head_from_spec("x.pt", {"kind": "mlp_module", "head": head})
    assert str(e.value).startswith("x.pt declares a value head without a valid kind")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("head", [HeadSpec(), HeadSpec(noisy=True), HeadSpec("qr", 8),
                                  HeadSpec("c51", 11, -5.0, 5.0, True),
                                  HeadSpec("qr", MAX_ATOMS)])
def test_every_valid_head_round_trips_through_its_spec(head):
    assert head_from_spec("x.pt", {"head": head.to_spec()}) == head
    entry = head.spec_entry()
    assert head_from_spec("x.pt", entry) == head  # a plain head writes nothing, and reads back


def test_a_spec_without_a_head_is_the_plain_one():
    assert head_from_spec("x.pt", {"kind": "mlp"}) == HeadSpec()


WANT = HeadSpec("c51", 11, -5.0, 5.0, noisy=True)


@pytest.mark.parametrize(("saved", "flags"), [
    ({"head": {**C51_OK, "distributional": "qr"}}, "--distributional qr"),
    ({}, "--distributional none"),
    ({"head": {**C51_OK, "noisy": False}}, "--no-noisy"),
    ({"head": {**C51_OK, "atoms": 21}}, "--atoms 21"),
    ({"head": {**C51_OK, "v_min": -10.0, "v_max": 10.0}}, "--v-min -10.0 --v-max 10.0"),
])
def test_resuming_another_head_names_the_flags_that_match_it(saved, flags):
    with pytest.raises(CheckpointError) as e:
        check_head("x.pt", saved, WANT)
    assert str(e.value).endswith(f"pass {flags} to resume it"), str(e.value)
    assert str(e.value).startswith("x.pt ") and "\n" not in str(e.value)
    args = build_parser().parse_args(["train", *flags.split()])  # flags that exist, as named
    assert args is not None


def test_resuming_without_noisy_layers_names_noisy():
    with pytest.raises(CheckpointError, match="pass --noisy to resume it"):
        check_head("x.pt", {"head": C51_OK}, HeadSpec("c51", 11, -5.0, 5.0, noisy=False))
    check_head("x.pt", {"head": C51_OK}, WANT)  # the same head: nothing to say


def test_losses_and_heads_name_the_same_kinds_with_their_papers_atoms():
    assert set(LOSSES) == set(HEADS) == set(CHOICES["distributional"]) == {"none", "c51", "qr"}
    assert head_of("c51", 0, (-1.0, 1.0), False).atoms == 51  # Bellemare et al. 2017
    assert head_of("qr", 0, None, False).atoms == 200  # Dabney et al. 2018
    assert head_of("none", 0, None, True) == HeadSpec(noisy=True)


# ---------------------------------------------------------------------------------------------
# The agent's noise: independent streams, checkpointed, resumed exactly
# ---------------------------------------------------------------------------------------------


def noisy_agent(seed: int = 0) -> DQN:
    cfg = make_config(distributional="c51", atoms=11, v_min=-10.0, v_max=10.0, noisy=True,
                      hidden=(16,), seed=seed)
    return DQN(cfg, *CARTPOLE_SPACES, torch.device("cpu"))


def test_the_online_and_target_networks_draw_independent_noise():
    agent = noisy_agent()
    online, target = agent.learner.online, agent.learner.target
    gens = agent.noise_generators()
    assert len(gens) == 2 and gens[0] is noise_generator(online) and gens[1] is noise_generator(target)
    assert gens[0] is not gens[1]
    assert all(layer.generator is gens[0] for layer in noisy_layers(online))
    assert all(layer.generator is gens[1] for layer in noisy_layers(target))
    # not a copy of one state: their first draws differ
    assert not torch.equal(torch.randn(8, generator=clone(gens[0])),
                           torch.randn(8, generator=clone(gens[1])))
    for key, g in enumerate(gens):  # each seeded from the run seed, Purpose.NOISE key 0 or 1
        assert torch.equal(torch.randn(8, generator=clone(g)),
                           torch.randn(8, generator=torch_generator(0, Purpose.NOISE, key)))
    other_seed = noisy_agent(seed=1).noise_generators()[0]
    assert not torch.equal(torch.randn(8, generator=clone(gens[0])),
                           torch.randn(8, generator=other_seed))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the same weights (the target is a copy), other noise
        assert not torch.allclose(online(x), target(x))


def test_acting_explores_by_the_noise_and_evaluation_plays_the_mean():
    agent = noisy_agent()
    obs = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(agent.q_values(obs), agent.q_values(obs))
    same = agent.q_values(obs[:1].expand(2, 4))
    assert not torch.allclose(same[0], same[1])  # each env explores with its own sample
    mean = agent.q_values_eval(obs)
    assert torch.equal(agent.q_values_eval(obs), mean)
    assert agent.learner.online.training  # put back in training mode
    with torch.no_grad():
        assert torch.equal(copy.deepcopy(agent.learner.online).eval()(obs), mean)


def replay_passes(g: torch.Generator, module: torch.nn.Module, passes: int) -> None:
    """Draw from `g` what `passes` training passes of `module` draw: one sample per noisy layer."""
    for _ in range(passes):
        for layer in noisy_layers(module):
            torch.randn(1, layer.in_features, generator=g)
            torch.randn(1, layer.out_features, generator=g)


@pytest.mark.parametrize("double", [True, False])
def test_an_update_draws_a_sample_for_each_of_its_passes(double):
    """The online pass, the double-DQN selection pass and the target pass: each its own noise."""
    agent = noisy_agent()
    lr = agent.learner
    lr.double = double
    g = torch.Generator().manual_seed(0)
    batch = Batch(obs=torch.randn(8, 4, generator=g), actions=torch.randint(2, (8,), generator=g),
                  rewards=torch.randn(8, generator=g), next_obs=torch.randn(8, 4, generator=g),
                  dones=torch.zeros(8), discounts=torch.full((8,), 0.99))
    online, target = clone(noise_generator(lr.online)), clone(noise_generator(lr.target))
    lr.update(batch, None)
    replay_passes(online, lr.online, 2 if double else 1)
    replay_passes(target, lr.target, 1)
    for replayed, real in ((online, lr.online), (target, lr.target)):
        assert torch.equal(torch.randn(4, generator=replayed),
                           torch.randn(4, generator=noise_generator(real)))


NUM_ENVS = 2
HALF = 12 * EPISODE_LENGTH * NUM_ENVS
"""Env steps of the first leg: whole episodes for every env, so the stop is at a boundary (as
test_reliability.py's exact resume)."""
EXACT = dict(env_id=scripted_env_id("FixedLength-v0"), num_envs=NUM_ENVS, seed=3, device="cpu",
             vector="sync", hidden=(16,), batch_size=8, buffer_size=64, learning_starts=16,
             train_every=2, eval_every=0, solve_episodes=1, eval_envs=1, log_every=8,
             progress=False, checkpoint_every=0, save_buffer=True, distributional="c51",
             atoms=11, noisy=True, dueling=True)


def assert_same(a: object, b: object, where: str = "") -> None:
    """Equal nested checkpoint entries, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


RESUMED = ("learner", "rng", "buffer", "env_starts", "net")
COUNTERS = ("step", "episodes", "due", "returns", "lengths", "end_steps")
"""What a resumed run continues exactly (the counters' clocks and schedules aside)."""


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("noisy") / "A"
    train(**EXACT, total_timesteps=2 * HALF, run_dir=str(run_dir))
    return load_checkpoint(run_dir / "checkpoint.pt")


def resumed_run(run_dir: Path, keep_noise: bool = True) -> dict:
    train(**EXACT, total_timesteps=HALF, run_dir=str(run_dir))
    if not keep_noise:  # valid generator states, each the other network's
        state = load_checkpoint(run_dir / "checkpoint.pt")
        state["rng"]["noise"] = state["rng"]["noise"][::-1]
        save_checkpoint(run_dir / "checkpoint.pt", state)
    train(**EXACT, total_timesteps=2 * HALF, run_dir=str(run_dir), resume=True)
    return load_checkpoint(run_dir / "checkpoint.pt")


def test_a_noisy_c51_run_resumed_equals_one_trained_straight(tmp_path, straight):
    a, b = straight, resumed_run(tmp_path / "B")
    assert a["learner"]["steps"] == b["learner"]["steps"] > 0
    assert a["net"]["kind"] == "mlp_module" and a["net"]["head"]["noisy"] is True
    for key in RESUMED:
        assert_same(a[key], b[key], key)
    for key in COUNTERS:
        assert_same(a["counters"][key], b["counters"][key], key)
    fresh = [torch_generator(3, Purpose.NOISE, key).get_state() for key in (0, 1)]
    assert len(a["rng"]["noise"]) == 2
    for saved, first in zip(a["rng"]["noise"], fresh):
        assert not torch.equal(saved, first)  # the streams were drawn from


def test_a_resume_with_the_noise_streams_swapped_differs(tmp_path, straight):
    """Guard: the comparison above can fail (the online net then draws the target's noise)."""
    b = resumed_run(tmp_path / "B", keep_noise=False)
    assert b["counters"]["step"] == straight["counters"]["step"]
    assert not torch.equal(b["learner"]["online"]["body.0.weight"],
                           straight["learner"]["online"]["body.0.weight"])


def test_a_noisy_checkpoint_without_its_noise_streams_is_refused_in_one_line(tmp_path):
    train(**EXACT, total_timesteps=HALF, run_dir=str(tmp_path))
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    del state["rng"]["noise"]
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(CheckpointError, match=r"lacks the noise generators of its noisy layers"):
        train(**EXACT, total_timesteps=2 * HALF, run_dir=str(tmp_path), resume=True)


# ---------------------------------------------------------------------------------------------
# Each head kind through a real run: checkpoint, load_policy, `fastdqn eval`, --resume
# ---------------------------------------------------------------------------------------------

TINY = dict(env_id="CartPole-v1", vector="sync", num_envs=2, hidden=(16,), batch_size=8,
            buffer_size=256, learning_starts=32, total_timesteps=160, eval_every=0,
            solve_episodes=2, eval_episodes=2, eval_envs=2, progress=False)
CARTPOLE_SUPPORT = {"v_min": -100.0, "v_max": 100.0}
"""C51's automatic support on CartPole: +-mean|r| / (1 - gamma) = +-1 / 0.01."""

HEAD_RUNS = {
    "c51": (dict(distributional="c51", atoms=11),
            {"distributional": "c51", "atoms": 11, "noisy": False, **CARTPOLE_SUPPORT},
            dict(distributional="qr"), "pass --distributional c51 to resume it"),
    "qr": (dict(distributional="qr", atoms=8),
           {"distributional": "qr", "atoms": 8, "noisy": False},
           dict(distributional="qr", atoms=16), "pass --atoms 8 to resume it"),
    "c51-noisy-dueling": (dict(distributional="c51", atoms=11, noisy=True, dueling=True),
                          {"distributional": "c51", "atoms": 11, "noisy": True,
                           **CARTPOLE_SUPPORT},
                          dict(distributional="c51", atoms=11, dueling=True),
                          "pass --noisy to resume it"),
}


def q_of_dist(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Q as the mean of the module's distribution, computed here from `dist`."""
    dist = module.dist(x)
    head = module.head_spec
    if head.distributional == "c51":
        return (torch.softmax(dist, 2) * head.support()).sum(2)
    return dist.mean(2)


def eval_json(capsys, checkpoint: Path, seed: int) -> dict:
    assert main(["eval", str(checkpoint), "--episodes", "2", "--num-envs", "2", "--seed",
                 str(seed), "--epsilon", "0", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", list(HEAD_RUNS))
def test_each_mlp_head_round_trips_through_a_checkpoint_eval_and_resume(tmp_path, capsys, name):
    opts, head, other, refusal = HEAD_RUNS[name]
    run = tmp_path / "r"
    result = train(run_dir=str(run), **TINY, **opts)
    steps = result.summary["learner_steps"]
    assert steps > 0
    policy, ckpt = load_policy(str(run / "checkpoint.pt"))
    assert ckpt["net"]["kind"] == "mlp_module" and ckpt["net"]["head"] == head
    obs = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    q = policy.q_values(obs)
    assert torch.equal(q, result.policy.q_values(obs))  # the trained agent's greedy Q
    assert torch.equal(policy.q_values(obs), q)  # eval mode: the mean weights, every call
    with torch.no_grad():
        torch.testing.assert_close(q, q_of_dist(policy.module, torch.from_numpy(obs)))
    out = eval_json(capsys, run / "checkpoint.pt", seed=5)
    want = run_episodes(result.policy, "CartPole-v1", 2, 5, 2).to_dict()
    assert {k: out[k] for k in want} == want
    resumed = train(run_dir=str(run), resume=True, **{**TINY, "total_timesteps": 240}, **opts)
    assert resumed.summary["learner_steps"] > steps
    assert load_checkpoint(run / "checkpoint.pt")["net"]["head"] == head
    with pytest.raises(CheckpointError, match=refusal):
        train(run_dir=str(run), resume=True, **{**TINY, "total_timesteps": 320}, **other)


MINATAR_RUN = dict(env_id="MinAtar/Breakout-v1", vector="sync", num_envs=2, batch_size=8,
                   buffer_size=256, learning_starts=32, total_timesteps=96, eval_every=0,
                   solve_episodes=2, eval_episodes=2, eval_envs=2, progress=False,
                   distributional="c51", atoms=11)


@needs_minatar
def test_a_c51_cnn_round_trips_through_a_checkpoint_eval_and_resume(tmp_path, capsys):
    run = tmp_path / "r"
    result = train(run_dir=str(run), **MINATAR_RUN)
    policy, ckpt = load_policy(str(run / "checkpoint.pt"))
    head = ckpt["net"]["head"]
    assert ckpt["net"]["kind"] == "cnn" and isinstance(policy.module, ConvQNetwork)
    assert {k: head[k] for k in ("distributional", "atoms", "noisy")} == {
        "distributional": "c51", "atoms": 11, "noisy": False}
    assert head["v_min"] == -head["v_max"] < 0
    grids = np.random.default_rng(0).random((6, 10, 10, 4)) < 0.3
    q = policy.q_values(grids)
    assert torch.equal(q, result.policy.q_values(grids))
    with torch.no_grad():
        torch.testing.assert_close(q, q_of_dist(policy.module, preprocess(torch.from_numpy(grids))))
    out = eval_json(capsys, run / "checkpoint.pt", seed=7)
    want = run_episodes(result.policy, "MinAtar/Breakout-v1", 2, 7, 2).to_dict()
    assert {k: out[k] for k in want} == want
    steps = result.summary["learner_steps"]
    resumed = train(run_dir=str(run), resume=True, **{**MINATAR_RUN, "total_timesteps": 160})
    assert resumed.summary["learner_steps"] > steps
    with pytest.raises(CheckpointError, match="pass --atoms 11 to resume it"):
        train(run_dir=str(run), resume=True, **{**MINATAR_RUN, "total_timesteps": 200,
                                                "atoms": 21})
