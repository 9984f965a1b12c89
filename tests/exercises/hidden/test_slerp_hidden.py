"""Exercise slerp, hidden tests: the formula for vectors that are not unit-norm, and (nearly) parallel vectors."""

import math

import pytest
import torch

from minidalle2.pipeline import slerp

pytestmark = pytest.mark.ex_slerp


def test_matches_the_formula_with_the_angle_between_directions():
    a, b = torch.randn(3, 5, dtype=torch.float64), 2 * torch.randn(3, 5, dtype=torch.float64)
    theta = torch.tensor([0.1, 0.5, 0.8], dtype=torch.float64)
    out = slerp(a, b, theta)
    for n in range(3):
        omega = math.acos(float(a[n] @ b[n] / (a[n].norm() * b[n].norm())))
        t = theta[n].item()
        expected = math.sin((1 - t) * omega) / math.sin(omega) * a[n] + math.sin(t * omega) / math.sin(omega) * b[n]
        torch.testing.assert_close(out[n], expected)


def test_parallel_vectors_give_the_straight_line_not_nan():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    out = slerp(a, 2 * a, 0.25)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, 1.25 * a)
