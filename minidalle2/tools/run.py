"""Run dirs as the commands use them: train every stage in order, make sure some exist (the demo, the notebooks),
and the shipped run. One stage is trained and loaded by ``minidalle2.runs``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from minidalle2 import distributed, runs
from minidalle2.checkpoint import config_dict, file_sha256, is_trained, read_json, stage_dir
from minidalle2.embeddings import cache_embeddings, load_meta, run_image_size
from minidalle2.errors import UserError
from minidalle2.runs import STAGES, get_preset

SMOKE = os.environ.get("MINIDALLE2_SMOKE") == "1"
CHECKOUT = Path(__file__).resolve().parents[2]  # the source checkout, when the package is installed from one
PRETRAINED = CHECKOUT / "data" / "pretrained"  # the run shipped with the checkout


def shown(path: Path) -> str:
    """A path as a notebook or a message prints it: relative to the checkout when inside it (no user's home
    directory in committed outputs), else as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(CHECKOUT))
    except ValueError:
        return str(path)


def training_info(run_dir: Path, stage: str) -> dict:
    """A stage's train_state.json: step, history, wall_s, config (its preset), ..."""
    return read_json(stage_dir(run_dir, stage) / "train_state.json")


def expected_config(run_dir: Path, stage: str, preset: str) -> dict:
    """The config a stage of ``run_dir`` trained with ``preset`` records (CLIP's as adapted to its data)."""
    cfg = get_preset(stage, preset)
    if stage == "clip" and is_trained(run_dir, "clip"):
        cfg = runs.for_data(cfg, training_info(run_dir, "clip").get("data"), log=lambda *a: None)
    return config_dict(cfg)


def train_all(run_dir: Path, preset: str = "quick", progress: bool = True, log=print, **clip_data) -> dict:
    """``minidalle2 train all``: every stage in order. Finished stages are kept, an unfinished one resumes, so
    rerunning the command after an interruption continues it. Returns {stage: training info}."""
    run_dir = Path(run_dir)
    if any(clip_data.values()) and is_trained(run_dir, "clip"):
        log("note: CLIP is already trained in this run dir; --data-dir / --skip-bad are not used again")
    infos = {}
    for stage in STAGES:
        low_res = get_preset("upsampler", preset).model.low_res if stage == "upsampler" else None
        if low_res and run_image_size(run_dir) != low_res:
            log(f"note: the upsampler takes {low_res}x{low_res} pictures and this run's are {run_image_size(run_dir)}"
                f"x{run_image_size(run_dir)}; not trained")
            continue
        if stage == "clip" and not is_trained(run_dir, "clip"):
            log(f"training clip ({preset} preset)")
            runs.train("clip", run_dir, preset, progress=progress, log=log, **clip_data)
        else:
            ensure(run_dir, [stage], preset, progress=progress, log=log)
        infos[stage] = training_info(run_dir, stage)
    return infos


def ensure(run_dir: Path, names: list[str], preset: str, progress: bool = True, log=print,
           restart_stale: bool = False) -> Path:
    """Train each of the stages ``names`` that is missing or unfinished in ``run_dir`` (resuming where it stopped).

    A finished stage is reused only if it was trained with this preset; otherwise this is an error, or with
    ``restart_stale`` (a cache such as the notebooks' run) the whole run dir is trained again.
    """
    for stage in names:
        state = training_info(run_dir, stage) if is_trained(run_dir, stage) else None
        if state and state["config"] != expected_config(run_dir, stage, preset):
            if restart_stale:
                log(f"{run_dir} was made by another version or preset; training it again")
                shutil.rmtree(run_dir)
                return ensure(run_dir, names, preset, progress, log)
            raise UserError(f"{stage_dir(run_dir, stage)} was trained with another preset than '{preset}'; "
                            "use that preset, or a fresh run dir")
        if state is None or state["step"] < state["config"]["train"]["steps"]:
            log(f"training {stage} ({preset} preset)")
            started = state is not None or runs.base_dir(run_dir, stage).exists()  # (the recipe it starts from)
            runs.train(stage, run_dir, preset, resume=started, progress=progress, log=log)
        elif stage == "clip":
            try:
                load_meta(run_dir)
            except UserError:  # CLIP finished but the cache was cut short
                if distributed.is_main():  # (under torchrun the other ranks wait for it)
                    cache_embeddings(run_dir, log=log)
                distributed.barrier()
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
            manifest = read_json(PRETRAINED / "manifest.json")  # the preset of these stages ("mixed" if several)
            names = {manifest.get("presets", {}).get(s, manifest["preset"]) for s in stages}
            return PRETRAINED, names.pop() if len(names) == 1 else "mixed"
    preset = "tiny" if SMOKE else "quick"
    run_dir = runs_root() / f"notebooks-{preset}"
    return ensure(run_dir, stages, preset, progress=not SMOKE, log=log, restart_stale=True), preset


def runs_root() -> Path:
    """Where the notebooks keep the runs they train: the checkout's ``runs/`` (or $MINIDALLE2_RUNS)."""
    default = CHECKOUT / "runs" if (CHECKOUT / "pyproject.toml").exists() else Path.cwd() / "runs"
    return Path(os.environ.get("MINIDALLE2_RUNS", default))


def notebook_upsampler(run_dir: Path, blur: bool = True, own: bool = True, log=print) -> Path:
    """The run dir holding an upsampler notebook 07 uses: ``run_dir``'s own if it has one and ``own``, else one
    trained once under ``runs_root()`` (``tiny`` in smoke mode, else ``quick``). The upsampler needs no CLIP, so it
    can upsample any run's 32-px pictures. ``blur=False``: the same recipe without the conditioning augmentation
    (p_blur = 0); with ``own=False`` the two make the notebook's ablation, one recipe apart only in the blur."""
    if blur and own and is_trained(run_dir, "upsampler"):
        return Path(run_dir)
    name = "tiny" if SMOKE else "quick"
    preset = get_preset("upsampler", name)
    if not blur:
        preset = dataclasses.replace(preset, model=dataclasses.replace(preset.model, p_blur=0.0))
    folder = runs_root() / f"notebooks-upsampler-{name}{'' if blur else '-no-blur'}"
    state = training_info(folder, "upsampler") if is_trained(folder, "upsampler") else None
    if state and (state["config"] != config_dict(preset) or state["step"] < preset.train.steps):
        shutil.rmtree(folder)  # another version, preset or an interrupted run: train it again
        state = None
    if state is None:
        log(f"training the upsampler ({name} preset{'' if blur else ', no blur'})")
        runs.train("upsampler", folder, preset, progress=not SMOKE, log=log)
    return folder
