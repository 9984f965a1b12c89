"""Exercise gathered_clip_loss, hidden tests: a loop over rows and columns, unequal ranks' values, the gradient."""

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from minidalle2.clip import local_clip_loss

pytestmark = pytest.mark.ex_gathered_clip_loss


def brute_force(z_i, z_t, all_i, all_t, scale, rank):
    """-log softmax of each of the rank's pairs, its image against every caption, its caption against every image."""
    b, B = len(z_i), len(all_i)
    total = 0.0
    for j in range(b):
        k = rank * b + j
        rows = [scale * float(z_i[j] @ all_t[c]) for c in range(B)]
        cols = [scale * float(z_t[j] @ all_i[c]) for c in range(B)]
        total += -rows[k] + math.log(sum(math.exp(s) for s in rows))
        total += -cols[k] + math.log(sum(math.exp(s) for s in cols))
    return total / (2 * b)


def test_matches_a_loop_on_the_last_rank():
    all_i, all_t = F.normalize(torch.randn(8, 4), dim=-1), F.normalize(torch.randn(8, 4), dim=-1)
    got = local_clip_loss(all_i[6:], all_t[6:], all_i, all_t, 3.0, 3)
    assert got.item() == pytest.approx(brute_force(all_i[6:], all_t[6:], all_i, all_t, 3.0, 3), rel=1e-5)


def test_gradient_of_the_mean_share_is_the_whole_batch_gradient():
    """With the gathered features carrying the gradient (open_clip's gather_with_grad), the mean of the shares has
    the same gradient as the whole batch's loss: what DDP's averaging relies on."""
    z_i = F.normalize(torch.randn(6, 5), dim=-1).requires_grad_()
    z_t = F.normalize(torch.randn(6, 5), dim=-1).requires_grad_()
    N = 2
    mean = sum(local_clip_loss(a, b, z_i, z_t, 4.0, r)
               for r, (a, b) in enumerate(zip(z_i.chunk(N), z_t.chunk(N)))) / N
    mine = torch.autograd.grad(mean, (z_i, z_t))
    ref = torch.autograd.grad(open_clip.ClipLoss()(z_i, z_t, 4.0), (z_i, z_t))
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b)


def test_works_in_float64():
    all_i = F.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    all_t = F.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    got = local_clip_loss(all_i[:2], all_t[:2], all_i, all_t, 2.0, 0)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(brute_force(all_i[:2], all_t[:2], all_i, all_t, 2.0, 0), rel=1e-10)
