"""Stage 2b: the diffusion prior p(z_i | y), the prior the paper prefers (§2.2).

A decoder-only causal transformer reads, in order,

    [ caption token features (L) | z_t | timestep t | noised z_i^(t) | final token ]      (L + 4 tokens)

and the output at the final token predicts the *un-noised* z_i directly (not the noise), as the paper does:

    L_prior = E_{t, z_i, eps} || f(z_i^(t), t, y) - z_i ||^2,     z_i^(t) = sqrt(abar_t) z_i + sqrt(1 - abar_t) eps

Embedding scale. CLIP embeddings are unit-norm, so in D dimensions each coordinate has variance ~1/D, while the
diffusion noise has variance 1 per coordinate. The signal-to-noise ratio of z_i^(t) per coordinate is then

    SNR_t = abar_t (1/D) / (1 - abar_t),

D times lower than the schedule intends: at D = 128 the embedding is drowned about 11x earlier. We therefore
diffuse x_0 = sqrt(D) z_i (per-coordinate variance ~1, SNR_t = abar_t / (1 - abar_t)), as the paper scales its
embeddings by a constant, and divide by sqrt(D) (and renormalise) after sampling. z_t is scaled alike.

Classifier-free guidance: 10 % of the time in training the caption (token features and z_t) is replaced by the
learned null caption (transformer.CaptionConditioning); at sampling f = f_null + s (f_y - f_null). Sampling uses
strided DDIM (64 of 1000 steps, as the paper). The paper draws two candidates per caption and keeps the one with the
larger z_i . z_t; for a partial caption ("a red circle") that is the candidate nearer the average of its modes, so
it narrows the spread a prior exists for, and our presets draw one (``best_of``; notebook 03 measures both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minidalle2.diffusion import GaussianDiffusion, classifier_free_guidance
from minidalle2.transformer import CaptionConditioning, CausalTransformer, timestep_embedding


@dataclass
class DiffusionPriorConfig:
    """The prior's transformer, its diffusion and its loss. Defaults: the ``quick`` model."""
    width: int = 96              # transformer width
    layers: int = 3              # transformer blocks
    heads: int = 3               # attention heads
    timesteps: int = 1000        # diffusion steps T
    schedule: str = "cosine"     # beta schedule (Nichol & Dhariwal)
    cond_drop: float = 0.1       # probability of the null caption in training (classifier-free guidance)


@dataclass
class DiffusionPriorSampling:
    """How ``DiffusionPrior.sample`` draws z_i by default."""
    sample_steps: int = 64       # strided DDIM steps, as the paper
    guidance: float = 1.0        # guidance scale s
    best_of: int = 1             # candidates per caption, the one with the largest z_i . z_t kept (paper: 2)


