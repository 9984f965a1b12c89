"""Presets: named recipes for every stage, as data (nanoGPT's config files, one table per stage).

A preset is what ``minidalle2 train <stage> --preset NAME`` builds and trains. Each stage's config class defaults to
its ``quick`` model, so a preset names only what differs, with the reason beside it. The measurements behind the
choices are in notebook 04 and docs/recipes.md.

    tiny   tests and the notebooks' smoke mode: seconds, pictures of nothing
    quick  minidalle2 demo on a 2-core CPU: minutes per stage
    full   quick's recipe trained longer, about two hours in all on a 2-core CPU: the shipped run's (data/pretrained);
           its decoder learns the sketch of z_i after 24 000 steps without it (``Start``)
    paper  the decoder only: the paper's recipe on the CPU budget, to compare with quick's (notebook 04)

The upsampler (the paper's cascade, 32x32 -> 64x64) trains on its own renders and needs no CLIP.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from minidalle2.clip import ClipConfig
from minidalle2.data import ShapesConfig
from minidalle2.decoder import DecoderConfig, DecoderSampling
from minidalle2.evaluation.oracle import OracleConfig, OracleData
from minidalle2.prior_ar import ARPriorConfig, ARPriorSampling
from minidalle2.prior_diffusion import DiffusionPriorConfig, DiffusionPriorSampling
from minidalle2.training import TrainConfig
from minidalle2.unet import UNetConfig
from minidalle2.upsampler import UpsamplerConfig, UpsamplerSampling, quick_unet


@dataclass
class Preset:
    """One stage's recipe: the model, how the loop trains it, how it samples by default, and its data."""
    model: Any                   # the stage's config (ClipConfig, DecoderConfig, ...)
    train: TrainConfig           # the training loop's settings
    sample: Any = None           # default sampling settings; None for a stage that samples nothing
    data: Any = None             # CLIP: the shapes data it trains on; the oracle: its training renders
    start: Start | None = None   # None: from random weights; else from another recipe's trained weights


@dataclass
class Start:
    """How a recipe starts: the parameters that have a loss of their own (the decoder's sketch of z_i, L_sketch) are
    fitted alone before the whole model trains at the recipe's own settings. With a ``base``, that recipe is trained
    first (into RUN/<stage>_base, resumable like any stage) and its weights are loaded, so only what it lacks is
    fitted; without one, the fit starts from random weights."""
    base: Preset | None = None   # the recipe trained first; None: none
    fit_steps: int = 30_000      # Adam steps on the new parameters alone (a few minutes: no U-Net runs)
    fit_batch: int = 512         # examples per such step
    fit_lr: float = 1e-3         # their learning rate at first, decayed to 0 (cosine)


def shapes_only_off(preset: Preset) -> tuple[Preset, list[str]]:
    """``preset`` for a folder of the user's images: the settings only the shapes data has (swapping attributes
    between a scene's objects, word-order negatives, partial captions, unstated details and the invariance to them)
    switched off. Returns it and the names of what was switched off."""
    off = [name for name, value in (("swap_negatives", preset.model.swap_negatives),
                                    ("order_negatives", preset.model.order_negatives),
                                    ("detail_invariance", preset.model.detail_invariance),
                                    ("p_partial", preset.data.p_partial), ("details", preset.data.details)) if value]
    model = dataclasses.replace(preset.model, swap_negatives=0.0, order_negatives=0.0, detail_invariance=0.0)
    data = dataclasses.replace(preset.data, p_partial=0.0, details=False)
    return dataclasses.replace(preset, model=model, data=data), off


CLIP = {
    "tiny": Preset(ClipConfig(embed_dim=32, input_size=32,   # the images' own side: a 1x1 last map is enough here
                              vision_width=8, text_width=32, text_layers=1,
                              swap_negatives=0.0),   # hard negatives hurt while the image tower cannot bind
                   TrainConfig(batch_size=64, steps=60, lr=2e-3, weight_decay=0.1, warmup_steps=5, ckpt_every=20),
                   data=ShapesConfig(n_train=512, details=True)),  # on here: tests and smoke runs cover the details
    # about 3 minutes on 2 CPU cores; chosen for binding (docs/recipes.md, "CLIP")
    "quick": Preset(ClipConfig(),
                    TrainConfig(batch_size=256, steps=600, lr=1e-3, weight_decay=0.1, warmup_steps=50,
                                ckpt_every=200),
                    # details no caption states (render.py) stay off, and with them detail_invariance: with them on,
                    # the quick decoder drew rounded shapes (one object from the true z_i right 52 %, 57 % without
                    # turns; docs/variations.json)
                    data=ShapesConfig()),
    # quick's model, five times the steps on three times the images: binding is what longer training buys
    "full": Preset(ClipConfig(),
                   TrainConfig(batch_size=256, steps=3000, lr=1e-3, weight_decay=0.1, warmup_steps=100,
                               ckpt_every=500),
                   data=ShapesConfig(n_train=60_000)),
}

