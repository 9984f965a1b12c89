"""Checkpoints: the files a stage writes into its run dir, and how they are read back.

A checkpoint is a folder of safetensors + JSON, never a pickle. It is written next to its final place and
swapped in with renames, so an interrupted or failed run always leaves the last good checkpoint whole:

    DIR/clip.tmp/  (being written)  ->  DIR/clip.old/ (previous)  ->  DIR/clip/ (new)  ->  old removed

Optimizer state is flattened into tensors ("optimizer/<param>/<name>") plus its JSON param groups, so resuming
restores AdamW exactly. Every stage but CLIP (which keeps open_clip's own format) describes its weights with a
``config.json`` of one layout:

    {"model": the network's settings, "sample": its default sampling settings ({} if it samples nothing),
     "clip_sha256": the CLIP whose embeddings it learned from (if any), ...: what the run fixed (sizes, accuracy)}
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minidalle2.errors import UserError


# --- files ---------------------------------------------------------------------------------------------------

def write_json(path: Path, obj) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing; the checkpoint is incomplete, retrain this stage") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt, retrain this stage") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, refused when unreadable or when any float tensor holds NaN or inf: a damaged file that
    still parses would otherwise sample blank pictures without a word."""
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise UserError(f"{path} is missing; the checkpoint is incomplete, retrain this stage") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); retrain this stage") from None
    check_finite(path, tensors)
    return tensors


def check_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse tensors holding NaN or inf, naming the file and the first bad tensor."""
    for name, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{path} is damaged: '{name}' holds NaN or inf values; retrain this stage or restore "
                            "the file from a good copy")


def save_weights(path: Path, model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the weights sampling uses (``state``: default the model's own, or e.g. its EMA) with the parameters in
    float16. That halves a checkpoint (the quick CLIP, mostly its 49 408-token embedding: 18.4 -> 9.2 MB), and
    loading casts them back into the float32 model, a relative change below 5e-4. Buffers keep their dtype, and
    the training state that --resume reads stays float32, so resuming is exact."""
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    state = model.state_dict() if state is None else state
    save_file({k: (v.half() if k in params and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in state.items()}, str(path))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a fresh temporary folder; on success it replaces ``final`` (on any error ``final`` is untouched)."""
    final = Path(final)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: Path) -> None:
    """If a swap was cut between its two renames, put the previous checkpoint back."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        os.replace(old, final)


# --- training state ------------------------------------------------------------------------------------------

def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            # a plain layout: safetensors refuses the channels_last moments of a channels_last model
            tensors[f"optimizer/{pid}/{name}"] = torch.as_tensor(value).detach().clone(
                memory_format=torch.contiguous_format)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    opt.load_state_dict({"state": state, "param_groups": groups})
    for p, saved in opt.state.items():  # moments back in their parameter's layout (channels_last), which the
        for name, value in saved.items():  # fused AdamW kernel assumes
            if value.shape == p.shape and value.stride() != p.stride():
                saved[name] = torch.empty_like(p).copy_(value)


def save_train_state(folder: Path, opt: torch.optim.Optimizer, ema, info: dict, model: torch.nn.Module) -> None:
    """Write ``train_state.safetensors`` (raw weights, optimizer, ``ema``: a ``training.EMA`` or None) and
    ``train_state.json`` (step, history...)."""
    tensors, groups = optimizer_to_tensors(opt)
    tensors.update({f"model/{k}": v.detach().contiguous() for k, v in model.state_dict().items()})
    if ema is not None:
        tensors.update({f"ema/{k}": v.contiguous() for k, v in ema.shadow.items()})
    save_file(tensors, str(Path(folder) / "train_state.safetensors"))
    write_json(Path(folder) / "train_state.json", {**info, "param_groups": groups})


def load_train_state(folder: Path, opt: torch.optim.Optimizer, ema, preset) -> dict:
    """Restore what ``save_train_state`` wrote; return its JSON info (step, history...), the config in the layout
    of ``preset``."""
    info = read_train_state(folder, preset)
    tensors = read_tensors(Path(folder) / "train_state.safetensors")
    try:
        optimizer_from_tensors(opt, tensors, info.pop("param_groups"))
        if ema is not None:
            ema.load({k[4:]: v for k, v in tensors.items() if k.startswith("ema/")})
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"training state in {folder} does not match this model ({e}); "
                        "start a new --run-dir instead of --resume") from None
    return info


