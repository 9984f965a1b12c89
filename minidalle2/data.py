"""Captioned shapes: a procedural text-to-image dataset small enough to train unCLIP on a laptop CPU.

DALL-E 2 trains on hundreds of millions of captioned photos. We keep the structure of that problem
(caption -> image, with compositional captions) and shrink everything else: each image is one or two
coloured shapes on a black background, and its caption says what they are.

    "a small red circle in the top left"
    "a tiny red disc at the upper left"
    "a large blue box with a small red circle to the left of it"

Every image is generated on the fly from (seed, split, index), so the dataset costs no disk space, is the
same on every machine, and comes with exact ground-truth attributes (colour, shape, size, position of each
object, and the relation between two objects) that evaluation can check generated images against.

Attributes: 7 colours x 5 shapes x 2 sizes x 4 positions (the quadrants). Two-object images add a relation
("left of", "right of", "above", "below") that is always true: the first object of the scene is the subject,
e.g. relation "left of" means objects[0] is left of objects[1], in the same row.

Held-out combinations (``HELD_OUT``): five (colour, shape) pairs never appear in the train, val or test
splits, in any object, while every colour and every shape still appears with other partners. The
"heldout" split contains at least one of them in every image. This measures compositional generalisation:
can the model draw a "green cross" when it has seen green things and crosses, but never a green cross?
That is the kind of novel combination the DALL-E 2 paper shows off ("a corgi playing a flame-throwing
trumpet"); here we can actually count how often it works.

Partial captions (``ShapesConfig.p_partial``, half of them by default): real captions leave things out, and
that is why unCLIP has a prior. A partial caption states only some clauses ("a red circle": no size, no position;
"a red shape": only the colour), while its image is still drawn in full, so p(image | caption) has several modes:
"a red circle" is any of 2 sizes x 4 positions. A partial caption never states a false clause. Which clauses a
caption states is recorded with its attributes (``"stated"``), so evaluation can score only what was asked.

Details (``ShapesConfig.details``): each image may also carry what no caption states (a background tint, each
object's fill and turn; render.py), recorded in its attributes beside the stated ones. They are what CLIP's z_i is
free to drop and what unCLIP's variations are free to change.

Bring-your-own data: ``data_folder.FolderDataset`` reads a folder of images with a captions.csv or
captions.jsonl and returns the same item dicts, so every training script works on your own pictures too.
"""

import dataclasses
import re
from dataclasses import dataclass

import numpy as np
import torch

from minidalle2.render import SUPPORTED_SIZES, Details, check_image_size, draw, sample_details


# Plain colour words only: they must match the words in zero-shot prompts.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 245),
    "yellow": (245, 230, 30),
    "purple": (150, 40, 210),
    "cyan": (30, 220, 230),
    "orange": (250, 140, 10),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = dict(zip(RELATIONS, ("right of", "left of", "below", "above")))
SPLITS = ("train", "val", "test", "heldout")
# The flat attribute dict of a scene; "0" is the first object (the relation's subject), "1" the second.
ATTRIBUTE_KEYS = ("n_objects", "color0", "shape0", "size0", "position0", "color1", "shape1", "size1", "position1",
                  "relation")

# One pair per shape and per colour (cyan and orange keep all their shapes), so that every colour and
# every shape still appears in training with four or more partners.
HELD_OUT: frozenset[tuple[str, str]] = frozenset({("red", "triangle"), ("green", "cross"), ("blue", "diamond"),
                                                  ("yellow", "circle"), ("purple", "square")})
SEEN_PAIRS = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT]  # every other pair
_HELD_OUT_COMBOS = sorted(HELD_OUT)
_ALL_COMBOS = [(c, s) for c in COLORS for s in SHAPES]

# Caption words. The first entry is the canonical word used by canonical_caption.
SHAPE_WORDS = {"circle": ("circle", "disc", "round blob"), "square": ("square", "box", "block"),
               "triangle": ("triangle",), "diamond": ("diamond", "rhombus"), "cross": ("cross", "plus sign")}
