"""A decoder-only (causal) transformer, shared by both priors, the caption they both condition on, and the
sinusoidal embedding of a timestep.

Both priors of the paper are "decoder-only Transformers with a causal attention mask" over a sequence that
starts with the caption's conditioning, [caption token features (L) | z_t]; they differ only in what follows it
(discrete PCA tokens for the AR prior, [t, z_i^(t), final] for the diffusion prior). So the transformer and the
caption's tokens live here once. For classifier-free guidance both priors replace the caption by a learned null
caption 10 % of the time in training and sample with f = f_null + s (f_y - f_null).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, as the Transformer's positions: (B,) -> (B, dim).

    emb[:, k] = cos(t * w_k), emb[:, dim/2 + k] = sin(t * w_k),  w_k = max_period^(-k / (dim/2))
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
    return F.pad(emb, (0, dim % 2))


def attention_mask(T: int, key_mask: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Which keys each query may attend to, True = allowed: (1, 1, T, T), or (B, 1, T, T) with a key_mask.

    Causal: query k sees keys 0..k, never a later token. key_mask (B, T) bool is False for padding tokens, which
    no query may attend to. The result broadcasts over the heads of scaled_dot_product_attention.
    """
    # BEGIN SOLUTION
    mask = torch.ones(T, T, dtype=torch.bool, device=device).tril()[None, None]  # (1, 1, T, T)
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :]  # (B, 1, T, T)
    # END SOLUTION
    return mask


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        assert width % heads == 0, "width must be divisible by heads"
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)  # 3 x (B, T, C)
        q, k, v = (z.view(B, T, self.heads, C // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, h, T, c)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, T, c)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class CausalTransformer(nn.Module):
    """Learned positions + pre-norm blocks + final LayerNorm; token k sees tokens 0..k (and no padding)."""

    def __init__(self, width: int, layers: int, heads: int, max_len: int):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(max_len, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C); key_mask (B, T) bool, False for padding tokens no one may attend to. -> (B, T, C)."""
        B, T, _ = x.shape
        mask = attention_mask(T, key_mask, x.device)  # (1 or B, 1, T, T)
        x = x + self.pos_embedding[:T]
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)


class CaptionConditioning(nn.Module):
    """The caption as the first L + 1 tokens of a prior's sequence, or the learned null caption in their place:

        [ text_in(caption token features) (L) | z_t_in(z_t) ]         or, dropped,      [ null_text (L) | null_z_t ]
    """

    def __init__(self, width: int, text_width: int, embed_dim: int, context_length: int):
        super().__init__()
        self.text_in = nn.Linear(text_width, width)
        self.z_t_in = nn.Linear(embed_dim, width)
        self.null_text = nn.Parameter(torch.randn(context_length, width) * 0.02)  # learned "no caption"
        self.null_z_t = nn.Parameter(torch.randn(width) * 0.02)

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, z_t: torch.Tensor,
                drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """text_tokens (B, L, W), text_mask (B, L) bool, z_t (B, D); ``drop`` (B,) bool puts the null caption in.
        Returns the tokens (B, L + 1, C) and their key mask (B, L + 1), False for the caption's padding."""
        B, L, _ = text_tokens.shape
        text = self.text_in(text_tokens)  # (B, L, C)
        z_t_tok = self.z_t_in(z_t)  # (B, C)
        mask = text_mask
        # torch.where even when no caption is dropped: the null caption then gets a zero gradient, and DDP
        # (training on several processes) needs every parameter to get one in every step
        if drop is not None:
            d = drop[:, None]  # (B, 1)
            text = torch.where(d[..., None], self.null_text[:L], text)
            z_t_tok = torch.where(d, self.null_z_t, z_t_tok)
            mask = text_mask | d  # the null caption has no padding
        tokens = torch.cat([text, z_t_tok[:, None]], dim=1)  # (B, L + 1, C)
        return tokens, torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=mask.device)], dim=1)
