"""``minidalle2 bench``: training throughput and sampling time of each stage's model, on this machine.

Models are built from a preset with random weights and fed random inputs of the right shapes, so the
benchmark needs no trained run. Each figure is the median of a few timed repetitions after warm-up.
"""

from __future__ import annotations

import platform
import statistics
import time

import torch

from minidalle2.training import adamw


def _timed(fn, repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _train_rate(model, loss_fn, batch: int) -> float:
    opt = adamw(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    return batch / _timed(step)


def bench_clip(preset: str) -> dict:
    import open_clip

    from minidalle2.clip import PRESETS

    cfg = PRESETS[preset]
    model = open_clip.CLIP(**cfg.model_cfg())
    model.visual.to(memory_format=torch.channels_last)  # as train_clip does
    images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size).contiguous(
        memory_format=torch.channels_last)
    tokens = torch.randint(1, 1000, (cfg.batch_size, cfg.context_length))
    loss = open_clip.ClipLoss()
    rate = _train_rate(model, lambda: loss(model.encode_image(images, normalize=True),
                                           model.encode_text(tokens, normalize=True), model.logit_scale.exp()),
                       cfg.batch_size)
    return {"train_samples_per_s": rate, "batch_size": cfg.batch_size}


def bench_prior_diffusion(preset: str, embed_dim: int = 64, text_width: int = 64, context_length: int = 24) -> dict:
    from minidalle2.prior_diffusion import PRESETS, DiffusionPrior

    cfg = PRESETS[preset]
    prior = DiffusionPrior(cfg, embed_dim, text_width, context_length)
    B = cfg.batch_size
    z_i = torch.nn.functional.normalize(torch.randn(B, embed_dim), dim=-1)
    tokens, mask = torch.randn(B, context_length, text_width), torch.ones(B, context_length, dtype=torch.bool)
    rate = _train_rate(prior, lambda: prior.loss(z_i, tokens, mask, z_i), B)
    prior.eval()
    n = 64
    per = _timed(lambda: prior.sample(tokens[:n], mask[:n], z_i[:n]), repeats=3, warmup=1) / n
    return {"train_samples_per_s": rate, "batch_size": B,
            "sample_s_per_embedding": per, "sample_steps": cfg.sample_steps, "best_of": cfg.best_of}


def bench_prior_ar(preset: str, embed_dim: int = 64, text_width: int = 64, context_length: int = 24) -> dict:
    from minidalle2.prior_ar import PRESETS, ARPrior, PCATokenizer, all_tokens

    cfg = PRESETS[preset]
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(2048, embed_dim, generator=g), dim=-1)
    tok = PCATokenizer(cfg.n_components, cfg.variance, cfg.n_buckets).fit(z, z.roll(1, 0))
    prior = ARPrior(cfg, tok, text_width, context_length)
    B = cfg.batch_size
    tokens, mask = torch.randn(B, context_length, text_width), torch.ones(B, context_length, dtype=torch.bool)
    targets = all_tokens(tok, z[:B], z[1:B + 1])
    rate = _train_rate(prior, lambda: prior.loss(tokens, mask, z[:B], targets), B)
    prior.eval()
    n = 64
    per = _timed(lambda: prior.sample(tokens[:n], mask[:n], z[:n]), repeats=3, warmup=1) / n
    return {"train_samples_per_s": rate, "batch_size": B, "sample_s_per_embedding": per, "tokens": tok.K + 1}


def bench_decoder(preset: str) -> dict:
    from minidalle2.decoder import PRESETS, bench_decoder

    return bench_decoder(PRESETS[preset])


def bench_oracle(preset: str, image_size: int = 32) -> dict:
    import numpy as np

    from minidalle2.oracle import PRESETS, AttributeOracle, training_batch

    cfg = PRESETS[preset]
    oracle = AttributeOracle(cfg, image_size)
    images, labels = training_batch(np.random.default_rng(0), cfg.batch_size, image_size, cfg.p_object)
    x = images.float() / 255
    rate = _train_rate(oracle, lambda: oracle.loss(x, labels), cfg.batch_size)
    oracle.eval()
    per = _timed(lambda: oracle.read(x), repeats=3, warmup=1) / len(x)
    return {"train_samples_per_s": rate, "batch_size": cfg.batch_size, "sample_s_per_image_read": per}


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux/macOS), in MiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def bench_demo(preset: str) -> dict:
    """The whole ``minidalle2 demo`` from scratch, in a temporary folder: wall time per stage and in total."""
    import tempfile

    from minidalle2.demo import run_demo

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run_demo(tmp, preset=preset, progress=False, log=lambda *a: None)
    return {"wall_s": round(time.perf_counter() - start, 1), **metrics["timings"],
            "peak_rss_mb_so_far": round(peak_rss_mb(), 1)}


def run_bench(preset: str = "quick", stages: list[str] | None = None, demo: bool = False, log=print) -> dict:
    """Benchmark every stage that exists in the package (or ``stages``) with one preset's sizes; with ``demo``,
    also the whole demo (``stages=[]`` and ``demo=True`` times only the demo)."""
    from minidalle2.clip import get_preset
    from minidalle2.run import STAGES, stage_presets

    benches = {"clip": bench_clip, "prior-diffusion": bench_prior_diffusion, "prior-ar": bench_prior_ar,
               "decoder": bench_decoder, "oracle": bench_oracle}
    # clip and the priors are timed on the CPU; the decoder on CUDA when there is one (its "device" says)
    result = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "preset": preset, "stages": {}}
    for stage in STAGES if stages is None else stages:
        if stage not in benches:
            continue
        get_preset(preset, stage_presets(stage))  # a clear error for an unknown preset
        log(f"benchmarking {stage} ...")
        result["stages"][stage] = benches[stage](preset)
        # ru_maxrss never goes down: each stage's figure is the peak of the process up to and including it
        result["stages"][stage]["peak_rss_mb_so_far"] = round(peak_rss_mb(), 1)
    if demo:
        log("timing the whole demo ...")
        result["demo"] = bench_demo(preset)
    return result


def format_bench(result: dict) -> str:
    lines = [f"device {result['device']}, {result['threads']} threads, torch {result['torch']}, "
             f"preset {result['preset']}"]
    for stage, r in result["stages"].items():
        line = f"  {stage:<16} train {r['train_samples_per_s']:>9.1f} samples/s (batch {r['batch_size']})"
        for key, value in r.items():
            if key.startswith("sample_s_per"):
                line += f"   sampling {value * 1000:.2f} ms per {key.split('_per_')[1]}"
        line += f"   peak RSS so far {r['peak_rss_mb_so_far']:.0f} MiB"
        if r.get("device", "cpu") != "cpu":
            line += f"   (on {r['device']})"
        lines.append(line)
    if "demo" in result:
        d = result["demo"]
        stages = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in d.items() if k.endswith("_s") and k != "wall_s")
        lines.append(f"  demo             {d['wall_s']:.0f} s wall ({stages}); peak RSS {d['peak_rss_mb_so_far']:.0f} MiB")
    return "\n".join(lines)