SIZE_WORDS = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
POSITION_WORDS = {"top left": ("top left", "upper left", "top-left"),
                  "top right": ("top right", "upper right", "top-right"),
                  "bottom left": ("bottom left", "lower left", "bottom-left"),
                  "bottom right": ("bottom right", "lower right", "bottom-right")}
RELATION_WORDS = {"left of": ("left of", "to the left of"), "right of": ("right of", "to the right of"),
                  "above": ("above", "over"), "below": ("below", "under", "beneath")}
# {a} is the subject, {b} the other object, each "<size> <colour> <shape>" or what a partial caption keeps of it
# ("a" becomes "an" before a vowel: "an orange circle").
ONE_OBJECT_TEMPLATES = ("a {a} in the {position}", "{a}, {position} corner", "a {a} at the {position}",
                        "{position}: a {a}", "there is a {a} in the {position} corner")
TWO_OBJECT_TEMPLATES = ("a {a} {relation} a {b}", "{a} {relation} {b}", "there is a {a} {relation} a {b}",
                        "a {b} with a {a} {relation} it")
ONE_OBJECT_NO_POSITION_TEMPLATES = ("a {a}", "there is a {a}", "a {a} somewhere", "an image of a {a}")
TWO_OBJECT_NO_RELATION_TEMPLATES = ("a {a} and a {b}", "{a} and {b}", "there is a {a} and a {b}")
COLOR_ONLY_WORDS = ("shape", "object", "thing")  # "a red shape": the colour is all the caption says

# The clauses a caption can state. A full caption states all of its kind's; a partial one a subset, from these
# plans (clauses stated -> weight). Every one keeps the colour or the shape, so no caption says nothing.
FULL = {1: ("color", "shape", "size", "position"), 2: ("color", "shape", "size", "relation")}
PARTIAL_PLANS = {
    1: {("color", "shape", "size"): 3,       # "a small red circle": the position left open
        ("color", "shape", "position"): 2,   # "a red circle in the top left": the size
        ("color", "shape"): 3,               # "a red circle": size and position
        ("color",): 1,                       # "a red shape": shape, size and position
        ("shape",): 1},                      # "a circle somewhere": colour, size and position
    2: {("color", "shape", "relation"): 1,   # "a red circle left of a blue square": the sizes
        ("color", "shape", "size"): 1,       # "a small red circle and a large blue square": where they are
        ("color", "shape"): 1},              # "a red circle and a blue square": both
}

# Geometry, in image units (the side of the image is 1).
RADIUS = {"small": 0.12, "large": 0.19}  # half the side of the box each shape fits in
MARGIN = 1 / 32  # gap to the quadrant edge: half a pixel at 16 px, so anti-aliasing never crosses it
JITTER = 0.05  # the centre moves at most this far from the quadrant's centre


@dataclass
class ShapesConfig:
    """The shapes data: how many images each split holds and how they are drawn and captioned."""
    image_size: int = 32  # side in pixels, one of SUPPORTED_SIZES
    seed: int = 0  # images are a pure function of (seed, split, index)
    n_train: int = 20000  # images in the "train" split
    n_val: int = 1000  # images in the "val" split
    n_test: int = 1000  # images in the "test" split
    n_heldout: int = 500  # images in the "heldout" split (each has a held-out colour+shape pair)
    p_two_objects: float = 0.3  # probability that an image has two objects and a relation
    p_partial: float = 0.5  # probability that a caption leaves clauses out (PARTIAL_PLANS); 0: every caption full
    details: bool = False  # draw the details no caption states (render.py): background, fill, turn; False: black


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    size: str
    position: str
    cx: float  # centre, in [0, 1] image units, x to the right
    cy: float  # centre, y downwards
    radius: float  # the shape fits in the box [cx - radius, cx + radius] x [cy - radius, cy + radius]


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    relation: str | None  # how objects[0] sits relative to objects[1]; None for one object

    def attributes(self) -> dict:
        """Flat JSON-able ground truth. Absent values are "" (not None) so a DataLoader can batch them."""
        attrs = {"n_objects": len(self.objects)}
        for k in range(2):
            o = self.objects[k] if k < len(self.objects) else None
            for field in ("color", "shape", "size", "position"):
                attrs[f"{field}{k}"] = getattr(o, field) if o else ""
        attrs["relation"] = self.relation or ""
        return attrs


