"""The paper's prior comparison with ground truth: a fixed prompt suite, scored clause by clause by the oracle.

The paper compares its AR prior, its diffusion prior and no prior (Sec. 5) with FID and human raters. Our
images can be checked exactly instead. Each prompt of the suite is a canonical caption of a known scene, so the
attribute oracle (oracle.py) can say whether a generated image shows it. As in GenEval (Ghosh et al. 2023) an
image counts as correct only if *every* clause of its prompt holds:

    one object:   exactly one object, with the prompt's colour, shape, size and position
    two objects:  exactly two objects, both described ones present (each with its own colour, shape and size),
                  and the prompt's relation between them (the caption names no position, so any row or column)

Rows of the comparison: "diffusion", "ar", "none" (z_t handed to the decoder as z_i, the paper's no-prior
ablation) and "real": renders of the prompts' own scenes, the ceiling. An optional row, "true_z_i", decodes
CLIP's z_i of those renders: what a perfect prior would reach with this decoder, which separates the prior's
errors from the decoder's. The distribution metrics (metrics.py) compare each row's CLIP image embeddings with a
*reference* set, another independent render of the same scenes with the same number of images, so fd_clip and
cmmd of the "real" row are the floor that sampling noise alone sets.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minidalle2.checkpoint import write_json
from minidalle2.clip import encode_image, encode_text
from minidalle2.data import (COLORS, HELD_OUT, POSITIONS, SHAPES, SIZES, Scene, canonical_caption, make_scene, render,
                             sample_scene)
from minidalle2.errors import UserError
from minidalle2.evaluation import metrics, stages
from minidalle2.evaluation.oracle import load_oracle, relation_between
from minidalle2.pipeline import UnCLIP

SUITE_VERSION = 1
ROWS = ("real", "diffusion", "ar", "none", "true_z_i")
KINDS = ("single", "two_object", "held_out")
METRICS = ("single_color", "single_shape", "single_all", "two_object_all", "held_out_all", "held_out_single_all",
           "clip_score", "fd_clip", "cmmd", "diversity")


@dataclass(frozen=True)
class Prompt:
    kind: str      # "single" (seen colour + shape), "two_object" or "held_out" (a held-out colour + shape pair)
    scene: Scene   # a scene the caption describes exactly (objects centred); scene.objects[0] is the subject
    text: str      # its canonical caption, the data's own words, so the run's CLIP understands it


def _prompt(kind: str, scene: Scene) -> Prompt:
    return Prompt(kind, scene, canonical_caption(scene))


def _centred(scene: Scene) -> Scene:
    return Scene(tuple(make_scene(o.color, o.shape, o.size, o.position).objects[0] for o in scene.objects),
                 scene.relation)


@functools.lru_cache(maxsize=None)
def prompt_suite() -> tuple[Prompt, ...]:
    """Version 1, 65 prompts, the same on every machine:

    - 30 single: every seen colour + shape pair once, sizes alternating and positions taking turns;
    - 20 two_object: two seen pairs and a relation, drawn from the data's own test distribution;
    - 15 held_out: each held-out pair once per size as one object (10), and once in a two-object scene (5).
    """
    seen = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT]
    single = [make_scene(c, s, SIZES[i % 2], POSITIONS[(i // 2) % 4]) for i, (c, s) in enumerate(seen)]
    rng = np.random.default_rng([SUITE_VERSION, 2022])
    two = [sample_scene(rng, "test", p_two_objects=1.0) for _ in range(20)]
    held = [make_scene(c, s, size, POSITIONS[(2 * i + k) % 4])
            for i, (c, s) in enumerate(sorted(HELD_OUT)) for k, size in enumerate(SIZES)]
    held += [sample_scene(rng, "heldout", p_two_objects=1.0) for _ in range(5)]
    return tuple([_prompt("single", s) for s in single] + [_prompt("two_object", _centred(s)) for s in two]
                 + [_prompt("held_out", _centred(s)) for s in held])


def render_prompts(prompts, n: int, image_size: int, seed: int) -> torch.Tensor:
    """n renders of each prompt's scene (objects jittered inside their quadrants), prompt-major: float
    (len(prompts) * n, 3, S, S) in [0, 1]."""
    rng = np.random.default_rng([SUITE_VERSION, seed])
    out = [render(Scene(tuple(make_scene(o.color, o.shape, o.size, o.position, rng).objects[0]
                              for o in p.scene.objects), p.scene.relation), image_size)
           for p in prompts for _ in range(n)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


# --- scoring ---------------------------------------------------------------------------------------------------

def _same(o, want) -> bool:
    return (o.color, o.shape, o.size) == (want.color, want.shape, want.size)


def check(prompt: Prompt, seen: Scene) -> dict[str, bool]:
    """Every clause of the prompt against what the oracle saw; "all" is the GenEval verdict."""
    objs = seen.objects
    if len(prompt.scene.objects) == 1:
        want = prompt.scene.objects[0]
        # the object the image is about: the lone one, else whichever sits where the prompt asked
        subject = objs[0] if len(objs) == 1 else next((o for o in objs if o.position == want.position), None)
        c = {"count": len(objs) == 1}
        for field in ("color", "shape", "size", "position"):
            c[field] = subject is not None and getattr(subject, field) == getattr(want, field)
    else:
        a, b = prompt.scene.objects
        pairs = [(x, y) for x in objs for y in objs if x is not y and _same(x, a) and _same(y, b)]
        c = {"count": len(objs) == 2,
             "colors": sorted(o.color for o in objs) == sorted((a.color, b.color)),
             "shapes": sorted(o.shape for o in objs) == sorted((a.shape, b.shape)),
             "binding": bool(pairs),  # each described object is there with *its* colour, shape and size
             "relation": any(relation_between(x.position, y.position) == prompt.scene.relation for x, y in pairs)}
    c["all"] = all(c.values())
    return c


def score_row(oracle, clip, prompts, images: torch.Tensor, n: int, z_t: torch.Tensor,
              z_reference: torch.Tensor) -> tuple[dict, list[dict]]:
    """One row of the comparison for images (len(prompts) * n, 3, H, W), prompt-major.

    Returns the row's numbers and, per image, {"prompt": index, "checks": clauses, "seen": Scene}.
    """
    if len(images) != len(prompts) * n:
        raise UserError(f"{len(images)} images for {len(prompts)} prompts x n={n}; pass n images per prompt")
    seen = oracle.read(images)
    per_image = [{"prompt": k // n, "checks": check(prompts[k // n], s), "seen": s} for k, s in enumerate(seen)]
    by_kind = {kind: [r["checks"] for r in per_image if prompts[r["prompt"]].kind == kind] for kind in KINDS}
    clauses = {kind: {c: round(float(np.mean([r[c] for r in rs if c in r])), 4) for c in rs[0]}
               for kind, rs in by_kind.items() if rs}
    held_single = [r["checks"]["all"] for r in per_image
                   if prompts[r["prompt"]].kind == "held_out" and len(prompts[r["prompt"]].scene.objects) == 1]
    z_i = encode_image(clip, images)  # (P * n, D)
    row = {"single_color": clauses.get("single", {}).get("color"),
           "single_shape": clauses.get("single", {}).get("shape"),
           "single_all": clauses.get("single", {}).get("all"),
           "two_object_all": clauses.get("two_object", {}).get("all"),
           "held_out_all": clauses.get("held_out", {}).get("all"),
           "held_out_single_all": float(np.mean(held_single)) if held_single else None,
           "clip_score": metrics.clip_score(z_i, z_t.repeat_interleave(n, dim=0)),
           "fd_clip": metrics.frechet_distance(z_reference, z_i),
           "cmmd": metrics.mmd_rbf(z_reference, z_i),
           "diversity": metrics.diversity(z_i, n),
           "n_images": len(images), "clauses": clauses}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, per_image


def _generate(model, texts: list[str], row: str, n: int, seed: int, steps: int | None, renders: torch.Tensor):
    """n images per prompt for one row: a prior (or "none") through the decoder, or, for "true_z_i", the CLIP z_i
    of ``renders`` (n per prompt) decoded directly."""
    if row != "true_z_i":
        return model.generate(texts, prior=row, n=n, seed=seed, steps=steps)
    _, tokens, mask = model.embed_text(texts)
    return model.decode(model.embed_images(renders), steps=steps, seed=seed,
                        text_tokens=tokens.repeat_interleave(n, dim=0), text_mask=mask.repeat_interleave(n, dim=0))


def evaluate_pipeline(run_dir: Path, n: int = 2, seed: int = 0, rows=("diffusion", "ar", "none"), prompts=None,
                      steps: int | None = None, trust_oracle: bool = True, keep_images: bool = False,
                      batch_prompts: int = 16, log=print):
    """Generate n images per suite prompt for each row (priors, "none", optionally "true_z_i"), and score them
    and the "real" row, the ceiling. ``steps``: the decoder's DDIM steps (default: its config).

    Returns {"suite_version", "n_prompts", "n_per_prompt", "seed", "decoder_steps", "oracle_accuracy",
    "oracle_trusted", "rows": {row: numbers}, "wall_s"}; with ``keep_images`` also, per row, the images and the
    per-image checks. ``trust_oracle=False`` scores with an oracle below the 99 % bar (smoke tests only: its
    numbers mean little).
    """
    if n < 1:
        raise UserError(f"n={n}; ask for at least 1 image per prompt (2 or more to measure diversity)")
    unknown = [r for r in rows if r not in ROWS[1:]]
    if unknown:
        raise UserError(f"unknown row {unknown[0]!r}; choose from: {', '.join(ROWS[1:])}")
    start = time.time()
    run_dir = Path(run_dir)
    oracle = load_oracle(run_dir, trusted=trust_oracle)  # refuse an untrustworthy oracle before any sampling
    model = UnCLIP.from_run_dir(run_dir)
    for p in rows:
        if p in ("diffusion", "ar") and p not in model.priors:
            raise UserError(f"{run_dir} has no trained {p} prior; train it with "
                            f"`minidalle2 train prior-{p} --run-dir {run_dir}`")
    prompts = list(prompt_suite() if prompts is None else prompts)
    if not prompts:
        raise UserError("no prompts to evaluate; pass None for the whole suite")
    texts = [p.text for p in prompts]
    z_t = encode_text(model.clip, texts)[0]  # (P, D)
    S = model.image_size
    z_reference = encode_image(model.clip, render_prompts(prompts, n, S, seed=1_000_000 + seed))
    if len(z_reference) < 2:
        raise UserError("one prompt with n=1 is a single image; fd_clip and cmmd need at least 2 (raise n)")
    result = {"suite_version": SUITE_VERSION, "n_prompts": len(prompts), "n_per_prompt": n, "seed": seed,
              "decoder_steps": steps or model.decoder.sampling.sample_steps, "oracle_accuracy": oracle.accuracy,
              "oracle_trusted": trust_oracle, "rows": {}}
    kept = {}
    renders = render_prompts(prompts, n, S, seed=seed)
    for row in ("real", *rows):
        log(f"scoring {row} ({len(prompts)} prompts x {n})")
        if row == "real":
            images = renders
        else:  # in batches of prompts, each batch with its own seed
            images = torch.cat([_generate(model, texts[i:i + batch_prompts], row, n, seed * 1000 + i, steps,
                                          renders[i * n:(i + batch_prompts) * n])
                                for i in range(0, len(texts), batch_prompts)])
        result["rows"][row], per_image = score_row(oracle, model.clip, prompts, images, n, z_t, z_reference)
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
             f"{result['n_per_prompt']} images, seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
             f"{': mean±std' if len(seeds) > 1 else ''}); oracle accuracy >= {worst:.1%} per attribute"
             + ("" if result["oracle_trusted"] else "  [oracle NOT trusted: numbers are only a smoke test]"),
             f"  {'row':<10}" + "".join(f"{m:>{width[m]}}" for m in METRICS)]
    for name, row in result["rows"].items():
        std = row.get("std", {}) if len(seeds) > 1 else {}
        lines.append(f"  {name:<10}" + "".join(f"{_cell(m, row[m], std.get(m)):>{width[m]}}" for m in METRICS))
    lines.append("  (accuracies: higher is better; fd_clip, cmmd: lower is better, vs renders of the same prompts)")
    return "\n".join(lines)


# --- everything ------------------------------------------------------------------------------------------------

def evaluate_all(run_dir: Path, n: int = 2, seed: int = 0, json_path: Path | None = None,
                 report_path: Path | None = None, log=print) -> dict:
    """CLIP, priors, decoder and pipeline evaluations of one run, written as RUN/evaluation.json and .md."""
    run_dir = Path(run_dir)
    json_path = Path(json_path) if json_path else run_dir / "evaluation.json"
    report_path = Path(report_path) if report_path else run_dir / "evaluation.md"
    for path in (json_path, report_path):
        if not path.parent.is_dir():
            raise UserError(f"folder {path.parent} does not exist; create it or choose another path")
    load_oracle(run_dir)  # fail now, not after minutes of the other evaluations
    result = {}
    log("evaluating clip")
    result["clip"] = stages.evaluate_clip(run_dir)
    log("evaluating priors")
    result["priors"] = stages.evaluate_priors(run_dir)
    log("evaluating decoder")
    result["decoder"] = stages.evaluate_decoder(run_dir)
    result["pipeline"] = evaluate_pipeline(run_dir, n=n, seed=seed, log=log)
    write_json(json_path, result)
    decoder = "\n".join(f"  {k:<28}{v}" for k, v in result["decoder"].items())
    sections = [("CLIP", stages.format_clip_report(result["clip"])),
                ("Priors", stages.format_priors_report(result["priors"])),
                ("Decoder", f"Decoder on the test split\n{decoder}"),
                ("Pipeline", format_pipeline_report(result["pipeline"]))]
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
