"""Exercise clip_loss, hidden tests: both directions, a brute-force loop, and the gradient."""

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from minidalle2.clip import clip_loss

pytestmark = pytest.mark.ex_clip_loss


def brute_force(z_i, z_t, scale):
    """-log softmax of the matching pair, row by row (image -> caption) and column by column (caption -> image)."""
    B = len(z_i)
    s = [[scale * float(z_i[j] @ z_t[k]) for k in range(B)] for j in range(B)]
    rows = sum(-s[j][j] + math.log(sum(math.exp(s[j][k]) for k in range(B))) for j in range(B)) / B
    cols = sum(-s[k][k] + math.log(sum(math.exp(s[j][k]) for j in range(B))) for k in range(B)) / B
    return (rows + cols) / 2


def test_matches_a_loop_over_rows_and_columns():
    z_i, z_t = F.normalize(torch.randn(5, 4), dim=-1), F.normalize(torch.randn(5, 4), dim=-1)
    assert clip_loss(z_i, z_t, 7.0).item() == pytest.approx(brute_force(z_i, z_t, 7.0), rel=1e-5)


def test_is_symmetric_in_images_and_captions():
    """One direction only (rows or columns) would give different numbers here."""
    z_i = F.normalize(torch.randn(4, 6), dim=-1)
    z_t = F.normalize(z_i + torch.randn(4, 6), dim=-1)
    torch.testing.assert_close(clip_loss(z_i, z_t, 5.0), clip_loss(z_t, z_i, 5.0))


def test_gradient_matches_open_clip():
    z_i = F.normalize(torch.randn(6, 8), dim=-1).requires_grad_()
    z_t = F.normalize(torch.randn(6, 8), dim=-1).requires_grad_()
    scale = torch.tensor(20.0, requires_grad=True)
    mine = torch.autograd.grad(clip_loss(z_i, z_t, scale), (z_i, z_t, scale))
    ref = torch.autograd.grad(open_clip.ClipLoss()(z_i, z_t, scale), (z_i, z_t, scale))
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b)
