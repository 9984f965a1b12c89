"""Stage 1: CLIP, the embedding space both the prior and the decoder live in.

unCLIP never trains CLIP jointly: it takes a trained CLIP and learns to *invert* its image encoder. We build
the CLIP from open_clip_torch's own ``CLIP`` class, tokenizer and ``ClipLoss`` (the symmetric InfoNCE loss)

    logits = exp(tau) * z_i @ z_t^T                       (B, B), z_i and z_t unit-norm
    L_clip = (CE(logits, arange(B)) + CE(logits^T, arange(B))) / 2

and save it in open_clip's ``local-dir`` format (``open_clip_config.json`` + ``open_clip_model.safetensors``) so
``open_clip.create_model_and_transforms("local-dir:RUN/clip")`` loads it unchanged. Any open_clip model can
stand in for ours: ``load_clip`` also accepts ``local-dir:PATH``, ``hf-hub:ORG/NAME`` and ``NAME:TAG``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from minidalle2.checkpoint import check_finite, prepare_stage_dir, read_json, save_weights, write_json
from minidalle2.data import SPLITS, ShapesConfig, ShapesDataset
from minidalle2.data_folder import FolderDataset, Subset
from minidalle2.errors import UserError
from minidalle2.training import TrainConfig, train

WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"


@dataclass
class ClipConfig:
    """A tiny CLIP for 32x32 shapes: open_clip's ``model_cfg``. Defaults are those of the old runs (see PRESETS)."""
    embed_dim: int = 64          # size of z_i and z_t
    image_size: int = 32         # side of the run's images (16, 32 or 64 for the shapes data; the decoder's too)
    input_size: int = 0          # side CLIP sees, images upsampled to it; 0: image_size (see model_cfg)
    vision: str = "resnet"       # "resnet": open_clip's ModifiedResNet; "vit": its VisionTransformer
    vision_width: int = 16       # resnet: stem width (last stage has 32x this); vit: transformer width
    vision_layers: tuple = (1, 1, 1, 1)  # resnet: blocks per stage; vit: use an int (transformer layers)
    patch_size: int = 4          # vit only: side of an image patch
    text_width: int = 64         # text transformer width (= width of the per-token features the priors read)
    text_layers: int = 3         # text transformer blocks
    head_width: int = 32         # attention heads = width / head_width
    context_length: int = 24     # tokens per caption, start/end included; longer captions are cut

    def model_cfg(self) -> dict:
        """The ``model_cfg`` block of open_clip_config.json; open_clip builds ``CLIP(**model_cfg)`` from it.

        A small ResNet sees shapes better than a ViT of the same cost at 32x32 (measured: zero-shot shape 0.89 vs
        0.48 after the same CPU time), so it is the default; open_clip picks ModifiedResNet when ``layers`` is a
        list. The ResNet divides the side by 32: at 32x32 its last feature map is a single cell, where the features
        of both objects are already summed; at an ``input_size`` of 64 it is 2x2, one cell per quadrant, and the
        attention pool reads which object sits where.
        """
        if self.vision not in ("resnet", "vit"):
            raise UserError(f"unknown vision tower '{self.vision}'; choose resnet or vit")
        vision = {"image_size": self.input_size or self.image_size, "width": self.vision_width,
                  "head_width": self.head_width}
        if self.vision == "resnet":
            vision["layers"] = list(self.vision_layers)
        else:
            vision.update(layers=int(self.vision_layers), patch_size=self.patch_size, mlp_ratio=2.0)
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": vision,
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408, "width": self.text_width,
                         "heads": self.text_width // self.head_width, "layers": self.text_layers, "mlp_ratio": 2.0},
        }


