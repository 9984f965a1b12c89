"""``minidalle2 demo``: train every stage from scratch with one preset, then write pictures and metrics.

Resumable: rerunning the same command continues an interrupted run and reuses finished stages. With
``--pretrained`` nothing is trained: the run shipped in ``data/pretrained`` is used as it is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from minidalle2.checkpoint import read_json, write_json
from minidalle2.data import COLORS, SEEN_PAIRS, canonical_caption, make_scene
from minidalle2.embeddings import load_embeddings, run_datasets
from minidalle2.errors import UserError
from minidalle2.evaluation import stages
from minidalle2.pipeline import EDIT_METHOD, EDIT_THETA_MAX, UnCLIP
from minidalle2.tools import figures
from minidalle2.tools.machine import PartClock, format_parts, matmul_gflops, native_bf16
from minidalle2.tools.run import ensure, pretrained_run, training_info

DEMO_STAGES = ["clip", "prior-diffusion", "prior-ar", "decoder"]
# the last one is partial (no size, no position): a prior's samples should spread over the sizes and quadrants
PROMPTS = ["a large red circle in the top left", "a small blue square in the bottom right",
           "a large yellow triangle in the top right", "a large green circle left of a large red square",
           "a red circle"]


def run_demo(out: Path, preset: str = "quick", fresh: bool = False, pretrained: bool = False, progress: bool = True,
             log=print) -> dict:
    """Returns the metrics written to metrics.json; ``timings`` holds the wall time of each part (``<part>_s``, summing
    to ``total_s``) and ``machine`` this machine's reference speed."""
    clock = PartClock()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    if pretrained and fresh:
        raise UserError("--fresh retrains and --pretrained uses the shipped run; choose one")
    run_dir = out / "run"
    if pretrained:
        with clock.part("loading"):
            run_dir = pretrained_run()  # a damaged shipped run stops before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if pretrained:
        with clock.part("loading"):
            manifest = read_json(run_dir / "manifest.json")
        metrics = {"preset": manifest["preset"], "pretrained": str(run_dir),
                   "shipped_training_s": {f"{s}_s": round(st["wall_s"] + st.get("base", {}).get("wall_s", 0)
                                                          + st.get("fit_s", 0), 2)
                                          for s, st in manifest["stages"].items()}}  # a stage's base and fit included
        log(f"using the shipped run {run_dir} ({manifest['preset']} preset, trained on {manifest['hardware']}); "
            "its metrics are those its manifest recorded at export")
    else:
        if fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        metrics = {"preset": preset}

        def stage_log(line: str) -> None:  # CLIP's training ends by encoding every split: its own part
            if line.startswith("encoding "):
                clock.switch("embedding-cache")
            log(line)

        for k, stage in enumerate(DEMO_STAGES, 1):
            log(f"[{k}/{len(DEMO_STAGES)}] {stage}")
            with clock.part(stage):
                ensure(run_dir, [stage], preset, progress=progress, log=stage_log)

    with clock.part("figures"):  # the evaluations within are parts of their own
        report = stage_figures(run_dir, out, metrics, manifest["evaluation"] if pretrained else None, clock)
        report.append(pipeline_figures(run_dir, out, metrics))
    metrics["machine"] = {**matmul_gflops(), "native_bf16": native_bf16()}
    table = clock.table()
    metrics["timings"] = {f"{name}_s": s for name, s in table.items()}
    parts = format_parts(table, metrics["machine"])
    write_json(out / "metrics.json", metrics)
    text = "\n\n".join(report)
    (out / "metrics.md").write_text(f"# minidalle2 demo ({metrics['preset']} preset)\n\n```\n{text}\n\n{parts}\n```\n")
    log(text)
    log(f"pictures and metrics written to {out}/")
    log(parts)
    return metrics


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def stage_figures(run_dir: Path, out: Path, metrics: dict, recorded: dict | None = None,
                  clock: PartClock | None = None) -> list[str]:
    """The data, CLIP, the priors and the decoder, each evaluated and drawn. Returns the text reports.

    ``recorded``: evaluations already measured on this run (a manifest's), used instead of evaluating again.
    ``clock``: its "evaluation" part gets the evaluations' time."""
    report = []
    recorded = recorded or {}
    clock = clock or PartClock()
    with clock.part("evaluation"):
        metrics["clip"] = result = recorded.get("clip") or stages.evaluate_clip(run_dir)
    report.append(stages.format_clip_report(result))
    test = load_embeddings(run_dir, "test")
    ds = run_datasets(run_dir)["test"]
    _save(figures.image_grid(ds.images()[:16], ds.captions()[:16]), out / "dataset.png")
    history = training_info(run_dir, "clip")["history"]
    _save(figures.training_curve(history, "CLIP contrastive loss"), out / "clip_loss.png")
    _save(figures.similarity_heatmap(test["z_i"], test["z_t"], test["captions"]), out / "clip_similarity.png")
    if "zero_shot_accuracy" in result:
        _save(figures.embedding_projection(test["z_i"], test["color0"], list(COLORS), "z_i by colour"),
              out / "clip_zi_by_colour.png")
        _save(figures.accuracy_bars({"test": result["zero_shot_accuracy"],
                                     "held-out combos": result["heldout_zero_shot_accuracy"]}),
              out / "clip_zero_shot.png")

    # 200 captions, as the manifest's check (`evaluate priors` uses all 1000)
    with clock.part("evaluation"):
        metrics["priors"] = result = recorded.get("priors") or stages.evaluate_priors(run_dir, n=200)
    report.append(stages.format_priors_report(result))
    bars = {"no prior (z_t)": {"test": result["baseline_cos_text_image"],
                               "held-out": result.get("heldout_baseline_cos_text_image", 0.0)}}
    for name in ("diffusion", "ar"):
        if name in result:
            bars[f"{name} prior"] = {"test": result[name]["cos_pred_true"],
                                     "held-out": result.get(f"heldout_{name}", {}).get("cos_pred_true", 0.0)}
    _save(figures.accuracy_bars(bars, "cos(predicted z_i, true z_i)"), out / "priors.png")

    # decoding dominates the demo's evaluation time, hence 16 images
    with clock.part("evaluation"):
        metrics["decoder"] = result = recorded.get("decoder") or stages.evaluate_decoder(run_dir, n=16)
    report.append(f"Decoder: mean cos(CLIP(decoded z_i), z_i) over {result['n']} test images = "
                  f"{result['recon_clip_cos']:.3f} at guidance {result['guidance']} "
                  f"({result['recon_clip_cos_guidance_1']:.3f} at guidance 1; two different test images: "
                  f"{result['random_pair_cos']:.3f})")
    return report


