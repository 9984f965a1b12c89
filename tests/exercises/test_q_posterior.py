"""Exercise q_posterior: q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, beta_tilde_t I), by Bayes' rule."""

import pytest
import torch

from minidalle2.diffusion import GaussianDiffusion

pytestmark = pytest.mark.ex_q_posterior


def test_posterior_is_bayes_rule():
    """q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0), two Gaussians in x_{t-1}.
    Completing the square: precision = alpha_t / beta_t + 1 / (1 - abar_{t-1}),
    mean = (sqrt(alpha_t) x_t / beta_t + sqrt(abar_{t-1}) x_0 / (1 - abar_{t-1})) / precision."""
    d = GaussianDiffusion(100, "linear")
    x0, x_t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    t = torch.tensor([1, 2, 10, 50, 98, 99])
    beta = d.betas[t][:, None]
    abar_prev = torch.cumprod(1 - d.betas, dim=0)[t - 1][:, None]
    precision = (1 - beta) / beta + 1 / (1 - abar_prev)
    mean = ((1 - beta).sqrt() * x_t / beta + abar_prev.sqrt() * x0 / (1 - abar_prev)) / precision
    got_mean, got_var, _ = d.q_posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(got_mean, mean)
    torch.testing.assert_close(got_var, (1 / precision).expand(6, 4))


def test_coefficients_are_float64_per_timestep():
    d = GaussianDiffusion(100, "linear")
    coef_x0, coef_xt, beta_tilde = d.posterior_coefficients(torch.tensor([5, 60, 99]))
    for c in (coef_x0, coef_xt, beta_tilde):
        assert c.shape == (3,) and c.dtype == torch.float64
    assert (beta_tilde < d.betas[[5, 60, 99]]).all(), "knowing x_0 leaves less uncertainty than the step's noise"
