"""Text diffs scored by the oracle: a fixed suite of one-attribute caption edits of test images, read along theta.

The paper shows text diffs (Sec. 3.3, Fig. 5) as pictures. Our images have ground truth, so an edit can be
*checked*. Each edit of the suite takes a scene, its canonical caption ("from") and the caption with exactly one
attribute changed ("to"): the colour, shape, size or position of a lone object, or the colour or shape of one of
two objects. The input image (a render of the scene) is edited along theta with a method of the facade
(pipeline.EDIT_METHODS) and the oracle reads every picture. At each theta

    reached:  the edited attribute of the edited object reads as the target
    kept:     every other attribute of every object reads as in the input (same count, same quadrants, and the
              edited object's other attributes), and the picture reads cleanly (oracle confidence >= CLEAN)
    success:  reached and kept

so an edit that gets the colour right but shrinks the object fails, and so does a picture left unchanged. Per
method and kind the report gives: the success rate at one theta per kind (the best for the whole suite of that
kind, stated beside it), ``success_any_theta`` (each edit at its own best theta: the ceiling of choosing theta by
eye, as the paper's figures do), the smallest theta that succeeds, and the curves of "reached" and "kept" against
theta. Seeds draw the input renders (objects jittered inside their quadrants); inversion and the eta = 0 decode are
deterministic, so a seed is a new set of input pictures of the same scenes.

The suite is a committed JSON file (textdiff_suite.json, built once by ``build_suite``, pinned by its SHA-256 in
the tests) and checked when read: every scene valid, ``from`` its canonical caption, ``to`` the caption of the scene
with the one stated attribute changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from minidalle2 import runs
from minidalle2.data import (COLORS, HELD_OUT, POSITIONS, SEEN_PAIRS, SHAPES, SIZES, Scene, canonical_caption,
                             make_scene, render, sample_scene)
from minidalle2.errors import UserError
from minidalle2.evaluation.geneval import CLEAN
from minidalle2.evaluation.oracle import check_trusted
from minidalle2.pipeline import EDIT_METHODS, UnCLIP

SUITE_PATH = Path(__file__).with_name("textdiff_suite.json")
SUITE_VERSION = 1
KINDS = ("colour", "size", "shape", "position", "two_colour", "two_shape")  # two_*: one of two objects
FIELD = {"colour": "color", "size": "size", "shape": "shape", "position": "position", "two_colour": "color",
         "two_shape": "shape"}
THETAS = (0.2, 0.3, 0.4, 0.6, 0.8, 1.0)  # the grid every edit is read along
STEPS = 20  # DDIM steps of the inversion and the decode (fewer than the CLI's 50 to keep the suite minutes long)
PER_KIND = 8  # edits of each kind


@dataclasses.dataclass(frozen=True)
class Edit:
    kind: str          # one of KINDS
    scene: Scene       # the input (objects at their quadrants' centres; renders jitter them)
    target: Scene      # the scene with the one attribute changed
    obj: int           # which object the edit changes
    field: str         # "color", "shape", "size" or "position"
    value: str         # its new value
    source: str        # the input's canonical caption ("from")
    text: str          # the target's canonical caption ("to")


def _changed(scene: Scene, obj: int, field: str, value: str) -> Scene:
    objs = list(scene.objects)
    o = objs[obj]
    objs[obj] = make_scene(*(value if f == field else getattr(o, f) for f in ("color", "shape", "size", "position")))\
        .objects[0]
    return Scene(tuple(objs), scene.relation)


def _centred(scene: Scene) -> Scene:
    return Scene(tuple(make_scene(o.color, o.shape, o.size, o.position).objects[0] for o in scene.objects),
                 scene.relation)


# --- the suite -------------------------------------------------------------------------------------------------

def build_suite() -> list[dict]:
    """The edits of suite version 1, as JSON rows (what textdiff_suite.json holds): PER_KIND edits of each kind,
    every colour-shape pair seen in training before and after the edit, from one fixed random stream."""
    rng = np.random.default_rng([26, 2026])
    seen = set(SEEN_PAIRS)
    rows = []

    def other(values, current, ok=lambda v: True):
        choices = [v for v in values if v != current and ok(v)]
        return choices[rng.integers(len(choices))]

    for kind in KINDS:
        for k in range(PER_KIND):
            if kind.startswith("two_"):
                scene = _centred(sample_scene(rng, "test", p_two_objects=1.0))
                obj = int(rng.integers(2))
            else:  # sizes and positions take turns, so each kind sees all of them
                c, s = SEEN_PAIRS[rng.integers(len(SEEN_PAIRS))]
                scene, obj = make_scene(c, s, SIZES[k % 2], POSITIONS[(k // 2) % 4]), 0
            field, o = FIELD[kind], scene.objects[obj]
            if field == "color":
                partner = scene.objects[1 - obj] if len(scene.objects) == 2 else None
                value = other(COLORS, o.color, lambda v: (v, o.shape) in seen
                              and (partner is None or (v, o.shape) != (partner.color, partner.shape)))
            elif field == "shape":
                partner = scene.objects[1 - obj] if len(scene.objects) == 2 else None
                value = other(SHAPES, o.shape, lambda v: (o.color, v) in seen
                              and (partner is None or (o.color, v) != (partner.color, partner.shape)))
            elif field == "size":
                value = other(SIZES, o.size)
            else:
                value = other(POSITIONS, o.position)
            target = _changed(scene, obj, field, value)
            rows.append({"kind": kind, "objects": [{f: getattr(x, f) for f in ("color", "shape", "size", "position")}
                                                   for x in scene.objects],
                         "relation": scene.relation, "object": obj, "attribute": field, "to_value": value,
                         "from": canonical_caption(scene), "to": canonical_caption(target)})
    return rows


def suite_sha256(path: Path = SUITE_PATH) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _words_changed(a: str, b: str) -> list[str]:
    wa, wb = a.split(), b.split()
    return [f"{x} -> {y}" for x, y in zip(wa, wb) if x != y] + (["word count"] if len(wa) != len(wb) else [])


def parse_edit(row: dict, k: int = 0) -> Edit:
    """One JSON row -> Edit, refusing a row that is not a valid scene with exactly its one stated change."""
    where = f"edit {k + 1} of the text-diff suite"
    try:
        kind, objs = row["kind"], row["objects"]
        scene = Scene(tuple(make_scene(o["color"], o["shape"], o["size"], o["position"]).objects[0] for o in objs),
                      row.get("relation"))
        obj, field, value = row["object"], row["attribute"], row["to_value"]
        source, text = row["from"], row["to"]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where} is not a valid edit ({e}); each row needs kind, objects (colour, shape, size, "
                        "position), relation, object, attribute, to_value, from, to") from None
    if kind not in KINDS or FIELD[kind] != field or len(objs) != (2 if kind.startswith("two_") else 1) \
            or not 0 <= obj < len(objs):
        raise UserError(f"{where}: kind {kind!r} with attribute {field!r} of object {obj} of {len(objs)} does not "
                        f"fit; kinds are {', '.join(KINDS)} (two_*: one of two objects)")
    if len(objs) == 2 and {(o.color, o.shape) for o in scene.objects} & HELD_OUT:
        raise UserError(f"{where} names a held-out colour-shape pair; text diffs edit seen pairs")
    try:
        target = _changed(scene, obj, field, value)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    if source != canonical_caption(scene):
        raise UserError(f"{where}: 'from' is {source!r}, but the scene's caption is {canonical_caption(scene)!r}")
    if target == scene:
        raise UserError(f"{where}: 'to_value' {value!r} is the input's own {field}; an edit changes it")
    if text != canonical_caption(target):
        changed = _words_changed(source, text)
        raise UserError(f"{where}: 'to' ({text!r}) must change only the {field} of object {obj} to {value}, "
                        f"giving {canonical_caption(target)!r}; it changes {len(changed)} word(s): "
                        f"{', '.join(changed)}")
    return Edit(kind, scene, target, obj, field, value, source, text)


def load_suite(path: Path = SUITE_PATH) -> list[Edit]:
    """The suite's edits, each checked (parse_edit)."""
    data = json.loads(Path(path).read_text())
    if data.get("version") != SUITE_VERSION:
        raise UserError(f"{path} is text-diff suite version {data.get('version')}; this code reads {SUITE_VERSION}")
    return [parse_edit(row, k) for k, row in enumerate(data["edits"])]


