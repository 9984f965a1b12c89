"""Exercise hard_negatives, hidden tests: a loop over the images, and the gradient that pushes the negative away."""

import math

import pytest
import torch
import torch.nn.functional as F

from minidalle2.clip import swap_loss

pytestmark = pytest.mark.ex_hard_negatives


def test_matches_a_loop_over_the_images():
    g = torch.Generator().manual_seed(3)
    z_i, z_t, z_neg = (F.normalize(torch.randn(6, 16, generator=g), dim=-1) for _ in range(3))
    scale, m = 20.0, 0.15
    want = sum(math.log(1 + math.exp(scale * (float(z_i[j] @ z_neg[j]) - float(z_i[j] @ z_t[j]) + m)))
               for j in range(6)) / 6
    assert swap_loss(z_i, z_t, z_neg, scale, margin=m).item() == pytest.approx(want, rel=1e-5)


def test_the_gradient_lowers_the_negative_s_score_and_raises_the_caption_s():
    g = torch.Generator().manual_seed(4)
    z_i = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    z_t = F.normalize(torch.randn(3, 8, generator=g), dim=-1).requires_grad_()
    z_neg = F.normalize(torch.randn(3, 8, generator=g), dim=-1).requires_grad_()
    swap_loss(z_i, z_t, z_neg, torch.tensor(10.0), margin=0.2).backward()
    assert ((z_neg.grad * z_i).sum(-1) > 0).all()  # descending moves z_neg away from z_i
    assert ((z_t.grad * z_i).sum(-1) < 0).all()  # and z_t towards it
