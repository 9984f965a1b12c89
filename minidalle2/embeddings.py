"""The CLIP embedding cache: what every later stage learns from.

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

from pathlib import Path

import torch
from safetensors.torch import save_file

from minidalle2.checkpoint import (atomic_dir, config_from_dict, file_sha256, read_json, read_tensors, read_train_state,
                                   recover_dir, write_json)
from minidalle2.clip import (PRESETS, WEIGHTS, ClipPreset, LoadedClip, clip_datasets, encode_image, encode_text,
                             load_clip)
from minidalle2.data import ShapesConfig, encode_attributes
from minidalle2.data_folder import Subset
from minidalle2.errors import UserError


def _clip_training(run_dir: Path) -> tuple[ClipPreset, dict | None]:
    """The preset and the data (None: the shapes data) the run's CLIP was trained with."""
    info = read_train_state(Path(run_dir) / "clip", PRESETS["quick"])
    return config_from_dict(PRESETS["quick"], info["config"]), info.get("data")


def run_datasets(run_dir: Path) -> dict:
    """The splits of the data the run's CLIP was trained on, rebuilt from its training state: {split: dataset}."""
    return clip_datasets(*_clip_training(run_dir))


def run_image_size(run_dir: Path) -> int:
    """The image side of the run's data (from its CLIP), or the shapes data's default without a CLIP yet."""
    if not (Path(run_dir) / "clip" / "train_state.json").exists():
        return ShapesConfig().image_size
    return _clip_training(run_dir)[0].model.image_size


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