def render_inputs(edits: list[Edit], image_size: int, seed: int) -> torch.Tensor:
    """The input image of every edit, objects jittered inside their quadrants by ``seed``: (N, 3, S, S) in [0, 1]."""
    rng = np.random.default_rng([26, seed])
    scenes = [Scene(tuple(make_scene(o.color, o.shape, o.size, o.position, rng).objects[0] for o in e.scene.objects),
                    e.scene.relation) for e in edits]
    return torch.from_numpy(np.stack([render(s, image_size) for s in scenes])).permute(0, 3, 1, 2).float() / 255


# --- scoring ---------------------------------------------------------------------------------------------------

def _by_quadrant(scene: Scene) -> dict:
    return {o.position: (o.color, o.shape, o.size) for o in scene.objects}


def score_edit(edit: Edit, seen: Scene, confidence: float = 1.0) -> dict[str, bool]:
    """One picture of an edit against the oracle's reading ``seen``: reached (the edited attribute reads as the
    target), kept (everything else reads as in the input, cleanly), success (both)."""
    want = edit.target.objects[edit.obj]
    at = _by_quadrant(seen)
    got = at.get(want.position)  # the edited object, where the target puts it
    if edit.field == "position":
        reached = got is not None
    else:
        reached = got is not None and got[("color", "shape", "size").index(edit.field)] == edit.value
    kept = _by_quadrant(edit.target) == at and confidence >= CLEAN if reached else \
        _kept_without(edit, seen, confidence)
    return {"reached": reached, "kept": kept, "success": reached and kept}


