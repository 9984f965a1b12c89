"""``minidalle2 bench``: training throughput and sampling time of each stage's model, on this machine.

Models are built from a preset with random weights and fed random inputs of the right shapes, so the
benchmark needs no trained run. Each figure is the median of a few timed repetitions after warm-up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from minidalle2 import distributed
from minidalle2.clip import build_clip, training_loss
from minidalle2.decoder import Decoder, fit_to_run
from minidalle2.errors import UserError
from minidalle2.evaluation.oracle import AttributeOracle, training_batch
from minidalle2.presets import PRESETS
from minidalle2.prior_ar import ARPrior, all_tokens
from minidalle2.prior_ar_tokenizer import PCATokenizer
from minidalle2.prior_diffusion import DiffusionPrior
from minidalle2.runs import STAGES, default_device, get_preset, upsampler_batch
from minidalle2.tools import demo, machine
from minidalle2.training import adamw
from minidalle2.upsampler import Upsampler


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
    cfg, B = PRESETS["clip"][preset].model, PRESETS["clip"][preset].train.batch_size
    model = build_clip(cfg)
    side = cfg.input_size  # what CLIP sees (training upsamples the images to it)
    images = torch.randn(B, 3, side, side).contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
    tokens = torch.randint(1, 1000, (B, cfg.context_length))
    no_swaps = dataclasses.replace(cfg, swap_negatives=0.0, order_negatives=0.0)  # L_clip alone
    rate = _train_rate(model, lambda: training_loss(model, no_swaps, images, tokens), B)
    return {"train_samples_per_s": rate, "batch_size": B}


def bench_prior_diffusion(preset: str, embed_dim: int = 64, text_width: int = 64, context_length: int = 24) -> dict:
    cfg = PRESETS["prior-diffusion"][preset]
    prior = DiffusionPrior(cfg.model, embed_dim, text_width, context_length, cfg.sample)
    B = cfg.train.batch_size
    z_i = F.normalize(torch.randn(B, embed_dim), dim=-1)
    tokens, mask = torch.randn(B, context_length, text_width), torch.ones(B, context_length, dtype=torch.bool)
    rate = _train_rate(prior, lambda: prior.loss(z_i, tokens, mask, z_i), B)
    prior.eval()
    n = 64
    per = _timed(lambda: prior.sample(tokens[:n], mask[:n], z_i[:n]), repeats=3, warmup=1) / n
    return {"train_samples_per_s": rate, "batch_size": B,
            "sample_s_per_embedding": per, "sample_steps": cfg.sample.sample_steps, "best_of": cfg.sample.best_of}


def bench_prior_ar(preset: str, embed_dim: int = 64, text_width: int = 64, context_length: int = 24) -> dict:
    cfg = PRESETS["prior-ar"][preset]
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(2048, embed_dim, generator=g), dim=-1)
    tok = PCATokenizer(cfg.model.n_components, cfg.model.variance, cfg.model.n_buckets).fit(z, z.roll(1, 0))
    prior = ARPrior(cfg.model, tok, text_width, context_length, cfg.sample)
    B = cfg.train.batch_size
    tokens, mask = torch.randn(B, context_length, text_width), torch.ones(B, context_length, dtype=torch.bool)
    targets = all_tokens(tok, z[:B], z[1:B + 1])
    rate = _train_rate(prior, lambda: prior.loss(tokens, mask, z[:B], targets, generator=g), B)
    prior.eval()
    n = 64
    per = _timed(lambda: prior.sample(tokens[:n], mask[:n], z[:n]), repeats=3, warmup=1) / n
    return {"train_samples_per_s": rate, "batch_size": B, "sample_s_per_embedding": per, "tokens": tok.K + 1}


def bench_decoder(preset: str, train_steps: int | None = None, n_sample: int | None = None) -> dict:
    """Training images/s and DDIM seconds per image (the preset's sampling steps, guidance on) on this device,
    with random data of the sizes the preset's CLIP gives."""
    device = default_device()
    cuda = device.type == "cuda"
    settings = PRESETS["decoder"][preset]
    clip = PRESETS["clip"].get(preset, PRESETS["clip"]["quick"])  # `paper` is a decoder preset: the quick CLIP
    cfg = fit_to_run(settings.model, clip.data.image_size, clip.model.embed_dim, clip.model.text_width)
    B = settings.train.batch_size
    torch.manual_seed(0)
    model = Decoder(cfg, settings.sample).to(device)
    if not cuda:
        model.to(memory_format=torch.channels_last)  # as training does
    opt = adamw(model.parameters(), lr=settings.train.lr)
    S, D = cfg.unet.image_size, cfg.unet.embed_dim
    x0 = (torch.rand(B, 3, S, S, device=device) * 2 - 1).contiguous(memory_format=torch.channels_last)
    z_i = F.normalize(torch.randn(B, D, device=device), dim=-1)
    tokens = torch.randn(B, 8, cfg.unet.text_width, device=device) if cfg.use_text_tokens else None
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    train_steps = train_steps or (30 if cuda else 5)
    warmup = 5 if cuda else 2
    for i in range(warmup + train_steps):
        if i == warmup:
            sync()
            start = time.time()
        loss = model.loss(x0, z_i, tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    train_s = time.time() - start
    model.eval()
    n_sample = n_sample or (256 if cuda else 8)
    z = z_i[:1].expand(n_sample, D)
    tk = None if tokens is None else tokens[:1].expand(n_sample, -1, -1)
    model.sample(z[:2], None if tk is None else tk[:2], steps=2)  # warm-up (and compile)
    sync()
    start = time.time()
    model.sample(z, tk)
    sync()
    sample_s = time.time() - start
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in model.parameters()), "image_size": S, "batch_size": B,
            "train_samples_per_s": round(B * train_steps / train_s, 1), "sample_steps": settings.sample.sample_steps,
            "guidance": settings.sample.guidance, "sample_s_per_image": round(sample_s / n_sample, 4)}


