"""A run dir and its stages: train one stage by name, or make sure several exist (for the demo and notebooks).

    RUN/clip/             CLIP in open_clip's local-dir format (+ train_state for --resume)
    RUN/embeddings/       z_t, z_i and per-token text features of every split
    RUN/prior_diffusion/  the diffusion prior       RUN/prior_ar/  the AR prior (with its PCA tokenizer)
    RUN/decoder/          the U-Net decoder         RUN/decoder_samples/  its sample grids over training
    RUN/oracle/           the attribute oracle that scores generated images (independent of CLIP)

Stages train in this order; each later stage names the command for a missing earlier one.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from minidalle2 import clip, decoder, prior_ar, prior_diffusion
from minidalle2.checkpoint import config_dict, file_sha256, is_trained, read_json, read_train_state, stage_dir
from minidalle2.embeddings import cache_embeddings, load_meta
from minidalle2.errors import UserError
from minidalle2.evaluation import oracle

STAGES = ("clip", "prior-diffusion", "prior-ar", "decoder", "oracle")
SMOKE = os.environ.get("MINIDALLE2_SMOKE") == "1"
CHECKOUT = Path(__file__).resolve().parents[2]  # the source checkout, when the package is installed from one
PRETRAINED = CHECKOUT / "data" / "pretrained"  # the run shipped with the checkout
# Each stage's presets, and its training function: train(preset, run_dir, resume=, progress=, log=) -> info
PRESETS = {"clip": clip.PRESETS, "prior-diffusion": prior_diffusion.PRESETS, "prior-ar": prior_ar.PRESETS,
           "decoder": decoder.PRESETS, "oracle": oracle.PRESETS}
TRAIN = {"clip": clip.train_clip, "prior-diffusion": prior_diffusion.train_prior_diffusion,
         "prior-ar": prior_ar.train_prior_ar, "decoder": decoder.train_decoder, "oracle": oracle.train_oracle}


def stage_presets(stage: str) -> dict:
    """The named presets of a stage."""
    if stage not in PRESETS:
        raise UserError(f"unknown stage '{stage}'; choose one of: {', '.join(STAGES)}")
    return PRESETS[stage]


def get_preset(stage: str, name: str):
    """A fresh copy of one named preset of a stage (safe to modify)."""
    table = stage_presets(stage)
    if name not in table:
        raise UserError(f"unknown preset '{name}'; choose one of: {', '.join(table)}")
    return copy.deepcopy(table[name])


def training_info(run_dir: Path, stage: str) -> dict:
    """A stage's train_state.json (step, history, wall_s, config...), its config in today's layout even for a run
    of the old one (``checkpoint.split_settings``)."""
    return read_train_state(stage_dir(run_dir, stage), stage_presets(stage)["quick"])


def train_stage(stage: str, run_dir: Path, preset: str = "quick", resume: bool = False, progress: bool = True,
                log=print, **clip_data) -> dict:
    """Train one stage with a named preset. ``clip_data`` (data_dir, skip_bad) applies to CLIP only."""
    run_dir = Path(run_dir)
    cfg = get_preset(stage, preset)
    info = TRAIN[stage](cfg, run_dir, resume=resume, progress=progress, log=log, **clip_data)
    if stage == "clip":
        cache_embeddings(run_dir, log=log)
    return info


def train_all(run_dir: Path, preset: str = "quick", progress: bool = True, log=print, **clip_data) -> dict:
    """``minidalle2 train all``: every stage in order. Finished stages are kept, an unfinished one resumes, so
    rerunning the command after an interruption continues it. Returns {stage: training info}."""
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
        infos[stage] = training_info(run_dir, stage)
    return infos


def ensure(run_dir: Path, stages: list[str], preset: str, progress: bool = True, log=print,
           restart_stale: bool = False) -> Path:
    """Train each of ``stages`` that is missing or unfinished in ``run_dir`` (resuming where it stopped).

    A finished stage is reused only if it was trained with this preset; otherwise this is an error, or with
    ``restart_stale`` (a cache such as the notebooks' run) the whole run dir is trained again.
    """
    for stage in stages:
        state = training_info(run_dir, stage) if is_trained(run_dir, stage) else None
        if state and state["config"] != config_dict(get_preset(stage, preset)):
            if restart_stale:
                log(f"{run_dir} was made by another version or preset; training it again")
                shutil.rmtree(run_dir)
                return ensure(run_dir, stages, preset, progress, log)
            raise UserError(f"{stage_dir(run_dir, stage)} was trained with another preset than '{preset}'; "
                            "use that preset, or a fresh run dir")
        if state is None or state["step"] < state["config"]["train"]["steps"]:
            log(f"training {stage} ({preset} preset)")
            train_stage(stage, run_dir, preset, resume=state is not None, progress=progress, log=log)
        elif stage == "clip":
            try:
                load_meta(run_dir)
            except UserError:  # CLIP finished but the cache was cut short
                cache_embeddings(run_dir, log=log)
    return Path(run_dir)


RESTORE = ("restore it with `git checkout -- data/pretrained` (or a fresh clone), or train your own run with "
           "`minidalle2 demo` (no --pretrained)")


def check_shipped(folder: Path) -> None:
    """Refuse a shipped run whose files are missing or changed: the manifest lists every file with its sha256."""
    try:
        manifest = read_json(folder / "manifest.json")
    except (OSError, ValueError, UserError):  # read_json names a cut-short file a UserError of its own
        raise UserError(f"{folder}/manifest.json is unreadable or not valid JSON; {RESTORE}") from None
    missing = [f for f in manifest.get("files", {}) if not (folder / f).is_file()]
    changed = [f for f, sha in manifest.get("files", {}).items()
               if f not in missing and file_sha256(folder / f) != sha]
    problems = [f"{len(files)} file(s) {what}: " + ", ".join(files[:3]) + (" ..." if len(files) > 3 else "")
                for what, files in (("missing", missing), ("changed", changed)) if files]
    if problems:
        raise UserError(f"the shipped run {folder} is incomplete or corrupt ({'; '.join(problems)}); {RESTORE}")


def pretrained_run() -> Path:
    """The shipped run (``data/pretrained``), checked whole, with a clear error when this install has none."""
    if not (PRETRAINED / "manifest.json").exists():
        raise UserError(f"no shipped checkpoints at {PRETRAINED}; use a git checkout of minidalle2 installed with "
                        "`pip install -e .`, or train your own with `minidalle2 demo` (no --pretrained)")
    check_shipped(PRETRAINED)
    return PRETRAINED


def notebook_run(stages: list[str], log=print) -> tuple[Path, str]:
    """The run dir a notebook uses, with ``stages`` trained: tiny models in smoke mode (CI), else ``quick``.

    Returns (run_dir, preset). Outside smoke mode the shipped run (``data/pretrained``) is used when it has every
    stage (it keeps the test and held-out embeddings; a notebook that needs training z_i encodes them with
    ``embeddings.split_embeddings``). Otherwise runs live under the checkout's ``runs/`` (or $MINIDALLE2_RUNS), so
    the notebooks share one run and each stage trains once.
    """
    if not SMOKE and (PRETRAINED / "manifest.json").exists():
        check_shipped(PRETRAINED)  # a damaged copy stops here, not halfway through a notebook
        if all(is_trained(PRETRAINED, s) for s in stages):
            return PRETRAINED, read_json(PRETRAINED / "manifest.json")["preset"]
    preset = "tiny" if SMOKE else "quick"
    default = CHECKOUT / "runs" if (CHECKOUT / "pyproject.toml").exists() else Path.cwd() / "runs"
    root = Path(os.environ.get("MINIDALLE2_RUNS", default))
    run_dir = root / f"notebooks-{preset}"
    return ensure(run_dir, stages, preset, progress=not SMOKE, log=log, restart_stale=True), preset