def _kept_without(edit: Edit, seen: Scene, confidence: float) -> bool:
    """Everything but the edited attribute as in the input, when the target was not reached."""
    want, at = _by_quadrant(edit.target), _by_quadrant(seen)
    edited = edit.target.objects[edit.obj].position
    if edit.field == "position":  # the object stays anywhere but its new quadrant: only other objects are checked
        moved = edit.scene.objects[edit.obj]
        rest = {q: v for q, v in want.items() if q != edited}
        return (len(at) == len(want) and all(at.get(q) == v for q, v in rest.items())
                and confidence >= CLEAN and (moved.color, moved.shape, moved.size) in at.values())
    i = ("color", "shape", "size").index(edit.field)
    same = lambda a, b: a is not None and all(x == y for j, (x, y) in enumerate(zip(a, b)) if j != i)  # noqa: E731
    return (set(at) == set(want) and all(at[q] == v for q, v in want.items() if q != edited)
            and same(at.get(edited), want[edited]) and confidence >= CLEAN)


def summarise(edits: list[Edit], thetas, scores: list[list[dict]]) -> dict:
    """scores[k][j]: edit k at thetas[j] (score_edit, success may be a fraction over seeds) -> per kind: success
    at the kind's best theta, success_any_theta, smallest successful theta, and the curves."""
    out = {"success": {}, "theta": {}, "success_any_theta": {}, "smallest_theta": {}, "curves": {}}
    for kind in KINDS:
        mine = [s for e, s in zip(edits, scores) if e.kind == kind]
        if not mine:
            continue
        rate = lambda key, j: float(np.mean([s[j][key] for s in mine]))  # noqa: E731
        curve = {key: [round(rate(key, j), 4) for j in range(len(thetas))] for key in ("reached", "kept", "success")}
        best = int(np.argmax(curve["success"]))  # the first of equals: the smallest theta
        out["success"][kind] = curve["success"][best]
        out["theta"][kind] = thetas[best]
        out["success_any_theta"][kind] = round(float(np.mean([max(x["success"] for x in s) for s in mine])), 4)
        firsts = [next(t for t, x in zip(thetas, s) if x["success"]) for s in mine if any(x["success"] for x in s)]
        out["smallest_theta"][kind] = round(float(np.median(firsts)), 4) if firsts else None
        out["curves"][kind] = curve
    return out


# --- running it ------------------------------------------------------------------------------------------------

