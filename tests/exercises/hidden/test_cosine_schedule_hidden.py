"""Exercise cosine_schedule, hidden tests: the offset s, other lengths T, each beta from a loop."""

import math

import pytest
import torch

from minidalle2.diffusion import cosine_beta_schedule

pytestmark = pytest.mark.ex_cosine_schedule


def f(t, T, s):
    return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2


@pytest.mark.parametrize("T, s, max_beta", [(1, 0.008, 0.999), (7, 0.1, 0.999), (1000, 0.008, 0.999), (30, 0.0, 0.5)])
def test_every_beta_matches_a_loop(T, s, max_beta):
    betas = cosine_beta_schedule(T, s=s, max_beta=max_beta)
    assert betas.shape == (T,) and betas.dtype == torch.float64
    for t in range(T):
        assert betas[t].item() == pytest.approx(min(1 - f(t + 1, T, s) / f(t, T, s), max_beta), rel=1e-9)


def test_noise_grows_from_almost_none_to_almost_all():
    abar = torch.cumprod(1 - cosine_beta_schedule(1000), dim=0)
    assert (abar[1:] < abar[:-1]).all() and abar[0] > 0.9999 and abar[-1] < 1e-6
