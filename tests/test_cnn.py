"""--network cnn/auto: the two architectures and the rule that picks them, the layout rule, the
module's output and gradients against hand computations and finite differences, dueling, the
reference route with Adam or RMSprop, checkpoints (eval, resume, crafted specs) and the memory
check that keeps an impossible replay buffer from being allocated."""

from __future__ import annotations

import importlib.util
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import run_fastdqn

from fastdqn import train
from fastdqn.config.files import make_config
from fastdqn.core.checkpoint import load_checkpoint, save_checkpoint
from fastdqn.errors import CheckpointError, ConfigError
from fastdqn.evaluation.policies import load_policy
from fastdqn.learners.reference import RMSPROP, ReferenceLearner
from fastdqn.nets.cnn import (
    MINATAR,
    NATURE,
    ConvQNetwork,
    architecture,
    channels_last_of,
    check_spec,
    cnn_for,
    count_params,
    is_image_space,
)
from fastdqn.nets.kinds import resolve_network
from fastdqn.nets.mlp import preprocess
from fastdqn.replay.rows import Batch, ReplayBuffer

needs_minatar = pytest.mark.skipif(importlib.util.find_spec("minatar") is None,
                                   reason="the minatar extra is not installed")

ATARI_SPACE = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
MINATAR_SPACE = gym.spaces.Box(0.0, 1.0, (10, 10, 4), bool)

# ---------------------------------------------------------------------------------------------
# Architectures and layout
# ---------------------------------------------------------------------------------------------


def test_nature_cnn_on_atari_stacks():
    net = cnn_for(ATARI_SPACE, 4, False, seed=0)
    assert not net.channels_last and net.map_shape == (64, 7, 7)
    assert [(m.out_channels, m.kernel_size[0], m.stride[0]) for m in net.conv
            if isinstance(m, torch.nn.Conv2d)] == [(32, 8, 4), (64, 4, 2), (64, 3, 1)]
    assert [m.out_features for m in net.fc if isinstance(m, torch.nn.Linear)] == [512]
    n = sum(p.numel() for p in net.parameters())
    assert n == 1_686_180 == count_params((4, 84, 84), 4, NATURE["convs"], [512], False, False)[0]
    x = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    assert net(preprocess(x)).shape == (3, 4)


def test_minatar_cnn_on_a_channels_last_grid():
    net = cnn_for(MINATAR_SPACE, 3, False, seed=0)
    assert net.channels_last and net.map_shape == (16, 8, 8)
    assert [m.out_features for m in net.fc if isinstance(m, torch.nn.Linear)] == [128]
    assert sum(p.numel() for p in net.parameters()) == (16 * 4 * 9 + 16) + (1024 * 128 + 128) + (
        128 * 3 + 3)
    x = torch.rand(5, 10, 10, 4) < 0.3
    assert net(preprocess(x)).shape == (5, 3)


@pytest.mark.parametrize("shape,last,name", [
    ((4, 84, 84), False, "nature"), ((84, 84, 4), True, "nature"), ((10, 10, 4), True, "minatar"),
    ((210, 160, 3), True, "nature"), ((3, 36, 40), False, "nature"), ((1, 35, 80), False, "minatar"),
    ((3, 3, 2), True, "minatar"), ((10, 10, 10), False, "minatar")])
def test_the_rules_pick_layout_and_architecture(shape, last, name):
    assert channels_last_of(shape) is last
    assert architecture(shape, last)[0] == name


def test_a_cube_follows_the_env_family():
    assert channels_last_of((10, 10, 10), channels_last_hint=True)  # MinAtar Seaquest
    assert not channels_last_of((10, 10, 10))


def test_an_image_too_small_for_either_cnn_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"at least 3x3 pixels, got shape \[4, 2, 84\]") as e:
        architecture((4, 2, 84), False)
    assert "\n" not in str(e.value)


def test_auto_means_cnn_for_uint8_or_bool_images_only():
    assert is_image_space(ATARI_SPACE) and is_image_space(MINATAR_SPACE)
    assert not is_image_space(gym.spaces.Box(0, 1, (4, 84, 84), np.float32))
    assert not is_image_space(gym.spaces.Box(0, 255, (84, 84), np.uint8))
    assert resolve_network("auto", ATARI_SPACE) == "cnn"
    assert resolve_network("auto", gym.spaces.Box(-1, 1, (8,), np.float32)) == "mlp"
    assert resolve_network("mlp", ATARI_SPACE) == "mlp"


# ---------------------------------------------------------------------------------------------
# The module's math
# ---------------------------------------------------------------------------------------------


