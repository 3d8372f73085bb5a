"""The learner route's one decision (`learners.route.choose_route`) against hand-written
expectations for every combination of the settings that decide it, the --learner numba refusals
included. Deciding reads only the device's type: torch.device("cuda") needs no GPU here."""

from __future__ import annotations

import dataclasses
import itertools

import gymnasium as gym
import numpy as np
import pytest
import torch

from fastdqn import make_config
from fastdqn.algos.dqn.agent import DQN
from fastdqn.envs.workers import usable_cores
from fastdqn.learners.flat import Learner
from fastdqn.learners.reference import ReferenceLearner
from fastdqn.learners.route import Route, choose_route

KINDS = ("mlp", "rbf", "cnn", "custom")
OPTIMIZERS = ("adam", "rmsprop")
LEARNERS = ("auto", "numba", "reference")
FRAMES = (False, True)
DEVICES = ("cpu", "cuda")
GRAPHS = (True, False)
ALL = list(itertools.product(KINDS, OPTIMIZERS, LEARNERS, FRAMES, DEVICES, GRAPHS))

# (kind, optimizer, learner, frames) that train on the flat learner; every other one trains on
# the reference learner.
FLAT = {
    ("mlp", "adam", "auto", False), ("mlp", "adam", "numba", False),
    ("rbf", "adam", "auto", False), ("rbf", "adam", "numba", False),
}

# (kind, optimizer, learner, frames, device) where the native step is tried first.
NATIVE = {("mlp", "adam", "auto", False, "cpu"), ("rbf", "adam", "auto", False, "cpu")}

# (kind, learner) whose update is graphed on CUDA with --cuda-graphs, whatever the optimizer
# and the replay: all but --learner reference and a custom network.
UPDATE_GRAPHED = {("mlp", "auto"), ("mlp", "numba"), ("rbf", "auto"), ("rbf", "numba"),
                  ("cnn", "auto"), ("cnn", "numba")}

CNN = "a cnn network trains on the reference route"
CUSTOM = "a custom network trains on the reference route"
FRAME_REPLAY = "the frame replay trains on the reference route"
RMSPROP = "--optimizer rmsprop trains on the reference route"

# Why --learner numba is refused on a CPU, by (kind, optimizer, frames); None: the run takes it.
# On CUDA it is refused for the device, whatever the rest.
NUMBA_ON_CPU = {
    ("mlp", "adam", False): None, ("mlp", "adam", True): FRAME_REPLAY,
    ("mlp", "rmsprop", False): RMSPROP, ("mlp", "rmsprop", True): FRAME_REPLAY,
    ("rbf", "adam", False): None, ("rbf", "adam", True): FRAME_REPLAY,
    ("rbf", "rmsprop", False): RMSPROP, ("rbf", "rmsprop", True): FRAME_REPLAY,
    ("cnn", "adam", False): CNN, ("cnn", "adam", True): CNN,
    ("cnn", "rmsprop", False): CNN, ("cnn", "rmsprop", True): CNN,
    ("custom", "adam", False): CUSTOM, ("custom", "adam", True): CUSTOM,
    ("custom", "rmsprop", False): CUSTOM, ("custom", "rmsprop", True): CUSTOM,
}


def route(kind: str, optimizer: str, learner: str, frames: bool, device: str,
          graphs: bool) -> Route:
    return choose_route(learner, optimizer, kind, frames, torch.device(device), graphs)


def refusal(why: str) -> str:
    return (f"--learner numba picks the flat MLP's Numba CPU step, which this run does not take "
            f"({why}); drop it")


@pytest.mark.parametrize("case", ALL, ids=["-".join(map(str, c)) for c in ALL])
def test_every_combination_takes_the_expected_route(case):
    kind, optimizer, learner, frames, device, graphs = case
    r = route(*case)
    flat = (kind, optimizer, learner, frames) in FLAT
    assert r.learner == ("flat" if flat else "reference")
    assert r.native == ((kind, optimizer, learner, frames, device) in NATIVE)
    on_cuda = device == "cuda" and graphs
    assert r.update_graphs == (on_cuda and (kind, learner) in UPDATE_GRAPHED)
    assert r.acting_graphs == (on_cuda and flat)
    if learner != "numba":
        assert r.refusal is None
    elif device == "cuda":
        assert r.refusal == refusal("device cuda")
    else:
        why = NUMBA_ON_CPU[(kind, optimizer, frames)]
        assert r.refusal == (None if why is None else refusal(why))
    whys = [r.learner_why, r.native_why, r.update_graphs_why, r.acting_graphs_why]
    assert all(w and "\n" not in w for w in whys)


