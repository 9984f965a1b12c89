"""The attribute oracle: a small CNN, independent of CLIP, that reads what a shapes image shows.

The paper compares its priors with FID and human raters. Our data has ground truth, so an image can be
*checked*: does it show a large red circle in the top left? The oracle answers that for any image, generated
or real, the way GenEval uses an object detector for photos.

Every object of the shapes data sits inside one quadrant (data.MARGIN keeps even its anti-aliasing there), so
an image is fully described by its four quadrants, each empty or holding one (colour, shape, size). The oracle
reads each quadrant crop separately with one shared CNN:

    crop (3, S/2, S/2) -> features -> logits for  occupied (2) | colour (7) | shape (5) | size (2)

and the scene follows: positions are the occupied quadrants, the count is their number, and the relation of
two objects is read off their quadrants (same row: left of / right of; same column: above / below).

With ``OracleConfig.details`` it also reads the details no caption states (render.py): the background from every
crop (the four votes summed), the fill and turn of each object from its crop:

    crop -> ... | background (4) | fill (2) | turn (2)

Training scenes are wider than the data's: each quadrant independently empty or holding *any* colour + shape
(the held-out pairs included), so the oracle can also read images a model gets wrong (three objects, two
diagonal ones, nothing at all). Pixel noise and blur are added so that the softer edges of a decoder's output
read like the renders they imitate. After training it is tested on freshly rendered images of the data's test
and held-out distributions; below 99 % on any attribute the evaluation refuses to use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minidalle2.data import COLORS, POSITIONS, SHAPES, SIZES, Scene, make_scene, render, sample_scene
from minidalle2.errors import UserError
from minidalle2.render import BACKGROUNDS, FILLS, TURNABLE, TURNS, Details, sample_details

TRUST = 0.99  # minimum accuracy per attribute on fresh renders before the oracle may score anything
ATTRIBUTES = ("n_objects", "color", "shape", "size", "position", "relation")
COLOR_NAMES = tuple(COLORS)
# One head per quadrant property; "occupied" is 0 (empty) or 1.
HEADS = {"occupied": 2, "color": len(COLORS), "shape": len(SHAPES), "size": len(SIZES)}
DETAIL_HEADS = {"background": len(BACKGROUNDS), "fill": len(FILLS), "turn": len(TURNS)}


@dataclass
class OracleConfig:
    """The oracle's CNN. Defaults are the ``quick`` preset's."""
    width: int = 16              # channels of the first conv layer; doubled at each stride-2 layer
    details: bool = True         # also read the unstated details (background, fill, turn) of render.py


@dataclass
class OracleData:
    """The scenes the oracle trains on and the test it must pass. Defaults: the ``quick`` oracle's."""
    p_object: float = 0.5        # P(a quadrant holds an object) in the training scenes
    noise: float = 0.06          # largest std of the Gaussian pixel noise added in training (0: none)
    p_blur: float = 0.5          # probability that a training image is partly blurred
    n_eval: int = 2000           # fresh renders its accuracy is measured on


