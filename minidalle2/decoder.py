"""Stage 3: the decoder, p(x | z_i, y) — a diffusion model that inverts CLIP's image encoder (unCLIP Sec. 2.1).

It learns to draw an image whose CLIP embedding is z_i. z_i keeps what CLIP cares about (which shapes, which
colours, where) and drops the rest, so decoding the z_i of a real image gives *another* image with the same
meaning: the paper's Fig. 3 variations. Training noises an image x_0 to a random step t,

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,        eps ~ N(0, I),  t ~ U{0 .. T-1}

and asks the U-Net (unet.py) to undo it. GLIDE and the paper predict eps,

    L_decoder = E_{t, x_0, eps} || eps - eps_theta(x_t, t, z_i, y) ||^2;

on a CPU budget (~60k training images) the same U-Net learned shapes fastest predicting x_0 (as the paper's prior
does), L = E || x0_hat - x_0 ||^2, so ``quick`` and ``full`` predict x_0 and the ``paper`` preset eps; v (Salimans &
Ho) is the third choice. All three go through the same samplers, diffusion.py converting between them. Notebook 04
measures each change from the paper's recipe to ours. A U-Net with a sketch of z_i (unet.py, ``z_i_sketch``)
adds the sketch's own least-squares loss, which trains the sketch and nothing else:

    L = L_decoder + L_sketch,        L_sketch = E || s(z_i) - pool_k(x_0) ||^2

Classifier-free guidance: the paper "randomly set[s] the CLIP embeddings to zero (or a learned embedding) 10% of
the time, and randomly drop[s] the text caption 50% of the time"; we use a learned null z_i. At sampling time

    pred_guided = pred(x_t | null) + s (pred(x_t | z_i, y) - pred(x_t | null))      (s = 1: no guidance)

At a fixed x_t eps and x_0 are affine in each other, so guiding either prediction is the same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from minidalle2.diffusion import GaussianDiffusion, classifier_free_guidance
from minidalle2.unet import UNet, UNetConfig


@dataclass
class DecoderConfig:
    """The decoder network, its diffusion and its loss. Defaults: the ``quick`` model."""
    unet: UNetConfig = field(default_factory=UNetConfig)  # its image_size, embed_dim, text_width: set by the run
    timesteps: int = 1000        # T of the diffusion process
    schedule: str = "cosine"     # beta schedule (Nichol & Dhariwal)
    predict: str = "x0"          # what the U-Net predicts: x0 (ours, see above), eps (GLIDE, the paper) or v
    loss_weighting: str = "none"  # none: L_simple; min_snr: Hang et al. 2023's min(SNR_t, gamma) on the x_0 error
    snr_gamma: float = 5.0       # gamma of min_snr
    p_drop_zi: float = 0.1       # P(z_i replaced by the learned null embedding) in training
    p_drop_text: float = 0.5     # P(caption hidden) in training
    use_text_tokens: bool = True  # also condition on the caption's CLIP token features, as the paper does


@dataclass
class DecoderSampling:
    """How ``Decoder.sample`` decodes by default."""
    guidance: float = 1.5        # guidance scale s (best of 0-5 by CLIP re-encoding; 3 saturates)
    sample_steps: int = 50       # DDIM steps
    eta: float = 0.0             # DDIM eta (0: deterministic)


def fit_to_run(cfg: DecoderConfig, image_size: int, embed_dim: int, text_width: int) -> DecoderConfig:
    """The config with the sizes the run's data and CLIP dictate: image side, D of z_i, caption width."""
    unet = dataclasses.replace(cfg.unet, image_size=image_size, embed_dim=embed_dim,
                               text_width=text_width if cfg.use_text_tokens else 0)
    return dataclasses.replace(cfg, unet=unet)


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 images, or floats in [0, 1] -> x_0 in [-1, 1] (the diffusion's pixel space)."""
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return images * 2 - 1


def to_images(x: torch.Tensor) -> torch.Tensor:
    """x_0 in [-1, 1] -> images in [0, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)


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
        """The U-Net's prediction of eps (or x_0, or v) from (x_t, t, z_i, y): (B, 3, H, W). drop_zi (B,) bool, or
        one bool, puts the learned null in place of z_i; drop_text (B,) bool hides the caption. The caption is read
        only if the decoder was trained with use_text_tokens."""
        B = z_i.shape[0]
        z_i = self.with_null(z_i, drop_zi)
        if not self.cfg.use_text_tokens:
            text_tokens = text_mask = None
        elif text_tokens is not None:
            if text_mask is None:
                text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=text_tokens.device)
            if drop_text is not None:
                drop_text = torch.as_tensor(drop_text, device=text_mask.device).expand(B)
                text_mask = text_mask.bool() & ~drop_text[:, None]  # (B, L): a hidden caption is all padding
        return self.unet(x_t, t, z_i, text_tokens, text_mask)

    def with_null(self, z_i: torch.Tensor, drop_zi=None) -> torch.Tensor:
        """z_i (B, D) with the learned null embedding in place of the rows drop_zi (B,) bool (or one bool) marks."""
        if drop_zi is None:
            return z_i
        drop_zi = torch.as_tensor(drop_zi, device=z_i.device).expand(z_i.shape[0])
        return torch.where(drop_zi[:, None], self.null_z_i.to(z_i.dtype).expand_as(z_i), z_i)  # (B, D)

    def loss(self, x0, z_i, text_tokens=None, text_mask=None, generator=None) -> torch.Tensor:
        """L_decoder on one batch, x0 (B, 3, H, W) in [-1, 1]; t, eps and the drop masks come from ``generator``.
        10% of z_i become the null embedding and 50% of captions are hidden, for classifier-free guidance."""
        B, device = x0.shape[0], x0.device
        gen_device = generator.device if generator is not None else device
        t = self.diffusion.sample_timesteps(B, device=device, generator=generator)  # t ~ U{0 .. T-1}
        noise = torch.randn(x0.shape, generator=generator, device=gen_device).to(device)  # eps ~ N(0, I)
        drop_zi = (torch.rand(B, generator=generator, device=gen_device) < self.cfg.p_drop_zi).to(device)
        drop_text = (torch.rand(B, generator=generator, device=gen_device) < self.cfg.p_drop_text).to(device)
        model_fn = lambda x_t, t: self(x_t, t, z_i, text_tokens, text_mask, drop_zi, drop_text)  # noqa: E731
        loss = self.diffusion.training_loss(model_fn, x0, t, noise)["loss"]
        if self.unet.sketch is not None:  # a dropped z_i is the null, whose sketch so learns E[pool_k(x_0)]
            loss = loss + self.sketch_loss(x0, self.with_null(z_i, drop_zi))
        return loss

    def sketch_loss(self, x0: torch.Tensor, z_i: torch.Tensor) -> torch.Tensor:
        """L_sketch = mean || sketch(z_i) - pool_k(x_0) ||^2 over the batch and the 3 k^2 numbers, pool_k the
        average over each (H/k x W/k) block of pixels: least squares, so the sketch tends to E[pool_k(x_0) | z_i].
        x0 (B, 3, H, W) in [-1, 1], z_i (B, D)."""
        k = self.cfg.unet.z_i_sketch
        # BEGIN SOLUTION
        target = F.adaptive_avg_pool2d(x0, k)  # (B, 3, k, k): the mean of each H/k x W/k block
        return (self.unet.sketch_of(z_i) - target).square().mean()
        # END SOLUTION

    def guided_model_fn(self, z_i, text_tokens=None, text_mask=None, guidance: float = 1.0):
        """model_fn(x_t, t) for the samplers: pred(null) + s (pred(z_i, y) - pred(null)). Conditional and
        unconditional run as one batch of 2B; s = 1 needs only the conditional half."""
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
               eta: float | None = None, noise=None, generator=None, return_trajectory: bool = False,
               progress: bool = False):
        """Decode z_i (B, D) into images (B, 3, H, W) in [0, 1] with DDIM. Defaults: ``self.sampling``'s guidance,
        steps (50) and eta (0). Predicted x_0 is clipped to [-1, 1] at every step. With return_trajectory:
        (images, [predicted x_0 in [0, 1] at each step])."""
        guidance = self.sampling.guidance if guidance is None else guidance
        steps = self.sampling.sample_steps if steps is None else steps
        eta = self.sampling.eta if eta is None else eta
        assert 0 < steps <= self.cfg.timesteps and guidance >= 0 and eta >= 0
        device = self.null_z_i.device
        to = lambda a: None if a is None else a.to(device)  # noqa: E731
        model_fn = self.guided_model_fn(z_i.to(device), to(text_tokens), to(text_mask), guidance)
        shape = (z_i.shape[0], 3, self.image_size, self.image_size)
        out = self.diffusion.ddim_sample_loop(model_fn, shape, steps, eta, to(noise), clip_x0=1.0, generator=generator,
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
        assert 0 < steps <= self.cfg.timesteps
        device = self.null_z_i.device
        x0 = to_model_space(images).to(device)
        assert x0.shape[1:] == (3, self.image_size, self.image_size), "images of another size than the decoder's"
        to = lambda a: None if a is None else a.to(device)  # noqa: E731
        model_fn = self.guided_model_fn(z_i.to(device), to(text_tokens), to(text_mask), 1.0)
        return self.diffusion.ddim_reverse_sample_loop(model_fn, x0, steps, clip_x0=1.0)
