"""Exercise q_posterior, hidden tests: Gaussian conditioning, and t = 0."""

import pytest
import torch

from minidalle2.diffusion import GaussianDiffusion

pytestmark = pytest.mark.ex_q_posterior


def test_posterior_is_gaussian_conditioning():
    """Given x_0, (x_{t-1}, x_t) are jointly Gaussian per coordinate: x_{t-1} = sqrt(abar_{t-1}) x_0 + ..., and
    x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps. So E[x_{t-1} | x_t] = mu_1 + c / v_2 (x_t - mu_2) and
    Var = v_1 - c^2 / v_2, with v_1 = 1 - abar_{t-1}, v_2 = 1 - abar_t, c = sqrt(alpha_t) v_1."""
    d = GaussianDiffusion(50, "linear")
    abar = torch.cumprod(1 - d.betas, dim=0)
    x0, x_t = torch.randn(5, 3, 2, 2, dtype=torch.float64), torch.randn(5, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([1, 7, 20, 33, 49])
    a, a_prev = abar[t].view(-1, 1, 1, 1), abar[t - 1].view(-1, 1, 1, 1)
    alpha = 1 - d.betas[t].view(-1, 1, 1, 1)
    v1, v2 = 1 - a_prev, 1 - a
    c = alpha.sqrt() * v1
    mean = a_prev.sqrt() * x0 + c / v2 * (x_t - a.sqrt() * x0)
    got_mean, got_var, got_log_var = d.q_posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(got_mean, mean)
    torch.testing.assert_close(got_var, (v1 - c ** 2 / v2).expand_as(x_t))
    torch.testing.assert_close(got_log_var, got_var.log())


def test_at_t0_the_posterior_is_the_data_itself():
    d = GaussianDiffusion(100, "linear")
    x0, x_t = torch.randn(3, 4), torch.randn(3, 4)
    mean, var, log_var = d.q_posterior_mean_variance(x0, x_t, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all() and torch.isfinite(log_var).all()