def tiny(dueling: bool = False, channels_last: bool = False, channels: int = 1) -> ConvQNetwork:
    """Cx4x4 images (or 4x4xC), conv 2 filters 2x2 stride 2 -> 2x2x2, fc 3, 2 actions (float64)."""
    shape = (4, 4, channels) if channels_last else (channels, 4, 4)
    torch.manual_seed(3)
    return ConvQNetwork(shape, 2, [(2, 2, 2)], [3], dueling, channels_last).double()


def test_forward_by_hand():
    """The convolution, ReLUs, fc and head written out with loops over the 2x2 patches."""
    net = tiny()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    conv, fc, head = net.conv[0], net.fc[0], net.head
    w, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    for n in range(2):
        img = x[n, 0].numpy()
        maps = np.zeros((2, 2, 2))
        for f in range(2):
            for i in range(2):
                for j in range(2):
                    maps[f, i, j] = (img[2 * i:2 * i + 2, 2 * j:2 * j + 2] * w[f, 0]).sum() + b[f]
        h = np.maximum(maps, 0).reshape(-1)
        h = np.maximum(fc.weight.detach().numpy() @ h + fc.bias.detach().numpy(), 0)
        q = head.weight.detach().numpy() @ h + head.bias.detach().numpy()
        np.testing.assert_allclose(net(x[n:n + 1].reshape(1, -1)).detach().numpy()[0], q,
                                   rtol=1e-12)


@pytest.mark.parametrize("dueling", [False, True])
def test_gradients_match_finite_differences(dueling):
    """torch.autograd.gradcheck: the module's backward against central differences, in float64,
    for the input and every parameter (a DQN loss reduces to a weighted sum of Q-values)."""
    net = tiny(dueling)
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())
    x = (torch.randn(3, 16, dtype=torch.float64) + 0.3).requires_grad_(True)
    weights = torch.randn(3, 2, dtype=torch.float64)

    def loss(x, *ps):
        q = torch.func.functional_call(net, dict(zip(names, ps)), (x,))
        return (q * weights).sum()

    assert torch.autograd.gradcheck(loss, (x, *params), eps=1e-6, atol=1e-7)


def test_channels_last_equals_channels_first_after_permute():
    first, last = tiny(channels_last=False, channels=3), tiny(channels_last=True, channels=3)
    last.load_state_dict(first.state_dict())
    hwc = torch.randn(4, 4, 4, 3, dtype=torch.float64)
    chw = hwc.permute(0, 3, 1, 2)
    torch.testing.assert_close(last(hwc.reshape(4, -1)), first(chw.reshape(4, -1)),
                               rtol=1e-12, atol=1e-12)
    # the same rows read as channels first would be another image
    assert not torch.allclose(first(hwc.reshape(4, -1)), first(chw.reshape(4, -1)))
    # and shaped input is taken as well as flat rows
    assert torch.equal(last(hwc), last(hwc.reshape(4, -1)))


def test_dueling_head_is_v_plus_a_minus_mean_a():
    net = tiny(dueling=True)
    x = torch.randn(5, 16, dtype=torch.float64)
    out = net.head(net.features(x))
    v, a = out[:, :1], out[:, 1:]
    q = net(x)
    assert net.head.out_features == 3
    torch.testing.assert_close(q.mean(1, keepdim=True), v)
    torch.testing.assert_close(q - v, a - a.mean(1, keepdim=True))


def test_uint8_is_scaled_and_bool_cast_before_the_network():
    net = cnn_for(MINATAR_SPACE, 3, False, seed=1)
    grid = torch.rand(2, 10, 10, 4) < 0.5
    assert torch.equal(net(preprocess(grid)), net(grid.float().reshape(2, -1)))
    pixels = cnn_for(ATARI_SPACE, 4, False, seed=1)
    frames = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    torch.testing.assert_close(pixels(preprocess(frames)), pixels(frames.float() / 255))


