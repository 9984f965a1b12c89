"""Exercise dot_token: the bucket of z_i . z_t, and sampling it from the top half of its distribution."""

import pytest
import torch
import torch.nn.functional as F

from minidalle2.prior_ar import filter_probs
from minidalle2.prior_ar_tokenizer import PCATokenizer

pytestmark = pytest.mark.ex_dot_token


def test_dot_token_is_the_bucket_of_the_dot_product():
    tok = PCATokenizer(n_buckets=4)
    tok.dot_lo, tok.dot_hi = torch.tensor(-0.5), torch.tensor(1.0)  # as fit() sets them from training pairs
    edges = [-0.5 + 0.375 * (b + 1) for b in range(4)]  # upper edge of each bucket
    z_i, z_t = F.normalize(torch.randn(50, 6), dim=-1), F.normalize(torch.randn(50, 6), dim=-1)
    tokens = tok.encode_dot(z_i, z_t)
    assert tokens.shape == (50,) and tokens.dtype == torch.int64
    for n in range(50):
        dot = sum(z_i[n, d].item() * z_t[n, d].item() for d in range(6))
        assert tokens[n].item() == next((b for b in range(4) if dot < edges[b]), 3), n


def test_top_half_keeps_the_buckets_from_the_median_up():
    """Bucket b survives when P(dot <= b) >= 1/2; the rest are removed and the survivors renormalised.
    Buckets are in value order, so this keeps the upper half of the dot products the prior expects."""
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.6, 0.2, 0.1, 0.1]])  # second row: the median is bucket 0
    out = filter_probs(probs.log(), top_half=True)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 3 / 7, 4 / 7], [0.6, 0.2, 0.1, 0.1]]))
