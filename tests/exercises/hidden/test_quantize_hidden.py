"""Exercise quantize, hidden tests: random values against the loop, and the half-bucket error bound."""

import pytest
import torch

from minidalle2.prior_ar_tokenizer import PCATokenizer

pytestmark = pytest.mark.ex_quantize


def test_random_values_match_the_loop(bucket_by_loop):
    lo, hi, B = torch.tensor([-3.0, 0.5, -0.2]), torch.tensor([2.0, 0.9, 5.0]), 5
    x = lo + (hi - lo) * (1.4 * torch.rand(300, 3) - 0.2)  # some outside [lo, hi]
    tokens = PCATokenizer._bucketize(x, lo, hi, B)
    expected = [[bucket_by_loop(x[n, k].item(), lo[k].item(), hi[k].item(), B) for k in range(3)] for n in range(300)]
    assert tokens.tolist() == expected


def test_decoding_is_within_half_a_bucket():
    lo, hi, B = torch.tensor([-2.0, 1.0]), torch.tensor([2.0, 1.5]), 16
    x = lo + (hi - lo) * torch.rand(1000, 2)  # inside the range
    error = (PCATokenizer._centre(PCATokenizer._bucketize(x, lo, hi, B), lo, hi, B) - x).abs()
    assert (error <= (hi - lo) / (2 * B) + 1e-6).all()


def test_scalar_range_as_for_the_dot_token():
    tokens = PCATokenizer._bucketize(torch.tensor([-1.0, -0.2, 0.3, 0.99]), torch.tensor(-1.0), torch.tensor(1.0), 4)
    assert tokens.tolist() == [0, 1, 2, 3]