@dataclass
class ClipPreset:
    """A CLIP preset: the model and how to train it. Defaults are those of the old runs (see PRESETS)."""
    model: ClipConfig = field(default_factory=ClipConfig)
    n_train: int = 20000         # training images of the shapes data
    swap_negatives: float = 0.0  # weight of the swapped-attribute hard-negative term (swap_loss); 0: off
    p_partial: float = 0.0       # share of the shapes data's captions that leave clauses out (data.PARTIAL_PLANS)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=256, steps=600, lr=1e-3,
                                                                   weight_decay=0.1, warmup_steps=50, ckpt_every=200))


PRESETS = {
    "tiny": ClipPreset(ClipConfig(embed_dim=32, vision_width=8, text_width=32, text_layers=1), n_train=512,
                       p_partial=0.5, train=TrainConfig(batch_size=64, steps=60, lr=2e-3, weight_decay=0.1,
                                                        warmup_steps=5, ckpt_every=20)),
    # quick (about 4-5 minutes on 2 CPU cores): chosen for binding, whether z_i says which colour goes with which
    # shape. At 32 px open_clip's ModifiedResNet pools to a single 1x1 cell, so both objects' features are mixed
    # before the pool; upsampled to a 64 px input its last map is 2x2, one cell per quadrant (vision_width 16 -> 8
    # keeps the cost). The hard negatives (swap_loss) swap attributes between the two objects; they only help once
    # the image side can bind (at 32 px they hurt). Measured on the test split's two-object images (MLP probe,
    # evaluation.stages.binding_probe), share fully right from z_i: 0.716, against 0.319 for the old quick
    # (embed_dim 64, 32 px, width 16, no swaps); zero-shot colour 0.994, shape 0.975 (old: 1.000, 0.964).
    # Half the captions are partial (data.py), as real captions are: the reason unCLIP has a prior.
    "quick": ClipPreset(ClipConfig(embed_dim=128, input_size=64, vision_width=8), swap_negatives=0.5, p_partial=0.5),
    # full: quick's model trained five times as long on three times the images, to fit with every other stage in
    # about 80 minutes of a 2-core CPU (the shipped run, data/pretrained): binding is what longer training should buy
    "full": ClipPreset(ClipConfig(embed_dim=128, input_size=64, vision_width=8), n_train=60_000, swap_negatives=0.5,
                       p_partial=0.5, train=TrainConfig(batch_size=256, steps=3000, lr=1e-3, weight_decay=0.1,
                                                        warmup_steps=100, ckpt_every=500)),
}

# Images are tensors in [0, 1]; CLIP sees them mapped to [-1, 1].
PREPROCESS = {"size": None, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
              "resize_mode": "shortest"}


# --- loading and saving ----------------------------------------------------------------------------------------

@dataclass
class LoadedClip:
    """A CLIP with what it takes to feed it: tokenizer and the image size / normalisation it expects."""
    model: open_clip.CLIP
    tokenizer: object
    image_size: int
    mean: list
    std: list
    name: str

    @property
    def embed_dim(self) -> int:
        return self.model.text_projection.shape[1]

    @property
    def text_width(self) -> int:
        return self.model.text_projection.shape[0]

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length


def save_clip(model: open_clip.CLIP, model_cfg: dict, folder: Path) -> None:
    """Write open_clip's local-dir format: config JSON + safetensors weights."""
    preprocess = dict(PREPROCESS, size=model_cfg["vision_cfg"]["image_size"])
    write_json(Path(folder) / CONFIG, {"model_cfg": model_cfg, "preprocess_cfg": preprocess})
    save_weights(Path(folder) / WEIGHTS, model)


