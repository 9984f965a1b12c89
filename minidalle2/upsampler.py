"""Stage 4: the upsampler, p(x_64 | x_32) — the paper's cascade, one diffusion super-resolution step (unCLIP Sec. 2.1).

unCLIP's decoder draws 64x64 images; "we train two diffusion upsampler models" to take them to 256 and 1024. Ours
takes the base decoder's 32x32 pictures to 64x64. It is a diffusion model over the 64x64 image x_0 conditioned on
the low-resolution image x_lo only, not on z_i or the caption ("we found no benefit from conditioning the
upsamplers on the caption, and use unconditional ADMNets"). As in Cascaded Diffusion Models (Ho et al. 2021) and Karlo, x_lo is
resized to 64x64 and concatenated to x_t as three extra input channels of the same U-Net (unet.py, with
``low_res_channels=3``: no attention, no z_i):

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,        c = up(blur_sigma(x_lo))
    x0_hat = c + f_theta(x_t, t, c, s(sigma))
    L_upsampler = E_{t, x_0, eps, sigma} || x_0 - x0_hat ||^2

Training pairs are the shapes data rendered natively at 64 px, x_0, and area-downsampled to 32 px,

    x_lo[i, j] = (x_0[2i, 2j] + x_0[2i+1, 2j] + x_0[2i, 2j+1] + x_0[2i+1, 2j+1]) / 4,

so an upsampled picture, downsampled again, should give back its input (evaluation: "consistency").

Conditioning augmentation. At sampling time x_lo is not a clean downsampled render but the base decoder's output:
a little soft, a little off, and an upsampler trained only on perfect x_lo takes every soft edge of it for a soft
edge of the truth. So, as the paper does ("we slightly corrupt the conditioning images during training. For the
first upsampling stage, we use gaussian blur"), each training x_lo is blurred with a random Gaussian,

    k_sigma(i) = exp(-i^2 / (2 sigma^2)) / sum_j exp(-j^2 / (2 sigma^2)),   i = -R .. R   (separable, per example)
    sigma = 0 with probability 1 - p_blur, else sigma ~ U(0, sigma_max)            (in low-resolution pixels)

and, as CDM's "augmentation level", the model is told how much: s(sigma) = 1000 sigma / sigma_max is embedded like
the timestep and added to it. At sampling x_lo is blurred with a small fixed sigma and s(sigma) is given with it:
the model then treats the input as "a somewhat soft picture" and draws the edges itself. Notebook 07 measures
what the augmentation changes on clean, blurred and decoded inputs.

The prediction is x_0 (as our decoder's), written as the resized input c plus a correction f_theta (SRDiff, Li et
al. 2022, diffuses this residual): the U-Net starts out as bicubic upsampling (its last layer is zero at
initialisation) and only has to learn the edges. Without the skip, the quick budget drew blotchy insides
(PSNR below bicubic's). With x_lo fixing most of the picture, a few DDIM steps suffice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from minidalle2.decoder import to_images, to_model_space
from minidalle2.diffusion import GaussianDiffusion
from minidalle2.unet import UNet, UNetConfig

LEVELS = 1000  # s(sigma_max): the augmentation level is embedded on the timestep's scale


def quick_unet() -> UNetConfig:
    """The quick upsampler's U-Net: 64x64 in 4x4 patches (a 16x16 grid, as cheap as the decoder's 32x32 in 2x2),
    no attention, no z_i map; embed_dim and text_width are unused (no z_i, no caption)."""
    return UNetConfig(image_size=64, base_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[],
                      embed_dim=0, text_width=0, z_i_map=0, z_i_layout=0, patch=4)


@dataclass
class UpsamplerConfig:
    """The upsampler network, its diffusion and its conditioning augmentation. Defaults: the ``quick`` model."""
    unet: UNetConfig = field(default_factory=quick_unet)  # image_size is the output side (64)
    low_res: int = 32            # side of the conditioning image (the base decoder's)
    timesteps: int = 1000        # T of the diffusion process
    schedule: str = "cosine"     # beta schedule
    p_blur: float = 0.5          # P(the training x_lo is blurred) (the open implementations: half the time)
    sigma_max: float = 1.0       # largest blur, in low-resolution pixels; sigma ~ U(0, sigma_max)


@dataclass
class UpsamplerSampling:
    """How ``Upsampler.sample`` draws by default."""
    sample_steps: int = 4        # DDIM steps: x_lo fixes most of the picture
    blur_sigma: float = 0.3      # the fixed small blur (and level) of x_lo at sampling
    eta: float = 0.0             # DDIM eta (0: deterministic)


def area_downsample(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H/f, W/f): each pixel the mean of its f x f block (a picture seen from further)."""
    return F.avg_pool2d(x, factor)