def quadrants(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, 4, 3, S/2, S/2), in the order of data.POSITIONS (top left, top right, ...)."""
    h = images.shape[-1] // 2
    return torch.stack([images[..., :h, :h], images[..., :h, h:], images[..., h:, :h], images[..., h:, h:]], 1)


class AttributeOracle(nn.Module):
    """One quadrant crop (N, 3, S/2, S/2) in [0, 1] -> logits {"occupied", "color", "shape", "size"}."""

    def __init__(self, cfg: OracleConfig, image_size: int):
        super().__init__()
        self.cfg, self.image_size = cfg, image_size
        C = cfg.width
        # GroupNorm: measured, shape reached 99.9 % in 300 steps with it and 78 % without
        self.features = nn.Sequential(
            nn.Conv2d(3, C, 3, padding=1), nn.GroupNorm(4, C), nn.ReLU(),  # (N, C, S/2, S/2)
            nn.Conv2d(C, 2 * C, 3, stride=2, padding=1), nn.GroupNorm(4, 2 * C), nn.ReLU(),  # S/4
            nn.Conv2d(2 * C, 4 * C, 3, stride=2, padding=1), nn.GroupNorm(4, 4 * C), nn.ReLU(),  # S/8
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),  # (N, 16 C): a coarse 2x2 layout survives the pooling
        )
        self.heads = {**HEADS, **(DETAIL_HEADS if cfg.details else {})}
        self.head = nn.Linear(16 * C, sum(self.heads.values()))

    def forward(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(self.features(crops * 2 - 1))  # (N, sum of the heads' classes)
        return dict(zip(self.heads, logits.split(list(self.heads.values()), dim=-1)))

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy summed over the heads. labels (B, 4, heads): per quadrant (occupied, colour, shape, size
        [, background, fill, turn]), -1 where a label does not apply (an empty quadrant's colour; a circle's turn)."""
        logits = self(quadrants(images).flatten(0, 1))  # each (4B, n_classes)
        labels = labels.flatten(0, 1)  # (4B, heads)
        return sum(F.cross_entropy(logits[name], labels[:, k], ignore_index=-1) for k, name in enumerate(self.heads))

    @torch.no_grad()
    def read_details(self, images: torch.Tensor, scenes: list[Scene], batch_size: int = 1024) -> list[Details]:
        """The unstated details of each image, given its ``scenes`` as ``read`` gave them (objects in quadrant
        order): the background by the four crops' summed log-probabilities, fill and turn from each object's crop
        (turn "" for a shape it does not apply to)."""
        assert self.cfg.details, "this oracle was trained without the detail heads"
        images = check_images(images, self.image_size)
        out = []
        for i in range(0, len(images), batch_size):
            B = len(images[i:i + batch_size])
            logits = {k: v.view(B, 4, -1) for k, v in self(quadrants(images[i:i + batch_size]).flatten(0, 1)).items()}
            background = logits["background"].log_softmax(-1).sum(1).argmax(-1).tolist()  # (B,)
            fill, turn = logits["fill"].argmax(-1).tolist(), logits["turn"].argmax(-1).tolist()  # (B, 4)
            for b, scene in enumerate(scenes[i:i + B]):
                qs = [POSITIONS.index(o.position) for o in scene.objects]
                out.append(Details(tuple(BACKGROUNDS)[background[b]], tuple(FILLS[fill[b][q]] for q in qs),
                                   tuple(TURNS[turn[b][q]] if o.shape in TURNABLE else ""
                                         for q, o in zip(qs, scene.objects))))
        return out

    def read(self, images: torch.Tensor, batch_size: int = 1024) -> list[Scene]:
        """What each image shows: a Scene per image, objects in quadrant order, relation read off the positions
        of two objects (None when they are diagonal, or there are not exactly two)."""
        return self.read_with_confidence(images, batch_size)[0]

    @torch.no_grad()
    def read_with_confidence(self, images: torch.Tensor, batch_size: int = 1024) -> tuple[list[Scene], list[float]]:
        """``read``, plus per image how sure the oracle is: the smallest top-class probability over the four
        occupied/empty decisions and the colour, shape and size of every object it sees. A clean render reads
        near 1; a blend of two colours or shapes, or a half-drawn object, reads low (geneval.CLEAN)."""
        images = check_images(images, self.image_size)
        scenes, confidence = [], []
        for i in range(0, len(images), batch_size):
            B = len(images[i:i + batch_size])
            logits = self(quadrants(images[i:i + batch_size]).flatten(0, 1))  # each (4B, n_classes)
            top = {k: v.softmax(-1).view(B, 4, -1).max(-1) for k, v in logits.items()}  # values, indices: (B, 4)
            pred = {k: t.indices.tolist() for k, t in top.items()}
            for b in range(B):
                occupied = [q for q in range(4) if pred["occupied"][b][q]]
                objs = tuple(make_scene(COLOR_NAMES[pred["color"][b][q]], SHAPES[pred["shape"][b][q]],
                                        SIZES[pred["size"][b][q]], POSITIONS[q]).objects[0] for q in occupied)
                rel = relation_between(objs[0].position, objs[1].position) if len(objs) == 2 else None
                scenes.append(Scene(objs, rel))
                sure = [top["occupied"].values[b].min()] + [top[k].values[b, q] for q in occupied
                                                            for k in ("color", "shape", "size")]
                confidence.append(round(float(min(sure)), 4))
        return scenes, confidence


