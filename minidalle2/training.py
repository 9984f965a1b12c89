"""The one training loop every stage uses: AdamW, warm-up + cosine LR, EMA, tqdm, atomic checkpoints, --resume.

``stages.py`` hands it, for any stage, the model, ``step_loss(step) -> loss`` (draw a batch, return a scalar) and
``write_weights(folder, ema, step)`` (write what sampling needs, e.g. EMA weights + config, after ``step`` steps).
The loop adds the rest:

    for step in range(start, steps):
        loss = step_loss(step); loss.backward(); opt.step(); sched.step(); ema.update(model)
        every ckpt_every steps: write RUN/<stage>.tmp/ {weights, train_state}  ->  swap into RUN/<stage>/

Under torchrun (distributed.py) every rank runs this loop on its share of each batch, the gradients averaged over
the ranks; rank 0 alone keeps the EMA and writes, and the history is the loss of the whole batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from minidalle2 import distributed
from minidalle2.checkpoint import atomic_dir, config_dict, load_train_state, read_tensors, save_train_state
from minidalle2.errors import UserError


@dataclass
class TrainConfig:
    """How the loop trains a stage. Every preset sets its own values (presets.py)."""
    batch_size: int = 64         # examples per step
    steps: int = 1000            # optimizer steps in all
    lr: float = 1e-3             # peak learning rate, reached after the warm-up
    weight_decay: float = 0.0    # AdamW weight decay, on matrices only
    warmup_steps: int = 50       # linear warm-up, then cosine decay to 0 at ``steps``
    ema_decay: float | None = None  # EMA of the weights, which sampling uses; None: no EMA, sample the raw weights
    ckpt_every: int = 200        # steps between checkpoints
    seed: int = 0                # initial weights and the order of the batches
    sample_every: int = 0        # steps between sample grids drawn at checkpoints (the decoder's); 0: none


class EMA:
    """Exponential moving average of the weights, used for sampling: theta_ema <- d * theta_ema + (1 - d) * theta."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def load(self, shadow: dict[str, torch.Tensor]) -> None:
        if set(shadow) != set(self.shadow):
            raise KeyError("EMA keys differ from the model's")
        self.shadow = {k: v.to(self.shadow[k].device).clone() for k, v in shadow.items()}


@contextlib.contextmanager
def ema_weights(model: torch.nn.Module, ema: EMA):
    """Temporarily load the EMA weights into ``model`` (to sample mid-training), then put the raw ones back."""
    raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.shadow)
    try:
        yield model
    finally:
        model.load_state_dict(raw)


def step_generator(seed: int, step: int, device="cpu") -> torch.Generator:
    """The random numbers of one step (its batch, noise, dropped captions) depend on (seed, step) only, so a
    resumed run sees the batches it would have seen."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + step)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))


def check_finite(loss: torch.Tensor, step: int, stage_dir: Path) -> None:
    """Stop a run whose loss went NaN/inf; the last checkpoint in ``stage_dir`` is left as it was."""
    if not torch.isfinite(loss):
        raise UserError(f"loss became {loss.item()} at step {step}; stopped, the last good checkpoint in "
                        f"{stage_dir} is kept. Lower the learning rate or check the data, then --resume")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; gains, biases, embeddings and scalars are left alone (as open_clip does)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(params, **kw) -> torch.optim.AdamW:
    """AdamW with its fused kernel: the same update, 4-6x faster per step on a CPU (CLIP quick: 21 -> 3.6 ms)."""
    return torch.optim.AdamW(params, fused=True, **kw)


def train(stage_dir: Path, model: torch.nn.Module, preset, step_loss: Callable[[int], torch.Tensor],
          write_weights: Callable[[Path, EMA | None, int], None], resume: bool = False, extra_info: dict | None = None,
          after_step: Callable[[int], None] | None = None, progress: bool = True, betas=(0.9, 0.99)) -> dict:
    """Train ``model`` as ``preset.train`` (a ``TrainConfig``) says; the whole preset is recorded as the run's config.

    Returns the run's info: {"step", "history" (loss per step), "wall_s", "config", ...extra_info}.
    """
    stage_dir, cfg = Path(stage_dir), preset.train
    opt = adamw(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=betas, eps=1e-6)
    lr_factor = lambda s: warmup_cosine(s, cfg.warmup_steps, cfg.steps)  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay and distributed.is_main() else None
    info = {"step": 0, "history": [], "wall_s": 0.0, "config": config_dict(preset), **(extra_info or {})}
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
        if distributed.is_main():
            with atomic_dir(stage_dir) as tmp:
                write_weights(tmp, ema, info["step"])
                save_train_state(tmp, opt, ema, info, model)
        distributed.barrier()

    model.train()
    batch_loss = distributed.wrap(model, step_loss)  # step_loss itself in one process
    start = time.time() - info["wall_s"]
    bar = tqdm(range(info["step"], cfg.steps), desc=stage_dir.name, disable=not (progress and distributed.is_main()),
               initial=info["step"], total=cfg.steps)
    for step in bar:
        loss = batch_loss(step)
        whole = distributed.mean(loss)  # the whole batch's loss (this rank's share's is ``loss``)
        check_finite(whole, step, stage_dir)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model)
        if after_step is not None:
            after_step(step)
        info["history"].append(round(whole.item(), 5))
        info["step"] = step + 1
        bar.set_postfix(loss=f"{whole.item():.4f}")
        if info["step"] % cfg.ckpt_every == 0 or info["step"] == cfg.steps:
            info["wall_s"] = round(time.time() - start, 2)
            save()
    distributed.barrier()  # every rank asks the question below before rank 0 may answer it
    if not (stage_dir / "train_state.json").exists():
        save()
    model.eval()
    return info

