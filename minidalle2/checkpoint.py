"""Checkpoints: the files a stage writes into its run dir, and how they are read back.

A checkpoint is a folder of safetensors + JSON, never a pickle. It is written next to its final place and
swapped in with renames, so an interrupted or failed run always leaves the last good checkpoint whole:

    DIR/clip.tmp/  (being written)  ->  DIR/clip.old/ (previous)  ->  DIR/clip/ (new)  ->  old removed

Optimizer state is flattened into tensors ("optimizer/<param>/<name>") plus its JSON param groups, so resuming
restores AdamW exactly. Every stage but CLIP (which keeps open_clip's own format) describes its weights with a
``config.json`` of one layout (``write_config``), checked key by key when it is read (``read_config``).
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

from minidalle2.diffusion import LOSS_WEIGHTINGS, PREDICTIONS, SCHEDULES
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
        try:
            os.replace(old, final)
        except FileNotFoundError:  # another rank of a torchrun launch put it back first
            pass


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


def load_train_state(folder: Path, opt: torch.optim.Optimizer, ema) -> dict:
    """Restore what ``save_train_state`` wrote; return its JSON info (step, history, config...)."""
    info = read_json(Path(folder) / "train_state.json")
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
# Compatibility rule: a run is read in the layout of the code reading it, every setting named, nothing unknown;
# when the layout changes, data/pretrained is re-exported in the new one and older runs are retrained.

def config_dict(cfg) -> dict:
    """A dataclass config as it reads back from JSON (tuples become lists), so saved and new configs compare."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(template, saved: dict, path: Path | str = "config", where: str = ""):
    """Rebuild a config of ``template``'s class (nested dataclasses included) from its JSON dict, checked by
    ``check_config`` first: every setting present, none unknown, each of the right type."""
    check_config(path, template, saved, where)
    return _build(template, saved)


def _build(template, saved):
    values = {}
    for f in dataclasses.fields(template):
        default, value = getattr(template, f.name), saved[f.name]
        values[f.name] = _build(default, value) if dataclasses.is_dataclass(default) and value is not None else value
    return type(template)(**values)


def write_config(folder: Path, model, sample=None, **facts) -> None:
    """A stage's ``config.json``: {"model": the network's settings, "sample": its default sampling settings ({} if
    it samples nothing), ...facts: what the run fixed (clip_sha256, embed_dim, accuracy...)}."""
    write_json(Path(folder) / "config.json", {"model": config_dict(model),
                                              "sample": config_dict(sample) if sample is not None else {}, **facts})


def read_config(folder: Path, preset) -> dict:
    """A stage's ``config.json``, checked against ``preset`` (any preset of the stage): {"model": config object,
    "sample": config object or None, ...facts}."""
    path = Path(folder) / "config.json"
    saved = read_json(path)
    if not isinstance(saved, dict):
        raise UserError(f"{path} should hold a JSON object; the checkpoint is corrupt, retrain this stage")
    for key in saved:
        if key not in ("model", "sample") and key not in FACTS:
            raise UserError(f"{path}: unknown key '{key}'; allowed: model, sample, {', '.join(sorted(FACTS))} "
                            "(a typo? fix or remove it)")
    out = dict(saved, model=config_from_dict(preset.model, _section(path, saved.get("model"), "model"), path, "model"))
    if preset.sample is not None:
        out["sample"] = config_from_dict(preset.sample, _section(path, saved.get("sample"), "sample"), path, "sample")
    return out


# Facts a stage's config.json records beside its settings
FACTS = {"clip_sha256", "embed_dim", "text_width", "context_length", "n_components", "image_size", "accuracy",
         "detail_accuracy", "n_eval", "step"}


# --- validation of a config ----------------------------------------------------------------------------------
# Anything that does not fit is refused with one line naming the file, the field and what is allowed: a missing
# or unknown key (a typo such as "predcit" would otherwise fall back to a default without a word), a wrong type,
# or a value outside the allowed ones.

# Settings with a fixed set of values (the diffusion's own lists, so they cannot drift apart)
ALLOWED = {"schedule": SCHEDULES, "predict": PREDICTIONS, "loss_weighting": LOSS_WEIGHTINGS}


def _section(path: Path, value, name: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{path}: '{name}' should be a JSON object of settings, got {json.dumps(value)}; "
                        "retrain this stage or restore the file")
    return value


def check_config(path, template, saved: dict, where: str) -> None:
    """Check one section of a config against the dataclass ``template`` (nested sections recursively)."""
    fields = {f.name: f for f in dataclasses.fields(template)}
    prefix = f"{where}." if where else ""
    for key, value in saved.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise UserError(f"{path}: unknown setting '{name}'; allowed: {', '.join(fields)} (a typo? fix or "
                            "remove it)")
        default = getattr(template, key)
        if dataclasses.is_dataclass(default):
            if value is not None or "None" not in str(fields[key].type):
                check_config(path, default, _section(path, value, name), name)
            continue
        problem = _type_problem(str(fields[key].type), value)
        allowed = ALLOWED.get(key)
        if problem is None and allowed is not None and value not in allowed:
            problem = f"one of {', '.join(allowed)}"
        if problem is not None:
            raise UserError(f"{path}: '{name}' is {json.dumps(value)}; it should be {problem} (fix the value or "
                            "retrain this stage)")
    for key in fields:
        if key not in saved:
            raise UserError(f"{path}: the setting '{prefix}{key}' is missing; this run was saved by another version "
                            "of minidalle2 or the file was edited: restore it or retrain this stage")


def _type_problem(annotation: str, value) -> str | None:
    """None when ``value`` fits the field's annotation ('int', 'float | None', 'list[int]'...), else what would."""
    if value is None:
        return None if "None" in annotation or annotation == "Any" else f"a {annotation.split(' ')[0].split('[')[0]}"
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
