"""Exercise coverage: how much of a pixel a hollow shape covers, from the pixel centre's signed distance."""

import numpy as np
import pytest

from minidalle2.render import hollow_coverage

pytestmark = pytest.mark.ex_coverage


def test_the_outer_edge_ramps_over_one_pixel():
    d = np.array([-0.5, -0.25, 0.0, 0.25, 0.5, 3.0])  # within the wall, across the outer edge
    np.testing.assert_allclose(hollow_coverage(d, wall=3.0), [1.0, 0.75, 0.5, 0.25, 0.0, 0.0])


def test_hollow_keeps_the_wall_and_dims_the_inside():
    d = np.array([-10.0, -2.0, 0.0, 2.0])  # deep inside, inside the 3-pixel wall, on the edge, outside
    np.testing.assert_allclose(hollow_coverage(d, wall=3.0, inside=0.25), [0.25, 1.0, 0.5, 0.0])