# --- run dirs ----------------------------------------------------------------------------------------------

def stage_dir(run_dir: Path, stage: str) -> Path:
    """The folder of a stage ("prior-diffusion" or "prior_diffusion") in a run dir."""
    return Path(run_dir) / stage.replace("-", "_")


def is_trained(run_dir: Path, stage: str) -> bool:
    """True when the stage has a checkpoint (finished or not)."""
    return (stage_dir(run_dir, stage) / "train_state.json").exists()


def prepare_stage_dir(run_dir: Path, stage: str, resume: bool) -> Path:
    """Check the --run-dir / --resume combination for one stage and return its folder."""
    run_dir = Path(run_dir)
    folder = stage_dir(run_dir, stage)
    recover_dir(folder)
    if resume and not (folder / "train_state.json").exists():
        raise UserError(f"--resume given but {folder} has no checkpoint to resume; drop --resume to start fresh")
    if not resume and folder.exists():
        raise UserError(f"{folder} already exists; pass --resume to continue it or choose a new --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    return folder


# --- configs -----------------------------------------------------------------------------------------------

def config_dict(cfg) -> dict:
    """A dataclass config as it reads back from JSON (tuples become lists), so saved and new configs compare."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(template, saved: dict):
    """Rebuild a config of ``template``'s class (nested dataclasses included) from its JSON dict. A setting the
    saved run predates takes its class default, which every new option is chosen to be: off, as the run was."""
    values = {}
    for f in dataclasses.fields(template):
        if f.name not in saved:
            values[f.name] = _class_default(f)
            continue
        default, value = getattr(template, f.name), saved[f.name]
        values[f.name] = config_from_dict(default, value) if dataclasses.is_dataclass(default) else value
    return type(template)(**values)


def write_config(folder: Path, model, sample=None, **facts) -> None:
    """A stage's ``config.json`` in the layout every stage shares (see the module docstring)."""
    write_json(Path(folder) / "config.json", {"model": config_dict(model),
                                              "sample": config_dict(sample) if sample is not None else {}, **facts})


def read_config(folder: Path, preset) -> dict:
    """A stage's ``config.json``: {"model", "sample", ...facts}; ``preset`` (any of the stage's presets) names the
    settings, which is what reading a run of the old layout needs."""
    path = Path(folder) / "config.json"
    saved = read_json(path)
    if not isinstance(saved, dict):
        raise UserError(f"{path} should hold a JSON object; the checkpoint is corrupt, retrain this stage")
    if "model" not in saved:  # a run of the old layout, see below
        nested = _section(path, saved.pop("config", {}), "config")
        flat = {**saved, **nested}
        _check_flat_keys(path, flat, preset)
        for f in dataclasses.fields(preset.model):  # a whole nested section missing is damage, not an older run
            if dataclasses.is_dataclass(getattr(preset.model, f.name)) and f.name not in flat:
                raise UserError(f"{path}: the '{f.name}' section is missing; restore the file or retrain this stage")
        settings = split_settings(flat, preset)
        saved.update(model=settings["model"], sample=settings.get("sample", {}))
    check_config(path, preset.model, _section(path, saved["model"], "model"), "model")
    if hasattr(preset, "sample"):
        check_config(path, preset.sample, _section(path, saved.get("sample", {}), "sample"), "sample")
    return saved


# --- validation of a config.json -----------------------------------------------------------------------------
# A setting a saved run lacks takes its class default (see config_from_dict). Anything else that does not fit is
# refused with one line naming the file, the field and what is allowed: an unknown key (a typo such as "predcit"
# would otherwise fall back to the default without a word), a wrong type, or a value outside the allowed ones.

# Settings with a fixed set of values (the diffusion's own lists, so they cannot drift apart)
def _allowed() -> dict[str, tuple]:
    from minidalle2.diffusion import LOSS_WEIGHTINGS, PREDICTIONS, SCHEDULES

    return {"schedule": tuple(SCHEDULES), "predict": tuple(PREDICTIONS), "loss_weighting": tuple(LOSS_WEIGHTINGS)}


# Facts a stage's config.json records beside its settings (see the module docstring)
FACTS = {"clip_sha256", "embed_dim", "text_width", "context_length", "n_components", "image_size", "accuracy",
         "n_eval", "step"}


def _section(path: Path, value, name: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{path}: '{name}' should be a JSON object of settings, got {json.dumps(value)}; "
                        "retrain this stage or restore the file")
    return value


def _check_flat_keys(path: Path, flat: dict, preset) -> None:
    """The old flat layout: every key must be a setting of some section of ``preset``, or a recorded fact."""
    known = set(FACTS)
    for f in dataclasses.fields(preset):
        value = getattr(preset, f.name)
        known |= {g.name for g in dataclasses.fields(value)} if dataclasses.is_dataclass(value) else {f.name}
    for key in flat:
        if key not in known:
            raise UserError(f"{path}: unknown setting '{key}'; allowed: {', '.join(sorted(known))} "
                            "(a typo? fix or remove it)")


def check_config(path: Path, template, saved: dict, where: str) -> None:
    """Check one section of a config.json against the dataclass ``template`` (nested sections recursively)."""
    fields = {f.name: f for f in dataclasses.fields(template)}
    for key, value in saved.items():
        name = f"{where}.{key}"
        if key not in fields:
            raise UserError(f"{path}: unknown setting '{name}'; allowed: {', '.join(fields)} (a typo? fix or "
                            "remove it)")
        default = getattr(template, key)
        if dataclasses.is_dataclass(default):
            check_config(path, default, _section(path, value, name), name)
            continue
        problem = _type_problem(str(fields[key].type), value)
        allowed = _allowed().get(key)
        if problem is None and allowed is not None and value not in allowed:
            problem = f"one of {', '.join(allowed)}"
        if problem is not None:
            raise UserError(f"{path}: '{name}' is {json.dumps(value)}; it should be {problem} (fix the value or "
                            "retrain this stage)")
    for key, f in fields.items():  # a whole nested section missing is damage, not an older run
        if key not in saved and dataclasses.is_dataclass(getattr(template, key)):
            raise UserError(f"{path}: the '{where}.{key}' section is missing; restore the file or retrain this stage")


def _type_problem(annotation: str, value) -> str | None:
    """None when ``value`` fits the field's annotation ('int', 'float | None', 'list[int]'...), else what would."""
    if value is None:
        return None if "None" in annotation else f"a {annotation.split(' ')[0].split('[')[0]}"
    base = annotation.replace(" | None", "").split("[")[0]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if base == "bool":
        return None if isinstance(value, bool) else "true or false"
    if base == "int":
        return None if number and isinstance(value, int) else "a whole number"
    if base == "float":
        return None if number and math.isfinite(value) else "a finite number"
    if base == "str":
        return None if isinstance(value, str) else "a string in quotes"
    if base in ("tuple", "list"):
        if annotation.startswith("list[int]"):
            ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            return None if ok else "a list of whole numbers"
        return None if isinstance(value, (list, int)) else "a list"
    return None


def read_train_state(folder: Path, preset) -> dict:
    """A stage's ``train_state.json`` (step, history, wall_s, config...), its config in the layout of ``preset``."""
    info = read_json(Path(folder) / "train_state.json")
    if "train" not in info["config"]:  # a run of the old layout, see below
        info["config"] = split_settings(info["config"], preset)
    return info


# Compatibility with the old layout. Runs made before the configs were split, such as the shipped data/pretrained,
# kept all of a stage's settings (model, training and sampling) in one flat dict: in train_state.json's "config", and in
# config.json either flat (the decoder) or under "config" (the priors, the oracle). Reading them needs nothing but
# sorting each setting into the section of today's preset that has a field of its name.

def split_settings(flat: dict, preset) -> dict:
    """One flat dict of a stage's settings -> the nested layout of ``preset`` (a preset of the same stage). A
    setting the old layout did not have takes its class default, which is what the old runs did (no EMA for CLIP
    and the oracle; CLIP's input_size 0 and swap_negatives 0), not the preset's value."""
    out = {}
    for f in dataclasses.fields(preset):
        value = getattr(preset, f.name)
        if dataclasses.is_dataclass(value):  # a section: model, train or sample
            out[f.name] = {g.name: flat.get(g.name, _json_default(g)) for g in dataclasses.fields(value)}
        else:
            out[f.name] = flat.get(f.name, _json_default(f))
    return json.loads(json.dumps(out))


def _json_default(f: dataclasses.Field):
    default = _class_default(f)
    return config_dict(default) if dataclasses.is_dataclass(default) else default


def _class_default(f: dataclasses.Field):
    """The default a dataclass field gets when it is not given."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default
