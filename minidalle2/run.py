"""A run dir and its stages: train one stage by name, or make sure several exist (for the demo and notebooks).

    RUN/clip/             CLIP in open_clip's local-dir format (+ train_state for --resume)
    RUN/embeddings/       z_t, z_i and per-token text features of every split
    RUN/prior_diffusion/  the diffusion prior       RUN/prior_ar/  the AR prior (with its PCA tokenizer)
    RUN/decoder/          the U-Net decoder         RUN/decoder_samples/  its sample grids over training
    RUN/oracle/           the attribute oracle that scores generated images (independent of CLIP)

Stages train in this order; each later stage names the command for a missing earlier one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from minidalle2.errors import UserError

STAGES = ("clip", "prior-diffusion", "prior-ar", "decoder", "oracle")
SMOKE = os.environ.get("MINIDALLE2_SMOKE") == "1"
PRETRAINED = Path(__file__).resolve().parent.parent / "data" / "pretrained"  # the run shipped with the checkout


def stage_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / stage.replace("-", "_")


def is_trained(run_dir: Path, stage: str) -> bool:
    """True when the stage has a checkpoint (finished or not)."""
    return (stage_dir(run_dir, stage) / "train_state.json").exists()


def stage_presets(stage: str) -> dict:
    """The named presets of a stage's config."""
    if stage == "clip":
        from minidalle2.clip import PRESETS
    elif stage == "prior-diffusion":
        from minidalle2.prior_diffusion import PRESETS
    elif stage == "prior-ar":
        from minidalle2.prior_ar import PRESETS
    elif stage == "decoder":
        from minidalle2.decoder import PRESETS
    elif stage == "oracle":
        from minidalle2.oracle import PRESETS
    else:
        raise UserError(f"unknown stage '{stage}'; choose one of: {', '.join(STAGES)}")
    return PRESETS


def train_stage(stage: str, run_dir: Path, preset: str = "quick", resume: bool = False, progress: bool = True,
                log=print, **clip_data) -> dict:
    """Train one stage with a named preset. ``clip_data`` (data_dir, skip_bad) applies to CLIP only."""
    from minidalle2.clip import get_preset

    run_dir = Path(run_dir)
    cfg = get_preset(preset, stage_presets(stage))
    if stage == "clip":
        from minidalle2.clip import train_clip
        from minidalle2.embeddings import cache_embeddings

        info = train_clip(cfg, run_dir, resume=resume, progress=progress, log=log, **clip_data)
        cache_embeddings(run_dir, log=log)
        return info
    if stage == "prior-diffusion":
        from minidalle2.prior_diffusion import train_prior_diffusion

        return train_prior_diffusion(cfg, run_dir, resume=resume, progress=progress, log=log)
    if stage == "prior-ar":
        from minidalle2.prior_ar import train_prior_ar

        return train_prior_ar(cfg, run_dir, resume=resume, progress=progress, log=log)
    if stage == "oracle":
        from minidalle2.oracle import train_oracle

        return train_oracle(cfg, run_dir, resume=resume, progress=progress, log=log)
    from minidalle2.decoder import train_decoder

    return train_decoder(cfg, run_dir, resume=resume, progress=progress, log=log)


def train_all(run_dir: Path, preset: str = "quick", progress: bool = True, log=print, **clip_data) -> dict:
    """``minidalle2 train all``: every stage in order. Finished stages are kept, an unfinished one resumes, so
    rerunning the command after an interruption continues it. Returns {stage: training info}."""
    from minidalle2.checkpoint import read_json

    run_dir = Path(run_dir)
    if any(clip_data.values()) and is_trained(run_dir, "clip"):
        log("note: CLIP is already trained in this run dir; --data-dir / --skip-bad are not used again")
    infos = {}
    for stage in STAGES:
        if stage == "clip" and not is_trained(run_dir, "clip"):
            log(f"training clip ({preset} preset)")
            train_stage("clip", run_dir, preset, progress=progress, log=log, **clip_data)
        else:
            ensure(run_dir, [stage], preset, progress=progress, log=log)
        infos[stage] = read_json(stage_dir(run_dir, stage) / "train_state.json")
    return infos


def ensure(run_dir: Path, stages: list[str], preset: str, progress: bool = True, log=print,
           restart_stale: bool = False) -> Path:
    """Train each of ``stages`` that is missing or unfinished in ``run_dir`` (resuming where it stopped).

    A finished stage is reused only if it was trained with this preset; otherwise this is an error, or with
    ``restart_stale`` (a cache such as the notebooks' run) the whole run dir is trained again.
    """
    from minidalle2.checkpoint import config_dict, read_json
    from minidalle2.clip import get_preset
    from minidalle2.embeddings import cache_embeddings, load_meta

    for stage in stages:
        state_path = stage_dir(run_dir, stage) / "train_state.json"
        state = read_json(state_path) if state_path.exists() else None
        if state and state["config"] != config_dict(get_preset(preset, stage_presets(stage))):
            if restart_stale:
                log(f"{run_dir} was made by another version or preset; training it again")
                shutil.rmtree(run_dir)
                return ensure(run_dir, stages, preset, progress, log)
            raise UserError(f"{stage_dir(run_dir, stage)} was trained with another preset than '{preset}'; "
                            "use that preset, or a fresh run dir")
        if state is None or state["step"] < state["config"]["steps"]:
            log(f"training {stage} ({preset} preset)")
            train_stage(stage, run_dir, preset, resume=state is not None, progress=progress, log=log)
        elif stage == "clip":
            try:
                load_meta(run_dir)
            except UserError:  # CLIP finished but the cache was cut short
                cache_embeddings(run_dir, log=log)
    return Path(run_dir)


def notebook_run(stages: list[str], splits: tuple[str, ...] = ("test",), log=print) -> tuple[Path, str]:
    """The run dir a notebook uses, with ``stages`` trained: tiny models in smoke mode (CI), else ``quick``.

    Returns (run_dir, preset). Outside smoke mode the shipped run (``data/pretrained``) is used when it has every
    stage and every embedding split asked for (it ships only the evaluation splits, test and heldout). Otherwise runs live under the checkout's ``runs/`` (or $MINIDALLE2_RUNS), so the notebooks
    share one run and each stage trains once.
    """
    if not SMOKE and (PRETRAINED / "manifest.json").exists() and all(is_trained(PRETRAINED, s) for s in stages):
        from minidalle2.checkpoint import read_json

        if set(splits) <= set(read_json(PRETRAINED / "embeddings" / "meta.json")["splits"]):
            return PRETRAINED, read_json(PRETRAINED / "manifest.json")["preset"]
    preset = "tiny" if SMOKE else "quick"
    checkout = Path(__file__).resolve().parent.parent
    default = checkout / "runs" if (checkout / "pyproject.toml").exists() else Path.cwd() / "runs"
    root = Path(os.environ.get("MINIDALLE2_RUNS", default))
    run_dir = root / f"notebooks-{preset}"
    return ensure(run_dir, stages, preset, progress=not SMOKE, log=log, restart_stale=True), preset