class DiffusionPrior(nn.Module):
    """f(z_i^(t), t, y) -> z_i, a causal transformer over [text tokens, z_t, t, z_i^(t), final]."""

    def __init__(self, cfg: DiffusionPriorConfig, embed_dim: int, text_width: int, context_length: int,
                 sampling: DiffusionPriorSampling | None = None):
        super().__init__()
        self.cfg, self.embed_dim, self.text_width, self.context_length = cfg, embed_dim, text_width, context_length
        self.sampling = sampling or DiffusionPriorSampling()  # defaults of ``sample``
        C = cfg.width
        self.scale = math.sqrt(embed_dim)  # x_0 = sqrt(D) z_i: unit variance per coordinate
        self.caption = CaptionConditioning(C, text_width, embed_dim, context_length)
        self.time_in = nn.Sequential(nn.Linear(C, C), nn.SiLU(), nn.Linear(C, C))
        self.z_i_in = nn.Linear(embed_dim, C)
        self.final_token = nn.Parameter(torch.randn(C) * 0.02)
        self.transformer = CausalTransformer(C, cfg.layers, cfg.heads, max_len=context_length + 4)
        self.out = nn.Linear(C, embed_dim)
        self.diffusion = GaussianDiffusion(cfg.timesteps, cfg.schedule, predict="x0")

    def sequence(self, x_t, t, text_tokens, text_mask, z_t, drop=None):
        """The input sequence (B, L + 4, C) and its key mask (B, L + 4), True where a token may be attended to:

            [ caption tokens (L) | z_t_in(sqrt(D) z_t) | time_in(sin(t)) | z_i_in(x_t) | final ]

        ``drop`` (B,) bool replaces the caption (token features and z_t) by the learned null.
        """
        L = int(text_mask.sum(1).max())  # trailing padding no one attends to is cut off, to save compute
        caption, mask = self.caption(text_tokens[:, :L], text_mask[:, :L], z_t * self.scale, drop)  # (B, L + 1, C)
        B = len(caption)
        # BEGIN SOLUTION
        time_tok = self.time_in(timestep_embedding(t, self.cfg.width))  # (B, C)
        tail = torch.stack([time_tok, self.z_i_in(x_t), self.final_token.expand(B, -1)], dim=1)  # (B, 3, C)
        seq = torch.cat([caption, tail], dim=1)  # (B, L + 4, C)
        key_mask = torch.cat([mask, torch.ones(B, 3, dtype=torch.bool, device=mask.device)], dim=1)
        # END SOLUTION
        return seq, key_mask

    def forward(self, x_t, t, text_tokens, text_mask, z_t, drop=None):
        """Predict x_0 = sqrt(D) z_i from the noised x_t (B, D) at timesteps t (B,)."""
        assert z_t.shape[-1] == self.embed_dim and text_tokens.shape[-1] == self.text_width, \
            "embeddings of another CLIP than the prior's"
        seq, key_mask = self.sequence(x_t, t, text_tokens, text_mask, z_t, drop)
        h = self.transformer(seq, key_mask)  # (B, L + 4, C)
        return self.out(h[:, -1])  # (B, D): the final token's output

    def loss(self, z_i, text_tokens, text_mask, z_t, generator=None):
        """L_prior = || f(z_i^(t), t, y) - z_i ||^2 (in the scaled space), with the caption dropped 10 % of the time."""
        drop = torch.rand(len(z_i), generator=generator) < self.cfg.cond_drop  # (B,)
        t = self.diffusion.sample_timesteps(len(z_i), generator=generator)
        noise = torch.randn(z_i.shape, generator=generator)
        model_fn = lambda x_t, t: self(x_t, t, text_tokens, text_mask, z_t, drop)  # noqa: E731
        # x_0 = sqrt(D) z_i
        return self.diffusion.training_loss(model_fn, z_i * self.scale, t=t, noise=noise)["loss"]

    @torch.no_grad()
    def sample(self, text_tokens, text_mask, z_t, guidance: float | None = None, steps: int | None = None,
               best_of: int | None = None, eta: float = 0.0, generator=None, return_trajectory: bool = False):
        """Draw z_i ~ p(z_i | y) for each caption: (B, D) unit-norm. ``guidance``, ``steps`` and ``best_of`` default
        to ``self.sampling``'s; of ``best_of`` candidates per caption the one with the largest z_i . z_t is kept."""
        s = self.sampling.guidance if guidance is None else guidance
        steps = self.sampling.sample_steps if steps is None else steps
        k = self.sampling.best_of if best_of is None else best_of
        assert steps > 0 and k > 0 and s >= 0, "steps and best_of must be positive, guidance >= 0"
        B = len(z_t)
        rep = lambda x: x.repeat_interleave(k, dim=0)  # noqa: E731  (B*k, ...)
        tok, msk, zt = rep(text_tokens), rep(text_mask), rep(z_t)
        null = torch.ones(B * k, dtype=torch.bool)

        def model_fn(x_t, t):
            cond = self(x_t, t, tok, msk, zt)
            if s == 1:
                return cond
            # f = f_null + s (f_y - f_null)
            return classifier_free_guidance(cond, self(x_t, t, tok, msk, zt, drop=null), s)

        out = self.diffusion.ddim_sample_loop(model_fn, (B * k, self.embed_dim), steps=steps, eta=eta,
                                              generator=generator, return_trajectory=return_trajectory)
        x0, trajectory = out if return_trajectory else (out, None)
        # z_i = norm(x_0 / sqrt(D))
        z_i = F.normalize(x0 / self.scale, dim=-1).view(B, k, -1)  # (B, k, D)
        best = (z_i * z_t[:, None]).sum(-1).argmax(dim=1)  # (B,): the candidate with the largest z_i . z_t
        z_i = z_i[torch.arange(B), best]
        return (z_i, trajectory) if return_trajectory else z_i
