"""Exercise text_analogy, hidden tests: a loop over the batch, and the image of the "from" caption lands on "to"."""

import pytest
import torch
import torch.nn.functional as F

from minidalle2.pipeline import analogy_target

pytestmark = pytest.mark.ex_text_analogy


def test_matches_a_loop():
    z_i, z_from, z_to = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    out = analogy_target(z_i, z_from, z_to)
    for n in range(3):
        v = [z_i[n, k].item() + z_to[n, k].item() - z_from[n, k].item() for k in range(5)]
        norm = sum(x * x for x in v) ** 0.5
        torch.testing.assert_close(out[n], torch.tensor([x / norm for x in v]))


def test_the_from_image_itself_is_taken_to_the_to_image():
    z_from, z_to = F.normalize(torch.randn(2, 6), dim=-1), F.normalize(torch.randn(2, 6), dim=-1)
    torch.testing.assert_close(analogy_target(z_from, z_from, z_to), z_to)