def bench_decoder_bf16(preset: str, steps: int = 10, warmup: int = 2) -> dict:
    """Seconds per decoder training step in fp32 and under bf16 autocast, timed only where the CPU has native bf16
    (elsewhere autocast emulates it); ``bf16`` says whether training should use it (native and measured faster)."""
    if not machine.native_bf16():
        return {"native_bf16": False, "bf16": False}
    settings = PRESETS["decoder"][preset]
    clip = PRESETS["clip"].get(preset, PRESETS["clip"]["quick"])
    cfg = fit_to_run(settings.model, clip.data.image_size, clip.model.embed_dim, clip.model.text_width)
    B, S, D = settings.train.batch_size, cfg.unet.image_size, cfg.unet.embed_dim
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(B, 3, S, S, generator=g) * 2 - 1).contiguous(memory_format=torch.channels_last)
    z_i = F.normalize(torch.randn(B, D, generator=g), dim=-1)
    tokens = torch.randn(B, 8, cfg.unet.text_width, generator=g) if cfg.use_text_tokens else None
    steps_of = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = Decoder(cfg, settings.sample).to(memory_format=torch.channels_last)  # as training on a CPU does
        opt = adamw(model.parameters(), lr=settings.train.lr)

        def step(model=model, opt=opt, bf16=bf16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # the weights and AdamW stay fp32
                loss = model.loss(x0, z_i, tokens, generator=g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps_of["bf16" if bf16 else "fp32"] = step
    # the two alternate, step by step, so that a change in the machine's load falls on both alike
    times = {"fp32": [], "bf16": []}
    for i in range(warmup + steps):
        for name, step in steps_of.items():
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    fp32_s, bf16_s = (round(statistics.median(times[name]), 4) for name in ("fp32", "bf16"))
    return {"native_bf16": True, "batch_size": B, "steps": steps, "fp32_s_per_step": fp32_s, "bf16_s_per_step": bf16_s,
            "bf16": machine.choose_bf16(fp32_s, bf16_s)}


def _decoder_rank(rank: int, nproc: int, folder: str, preset: str, steps: int, threads: int, warmup: int = 3) -> None:
    """One rank of ``bench_decoder_processes``: the decoder's training step on its B / nproc of random data."""
    torch.set_num_threads(threads)
    if nproc > 1:
        dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=nproc)
    settings = PRESETS["decoder"][preset]
    clip = PRESETS["clip"].get(preset, PRESETS["clip"]["quick"])
    cfg = fit_to_run(settings.model, clip.data.image_size, clip.model.embed_dim, clip.model.text_width)
    B, S, D = settings.train.batch_size // nproc, cfg.unet.image_size, cfg.unet.embed_dim
    torch.manual_seed(0)
    model = Decoder(cfg, settings.sample).to(memory_format=torch.channels_last)  # as training on a CPU does
    opt = adamw(model.parameters(), lr=settings.train.lr)
    g = torch.Generator().manual_seed(rank)
    x0 = (torch.rand(B, 3, S, S, generator=g) * 2 - 1).contiguous(memory_format=torch.channels_last)
    z_i = F.normalize(torch.randn(B, D, generator=g), dim=-1)
    tokens = torch.randn(B, 8, cfg.unet.text_width, generator=g) if cfg.use_text_tokens else None
    batch_loss = distributed.wrap(model, lambda step: model.loss(x0, z_i, tokens, generator=g))
    for i in range(warmup + steps):
        if i == warmup:
            distributed.barrier()
            start = time.perf_counter()
        loss = batch_loss(i)
        distributed.mean(loss)  # as the training loop does, for its log
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    distributed.barrier()
    wall = time.perf_counter() - start
    if rank == 0:
        B_all = settings.train.batch_size
        result = {"processes": nproc, "threads_per_process": torch.get_num_threads(), "batch_size": B_all,
                  "steps": steps, "s_per_step": round(wall / steps, 4), "train_samples_per_s": round(B_all * steps / wall, 1)}
        (Path(folder) / "result.json").write_text(json.dumps(result))
    if nproc > 1:
        dist.destroy_process_group()


def check_processes(preset: str, nproc: int) -> None:
    batch = PRESETS["decoder"][preset].train.batch_size
    if not 1 <= nproc <= (os.cpu_count() or 1) or batch % nproc:
        raise UserError(f"--nproc {nproc}: choose a number of processes from 1 to the {os.cpu_count()} cores that "
                        f"divides the {preset} decoder's batch of {batch}")


def bench_decoder_processes(preset: str, nproc: int, steps: int = 30, threads: int | None = None) -> dict:
    """Training seconds per step and images/s of the decoder on ``nproc`` CPU processes (DDP over gloo, each with
    B / nproc of the preset's batch B and ``threads``, by default cores // nproc), as ``train decoder --nproc``
    runs it."""
    check_processes(preset, nproc)
    with tempfile.TemporaryDirectory() as folder:
        threads = threads or distributed.default_threads(nproc)
        mp.spawn(_decoder_rank, args=(nproc, folder, preset, steps, threads), nprocs=nproc, join=True)
        return json.loads((Path(folder) / "result.json").read_text())


def bench_oracle(preset: str, image_size: int = 32) -> dict:
    cfg = PRESETS["oracle"][preset]
    model = AttributeOracle(cfg.model, image_size)
    B = cfg.train.batch_size
    images, labels = training_batch(np.random.default_rng(0), B, image_size, cfg.data.p_object, cfg.model.details)
    x = images.float() / 255
    rate = _train_rate(model, lambda: model.loss(x, labels), B)
    model.eval()
    per = _timed(lambda: model.read(x), repeats=3, warmup=1) / len(x)
    return {"train_samples_per_s": rate, "batch_size": B, "sample_s_per_image_read": per}


def bench_upsampler(preset: str) -> dict:
    """Training on 64-px renders (the renders made per step included) and 32 -> 64 sampling with its DDIM steps."""
    cfg = PRESETS["upsampler"][preset]
    model, B = Upsampler(cfg.model, cfg.sample), cfg.train.batch_size
    size = cfg.model.unet.image_size
    rate = _train_rate(model, lambda: model.loss(upsampler_batch(0, 0, B, size).float() / 127.5 - 1), B)
    model.eval()
    low = torch.rand(64, 3, cfg.model.low_res, cfg.model.low_res)
    per = _timed(lambda: model.sample(low), repeats=2, warmup=1) / len(low)
    return {"train_samples_per_s": rate, "batch_size": B, "sample_steps": cfg.sample.sample_steps,
            "sample_s_per_image": round(per, 4)}


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux/macOS), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def bench_demo(preset: str) -> dict:
    """The whole ``minidalle2 demo`` from scratch, in a temporary folder: wall time per stage and in total."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        metrics = demo.run_demo(tmp, preset=preset, progress=False, log=lambda *a: None)
    return {"wall_s": round(time.perf_counter() - start, 1), **metrics["timings"],
            "peak_rss_mb_so_far": round(peak_rss_mb(), 1), "machine": metrics.get("machine")}


def run_bench(preset: str = "quick", stages: list[str] | None = None, demo: bool = False, log=print,
              nproc: int | None = None, bf16: bool = False) -> dict:
    """Benchmark every stage that exists in the package (or ``stages``) with one preset's sizes; with ``demo``,
    also the whole demo (``stages=[]`` and ``demo=True`` times only the demo); with ``nproc``, also the decoder's
    training on 1 and on ``nproc`` processes; with ``bf16``, the decoder's training step in fp32 and bf16 autocast.
    ``machine``: the reference matmul speed, measured first."""
    benches = {"clip": bench_clip, "prior-diffusion": bench_prior_diffusion, "prior-ar": bench_prior_ar,
               "decoder": bench_decoder, "oracle": bench_oracle, "upsampler": bench_upsampler}
    # clip and the priors are timed on the CPU; the decoder on CUDA when there is one (its "device" says)
    result = {"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "preset": preset, "stages": {},
              "machine": {**machine.matmul_gflops(), "native_bf16": machine.native_bf16()}}
    if nproc is not None:
        get_preset("decoder", preset)
        check_processes(preset, nproc)  # before minutes of the other benchmarks
    for stage in STAGES if stages is None else stages:
        if stage not in benches:
            continue
        get_preset(stage, preset)  # a clear error for an unknown preset
        log(f"benchmarking {stage} ...")
        result["stages"][stage] = benches[stage](preset)
        # ru_maxrss never goes down: each stage's figure is the peak of the process up to and including it
        result["stages"][stage]["peak_rss_mb_so_far"] = round(peak_rss_mb(), 1)
    if nproc is not None:
        # one process with every core's threads; one with as many as each of the N gets (the cost of DDP alone); N
        result["processes"] = []
        timed = [(1, None), (1, distributed.default_threads(nproc)), (nproc, None)] if nproc > 1 else [(1, None)]
        for n, threads in timed:
            log(f"timing the decoder's training on {n} process{'es' if n > 1 else ''} ...")
            result["processes"].append(bench_decoder_processes(preset, n, threads=threads))
    if bf16:
        get_preset("decoder", preset)
        log("timing the decoder's training step in fp32 and bf16 autocast ...")
        result["decoder_bf16"] = bench_decoder_bf16(preset)
    if demo:
        log("timing the whole demo ...")
        result["demo"] = bench_demo(preset)
    return result


def format_bench(result: dict) -> str:
    lines = [f"device {result['device']}, {result['threads']} threads, torch {result['torch']}, "
             f"preset {result['preset']}"]
    if "machine" in result:
        m = result["machine"]
        lines.append(f"  reference        {m['gflops']:.1f} GFLOP/s on a {m['matmul']} matmul (best of {m['best_of']}, "
                     f"{m['threads']} thread(s)); native bf16: {'yes' if m['native_bf16'] else 'no'}")
    for stage, r in result["stages"].items():
        line = f"  {stage:<16} train {r['train_samples_per_s']:>9.1f} samples/s (batch {r['batch_size']})"
        for key, value in r.items():
            if key.startswith("sample_s_per"):
                line += f"   sampling {value * 1000:.2f} ms per {key.split('_per_')[1]}"
        line += f"   peak RSS so far {r['peak_rss_mb_so_far']:.0f} MiB"
        if r.get("device", "cpu") != "cpu":
            line += f"   (on {r['device']})"
        lines.append(line)
    for r in result.get("processes", []):
        lines.append(f"  decoder on {r['processes']} process{'es' if r['processes'] > 1 else '  '} "
                     f"{r['s_per_step']:.3f} s per step of {r['batch_size']}, {r['train_samples_per_s']:.1f} images/s "
                     f"({r['threads_per_process']} thread(s) each, {r['steps']} steps)")
    if "decoder_bf16" in result:
        r = result["decoder_bf16"]
        lines.append("  decoder bf16     not native on this CPU (fp32)" if not r["native_bf16"] else
                     f"  decoder bf16     fp32 {r['fp32_s_per_step']:.3f} s per step of {r['batch_size']}, bf16 autocast "
                     f"{r['bf16_s_per_step']:.3f} s: training would use {'bf16' if r['bf16'] else 'fp32'}")
    if "demo" in result:
        d = result["demo"]
        stages = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in d.items()
                           if k.endswith("_s") and k not in ("wall_s", "total_s"))
        lines.append(f"  demo             {d['wall_s']:.0f} s wall ({stages}); peak RSS {d['peak_rss_mb_so_far']:.0f} MiB")
    return "\n".join(lines)
