"""``minidalle2 evaluate upsampler``: does the cascade's 32 -> 64 upsampler draw the picture it was given, sharper?

Two kinds of input, each n pictures:

- real: fresh renders of the data's test and held-out scenes at 32 px, with their true 64-px renders;
- decoder: the base decoder's 32-px outputs for the test split's z_i (no 64-px truth: a decoded picture is a
  variation of its scene, not that scene's render, so only the oracle and consistency apply).

What is measured:

- oracle_agreement: the fraction of pictures the attribute oracle reads the same way (every object's quadrant,
  colour, shape and size) at 64 px as at 32 px. The oracle was trained on 32-px renders, so a 64-px picture is
  resized to 32 px with an antialiased filter before it reads it (evaluation/oracle.py, check_images): it judges
  whether the upsampler kept the picture's meaning, not its sharpness. Beside it, the oracle's accuracy against
  the true scene for the input and the output (the output should not be worse than its input).
- psnr, ssim (real only): against the true 64-px render, for the upsampler and for nearest, bilinear and bicubic
  resizing of the same input (torchmetrics' implementations, data range [0, 1]);
- consistency: the upsampled picture area-downsampled back to 32 px against the input, as a mean absolute error
  in 8-bit levels (0 .. 255) and a PSNR;
- seconds_per_image: wall time of upsampling, in batches of 64, divided by n.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from minidalle2 import runs
from minidalle2.checkpoint import is_trained
from minidalle2.data import render
from minidalle2.embeddings import load_embeddings, run_datasets
from minidalle2.evaluation.oracle import attribute_accuracy, check_trusted, fresh_test_scenes
from minidalle2.pipeline import batches
from minidalle2.upsampler import area_downsample

BASELINES = ("nearest", "bilinear", "bicubic")


def resize(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """A classical upsampling of images (N, 3, h, w) in [0, 1] to (N, 3, size, size), clipped to [0, 1]."""
    corners = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(images, size=(size, size), mode=mode, **corners).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of 10 log10(1 / MSE), images in [0, 1]."""
    per = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return round(per.mean().item(), 2)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(structural_similarity_index_measure(a, b, data_range=1.0).item(), 4)


def renders(scenes, size: int) -> torch.Tensor:
    """Scenes rendered at ``size`` px, floats (N, 3, size, size) in [0, 1]."""
    return torch.from_numpy(np.stack([render(s, size) for s in scenes])).permute(0, 3, 1, 2).float() / 255


