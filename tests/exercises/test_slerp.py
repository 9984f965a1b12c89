"""Exercise slerp: the great circle from a to b, walked at constant speed."""

import math

import pytest
import torch
import torch.nn.functional as F

from minidalle2.pipeline import slerp

pytestmark = pytest.mark.ex_slerp


def test_slerp_in_a_plane_is_a_rotation():
    """In 2-D, a at angle 0 and b at angle Omega: slerp(a, b, theta) is the unit vector at angle theta * Omega."""
    omega = 1.2
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([math.cos(omega), math.sin(omega)])
    for theta in [0.0, 0.25, 0.5, 0.9, 1.0]:
        expected = torch.tensor([math.cos(theta * omega), math.sin(theta * omega)])
        torch.testing.assert_close(slerp(a, b, theta), expected, atol=1e-6, rtol=1e-6)


def test_slerp_stays_on_the_sphere_at_constant_speed():
    a, b = F.normalize(torch.randn(2, 16), dim=-1)
    omega = torch.arccos(a @ b)
    theta = torch.linspace(0, 1, 9)
    path = slerp(a.expand(9, -1), b.expand(9, -1), theta)  # (9, 16): one theta per row
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(9))
    torch.testing.assert_close(torch.arccos((path @ a).clamp(-1, 1)), theta * omega, atol=1e-3, rtol=0)