def check_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Float (N, 3, S, S) in [0, 1] at the oracle's size; uint8 is scaled and other sizes are resized."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserError(f"the oracle reads RGB image batches (N, 3, H, W); got {shape}")
    images = images.cpu().float() / 255 if images.dtype == torch.uint8 else images.cpu().float()
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False).clamp(0, 1)
    return images


def relation_between(a: str, b: str) -> str | None:
    """How the object in quadrant ``a`` sits relative to the one in quadrant ``b``; None when diagonal."""
    (row_a, col_a), (row_b, col_b) = a.split(), b.split()
    if row_a == row_b and col_a != col_b:
        return "left of" if col_a == "left" else "right of"
    if col_a == col_b and row_a != row_b:
        return "above" if row_a == "top" else "below"
    return None


def describe(scene: Scene) -> str:
    """A short text of a scene for plots, objects in quadrant order: "large red circle (top left)" or "nothing"."""
    objs = sorted(scene.objects, key=lambda o: POSITIONS.index(o.position))
    parts = [f"{o.size} {o.color} {o.shape} ({o.position})" for o in objs]
    return "; ".join(parts) if parts else "nothing"


# --- training data ---------------------------------------------------------------------------------------------

def training_batch(rng: np.random.Generator, n: int, image_size: int, p_object: float, details: bool = False):
    """n scenes whose quadrants are independently empty or hold any object: images uint8 (n, 3, S, S) and labels
    (n, 4, 4) = per quadrant (occupied, colour, shape, size), -1 where empty. With ``details`` half the images are
    drawn with random details, half plain, and the labels (n, 4, 7) add (background, fill, turn)."""
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    labels = np.full((n, 4, 7 if details else 4), -1, np.int64)
    labels[:, :, 0] = 0
    for i in range(n):
        objs, qs = [], []
        for q, position in enumerate(POSITIONS):
            if rng.random() < p_object:
                c, s, z = rng.integers(len(COLORS)), rng.integers(len(SHAPES)), rng.integers(len(SIZES))
                objs.append(make_scene(COLOR_NAMES[c], SHAPES[s], SIZES[z], position, rng).objects[0])
                labels[i, q, :4] = (1, c, s, z)
                qs.append(q)
        scene, extra = Scene(tuple(objs), None), None
        if details:
            extra = sample_details(rng, tuple(o.shape for o in objs)) if rng.random() < 0.5 else plain(scene)
            labels[i, :, 4] = tuple(BACKGROUNDS).index(extra.background)
            for q, f, t in zip(qs, extra.fill, extra.turn):
                labels[i, q, 5:] = FILLS.index(f), TURNS.index(t) if t else -1
        images[i] = render(scene, image_size, extra)
    return torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels)


def plain(scene: Scene) -> Details:
    """The details of a render without details: black, solid, upright (turn "" where it does not apply)."""
    return Details("black", ("solid",) * len(scene.objects),
                   tuple("upright" if o.shape in TURNABLE else "" for o in scene.objects))


def augment(images: torch.Tensor, cfg: OracleData, g: torch.Generator) -> torch.Tensor:
    """uint8 images -> floats with some blur (a random mix with a 3x3 box blur) and Gaussian noise."""
    x = images.float() / 255  # (B, 3, S, S)
    B = len(x)
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    mix = torch.rand(B, 1, 1, 1, generator=g) * (torch.rand(B, 1, 1, 1, generator=g) < cfg.p_blur)
    x = x + mix * (blurred - x)
    sigma = torch.rand(B, 1, 1, 1, generator=g) * cfg.noise
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def fresh_test_scenes(n: int, seed: int) -> list[Scene]:
    """n scenes of the data's own distributions, alternately "test" and "heldout" (so the held-out colour +
    shape pairs are read too), from a random stream no training batch uses."""
    rng = np.random.default_rng([seed, 1])
    return [sample_scene(rng, ("test", "heldout")[i % 2]) for i in range(n)]


