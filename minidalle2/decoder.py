"""Stage 3: the decoder, p(x | z_i, y) — a diffusion model that inverts CLIP's image encoder (unCLIP Sec. 2.1).

    L_decoder = E_{t, x_0, eps} || eps - eps_theta(x_t, t, z_i, y) ||^2,   x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps

It learns to draw an image whose CLIP embedding is z_i. z_i keeps what CLIP cares about (which shapes, which
colours, where) and drops the rest, so decoding the z_i of a real image gives *another* image with the same
meaning: the paper's Fig. 3 variations. For classifier-free guidance the paper "randomly set[s] the CLIP
embeddings to zero (or a learned embedding) 10% of the time, and randomly drop[s] the text caption 50% of
the time"; we use a learned null z_i. At sampling time

    eps_guided = eps(x_t | null) + s (eps(x_t | z_i, y) - eps(x_t | null))      (s = 1: no guidance)

Prediction target: GLIDE and the paper's decoder predict eps. On a CPU budget (~60k training images) the same
U-Net learned shapes fastest predicting x_0 (as the paper's prior does, L = E || x0_hat - x_0 ||^2); v (Salimans &
Ho) and eps came later, so ``quick`` and ``full`` (the shipped run: quick's recipe trained longer) predict x_0.
All three go through the same samplers (diffusion.py converts between them). The ``paper`` preset is the paper's
recipe on the CPU budget, ``quick`` the recipe that measured best there (see PRESETS and notebook 04).

The network is unet.py; the noising, the samplers and the guidance formula are the shared diffusion.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from minidalle2.checkpoint import (config_dict, config_from_dict, prepare_stage_dir, read_config, read_tensors,
                                   recover_dir, save_weights, stage_dir, write_config)
from minidalle2.diffusion import GaussianDiffusion, classifier_free_guidance
from minidalle2.embeddings import check_clip, load_embeddings, run_images
from minidalle2.errors import MAX_GUIDANCE, UserError, check_number
from minidalle2.training import TrainConfig, ema_weights, train
from minidalle2.unet import UNet, UNetConfig

STAGE, WEIGHTS, CONFIG = "decoder", "model.safetensors", "config.json"
SAMPLES = "decoder_samples"  # RUN/decoder_samples/step_XXXXX.png, outside RUN/decoder (swapped whole on save)


@dataclass
class DecoderConfig:
    """The decoder network, its diffusion and its loss. Defaults: GLIDE's U-Net at full resolution predicting x_0;
    options added later default to off, so a run saved before them reads back as it was trained."""
    unet: UNetConfig = field(default_factory=UNetConfig)  # its image_size, embed_dim, text_width: set by the run
    timesteps: int = 1000        # T of the diffusion process
    schedule: str = "cosine"     # beta schedule (Nichol & Dhariwal)
    predict: str = "x0"          # what the U-Net predicts: x0 (quick, see above), eps (GLIDE, the paper) or v
    loss_weighting: str = "none"  # none: L_simple; min_snr: Hang et al. 2023's min(SNR_t, gamma) on the x_0 error
    snr_gamma: float = 5.0       # gamma of min_snr
    p_drop_zi: float = 0.1       # P(z_i replaced by the learned null embedding) in training
    p_drop_text: float = 0.5     # P(caption hidden) in training
    use_text_tokens: bool = False  # also condition on the caption's CLIP token features (the paper: little help)


@dataclass
class DecoderSampling:
    """How ``Decoder.sample`` decodes by default."""
    guidance: float = 1.5        # guidance scale s (quick: best of 0-5 by CLIP re-encoding; 3 saturates)
    sample_steps: int = 50       # DDIM steps
    eta: float = 0.0             # DDIM eta (0: deterministic)


@dataclass
class DecoderPreset:
    """A decoder preset: the network, how to sample it, how to train it. The default training budget, 800 steps of
    32 images, is the ``paper`` preset's (and was ``quick``'s before its recipe changed)."""
    model: DecoderConfig = field(default_factory=DecoderConfig)
    sample: DecoderSampling = field(default_factory=DecoderSampling)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=32, steps=800, lr=1e-3, weight_decay=0.0,
                                                                   warmup_steps=50, ema_decay=0.99, ckpt_every=200))
    sample_every: int = 200      # steps between sample grids (drawn at checkpoints: a multiple of train.ckpt_every)
    compile: bool = False        # torch.compile the U-Net (CUDA only; with bf16 autocast there)


# quick: the recipe that drew the right picture fastest on a 2-core CPU (notebook 04, "What made the decoder work":
# one change at a time from the paper's recipe, scored by the attribute oracle). The U-Net works at 16x16 on 2x2
# pixel patches (2.2x the images per second of 32x32 at the same width), so 2600 steps fit about the budget that
# bought 1200 before; x_0 is the target (eps and v were slower to learn shapes); z_i is also drawn as a 4x4 map at
# the middle of the U-Net, and, as in the paper, the caption's tokens are context too (same speed). One-object
# prompts fully right with CLIP's own z_i (128-d binding CLIP, whole suite, 3 seeds): 88 ± 3 % at 1800 steps,
# 93 ± 4 % at 2600, 97 ± 4 % at 2600 with the caption tokens; on the shipped run's CLIP (partial captions) 95 ± 2 %
# without them, 98 ± 3 % with (two-object prompts 5 % and 3 %: the caption helps little, as the paper found).
_QUICK_UNET = UNetConfig(channel_mult=[2, 2], patch=2, z_i_map=4)

PRESETS = {
    "tiny": DecoderPreset(DecoderConfig(unet=UNetConfig(base_channels=16, channel_mult=[1, 2], attention_resolutions=[],
                                                        heads=2), use_text_tokens=True),
                          DecoderSampling(sample_steps=4),
                          TrainConfig(batch_size=8, steps=12, lr=1e-3, weight_decay=0.0, warmup_steps=2,
                                      ema_decay=0.99, ckpt_every=6), sample_every=6),
    "quick": DecoderPreset(DecoderConfig(unet=_QUICK_UNET, use_text_tokens=True),
                           train=TrainConfig(batch_size=32, steps=2600, lr=1e-3, weight_decay=0.0, warmup_steps=50,
                                             ema_decay=0.99, ckpt_every=325), sample_every=1300),
    # the paper's decoder (GLIDE's U-Net at full resolution, eps target, the caption's tokens as context) on the CPU
    # budget the quick preset had before: 800 steps of 32
    "paper": DecoderPreset(DecoderConfig(predict="eps", use_text_tokens=True)),
    # full: quick's recipe, 1.5x wider (1.35x the seconds per step on 2 CPU cores), nine times the steps and a slower
    # EMA for the longer run; about an hour of a 2-core CPU
    "full": DecoderPreset(DecoderConfig(unet=UNetConfig(base_channels=48, channel_mult=[2, 2], patch=2, z_i_map=4),
                                        use_text_tokens=True),
                          train=TrainConfig(batch_size=32, steps=24000, lr=1e-3, weight_decay=0.0, warmup_steps=200,
                                            ema_decay=0.999, ckpt_every=1000), sample_every=6000),
}


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 images, or floats in [0, 1] -> x_0 in [-1, 1] (the diffusion's pixel space)."""
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return images * 2 - 1


