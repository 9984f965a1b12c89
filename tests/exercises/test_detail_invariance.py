"""Exercise detail_invariance: L_inv = mean_j (1 - z_i_j . z'_i_j), z' the same picture with its details drawn
again."""

import pytest
import torch
import torch.nn.functional as F

from minidalle2.clip import invariance_loss

pytestmark = pytest.mark.ex_detail_invariance


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_views_with_the_same_embedding_cost_nothing():
    z = unit(5, 8)
    loss = invariance_loss(z, z.clone())
    assert loss.shape == () and loss.item() == pytest.approx(0.0, abs=1e-6)


def test_orthogonal_views_cost_one_and_opposite_views_two():
    e = torch.eye(4)
    assert invariance_loss(e[:2], e[2:]).item() == pytest.approx(1.0, abs=1e-6)
    assert invariance_loss(e, -e).item() == pytest.approx(2.0, abs=1e-6)
