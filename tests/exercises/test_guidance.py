"""Exercise guidance: classifier-free guidance, pred = uncond + s (cond - uncond)."""

import pytest
import torch

from minidalle2.diffusion import classifier_free_guidance

pytestmark = pytest.mark.ex_guidance


def test_scale_0_is_unconditional_and_scale_1_conditional():
    cond, uncond = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0), cond)


def test_matches_a_loop_over_elements():
    cond, uncond = torch.randn(3, 5), torch.randn(3, 5)
    out = classifier_free_guidance(cond, uncond, 3.0)
    for i in range(3):
        for j in range(5):
            assert out[i, j].item() == pytest.approx(uncond[i, j].item() + 3.0 * (cond[i, j] - uncond[i, j]).item(),
                                                     rel=1e-5, abs=1e-6)
