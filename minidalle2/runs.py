"""One layer trains and loads every stage of a run: ``train(stage, run_dir, preset)`` and ``load(stage, run_dir)``.

A stage of the paper (clip.py, prior_diffusion.py, prior_ar.py, decoder.py) and the attribute oracle are each
described here by a ``Stage``: how to set it up for training (its data, its model, one batch's loss, what to
save) and how to rebuild the model a checkpoint describes. The one training loop (training.py) and the one
loader below do the rest. A run dir holds every stage:

    RUN/clip/             CLIP in open_clip's local-dir format (+ train_state for --resume)
    RUN/embeddings/       z_t, z_i and per-token text features of every split (embeddings.py)
    RUN/prior_diffusion/  the diffusion prior       RUN/prior_ar/  the AR prior (with its PCA tokenizer)
    RUN/decoder/          the U-Net decoder         RUN/decoder_samples/  its sample grids over training
    RUN/decoder_base/     the recipe a decoder starts from, where its preset has one (presets.Start)
    RUN/oracle/           the attribute oracle that scores generated images (independent of CLIP)
    RUN/upsampler/        the cascade's 32 -> 64 upsampler (independent of CLIP: it learns from fresh renders)

Stages train in this order; each later stage names the command for a missing earlier one. Every checkpoint but
CLIP's is ``model.safetensors`` (the EMA weights where the preset keeps an EMA, float16 parameters) +
``config.json`` (checkpoint.write_config).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from minidalle2 import distributed, training
from minidalle2.checkpoint import (config_dict, is_trained, prepare_stage_dir, read_config, read_json, read_tensors,
                                   recover_dir, save_weights, stage_dir, write_config)
from minidalle2.clip import build_clip, clamp_temperature, training_loss
from minidalle2.data import render, sample_scene
from minidalle2.decoder import Decoder, fit_to_run, to_model_space
from minidalle2.embeddings import (cache_embeddings, check_clip, clip_datasets, for_training, image_input, load_clip,
                                   load_embeddings, run_datasets, run_image_size, run_images, save_clip, tokenize)
from minidalle2.errors import UserError
from minidalle2.evaluation.oracle import AttributeOracle, augment, detail_accuracy, measure_accuracy, training_batch
from minidalle2.presets import PRESETS, Preset, shapes_only_off
from minidalle2.prior_ar import ARPrior, all_tokens, fit_tokenizer
from minidalle2.prior_ar_tokenizer import PCATokenizer
from minidalle2.prior_diffusion import DiffusionPrior
from minidalle2.render import sample_details
from minidalle2.training import ema_weights, step_generator
from minidalle2.upsampler import Upsampler

STAGES = tuple(PRESETS)  # clip, prior-diffusion, prior-ar, decoder, oracle, upsampler: the order they train in
WEIGHTS, TOKENIZER = "model.safetensors", "tokenizer.safetensors"
SAMPLES = "decoder_samples"  # RUN/decoder_samples/step_XXXXX.png, outside RUN/decoder (swapped whole on save)


@dataclass
class Job:
    """A stage ready for the training loop."""
    model: nn.Module
    step_loss: Callable[[int], torch.Tensor]    # one batch's loss at a step
    write: Callable[[Path, object, int], None]  # (folder, ema, step): the files sampling needs
    record: dict = field(default_factory=dict)  # what train_state.json records beside the preset (and resume checks)
    after_step: Callable[[int], None] | None = None
    betas: tuple = (0.9, 0.99)                  # AdamW's
    report: Callable[[dict], str] | None = None  # a line for the log once trained
    fit_new: Callable[..., str] | None = None   # (start, seed): fit what has a loss of its own alone (presets.Start)


@dataclass
class Stage:
    """How ``train`` sets a stage up and ``load`` rebuilds it."""
    what: str                                   # how messages name it
    setup: Callable[..., Job]                   # (run_dir, preset, log, resume, data) -> Job
    build: Callable[[dict, Path], nn.Module] | None  # (checked config.json, folder) -> the untrained model


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def writer(model: nn.Module, cfg, sample, facts: dict, extra=None) -> Callable:
    """write(folder, ema, step): model.safetensors (the EMA weights if there are, else the raw ones), then
    ``extra(folder, ema, step)`` (which may add facts), then config.json."""
    def write(folder: Path, ema, step: int) -> None:
        save_weights(folder / WEIGHTS, model, ema.shadow if ema is not None else None)
        if extra is not None:
            extra(folder, ema, step)
        write_config(folder, cfg, sample, **facts)
    return write


def batch(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """``size`` random indices into n examples, from the step's generator."""
    return torch.randint(n, (size,), generator=g, device=g.device)