PRIOR_DIFFUSION = {
    "tiny": Preset(DiffusionPriorConfig(width=32, layers=1, heads=2),
                   TrainConfig(batch_size=64, steps=40, lr=1e-3, weight_decay=0.01, warmup_steps=5, ema_decay=0.9,
                               ckpt_every=20),
                   DiffusionPriorSampling(sample_steps=8)),
    # about a minute; partial captions make p(z_i | y) multimodal, which wants 2000 steps, not 700; batches of 64
    # score as 128 did on the oracle (docs/recipes.md) in half the time
    "quick": Preset(DiffusionPriorConfig(),
                    TrainConfig(batch_size=64, steps=2000, lr=1e-3, weight_decay=0.01, warmup_steps=50,
                                ema_decay=0.99, ckpt_every=500),
                    DiffusionPriorSampling()),
    # quick's transformer, twice the batch, 1.5x the steps and a slower EMA for the longer run; sampled at guidance 2,
    # which drew two objects fully right 29 % of the time against 16 % at 1 (docs/recipes.md, "Prior")
    "full": Preset(DiffusionPriorConfig(),
                   TrainConfig(batch_size=128, steps=3000, lr=1e-3, weight_decay=0.01, warmup_steps=50,
                               ema_decay=0.995, ckpt_every=500),
                   DiffusionPriorSampling(guidance=2.0)),
}

PRIOR_AR = {
    "tiny": Preset(ARPriorConfig(n_components=8, width=32, layers=1),
                   TrainConfig(batch_size=64, steps=40, lr=3e-3, weight_decay=0.01, warmup_steps=5, ema_decay=0.8,
                               ckpt_every=20),
                   ARPriorSampling()),
    # about 90 s; lr 1e-2 is high for a transformer, but this one is small and pre-norm (5e-3 learned slower);
    # batches of 32 lost accuracy (docs/recipes.md)
    "quick": Preset(ARPriorConfig(),
                    TrainConfig(batch_size=64, steps=1600, lr=1e-2, weight_decay=0.01, warmup_steps=50,
                                ema_decay=0.99, ckpt_every=250),
                    ARPriorSampling()),
    # quick's transformer, 1.5x the steps
    "full": Preset(ARPriorConfig(),
                   TrainConfig(batch_size=64, steps=2400, lr=1e-2, weight_decay=0.01, warmup_steps=50,
                               ema_decay=0.99, ckpt_every=400),
                   ARPriorSampling()),
}