@pytest.mark.parametrize("case", ALL, ids=["-".join(map(str, c)) for c in ALL])
def test_a_refused_numba_run_names_the_reason_its_learner_gives(case):
    """On a CPU, the refusal quotes the learner's why: the two never disagree."""
    kind, optimizer, learner, frames, device, graphs = case
    r = route(*case)
    if learner == "numba" and device == "cpu" and r.learner == "reference":
        assert r.refusal == refusal(r.learner_why)


def test_the_defaults_on_a_cpu():
    assert route("mlp", "adam", "auto", False, "cpu", True) == Route(
        learner="flat", learner_why="the flat learner trains the MLP with Adam on a row replay",
        native=True,
        native_why="tried first, the Numba step where it does not build, load or pass its self-check",
        update_graphs=False, update_graphs_why="device cpu: CUDA graphs run on CUDA only",
        acting_graphs=False, acting_graphs_why="device cpu: CUDA graphs run on CUDA only")


@pytest.mark.parametrize(("args", "field", "why"), [
    (("mlp", "adam", "numba", False, "cpu", True), "native_why", "--learner numba"),
    (("mlp", "adam", "auto", False, "cuda", True), "native_why",
     "device cuda: the native step runs on the CPU only"),
    (("cnn", "adam", "auto", False, "cpu", True), "native_why",
     "the reference learner has no native step"),
    (("rbf", "adam", "auto", False, "cpu", True), "learner_why",
     "the flat learner trains the RBF model's linear head with Adam on a row replay"),
    (("mlp", "adam", "reference", False, "cpu", True), "learner_why", "--learner reference"),
    (("mlp", "rmsprop", "auto", True, "cpu", True), "learner_why", FRAME_REPLAY),
    (("cnn", "rmsprop", "auto", True, "cpu", True), "learner_why", CNN),
    (("mlp", "adam", "auto", False, "cuda", False), "update_graphs_why", "--no-cuda-graphs"),
    (("cnn", "adam", "reference", False, "cuda", True), "update_graphs_why",
     "--learner reference: the reference is never graphed"),
    (("custom", "adam", "auto", False, "cuda", True), "update_graphs_why",
     "a custom network: fastdqn cannot promise its forward is capturable"),
    (("cnn", "adam", "auto", False, "cuda", True), "acting_graphs_why",
     "the reference learner acts with its module's forward pass"),
    (("mlp", "adam", "auto", False, "cuda", True), "acting_graphs_why",
     "the acting forward pass is captured once, proven against the plain forward pass first"),
])
def test_each_choice_says_why(args, field, why):
    assert getattr(route(*args), field) == why


def test_the_native_step_off_reads_as_summary_json_has_always_said():
    """Learner quotes native_why in its route: `native step off: --learner numba`."""
    from fastdqn.nets.mlp import MLP

    r = route("mlp", "adam", "numba", False, "cpu", True)
    lr = Learner(MLP(4, 2, (8,)), lr=1e-3, gamma=0.99, tau=1.0, target_update_interval=10,
                 native=r.native, native_why=r.native_why, cuda_graphs=r.update_graphs)
    assert lr.route(torch.device("cpu")) == (
        "cpu-fused (torch GEMMs + numba kernels; native step off: --learner numba)")


