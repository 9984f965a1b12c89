"""Exercise hard_negatives: L = mean_j log(1 + exp(s~_j - s_j + exp(tau) m)), one hard negative per image."""

import math

import pytest
import torch
import torch.nn.functional as F

from minidalle2.clip import swap_loss

pytestmark = pytest.mark.ex_hard_negatives


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_a_negative_as_near_as_the_caption_costs_log_2():
    z_i, z_t = unit(5, 8), unit(5, 8, seed=1)
    assert swap_loss(z_i, z_t, z_t, 10.0).item() == pytest.approx(math.log(2), abs=1e-6)


def test_the_margin_raises_the_bar_by_scale_times_m():
    z_i, z_t = unit(5, 8), unit(5, 8, seed=1)
    loss = swap_loss(z_i, z_t, z_t, 10.0, margin=0.3)
    assert loss.shape == () and loss.item() == pytest.approx(math.log(1 + math.exp(3.0)), abs=1e-5)


def test_the_image_s_own_caption_far_ahead_costs_nothing():
    z_i = unit(4, 8)
    assert swap_loss(z_i, z_i, -z_i, 100.0).item() < 1e-8
