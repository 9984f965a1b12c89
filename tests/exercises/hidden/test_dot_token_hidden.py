"""Exercise dot_token, hidden tests: the raw dot product (not the cosine), and the top half against a loop."""

import pytest
import torch

from minidalle2.prior_ar import filter_probs
from minidalle2.prior_ar_tokenizer import PCATokenizer

pytestmark = pytest.mark.ex_dot_token


def test_uses_the_dot_product_not_the_cosine():
    tok = PCATokenizer(n_buckets=8)
    tok.dot_lo, tok.dot_hi = torch.tensor(-4.0), torch.tensor(4.0)
    z_i = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z_t = torch.tensor([[1.5, 0.0], [0.0, -2.0], [1.0, 0.5]])  # dots 3, -2, 1.5
    assert tok.encode_dot(z_i, z_t).tolist() == [7, 2, 5]


def test_top_half_matches_a_loop():
    logits = torch.randn(5, 9)
    out = filter_probs(logits, top_half=True)
    probs = logits.softmax(-1)
    for n in range(5):
        below = 0.0
        keep = []
        for b in range(9):
            below += probs[n, b].item()
            keep.append(below >= 0.5)
        expected = torch.tensor([p if k else 0.0 for p, k in zip(probs[n].tolist(), keep)])
        torch.testing.assert_close(out[n], expected / expected.sum(), atol=1e-6, rtol=1e-5)