# --- the stages --------------------------------------------------------------------------------------------------

def setup_clip(run_dir: Path, preset: Preset, log, resume: bool, data: dict | None) -> Job:
    """CLIP on (image, caption) pairs of the shapes data or of a folder (``data``)."""
    train_data = clip_datasets(preset.data, data)["train"]
    if data and train_data.dataset.skipped:
        log(f"skipped {train_data.dataset.skipped} bad row(s) in {data['folder']}")
    if data and train_data.dataset.summary():
        log(train_data.dataset.summary())
    model = build_clip(preset.model)
    clip = for_training(model, preset.model.context_length)
    images = train_data.images()  # (N, 3, H, W) uint8
    tokens = tokenize(clip, train_data.captions(), warn=log)  # (N, L)
    def negatives(weight: float, captions) -> tuple:
        """(N,) bool: the images with a hard-negative caption, and those captions' tokens (N, L); None when off."""
        if not weight:
            return None, None
        texts = captions()
        return torch.tensor([c is not None for c in texts]), tokenize(clip, [c or "-" for c in texts], warn=log)

    # lambdas, not the bound methods: a folder of the user's images (a Subset) has no swapped captions, and its
    # negatives are off, so they are asked for only when their weight is on
    has_swap, swap_tokens = negatives(preset.model.swap_negatives, lambda: train_data.swapped_captions())
    has_order, order_tokens = negatives(preset.model.order_negatives, lambda: train_data.order_swapped_captions())
    views = None
    if preset.model.detail_invariance:  # the second view: each picture with its unstated details drawn again
        if not preset.data.details:
            raise UserError("detail_invariance asks z_i to ignore the unstated details, but this data draws none; "
                            "set ShapesConfig(details=True) or detail_invariance=0")
        views = train_data.redrawn_images()

    def model_input(pictures: torch.Tensor) -> torch.Tensor:  # uint8 (B, 3, H, W) -> CLIP's input (B, 3, S, S)
        return image_input(clip, pictures).contiguous(memory_format=torch.channels_last)

    def step_loss(step: int) -> torch.Tensor:
        idx = batch(len(images), preset.train.batch_size, step_generator(preset.train.seed, step))
        x = model_input(images[idx])
        two = has_swap[idx] if has_swap is not None else None  # (B,)
        ordered = has_order[idx] if has_order is not None else None  # (B,)
        return training_loss(model, preset.model, x, tokens[idx], swap_tokens[idx[two]] if two is not None else None,
                             two, rank=distributed.rank(), world_size=distributed.world_size(),
                             order_tokens=order_tokens[idx[ordered]] if ordered is not None else None, ordered=ordered,
                             x_view=None if views is None else model_input(views[idx]))

    return Job(model, step_loss, lambda folder, ema, step: save_clip(model, preset.model.model_cfg(), folder),
               record={"data": data}, after_step=lambda step: clamp_temperature(model), betas=(0.9, 0.98))


def setup_prior_diffusion(run_dir: Path, preset: Preset, log, resume: bool, data=None) -> Job:
    """The diffusion prior on the cached train-split embeddings."""
    emb = load_embeddings(run_dir, "train")
    meta = emb["meta"]
    prior = DiffusionPrior(preset.model, meta["embed_dim"], meta["text_width"], meta["context_length"], preset.sample)
    z_i, z_t, tokens, mask = emb["z_i"], emb["z_t"], emb["text_tokens"], emb["text_mask"]

    def step_loss(step: int) -> torch.Tensor:
        g = step_generator(preset.train.seed, step)
        idx = batch(len(z_i), preset.train.batch_size, g)
        return prior.loss(z_i[idx], tokens[idx], mask[idx], z_t[idx], generator=g)

    facts = {k: meta[k] for k in ("clip_sha256", "embed_dim", "text_width", "context_length")}
    return Job(prior, step_loss, writer(prior, preset.model, preset.sample, facts),
               record={"clip_sha256": meta["clip_sha256"]})


