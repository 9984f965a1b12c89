"""Exercise text_diff: z_d = norm(z_t - z_t0), the direction of a caption edit in CLIP space."""

import math

import pytest
import torch
import torch.nn.functional as F

from minidalle2.pipeline import text_diff_direction

pytestmark = pytest.mark.ex_text_diff


def test_points_from_the_old_caption_to_the_new_one():
    z_t0, z_t = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(text_diff_direction(z_t0, z_t), torch.tensor([-1.0, 1.0]) / math.sqrt(2))


def test_unit_norm_for_a_batch():
    z_t0, z_t = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    z_d = text_diff_direction(z_t0, z_t)
    assert z_d.shape == (4, 8)
    torch.testing.assert_close(z_d.norm(dim=-1), torch.ones(4))
