"""Drawing the shapes data: signed distances, anti-aliasing, and the details no caption states.

A shape is drawn from its signed distance d(x, y) to the edge (negative inside). A pixel whose centre lies d
pixels inside the edge is covered by clip(0.5 - d, 0, 1): one pixel of anti-aliasing, computed, not sampled.

Details (``Details``, on with ``ShapesConfig(details=True)``): what a photo holds beyond its caption. No caption
ever names them, so nothing in CLIP's contrastive objective asks z_i to keep them, and unCLIP's variations
(decode z_i again with fresh noise) are free to change them. Each is drawn per image (the background) or per
object (fill, turn), from a palette chosen so that no detail can be read as a stated attribute:

    background  black | grey | brown | slate   dark tints, far below every object colour's brightness
    fill        solid | hollow                 hollow: the inside of the shape at a quarter of its colour
    turn        upright | turned               triangles point down, crosses become an x (other shapes: n/a,
                                               since a turned square or diamond would read as the other)

The plain render (``details=None``) is the (black, solid, upright) corner of this space, drawn bit for bit as
before details existed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

SUPPORTED_SIZES = (16, 32, 64)
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "grey": (62, 62, 62), "brown": (78, 48, 18),
                                                "slate": (18, 40, 84)}
FILLS = ("solid", "hollow")
TURNS = ("upright", "turned")
TURNABLE = ("triangle", "cross")  # the shapes a turn changes and cannot confuse with another shape
DETAILS = {"background": tuple(BACKGROUNDS), "fill": FILLS, "turn": TURNS}  # detail -> its values
HOLLOW_WALL = 0.3   # a hollow shape's wall, as a fraction of its radius
HOLLOW_INSIDE = 0.25  # the share of its colour a hollow shape keeps inside the wall


@dataclass(frozen=True)
class Details:
    """The unstated details of one image: its background, and each object's fill and turn ("" where a turn
    does not apply)."""
    background: str
    fill: tuple[str, ...]
    turn: tuple[str, ...]

    def attributes(self) -> dict:
        """Flat ground truth beside the scene's: background, fill0, fill1, turn0, turn1 ("" where absent)."""
        attrs = {"background": self.background}
        for k in range(2):
            attrs[f"fill{k}"] = self.fill[k] if k < len(self.fill) else ""
            attrs[f"turn{k}"] = self.turn[k] if k < len(self.turn) else ""
        return attrs


def sample_details(rng: np.random.Generator, shapes: tuple[str, ...]) -> Details:
    """Uniform over each palette, independently of the scene (its ``shapes`` only say where a turn applies)."""
    background = tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    fill = tuple(FILLS[rng.integers(len(FILLS))] for _ in shapes)
    turn = tuple(TURNS[rng.integers(len(TURNS))] if s in TURNABLE else "" for s in shapes)
    return Details(background, fill, turn)


def check_image_size(image_size: int) -> None:
    """Refuse an image side the shapes data (and the models built for it) do not come in."""
    if image_size not in SUPPORTED_SIZES:
        raise ValueError(f"image size {image_size} is not supported; use one of {SUPPORTED_SIZES}")


@functools.lru_cache(maxsize=None)
def _pixel_centres(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """x as a (1, S) row and y as an (S, 1) column: broadcasting them gives the (S, S) grid for free."""
    c = ((np.arange(image_size) + 0.5) / image_size).astype(np.float32)
    return c[None, :], c[:, None]


def _box_sdf(x, y, half_w, half_h):
    """Signed distance to an axis-aligned box: positive outside, negative inside."""
    qx, qy = np.abs(x) - half_w, np.abs(y) - half_h
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0)


def sdf(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (image units) from points (x, y), relative to the centre, to a shape of radius r.

    Polygons (triangle, diamond) use the largest distance to their edge lines: exact along the edges,
    slightly generous beyond the corners, which at half a pixel is invisible.
    """
    if shape == "circle":
        return np.sqrt(x * x + y * y) - r
    if shape == "square":
        return _box_sdf(x, y, 0.8 * r, 0.8 * r)
    if shape == "diamond":
        return (np.abs(x) + np.abs(y) - r) / np.sqrt(2)
    if shape == "triangle":  # equilateral, apex up, side 2r, centred in its bounding box
        h = np.sqrt(3) / 2 * r
        return np.maximum(np.sqrt(3) / 2 * np.abs(x) - 0.5 * (y + h), y - h)
    if shape == "cross":
        return np.minimum(_box_sdf(x, y, r, 0.33 * r), _box_sdf(x, y, 0.33 * r, r))
    raise ValueError(f"unknown shape {shape!r}; choose one of: circle, square, triangle, diamond, cross")


def _turned(shape: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of the turned shape: a triangle rotated by 180 degrees, a cross by 45."""
    if shape == "triangle":
        return -x, -y
    c = np.float32(np.sqrt(0.5))
    return c * (x + y), c * (y - x)


def hollow_coverage(dist: np.ndarray, wall: float, inside: float = HOLLOW_INSIDE) -> np.ndarray:
    """How much of each pixel a hollow shape covers, from d = its signed distance in pixels (negative inside).

    solid:   alpha = clip(0.5 - d, 0, 1)                      (one pixel of anti-aliasing across the edge)
    hollow:  alpha - (1 - inside) * clip(0.5 - (d + wall), 0, 1)
             the points deeper than ``wall`` pixels keep only ``inside`` of the colour; the inner edge at
             d = -wall is anti-aliased like the outer one
    """
    # BEGIN SOLUTION
    alpha = np.clip(0.5 - dist, 0, 1)
    return alpha - (1 - inside) * np.clip(0.5 - (dist + wall), 0, 1)
    # END SOLUTION


def draw(objects, image_size: int, details: Details | None = None) -> np.ndarray:
    """uint8 (S, S, 3) of ``objects``: (rgb, shape, cx, cy, radius) each, cx and cy in image units, drawn in order.

    Each object is blended over what is drawn: img = img * (1 - alpha) + rgb * alpha, with a solid shape's
    coverage alpha = clip(0.5 - d, 0, 1) (d its signed distance in pixels) and a hollow one's ``hollow_coverage``,
    whose wall is HOLLOW_WALL * radius."""
    check_image_size(image_size)
    x, y = _pixel_centres(image_size)
    background = BACKGROUNDS[details.background] if details else (0, 0, 0)
    img = np.broadcast_to(np.asarray(background, np.float32), (image_size, image_size, 3))
    for k, (rgb, shape, cx, cy, radius) in enumerate(objects):
        dx, dy = x - cx, y - cy
        if details and details.turn[k] == "turned":
            dx, dy = _turned(shape, dx, dy)
        dist = sdf(shape, dx, dy, radius) * image_size  # (S, S), in pixels
        hollow = details is not None and details.fill[k] == "hollow"
        alpha = hollow_coverage(dist, HOLLOW_WALL * radius * image_size) if hollow else np.clip(0.5 - dist, 0, 1)
        alpha = alpha[..., None]  # (S, S, 1)
        img = img * (1 - alpha) + np.asarray(rgb, np.float32) * alpha
    return (img + 0.5).astype(np.uint8)