def setup_prior_ar(run_dir: Path, preset: Preset, log, resume: bool, data=None) -> Job:
    """The PCA tokenizer fitted, then the AR prior, on the cached train-split embeddings."""
    emb = load_embeddings(run_dir, "train")
    meta = emb["meta"]
    try:
        tok = fit_tokenizer(preset.model, emb)
    except ValueError as e:
        raise UserError(f"cannot fit the AR prior's PCA: {e}") from None
    kept = tok.explained_variance_ratio[:tok.K].sum().item()
    log(f"PCA keeps {tok.K} of {tok.embed_dim} components ({100 * kept:.2f} % of the variance), "
        f"{tok.n_buckets} buckets each")
    prior = ARPrior(preset.model, tok, meta["text_width"], meta["context_length"], preset.sample)
    targets = all_tokens(tok, emb["z_i"], emb["z_t"])  # (N, K + 1)
    text, mask, z_t = emb["text_tokens"], emb["text_mask"], emb["z_t"]

    def step_loss(step: int) -> torch.Tensor:
        g = step_generator(preset.train.seed, step)
        idx = batch(len(targets), preset.train.batch_size, g)
        return prior.loss(text[idx], mask[idx], z_t[idx], targets[idx], generator=g)

    facts = {k: meta[k] for k in ("clip_sha256", "embed_dim", "text_width", "context_length")}
    facts["n_components"] = tok.K
    save_tokenizer = lambda folder, ema, step: save_file(tok.to_tensors(), str(folder / TOKENIZER))  # noqa: E731
    return Job(prior, step_loss, writer(prior, preset.model, preset.sample, facts, save_tokenizer),
               record={"clip_sha256": meta["clip_sha256"], "n_components": tok.K})


