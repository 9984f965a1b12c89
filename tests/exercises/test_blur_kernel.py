"""Exercise blur_kernel: k_sigma(i) = exp(-i^2 / (2 sigma^2)) / sum_j exp(-j^2 / (2 sigma^2)), i = -R .. R."""

import math

import pytest
import torch

from minidalle2.upsampler import gaussian_kernel

pytestmark = pytest.mark.ex_blur_kernel


def test_matches_the_formula_written_as_a_loop():
    sigma, R = torch.tensor([0.5, 1.0, 2.5]), 4
    k = gaussian_kernel(sigma, R)
    assert k.shape == (3, 2 * R + 1)
    for b, s in enumerate(sigma.tolist()):
        weights = [math.exp(-i * i / (2 * s * s)) for i in range(-R, R + 1)]
        for n, w in enumerate(weights):
            assert k[b, n].item() == pytest.approx(w / sum(weights), rel=1e-5, abs=1e-7)


def test_sigma_zero_is_no_blur():
    k = gaussian_kernel(torch.tensor([0.0]), 3)
    torch.testing.assert_close(k, torch.tensor([[0.0, 0, 0, 1, 0, 0, 0]]))
