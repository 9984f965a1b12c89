"""A run dir and its stages: train one stage by name, or make sure several exist (for the demo and notebooks).

    RUN/clip/             CLIP in open_clip's local-dir format (+ train_state for --resume)
    RUN/embeddings/       z_t, z_i and per-token text features of every split
    RUN/prior_diffusion/  the diffusion prior       RUN/prior_ar/  the AR prior (with its PCA tokenizer)

Stages train in this order; each later stage names the command for a missing earlier one.
"""

from __future__ import annotations

import os
from pathlib import Path

from minidalle2.errors import UserError

STAGES = ("clip", "prior-diffusion", "prior-ar")
SMOKE = os.environ.get("MINIDALLE2_SMOKE") == "1"


def stage_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / stage.replace("-", "_")


def is_trained(run_dir: Path, stage: str, preset_steps: int | None = None) -> bool:
    """True when the stage's checkpoint exists (and reached ``preset_steps`` if given)."""
    from minidalle2.checkpoint import read_json

    state = stage_dir(run_dir, stage) / "train_state.json"
    if not state.exists():
        return False
    return preset_steps is None or read_json(state)["step"] >= preset_steps


def train_stage(stage: str, run_dir: Path, preset: str = "quick", resume: bool = False, progress: bool = True,
                log=print, **clip_data) -> dict:
    """Train one stage with a named preset. ``clip_data`` (data_dir, skip_bad) applies to CLIP only."""
    from minidalle2.clip import get_preset

    run_dir = Path(run_dir)
    if stage == "clip":
        from minidalle2.clip import PRESETS, train_clip
        from minidalle2.embeddings import cache_embeddings

        info = train_clip(get_preset(preset, PRESETS), run_dir, resume=resume, progress=progress, log=log,
                          **clip_data)
        cache_embeddings(run_dir, log=log)
        return info
    if stage == "prior-diffusion":
        from minidalle2.prior_diffusion import PRESETS, train_prior_diffusion

        return train_prior_diffusion(get_preset(preset, PRESETS), run_dir, resume=resume, progress=progress, log=log)
    if stage == "prior-ar":
        from minidalle2.prior_ar import PRESETS, train_prior_ar

        return train_prior_ar(get_preset(preset, PRESETS), run_dir, resume=resume, progress=progress, log=log)
    raise UserError(f"unknown stage '{stage}'; choose one of: {', '.join(STAGES)}")


def ensure(run_dir: Path, stages: list[str], preset: str, progress: bool = True, log=print) -> Path:
    """Train each of ``stages`` that is missing or unfinished in ``run_dir`` (resuming where it stopped)."""
    from minidalle2.embeddings import load_embeddings

    for stage in stages:
        if is_trained(run_dir, stage):
            from minidalle2.checkpoint import read_json

            state = read_json(stage_dir(run_dir, stage) / "train_state.json")
            if state["step"] >= state["config"]["steps"]:
                continue
        log(f"training {stage} ({preset} preset)")
        train_stage(stage, run_dir, preset, resume=is_trained(run_dir, stage), progress=progress, log=log)
        if stage == "clip":
            load_embeddings(run_dir, "test")
    return Path(run_dir)


def notebook_run(stages: list[str], log=print) -> tuple[Path, str]:
    """The run dir a notebook uses, with ``stages`` trained: tiny models in smoke mode (CI), else ``quick``.

    Returns (run_dir, preset). Runs live under ``runs/`` next to the notebooks' project root, so the notebooks
    share one run and each stage trains once.
    """
    preset = "tiny" if SMOKE else "quick"
    root = Path(os.environ.get("MINIDALLE2_RUNS", Path(__file__).resolve().parent.parent / "runs"))
    run_dir = root / f"notebooks-{preset}"
    return ensure(run_dir, stages, preset, progress=not SMOKE, log=log), preset
