"""``minidalle2 demo``: train what exists of the pipeline from scratch and write its figures and metrics.

Resumable: rerunning the same command continues an interrupted run and reuses finished stages.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt


def run_demo(out: Path, preset: str = "quick", fresh: bool = False, progress: bool = True, log=print) -> dict:
    from minidalle2 import figures
    from minidalle2.checkpoint import read_json, write_json
    from minidalle2.clip import PRESETS, get_preset, train_clip
    from minidalle2.data import COLORS
    from minidalle2.embeddings import cache_embeddings, load_embeddings
    from minidalle2.errors import UserError
    from minidalle2.evaluate import evaluate_clip, format_clip_report

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    run_dir = out / "run"
    if fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    cfg = get_preset(preset, PRESETS)
    timings = {}

    start = time.time()
    resume = (run_dir / "clip" / "train_state.json").exists()
    log(f"[1/1] CLIP ({preset} preset){' - resuming' if resume else ''}")
    info = train_clip(cfg, run_dir, resume=resume, progress=progress, log=log)
    try:
        load_embeddings(run_dir, "test")
    except UserError:
        cache_embeddings(run_dir, log=log)
    timings["clip_s"] = round(time.time() - start, 1)

    result = evaluate_clip(run_dir)
    log(format_clip_report(result))
    test = load_embeddings(run_dir, "test")
    save = lambda fig, name: (fig.savefig(out / name, dpi=110), plt.close(fig))  # noqa: E731
    from minidalle2.clip import clip_datasets

    ds = clip_datasets(cfg, read_json(run_dir / "clip" / "train_state.json").get("data"))["test"]
    save(figures.image_grid(ds.images()[:16], ds.captions()[:16]), "dataset.png")
    save(figures.training_curve(info["history"], "CLIP contrastive loss"), "clip_loss.png")
    save(figures.similarity_heatmap(test["z_i"], test["z_t"], test["captions"]), "clip_similarity.png")
    if "zero_shot_accuracy" in result:
        save(figures.embedding_projection(test["z_i"], test["color0"], list(COLORS), "z_i by colour"),
             "clip_zi_by_colour.png")
        save(figures.accuracy_bars({k: result[k] for k in ("zero_shot_accuracy", "heldout_zero_shot_accuracy")}),
             "clip_zero_shot.png")
    metrics = {"preset": preset, "timings": timings, "clip": result}
    write_json(out / "metrics.json", metrics)
    (out / "metrics.md").write_text("# minidalle2 demo\n\n```\n" + format_clip_report(result) + "\n```\n\n"
                                    + f"Wall time: {json.dumps(timings)}\n")
    log(f"figures and metrics written to {out}/")
    return metrics
