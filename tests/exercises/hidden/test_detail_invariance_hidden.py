"""Exercise detail_invariance, hidden tests: a loop over the pairs, half the squared distance, and the gradient."""

import pytest
import torch
import torch.nn.functional as F

from minidalle2.clip import invariance_loss

pytestmark = pytest.mark.ex_detail_invariance


def test_matches_a_loop_over_the_pairs_and_half_the_squared_distance():
    g = torch.Generator().manual_seed(5)
    z, w = (F.normalize(torch.randn(7, 16, generator=g), dim=-1) for _ in range(2))
    want = sum(1 - float(z[j] @ w[j]) for j in range(7)) / 7
    assert invariance_loss(z, w).item() == pytest.approx(want, rel=1e-5)
    assert invariance_loss(z, w).item() == pytest.approx(0.5 * ((z - w) ** 2).sum(-1).mean().item(), rel=1e-5)


def test_the_gradient_pulls_each_view_towards_the_other():
    g = torch.Generator().manual_seed(6)
    z = F.normalize(torch.randn(3, 8, generator=g), dim=-1).requires_grad_()
    w = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    invariance_loss(z, w).backward()
    assert ((z.grad * w).sum(-1) < 0).all()  # descending moves z towards w
