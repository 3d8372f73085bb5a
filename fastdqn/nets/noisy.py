"""Factorized Gaussian noisy linear layers (Fortunato et al. 2018, "Noisy Networks for
Exploration", section 3.1): exploration by learned parameter noise instead of epsilon-greedy.

    y = (mu_W + sigma_W * eps_W) x + mu_b + sigma_b * eps_b,
    eps_W = f(eps_out) f(eps_in)^T,  eps_b = f(eps_out),  f(x) = sign(x) sqrt(|x|)

with eps_in, eps_out standard normal, mu ~ U(-1/sqrt(p), 1/sqrt(p)) and sigma = sigma0 / sqrt(p)
(p = fan in, sigma0 = 0.5: the paper's factorized initialization).

Noise schedule. In training mode every forward pass draws new noise: the paper resamples for
every action step and every replay update, and here the online, target and double-DQN
selection passes of an update each draw their own sample (one per pass, shared by the batch's
rows, as the paper's learner). Acting draws one sample per row (`per_row_noise`): the 16 envs
of one acting pass each explore with their own network, where one shared sample would make them
all explore alike. Factorized noise makes a sample per row one extra matrix product,
(sigma_W * f(eps_out) f(eps_in)^T) x = f(eps_out) * (sigma_W (f(eps_in) * x)); for a replay batch
of 128 rows it would cost 2x the plain step (measured), for 16 envs nothing beside the env step.

In eval mode (`module.eval()`) the layer is its mean weights, mu: evaluation measures the policy
the agent has learned, not one noise draw of it, and two evaluations of one checkpoint agree.

The noise comes from the layer's `generator` (a seeded torch.Generator on the layer's device,
set by `seed_noise`): a run's noise is reproducible, and copies of a network (the target) are
given generators of their own, never a copy of the online one's state.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

SIGMA0 = 0.5
"""sigma0 of the factorized initialization, Fortunato et al. 2018 (section 3.2)."""


def _scaled(x: torch.Tensor) -> torch.Tensor:
    """f(x) = sign(x) sqrt(|x|), the paper's transform of factorized noise."""
    return x.sign() * x.abs().sqrt()


class NoisyLinear(torch.nn.Module):
    """A linear layer with learned, factorized Gaussian weight noise (see the module docstring).
    `weight` and `bias` are the means, so `y = F.linear(x, weight, bias)` in eval mode."""

    def __init__(self, in_features: int, out_features: int, sigma0: float = SIGMA0) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = torch.nn.Parameter(torch.empty(out_features, in_features))
        self.bias = torch.nn.Parameter(torch.empty(out_features))
        self.weight_sigma = torch.nn.Parameter(torch.empty(out_features, in_features))
        self.bias_sigma = torch.nn.Parameter(torch.empty(out_features))
        self.generator: torch.Generator | None = None
        self.per_row = False
        bound = 1.0 / math.sqrt(in_features)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.bias.uniform_(-bound, bound)
            self.weight_sigma.fill_(sigma0 * bound)
            self.bias_sigma.fill_(sigma0 * bound)

    def noise(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """f(eps_in) [rows, in] and f(eps_out) [rows, out]: one factorized sample per row."""
        dev = self.weight.device
        eps_in = torch.randn(rows, self.in_features, device=dev, generator=self.generator)
        eps_out = torch.randn(rows, self.out_features, device=dev, generator=self.generator)
        return _scaled(eps_in), _scaled(eps_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        if not self.per_row:  # one sample for the pass: the noisy weights themselves
            eps_in, eps_out = self.noise(1)
            weight = self.weight + self.weight_sigma * (eps_out.t() * eps_in)
            return torch.nn.functional.linear(x, weight, self.bias + self.bias_sigma * eps_out[0])
        eps_in, eps_out = self.noise(x.shape[0])
        mean = torch.nn.functional.linear(x, self.weight, self.bias)
        noise = torch.nn.functional.linear(x * eps_in, self.weight_sigma) + self.bias_sigma
        return mean + noise * eps_out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, factorized"


def noisy_layers(module: torch.nn.Module) -> list[NoisyLinear]:
    """The module's noisy layers, in order."""
    return [m for m in module.modules() if isinstance(m, NoisyLinear)]


def seed_noise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give the module's noisy layers `generator` to draw from (one stream for the module: its
    layers draw in forward order, so the stream is reproducible)."""
    for layer in noisy_layers(module):
        layer.generator = generator


@contextlib.contextmanager
def per_row_noise(module: torch.nn.Module) -> Iterator[None]:
    """Within it, the module's noisy layers draw a sample per row (acting: each env its own)."""
    layers = noisy_layers(module)
    for layer in layers:
        layer.per_row = True
    try:
        yield
    finally:
        for layer in layers:
            layer.per_row = False


def noise_generator(module: torch.nn.Module) -> torch.Generator | None:
    """The generator the module's noisy layers draw from (None: no noisy layers)."""
    layers = noisy_layers(module)
    return layers[0].generator if layers else None