def upsample_all(upsampler, images: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Upsample images in batches of 64: (the 64-px pictures, seconds per image)."""
    g = torch.Generator().manual_seed(seed)
    start = time.time()
    out = torch.cat([upsampler.sample(images[s], generator=g).cpu() for s in batches(len(images))])
    return out, (time.time() - start) / len(images)


def key(scene) -> tuple:
    """What the oracle reads of a scene, comparable between two readings: (quadrant, colour, shape, size) each."""
    return tuple(sorted((o.position, o.color, o.shape, o.size) for o in scene.objects))


def oracle_scores(oracle, low: torch.Tensor, high: torch.Tensor, truth) -> dict:
    """The oracle's readings of the inputs and of their upsampled pictures: agreement, and accuracy vs the truth."""
    read_low, read_high = oracle.read(low), oracle.read(high)
    mean = lambda acc: round(float(np.mean(list(acc.values()))), 4)  # noqa: E731
    return {"oracle_agreement": round(float(np.mean([key(a) == key(b) for a, b in zip(read_low, read_high)])), 4),
            "accuracy_input": mean(attribute_accuracy(read_low, truth)),
            "accuracy_upsampled": mean(attribute_accuracy(read_high, truth))}


def consistency(low: torch.Tensor, high: torch.Tensor) -> dict:
    """The upsampled pictures area-downsampled back to the input's size, against the input."""
    back = area_downsample(high, high.shape[-1] // low.shape[-1])
    return {"consistency_mae_levels": round(255 * (back - low).abs().mean().item(), 2),
            "consistency_psnr": psnr(back, low)}


@torch.no_grad()
@torch.no_grad()
def decode_test(run_dir: Path, n: int, seed: int = 0) -> tuple[torch.Tensor, list]:
    """The run's base decoder on the z_i of its first n test images (its default sampling): the pictures
    (n, 3, h, w) in [0, 1] and the test scenes they come from."""
    decoder = runs.load("decoder", run_dir)
    test = load_embeddings(run_dir, "test")
    n = min(n, len(test["z_i"]))
    tokens = test["text_tokens"][:n] if decoder.cfg.use_text_tokens else None
    mask = test["text_mask"][:n] if decoder.cfg.use_text_tokens else None
    g = torch.Generator().manual_seed(seed)
    base = torch.cat([decoder.sample(test["z_i"][s], None if tokens is None else tokens[s],
                                     None if mask is None else mask[s], generator=g).cpu() for s in batches(n)])
    dataset = run_datasets(run_dir)["test"]
    return base, [dataset.scene(i) for i in range(n)]


@torch.no_grad()
def evaluate_upsampler(run_dir: Path, n: int = 128, seed: int = 0, upsampler=None, decoded=None,
                       trust_oracle: bool = True) -> dict:
    """The upsampler of a run (or ``upsampler``) on n real 32-px renders and on n of the run's base decoder's
    outputs (when it has a decoder; ``decoded``: decode_test's result, to reuse): the numbers above, as a dict
    (see the module docstring). ``trust_oracle=False`` skips the oracle's trust check (smoke runs only)."""
    run_dir = Path(run_dir)
    upsampler = runs.load("upsampler", run_dir) if upsampler is None else upsampler
    oracle = runs.load("oracle", run_dir)
    if trust_oracle:
        check_trusted(oracle.accuracy, run_dir)
    lo, hi = upsampler.cfg.low_res, upsampler.image_size

    scenes = fresh_test_scenes(n, seed + 7)  # not the scenes the oracle's own accuracy was measured on
    low, truth = renders(scenes, lo), renders(scenes, hi)  # (n, 3, 32, 32), (n, 3, 64, 64)
    up, seconds = upsample_all(upsampler, low, seed)
    result = {"n": n, "steps": upsampler.sampling.sample_steps, "blur_sigma": upsampler.sampling.blur_sigma,
              "seconds_per_image": round(seconds, 4),
              "psnr": {"upsampler": psnr(up, truth)}, "ssim": {"upsampler": ssim(up, truth)}}
    for mode in BASELINES:
        base = resize(low, hi, mode)
        result["psnr"][mode], result["ssim"][mode] = psnr(base, truth), ssim(base, truth)
    result.update(oracle_scores(oracle, low, up, scenes))
    result.update(consistency(low, up))

    if decoded is None and is_trained(run_dir, "decoder") and runs.load("decoder", run_dir).image_size == lo:
        decoded = decode_test(run_dir, n, seed)
    if decoded is not None:
        base, base_scenes = decoded  # (m, 3, 32, 32) in [0, 1], m scenes
        up_base, _ = upsample_all(upsampler, base, seed)
        result["decoder"] = {"n": len(base), **oracle_scores(oracle, base, up_base, base_scenes),
                             **consistency(base, up_base)}
    return result


def format_upsampler_report(result: dict) -> str:
    lines = [f"Upsampler on {result['n']} real 32-px renders ({result['steps']} DDIM steps, input blur sigma "
             f"{result['blur_sigma']}), against the true 64-px renders",
             f"  {'':<12}{'PSNR (dB)':>10}{'SSIM':>8}"]
    for name in ("upsampler", *BASELINES):
        lines.append(f"  {name:<12}{result['psnr'][name]:>10.2f}{result['ssim'][name]:>8.4f}")
    rows = [("real renders", result)] + ([("decoder outputs", result["decoder"])] if "decoder" in result else [])
    lines.append(f"  {'':<16}{'oracle agreement':>18}{'acc. input':>12}{'acc. 64 px':>12}{'consistency MAE':>17}")
    for name, r in rows:
        lines.append(f"  {name:<16}{r['oracle_agreement']:>18.2%}{r['accuracy_input']:>12.2%}"
                     f"{r['accuracy_upsampled']:>12.2%}{r['consistency_mae_levels']:>11.2f} / 255")
    lines.append(f"  {result['seconds_per_image']:.3f} s per 64x64 image")
    return "\n".join(lines)