def to_images(x: torch.Tensor) -> torch.Tensor:
    """x_0 in [-1, 1] -> images in [0, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def check_sampling(steps: int, guidance: float, eta: float = 0.0) -> None:
    if steps <= 0:
        raise UserError(f"steps={steps} must be a positive number of sampling steps (e.g. 50)")
    check_number("guidance", guidance, 0, MAX_GUIDANCE, "1: no guidance, larger: follow z_i more closely")
    check_number("eta", eta, 0, float("inf"), "0: deterministic DDIM, 1: DDPM-like")


class Decoder(nn.Module):
    """The U-Net f_theta(x_t, t, z_i, y), its learned null z_i, and the Gaussian diffusion it is trained in."""

    def __init__(self, cfg: DecoderConfig, sampling: DecoderSampling | None = None):
        super().__init__()
        self.cfg = cfg
        self.sampling = sampling or DecoderSampling()  # defaults of ``sample``
        self.unet = UNet(cfg.unet)
        self.null_z_i = nn.Parameter(torch.zeros(cfg.unet.embed_dim))  # stands in for a dropped z_i
        self.diffusion = GaussianDiffusion(cfg.timesteps, cfg.schedule, predict=cfg.predict,
                                           loss_weighting=cfg.loss_weighting, snr_gamma=cfg.snr_gamma)

    @property
    def image_size(self) -> int:
        return self.cfg.unet.image_size

    def forward(self, x_t, t, z_i, text_tokens=None, text_mask=None, drop_zi=None, drop_text=None):
        """The U-Net's prediction of eps (or x_0) from (x_t, t, z_i, y): (B, 3, H, W). drop_zi (B,) bool, or one
        bool, puts the learned null in place of z_i; drop_text (B,) bool hides the caption. The caption is read
        only if the decoder was trained with use_text_tokens."""
        if z_i.dim() != 2 or z_i.shape[1] != self.cfg.unet.embed_dim:
            raise UserError(f"z_i has shape {tuple(z_i.shape)}, the decoder expects (B, {self.cfg.unet.embed_dim}); "
                            "use image embeddings of the CLIP it was trained with")
        B = z_i.shape[0]
        if drop_zi is not None:
            drop_zi = torch.as_tensor(drop_zi, device=z_i.device).expand(B)
            z_i = torch.where(drop_zi[:, None], self.null_z_i.to(z_i.dtype).expand_as(z_i), z_i)  # (B, D)
        if not self.cfg.use_text_tokens:
            text_tokens = text_mask = None
        elif text_tokens is not None:
            if text_mask is None:
                text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=text_tokens.device)
            if drop_text is not None:
                drop_text = torch.as_tensor(drop_text, device=text_mask.device).expand(B)
                text_mask = text_mask.bool() & ~drop_text[:, None]  # (B, L): a hidden caption is all padding
        return self.unet(x_t, t, z_i, text_tokens, text_mask)

    def loss(self, x0, z_i, text_tokens=None, text_mask=None, generator=None) -> torch.Tensor:
        """L_decoder on one batch, x0 (B, 3, H, W) in [-1, 1]; t, eps and the drop masks come from ``generator``.
        10% of z_i become the null embedding and 50% of captions are hidden, for classifier-free guidance."""
        B, device = x0.shape[0], x0.device
        gen_device = generator.device if generator is not None else device
        t = self.diffusion.sample_timesteps(B, device=device, generator=generator)
        noise = torch.randn(x0.shape, generator=generator, device=gen_device).to(device)
        drop_zi = (torch.rand(B, generator=generator, device=gen_device) < self.cfg.p_drop_zi).to(device)
        drop_text = (torch.rand(B, generator=generator, device=gen_device) < self.cfg.p_drop_text).to(device)
        model_fn = lambda x_t, t: self(x_t, t, z_i, text_tokens, text_mask, drop_zi, drop_text)  # noqa: E731
        return self.diffusion.training_loss(model_fn, x0, t, noise)["loss"]

    def guided_model_fn(self, z_i, text_tokens=None, text_mask=None, guidance: float = 1.0):
        """model_fn(x_t, t) for the samplers: pred(null) + s (pred(z_i, y) - pred(null)). At a fixed x_t eps and
        x_0 are affine in each other, so guiding either prediction is the same. Conditional and unconditional
        run as one batch of 2B; s = 1 needs only the conditional half."""
        if guidance == 1:
            return lambda x_t, t: self(x_t, t, z_i, text_tokens, text_mask)
        B = z_i.shape[0]
        drop = torch.arange(2 * B, device=z_i.device) >= B  # second half: null z_i, no caption
        twice = lambda a: None if a is None else torch.cat([a, a])  # noqa: E731

        def model_fn(x_t, t):
            pred = self(twice(x_t), twice(t), twice(z_i), twice(text_tokens), twice(text_mask), drop, drop)
            cond, uncond = pred.chunk(2)  # 2 x (B, 3, H, W)
            return classifier_free_guidance(cond, uncond, guidance)
        return model_fn

    @torch.no_grad()
    def sample(self, z_i, text_tokens=None, text_mask=None, guidance: float | None = None, steps: int | None = None,
               eta: float | None = None, noise=None, generator=None, sampler: str = "ddim",
               return_trajectory: bool = False, progress: bool = False):
        """Decode z_i (B, D) into images (B, 3, H, W) in [0, 1]. Defaults: ``self.sampling``'s guidance, DDIM steps
        (50) and eta (0). Predicted x_0 is clipped to [-1, 1] at every step. sampler="ddpm" walks all T
        ancestral steps. With return_trajectory: (images, [predicted x_0 in [0, 1] at each DDIM step])."""
        cfg = self.cfg
        guidance = self.sampling.guidance if guidance is None else guidance
        eta = self.sampling.eta if eta is None else eta
        if sampler not in ("ddim", "ddpm"):
            raise UserError(f"unknown sampler '{sampler}'; choose ddim or ddpm")
        if sampler == "ddpm":
            if steps not in (None, cfg.timesteps):
                raise UserError(f"sampler='ddpm' walks all {cfg.timesteps} steps; drop steps, or use sampler='ddim' "
                                "(eta=1 is DDPM-like in fewer steps)")
            if return_trajectory:
                raise UserError("return_trajectory needs sampler='ddim'")
        steps = (self.sampling.sample_steps if sampler == "ddim" else cfg.timesteps) if steps is None else steps
        check_sampling(steps, guidance, eta)
        if steps > cfg.timesteps:
            raise UserError(f"steps={steps} is more than the decoder's {cfg.timesteps} diffusion timesteps")
        device = self.null_z_i.device
        z_i = z_i.to(device)
        text_tokens = None if text_tokens is None else text_tokens.to(device)
        text_mask = None if text_mask is None else text_mask.to(device)
        model_fn = self.guided_model_fn(z_i, text_tokens, text_mask, guidance)
        shape = (z_i.shape[0], 3, self.image_size, self.image_size)
        noise = None if noise is None else noise.to(device)
        if sampler == "ddpm":
            x = self.diffusion.p_sample_loop(model_fn, shape, noise, clip_x0=1.0, generator=generator, device=device,
                                             progress=progress)
            return to_images(x)
        out = self.diffusion.ddim_sample_loop(model_fn, shape, steps, eta, noise, clip_x0=1.0, generator=generator,
                                              device=device, progress=progress, return_trajectory=return_trajectory)
        if return_trajectory:
            x, trajectory = out
            return to_images(x), [to_images(x0) for x0 in trajectory]
        return to_images(out)

    @torch.no_grad()
    def invert(self, images, z_i, text_tokens=None, text_mask=None, steps: int | None = None) -> torch.Tensor:
        """DDIM inversion (eta = 0, guidance 1): the x_T (B, 3, H, W) that ``sample(z_i, noise=x_T, guidance=1,
        steps=steps)`` maps back to (nearly) ``images``. The paper makes variations this way."""
        steps = self.sampling.sample_steps if steps is None else steps
        check_sampling(steps, 1.0)
        device = self.null_z_i.device
        x0 = to_model_space(images).to(device)
        if x0.shape[1:] != (3, self.image_size, self.image_size):
            raise UserError(f"images have shape {tuple(x0.shape[1:])}; this decoder works on "
                            f"(3, {self.image_size}, {self.image_size})")
        model_fn = self.guided_model_fn(z_i.to(device), None if text_tokens is None else text_tokens.to(device),
                                   None if text_mask is None else text_mask.to(device), 1.0)
        return self.diffusion.ddim_reverse_sample_loop(model_fn, x0, steps, clip_x0=1.0)


# --- training ----------------------------------------------------------------------------------------------

def autocast(device: torch.device):
    """bf16 autocast on CUDA (measured 2x faster with torch.compile on an H200). The CPU stays fp32: on the 2-core
    development CPU (AVX512-BF16) bf16 trained the quick decoder 1.75x faster, but its recon_clip_cos fell from
    0.545 to 0.473 on the same CLIP, and the pictures are the point of the decoder."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def for_training(model: Decoder, device: torch.device, compile: bool = False) -> Decoder:
    """The decoder on ``device``, made fast there: torch.compile on CUDA (if ``compile``), channels_last on the CPU
    (faster convolutions: the quick run trained at 84 -> 96 img/s on 2 cores). Feed it channels_last images too."""
    model = model.to(device)
    if compile and device.type == "cuda":
        model.unet.compile()
    elif device.type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit_to_run(cfg: DecoderConfig, image_size: int, meta: dict) -> DecoderConfig:
    """The preset's network with the sizes the run's data and CLIP dictate: image side, D of z_i, caption width.
    (The training state keeps the preset itself, which is how ``run.ensure`` recognises it.)"""
    unet = dataclasses.replace(cfg.unet, image_size=image_size, embed_dim=meta["embed_dim"],
                               text_width=meta["text_width"] if cfg.use_text_tokens else 0)
    return dataclasses.replace(cfg, unet=unet)


