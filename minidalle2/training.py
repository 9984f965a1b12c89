"""The one training loop every stage uses: AdamW, warm-up + cosine LR, EMA, tqdm, atomic checkpoints, --resume.

Each stage supplies ``step_loss(step) -> loss`` (draw a batch, return a scalar) and ``write_weights(folder)``
(write what sampling needs, e.g. EMA weights + config). The loop adds the rest:

    for step in range(start, steps):
        loss = step_loss(step); loss.backward(); opt.step(); sched.step(); ema.update(model)
        every ckpt_every steps: write RUN/<stage>.tmp/ {weights, train_state}  ->  swap into RUN/<stage>/
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from minidalle2.checkpoint import (EMA, atomic_dir, check_finite, config_dict, load_train_state, prepare_stage_dir,
                                   read_tensors, save_train_state, warmup_cosine)
from minidalle2.errors import UserError


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; gains, biases, embeddings and scalars are left alone (as open_clip does)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(params, **kw) -> torch.optim.AdamW:
    """AdamW with its fused kernel: the same update, 4-6x faster per step on a CPU (CLIP quick: 21 -> 3.6 ms)."""
    return torch.optim.AdamW(params, fused=True, **kw)


def train(stage_dir: Path, model: torch.nn.Module, cfg, step_loss: Callable[[int], torch.Tensor],
          write_weights: Callable[[Path, EMA | None], None], resume: bool = False, ema_decay: float | None = None,
          extra_info: dict | None = None, after_step: Callable[[int], None] | None = None, progress: bool = True,
          betas=(0.9, 0.99)) -> dict:
    """Train ``model`` for ``cfg.steps`` steps (``cfg`` has lr, weight_decay, warmup_steps, ckpt_every, steps).

    Returns the run's info: {"step", "history" (loss per step), "wall_s", "config", ...extra_info}.
    """
    stage_dir = Path(stage_dir)
    opt = adamw(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=betas, eps=1e-6)
    lr_factor = lambda s: warmup_cosine(s, cfg.warmup_steps, cfg.steps)  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    ema = EMA(model, ema_decay) if ema_decay else None
    info = {"step": 0, "history": [], "wall_s": 0.0, "config": config_dict(cfg), **(extra_info or {})}
    if resume:
        tensors = read_tensors(stage_dir / "train_state.safetensors")
        try:
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
        except RuntimeError:
            raise UserError(f"{stage_dir} holds a different model; resume with the same preset or use a new "
                            "--run-dir") from None
        saved = load_train_state(stage_dir, opt, ema)
        if saved["config"] != info["config"] or any(saved.get(k) != v for k, v in (extra_info or {}).items()):
            raise UserError(f"{stage_dir} was trained with a different preset or data; resume with the same ones")
        info = saved
        sched.last_epoch = info["step"]
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_factor(info["step"])

    def save():
        with atomic_dir(stage_dir) as tmp:
            write_weights(tmp, ema)
            save_train_state(tmp, opt, ema, info, model)

    model.train()
    start = time.time() - info["wall_s"]
    bar = tqdm(range(info["step"], cfg.steps), desc=stage_dir.name, disable=not progress, initial=info["step"],
               total=cfg.steps)
    for step in bar:
        loss = step_loss(step)
        check_finite(loss, step, stage_dir)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model)
        if after_step is not None:
            after_step(step)
        info["history"].append(round(loss.item(), 5))
        info["step"] = step + 1
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if info["step"] % cfg.ckpt_every == 0 or info["step"] == cfg.steps:
            info["wall_s"] = round(time.time() - start, 2)
            save()
    if not (stage_dir / "train_state.json").exists():
        save()
    model.eval()
    return info

