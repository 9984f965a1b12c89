"""Exercise coverage, hidden tests: the inner edge is anti-aliased like the outer one, and a drawn hollow shape
agrees with the formula pixel by pixel."""

import numpy as np
import pytest

from minidalle2.render import HOLLOW_INSIDE, HOLLOW_WALL, Details, _pixel_centres, draw, hollow_coverage, sdf

pytestmark = pytest.mark.ex_coverage


def test_inner_edge_ramps_over_one_pixel():
    wall, inside = 2.0, 0.4
    d = np.array([-2.5, -2.25, -2.0, -1.75, -1.5])  # across the inner edge at d = -wall
    expected = 1 - (1 - inside) * np.clip(0.5 - (d + wall), 0, 1)
    np.testing.assert_allclose(hollow_coverage(d, wall=wall, inside=inside), expected)
    np.testing.assert_allclose(hollow_coverage(d, wall=wall, inside=inside)[[0, 2, 4]], [inside, 0.7, 1.0])


def test_a_drawn_hollow_circle_matches_the_formula():
    size, r, rgb = 32, 0.19, (200, 100, 50)
    img = draw([(rgb, "circle", 0.25, 0.25, r)], size, Details("black", ("hollow",), ("",)))
    x, y = _pixel_centres(size)
    dist = sdf("circle", x - 0.25, y - 0.25, r) * size
    alpha = np.clip(0.5 - dist, 0, 1) - (1 - HOLLOW_INSIDE) * np.clip(0.5 - (dist + HOLLOW_WALL * r * size), 0, 1)
    expected = (alpha[..., None] * np.asarray(rgb, np.float32) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(img, expected)