def load_clip(spec: str | Path) -> LoadedClip:
    """Load a CLIP from a run dir, ``local-dir:PATH``, ``hf-hub:ORG/NAME`` or ``NAME:TAG`` (e.g. ViT-B-32:openai)."""
    spec = str(spec)
    if not spec.startswith(("local-dir:", "hf-hub:")) and Path(spec).is_dir():
        folder = Path(spec) / "clip" if (Path(spec) / "clip").is_dir() else Path(spec)
        if not (folder / CONFIG).exists():
            raise UserError(f"{spec} has no trained CLIP; run `minidalle2 train clip --run-dir {spec}` first")
        spec = f"local-dir:{folder}"
    name, pretrained = spec, None
    if spec.startswith("local-dir:"):
        folder = Path(spec[len("local-dir:"):])
        cfg = read_json(folder / CONFIG)  # a clear error for a missing/corrupt config
        if not (folder / WEIGHTS).exists():
            raise UserError(f"{folder / WEIGHTS} is missing; the CLIP checkpoint is incomplete, retrain it")
        _check_weights(folder, cfg)
    elif not spec.startswith("hf-hub:"):
        name, _, pretrained = spec.partition(":")
        if name not in open_clip.list_models():
            raise UserError(f"'{spec}' is neither a run dir, local-dir:PATH, hf-hub:ORG/NAME nor a built-in open_clip "
                            f"model (e.g. ViT-B-32:laion2b_s34b_b79k)")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained or None)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:
        if spec.startswith("local-dir:"):
            raise UserError(f"could not load CLIP from {spec}: {e}; the checkpoint is corrupt, retrain it") from None
        raise UserError(f"could not fetch '{spec}' from the Hugging Face hub (offline?): {type(e).__name__}. "
                        "Download it where there is internet and pass local-dir:PATH instead") from None
    model.eval()
    if not isinstance(model, open_clip.CLIP):
        raise UserError(f"'{spec}' is a {type(model).__name__}; minidalle2 needs open_clip's CLIP class "
                        "(a built-in text tower) for per-token text features")
    tokenizer = open_clip.get_tokenizer(name)
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    norm = next(t for t in preprocess.transforms if type(t).__name__ == "Normalize")
    return LoadedClip(model, tokenizer, int(image_size), list(norm.mean), list(norm.std), spec)