def setup_decoder(run_dir: Path, preset: Preset, log, resume: bool, data=None) -> Job:
    """The decoder on (train image, its z_i, its caption tokens); sample grids of val z_i at checkpoints."""
    emb = load_embeddings(run_dir, "train")
    images = run_images(run_dir, "train")  # (N, 3, H, W) uint8
    if len(images) != len(emb["z_i"]):
        raise UserError(f"{run_dir}/embeddings has {len(emb['z_i'])} train embeddings for {len(images)} images; "
                        f"recompute them with `minidalle2 train clip --run-dir {run_dir} --resume`")
    meta, train_cfg = emb["meta"], preset.train
    cfg = fit_to_run(preset.model, images.shape[-1], meta["embed_dim"], meta["text_width"])
    if train_cfg.sample_every % train_cfg.ckpt_every:
        log(f"note: sample grids are drawn at checkpoints; sample_every={train_cfg.sample_every} is not a multiple "
            f"of ckpt_every={train_cfg.ckpt_every}, so some are skipped")
    device = default_device()
    model = build_decoder(cfg, preset.sample, device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)  # faster convolutions: 84 -> 96 img/s on 2 cores
    images, z_i = images.to(device), emb["z_i"].to(device)  # (N, 3, H, W), (N, D)
    text = emb["text_tokens"].to(device) if cfg.use_text_tokens else None  # (N, L, W)
    mask = emb["text_mask"].to(device) if cfg.use_text_tokens else None  # (N, L)

    def step_loss(step: int) -> torch.Tensor:
        g = step_generator(train_cfg.seed, step, device)
        idx = batch(len(images), train_cfg.batch_size, g)
        x0 = to_model_space(images[idx]).contiguous(memory_format=torch.channels_last)  # (B, 3, H, W) in [-1, 1]
        return model.loss(x0, z_i[idx], None if text is None else text[idx], None if mask is None else mask[idx],
                          generator=g)

    val, n_show = load_embeddings(run_dir, "val"), 8
    show = {"z_i": val["z_i"][:n_show], "truth": run_images(run_dir, "val")[:n_show].float() / 255,
            "text": val["text_tokens"][:n_show] if cfg.use_text_tokens else None,
            "mask": val["text_mask"][:n_show] if cfg.use_text_tokens else None,
            "noise": torch.randn((len(val["z_i"][:n_show]), 3, cfg.unet.image_size, cfg.unet.image_size),
                                 generator=torch.Generator().manual_seed(train_cfg.seed))}
    samples = run_dir / SAMPLES
    if not resume and preset.start is None and samples.exists():  # (a recipe with a base keeps the base's grids)
        for old in samples.glob("step_*.png"):
            old.unlink(missing_ok=True)  # (every rank of a torchrun launch clears them)
    samples.mkdir(exist_ok=True)

    def draw_grid(folder: Path, ema, step: int) -> None:
        every = train_cfg.sample_every
        if ema is not None and every and (step % every == 0 or step == train_cfg.steps):
            with ema_weights(model, ema):
                model.eval()
                decoded = model.sample(show["z_i"], show["text"], show["mask"], noise=show["noise"])
                model.train()
            save_grid([show["truth"], decoded], samples / f"step_{step:05d}.png")

    def report(info: dict) -> str:
        rate = info["step"] * info["config"]["train"]["batch_size"] / max(info["wall_s"], 1e-9)  # the whole batch
        return f"decoder trained: {info['step']} steps in {info['wall_s']:.0f} s ({rate:.0f} img/s), grids in {samples}"

    def fit_sketch(start, seed: int) -> str:
        """The sketch a base decoder lacks, fitted alone (L_sketch, Adam) on the training images' z_i, the null
        embedding in place of z_i as often as training drops it; the rest of the decoder is left as loaded."""
        g = torch.Generator().manual_seed(seed)  # the preset's seed, not a rank's: every rank fits the same sketch
        opt = torch.optim.Adam(model.unet.sketch.parameters(), lr=start.fit_lr)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, start.fit_steps)  # lr -> 0: a fit, not a drift
        for _ in range(start.fit_steps):
            idx = torch.randint(0, len(images), (start.fit_batch,), generator=g).to(device)
            drop = (torch.rand(start.fit_batch, generator=g) < cfg.p_drop_zi).to(device)
            loss = model.sketch_loss(to_model_space(images[idx]), model.with_null(z_i[idx], drop))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            decay.step()
        return f"sketch of z_i fitted alone: L_sketch {loss.item():.4f} after {start.fit_steps} steps"

    return Job(model, step_loss, writer(model, cfg, preset.sample, {"clip_sha256": meta["clip_sha256"]}, draw_grid),
               record={"clip_sha256": meta["clip_sha256"], "unet": config_dict(cfg.unet)}, report=report,
               fit_new=fit_sketch if cfg.unet.z_i_sketch else None)


def setup_oracle(run_dir: Path, preset: Preset, log, resume: bool, data=None) -> Job:
    """The oracle on freshly rendered scenes; the finished one is tested on fresh renders of the data."""
    image_size, seed, train_cfg = run_image_size(run_dir), preset.train.seed, preset.train
    oracle = AttributeOracle(preset.model, image_size)

    def step_loss(step: int) -> torch.Tensor:
        images, labels = training_batch(np.random.default_rng([seed, 0, step]), train_cfg.batch_size, image_size,
                                        preset.data.p_object, preset.model.details)
        return oracle.loss(augment(images, preset.data, step_generator(seed, step)), labels)

    facts = {"image_size": image_size}

    def measure(folder: Path, ema, step: int) -> None:
        facts["step"] = step
        if step == train_cfg.steps:  # only the finished oracle is tested (and may be trusted)
            oracle.eval()
            facts.update(accuracy=measure_accuracy(oracle, preset.data.n_eval, seed), n_eval=preset.data.n_eval)
            if preset.model.details:
                facts["detail_accuracy"] = detail_accuracy(oracle, preset.data.n_eval, seed)
            oracle.train()

    def report(info: dict) -> str:
        accuracy = facts.get("accuracy") or {}
        return (f"oracle accuracy on {preset.data.n_eval} fresh renders: "
                + ", ".join(f"{k} {v:.2%}" for k, v in {**accuracy, **facts.get("detail_accuracy", {})}.items()))

    return Job(oracle, step_loss, writer(oracle, preset.model, None, facts, measure), record={"image_size": image_size},
               report=report)