def test_a_route_is_a_value():
    r = route("mlp", "adam", "auto", False, "cpu", True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.native = False  # type: ignore[misc]
    assert r == route("mlp", "adam", "auto", False, "cpu", True)


@pytest.mark.parametrize(("settings", "learner"), [
    ({}, "flat"), ({"learner": "numba"}, "flat"), ({"optimizer": "rmsprop"}, "reference"),
    ({"learner": "reference"}, "reference"),
])
def test_the_agent_builds_the_learner_its_route_names(settings, learner):
    cfg = make_config(**settings)
    cfg.validate()
    agent = DQN(cfg, gym.spaces.Box(-1.0, 1.0, (4,), np.float32), gym.spaces.Discrete(2),
                torch.device("cpu"))
    assert agent.route == choose_route(cfg.learner, cfg.optimizer, "mlp", False,
                                       torch.device("cpu"), cfg.cuda_graphs, cores=usable_cores())
    assert agent.route.learner == learner
    assert isinstance(agent.learner, Learner if learner == "flat" else ReferenceLearner)
    if learner == "flat":
        assert agent.learner.native == agent.route.native


# ---------------------------------------------------------------------------------------------
# Value heads (nets/heads.py): the "mlp_module" kind and noisy layers
# ---------------------------------------------------------------------------------------------

MLP_MODULE = ("a distributional or noisy head trains on the reference route (the flat MLP's "
              "fused step has neither)")
NOISY = ("--noisy: its noise comes from the run's own torch.Generator, which the capture does "
         "not register (kept eager)")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("learner", ["auto", "reference"])
def test_an_mlp_with_a_head_trains_on_the_reference_route_and_says_why(learner, device):
    r = choose_route(learner, "adam", "mlp_module", False, torch.device(device), True)
    assert r.learner == "reference"
    assert r.learner_why == MLP_MODULE  # the kind's reason comes before --learner's
    assert not r.native and r.native_why == "the reference learner has no native step"
    assert r.update_graphs == (device == "cuda" and learner == "auto")
    assert not r.acting_graphs and r.refusal is None


@pytest.mark.parametrize(("device", "why"), [("cpu", MLP_MODULE), ("cuda", "device cuda")])
def test_learner_numba_is_refused_for_an_mlp_with_a_head(device, why):
    r = choose_route("numba", "adam", "mlp_module", False, torch.device(device), True)
    assert r.learner == "reference" and r.refusal == refusal(why)


@pytest.mark.parametrize("kind", ["mlp_module", "cnn"])
def test_noisy_layers_keep_the_update_eager_on_cuda(kind):
    cuda = torch.device("cuda")
    r = choose_route("auto", "adam", kind, False, cuda, True, noisy=True)
    assert not r.update_graphs and r.update_graphs_why == NOISY
    assert r.learner == "reference" and r.refusal is None
    assert choose_route("auto", "adam", kind, False, cuda, True).update_graphs  # noise is why
    # an earlier reason comes first
    assert choose_route("auto", "adam", kind, False, torch.device("cpu"), True,
                        noisy=True).update_graphs_why == "device cpu: CUDA graphs run on CUDA only"
    assert choose_route("auto", "adam", kind, False, cuda, False,
                        noisy=True).update_graphs_why == "--no-cuda-graphs"
    assert choose_route("reference", "adam", kind, False, cuda, True, noisy=True
                        ).update_graphs_why == "--learner reference: the reference is never graphed"


@pytest.mark.parametrize(("settings", "head"), [
    ({"distributional": "c51", "v_min": -10.0, "v_max": 10.0}, "c51 head, 51 atoms on [-10, 10]"),
    ({"distributional": "qr"}, "qr head, 200 atoms"),
    ({"noisy": True}, "noisy layers"),
    ({"distributional": "qr", "atoms": 8, "noisy": True, "dueling": True},
     "qr head, 8 atoms, noisy layers"),
])
def test_the_agent_trains_a_headed_mlp_on_the_route_it_names(settings, head):
    cfg = make_config(**settings)
    agent = DQN(cfg, gym.spaces.Box(-1.0, 1.0, (4,), np.float32), gym.spaces.Discrete(2),
                torch.device("cpu"))
    assert agent.kind == "mlp_module"
    assert agent.route == choose_route(cfg.learner, cfg.optimizer, "mlp_module", False,
                                       torch.device("cpu"), cfg.cuda_graphs, cfg.noisy,
                                       usable_cores())
    assert isinstance(agent.learner, ReferenceLearner)
    assert agent.learner.head == cfg.distributional
    assert agent.summary()["learner_route"] == (
        f"reference (nn.Module + autograd + torch.optim.Adam); {head} (the fused flat step has no "
        "distributional or noisy head, so it trains here)")


@pytest.mark.parametrize("settings", [{"distributional": "qr"}, {"noisy": True}])
def test_learner_numba_with_a_head_is_refused_before_the_run_dir_exists(tmp_path, settings):
    from fastdqn import train
    from fastdqn.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        train(env_id="CartPole-v1", run_dir=str(tmp_path / "r"), learner="numba", progress=False,
              **settings)
    assert str(e.value) == refusal(MLP_MODULE)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("settings", "message"), [
    ({"network": "rbf", "distributional": "c51"},
     "--distributional applies to --network mlp or cnn only, not --network rbf; drop "
     "--distributional or pass --network mlp"),
    ({"network": "rbf", "noisy": True},
     "--noisy applies to --network mlp or cnn only, not --network rbf; drop --noisy or pass "
     "--network mlp"),
    ({"noisy": True, "actors": 2},
     "--noisy with --actors: Ape-X actors explore by their own fixed epsilons (--actor-epsilon); "
     "drop --noisy or --actors"),
    ({"distributional": "qr", "atoms": 1},
     "--atoms must be in 2..4096 (0: the head's own), got 1"),
    ({"distributional": "qr", "atoms": 4097},
     "--atoms must be in 2..4096 (0: the head's own), got 4097"),
    ({"distributional": "c51", "v_min": 6.0, "v_max": 5.0},
     "--v-min 6.0 must be below --v-max 5.0; swap them"),
])
def test_a_head_setting_that_cannot_work_is_refused_in_one_line(settings, message):
    from fastdqn.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        make_config(**settings)
    assert str(e.value) == message