def test_the_seed_decides_the_initial_weights_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b = cnn_for(MINATAR_SPACE, 3, False, seed=5), cnn_for(MINATAR_SPACE, 3, False, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = cnn_for(MINATAR_SPACE, 3, False, seed=6)
    assert not torch.equal(a.head.weight, c.head.weight)


# ---------------------------------------------------------------------------------------------
# The reference route: Adam or RMSprop
# ---------------------------------------------------------------------------------------------


def batch_of(gen: torch.Generator, n: int = 8) -> Batch:
    return Batch(obs=torch.rand(n, 10, 10, 4, generator=gen) < 0.3,
                 actions=torch.randint(3, (n,), generator=gen),
                 rewards=torch.randn(n, generator=gen),
                 next_obs=torch.rand(n, 10, 10, 4, generator=gen) < 0.3,
                 dones=(torch.rand(n, generator=gen) < 0.3).float(),
                 discounts=torch.full((n,), 0.99))


def test_rmsprop_steps_as_the_minatar_paper_sets_it(gen):
    """Two learner steps against torch.optim.RMSprop(alpha 0.95, centered, eps 0.01) on the same
    loss by hand: MinAtar's examples/dqn.py (Huber, no double DQN, no clipping)."""
    net = cnn_for(MINATAR_SPACE, 3, False, seed=0)
    copy = cnn_for(MINATAR_SPACE, 3, False, seed=0)
    learner = ReferenceLearner(net, lr=2.5e-4, gamma=0.99, tau=1.0, target_update_interval=1000,
                               double_dqn=False, max_grad_norm=0.0, optimizer="rmsprop")
    assert RMSPROP == {"alpha": 0.95, "eps": 0.01, "centered": True}
    target = cnn_for(MINATAR_SPACE, 3, False, seed=0)
    opt = torch.optim.RMSprop(copy.parameters(), lr=2.5e-4, alpha=0.95, eps=0.01, centered=True)
    for _ in range(2):
        b = batch_of(gen)
        learner.step(b)
        x, xn = preprocess(b.obs), preprocess(b.next_obs)
        with torch.no_grad():
            y = b.rewards + 0.99 * (1 - b.dones) * target(xn).max(1).values
        q = copy(x).gather(1, b.actions[:, None]).squeeze(1)
        opt.zero_grad()
        torch.nn.functional.smooth_l1_loss(q, y).backward()
        opt.step()
    for p, r in zip(net.parameters(), copy.parameters()):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-7)
    assert "RMSprop" in learner.route(torch.device("cpu"))


def test_adam_eps_with_rmsprop_is_refused():
    with pytest.raises(ConfigError, match="--adam-eps applies to --optimizer adam"):
        make_config(optimizer="rmsprop", adam_eps=1e-4)
    with pytest.raises(ConfigError, match="--optimizer must be one of adam, rmsprop"):
        make_config(optimizer="sgd")


def test_rmsprop_moves_an_mlp_to_the_reference_route(tmp_path):
    s = train(env_id="CartPole-v1", vector="sync", num_envs=2, hidden=(8,), batch_size=8,
              buffer_size=64, learning_starts=8, total_timesteps=48, eval_every=0,
              solve_episodes=1, eval_envs=1, progress=False, run_dir=str(tmp_path / "r"),
              optimizer="rmsprop").summary
    assert s["learner_route"] == "reference (nn.Module + autograd + torch.optim.RMSprop)"


# ---------------------------------------------------------------------------------------------
# Runs, checkpoints, eval, resume
# ---------------------------------------------------------------------------------------------

MINATAR_ID = "MinAtar/Breakout-v1"
TINY_RUN = dict(env_id=MINATAR_ID, vector="sync", num_envs=2, batch_size=8, buffer_size=256,
                learning_starts=32, total_timesteps=96, eval_every=0, solve_episodes=2,
                eval_episodes=2, eval_envs=2, progress=False)


@needs_minatar
def test_a_cnn_run_names_its_route_and_stores_bool_rows(tmp_path):
    result = train(run_dir=str(tmp_path / "r"), save_buffer=True, **TINY_RUN)
    s = result.summary
    assert s["learner_route"] == ("reference (nn.Module + autograd + torch.optim.Adam); cnn "
                                  "16x3/1, fc 128 (the fused flat learner is MLP-only, so a CNN "
                                  "trains here)")
    assert s["learner_steps"] > 0 and s["config"]["network"] == "auto"
    buf = load_checkpoint(tmp_path / "r" / "checkpoint.pt")["buffer"]
    assert buf["obs"].dtype == torch.bool and buf["obs"].shape[1:] == (10, 10, 4)


