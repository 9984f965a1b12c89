"""``minidalle2 export``: copy what a trained run needs for inference into a small folder, with a manifest.

This is how ``data/pretrained`` is made: weights and configs of every stage (safetensors + JSON), the training
states' JSON (history, wall time; not the optimizer tensors), the embedding cache of the evaluation splits, and
``manifest.json`` with the command, git commit, seeds, hardware, wall time per stage and the evaluation numbers
measured on the exported copy itself.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import torch

from minidalle2.checkpoint import file_sha256, is_trained, read_json, stage_dir, write_json
from minidalle2.clip import build_clip
from minidalle2.data import ShapesConfig
from minidalle2.decoder import Decoder, fit_to_run
from minidalle2.errors import UserError
from minidalle2.evaluation import stages
from minidalle2.evaluation.oracle import AttributeOracle, is_trusted
from minidalle2.evaluation.upsampling import evaluate_upsampler
from minidalle2.presets import PRESETS
from minidalle2.prior_ar import ARPrior
from minidalle2.prior_ar_tokenizer import PCATokenizer
from minidalle2.prior_diffusion import DiffusionPrior
from minidalle2.runs import STAGES, load
from minidalle2.tools.run import expected_config, training_info
from minidalle2.upsampler import Upsampler

KEEP_SPLITS = ("test", "heldout")  # what the evaluations read; train and val stay behind (most of the size)
CHECK_N = 200  # test captions the priors are re-scored on by tests/test_pretrained.py
BUDGET_MB = 50  # the whole shipped run (data/pretrained)
FILE_LIMIT_MB = 16  # any one file of it: what a repository takes comfortably


def shipped_mb(preset: str, decoder=None) -> dict[str, float]:
    """What an exported ``preset`` run will weigh, from the preset alone, in MiB: each stage's weights file
    (float16 parameters, see ``checkpoint.save_weights``) and the kept embeddings (z_i, z_t float32, per-token
    features float16). CLIP's dims set the later stages' inputs; the AR prior is sized for the most PCA
    components it can keep. ``decoder``: a DecoderConfig to size instead of the preset's (a run exported before
    the preset changed)."""
    c, S = PRESETS["clip"][preset].model, PRESETS["clip"][preset].data.image_size
    D, W, L = c.embed_dim, c.text_width, c.context_length
    ar = PRESETS["prior-ar"][preset].model
    z = torch.nn.functional.normalize(torch.randn(4 * D, D), dim=-1)
    pca = PCATokenizer(D, n_buckets=ar.n_buckets).fit(z, z.roll(1, 0))
    models = {
        "clip": build_clip(c),
        "prior-diffusion": DiffusionPrior(PRESETS["prior-diffusion"][preset].model, D, W, L),
        "prior-ar": ARPrior(ar, pca, W, L),
        "decoder": Decoder(fit_to_run(decoder or PRESETS["decoder"][preset].model, S, D, W)),
        "oracle": AttributeOracle(PRESETS["oracle"][preset].model, S),
        "upsampler": Upsampler(PRESETS["upsampler"][preset].model),
    }
    sizes = {stage: sum(p.numel() for p in m.parameters()) * 2 / 2**20 for stage, m in models.items()}
    shapes = ShapesConfig()
    sizes["embeddings"] = (shapes.n_test + shapes.n_heldout) * (2 * D * 4 + L * W * 2) / 2**20
    return {k: round(v, 2) for k, v in sizes.items()}


def _git_commit(out: Path | None = None) -> str:
    """HEAD, marked when tracked files differ from it; changes inside ``out`` (the export replacing
    data/pretrained) do not count."""
    git = lambda *args: subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True,
                                       timeout=10)
    try:
        head, top = git("rev-parse", "HEAD"), git("rev-parse", "--show-toplevel").stdout.strip()
        if head.returncode != 0:
            return ""
        skip = None
        if out is not None and top and Path(out).resolve().is_relative_to(Path(top).resolve()):
            skip = Path(out).resolve().relative_to(Path(top).resolve()).as_posix() + "/"
        changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").stdout.splitlines()]
        dirty = [f for f in changed if not (skip and f.startswith(skip))]  # porcelain paths are from the top
        return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def preset_name(run_dir: Path, stage: str, config: dict) -> str:
    """The name of the preset a stage was trained with ("custom" if none matches)."""
    names = [name for name in PRESETS[stage] if expected_config(run_dir, stage, name) == config]
    return names[0] if names else "custom"


def command(presets: dict[str, str], preset: str, run_name: str) -> str:
    """How the run was trained: one ``train all`` when every stage shares a preset, else a command per stage (a stage
    trained with settings of its own is "custom", and the manifest's note has to say how)."""
    if preset != "mixed":
        return f"minidalle2 train all --preset {preset} --run-dir {run_name}"
    return "; ".join(f"{s}: a custom recipe (see the note)" if p == "custom" else
                     f"minidalle2 train {s} --preset {p} --run-dir {run_name}" for s, p in presets.items())


def export_run(run_dir: Path, out: Path, log=print, note: str = "") -> dict:
    """Copy the inference files of a finished run to ``out`` (which must not exist), evaluate the copy, and write
    its manifest (with ``note``, when given, as its ``note``). Returns the manifest."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; remove it or choose another --out (nothing was overwritten)")
    trained = [s for s in STAGES if is_trained(run_dir, s)]
    states = {s: training_info(run_dir, s) for s in trained}
    unfinished = [s for s in ("clip", "prior-diffusion", "prior-ar", "decoder")
                  if s not in states or states[s]["step"] < states[s]["config"]["train"]["steps"]]
    if unfinished:
        raise UserError(f"{run_dir} has unfinished stages ({', '.join(unfinished)}); finish them with "
                        f"`minidalle2 train all --run-dir {run_dir} --preset PRESET` first")
    presets = {s: preset_name(run_dir, s, states[s]["config"]) for s in trained}
    preset = presets[trained[0]] if len(set(presets.values())) == 1 else "mixed"

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for s in trained:
        src, dst = stage_dir(run_dir, s), stage_dir(tmp, s)
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file() and f.name != "train_state.safetensors":  # optimizer moments: only for --resume
                shutil.copy2(f, dst / f.name)
    if (run_dir / "decoder_samples").is_dir():  # the decoder's sample grids over training (notebook 04 shows them)
        shutil.copytree(run_dir / "decoder_samples", tmp / "decoder_samples")
    meta = read_json(run_dir / "embeddings" / "meta.json")
    (tmp / "embeddings").mkdir()
    for split in KEEP_SPLITS:
        for ext in ("safetensors", "json"):
            shutil.copy2(run_dir / "embeddings" / f"{split}.{ext}", tmp / "embeddings" / f"{split}.{ext}")
    meta["splits"] = {k: v for k, v in meta["splits"].items() if k in KEEP_SPLITS}
    write_json(tmp / "embeddings" / "meta.json", meta)
    big = [f"{f.relative_to(tmp)} ({f.stat().st_size / 2**20:.1f} MiB)" for f in tmp.rglob("*")
           if f.is_file() and f.stat().st_size > FILE_LIMIT_MB * 2**20]
    total = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) / 2**20
    if big or total > BUDGET_MB:
        log(f"warning: {total:.1f} MiB in all, files over {FILE_LIMIT_MB} MiB: {', '.join(big) or 'none'}; "
            f"data/pretrained must stay within {BUDGET_MB} MiB and {FILE_LIMIT_MB} MiB a file")

    log("evaluating the exported copy")
    clip_eval = stages.evaluate_clip(tmp)
    priors = stages.evaluate_priors(tmp)
    check = stages.evaluate_priors(tmp, n=CHECK_N)
    decoder_eval = stages.evaluate_decoder(tmp, n=64)
    evaluation = {"clip": clip_eval, "priors": priors, "decoder": decoder_eval}
    if "upsampler" in trained and "oracle" in trained:  # the cascade: PSNR/SSIM against bicubic, oracle agreement
        trusted = is_trusted(load("oracle", tmp).accuracy)  # a smoke run's oracle is not: its readings are marked
        evaluation["upsampler"] = {**evaluate_upsampler(tmp, trust_oracle=trusted), "oracle_trusted": trusted}
    manifest = {
        "command": command(presets, preset, run_dir.name),
        "preset": preset, "presets": presets, "git_commit": _git_commit(out), "hardware": hardware(),
        # a stage whose recipe starts from a base or a fit (presets.Start) also names the base's steps and wall time
        # and the fit's seconds
        "stages": {s: {"steps": states[s]["step"], "wall_s": states[s]["wall_s"],
                       "seed": states[s]["config"]["train"]["seed"],
                       **{k: states[s][k] for k in ("base", "fit_s") if k in states[s]}} for s in trained},
        "evaluation": evaluation,
        "check": {"priors_n": CHECK_N, "priors": {k: check[k] for k in ("baseline_cos_text_image", "diffusion", "ar")
                                                   if k in check}},
        **({"note": note} if note else {}),
        "files_mb": round(total, 1),  # before the manifest itself, as measured above
        # every file with its sha256, so a damaged copy is refused with a clear message (tools.run.check_shipped)
        "files": {str(f.relative_to(tmp)): file_sha256(f) for f in sorted(tmp.rglob("*")) if f.is_file()},
    }
    write_json(tmp / "manifest.json", manifest)
    tmp.rename(out)
    log(f"exported {run_dir} to {out} ({manifest['files_mb']} MB)")
    return manifest
