"""``minidalle2 demo``: train every stage from scratch with one preset, then write figures and metrics.

Resumable: rerunning the same command continues an interrupted run and reuses finished stages.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt

from minidalle2.errors import UserError

DEMO_STAGES = ["clip", "prior-diffusion", "prior-ar"]


def run_demo(out: Path, preset: str = "quick", fresh: bool = False, progress: bool = True, log=print) -> dict:
    from minidalle2 import evaluate, figures
    from minidalle2.checkpoint import read_json, write_json
    from minidalle2.clip import ClipConfig, clip_datasets
    from minidalle2.data import COLORS
    from minidalle2.embeddings import load_embeddings
    from minidalle2.run import ensure

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    run_dir = out / "run"
    if fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    for k, stage in enumerate(DEMO_STAGES, 1):
        log(f"[{k}/{len(DEMO_STAGES)}] {stage}")
        start = time.time()
        ensure(run_dir, [stage], preset, progress=progress, log=log)
        timings[f"{stage}_s"] = round(time.time() - start, 1)

    save = lambda fig, name: (fig.savefig(out / name, dpi=110), plt.close(fig))  # noqa: E731
    metrics = {"preset": preset, "timings": timings}
    report = []

    clip_state = read_json(run_dir / "clip" / "train_state.json")
    metrics["clip"] = result = evaluate.evaluate_clip(run_dir)
    report.append(evaluate.format_clip_report(result))
    test = load_embeddings(run_dir, "test")
    ds = clip_datasets(ClipConfig(**clip_state["config"]), clip_state.get("data"))["test"]
    save(figures.image_grid(ds.images()[:16], ds.captions()[:16]), "dataset.png")
    save(figures.training_curve(clip_state["history"], "CLIP contrastive loss"), "clip_loss.png")
    save(figures.similarity_heatmap(test["z_i"], test["z_t"], test["captions"]), "clip_similarity.png")
    if "zero_shot_accuracy" in result:
        save(figures.embedding_projection(test["z_i"], test["color0"], list(COLORS), "z_i by colour"),
             "clip_zi_by_colour.png")
        save(figures.accuracy_bars({"test": result["zero_shot_accuracy"],
                                    "held-out combos": result["heldout_zero_shot_accuracy"]}), "clip_zero_shot.png")

    metrics["priors"] = result = evaluate.evaluate_priors(run_dir)
    report.append(evaluate.format_priors_report(result))
    names = [n for n in ("diffusion", "ar") if n in result]
    bars = {"no prior (z_t)": {"test": result["baseline_cos_text_image"],
                               "held-out": result.get("heldout_baseline_cos_text_image", 0.0)}}
    for n in names:
        bars[f"{n} prior"] = {"test": result[n]["cos_pred_true"],
                              "held-out": result.get(f"heldout_{n}", {}).get("cos_pred_true", 0.0)}
    save(figures.accuracy_bars(bars, "cos(predicted z_i, true z_i)"), "priors.png")

    write_json(out / "metrics.json", metrics)
    text = "\n\n".join(report)
    (out / "metrics.md").write_text(f"# minidalle2 demo ({preset} preset)\n\n```\n{text}\n```\n\n"
                                    f"Wall time per stage (s): {timings}\n")
    log(text)
    log(f"figures and metrics written to {out}/")
    return metrics