def evaluate_textdiff(run_dir: Path, methods=EDIT_METHODS, seeds=(0, 1, 2), thetas=None, steps: int | None = None,
                      edits: list[Edit] | None = None, trust_oracle: bool = True, keep_images: bool = False,
                      log=print):
    """Every edit of the suite (or ``edits``), each method, each theta (default THETAS), each seed: read by the
    oracle and scored. ``steps``: DDIM steps of the inversion and the decode (default STEPS).

    Returns {"suite_version", "suite_sha256", "n_edits", "thetas", "seeds", "decoder_steps", "oracle_accuracy",
    "methods": {method: summarise(...) over all seeds, plus "per_seed": {seed: success per kind}}, "wall_s"}. With
    ``keep_images``: also {(method, seed): images (N, len(thetas), 3, H, W)} and the inputs of each seed.
    """
    start = time.time()
    run_dir = Path(run_dir)
    thetas = tuple(float(t) for t in (THETAS if thetas is None else thetas))
    steps = STEPS if steps is None else steps
    for t in thetas:
        if not 0 <= t <= 1:
            raise UserError(f"theta {t} is outside [0, 1]; choose fractions of the way, e.g. 0.2,0.4")
    unknown = [m for m in methods if m not in EDIT_METHODS]
    if unknown or not methods:
        raise UserError(f"unknown text-diff method {unknown[0] if unknown else '(none)'!r}; choose from: "
                        f"{', '.join(EDIT_METHODS)}")
    seeds = list(seeds)
    if not seeds:
        raise UserError("no seeds; pass at least one, e.g. --seeds 0,1,2")
    oracle = runs.load("oracle", run_dir)
    if trust_oracle:
        check_trusted(oracle.accuracy, run_dir)
    model = UnCLIP.from_run_dir(run_dir)
    edits = load_suite() if edits is None else edits
    sources, texts = [e.source for e in edits], [e.text for e in edits]
    T = len(thetas)
    scores = {m: [[{"reached": [], "kept": [], "success": []} for _ in thetas] for _ in edits] for m in methods}
    per_seed, kept_images, inputs = {m: {} for m in methods}, {}, {}
    for seed in seeds:
        images = render_inputs(edits, model.image_size, seed)
        inputs[seed] = images
        z_i, x_T = model.encode(images, steps=steps)  # once per seed, shared by every method
        for method in methods:
            log(f"text diffs: {method}, seed {seed} ({len(edits)} edits x {T} thetas)")
            out = model.text_diff_batch(z_i, x_T, sources, texts, thetas, method=method, steps=steps)  # (N, T, ...)
            seen, conf = oracle.read_with_confidence(out.flatten(0, 1))
            one = []
            for k, e in enumerate(edits):
                row = [score_edit(e, seen[k * T + j], conf[k * T + j]) for j in range(T)]
                one.append(row)
                for j, r in enumerate(row):
                    for key, v in r.items():
                        scores[method][k][j][key].append(v)
            per_seed[method][seed] = summarise(edits, thetas, one)["success_any_theta"]
            if keep_images:
                kept_images[(method, seed)] = out
    result = {"run_dir": str(run_dir), "suite_version": SUITE_VERSION, "suite_sha256": suite_sha256(), "n_edits": len(edits),
              "per_kind": {k: sum(e.kind == k for e in edits) for k in KINDS}, "thetas": list(thetas),
              "seeds": seeds, "decoder_steps": steps, "oracle_accuracy": oracle.accuracy,
              "oracle_trusted": trust_oracle,
              "methods": {}}
    for method in methods:
        mean = [[{key: float(np.mean(v)) for key, v in cell.items()} for cell in row] for row in scores[method]]
        result["methods"][method] = {**summarise(edits, thetas, mean), "any_theta_per_seed": per_seed[method]}
    result["best"] = best_method(result)
    result["wall_s"] = round(time.time() - start, 1)
    return (result, {"images": kept_images, "inputs": inputs, "edits": edits}) if keep_images else result


def best_method(result: dict) -> str:
    """The method with the highest mean success over the kinds, each at its one theta (the first of equals)."""
    return max(result["methods"], key=lambda m: np.mean(list(result["methods"][m]["success"].values())))


def format_textdiff_report(result: dict) -> str:
    acc = result["oracle_accuracy"] or {}
    worst = min(acc.values()) if acc else float("nan")
    lines = [f"Text diffs on suite v{result['suite_version']} ({result['n_edits']} edits, thetas "
             f"{','.join(f'{t:g}' for t in result['thetas'])}, {result['decoder_steps']} DDIM steps, seeds "
             f"{','.join(map(str, result['seeds']))}); oracle accuracy >= {worst:.1%} per attribute"
             + ("" if result["oracle_trusted"] else "  [oracle NOT trusted: numbers are only a smoke test]"),
             "  success at one theta per kind (that theta) | at each edit's best theta",
             f"  {'method':<14}" + "".join(f"{k:>22}" for k in KINDS)]
    for name, m in result["methods"].items():
        cells = [f"{m['success'][k]:.2f} ({m['theta'][k]:g}) | {m['success_any_theta'][k]:.2f}"
                 if k in m["success"] else "-" for k in KINDS]
        lines.append(f"  {name:<14}" + "".join(f"{c:>22}" for c in cells))
    lines.append(f"  best: {result['best']} (the highest mean success over the kinds)")
    return "\n".join(lines)