# ---------------------------------------------------------------------------------------------- scenes


def _check_name(kind: str, name: str, options) -> None:
    if name not in options:
        raise ValueError(f"unknown {kind} {name!r}; choose one of: {', '.join(options)}")


def _place(position: str, radius: float, rng: np.random.Generator | None) -> tuple[float, float]:
    """A centre inside the quadrant, jittered a little, with the whole shape (plus MARGIN) inside it."""
    col, row = int("right" in position), int("bottom" in position)
    jitter = min(JITTER, 0.25 - radius - MARGIN)
    dx, dy = rng.uniform(-jitter, jitter, size=2) if rng is not None else (0.0, 0.0)
    return 0.25 + 0.5 * col + float(dx), 0.25 + 0.5 * row + float(dy)


def _obj(color, shape, size, position, rng) -> Obj:
    cx, cy = _place(position, RADIUS[size], rng)
    return Obj(color, shape, size, position, cx, cy, RADIUS[size])


def make_scene(colour: str, shape: str, size: str = "large", position: str = "top left", rng=None) -> Scene:
    """A one-object scene from names, e.g. for prompts. Without rng the object sits at its quadrant's centre."""
    _check_name("colour", colour, COLORS)
    _check_name("shape", shape, SHAPES)
    _check_name("size", size, SIZES)
    _check_name("position", position, POSITIONS)
    return Scene((_obj(colour, shape, size, position, rng),), None)


def two_positions(relation: str, rng: np.random.Generator) -> tuple[str, str]:
    """Quadrants for (subject, other) that make the relation true: same row or same column."""
    if relation in ("left of", "right of"):
        row = ("top", "bottom")[rng.integers(2)]
        a, b = ("left", "right") if relation == "left of" else ("right", "left")
        return f"{row} {a}", f"{row} {b}"
    col = ("left", "right")[rng.integers(2)]
    a, b = ("top", "bottom") if relation == "above" else ("bottom", "top")
    return f"{a} {col}", f"{b} {col}"


def sample_scene(rng: np.random.Generator, split: str, p_two_objects: float = 0.3) -> Scene:
    """Draw one scene. Outside "heldout" every colour+shape pair comes from the training pairs; in
    "heldout" one object (either one) gets a held-out pair and the other any pair."""
    _check_name("split", split, SPLITS)
    n = 2 if rng.random() < p_two_objects else 1
    if split == "heldout":
        combos = [_ALL_COMBOS[rng.integers(len(_ALL_COMBOS))] for _ in range(n)]
        combos[rng.integers(n)] = _HELD_OUT_COMBOS[rng.integers(len(_HELD_OUT_COMBOS))]
    else:
        combos = [SEEN_PAIRS[rng.integers(len(SEEN_PAIRS))] for _ in range(n)]
    while n == 2 and combos[0] == combos[1]:  # two identical objects make a confusing caption: redraw
        pool = _ALL_COMBOS if split == "heldout" else SEEN_PAIRS  # equal pairs there: both held out
        combos[1] = pool[rng.integers(len(pool))]
    sizes = [SIZES[rng.integers(len(SIZES))] for _ in range(n)]
    if n == 1:
        positions, relation = [POSITIONS[rng.integers(len(POSITIONS))]], None
    else:
        relation = RELATIONS[rng.integers(len(RELATIONS))]
        positions = two_positions(relation, rng)
    objects = tuple(_obj(c, s, z, p, rng) for (c, s), z, p in zip(combos, sizes, positions))
    return Scene(objects, relation)


# ------------------------------------------------------------------------------------------- rendering


def render(scene: Scene, image_size: int = 32, details: Details | None = None) -> np.ndarray:
    """Draw the scene as uint8 (H, W, 3), with its unstated ``details`` or, without them, on black (render.py)."""
    return draw([(COLORS[o.color], o.shape, o.cx, o.cy, o.radius) for o in scene.objects], image_size, details)