def gaussian_kernel(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """One 1-D Gaussian kernel per example: sigma (B,) in pixels -> (B, 2 radius + 1), each summing to 1,

        k_sigma(i) = exp(-i^2 / (2 sigma^2)) / sum_j exp(-j^2 / (2 sigma^2)),   i = -radius .. radius.

    sigma = 0 is no blur: the kernel is 1 at i = 0 and 0 elsewhere."""
    i = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigma.device)  # (K,)
    sigma = sigma.float().clamp(min=1e-3)[:, None]  # (B, 1): a tiny sigma puts all the weight on i = 0
    # BEGIN SOLUTION
    return torch.softmax(-i ** 2 / (2 * sigma ** 2), dim=-1)  # (B, K): exp(...) / sum_j exp(...)
    # END SOLUTION


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """Blur each image of x (B, C, H, W) with its own sigma (B,): the separable kernel k_sigma along rows, then
    columns, radius ceil(3 sigma_max), edges padded by replication."""
    B, C, H, W = x.shape
    R = max(1, math.ceil(3 * sigma_max))
    k = gaussian_kernel(sigma, R).to(x).repeat_interleave(C, dim=0)  # (B C, 2R + 1): one kernel per channel
    h = F.pad(x.reshape(1, B * C, H, W), (R, R, R, R), mode="replicate")  # (1, B C, H + 2R, W + 2R)
    h = F.conv2d(h, k[:, None, None, :], groups=B * C)  # along rows: (1, B C, H + 2R, W)
    h = F.conv2d(h, k[:, None, :, None], groups=B * C)  # along columns: (1, B C, H, W)
    return h.view(B, C, H, W)


