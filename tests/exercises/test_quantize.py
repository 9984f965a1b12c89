"""Exercise quantize: uniform buckets over [lo, hi], and the centre each bucket decodes to."""

import pytest
import torch

from minidalle2.prior_ar_tokenizer import PCATokenizer

pytestmark = pytest.mark.ex_quantize


def test_bucketize_matches_a_loop_over_buckets(bucket_by_loop):
    lo, hi, B = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 4.0]), 8  # two components, 8 buckets each
    x = torch.tensor([[-1.0, 0.0], [-0.9, 0.3], [0.1, 1.7], [0.6, 3.9], [1.0, 4.0], [-5.0, 9.0], [7.0, -2.0]])
    tokens = PCATokenizer._bucketize(x, lo, hi, B)
    assert tokens.shape == x.shape and tokens.dtype == torch.int64
    for n in range(len(x)):
        for k in range(2):
            assert tokens[n, k].item() == bucket_by_loop(x[n, k].item(), lo[k].item(), hi[k].item(), B), (n, k)


def test_bucket_centres():
    lo, hi = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 4.0])
    tokens = torch.tensor([[0, 0], [3, 7]])
    centres = PCATokenizer._centre(tokens, lo, hi, 8)
    torch.testing.assert_close(centres, torch.tensor([[-0.875, 0.25], [-0.125, 3.75]]))
