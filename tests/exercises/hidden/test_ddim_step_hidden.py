"""Exercise ddim_step, hidden tests: eta = 1 is a DDPM step, and the exact noise lands on x_0."""

import math

import pytest
import torch

from minidalle2.diffusion import GaussianDiffusion

pytestmark = pytest.mark.ex_ddim_step


def test_eta_one_single_step_is_the_ddpm_posterior():
    """With t_prev = t - 1 and eta = 1: sigma^2 = beta_tilde_t, and the mean is mu_tilde(x0_hat, x_t)."""
    d = GaussianDiffusion(100, "linear")
    abar = torch.cumprod(1 - d.betas, dim=0)
    x_t, eps_hat = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([1, 20, 60, 99])
    model = lambda x, t: eps_hat  # noqa: E731
    noisy = d.ddim_sample(model, x_t, t, t - 1, eta=1.0, generator=torch.Generator().manual_seed(3))["sample"]
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(3)).double()
    a, a_prev, beta = abar[t, None], abar[t - 1, None], d.betas[t, None]
    x0_hat = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()
    mu = a_prev.sqrt() * beta / (1 - a) * x0_hat + (1 - beta).sqrt() * (1 - a_prev) / (1 - a) * x_t
    beta_tilde = (1 - a_prev) / (1 - a) * beta
    torch.testing.assert_close(noisy, mu + beta_tilde.sqrt() * z)


def test_the_true_noise_takes_x_t_to_x_0_in_one_step():
    d = GaussianDiffusion(100, "linear")
    abar = torch.cumprod(1 - d.betas, dim=0)
    x0, eps = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([5, 40, 80])
    a = abar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps  # by hand: q_sample is another exercise
    out = d.ddim_sample(lambda x, t: eps, x_t, t, -1, eta=0.0)
    torch.testing.assert_close(out["sample"], x0)
    torch.testing.assert_close(out["pred_x0"], x0)


def test_deterministic_step_in_float64():
    """eta = 0 keeps x0_hat and eps_hat and only re-mixes them at the new noise level."""
    d = GaussianDiffusion(100, "linear")
    abar = torch.cumprod(1 - d.betas, dim=0)
    x_t, eps_hat = torch.randn(1, 6, dtype=torch.float64), torch.randn(1, 6, dtype=torch.float64)
    t = torch.tensor([70])
    x0_hat = (x_t - (1 - abar[70]).sqrt() * eps_hat) / abar[70].sqrt()
    out = d.ddim_sample(lambda x, t: eps_hat, x_t, t, 30, eta=0.0)["sample"]
    torch.testing.assert_close(out, math.sqrt(abar[30]) * x0_hat + math.sqrt(1 - abar[30]) * eps_hat)
