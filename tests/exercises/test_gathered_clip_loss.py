"""Exercise gathered_clip_loss: one rank's share of CLIP's loss when the batch is split over N processes."""

import open_clip
import pytest
import torch
import torch.nn.functional as F

from minidalle2.clip import local_clip_loss

pytestmark = pytest.mark.ex_gathered_clip_loss


def pairs(B=6, D=8):
    """B unit-norm image embeddings and B unit-norm caption embeddings, (B, D) each."""
    return F.normalize(torch.randn(B, D), dim=-1), F.normalize(torch.randn(B, D), dim=-1)


def test_the_ranks_shares_average_to_the_whole_batch_loss():
    z_i, z_t = pairs(B=6)
    N = 3  # three ranks of b = 2 pairs each
    shares = [local_clip_loss(a, b, z_i, z_t, 10.0, r) for r, (a, b) in enumerate(zip(z_i.chunk(N), z_t.chunk(N)))]
    torch.testing.assert_close(sum(shares) / N, open_clip.ClipLoss()(z_i, z_t, torch.tensor(10.0)))


def test_one_rank_is_the_whole_batch():
    z_i, z_t = pairs(B=5)
    torch.testing.assert_close(local_clip_loss(z_i, z_t, z_i, z_t, 7.0, 0), open_clip.ClipLoss()(z_i, z_t, 7.0))


def test_each_rank_labels_its_own_pairs():
    """Rank 1's images match captions 2 and 3 of the gathered batch: with orthonormal pairs and a large scale, its
    share costs nothing; labelled as if it were rank 0 it would cost a lot."""
    z = torch.eye(4, 8)
    assert local_clip_loss(z[2:], z[2:], z, z, 50.0, 1).item() < 1e-10
    assert local_clip_loss(z[2:], z[2:], z, z, 50.0, 0).item() > 10
