"""Exercise blur_kernel, hidden tests: the kernel is a probability distribution with variance sigma^2, and the
blur it makes is scipy's Gaussian filter."""

import pytest
import torch
from scipy.ndimage import gaussian_filter

from minidalle2.upsampler import gaussian_blur, gaussian_kernel

pytestmark = pytest.mark.ex_blur_kernel


@pytest.mark.parametrize("sigma", [0.8, 1.5, 2.5])  # a sampled Gaussian this wide keeps its variance
def test_sums_to_one_is_symmetric_and_has_variance_sigma_squared(sigma):
    R = 12  # wide enough that the truncated tails weigh nothing
    k = gaussian_kernel(torch.tensor([sigma], dtype=torch.float64), R)[0].double()
    i = torch.arange(-R, R + 1, dtype=torch.float64)
    assert k.sum().item() == pytest.approx(1, abs=1e-5)
    torch.testing.assert_close(k, k.flip(0))
    assert (k * i ** 2).sum().item() == pytest.approx(sigma ** 2, rel=1e-3, abs=1e-3)


def test_blurring_is_scipys_gaussian_filter():
    x = torch.rand(2, 3, 16, 16)
    sigma = torch.tensor([0.6, 1.2])
    out = gaussian_blur(x, sigma, sigma_max=2.0)  # radius 6
    for b in range(2):
        s = sigma[b].item()
        ref = gaussian_filter(x[b].numpy(), sigma=(0, s, s), mode="nearest", truncate=6 / s)
        torch.testing.assert_close(out[b], torch.from_numpy(ref), atol=1e-5, rtol=1e-5)