def attribute_accuracy(read: list[Scene], truth: list[Scene]) -> dict[str, float]:
    """Per attribute, how often the reading agrees with the ground truth: n_objects per image; colour, shape,
    size, position (the object's quadrant is seen as occupied) per true object; relation per two-object image."""
    hits = {a: [] for a in ATTRIBUTES}
    for seen, true in zip(read, truth):
        at = {o.position: o for o in seen.objects}
        hits["n_objects"].append(len(seen.objects) == len(true.objects))
        for o in true.objects:
            found = at.get(o.position)
            hits["position"].append(found is not None)
            for field in ("color", "shape", "size"):
                hits[field].append(found is not None and getattr(found, field) == getattr(o, field))
        if true.relation:
            a, b = (at.get(o.position) for o in true.objects)
            hits["relation"].append(a is not None and b is not None and
                                    relation_between(a.position, b.position) == true.relation)
    return {a: round(float(np.mean(h)), 4) for a, h in hits.items() if h}


def measure_accuracy(oracle: AttributeOracle, n: int, seed: int = 0) -> dict[str, float]:
    """Per stated attribute, on n fresh renders (every other one with random details when the oracle reads them)."""
    truth, details = fresh_test_renders(n, seed, oracle.cfg.details)
    images = torch.from_numpy(np.stack([render(s, oracle.image_size, d) for s, d in zip(truth, details)]))
    return attribute_accuracy(oracle.read(images.permute(0, 3, 1, 2)), truth)


def fresh_test_renders(n: int, seed: int, details: bool) -> tuple[list[Scene], list[Details | None]]:
    """``fresh_test_scenes`` and, with ``details``, random details for every other one (from a stream of its own)."""
    truth = fresh_test_scenes(n, seed)
    rng = np.random.default_rng([seed, 2])
    extra = [sample_details(rng, tuple(o.shape for o in s.objects)) if details and i % 2 else None
             for i, s in enumerate(truth)]
    return truth, extra


def detail_accuracy(oracle: AttributeOracle, n: int, seed: int = 0) -> dict[str, float]:
    """Per detail, how often the oracle reads it right on n fresh renders (half plain, half with details):
    background per image, fill per object, turn per triangle or cross."""
    truth, details = fresh_test_renders(n, seed, True)
    details = [d or plain(s) for s, d in zip(truth, details)]
    images = torch.from_numpy(np.stack([render(s, oracle.image_size, d) for s, d in zip(truth, details)]))
    # read with the true positions, so a detail is scored even where a stated attribute is misread
    read = oracle.read_details(images.permute(0, 3, 1, 2), truth)
    hits = {"background": [], "fill": [], "turn": []}
    for seen, true in zip(read, details):
        hits["background"].append(seen.background == true.background)
        hits["fill"] += [a == b for a, b in zip(seen.fill, true.fill)]
        hits["turn"] += [a == b for a, b in zip(seen.turn, true.turn) if b]
    return {k: round(float(np.mean(h)), 4) for k, h in hits.items()}


def is_trusted(accuracy: dict | None) -> bool:
    """Whether an oracle with this measured accuracy may score images: ``TRUST`` or more on every attribute."""
    return bool(accuracy) and min(accuracy.values()) >= TRUST


def check_trusted(accuracy: dict | None, run_dir: Path) -> None:
    """Refuse an oracle without a measured accuracy, or below ``TRUST`` on any attribute."""
    if is_trusted(accuracy):
        return
    folder = Path(run_dir) / "oracle"
    if not accuracy:
        raise UserError(f"the oracle in {folder} has not finished training, so its accuracy is unknown and it "
                        f"cannot be trusted to score images; finish it with "
                        f"`minidalle2 train oracle --run-dir {run_dir} --resume`")
    worst = min(accuracy, key=accuracy.get)
    raise UserError(f"the oracle in {folder} reads {worst} correctly in only {accuracy[worst]:.1%} of fresh "
                    f"renders (< {TRUST:.0%}), so its scores would not be trustworthy; delete {folder} and "
                    f"retrain it with a larger preset: `minidalle2 train oracle --run-dir {run_dir} "
                    f"--preset quick`")
