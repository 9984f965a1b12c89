"""Exercise guidance, hidden tests: a scale above 1 extrapolates past the conditional prediction."""

import pytest
import torch

from minidalle2.diffusion import classifier_free_guidance

pytestmark = pytest.mark.ex_guidance


@pytest.mark.parametrize("s", [0.5, 2.0, 7.5])
def test_guided_minus_conditional_is_s_minus_1_times_the_condition_direction(s):
    cond, uncond = torch.randn(4, 16), torch.randn(4, 16)  # e.g. logits over 16 buckets of the AR prior
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, s) - cond, (s - 1) * (cond - uncond))


def test_same_predictions_are_left_alone():
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(classifier_free_guidance(x, x.clone(), 4.0), x)
