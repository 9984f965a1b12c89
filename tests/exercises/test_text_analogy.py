"""Exercise text_analogy: z_i' = norm(z_i + z_to - z_from), a caption edit carried out in image-embedding space."""

import pytest
import torch
import torch.nn.functional as F

from minidalle2.pipeline import analogy_target

pytestmark = pytest.mark.ex_text_analogy


def test_adds_the_difference_and_renormalises():
    z_i, z_from, z_to = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    torch.testing.assert_close(analogy_target(z_i, z_from, z_to), torch.tensor([1.0, -1.0, 1.0]) / 3**0.5)


def test_an_empty_edit_keeps_the_image_and_a_batch_stays_unit_norm():
    z_i, z = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    torch.testing.assert_close(analogy_target(z_i, z, z), z_i)  # from = to: nothing to change
    out = analogy_target(z_i, z, F.normalize(torch.randn(4, 8), dim=-1))
    assert out.shape == (4, 8)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