@pytest.mark.parametrize("settings", [{"distributional": "qr"}, {"noisy": True},
                                      {"distributional": "c51", "atoms": 11}])
def test_a_network_of_your_own_refuses_a_head(tmp_path, settings):
    from fastdqn import train
    from fastdqn.errors import ConfigError

    flag = next(iter(settings))
    with pytest.raises(ConfigError, match=f"^q_network is a network of your own, --{flag} "):
        train(env_id="CartPole-v1", run_dir=str(tmp_path / "r"), progress=False,
              q_network=torch.nn.Linear(4, 2), **settings)
    assert not (tmp_path / "r").exists()


def test_one_support_end_set_leaves_the_other_automatic_or_is_refused(tmp_path):
    """--v-min alone: the automatic +-100 of CartPole is the other end, unless that is no
    support at all."""
    from fastdqn import train
    from fastdqn.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        train(env_id="CartPole-v1", run_dir=str(tmp_path / "r"), distributional="c51",
              v_min=500.0, progress=False)
    assert str(e.value) == ("--v-min 500 leaves an empty support with the automatic other end "
                            "(500..100); pass both --v-min and --v-max")
    cfg = make_config(env_id="CartPole-v1", distributional="c51", v_min=-5.0)
    agent = DQN(cfg, gym.spaces.Box(-1.0, 1.0, (4,), np.float32), gym.spaces.Discrete(2),
                torch.device("cpu"))
    assert (agent.head.v_min, agent.head.v_max) == (-5.0, 100.0)


@pytest.mark.parametrize(("args", "cores", "overlap", "why"), [
    (("mlp", "adam", "auto", False, "cpu", True), 2, True, "a thread of their own"),
    (("mlp", "adam", "auto", False, "cpu", True), 1, False, "one usable core"),
    (("mlp", "adam", "numba", False, "cpu", True), 2, False, "no native step"),
    (("mlp", "adam", "auto", False, "cuda", True), 8, False, "no native step"),
    (("cnn", "adam", "auto", False, "cpu", True), 2, False, "no native step"),
])
def test_the_learner_runs_beside_the_loop_on_the_native_step_with_two_cores(args, cores, overlap,
                                                                             why):
    kind, optimizer, learner, frames, device, graphs = args
    r = choose_route(learner, optimizer, kind, frames, torch.device(device), graphs, cores=cores)
    assert r.overlap is overlap and why in r.overlap_why