@needs_minatar
def test_checkpoint_round_trip_eval_and_resume(tmp_path):
    run = tmp_path / "r"
    result = train(run_dir=str(run), dueling=True, **TINY_RUN)
    policy, ckpt = load_policy(str(run / "checkpoint.pt"))
    assert ckpt["net"] == {"kind": "cnn", "obs_shape": [10, 10, 4], "n_actions": 3,
                           "convs": [[16, 3, 1]], "fc": [128], "dueling": True,
                           "channels_last": True}
    grids = np.random.default_rng(0).random((6, 10, 10, 4)) < 0.3
    torch.testing.assert_close(policy.q_values(grids), result.policy.q_values(grids))
    out = run_fastdqn("eval", str(run / "checkpoint.pt"), "--episodes", "2", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["episodes"] == 2
    # resume continues the same network; another head is refused in one line
    steps = result.summary["learner_steps"]
    resumed = train(run_dir=str(run), resume=True, dueling=True,
                    **{**TINY_RUN, "total_timesteps": 160})
    assert resumed.summary["learner_steps"] > steps
    with pytest.raises(CheckpointError, match="dueling head; pass --dueling"):
        train(run_dir=str(run), resume=True, **{**TINY_RUN, "total_timesteps": 200})
    with pytest.raises(CheckpointError, match="--optimizer adam to resume"):
        train(run_dir=str(run), resume=True, dueling=True, optimizer="rmsprop",
              **{**TINY_RUN, "total_timesteps": 200})


@needs_minatar
@pytest.mark.parametrize("change,message", [
    ({"convs": [[10**6, 3, 1]]}, "without valid sizes"),
    ({"convs": [[16, 11, 1]]}, "convolutions do not fit"),
    ({"obs_shape": [10, 10]}, "without valid sizes"),
    ({"fc": [2**27, 4]}, "over the limits"),
    ({"convs": [[4096, 1, 1]], "obs_shape": [4096, 4096, 3]}, "over the limits"),
    ({"dueling": "yes"}, "without valid sizes"),
    ({"n_actions": True}, "without valid sizes"),
    ({"fc": [128, 128]}, "learner.online does not hold"),
])
def test_a_crafted_cnn_spec_is_refused_in_one_line(tmp_path, change, message):
    run = tmp_path / "r"
    train(run_dir=str(run), **TINY_RUN)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    ckpt["net"] = {**ckpt["net"], **change}
    save_checkpoint(tmp_path / "bad.pt", {k: v for k, v in ckpt.items() if k != "format"})
    with pytest.raises(CheckpointError, match=message) as e:
        load_policy(str(tmp_path / "bad.pt"))
    assert "\n" not in str(e.value)


def test_check_spec_caps_before_building():
    spec = {"kind": "cnn", "obs_shape": [4, 84, 84], "n_actions": 4, "convs": NATURE["convs"],
            "fc": [512], "dueling": False, "channels_last": False}
    spec["convs"] = [list(c) for c in spec["convs"]]
    assert check_spec("x.pt", spec)["fc"] == [512]
    assert MINATAR["fc"] == [128]


@needs_minatar
def test_hidden_with_a_cnn_is_refused_before_the_run_dir_exists(tmp_path):
    with pytest.raises(ConfigError, match="drop --hidden or pass --network mlp"):
        train(run_dir=str(tmp_path / "r"), **{**TINY_RUN, "hidden": (64,)})
    with pytest.raises(ConfigError, match="--network cnn needs image observations"):
        train(env_id="CartPole-v1", network="cnn", run_dir=str(tmp_path / "r"), progress=False)
    assert not (tmp_path / "r").exists()


@needs_minatar
def test_mlp_on_images_still_works(tmp_path):
    s = train(run_dir=str(tmp_path / "r"), network="mlp", hidden=(16,),
              **{k: v for k, v in TINY_RUN.items()}).summary
    assert s["learner_route"].startswith("cpu-fused")


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def test_a_buffer_that_cannot_fit_is_refused_in_one_line(monkeypatch, tmp_path):
    import fastdqn.replay.rows as replay

    monkeypatch.setattr(replay, "available_memory", lambda device: 8 * 10**9)
    with pytest.raises(ConfigError, match=r"needs 56\.5 GB, but only 8\.0 GB is available in RAM; "
                                          r"lower --buffer-size \(e\.g\. 113,000 rows take") as e:
        ReplayBuffer(1_000_000, (4, 84, 84), torch.uint8)
    assert "\n" not in str(e.value)
    # the atari preset stores each frame once (about 7.4 GB for its 1M rows): on a machine with
    # less, it is refused before the run dir exists, naming the frame replay
    pytest.importorskip("ale_py")
    monkeypatch.setattr(replay, "available_memory", lambda device: 4 * 10**9)
    with pytest.raises(ConfigError, match=r"a frame replay of 1,000,000 rows .* needs 7\.\d GB, "
                                          r"but only 4\.0 GB .* lower --buffer-size"):
        train(make_config("atari", run_dir=str(tmp_path / "r"), progress=False))
    assert not (tmp_path / "r").exists()