def pipeline_figures(run_dir: Path, out: Path, metrics: dict) -> str:
    """The paper's Sec. 3 pictures: text-to-image with each prior and none, variations, an interpolation, a text
    diff, through the cascade (64x64) when the run has an upsampler for its decoder's pictures. Returns a line
    naming the files."""
    model = UnCLIP.from_run_dir(run_dir)
    cascade = model.has_cascade
    drawn = (lambda x: model.upsample(x, seed=0)) if cascade else (lambda x: x)
    n = 3
    priors = list(model.priors) + ["none"]
    images, captions = [], []
    for prior in priors:
        images.append(drawn(model.generate(PROMPTS, prior=prior, n=n, seed=0)))
        captions += [f"{p} [{prior}]" for p in PROMPTS for _ in range(n)]
    _save(figures.image_grid(torch.cat(images), captions, ncols=len(PROMPTS) * n), out / "text_to_image.png")
    for prior, pictures in zip(priors, images):  # one picture per prior, a prompt per row: legible at a page's width
        fig = figures.image_grid(pictures, [p for p in PROMPTS for _ in range(n)], ncols=n, size=1.8, wrap=30)
        fig.suptitle("no prior (z_t decoded)" if prior == "none" else f"{prior} prior", fontsize=10)
        fig.tight_layout()
        _save(fig, out / f"text_to_image_{prior}.png")

    ds = run_datasets(run_dir)["test"]
    attrs = ds.attributes()
    single = [k for k, a in enumerate(attrs) if a["n_objects"] == 1]
    test_images = ds.images()
    if len(single) < 2:
        raise UserError(f"{run_dir}'s test split has fewer than two one-object images to vary and interpolate")
    a, b = test_images[single[0]].float() / 255, test_images[single[1]].float() / 255

    variations = model.variations(a, n=7, eta=1.0)
    _save(figures.image_grid(drawn(torch.cat([a[None], variations])),
                             ["input"] + [f"eta 1, #{k + 1}" for k in range(7)]), out / "variations.png")
    steps = model.interpolate(a, b, n=6, latent="slerp")
    _save(figures.image_grid(drawn(torch.cat([a[None], steps, b[None]])),
                             ["image A"] + [f"theta {k / 5:.1f}" for k in range(6)] + ["image B"]),
          out / "interpolation.png")
    s = attrs[single[0]]
    names = list(COLORS)
    other = next(c for c in names[names.index(s["color0"]) + 1:] + names if (c, s["shape0"]) in SEEN_PAIRS)
    src = canonical_caption(make_scene(s["color0"], s["shape0"], s["size0"], s["position0"]))
    dst = canonical_caption(make_scene(other, s["shape0"], s["size0"], s["position0"]))
    rows, captions = [], []
    for method in ("paper", EDIT_METHOD):  # the paper's text diff, then the default: the best on evaluate textdiff
        top = EDIT_THETA_MAX[method]
        rows += [a[None], model.text_diff(a, src, dst, n=7, theta_max=top, method=method)]
        captions += [f"{src} -> {other} [{method}]"] + [f"theta {top * k / 6:.2f}" for k in range(7)]
    _save(figures.image_grid(drawn(torch.cat(rows)), captions), out / "textdiff.png")
    side = model.upsampler.image_size if cascade else model.image_size
    metrics["pictures"] = {"prompts": PROMPTS, "priors": priors, "textdiff": [src, dst], "side": side,
                           "upsampled": cascade}
    return (f"Pictures ({side}x{side}{', through the upsampler' if cascade else ''}): text_to_image.png (rows: "
            + ", ".join(priors) + " prior; one picture each: " + ", ".join(f"text_to_image_{p}.png" for p in priors)
            + "), variations.png, interpolation.png, textdiff.png")
