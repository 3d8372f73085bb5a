"""MLP: flat layout, forward, hand-written backward vs autograd, init, preprocess."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import module_grad

from fastdqn.nets.mlp import MLP, preprocess

SHAPES = [(4, 2, (16,)), (8, 3, (32, 16)), (3, 5, (7, 9, 4))]


@pytest.mark.parametrize(("in_dim", "n_actions", "hidden"), SHAPES)
def test_num_params(in_dim, n_actions, hidden):
    sizes = [in_dim, *hidden, n_actions]
    expected = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    net = MLP(in_dim, n_actions, hidden)
    assert net.num_params == expected
    assert len(net.layers) == len(hidden) + 1


@pytest.mark.parametrize(("in_dim", "n_actions", "hidden"), SHAPES)
def test_views_partition_the_flat_vector(in_dim, n_actions, hidden):
    net = MLP(in_dim, n_actions, hidden)
    flat = torch.arange(net.num_params, dtype=torch.float32)
    views = net.views(flat)
    sizes = [in_dim, *hidden, n_actions]
    covered = []
    for (w, b), fan_in, fan_out in zip(views, sizes, sizes[1:]):
        assert w.shape == (fan_out, fan_in)
        assert b.shape == (fan_out,)
        covered += w.reshape(-1).tolist() + b.tolist()
    # every entry exactly once, in order: w0 (row-major), b0, w1, b1, ...
    assert covered == list(range(net.num_params))


def test_views_share_storage():
    net = MLP(3, 2, (4,))
    flat = torch.zeros(net.num_params)
    (w0, b0), (w1, b1) = net.views(flat)
    w0[1, 2] = 5.0
    b1[1] = 7.0
    assert flat[1 * 3 + 2].item() == 5.0
    assert flat[net.num_params - 1].item() == 7.0
    assert flat.sum().item() == 12.0


@pytest.mark.parametrize(("in_dim", "n_actions", "hidden"), SHAPES)
def test_forward_matches_module(in_dim, n_actions, hidden, gen):
    net = MLP(in_dim, n_actions, hidden)
    flat = net.init(gen)
    x = torch.randn(33, in_dim, generator=gen)
    q = net.forward(net.views(flat), x)
    assert q.shape == (33, n_actions)
    with torch.no_grad():
        ref = net.to_module(flat)(x)
    assert torch.allclose(q, ref, atol=1e-6, rtol=1e-5)
    q_train, acts = net.forward_train(net.views(flat), x)
    assert torch.allclose(q_train, ref, atol=1e-6, rtol=1e-5)
    assert len(acts) == len(hidden) + 1
    assert acts[0] is x


def test_forward_hand_computed():
    net = MLP(2, 2, (2,))
    flat = torch.tensor([1.0, 0.0, 0.0, -1.0, 0.5, 0.5,  # W0 = I-ish, b0
                         1.0, 2.0, -1.0, 1.0, 0.0, 10.0], dtype=torch.float32)
    x = torch.tensor([[1.0, 2.0]])
    # h = relu([1 + .5, -2 + .5]) = [1.5, 0]; q = [1.5*1 + 0*2 + 0, 1.5*-1 + 0 + 10]
    assert net.forward(net.views(flat), x).tolist() == [[1.5, 8.5]]


def test_to_module_structure_and_copy():
    net = MLP(4, 3, (8, 6))
    flat = net.init(torch.Generator().manual_seed(0))
    mod = net.to_module(flat)
    kinds = [type(m).__name__ for m in mod.body]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [(m.in_features, m.out_features) for m in mod.linears()] == [(4, 8), (8, 6), (6, 3)]
    before = flat.clone()
    with torch.no_grad():
        mod.body[0].weight.add_(1.0)
    assert torch.equal(flat, before)  # a copy, not a view
    assert torch.equal(net.from_module(net.to_module(flat)), flat)


def test_dueling_head_by_hand():
    """Last layer outputs [V, A1, A2, A3] = [1, 2, 4, 9]: Q = 1 + A - 5 = [-2, 0, 5]."""
    net = MLP(1, 3, (), dueling=True)
    assert net.n_out == 4 and net.num_params == 1 * 4 + 4
    flat = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 4.0, 9.0])
    assert net.forward(net.views(flat), torch.zeros(1, 1)).tolist() == [[-2.0, 0.0, 5.0]]
    assert net.to_module(flat)(torch.zeros(1, 1)).tolist() == [[-2.0, 0.0, 5.0]]
    # dV = sum dQ = 6, dA = dQ - mean dQ = [1, 2, 3] - 2
    assert net.head_backward(torch.tensor([[1.0, 2.0, 3.0]])).tolist() == [[6.0, -1.0, 0.0, 1.0]]


@pytest.mark.parametrize("hidden", [(16,), (32, 16)])
def test_dueling_backward_matches_autograd_through_the_reference_module(hidden, gen):
    net = MLP(6, 4, hidden, dueling=True)
    flat = net.init(gen)
    x = torch.randn(25, 6, generator=gen)
    dq = torch.randn(25, 4, generator=gen)
    q, acts = net.forward_train(net.views(flat), x)
    grad = torch.full((net.num_params,), float("nan"))
    net.backward(net.views(flat), acts, dq, net.views(grad))
    module = net.to_module(flat)
    ref_q = module(x)
    torch.testing.assert_close(q, ref_q, rtol=1e-5, atol=1e-6)
    (ref_q * dq).sum().backward()
    ref = torch.cat([t.grad.reshape(-1) for lin in module.linears() for t in (lin.weight, lin.bias)])
    torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hidden", [(16,), (32, 16)])
def test_backward_matches_autograd(hidden, gen):
    in_dim, n_actions, batch = 6, 4, 25
    net = MLP(in_dim, n_actions, hidden)
    flat = net.init(gen)
    x = torch.randn(batch, in_dim, generator=gen)
    dout = torch.randn(batch, n_actions, generator=gen)

    q, acts = net.forward_train(net.views(flat), x)
    grad = torch.full((net.num_params,), float("nan"))  # backward must overwrite everything
    net.backward(net.views(flat), acts, dout, net.views(grad))

    mod = net.to_module(flat)
    out = mod(x)
    assert torch.allclose(q, out.detach(), atol=1e-6)
    out.backward(dout)
    ref = module_grad(mod)
    assert not torch.isnan(grad).any()
    assert torch.allclose(grad, ref, atol=1e-5, rtol=1e-5)


def test_backward_overwrites_instead_of_accumulating(gen):
    net = MLP(3, 2, (5,))
    flat = net.init(gen)
    x = torch.randn(4, 3, generator=gen)
    dout = torch.randn(4, 2, generator=gen)
    _, acts = net.forward_train(net.views(flat), x)
    g1 = torch.zeros(net.num_params)
    net.backward(net.views(flat), acts, dout, net.views(g1))
    g2 = torch.full((net.num_params,), 100.0)
    net.backward(net.views(flat), acts, dout, net.views(g2))
    assert torch.equal(g1, g2)


@pytest.mark.parametrize(("in_dim", "n_actions", "hidden"), [(4, 2, (64,)), (300, 6, (128, 32))])
def test_init_matches_linear_bounds(in_dim, n_actions, hidden):
    net = MLP(in_dim, n_actions, hidden)
    flat = net.init(torch.Generator().manual_seed(3))
    assert flat.shape == (net.num_params,)
    assert flat.dtype == torch.float32
    for (w, b), layer in zip(net.views(flat), net.layers):
        bound = 1.0 / math.sqrt(layer.fan_in)
        assert w.abs().max().item() <= bound
        assert b.abs().max().item() <= bound
        # uniform over the whole range, not a narrower one
        assert w.abs().max().item() > 0.9 * bound
        assert abs(w.mean().item()) < 0.1 * bound
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)


def test_init_deterministic_per_generator_seed():
    net = MLP(4, 2, (8,))
    a = net.init(torch.Generator().manual_seed(1))
    b = net.init(torch.Generator().manual_seed(1))
    c = net.init(torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_preprocess_uint8_scaled_and_flattened():
    obs = torch.tensor([[[0, 255], [51, 102]], [[255, 255], [0, 1]]], dtype=torch.uint8)
    x = preprocess(obs)
    assert x.dtype == torch.float32
    assert x.shape == (2, 4)
    expected = torch.tensor([[0, 255, 51, 102], [255, 255, 0, 1]], dtype=torch.float32) / 255.0
    assert torch.allclose(x, expected, atol=0, rtol=1e-7)
    assert x[0].tolist()[:3] == [0.0, 1.0, pytest.approx(0.2)]
    assert obs[0, 0, 1].item() == 255  # input untouched


def test_preprocess_float_kept_and_flattened():
    obs = torch.tensor([[[1.5, -2.0]], [[3.0, 4.0]]], dtype=torch.float32)
    x = preprocess(obs)
    assert x.dtype == torch.float32
    assert x.tolist() == [[1.5, -2.0], [3.0, 4.0]]


def test_preprocess_float64_becomes_float32_unscaled():
    obs = torch.tensor([[200.0, 0.25]], dtype=torch.float64)
    x = preprocess(obs)
    assert x.dtype == torch.float32
    assert x.tolist() == [[200.0, 0.25]]