class Upsampler(nn.Module):
    """The U-Net f_theta(x_t, t, x_lo, s) and the Gaussian diffusion it is trained in."""

    def __init__(self, cfg: UpsamplerConfig, sampling: UpsamplerSampling | None = None):
        super().__init__()
        if cfg.unet.image_size % cfg.low_res or cfg.unet.image_size <= cfg.low_res:
            raise ValueError(f"the upsampler draws {cfg.unet.image_size}x{cfg.unet.image_size} images from "
                             f"{cfg.low_res}x{cfg.low_res} ones; the output side must be a multiple of the input's")
        if not (0 <= cfg.p_blur <= 1 and cfg.sigma_max > 0):
            raise ValueError(f"p_blur={cfg.p_blur} must be in [0, 1] and sigma_max={cfg.sigma_max} positive")
        self.cfg = cfg
        self.sampling = sampling or UpsamplerSampling()
        self.unet = UNet(cfg.unet, low_res_channels=3)
        self.diffusion = GaussianDiffusion(cfg.timesteps, cfg.schedule, predict="x0")

    @property
    def image_size(self) -> int:
        return self.cfg.unet.image_size

    @property
    def device(self) -> torch.device:
        return self.unet.input_conv.weight.device

    def level(self, sigma: torch.Tensor) -> torch.Tensor:
        """The augmentation level the U-Net embeds like t: s(sigma) = 1000 sigma / sigma_max, (B,)."""
        return LEVELS * sigma / self.cfg.sigma_max

    def condition(self, x_lo: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x_lo (B, 3, h, w) in [-1, 1], blurred by sigma (B,) and resized (bicubic) to the output's side:
        the extra input channels of the U-Net, (B, 3, H, W)."""
        assert x_lo.shape[-1] == self.cfg.low_res, "a conditioning image of another size than the upsampler's"
        blurred = gaussian_blur(x_lo, sigma, self.cfg.sigma_max)  # (B, 3, h, w)
        return F.interpolate(blurred, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)

    def denoise(self, x_t, t, c, sigma) -> torch.Tensor:
        """x0_hat = c + f_theta(x_t, t, c, s(sigma)): the resized input c (B, 3, H, W) plus the U-Net's correction."""
        return c + self.unet(x_t, t, low_res=c, s=self.level(sigma))

    def forward(self, x_t, t, x_lo, sigma) -> torch.Tensor:
        """The prediction of x_0 from x_t (B, 3, H, W), t (B,), the low-resolution image x_lo (B, 3, h, w) in
        [-1, 1] and its blur sigma (B,)."""
        return self.denoise(x_t, t, self.condition(x_lo, sigma), sigma)

    def augmentation(self, B: int, generator=None, device=None) -> torch.Tensor:
        """sigma (B,) of the training blur: 0 with probability 1 - p_blur, else U(0, sigma_max)."""
        gen_device = generator.device if generator is not None else device
        u, blur = torch.rand(2, B, generator=generator, device=gen_device)
        return torch.where(blur < self.cfg.p_blur, u * self.cfg.sigma_max, torch.zeros_like(u)).to(device)

    def loss(self, x0, generator=None) -> torch.Tensor:
        """L_upsampler on one batch of 64-px images x0 (B, 3, H, W) in [-1, 1]: their area-downsampled x_lo,
        blurred by a random sigma (conditioning augmentation), conditions the denoiser."""
        B, device = x0.shape[0], x0.device
        gen_device = generator.device if generator is not None else device
        x_lo = area_downsample(x0, self.image_size // self.cfg.low_res)  # (B, 3, h, w)
        sigma = self.augmentation(B, generator, device)  # (B,)
        t = self.diffusion.sample_timesteps(B, device=device, generator=generator)  # t ~ U{0 .. T-1}
        noise = torch.randn(x0.shape, generator=generator, device=gen_device).to(device)  # eps ~ N(0, I)
        model_fn = lambda x_t, t: self(x_t, t, x_lo, sigma)  # noqa: E731
        return self.diffusion.training_loss(model_fn, x0, t, noise)["loss"]

    @torch.no_grad()
    def sample(self, low_res: torch.Tensor, steps: int | None = None, blur_sigma: float | None = None,
               eta: float | None = None, noise=None, generator=None) -> torch.Tensor:
        """Upsample images (B, 3, h, w) in [0, 1] to (B, 3, H, W) in [0, 1] with DDIM: x_lo is blurred by the
        fixed small sigma (default ``self.sampling``'s), which the U-Net is also told. Predicted x_0 is clipped."""
        steps = self.sampling.sample_steps if steps is None else steps
        blur_sigma = self.sampling.blur_sigma if blur_sigma is None else blur_sigma
        eta = self.sampling.eta if eta is None else eta
        if not 0 <= blur_sigma <= self.cfg.sigma_max:
            raise ValueError(f"blur_sigma={blur_sigma} is outside the levels the upsampler was trained on "
                             f"(0 .. {self.cfg.sigma_max})")
        assert 0 < steps <= self.cfg.timesteps and eta >= 0
        device = self.device
        x_lo = to_model_space(low_res).to(device)  # (B, 3, h, w) in [-1, 1]
        B = x_lo.shape[0]
        sigma = torch.full((B,), float(blur_sigma), device=device)
        c = self.condition(x_lo, sigma)  # (B, 3, H, W): computed once for every step
        model_fn = lambda x_t, t: self.denoise(x_t, t, c, sigma)  # noqa: E731
        shape = (B, 3, self.image_size, self.image_size)
        noise = None if noise is None else noise.to(device)
        out = self.diffusion.ddim_sample_loop(model_fn, shape, steps, eta, noise, clip_x0=1.0, generator=generator,
                                              device=device)
        return to_images(out)