def _check_weights(folder: Path, cfg: dict) -> None:
    """Refuse weights that do not fit the config, naming the first mismatching tensor."""
    try:
        weights = load_file(str(folder / WEIGHTS))
    except Exception as e:
        raise UserError(f"{folder / WEIGHTS} is not readable ({e}); the CLIP checkpoint is corrupt, retrain it") from None
    check_finite(folder / WEIGHTS, weights)
    try:
        expected = open_clip.CLIP(**cfg["model_cfg"]).state_dict()
    except (KeyError, TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise UserError(f"{folder / CONFIG}: its model_cfg does not build a CLIP ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'bad setting'}); restore the file or retrain CLIP") from None
    for key, value in expected.items():
        if key not in weights or weights[key].shape != value.shape:
            got = tuple(weights[key].shape) if key in weights else "missing"
            raise UserError(f"{folder / WEIGHTS} does not match {CONFIG}: '{key}' is {got}, expected "
                            f"{tuple(value.shape)}; retrain CLIP or fix the config")


# --- encoding --------------------------------------------------------------------------------------------------

def tokenize(clip: LoadedClip, captions: list[str], warn=print) -> torch.Tensor:
    """Token ids (N, L). Empty captions are refused; captions longer than the context are cut, with a warning."""
    for i, c in enumerate(captions):
        if not c or not c.strip():
            raise UserError(f"caption {i} is empty; give every image a caption")
    encode = getattr(clip.tokenizer, "encode", None)
    if encode is not None:
        long = [c for c in captions if len(encode(c)) + 2 > clip.context_length]
        if long:
            warn(f"warning: {len(long)} caption(s) longer than {clip.context_length} tokens were truncated, "
                 f"e.g. '{long[0][:60]}'")
    return clip.tokenizer(captions)


def image_input(clip: LoadedClip, images: torch.Tensor) -> torch.Tensor:
    """Float images (B, 3, H, W) in [0, 1] -> the normalised (B, 3, S, S) input this CLIP expects."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    if images.shape[-1] != clip.image_size:
        images = F.interpolate(images, size=clip.image_size, mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    return (images - mean) / std


def text_features(model: open_clip.CLIP, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """open_clip's ``encode_text`` opened up, to keep the per-token features the priors condition on.

    Returns z_t (B, D) unit-norm, token features (B, L, W) after the final LayerNorm, and the mask (B, L) of real
    tokens (start .. end-of-text).
    """
    x = model.token_embedding(tokens) + model.positional_embedding  # (B, L, W)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)  # (B, L, W)
    eot = tokens.argmax(dim=-1)  # the end-of-text token has the largest id
    pooled = x[torch.arange(len(x)), eot]  # (B, W)
    z_t = F.normalize(pooled @ model.text_projection, dim=-1)  # (B, D)
    mask = torch.arange(tokens.shape[1]) <= eot[:, None]  # (B, L)
    return z_t, x, mask


@torch.no_grad()
def encode_text(clip: LoadedClip, captions: list[str], batch_size: int = 512):
    """Captions -> (z_t (N, D), token features (N, L, W), mask (N, L))."""
    tokens = tokenize(clip, captions)
    out = [text_features(clip.model, tokens[i:i + batch_size]) for i in range(0, len(tokens), batch_size)]
    return tuple(torch.cat(parts) for parts in zip(*out))


@torch.no_grad()
def encode_image(clip: LoadedClip, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Images (N, 3, H, W), uint8 or float in [0, 1] -> z_i (N, D) unit-norm."""
    out = [clip.model.encode_image(image_input(clip, images[i:i + batch_size]), normalize=True)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


# --- the contrastive objective ----------------------------------------------------------------------------

def clip_loss(z_i: torch.Tensor, z_t: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's symmetric contrastive loss over B matching (image, caption) pairs (Radford et al. 2021, Fig. 3):

        logits = exp(tau) z_i z_t^T                             (B, B): image j scored against caption k
        L_clip = (CE(logits, arange(B)) + CE(logits^T, arange(B))) / 2

    Row j asks "which of the B captions is image j's?", column k "which image is caption k's?"; the answers sit on
    the diagonal. z_i, z_t (B, D) unit-norm; logit_scale = exp(tau). Training uses open_clip's ``ClipLoss``, which
    computes the same number (the tests check it).
    """
    # BEGIN SOLUTION
    logits = logit_scale * z_i @ z_t.T  # (B, B)
    labels = torch.arange(len(z_i), device=z_i.device)  # the matching caption of image j is caption j
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    # END SOLUTION


def swap_loss(z_i: torch.Tensor, z_t: torch.Tensor, z_swap: torch.Tensor, logit_scale: torch.Tensor | float
              ) -> torch.Tensor:
    """A hard-negative term for binding (as NegCLIP, Yuksekgonul et al. 2023, adds to CLIP's loss):

        s_j  = exp(tau) z_i_j . z_t_j          image j and its caption, "a red circle left of a blue square"
        s~_j = exp(tau) z_i_j . z~_t_j         the same caption with colours (or shapes, or sizes) swapped
                                               between the objects, "a blue circle left of a red square"
        L_swap = mean_j CE([s_j, s~_j], 0) = mean_j log(1 + exp(s~_j - s_j))

    In a batch of random captions almost no other caption names the same two colours, so L_clip is low for an
    image embedding that only lists its attributes; L_swap is low only when z_i says which colour goes with which
    shape. z_i, z_t, z_swap (n, D) unit-norm, for the two-object images of the batch; training minimises
    L_clip + swap_negatives * L_swap.
    """
    s = logit_scale * (z_i * z_t).sum(-1)  # (n,)
    s_swap = logit_scale * (z_i * z_swap).sum(-1)  # (n,)
    return F.softplus(s_swap - s).mean()


# --- training ----------------------------------------------------------------------------------------------

def clip_datasets(preset: ClipPreset, data: dict | None = None) -> dict:
    """The splits a CLIP run uses: the shapes data, or a user's folder (``data`` = {"folder", "skip_bad"})
    split 90/5/5 in file order into train / val / test."""
    if data:
        folder = FolderDataset(data["folder"], image_size=preset.model.image_size, skip_bad=data["skip_bad"])
        n = len(folder)
        n_eval = max(1, n // 20)
        if n < 3 * n_eval + 1:
            raise UserError(f"{data['folder']} has only {n} usable images; bring at least 20")
        return {"train": Subset(folder, range(0, n - 2 * n_eval)),
                "val": Subset(folder, range(n - 2 * n_eval, n - n_eval)),
                "test": Subset(folder, range(n - n_eval, n))}
    shapes = ShapesConfig(image_size=preset.model.image_size, seed=preset.train.seed, n_train=preset.n_train,
                          p_partial=preset.p_partial)
    return {split: ShapesDataset(split, shapes) for split in SPLITS}


def train_clip(preset: ClipPreset, run_dir: Path, resume: bool = False, data_dir: str | None = None,
               skip_bad: bool = False, progress: bool = True, log=print) -> dict:
    """Train CLIP with open_clip's ClipLoss on (image, caption) pairs; checkpoint to ``RUN/clip``; return the history.

    Trains on the shapes data's train split, or on a folder of images + captions (``data_dir``). Batches are
    drawn from a generator seeded by (seed, step), so a resumed run sees the batches it would have seen.
    """
    stage_dir = prepare_stage_dir(run_dir, "clip", resume)
    data = {"folder": str(Path(data_dir).resolve()), "skip_bad": skip_bad} if data_dir else None
    train_data = clip_datasets(preset, data)["train"]
    if data and train_data.dataset.skipped:
        log(f"skipped {train_data.dataset.skipped} bad row(s) in {data_dir}")
    if data and train_data.dataset.summary():
        log(train_data.dataset.summary())
    seed, batch_size = preset.train.seed, preset.train.batch_size
    torch.manual_seed(seed)
    model_cfg = preset.model.model_cfg()
    model = open_clip.CLIP(**model_cfg)
    model.visual.to(memory_format=torch.channels_last)  # 1.2x faster convolutions on CPU (1290 -> 1520 pairs/s)
    clip = LoadedClip(model, open_clip.get_tokenizer("ViT-B-32", context_length=preset.model.context_length),
                      model_cfg["vision_cfg"]["image_size"], PREPROCESS["mean"], PREPROCESS["std"], "training")
    images = train_data.images()  # (N, 3, H, W) uint8
    tokens = tokenize(clip, train_data.captions(), warn=log)  # (N, L)
    loss_fn = open_clip.ClipLoss()
    if preset.swap_negatives:
        if data:
            raise UserError("swap_negatives needs the shapes data (it swaps attributes between a scene's objects)")
        swapped = train_data.swapped_captions()
        has_swap = torch.tensor([c is not None for c in swapped])  # (N,) two objects with a swap
        swap_tokens = tokenize(clip, [c or "-" for c in swapped], warn=log)  # (N, L)

    def step_loss(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(len(images), (batch_size,), generator=g)
        x = image_input(clip, images[idx]).contiguous(memory_format=torch.channels_last)  # (B, 3, H, W)
        z_i = model.encode_image(x, normalize=True)  # (B, D)
        z_t = model.encode_text(tokens[idx], normalize=True)  # (B, D)
        loss = loss_fn(z_i, z_t, model.logit_scale.exp())
        if preset.swap_negatives:
            two = has_swap[idx]  # (B,)
            z_swap = model.encode_text(swap_tokens[idx[two]], normalize=True)  # (n, D)
            loss = loss + preset.swap_negatives * swap_loss(z_i[two], z_t[two], z_swap, model.logit_scale.exp())
        return loss

    def clamp_temperature(step: int) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # as in CLIP

    return train(stage_dir, model, preset, step_loss, lambda folder, ema, step: save_clip(model, model_cfg, folder),
                 resume=resume, extra_info={"data": data}, after_step=clamp_temperature, progress=progress,
                 betas=(0.9, 0.98))
