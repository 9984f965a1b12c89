"""Exercise text_diff, hidden tests: a loop over the batch, and the order of the two captions."""

import pytest
import torch

from minidalle2.pipeline import text_diff_direction

pytestmark = pytest.mark.ex_text_diff


def test_matches_a_loop():
    z_t0, z_t = torch.randn(3, 5), torch.randn(3, 5)
    z_d = text_diff_direction(z_t0, z_t)
    for n in range(3):
        d = [z_t[n, k].item() - z_t0[n, k].item() for k in range(5)]
        norm = sum(v * v for v in d) ** 0.5
        torch.testing.assert_close(z_d[n], torch.tensor([v / norm for v in d]))


def test_swapping_the_captions_reverses_the_direction():
    z_t0, z_t = torch.randn(2, 4), torch.randn(2, 4)
    torch.testing.assert_close(text_diff_direction(z_t, z_t0), -text_diff_direction(z_t0, z_t))
