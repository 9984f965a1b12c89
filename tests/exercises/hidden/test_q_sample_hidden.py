"""Exercise q_sample, hidden tests: the moments of q(x_t | x_0) with fresh noise, and float64 inputs."""

import math

import pytest
import torch

from minidalle2.diffusion import GaussianDiffusion

pytestmark = pytest.mark.ex_q_sample


def test_moments_of_q_with_fresh_noise():
    d = GaussianDiffusion(100, "linear")
    x0 = torch.tensor([1.0, -2.0, 0.5]).expand(20000, 3)  # the same x_0 many times
    for t in [0, 30, 99]:
        a = torch.cumprod(1 - d.betas, dim=0)[t].item()
        x_t = d.q_sample(x0, torch.full((20000,), t))
        torch.testing.assert_close(x_t.mean(0), math.sqrt(a) * x0[0], atol=0.03, rtol=0)
        torch.testing.assert_close(x_t.var(0), torch.full((3,), 1 - a), atol=0.03, rtol=0.05)


def test_float64_stays_float64():
    d = GaussianDiffusion(100, "linear")
    x0, eps = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    t = torch.tensor([3, 99])
    abar = torch.cumprod(1 - d.betas, dim=0)[t, None]
    x_t = d.q_sample(x0, t, eps)
    assert x_t.dtype == torch.float64
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps)