# -------------------------------------------------------------------------------------------- captions


def _pick(words: tuple[str, ...], rng: np.random.Generator | None) -> str:
    """A random synonym, or the canonical (first) one when rng is None."""
    return words[rng.integers(len(words))] if rng is not None else words[0]


def _describe(o: Obj, rng: np.random.Generator | None, stated=FULL[1]) -> str:
    """The words for one object: "<size> <colour> <shape>", less what ``stated`` leaves out."""
    if "shape" not in stated:
        return f"{o.color} {_pick(COLOR_ONLY_WORDS, rng)}"
    words = [_pick(SIZE_WORDS[o.size], rng)] if "size" in stated else []
    words += [o.color] if "color" in stated else []
    return " ".join(words + [_pick(SHAPE_WORDS[o.shape], rng)])


def _articles(text: str) -> str:
    """English articles: "a orange circle" -> "an orange circle" (full captions start objects with a size word)."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)


def stated_clauses(scene: Scene, rng: np.random.Generator | None, p_partial: float) -> tuple[str, ...]:
    """Which clauses a caption of ``scene`` states: all of them (FULL), or with probability ``p_partial`` a plan
    drawn from PARTIAL_PLANS by its weight. rng=None: full."""
    n = len(scene.objects)
    if rng is None or rng.random() >= p_partial:
        return FULL[n]
    plans = list(PARTIAL_PLANS[n])
    weights = np.array([PARTIAL_PLANS[n][p] for p in plans], float)
    return plans[rng.choice(len(plans), p=weights / weights.sum())]


def caption(scene: Scene, rng: np.random.Generator | None, stated: tuple[str, ...] | None = None,
            exchanged: bool = False) -> str:
    """A caption from a random template with random synonyms; rng=None gives the canonical caption.

    ``stated`` (default: all, FULL) is the clauses it names: colour, shape, size of each object, the position of a
    lone object, the relation between two. A full caption never leaves out what the evaluation checks; a partial
    one leaves out the rest, and states nothing false. ``exchanged``: the same words with the two objects' descriptions
    exchanged, a word-order negative that is true of the mirrored picture, not of this one.
    """
    n = len(scene.objects)
    stated = FULL[n] if stated is None else tuple(stated)
    if not set(stated) & {"color", "shape"} or not set(stated) <= set(FULL[n]):
        raise ValueError(f"a caption of {n} object(s) states some of {FULL[n]} and the colour or the shape; "
                        f"got {stated}")
    a = _describe(scene.objects[0], rng, stated)
    if n == 1:
        if "position" not in stated:
            return _articles(_pick(ONE_OBJECT_NO_POSITION_TEMPLATES, rng).format(a=a))
        position = _pick(POSITION_WORDS[scene.objects[0].position], rng)
        return _articles(_pick(ONE_OBJECT_TEMPLATES, rng).format(a=a, position=position))
    b = _describe(scene.objects[1], rng, stated)
    if exchanged:
        a, b = b, a
    if "relation" not in stated:
        return _articles(_pick(TWO_OBJECT_NO_RELATION_TEMPLATES, rng).format(a=a, b=b))
    relation = _pick(RELATION_WORDS[scene.relation], rng)
    return _articles(_pick(TWO_OBJECT_TEMPLATES, rng).format(a=a, b=b, relation=relation))


def swapped_scene(scene: Scene, rng: np.random.Generator, fields=("color", "shape", "size")) -> Scene | None:
    """A two-object scene with the colours, shapes or sizes of its objects swapped, for a hard-negative caption
    that names the right attributes bound to the wrong objects ("a red circle left of a blue square" -> "a blue
    circle left of a red square"). ``rng`` picks among the swaps of ``fields`` (those the caption states) that
    change the caption and name no held-out colour-shape pair (swapping colours or shapes gives the same two pairs,
    so both or neither are allowed); None for one object or when there is no such swap. Only the caption of the
    result is meaningful (not its pixels).
    """
    if len(scene.objects) != 2:
        return None
    a, b = scene.objects
    swaps = [(dataclasses.replace(a, **{f: getattr(b, f)}), dataclasses.replace(b, **{f: getattr(a, f)}))
             for f in ("color", "shape", "size") if f in fields and getattr(a, f) != getattr(b, f)]
    swaps = [pair for pair in swaps if not {(o.color, o.shape) for o in pair} & HELD_OUT]
    return Scene(swaps[rng.integers(len(swaps))], scene.relation) if swaps else None


def mirrored_scene(scene: Scene) -> Scene | None:
    """A two-object scene reflected across the axis of its relation: each object's centre mirrored (cx -> 1 - cx
    for "left of" / "right of", cy -> 1 - cy for "above" / "below"), each shape drawn upright as before, so the
    objects exchange quadrants and the relation becomes its opposite ("a red circle left of a blue square" is false
    of it, "a blue square left of a red circle" true). None for one object."""
    if len(scene.objects) != 2:
        return None
    horizontal = scene.relation in ("left of", "right of")

    def mirror(o: Obj) -> Obj:
        col, row = int("right" in o.position), int("bottom" in o.position)
        col, row = (1 - col, row) if horizontal else (col, 1 - row)
        cx, cy = (1 - o.cx, o.cy) if horizontal else (o.cx, 1 - o.cy)
        return dataclasses.replace(o, position=POSITIONS[2 * row + col], cx=cx, cy=cy)

    return Scene(tuple(mirror(o) for o in scene.objects), OPPOSITE[scene.relation])


def canonical_caption(scene: Scene, stated: tuple[str, ...] | None = None) -> str:
    """First template, first synonyms: "a small red circle in the top left" (or, stating colour and shape only,
    "a red circle"). Use it for prompts."""
    return caption(scene, None, stated)


def encode_attributes(attrs: list[dict]) -> dict[str, np.ndarray]:
    """Attribute dicts -> int64 arrays of indices into COLORS, SHAPES, ...; -1 where absent."""
    names = {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES, "position": POSITIONS, "relation": RELATIONS}
    out = {"n_objects": np.array([a["n_objects"] for a in attrs], np.int64)}
    for key in ATTRIBUTE_KEYS[1:]:
        table = names[key.rstrip("01")]
        out[key] = np.array([table.index(a[key]) if a[key] else -1 for a in attrs], np.int64)
    return out


# --------------------------------------------------------------------------------------------- datasets


def to_item(image_u8: torch.Tensor, text: str, attrs: dict) -> dict:
    """One dataset item, as every dataset of the package returns it: image float (3, H, W) in [0, 1]."""
    return {"image": image_u8.float() / 255, "caption": text, "attributes": attrs}


class ShapesDataset(torch.utils.data.Dataset):
    """The procedural shapes. Item i of a split is the same on every machine: its random numbers come from
    np.random.default_rng([seed, split, i, stream]), one stream each for the scene (1), the caption's words (2),
    the hard-negative swap (3), which clauses the caption states (4), the unstated details (5) and their second
    draw (6). A full caption's words are the same whatever p_partial is; scenes and captions are the same with
    details on or off."""

    def __init__(self, split: str = "train", config: ShapesConfig | None = None):
        self.config = config = config or ShapesConfig()
        _check_name("split", split, SPLITS)
        check_image_size(config.image_size)
        for name in ("p_two_objects", "p_partial"):
            if not 0 <= getattr(config, name) <= 1:
                raise ValueError(f"{name}={getattr(config, name)} must be between 0 and 1")
        if config.seed < 0:
            raise ValueError(f"seed={config.seed} must be a non-negative integer")
        self.split = split
        self.n = dict(zip(SPLITS, (config.n_train, config.n_val, config.n_test, config.n_heldout)))[split]
        self._images: torch.Tensor | None = None

    def _rng(self, i: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, SPLITS.index(self.split), i, stream])

    def __len__(self) -> int:
        return self.n

    def scene(self, i: int) -> Scene:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.split} split of {self.n} images")
        return sample_scene(self._rng(i, 1), self.split, self.config.p_two_objects)

    def stated(self, i: int, scene: Scene | None = None) -> tuple[str, ...]:
        """The clauses item i's caption states (a subset of FULL[number of objects])."""
        return stated_clauses(scene or self.scene(i), self._rng(i, 4), self.config.p_partial)

    def caption(self, i: int, scene: Scene | None = None) -> str:
        scene = scene or self.scene(i)
        return caption(scene, self._rng(i, 2), self.stated(i, scene))

    def details(self, i: int, scene: Scene | None = None, redrawn: bool = False) -> Details | None:
        """Item i's unstated details; None when the data draws none. ``redrawn``: another draw of them (stream 6),
        the second view of the CLIP's detail invariance (clip.py)."""
        if not self.config.details:
            return None
        shapes = tuple(o.shape for o in (scene or self.scene(i)).objects)
        return sample_details(self._rng(i, 6 if redrawn else 5), shapes)

    def attributes_of(self, i: int, scene: Scene | None = None) -> dict:
        """The scene's ground truth, plus "stated": the clauses the caption names, space-separated; with details
        on, also the details' (background, fill0, fill1, turn0, turn1)."""
        scene = scene or self.scene(i)
        details = self.details(i, scene)
        return {**scene.attributes(), "stated": " ".join(self.stated(i, scene)),
                **(details.attributes() if details else {})}

    def render(self, i: int, scene: Scene | None = None) -> np.ndarray:
        scene = scene or self.scene(i)
        return render(scene, self.config.image_size, self.details(i, scene))

    def __getitem__(self, i: int) -> dict:
        scene = self.scene(i)
        if self._images is not None:
            image = self._images[i]
        else:
            image = torch.from_numpy(self.render(i, scene)).permute(2, 0, 1)  # (3, H, W)
        return to_item(image, self.caption(i, scene), self.attributes_of(i, scene))

    def images(self) -> torch.Tensor:
        """All images as uint8 (N, 3, H, W), rendered once and kept."""
        if self._images is None:
            self._images = self._render_all(redrawn=False)
        return self._images

    def redrawn_images(self) -> torch.Tensor:
        """All images as uint8 (N, 3, H, W) with their details drawn again: the same scene, caption and stated
        attributes, another background, fill and turn."""
        return self._render_all(redrawn=True)

    def _render_all(self, redrawn: bool) -> torch.Tensor:
        size = self.config.image_size
        out = np.empty((self.n, size, size, 3), np.uint8)
        for i in range(self.n):
            scene = self.scene(i)
            out[i] = render(scene, size, self.details(i, scene, redrawn))
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    def captions(self) -> list[str]:
        return [self.caption(i) for i in range(self.n)]

    def swapped_captions(self) -> list[str | None]:
        """Per image, its caption (same template, same clauses) with colours, shapes or sizes swapped between the
        two objects; None where there is no swap (one object, or nothing stated to swap)."""
        out = []
        for i in range(self.n):
            scene = self.scene(i)
            stated = self.stated(i, scene)
            swapped = swapped_scene(scene, self._rng(i, 3), stated)
            out.append(caption(swapped, self._rng(i, 2), stated) if swapped else None)
        return out

    def order_swapped_captions(self) -> list[str | None]:
        """Per image, a word-order negative of its caption: half the time the two objects exchanged ("a red circle
        left of a blue square" -> "a blue square left of a red circle": the same words, true of the mirrored
        picture), else the relation replaced by one of the other three ("... above a blue square"). None where the
        caption states no relation."""
        out = []
        for i in range(self.n):
            scene = self.scene(i)
            stated = self.stated(i, scene)
            if len(scene.objects) != 2 or "relation" not in stated:
                out.append(None)
                continue
            rng = self._rng(i, 5)
            if rng.random() < 0.5:
                out.append(caption(scene, self._rng(i, 2), stated, exchanged=True))
            else:
                others = [r for r in RELATIONS if r != scene.relation]
                out.append(caption(Scene(scene.objects, others[rng.integers(3)]), self._rng(i, 2), stated))
        return out

    def attributes(self) -> list[dict]:
        return [self.attributes_of(i) for i in range(self.n)]