DECODER = {
    # no layout map: after 12 steps it drowns the noisy input, and eta-1 variations came out alike; the sketch (as in
    # full) starts at zero and is on, so tests and smoke runs cover it
    "tiny": Preset(DecoderConfig(unet=UNetConfig(base_channels=16, channel_mult=[1, 2], attention_resolutions=[],
                                                 heads=2, patch=1, z_i_map=0, z_i_layout=0, z_i_sketch=4)),
                   TrainConfig(batch_size=8, steps=12, lr=1e-3, warmup_steps=2, ema_decay=0.99, ckpt_every=6,
                               sample_every=6),
                   DecoderSampling(sample_steps=4)),
    # the recipe that drew the right picture fastest on 2 CPU cores (notebook 04): 2600 steps, about 8 minutes;
    # narrower or in batches of 16 it lost accuracy (docs/recipes.md)
    "quick": Preset(DecoderConfig(),
                    TrainConfig(batch_size=32, steps=2600, lr=1e-3, warmup_steps=50, ema_decay=0.99, ckpt_every=325,
                                sample_every=1300),
                    DecoderSampling()),
    # the paper's decoder (GLIDE's U-Net at full resolution, eps target, caption tokens) on the budget that quick
    # had when the two were compared: 800 steps of 32
    "paper": Preset(DecoderConfig(unet=UNetConfig(channel_mult=[1, 2, 2], patch=1, z_i_map=0, z_i_layout=0),
                                  predict="eps"),
                    TrainConfig(batch_size=32, steps=800, lr=1e-3, warmup_steps=50, ema_decay=0.99, ckpt_every=200,
                                sample_every=200),
                    DecoderSampling()),
    # quick's recipe 1.5x wider (1.35x the seconds per step), nine times the steps, a slower EMA: about an hour on this
    # project's 2-core CPU; no layout map (on the full CLIP's z_i it moved no oracle row; docs/two_objects.json). Then
    # the sketch of z_i, fitted alone, and 3000 steps of the whole decoder reading it at a lower rate (11 minutes). The
    # sketch must tell a scene from its mirror image, which z_i says only in weak directions: fitted 3000 steps through
    # one hidden layer of 256 it did for 73 % of two-object scenes and two objects came out right from their true z_i
    # 60 % of the time; fitted 30 000 steps through two hidden layers of 512 (about 6 minutes), 96 % and 97.5 %
    # (docs/two_objects.json, sketch_fit). Trained with the sketch from the start, this decoder decoded z_t and drew
    # text diffs worse (shipped_sketch.from_scratch)
    "full": Preset(DecoderConfig(unet=UNetConfig(base_channels=48, z_i_layout=0, z_i_sketch=8,
                                                 z_i_sketch_hidden=[512, 512])),
                   TrainConfig(batch_size=32, steps=3000, lr=3e-4, warmup_steps=50, ema_decay=0.998, ckpt_every=250),
                   DecoderSampling(),
                   start=Start(Preset(DecoderConfig(unet=UNetConfig(base_channels=48, z_i_layout=0)),
                                      TrainConfig(batch_size=32, steps=24000, lr=1e-3, warmup_steps=200,
                                                  ema_decay=0.999, ckpt_every=1000, sample_every=6000),
                                      DecoderSampling()))),
}

ORACLE = {
    "tiny": Preset(OracleConfig(width=8),
                   TrainConfig(batch_size=16, steps=10, lr=3e-3, warmup_steps=2, ckpt_every=5),
                   data=OracleData(n_eval=100)),
    # about a minute; a batch is 64 scenes of 4 quadrant crops each
    "quick": Preset(OracleConfig(),
                    TrainConfig(batch_size=64, steps=1200, lr=3e-3, warmup_steps=50, ckpt_every=400),
                    data=OracleData()),
    # quick's oracle (renders read >= 0.997), checked on more renders
    "full": Preset(OracleConfig(),
                   TrainConfig(batch_size=64, steps=1200, lr=3e-3, warmup_steps=50, ckpt_every=400),
                   data=OracleData(n_eval=10_000)),
}

UPSAMPLER = {
    "tiny": Preset(UpsamplerConfig(unet=dataclasses.replace(quick_unet(), base_channels=8, heads=2)),
                   TrainConfig(batch_size=8, steps=10, lr=1e-3, warmup_steps=2, ema_decay=0.9, ckpt_every=5),
                   UpsamplerSampling(sample_steps=2)),
    # 900 steps of 32 fresh renders: about 3 minutes on 2 CPU cores; lr 2e-3: a small U-Net with x_lo to lean on
    "quick": Preset(UpsamplerConfig(),
                    TrainConfig(batch_size=32, steps=900, lr=2e-3, warmup_steps=50, ema_decay=0.99, ckpt_every=300),
                    UpsamplerSampling()),
    # quick's U-Net 1.5x wider, three times the steps, a slower EMA
    "full": Preset(UpsamplerConfig(unet=dataclasses.replace(quick_unet(), base_channels=48)),
                   TrainConfig(batch_size=32, steps=3000, lr=2e-3, warmup_steps=100, ema_decay=0.995,
                               ckpt_every=500),
                   UpsamplerSampling()),
}

PRESETS = {"clip": CLIP, "prior-diffusion": PRIOR_DIFFUSION, "prior-ar": PRIOR_AR, "decoder": DECODER,
           "oracle": ORACLE, "upsampler": UPSAMPLER}
