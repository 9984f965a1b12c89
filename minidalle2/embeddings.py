"""CLIP as the later stages use it: any open_clip model loaded, captions and images encoded, and the cache of
z_t, z_i and caption token features every later stage learns from.

After CLIP is trained, every split is encoded once and written to ``RUN/embeddings/``:

    {split}.safetensors   z_i (N, D) and z_t (N, D), unit-norm float32; text_tokens (N, L, W) float16, the
                          caption's per-token features; text_mask (N, L) bool; attribute ids (N,) int64
    {split}.json          captions and ground-truth attributes, in the same order
    meta.json             which CLIP made them (sha256 of its weights), D, L, W and split sizes

The priors learn p(z_i | y) from (text_tokens, z_t) -> z_i; the decoder learns p(x | z_i) from (z_i, image), the
images coming from ``run_images`` in the cache's order. The fingerprint lets a stage refuse embeddings that a
different CLIP produced (``check_clip``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from minidalle2.checkpoint import (atomic_dir, check_finite, config_from_dict, file_sha256, read_json, read_tensors,
                                   recover_dir, save_weights, write_json)
from minidalle2.clip import text_features
from minidalle2.data import SPLITS, ShapesConfig, ShapesDataset, encode_attributes
from minidalle2.data_folder import FolderDataset, Subset
from minidalle2.errors import UserError
from minidalle2.presets import CLIP

WEIGHTS, CONFIG = "open_clip_model.safetensors", "open_clip_config.json"  # open_clip's local-dir format
# Images are tensors in [0, 1]; CLIP sees them mapped to [-1, 1].
PREPROCESS = {"size": None, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
              "resize_mode": "shortest"}


# --- any open_clip model -------------------------------------------------------------------------------------

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


def for_training(model: open_clip.CLIP, context_length: int) -> LoadedClip:
    """A CLIP being trained, with the tokenizer and normalisation ``save_clip`` will record."""
    return LoadedClip(model, open_clip.get_tokenizer("ViT-B-32", context_length=context_length),
                      model.visual.image_size, PREPROCESS["mean"], PREPROCESS["std"], "training")


def save_clip(model: open_clip.CLIP, model_cfg: dict, folder: Path) -> None:
    """Write open_clip's local-dir format: config JSON (``model_cfg``: what the CLIP was built from) + weights."""
    preprocess = dict(PREPROCESS, size=model_cfg["vision_cfg"]["image_size"])
    write_json(Path(folder) / CONFIG, {"model_cfg": model_cfg, "preprocess_cfg": preprocess})
    save_weights(Path(folder) / WEIGHTS, model)


def load_clip(spec: str | Path) -> LoadedClip:
    """Load a CLIP from a run dir, ``local-dir:PATH``, ``hf-hub:ORG/NAME`` or ``NAME:TAG`` (e.g. ViT-B-32:openai)."""
    spec = str(spec)
    if not spec.startswith(("local-dir:", "hf-hub:")) and Path(spec).is_dir():
        folder = Path(spec) / "clip" if (Path(spec) / "clip").is_dir() else Path(spec)
        recover_dir(folder)
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
    """Images (B, 3, H, W), uint8 or float in [0, 1] -> the normalised (B, 3, S, S) input this CLIP expects."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    if images.shape[-1] != clip.image_size:
        images = F.interpolate(images, size=clip.image_size, mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.std).view(1, 3, 1, 1)
    return (images - mean) / std


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


# --- the run's data and its cache ------------------------------------------------------------------------------

def clip_datasets(shapes, data: dict | None = None) -> dict:
    """The splits a CLIP run uses: the shapes data (``shapes``, a data.ShapesConfig), or a user's folder (``data`` =
    {"folder", "skip_bad"}) at the same image side, split 90/5/5 in file order into train / val / test."""
    if data:
        folder = FolderDataset(data["folder"], image_size=shapes.image_size, skip_bad=data["skip_bad"])
        n = len(folder)
        n_eval = max(1, n // 20)
        if n < 3 * n_eval + 1:
            raise UserError(f"{data['folder']} has only {n} usable images; bring at least 20")
        return {"train": Subset(folder, range(0, n - 2 * n_eval)),
                "val": Subset(folder, range(n - 2 * n_eval, n - n_eval)),
                "test": Subset(folder, range(n - n_eval, n))}
    return {split: ShapesDataset(split, shapes) for split in SPLITS}


def _clip_training(run_dir: Path) -> tuple:
    """The shapes settings and the data (None: the shapes data) the run's CLIP was trained with."""
    path = Path(run_dir) / "clip" / "train_state.json"
    info = read_json(path)
    return config_from_dict(CLIP["quick"], info["config"], path).data, info.get("data")


def run_datasets(run_dir: Path) -> dict:
    """The splits of the data the run's CLIP was trained on, rebuilt from its training state: {split: dataset}."""
    return clip_datasets(*_clip_training(run_dir))


