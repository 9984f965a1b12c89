"""Exercise ddim_step: one DDIM step (Song et al. 2021, Eq. 12), checked example by example.

    x_{t_prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
"""

import math

import pytest
import torch

from minidalle2.diffusion import GaussianDiffusion

pytestmark = pytest.mark.ex_ddim_step


def abar_of(d, t):
    """abar_t from the betas, with abar_{-1} = 1 (clean data)."""
    return 1.0 if t < 0 else torch.cumprod(1 - d.betas, dim=0)[t].item()


def expected_step(d, x_t, eps_hat, t, t_prev, eta, z):
    """One example, with plain floats."""
    a, a_prev = abar_of(d, t), abar_of(d, t_prev)
    x0_hat = (x_t - math.sqrt(1 - a) * eps_hat) / math.sqrt(a)
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
    return math.sqrt(a_prev) * x0_hat + math.sqrt(1 - a_prev - sigma ** 2) * eps_hat + sigma * z


def test_deterministic_step_matches_the_formula():
    d = GaussianDiffusion(100, "linear")  # predicts eps
    x_t, eps_hat = torch.randn(3, 4), torch.randn(3, 4)
    t, t_prev = torch.tensor([90, 50, 10]), torch.tensor([70, 20, -1])
    out = d.ddim_sample(lambda x, t: eps_hat, x_t, t, t_prev, eta=0.0)
    for b in range(3):
        ref = expected_step(d, x_t[b], eps_hat[b], t[b].item(), t_prev[b].item(), 0.0, 0.0)
        torch.testing.assert_close(out["sample"][b], ref, atol=1e-4, rtol=1e-4)


def test_eta_adds_sigma_times_fresh_noise():
    d = GaussianDiffusion(100, "linear")
    x_t, eps_hat = torch.randn(2, 5), torch.randn(2, 5)
    t = torch.tensor([60, 30])
    out = d.ddim_sample(lambda x, t: eps_hat, x_t, t, 20, eta=0.5, generator=torch.Generator().manual_seed(1))
    z = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))  # the sampler's only random draw
    for b in range(2):
        ref = expected_step(d, x_t[b], eps_hat[b], t[b].item(), 20, 0.5, z[b])
        torch.testing.assert_close(out["sample"][b], ref, atol=1e-4, rtol=1e-4)