def upsampler_batch(seed: int, step: int, n: int, image_size: int, details: bool = False) -> torch.Tensor:
    """n fresh renders of training-split scenes at ``image_size`` px, uint8 (n, 3, S, S), from (seed, step) only;
    with ``details``, each drawn with random unstated details, as the run's data is."""
    rng = np.random.default_rng([seed, 2, step])
    scenes = [sample_scene(rng, "train") for _ in range(n)]
    extra = [sample_details(rng, tuple(o.shape for o in s.objects)) if details else None for s in scenes]
    return torch.from_numpy(np.stack([render(s, image_size, d) for s, d in zip(scenes, extra)])).permute(0, 3, 1, 2)


def setup_upsampler(run_dir: Path, preset: Preset, log, resume: bool, data=None) -> Job:
    """The upsampler on fresh 64-px renders of the training scenes (each step its own), area-downsampled to 32 px."""
    cfg, train_cfg = preset.model, preset.train
    if run_image_size(run_dir) != cfg.low_res:
        size = run_image_size(run_dir)
        raise UserError(f"this run's pictures are {size}x{size}; the upsampler takes {cfg.low_res}x{cfg.low_res} "
                        f"ones to {cfg.unet.image_size}x{cfg.unet.image_size}. Use it with a run of "
                        f"{cfg.low_res}x{cfg.low_res} images")
    details = (Path(run_dir) / "clip" / "train_state.json").exists() and bool(  # no CLIP: plain renders
        getattr(getattr(run_datasets(run_dir)["train"], "config", None), "details", False))
    device = default_device()
    model = build_upsampler(cfg, preset.sample, device)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)

    def step_loss(step: int) -> torch.Tensor:
        g = step_generator(train_cfg.seed, step, device)
        images = upsampler_batch(train_cfg.seed, step, train_cfg.batch_size, cfg.unet.image_size, details).to(device)
        x0 = to_model_space(images).contiguous(memory_format=torch.channels_last)  # (B, 3, H, W) in [-1, 1]
        return model.loss(x0, generator=g)

    def report(info: dict) -> str:
        return (f"upsampler trained: {info['step']} steps in {info['wall_s']:.0f} s "
                f"({info['wall_s'] / max(info['step'], 1):.2f} s per step of {train_cfg.batch_size})")

    return Job(model, step_loss, writer(model, cfg, preset.sample, {}), report=report)


def build_upsampler(cfg, sampling, device=None) -> Upsampler:
    try:
        return Upsampler(cfg, sampling).to(device or default_device())
    except ValueError as e:
        raise UserError(f"the upsampler's settings do not fit: {e}") from None


def build_decoder(cfg, sampling, device=None) -> Decoder:
    try:
        return Decoder(cfg, sampling).to(device or default_device())
    except ValueError as e:  # a U-Net that cannot be built at this image size
        raise UserError(f"the decoder's settings do not fit: {e}") from None


def build_prior_ar(saved: dict, folder: Path) -> ARPrior:
    try:
        tok = PCATokenizer.from_tensors(read_tensors(folder / TOKENIZER))
    except ValueError as e:
        raise UserError(f"{folder / TOKENIZER} is incomplete ({e}); retrain the AR prior") from None
    if saved["clip_sha256"] != tok.clip_sha256:
        raise UserError(f"{folder}/config.json and {TOKENIZER} name different CLIPs; retrain "
                        f"`minidalle2 train prior-ar` in a new run dir")
    return ARPrior(saved["model"], tok, saved["text_width"], saved["context_length"], saved["sample"])


def build_oracle(saved: dict, folder: Path) -> AttributeOracle:
    oracle = AttributeOracle(saved["model"], saved["image_size"])
    oracle.accuracy = saved.get("accuracy")  # per attribute, on fresh renders; None until training finished
    oracle.detail_accuracy = saved.get("detail_accuracy")  # per detail, when it reads them
    return oracle