def run_image_size(run_dir: Path) -> int:
    """The image side of the run's data (from its CLIP), or the shapes data's default without a CLIP yet."""
    if not (Path(run_dir) / "clip" / "train_state.json").exists():
        return ShapesConfig().image_size
    return _clip_training(run_dir)[0].image_size


def run_images(run_dir: Path, split: str) -> torch.Tensor:
    """The images of one split of the run's data, uint8 (N, 3, H, W), in the embedding cache's order."""
    return run_datasets(run_dir)[split].images()


def _encode(clip: LoadedClip, ds) -> tuple[dict, dict]:
    """A dataset through CLIP: ({z_i, z_t, text_tokens, text_mask, attribute ids}, {captions, attributes})."""
    captions, attributes = ds.captions(), ds.attributes()
    z_t, tokens, mask = encode_text(clip, captions)
    tensors = {"z_i": encode_image(clip, ds.images()), "z_t": z_t, "text_tokens": tokens, "text_mask": mask}
    if attributes and attributes[0]:
        tensors.update({k: torch.from_numpy(v) for k, v in encode_attributes(attributes).items()})
    return tensors, {"captions": captions, "attributes": attributes}


def cache_embeddings(run_dir: Path, clip: LoadedClip | None = None, log=print) -> dict:
    """Encode every split with the run's CLIP and write ``RUN/embeddings`` atomically."""
    run_dir = Path(run_dir)
    clip = clip or load_clip(run_dir)
    datasets = run_datasets(run_dir)
    sizes = {}
    with atomic_dir(run_dir / "embeddings") as tmp:
        for split, ds in datasets.items():
            log(f"encoding {split} ({len(ds)} images)")
            tensors, texts = _encode(clip, ds)
            tensors["text_tokens"] = tensors["text_tokens"].half()
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / f"{split}.safetensors"))
            write_json(tmp / f"{split}.json", texts)
            sizes[split] = len(ds)
        meta = {"clip_sha256": file_sha256(run_dir / "clip" / WEIGHTS), "embed_dim": clip.embed_dim,
                "context_length": clip.context_length, "text_width": clip.text_width, "splits": sizes}
        write_json(tmp / "meta.json", meta)
    return meta


def load_meta(run_dir: Path) -> dict:
    """The cache's meta.json, after checking that the run's current CLIP made the cache."""
    run_dir = Path(run_dir)
    recover_dir(run_dir / "embeddings")
    meta_path = run_dir / "embeddings" / "meta.json"
    if not meta_path.exists():
        raise UserError(f"{run_dir} has no CLIP embedding cache; run `minidalle2 train clip --run-dir {run_dir}` first")
    meta = read_json(meta_path)
    if file_sha256(run_dir / "clip" / WEIGHTS) != meta["clip_sha256"]:
        raise UserError(f"the embeddings in {run_dir}/embeddings were made by a different CLIP than {run_dir}/clip; "
                        f"recompute them with `minidalle2 train clip --run-dir {run_dir} --resume`")
    return meta


def check_clip(run_dir: Path, clip_sha256: str, what: str, stage: str) -> None:
    """Refuse ``what`` (a trained stage) if it learned from the embeddings of another CLIP than ``RUN/clip``."""
    current = load_meta(run_dir)["clip_sha256"]
    if clip_sha256 != current:
        raise UserError(f"{what} was trained on another CLIP's embeddings (clip_sha256 {clip_sha256[:12]}, this run's "
                        f"CLIP is {current[:12]}); retrain it with `minidalle2 train {stage} --run-dir {run_dir}` in "
                        "a new run dir")


def load_embeddings(run_dir: Path, split: str) -> dict:
    """One split of the cache as tensors (text_tokens back in float32), plus its captions and attributes.

    Refuses a cache that is missing, or that a different CLIP than ``RUN/clip`` produced.
    """
    run_dir = Path(run_dir)
    meta = load_meta(run_dir)
    if split not in meta["splits"]:
        raise UserError(f"split '{split}' is not in the cache of {run_dir}; it has {', '.join(meta['splits'])}")
    out = dict(read_tensors(run_dir / "embeddings" / f"{split}.safetensors"))
    out["text_tokens"] = out["text_tokens"].float()
    out.update(read_json(run_dir / "embeddings" / f"{split}.json"))
    out["meta"] = meta
    return out


def split_embeddings(run_dir: Path, split: str, n: int | None = None) -> dict:
    """The first ``n`` examples of a split (all if None) as ``load_embeddings`` gives them: from the cache when it
    holds the split, else encoded now with the run's CLIP (the shipped run caches only test and heldout)."""
    run_dir = Path(run_dir)
    meta = load_meta(run_dir)
    if split in meta["splits"]:
        out = load_embeddings(run_dir, split)
        return {k: v[:n] if isinstance(v, (torch.Tensor, list)) else v for k, v in out.items()}
    ds = run_datasets(run_dir)[split]
    ds = Subset(ds, range(min(n or len(ds), len(ds))))
    with torch.no_grad():
        tensors, texts = _encode(load_clip(run_dir), ds)
    return {**tensors, **texts, "meta": meta}