def save_grid(rows: list[torch.Tensor], path: Path, scale: int = 2) -> None:
    """Write rows of images (N, 3, H, W) in [0, 1] as one PNG, 1-pixel gaps, each pixel ``scale`` x ``scale``."""
    rows = [F.pad(r.float().clamp(0, 1), (1, 1, 1, 1), value=1.0) for r in rows]  # white frame
    grid = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # (3, rows * H, N * W)
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    Image.fromarray((grid.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)).save(path)


def train_decoder(preset: DecoderPreset, run_dir: Path, resume: bool = False, progress: bool = True,
                  log=print) -> dict:
    """Train the decoder on (train image, its z_i [, caption tokens]) pairs of the run; checkpoint to RUN/decoder.

    Writes a grid of val z_i decoded with the EMA weights (top row: the real images) to
    RUN/decoder_samples/step_XXXXX.png at every sample_every-th checkpoint. Returns the training info.
    """
    run_dir = Path(run_dir)
    stage_dir = prepare_stage_dir(run_dir, STAGE, resume)
    data = load_embeddings(run_dir, "train")  # refuses a missing or stale cache, naming `train clip`
    images = run_images(run_dir, "train")  # (N, 3, H, W) uint8
    if len(images) != len(data["z_i"]):
        raise UserError(f"{run_dir}/embeddings has {len(data['z_i'])} train embeddings for {len(images)} images; "
                        f"recompute them with `minidalle2 train clip --run-dir {run_dir} --resume`")
    meta = data["meta"]
    cfg, train_cfg = fit_to_run(preset.model, images.shape[-1], meta), preset.train
    if preset.sample_every % train_cfg.ckpt_every:
        log(f"note: sample grids are drawn at checkpoints; sample_every={preset.sample_every} is not a multiple of "
            f"ckpt_every={train_cfg.ckpt_every}, so some are skipped")

    device = default_device()
    torch.manual_seed(train_cfg.seed)
    model = for_training(Decoder(cfg, preset.sample), device, preset.compile)
    images = images.to(device)
    z_i = data["z_i"].to(device)  # (N, D)
    text_tokens = data["text_tokens"].to(device) if cfg.use_text_tokens else None  # (N, L, W)
    text_mask = data["text_mask"].to(device) if cfg.use_text_tokens else None  # (N, L)

    val = load_embeddings(run_dir, "val")
    n_show = min(8, len(val["z_i"]))
    show = {"z_i": val["z_i"][:n_show], "images": run_images(run_dir, "val")[:n_show].float() / 255,
            "text_tokens": val["text_tokens"][:n_show] if cfg.use_text_tokens else None,
            "text_mask": val["text_mask"][:n_show] if cfg.use_text_tokens else None,
            "noise": torch.randn((n_show, 3, cfg.unet.image_size, cfg.unet.image_size),
                                 generator=torch.Generator().manual_seed(train_cfg.seed))}
    samples_dir = run_dir / SAMPLES
    if not resume and samples_dir.exists():
        for old in samples_dir.glob("step_*.png"):
            old.unlink()
    samples_dir.mkdir(exist_ok=True)

    def step_loss(step: int) -> torch.Tensor:
        g = torch.Generator(device).manual_seed(train_cfg.seed * 1_000_003 + step)
        idx = torch.randint(len(images), (train_cfg.batch_size,), generator=g, device=device)
        x0 = to_model_space(images[idx]).contiguous(memory_format=torch.channels_last)  # (B, 3, H, W) in [-1, 1]
        with autocast(device):
            return model.loss(x0, z_i[idx], None if text_tokens is None else text_tokens[idx],
                              None if text_mask is None else text_mask[idx], generator=g)

    def write_weights(folder: Path, ema, step: int) -> None:
        save_weights(folder / WEIGHTS, model, ema.shadow if ema is not None else None)
        write_config(folder, cfg, preset.sample, clip_sha256=meta["clip_sha256"])
        if ema is not None and (step % preset.sample_every == 0 or step == train_cfg.steps):
            with ema_weights(model, ema):
                model.eval()
                decoded = model.sample(show["z_i"], show["text_tokens"], show["text_mask"], noise=show["noise"])
                model.train()
            save_grid([show["images"], decoded], samples_dir / f"step_{step:05d}.png")

    info = train(stage_dir, model, preset, step_loss, write_weights, resume=resume,
                 extra_info={"clip_sha256": meta["clip_sha256"], "unet": config_dict(cfg.unet)}, progress=progress)
    model.eval()
    log(f"decoder trained: {info['step']} steps in {info['wall_s']:.0f} s "
        f"({info['step'] * train_cfg.batch_size / max(info['wall_s'], 1e-9):.0f} img/s), sample grids in {samples_dir}")
    return info


# --- loading -----------------------------------------------------------------------------------------------

def load_decoder(run_dir: Path) -> Decoder:
    """The trained decoder of a run (EMA weights, eval mode); refuses one trained on a different CLIP."""
    run_dir = Path(run_dir)
    folder = stage_dir(run_dir, STAGE)
    recover_dir(folder)
    if not (folder / CONFIG).exists():
        raise UserError(f"{run_dir} has no trained decoder; run `minidalle2 train decoder --run-dir {run_dir}` first")
    saved = read_config(folder, PRESETS["quick"])
    check_clip(run_dir, saved.get("clip_sha256"), f"the decoder in {folder}", "decoder")
    model = Decoder(config_from_dict(PRESETS["quick"].model, saved["model"]), DecoderSampling(**saved["sample"]))
    try:
        model.load_state_dict(read_tensors(folder / WEIGHTS))
    except RuntimeError as e:
        raise UserError(f"{folder / WEIGHTS} does not match {folder / CONFIG} ({str(e).splitlines()[0]}); "
                        "retrain the decoder") from None
    return model.eval().to(default_device())