STAGE = {
    "clip": Stage("CLIP", setup_clip, None),
    "prior-diffusion": Stage("diffusion prior", setup_prior_diffusion, lambda saved, folder: DiffusionPrior(
        saved["model"], saved["embed_dim"], saved["text_width"], saved["context_length"], saved["sample"])),
    "prior-ar": Stage("AR prior", setup_prior_ar, build_prior_ar),
    "decoder": Stage("decoder", setup_decoder, lambda saved, folder: build_decoder(saved["model"], saved["sample"])),
    "oracle": Stage("attribute oracle", setup_oracle, build_oracle),
    "upsampler": Stage("upsampler", setup_upsampler, lambda saved, folder: build_upsampler(saved["model"],
                                                                                          saved["sample"])),
}


# --- the two entry points ------------------------------------------------------------------------------------------

def get_preset(stage: str, name: str) -> Preset:
    """A fresh copy of one named preset of a stage (safe to modify)."""
    if stage not in PRESETS:
        raise UserError(f"unknown stage '{stage}'; choose one of: {', '.join(STAGES)}")
    if name not in PRESETS[stage]:
        raise UserError(f"unknown preset '{name}' for {stage}; choose one of: {', '.join(PRESETS[stage])}")
    return copy.deepcopy(PRESETS[stage][name])


def for_data(preset: Preset, data: dict | None, log=print) -> Preset:
    """CLIP's preset for its data: on a folder of the user's images the shapes-only settings are off."""
    if not data:
        return preset
    preset, off = shapes_only_off(preset)
    if off:
        log(f"note: {', '.join(off[:-1]) + ' and ' if len(off) > 1 else ''}{off[-1]} need the shapes data; off for the "
            f"folder {data['folder']}")
    return preset


def train(stage: str, run_dir: Path, preset: str | Preset = "quick", resume: bool = False, progress: bool = True,
          log=print, data_dir: str | None = None, skip_bad: bool = False) -> dict:
    """Train one stage into ``run_dir`` with a preset (a name or a ``Preset``); CLIP also caches the embeddings
    every later stage learns from. ``data_dir`` (a folder of images + captions) and ``skip_bad`` are CLIP's only.
    Returns the training info: {"step", "history" (loss per step), "wall_s", "config", ...}.

    Under torchrun (distributed.py) each rank sets the stage up with its share of each batch and its own seed;
    rank 0 logs, writes, and caches CLIP's embeddings while the others wait."""
    distributed.init()
    log = log if distributed.is_main() else (lambda *a: None)
    preset = get_preset(stage, preset) if isinstance(preset, str) else preset
    if stage != "clip" and (data_dir or skip_bad):
        raise UserError("--data-dir and --skip-bad apply to `train clip` only; later stages read its embeddings")
    run_dir = Path(run_dir)
    data = {"folder": str(Path(data_dir).resolve()), "skip_bad": skip_bad} if data_dir else None
    preset = for_data(preset, data, log) if stage == "clip" else preset
    record = {}
    if preset.start is not None and preset.start.base is not None:  # the base first; --resume continues it, and
        base = train_base(stage, run_dir, preset.start.base, resume, progress, log)  # this recipe where it has one
        record["base"] = {k: base[k] for k in ("step", "wall_s")}
        resume = resume and is_trained(run_dir, stage)
    folder = prepare_stage_dir(run_dir, stage, resume)
    torch.manual_seed(preset.train.seed)
    job = STAGE[stage].setup(run_dir, distributed.local_preset(preset), log, resume, data)
    if preset.start is not None and not resume:
        fit_started = time.perf_counter()
        if preset.start.base is not None:
            start_from_base(stage, run_dir, job, preset, log)
        elif job.fit_new is None:
            raise UserError(f"this {stage} preset starts by fitting a part of the model alone (presets.Start), but the "
                            "model has no such part (only a decoder with a sketch of z_i does); set start=None")
        else:
            log(job.fit_new(preset.start, preset.train.seed))
        record["fit_s"] = round(time.perf_counter() - fit_started, 2)  # the base loaded, the new part fitted alone
    info = training.train(folder, job.model, preset, job.step_loss, job.write, resume=resume,
                          extra_info={**job.record, **record}, after_step=job.after_step, progress=progress,
                          betas=job.betas)
    if stage == "clip" and distributed.is_main():
        cache_embeddings(run_dir, log=log)
    distributed.barrier()
    if job.report is not None:
        log(job.report(info))
    return info


