"""Exercise q_sample: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, checked example by example."""

import math

import pytest
import torch

from minidalle2.diffusion import GaussianDiffusion

pytestmark = pytest.mark.ex_q_sample


def test_q_sample_is_the_closed_form_for_each_example():
    d = GaussianDiffusion(100, "linear")
    abar = torch.cumprod(1 - d.betas, dim=0)  # from the definition, not from the stored buffers
    x0, eps = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)  # (B, C, H, W): one t per image
    t = torch.tensor([0, 10, 50, 99])
    x_t = d.q_sample(x0, t, eps)
    assert x_t.shape == x0.shape and x_t.dtype == x0.dtype
    for b in range(4):
        a = abar[t[b]].item()
        torch.testing.assert_close(x_t[b], math.sqrt(a) * x0[b] + math.sqrt(1 - a) * eps[b])


def test_q_sample_on_embeddings():
    """(B, D) tensors, as the diffusion prior noises z_i."""
    d = GaussianDiffusion(100, "linear")
    abar = torch.cumprod(1 - d.betas, dim=0).float()
    x0, eps, t = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([99, 0, 40])
    torch.testing.assert_close(d.q_sample(x0, t, eps), abar[t, None].sqrt() * x0 + (1 - abar[t, None]).sqrt() * eps)
