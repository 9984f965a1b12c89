"""Exercise cosine_schedule: beta_t from abar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2)."""

import math

import pytest
import torch

from minidalle2.diffusion import cosine_beta_schedule

pytestmark = pytest.mark.ex_cosine_schedule


def f(t, T, s=0.008):
    return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2


def test_abar_is_the_cosine_closed_form():
    T = 50
    betas = cosine_beta_schedule(T)
    assert betas.shape == (T,) and betas.dtype == torch.float64
    abar = torch.cumprod(1 - betas, dim=0)  # abar_t = prod_{s<=t} (1 - beta_s)
    expected = torch.tensor([f(t + 1, T) / f(0, T) for t in range(T)], dtype=torch.float64)
    torch.testing.assert_close(abar[:-1], expected[:-1])  # the last beta is clipped, see below


def test_betas_are_clipped_at_max_beta():
    """Unclipped, beta_{T-1} = 1 - f(T) / f(T-1) = 1: all signal gone in one step, a singularity."""
    assert cosine_beta_schedule(50)[-1].item() == pytest.approx(0.999)
    betas = cosine_beta_schedule(50, max_beta=0.3)
    assert betas.max().item() == pytest.approx(0.3) and (betas > 0).all()