def base_dir(run_dir: Path, stage: str) -> Path:
    """Where the recipe a stage's preset starts from is trained (presets.Start): RUN/<stage>_base."""
    return stage_dir(run_dir, f"{stage}_base")


def train_base(stage: str, run_dir: Path, base: Preset, resume: bool, progress: bool, log) -> dict:
    """Train the recipe a preset starts from into RUN/<stage>_base, or, with ``resume``, continue it there (a
    finished one is kept). Returns its training info."""
    folder = prepare_stage_dir(run_dir, f"{stage}_base", resume)  # the --resume checks of any stage
    if resume:
        info = read_json(folder / "train_state.json")
        if info["config"] == config_dict(base) and info["step"] >= base.train.steps:
            return info
    log(f"training the {STAGE[stage].what} it starts from ({base.train.steps} steps) into {folder}")
    torch.manual_seed(base.train.seed)
    job = STAGE[stage].setup(run_dir, distributed.local_preset(base), log, resume, None)
    return training.train(folder, job.model, base, job.step_loss, job.write, resume=resume, extra_info=job.record,
                          after_step=job.after_step, progress=progress, betas=job.betas)


def start_from_base(stage: str, run_dir: Path, job: Job, preset: Preset, log) -> None:
    """Load the base's trained weights (the EMA ones, as sampling uses) into ``job.model``, then fit the parameters
    the base lacks alone (``job.fit_new``)."""
    folder = base_dir(run_dir, stage)
    cannot = f"{folder} holds a model this preset cannot start from"
    try:
        missing, unexpected = job.model.load_state_dict(read_tensors(folder / WEIGHTS), strict=False)
    except RuntimeError as e:  # weights of other shapes (another CLIP, another width)
        raise UserError(f"{cannot} ({str(e).splitlines()[1].strip()}); train it again in a new --run-dir") from None
    if unexpected or (missing and job.fit_new is None):
        raise UserError(f"{cannot} ({len(unexpected)} unexpected and {len(missing)} missing weights); train it again "
                        "in a new --run-dir")
    if missing:
        log(job.fit_new(preset.start, preset.train.seed))


def load(stage: str, run_dir: Path):
    """The trained model of one stage of a run (EMA weights, eval mode), checked against the run's current CLIP.
    "clip" gives an ``embeddings.LoadedClip``; "oracle" an oracle with its measured ``.accuracy``."""
    if stage not in STAGE:
        raise UserError(f"unknown stage '{stage}'; choose one of: {', '.join(STAGES)}")
    run_dir = Path(run_dir)
    if stage == "clip":
        return load_clip(run_dir)
    folder = stage_dir(run_dir, stage)
    recover_dir(folder)
    what = STAGE[stage].what
    if not (folder / "config.json").exists():
        raise UserError(f"{run_dir} has no trained {what}; run `minidalle2 train {stage} --run-dir {run_dir}` first")
    saved = read_config(folder, PRESETS[stage]["quick"])
    if stage not in ("oracle", "upsampler"):  # the two that never read CLIP
        check_clip(run_dir, saved.get("clip_sha256"), f"the {what} in {folder}", stage)
    try:
        model = STAGE[stage].build(saved, folder)
    except KeyError as e:
        raise UserError(f"{folder}/config.json lacks {e}; restore the file or retrain the {what}") from None
    try:
        model.load_state_dict(read_tensors(folder / WEIGHTS))
    except RuntimeError as e:
        raise UserError(f"{folder / WEIGHTS} does not match {folder}/config.json ({str(e).splitlines()[0]}); "
                        f"retrain the {what} with `minidalle2 train {stage} --run-dir {run_dir}`") from None
    return model.eval()


def save_grid(rows: list[torch.Tensor], path: Path, scale: int = 2) -> None:
    """Write rows of images (N, 3, H, W) in [0, 1] as one PNG, 1-pixel gaps, each pixel ``scale`` x ``scale``."""
    rows = [F.pad(r.float().cpu().clamp(0, 1), (1, 1, 1, 1), value=1.0) for r in rows]  # white frame
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # (3, rows * H, N * W)
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
