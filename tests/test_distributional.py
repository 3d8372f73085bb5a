"""C51's projection and QR-DQN's quantile Huber loss against hand-computed values and the
papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from fastdqn.learners.losses.c51 import categorical_loss, project_onto_support
from fastdqn.learners.losses.qr import quantile_huber_loss, quantile_midpoints

SUPPORT = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])  # Δz = 1


def one_hot(i: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor([i]), len(SUPPORT)).float()


def project(probs: torch.Tensor, r: float, done: float, discount: float) -> list[float]:
    out = project_onto_support(probs, torch.tensor([r]), torch.tensor([done]),
                               torch.tensor([discount]), SUPPORT)
    return [round(v, 6) for v in out[0].tolist()]


@pytest.mark.parametrize(("probs", "r", "done", "discount", "want"), [
    # a termination: every atom lands on r = 0.5, split between the atoms 0 and 1
    (torch.full((1, 5), 0.2), 0.5, 1.0, 0.99, [0, 0, 0.5, 0.5, 0]),
    # a target exactly on an atom keeps all of its mass (the scatter form's lost-mass case)
    (one_hot(2), 1.0, 0.0, 1.0, [0, 0, 0, 1, 0]),
    (one_hot(4), -1.0, 0.0, 0.5, [0, 0, 1, 0, 0]),
    # a truncated window bootstraps with its own γ^k: 0.5 · 1 = 0.5, half on 0 and half on 1
    (one_hot(3), 0.0, 0.0, 0.5, [0, 0, 0.5, 0.5, 0]),
    (one_hot(3), 0.0, 0.0, 0.25, [0, 0, 0.75, 0.25, 0]),
    # beyond the support: clamped onto its end atoms
    (torch.full((1, 5), 0.2), 5.0, 0.0, 1.0, [0, 0, 0, 0, 1]),
    (torch.full((1, 5), 0.2), -7.0, 0.0, 0.9, [1, 0, 0, 0, 0]),
    (one_hot(0), 0.0, 0.0, 2.0, [1, 0, 0, 0, 0]),
])
def test_the_projection_of_hand_computed_targets(probs, r, done, discount, want):
    assert project(probs, r, done, discount) == pytest.approx(want, abs=1e-6)


def floor_ceil_projection(probs: torch.Tensor, r: torch.Tensor, done: torch.Tensor,
                          discount: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The classic projection (Bellemare et al. 2017, algorithm 1), row by row, with the usual
    fix for a target on an atom (floor == ceil: all its mass there, which the plain form
    drops)."""
    dz, out = float(z[1] - z[0]), torch.zeros_like(probs)
    for b in range(len(probs)):
        for i, zi in enumerate(z.tolist()):
            tz = min(max(float(r[b] + discount[b] * (1 - done[b]) * zi), z[0].item()), z[-1].item())
            pos = min(max((tz - z[0].item()) / dz, 0.0), len(z) - 1.0)
            lo, hi = math.floor(pos), math.ceil(pos)
            if lo == hi:
                out[b, lo] += probs[b, i]
                continue
            out[b, lo] += probs[b, i] * (hi - pos)
            out[b, hi] += probs[b, i] * (pos - lo)
    return out


def test_the_projection_matches_the_classic_form_and_keeps_all_mass():
    g = torch.Generator().manual_seed(0)
    z = torch.linspace(-10, 10, 51)
    probs = torch.softmax(torch.randn(64, 51, generator=g), 1)
    r = torch.rand(64, generator=g) * 6 - 3  # many beyond the support: on its end atoms
    done = (torch.rand(64, generator=g) < 0.2).float()
    discount = 0.99 ** torch.randint(1, 4, (64,), generator=g).float()
    got = project_onto_support(probs, r, done, discount, z)
    torch.testing.assert_close(got, floor_ceil_projection(probs, r, done, discount, z),
                               rtol=0, atol=1e-4)  # float32 against float64
    torch.testing.assert_close(got.sum(1), torch.ones(64))


def test_the_cross_entropy_of_a_one_hot_target_is_minus_its_log_probability():
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5, -1.0]])
    want = -torch.log_softmax(logits, 1)[0, 3]
    torch.testing.assert_close(categorical_loss(logits, one_hot(3)), want.reshape(1))


def test_quantile_midpoints():
    assert quantile_midpoints(4).tolist() == [0.125, 0.375, 0.625, 0.875]


@pytest.mark.parametrize(("target", "want"), [
    (1.0, 0.25 * 0.5 + 0.75 * 0.5),  # u = 1 ≤ κ: L = u²/2, weights τ̂ (u ≥ 0)
    (-3.0, 0.75 * 2.5 + 0.25 * 2.5),  # u = −3: L = κ(|u| − κ/2), weights 1 − τ̂
    (0.0, 0.0),
])
def test_the_quantile_huber_loss_of_hand_computed_cases(target, want):
    loss = quantile_huber_loss(torch.zeros(1, 2), torch.tensor([[target]]))
    assert loss.item() == pytest.approx(want)


def test_the_quantile_huber_loss_matches_its_formula():
    g = torch.Generator().manual_seed(1)
    q, t, kappa = torch.randn(3, 4, generator=g) * 2, torch.randn(3, 5, generator=g) * 2, 1.5
    want = torch.zeros(3)
    for b in range(3):
        for i in range(4):
            tau = (2 * i + 1) / 8
            for j in range(5):
                u = float(t[b, j] - q[b, i])
                huber = 0.5 * u * u if abs(u) <= kappa else kappa * (abs(u) - 0.5 * kappa)
                want[b] += abs(tau - (u < 0)) * huber / kappa / 5
    torch.testing.assert_close(quantile_huber_loss(q, t, kappa), want)


def test_the_quantile_loss_pulls_each_quantile_toward_its_level():
    """Gradient descent on the loss against a fixed sample puts quantile i near the τ̂_i
    quantile of the samples."""
    samples = torch.arange(100, dtype=torch.float32).reshape(1, -1)
    q = torch.zeros(1, 4, requires_grad=True)
    opt = torch.optim.Adam([q], lr=0.5)
    for _ in range(2000):
        opt.zero_grad()
        quantile_huber_loss(q, samples).sum().backward()
        opt.step()
    want = torch.tensor([12.5, 37.5, 62.5, 87.5])
    torch.testing.assert_close(q.detach()[0], want, atol=1.5, rtol=0)


@pytest.mark.parametrize("kappa", [1.0, 0.5, 3.0])
def test_the_quantile_huber_loss_gradients_are_autograds_of_its_formula(kappa):
    """The loss's hand-written backward against autograd through the elementwise formula, for
    both arguments (float64, so any difference is a wrong derivative, not rounding)."""
    gen = torch.Generator().manual_seed(3)
    q = (torch.randn(6, 5, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    t = (torch.randn(6, 7, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    u = t.unsqueeze(1) - q.unsqueeze(2)
    huber = torch.where(u.abs() <= kappa, 0.5 * u.pow(2), kappa * (u.abs() - 0.5 * kappa))
    tau = quantile_midpoints(5).to(torch.float64).reshape(1, -1, 1)
    formula = ((tau - (u.detach() < 0).double()).abs() * huber / kappa).mean(2).sum(1)
    ours = quantile_huber_loss(q, t, kappa)
    assert torch.allclose(ours, formula, atol=1e-12)
    w = torch.arange(1.0, 7.0, dtype=torch.float64)  # a different weight per row
    want = torch.autograd.grad((formula * w).sum(), (q, t))
    got = torch.autograd.grad((ours * w).sum(), (q, t))
    for g, h in zip(got, want):
        assert torch.allclose(g, h, atol=1e-12)
