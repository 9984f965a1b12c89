"""Exercise clip_loss: CLIP's symmetric contrastive loss, checked against open_clip's ClipLoss."""

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from minidalle2.clip import clip_loss

pytestmark = pytest.mark.ex_clip_loss


def pairs(B=6, D=8):
    """B unit-norm image embeddings and B unit-norm caption embeddings, (B, D) each."""
    return F.normalize(torch.randn(B, D), dim=-1), F.normalize(torch.randn(B, D), dim=-1)


def test_matches_open_clip_cliploss():
    z_i, z_t = pairs()
    scale = torch.tensor(10.0)
    torch.testing.assert_close(clip_loss(z_i, z_t, scale), open_clip.ClipLoss()(z_i, z_t, scale))


def test_equal_scores_cost_log_B():
    """At logit scale 0 every caption scores the same: each row and column is a uniform guess among B."""
    z_i, z_t = pairs(B=6)
    assert clip_loss(z_i, z_t, 0.0).item() == pytest.approx(math.log(6), rel=1e-6)


def test_perfect_pairs_at_a_large_scale_cost_almost_nothing():
    z = torch.eye(5, 8)  # five orthonormal embeddings; caption j is image j
    assert clip_loss(z, z, 50.0).item() < 1e-10
