"""The paper's prior comparison with ground truth: a fixed prompt suite, scored clause by clause by the oracle.

The paper compares its AR prior, its diffusion prior and no prior (Sec. 5) with FID and human raters. Our
images can be checked exactly instead. Each prompt of the suite is a canonical caption of a known scene, so the
attribute oracle (oracle.py) can say whether a generated image shows it. As in GenEval (Ghosh et al. 2023) an
image counts as correct only if *every* clause of its prompt holds:

    one object:   exactly one object, with the prompt's colour, shape, size and position
    two objects:  exactly two objects, both described ones present (each with its own colour, shape and size),
                  and the prompt's relation between them (the caption names no position, so any row or column)

Version 2 adds partial prompts, which leave clauses out as half the training captions do ("a red circle": any
size, any quadrant). They are scored on what they state, and on what they leave open:

    valid:        the right number of objects, each read cleanly (oracle confidence >= CLEAN): no blend of two
                  colours or shapes, no half-drawn object; an empty image or a duplicated object is invalid
    all:          valid, and every *stated* clause holds (unstated ones are ignored)
    coverage:     per prompt, over its n_partial images, each unstated attribute (the lone object's colour, shape,
                  size, position; two objects' sizes and relation) against the data's distribution given the
                  caption: normalised entropy and total variation (metrics.coverage)

A prior that samples z_i from p(z_i | y) should cover the open modes; decoding z_t ("none") gives one average
image per caption, so the paper's Sec. 5.1 predicts low coverage or blends there.

Rows of the comparison: "diffusion", "ar", "none" (z_t handed to the decoder as z_i, the paper's no-prior
ablation) and "real": renders of the prompts' own scenes, the ceiling. An optional row, "true_z_i", decodes
CLIP's z_i of those renders: what a perfect prior would reach with this decoder, which separates the prior's
errors from the decoder's. Another, "caption", decodes the learned null z_i with the caption's tokens (a decoder
trained with use_text_tokens): the caption alone, the paper's other ablation (GLIDE-like, Sec. 5.1). The
distribution metrics (metrics.py) compare each row's CLIP image embeddings with a *reference* set, another
independent render of the same scenes with the same number of images, so fd_clip and cmmd of the "real" row are
the floor that sampling noise alone sets.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minidalle2 import runs
from minidalle2.checkpoint import is_trained, write_json
from minidalle2.data import (FULL, HELD_OUT, POSITIONS, RELATIONS, SEEN_PAIRS, SIZES, Scene, canonical_caption,
                             make_scene, render, sample_scene, two_positions)
from minidalle2.errors import UserError
from minidalle2.embeddings import encode_image, encode_text
from minidalle2.evaluation import metrics, stages, upsampling
from minidalle2.evaluation.oracle import check_trusted, relation_between
from minidalle2.pipeline import UnCLIP, check_prior_guidance

SUITE_VERSION = 2
ROWS = ("real", "diffusion", "ar", "none", "true_z_i", "caption")
KINDS = ("single", "two_object", "held_out", "partial")
METRICS = ("single_color", "single_shape", "single_all", "two_object_all", "relation_left_right",
           "relation_above_below", "object_quadrant", "held_out_all", "held_out_single_all", "partial_all",
           "partial_invalid", "position_entropy", "position_tv", "open_entropy", "open_tv", "clip_score", "fd_clip",
           "cmmd", "diversity")
AXES = {"left of": "left_right", "right of": "left_right", "above": "above_below", "below": "above_below"}
CLEAN = 0.6  # oracle confidence below which an image is a blend, not a clean scene: renders read >= 0.99


@dataclass(frozen=True)
class Prompt:
    kind: str      # "single" (seen colour + shape), "two_object", "held_out" (a held-out pair) or "partial"
    scene: Scene   # a scene the caption describes (objects centred); scene.objects[0] is the subject. For a partial
                   # prompt, one of many: its unstated clauses are drawn anew for every render
    text: str      # its canonical caption, the data's own words, so the run's CLIP understands it
    stated: tuple[str, ...] = ()  # the clauses the caption states (data.PARTIAL_PLANS); () = all, data.FULL

    @property
    def clauses(self) -> tuple[str, ...]:
        return self.stated or FULL[len(self.scene.objects)]

    @property
    def open(self) -> tuple[str, ...]:
        """The attributes the caption leaves open, whose coverage is measured."""
        if len(self.scene.objects) == 1:
            return tuple(a for a in ("color", "shape", "size", "position") if a not in self.clauses)
        return tuple(a for a in ("size", "relation") if a not in self.clauses)


def _prompt(kind: str, scene: Scene, stated: tuple[str, ...] = ()) -> Prompt:
    return Prompt(kind, scene, canonical_caption(scene, stated or None), stated)


def _centred(scene: Scene) -> Scene:
    return Scene(tuple(make_scene(o.color, o.shape, o.size, o.position).objects[0] for o in scene.objects),
                 scene.relation)


@functools.lru_cache(maxsize=None)
def prompt_suite() -> tuple[Prompt, ...]:
    """Version 2, 85 prompts, the same on every machine. Version 1's 65 full prompts, unchanged:

    - 30 single: every seen colour + shape pair once, sizes alternating and positions taking turns;
    - 20 two_object: two seen pairs and a relation, drawn from the data's own test distribution;
    - 15 held_out: each held-out pair once per size as one object (10), and once in a two-object scene (5);

    and 20 partial ones, stating what data.PARTIAL_PLANS lets a caption state (seen pairs only):

    - one object: 4 without position ("a large red circle"), 2 without size ("a red circle in the top left"),
      6 with colour and shape only ("a red circle"), 2 colour only ("a red shape"), 2 shape only ("a circle");
    - two objects: 2 without sizes ("a red circle left of a blue square"), 1 without relation ("a small red circle
      and a large blue square"), 1 with neither.
    """
    single = [make_scene(c, s, SIZES[i % 2], POSITIONS[(i // 2) % 4]) for i, (c, s) in enumerate(SEEN_PAIRS)]
    rng = np.random.default_rng([1, 2022])  # version 1's stream: its prompts stay as they were
    two = [sample_scene(rng, "test", p_two_objects=1.0) for _ in range(20)]
    held = [make_scene(c, s, size, POSITIONS[(2 * i + k) % 4])
            for i, (c, s) in enumerate(sorted(HELD_OUT)) for k, size in enumerate(SIZES)]
    held += [sample_scene(rng, "heldout", p_two_objects=1.0) for _ in range(5)]
    prompts = ([_prompt("single", s) for s in single] + [_prompt("two_object", _centred(s)) for s in two]
               + [_prompt("held_out", _centred(s)) for s in held])
    rng = np.random.default_rng([2, 2022])
    plans = ([("color", "shape", "size")] * 4 + [("color", "shape", "position")] * 2 + [("color", "shape")] * 6
             + [("color",)] * 2 + [("shape",)] * 2)
    pairs = [SEEN_PAIRS[k] for k in rng.choice(len(SEEN_PAIRS), len(plans), replace=False)]
    prompts += [_prompt("partial", make_scene(c, s, SIZES[k % 2], POSITIONS[k % 4]), plan)
                for k, ((c, s), plan) in enumerate(zip(pairs, plans))]
    two_plans = [("color", "shape", "relation")] * 2 + [("color", "shape", "size"), ("color", "shape")]
    prompts += [_prompt("partial", _centred(sample_scene(rng, "test", p_two_objects=1.0)), plan) for plan in two_plans]
    return tuple(prompts)


def _complete(prompt: Prompt, rng: np.random.Generator) -> Scene:
    """A scene for the prompt with its unstated clauses drawn as the data draws them (stated ones kept), objects
    jittered inside their quadrants. A full prompt keeps its scene, objects and quadrants."""
    stated, objs = prompt.clauses, prompt.scene.objects
    if len(objs) == 1:
        o = objs[0]
        c, s = o.color, o.shape
        if not {"color", "shape"} <= set(stated):  # the unstated one, among the seen pairs with the stated one
            pairs = [(c, s) for c, s in SEEN_PAIRS if (c == o.color if "color" in stated else s == o.shape)]
            c, s = pairs[rng.integers(len(pairs))]
        size = o.size if "size" in stated else SIZES[rng.integers(len(SIZES))]
        position = o.position if "position" in stated else POSITIONS[rng.integers(len(POSITIONS))]
        return make_scene(c, s, size, position, rng)
    relation = prompt.scene.relation if "relation" in stated else RELATIONS[rng.integers(len(RELATIONS))]
    positions = (objs[0].position, objs[1].position) if "relation" in stated else two_positions(relation, rng)
    sizes = [o.size if "size" in stated else SIZES[rng.integers(len(SIZES))] for o in objs]
    return Scene(tuple(make_scene(o.color, o.shape, z, p, rng).objects[0] for o, z, p in zip(objs, sizes, positions)),
                 relation)


def render_prompts(prompts, counts, image_size: int, seed: int) -> torch.Tensor:
    """counts[k] renders of prompt k (an int: the same for all), prompt-major: float (sum(counts), 3, S, S) in
    [0, 1]. Objects are jittered inside their quadrants; a partial prompt's unstated clauses are drawn anew."""
    counts = [counts] * len(prompts) if isinstance(counts, int) else counts
    rng = np.random.default_rng([1, seed])  # version 1's stream: its full prompts render as they did
    out = [render(_complete(p, rng), image_size) for p, n in zip(prompts, counts) for _ in range(n)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


# --- scoring ---------------------------------------------------------------------------------------------------

def check(prompt: Prompt, seen: Scene, confidence: float = 1.0) -> dict[str, bool]:
    """Every stated clause of the prompt against what the oracle saw (unstated ones are not checked), and whether
    the scene is valid: the right number of objects, read with confidence >= CLEAN. "all" is the GenEval verdict."""
    objs, stated = seen.objects, prompt.clauses
    c = {"count": len(objs) == len(prompt.scene.objects), "clean": confidence >= CLEAN}
    if len(prompt.scene.objects) == 1:
        want = prompt.scene.objects[0]
        # the object the image is about: the lone one, else whichever sits where the prompt asked
        subject = objs[0] if len(objs) == 1 else next((o for o in objs if o.position == want.position
                                                        and "position" in stated), None)
        for field in ("color", "shape", "size", "position"):
            if field in stated:
                c[field] = subject is not None and getattr(subject, field) == getattr(want, field)
    else:
        a, b = prompt.scene.objects
        fields = [f for f in ("color", "shape", "size") if f in stated]
        pairs = [(x, y) for x in objs for y in objs if x is not y
                 and all(getattr(x, f) == getattr(a, f) and getattr(y, f) == getattr(b, f) for f in fields)]
        for field in ("color", "shape"):
            if field in stated:
                want = sorted((getattr(a, field), getattr(b, field)))
                c[field + "s"] = sorted(getattr(o, field) for o in objs) == want
        c["binding"] = bool(pairs)  # each described object is there with *its* stated colour, shape and size
        if "relation" in stated:
            c["relation"] = any(relation_between(x.position, y.position) == prompt.scene.relation for x, y in pairs)
    c["valid"] = c["count"] and c["clean"]
    c["all"] = all(c.values())
    return c


def quadrant_hits(prompt: Prompt, seen: Scene) -> list[bool]:
    """For each object of a full two-object prompt: is an object of its colour and shape drawn in the very quadrant
    of the prompt's scene? (A relation leaves the row or column open, so a right relation holds by chance half the
    time; the quadrant of a given object holds by chance a quarter of the time: 0.25 is the level of a decoder that
    ignores the layout. Only the true_z_i row is told the quadrants, through z_i; for the others 0.5 is the best a
    layout consistent with the caption can expect on average.)"""
    return [any(o.color == want.color and o.shape == want.shape and o.position == want.position for o in seen.objects)
            for want in prompt.scene.objects]


def layout_metrics(prompts, per_image: list[dict]) -> dict:
    """Where the two-object prompts' objects were drawn: the share of images whose stated relation holds, split by
    its axis (left of / right of, above / below), and the share of objects in their prompt's quadrant."""
    two = [r for r in per_image if prompts[r["prompt"]].kind == "two_object"]
    relation = {axis: _mean([r["checks"]["relation"] for r in two if AXES[prompts[r["prompt"]].scene.relation] == axis])
                for axis in ("left_right", "above_below")}
    return {"relation_left_right": relation["left_right"], "relation_above_below": relation["above_below"],
            "object_quadrant": _mean([hit for r in two for hit in quadrant_hits(prompts[r["prompt"]], r["seen"])])}


def open_support(prompt: Prompt, attribute: str) -> list:
    """The values the data gives an attribute the prompt leaves open, given what it states (all equally likely)."""
    o = prompt.scene.objects[0]
    if attribute == "color":
        return [c for c, s in SEEN_PAIRS if s == o.shape]
    if attribute == "shape":
        return [s for c, s in SEEN_PAIRS if c == o.color]
    return {"size": list(SIZES), "position": list(POSITIONS), "relation": list(RELATIONS)}[attribute]


def open_values(prompt: Prompt, seen: Scene, attribute: str) -> list:
    """What a valid image shows for an attribute the prompt leaves open (two objects: both sizes, the relation)."""
    if attribute == "relation":
        return [seen.relation or "diagonal"]
    return [getattr(o, attribute) for o in seen.objects]


def prompt_coverage(prompt: Prompt, seen: list[Scene], checks: list[dict]) -> dict:
    """Coverage of each open attribute over one prompt's images, counting its valid images only."""
    valid = [s for s, c in zip(seen, checks) if c["valid"]]
    out = {"text": prompt.text, "n_images": len(seen), "n_valid": len(valid)}
    for attribute in prompt.open:
        values = [v for s in valid for v in open_values(prompt, s, attribute)]
        out[attribute] = {**metrics.coverage(values, open_support(prompt, attribute)),
                          "counts": {str(v): values.count(v) for v in sorted(set(values), key=str)}}
    return out


def _mean(values) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def score_row(oracle, clip, prompts, images: torch.Tensor, counts, z_t: torch.Tensor,
              z_reference: torch.Tensor) -> tuple[dict, list[dict]]:
    """One row of the comparison for images (sum(counts), 3, H, W), prompt-major, counts[k] of prompt k (an int:
    the same for all). The distribution metrics use the full prompts' images; z_t, z_reference belong to them.

    Returns the row's numbers and, per image, {"prompt": index, "checks": clauses, "seen": Scene}.
    """
    counts = [counts] * len(prompts) if isinstance(counts, int) else list(counts)
    if len(images) != sum(counts):
        raise UserError(f"{len(images)} images for {len(prompts)} prompts with {sum(counts)} images in all; pass "
                        "counts[k] images of prompt k, prompt-major")
    seen, confidence = oracle.read_with_confidence(images)
    owner = [k for k, n in enumerate(counts) for _ in range(n)]
    per_image = [{"prompt": k, "checks": check(prompts[k], s, c), "seen": s}
                 for k, s, c in zip(owner, seen, confidence)]
    by_kind = {kind: [r["checks"] for r in per_image if prompts[r["prompt"]].kind == kind] for kind in KINDS}
    clauses = {kind: {c: _mean([r[c] for r in rs if c in r]) for c in dict.fromkeys(k for r in rs for k in r)}
               for kind, rs in by_kind.items() if rs}
    held_single = [r["checks"]["all"] for r in per_image
                   if prompts[r["prompt"]].kind == "held_out" and len(prompts[r["prompt"]].scene.objects) == 1]

    mine = {k: [r for r in per_image if r["prompt"] == k] for k, p in enumerate(prompts) if p.open}
    coverage = [prompt_coverage(prompts[k], [r["seen"] for r in rs], [r["checks"] for r in rs])
                for k, rs in mine.items()]
    opened = [c[a] for c, k in zip(coverage, mine) for a in prompts[k].open]  # one per (prompt, open attribute)
    position = [c["position"] for c in coverage if "position" in c]
    full = torch.tensor([not prompts[k].open for k in owner])  # (N,) images of full prompts
    z_i = encode_image(clip, images)  # (N, D)
    n_full = next((n for p, n in zip(prompts, counts) if not p.open), 0)
    row = {"single_color": clauses.get("single", {}).get("color"),
           "single_shape": clauses.get("single", {}).get("shape"),
           "single_all": clauses.get("single", {}).get("all"),
           "two_object_all": clauses.get("two_object", {}).get("all"),
           **layout_metrics(prompts, per_image),
           "held_out_all": clauses.get("held_out", {}).get("all"),
           "held_out_single_all": _mean(held_single),
           "partial_all": clauses.get("partial", {}).get("all"),
           "partial_invalid": None if "partial" not in clauses else round(1 - clauses["partial"]["valid"], 4),
           "position_entropy": _mean([c["entropy"] for c in position]),
           "position_tv": _mean([c["tv"] for c in position]),
           "open_entropy": _mean([c["entropy"] for c in opened]),
           "open_tv": _mean([c["tv"] for c in opened]),
           "clip_score": None, "fd_clip": None, "cmmd": None, "diversity": None,
           "n_images": len(images), "clauses": clauses, "coverage": coverage}
    if full.sum() >= 2:
        row.update({"clip_score": metrics.clip_score(z_i[full], z_t.repeat_interleave(n_full, dim=0)),
                    "fd_clip": metrics.frechet_distance(z_reference, z_i[full]),
                    "cmmd": metrics.mmd_rbf(z_reference, z_i[full]),
                    "diversity": metrics.diversity(z_i[full], n_full)})
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, per_image


def _generate(model, texts: list[str], row: str, n: int, seed: int, steps: int | None, renders: torch.Tensor,
              prior_guidance: float | None = None):
    """n images per prompt for one row: a prior (or "none") through the decoder; for "true_z_i", the CLIP z_i of
    ``renders`` (n per prompt) decoded directly; for "caption", the decoder's null z_i with the caption's tokens."""
    if row not in ("true_z_i", "caption"):
        return model.generate(texts, prior=row, n=n, seed=seed, steps=steps, prior_guidance=prior_guidance)
    _, tokens, mask = model.embed_text(texts)
    if row == "true_z_i":
        z_i = model.embed_images(renders)  # (P * n, D)
    else:  # the null embedding classifier-free guidance trains: "no image embedding", only the caption
        z_i = model.decoder.null_z_i.detach().cpu().expand(len(texts) * n, -1)
    return model.decode(z_i, steps=steps, seed=seed,
                        text_tokens=tokens.repeat_interleave(n, dim=0), text_mask=mask.repeat_interleave(n, dim=0))


def _batches(counts: list[int], batch_prompts: int):
    """Ranges [i, j) of at most batch_prompts consecutive prompts with the same image count."""
    i = 0
    while i < len(counts):
        j = i + 1
        while j < len(counts) and j - i < batch_prompts and counts[j] == counts[i]:
            j += 1
        yield i, j
        i = j


def evaluate_pipeline(run_dir: Path, n: int = 2, seed: int = 0, rows=("diffusion", "ar", "none"), prompts=None,
                      steps: int | None = None, trust_oracle: bool = True, keep_images: bool = False,
                      batch_prompts: int = 16, n_partial: int = 8, prior_guidance: float | None = None, log=print):
    """Generate n images per full suite prompt and n_partial per partial one (coverage needs several) for each row
    (priors, "none", optionally "true_z_i" and "caption"), and score them and the "real" row, the ceiling.
    ``steps``: the decoder's DDIM steps (default: its config); ``prior_guidance``: the priors' guidance scale
    (default: each prior's config).

    Returns {"suite_version", "n_prompts", "n_per_prompt", "n_per_partial_prompt", "seed", "decoder_steps",
    "oracle_accuracy", "oracle_trusted", "rows": {row: numbers}, "wall_s"}; with ``keep_images`` also, per row, the
    images and the per-image checks. ``trust_oracle=False`` scores with an oracle below the 99 % bar (smoke tests
    only: its numbers mean little).
    """
    if n < 1 or n_partial < 1:
        raise UserError(f"n={n}, n_partial={n_partial}; ask for at least 1 image per prompt (2 or more to measure "
                        "diversity, several for the coverage of partial prompts)")
    unknown = [r for r in rows if r not in ROWS[1:]]
    if unknown:
        raise UserError(f"unknown row {unknown[0]!r}; choose from: {', '.join(ROWS[1:])}")
    check_prior_guidance(prior_guidance)
    start = time.time()
    run_dir = Path(run_dir)
    oracle = runs.load("oracle", run_dir)
    if trust_oracle:  # refuse an untrustworthy oracle before any sampling
        check_trusted(oracle.accuracy, run_dir)
    model = UnCLIP.from_run_dir(run_dir)
    for p in rows:
        if p in ("diffusion", "ar") and p not in model.priors:
            raise UserError(f"{run_dir} has no trained {p} prior; train it with "
                            f"`minidalle2 train prior-{p} --run-dir {run_dir}`")
    if "caption" in rows and not model.decoder.cfg.use_text_tokens:
        raise UserError(f"the caption row needs a decoder that reads the caption's tokens; {run_dir}'s decoder was "
                        "trained without them (DecoderConfig.use_text_tokens)")
    prompts = list(prompt_suite() if prompts is None else prompts)
    if not prompts:
        raise UserError("no prompts to evaluate; pass None for the whole suite")
    texts = [p.text for p in prompts]
    counts = [n_partial if p.open else n for p in prompts]
    full = [p for p in prompts if not p.open]
    z_t = encode_text(model.clip, [p.text for p in full])[0] if full else None  # (P_full, D)
    S = model.image_size
    z_reference = encode_image(model.clip, render_prompts(full, n, S, seed=1_000_000 + seed)) if full else None
    if full and len(z_reference) < 2:
        raise UserError("one prompt with n=1 is a single image; fd_clip and cmmd need at least 2 (raise n)")
    result = {"suite_version": SUITE_VERSION, "n_prompts": len(prompts), "n_per_prompt": n,
              "n_per_partial_prompt": n_partial, "seed": seed,
              "decoder_steps": steps or model.decoder.sampling.sample_steps, "prior_guidance": prior_guidance,
              "oracle_accuracy": oracle.accuracy,
              "oracle_trusted": trust_oracle, "rows": {}}
    kept = {}
    renders = render_prompts(prompts, counts, S, seed=seed)
    first = np.cumsum([0] + counts)  # first[k]: index of prompt k's first image
    for row in ("real", *rows):
        log(f"scoring {row} ({len(prompts)} prompts, {sum(counts)} images)")
        if row == "real":
            images = renders
        else:  # in batches of prompts, each batch with its own seed
            images = torch.cat([_generate(model, texts[i:j], row, counts[i], seed * 1000 + i, steps,
                                          renders[first[i]:first[j]], prior_guidance)
                                for i, j in _batches(counts, batch_prompts)])
        result["rows"][row], per_image = score_row(oracle, model.clip, prompts, images, counts, z_t, z_reference)
        if keep_images:
            kept[row] = {"images": images, "per_image": per_image}
    result["wall_s"] = round(time.time() - start, 1)
    return (result, kept) if keep_images else result


def evaluate_pipeline_seeds(run_dir: Path, n: int = 2, seeds=(0, 1, 2), rows=("diffusion", "ar", "none"),
                            log=print, **kw) -> dict:
    """``evaluate_pipeline`` once per sampling seed, then each row's numbers as the mean over seeds, with their
    standard deviation in row["std"] (torch's unbiased std; 0 for one seed) and every seed's result in "per_seed"."""
    seeds = list(seeds)
    if not seeds:
        raise UserError("no seeds; pass at least one, e.g. --seeds 0,1,2")
    per_seed = [evaluate_pipeline(run_dir, n=n, seed=s, rows=rows, log=log, **kw) for s in seeds]
    result = {**per_seed[0], "seed": seeds[0], "seeds": seeds, "rows": {},
              "wall_s": round(sum(r["wall_s"] for r in per_seed), 1), "per_seed": per_seed}
    for name in per_seed[0]["rows"]:
        row, std = dict(per_seed[0]["rows"][name]), {}
        for m in METRICS:
            values = [r["rows"][name][m] for r in per_seed]
            if None not in values:
                v = torch.tensor(values, dtype=torch.float64)
                row[m] = round(v.mean().item(), 4)
                std[m] = round(v.std().item(), 4) if len(v) > 1 else 0.0
        row.pop("clauses", None)  # per seed only
        row.pop("coverage", None)
        result["rows"][name] = {**row, "std": std}
    return result


def _cell(metric: str, value, std=None) -> str:
    if value is None:
        return "-"
    digits = 4 if metric == "cmmd" else 3
    return f"{value:.{digits}f}" + ("" if std is None else f"±{std:.{digits}f}")


def format_pipeline_report(result: dict) -> str:
    acc = result["oracle_accuracy"] or {}
    worst = min(acc.values()) if acc else float("nan")
    seeds = result.get("seeds", [result["seed"]])
    width = {m: max(len(m), 15 if len(seeds) > 1 else 7) + 2 for m in METRICS}
    lines = [f"Pipeline on prompt suite v{result['suite_version']} ({result['n_prompts']} prompts x "
             f"{result['n_per_prompt']} images, partial ones x {result.get('n_per_partial_prompt', '-')}, "
             f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
             f"{': mean±std' if len(seeds) > 1 else ''}); oracle accuracy >= {worst:.1%} per attribute"
             + (f"; priors sampled at guidance {result['prior_guidance']:g}" if result.get("prior_guidance") is not None
                else "")
             + ("" if result["oracle_trusted"] else "  [oracle NOT trusted: numbers are only a smoke test]"),
             f"  {'row':<10}" + "".join(f"{m:>{width[m]}}" for m in METRICS)]
    for name, row in result["rows"].items():
        std = row.get("std", {}) if len(seeds) > 1 else {}
        lines.append(f"  {name:<10}" + "".join(f"{_cell(m, row[m], std.get(m)):>{width[m]}}" for m in METRICS))
    lines.append("  (accuracies, entropies: higher is better; partial_invalid, tv, fd_clip, cmmd: lower is better; "
                 "fd_clip and cmmd vs renders of the same full prompts)")
    return "\n".join(lines)


# --- everything ------------------------------------------------------------------------------------------------

def evaluate_all(run_dir: Path, n: int = 2, seed: int = 0, json_path: Path | None = None,
                 report_path: Path | None = None, n_partial: int = 8, log=print) -> dict:
    """CLIP, priors, decoder, pipeline and text-diff evaluations (and the upsampler's, when the run has one) of one
    run, written as RUN/evaluation.json and .md."""
    run_dir = Path(run_dir)
    json_path = Path(json_path) if json_path else run_dir / "evaluation.json"
    report_path = Path(report_path) if report_path else run_dir / "evaluation.md"
    for path in (json_path, report_path):
        if not path.parent.is_dir():
            raise UserError(f"folder {path.parent} does not exist; create it or choose another path")
    check_trusted(runs.load("oracle", run_dir).accuracy, run_dir)  # fail now, not after minutes of the others
    result = {}
    log("evaluating clip")
    result["clip"] = stages.evaluate_clip(run_dir)
    log("evaluating priors")
    result["priors"] = stages.evaluate_priors(run_dir)
    log("evaluating decoder")
    result["decoder"] = stages.evaluate_decoder(run_dir)
    result["pipeline"] = evaluate_pipeline(run_dir, n=n, seed=seed, n_partial=n_partial, log=log)
    if is_trained(run_dir, "upsampler"):
        log("evaluating upsampler")
        result["upsampler"] = upsampling.evaluate_upsampler(run_dir, seed=seed)
    from minidalle2.evaluation import textdiff  # it reads CLEAN from here

    result["textdiff"] = textdiff.evaluate_textdiff(run_dir, seeds=(seed,), log=log)
    write_json(json_path, result)
    decoder = "\n".join(f"  {k:<28}{v}" for k, v in result["decoder"].items())
    sections = [("CLIP", stages.format_clip_report(result["clip"])),
                ("Priors", stages.format_priors_report(result["priors"])),
                ("Decoder", f"Decoder on the test split\n{decoder}"),
                ("Pipeline", format_pipeline_report(result["pipeline"])),
                ("Text diffs", textdiff.format_textdiff_report(result["textdiff"]))]
    if "upsampler" in result:
        sections.append(("Upsampler", upsampling.format_upsampler_report(result["upsampler"])))
    text = f"# Evaluation of {run_dir}\n\n" + "".join(f"## {t}\n\n```\n{body}\n```\n\n" for t, body in sections)
    text += "## Pipeline (Markdown)\n\n" + markdown_table(result["pipeline"]) + "\n"
    report_path.write_text(text)
    log(text)
    log(f"wrote {json_path} and {report_path}")
    return result


def markdown_table(result: dict) -> str:
    lines = ["| row | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    several = len(result.get("seeds", [0])) > 1
    lines += [f"| {name} | " + " | ".join(_cell(m, row[m], row["std"].get(m) if several else None) for m in METRICS)
              + " |" for name, row in result["rows"].items()]
    return "\n".join(lines) + "\n"
