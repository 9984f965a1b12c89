"""The decoder's U-Net: GLIDE's image model, conditioned on a CLIP image embedding as unCLIP (Sec. 2.1) describes.

    eps_hat = UNet(x_t, t, z_i, y)      x_t (B, 3, H, W), t (B,), z_i (B, D), y: caption tokens (B, L, W) or none

The network is the improved-diffusion / GLIDE U-Net, shrunk: residual blocks (GroupNorm, SiLU, 3x3 conv) at
each resolution, halving H and W between levels on the way down and doubling them on the way up, with a skip
connection from every down-path block to its mirror on the up path. unCLIP conditions it on z_i in two ways:

  1. "we project and add CLIP embeddings to the existing timestep embedding": emb = MLP(sin(t)) + W z_i,
     and every residual block adds a projection of emb to its feature map;
  2. "and by projecting CLIP embeddings into four extra tokens of context that are concatenated to the
     sequence of outputs from the GLIDE text encoder": every attention layer lets its H*W positions attend
     to themselves *and* to these context tokens (the 4 z_i tokens, then the caption's CLIP token features).

Three changes of ours make it learn faster on a CPU (notebook 04 measures them): ``patch`` runs the U-Net on P x P
pixel patches (pixel_unshuffle in, pixel_shuffle out: a quarter of the positions at P = 2); ``z_i_map`` also
draws z_i as a coarse map added at the middle, so the layout it holds has a place to go; and ``z_i_layout`` draws
it once more with a small MLP, added to the very first features, so that every level and every skip connection
sees where z_i puts things:

    h_0 = conv(x_t) + up(MLP(z_i))        MLP(z_i) (B, C, m, m) stretched over the H/P x W/P grid

A linear map is not enough: where two objects sit is in z_i, but not linearly (evaluation/layout.py,
``layout_from_z_i``: a linear regression of the image on z_i lights the two occupied quadrants far less often
than an MLP). Trained only through the U-Net, that MLP learns the layout slowly; ``z_i_sketch`` gives it a
target of its own. An MLP draws z_i as a small picture, the sketch s(z_i) (3, k, k), fitted by least squares to
the image's k x k block means (decoder.py, L_sketch), so that it tends to E[pool_k(x_0) | z_i]: where z_i puts
each colour. The U-Net reads the sketch, resized to H x W, as three more input channels, as an upsampler reads
its low-resolution image; the sketch is detached there, so it stays a picture that can be looked at:

    h_0 = conv(x_t) + conv_s(up(s(z_i)))        conv_s starts at zero

``patch=1, z_i_map=0, z_i_layout=0, z_i_sketch=0`` is GLIDE's U-Net as the paper uses it.

The same module is the upsampler's network (upsampler.py) when built with ``low_res_channels`` > 0, as CDM's and
unCLIP's super-resolution U-Nets are: the low-resolution image, resized to H x W, is concatenated to x_t as extra
input channels, the augmentation level s is embedded like t (emb = MLP(sin(t)) + MLP(sin(s))), and there is no
z_i, no caption and no attention (unCLIP's upsamplers are "unconditional ADMNets" with "only spatial
convolutions").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from minidalle2.transformer import timestep_embedding

SUPPORTED_SIZES = (16, 32, 64)
LAYOUT_HIDDEN = 256  # hidden width of the MLP that draws z_i's layout map


@dataclass
class UNetConfig:
    """The U-Net. Defaults: the ``quick`` decoder's (the run sets image_size, embed_dim and text_width)."""
    image_size: int = 32         # side of the square images; one of SUPPORTED_SIZES
    base_channels: int = 32      # channels at full resolution (a multiple of 8, for GroupNorm's 8 groups)
    channel_mult: list[int] = field(default_factory=lambda: [2, 2])  # channels of level k = base * mult[k]
    num_res_blocks: int = 1      # residual blocks per level on the way down (one more on the way up)
    attention_resolutions: list[int] = field(default_factory=lambda: [8])  # sides with attention (+ the middle)
    heads: int = 4               # attention heads
    embed_dim: int = 128         # size of z_i (the CLIP's embed_dim)
    text_width: int = 64         # width of the caption's CLIP token features; 0: the U-Net reads no caption
    n_context_tokens: int = 4    # z_i becomes this many extra context tokens (the paper: four)
    z_i_map: int = 4             # > 0: z_i is also projected to a (C, z_i_map, z_i_map) map added at the middle
    z_i_layout: int = 8          # > 0: an MLP also draws z_i as a (C, z_i_layout, z_i_layout) map added to the
                                 # first features (two objects from their z_i 3 -> 8 %; docs/two_objects.json)
    z_i_sketch: int = 0          # > 0: an MLP regresses the image from z_i at z_i_sketch x z_i_sketch (a sketch of
                                 # E[x_0 | z_i]), which the U-Net reads as three more input channels
    z_i_sketch_hidden: list[int] = field(default_factory=lambda: [LAYOUT_HIDDEN])  # that MLP's hidden widths
    patch: int = 2               # pixel-unshuffle the image by this factor first (2: the U-Net works at H/2)

    @property
    def emb_dim(self) -> int:
        """Width of the timestep(+z_i) embedding and of the context tokens (improved-diffusion: 4 x base)."""
        return 4 * self.base_channels


def check_config(cfg: UNetConfig) -> None:
    """Raise ValueError for a configuration the U-Net cannot be built with, naming what to change."""
    down = cfg.patch * 2 ** (len(cfg.channel_mult) - 1)  # total down-sampling factor
    fits = [s for s in SUPPORTED_SIZES if s % down == 0 and s // down >= 4]
    if cfg.image_size not in fits:
        raise ValueError(f"image size {cfg.image_size} is not supported by a U-Net with {len(cfg.channel_mult)} "
                        f"levels; use one of {', '.join(map(str, fits)) or 'none (use fewer levels)'} "
                        f"(the shapes data comes in {', '.join(map(str, SUPPORTED_SIZES))})")
    if cfg.base_channels % 8 or cfg.base_channels <= 0:
        raise ValueError(f"base_channels={cfg.base_channels} must be a positive multiple of 8 (GroupNorm groups)")
    if any(cfg.base_channels * m % cfg.heads for m in cfg.channel_mult):
        raise ValueError(f"heads={cfg.heads} must divide the channels of every level "
                        f"({[cfg.base_channels * m for m in cfg.channel_mult]})")


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8, channels)


def zero_init(module: nn.Module) -> nn.Module:
    """Start a residual branch at zero, so each block begins as the identity (improved-diffusion does this)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))) + Linear(SiLU(emb));  out = skip(x) + conv(SiLU(GN(h))).

    The embedding (timestep + z_i) is added at every position. (Scaling and shifting the normalised features
    instead, FiLM, did as well on the oracle and a little worse on CLIP re-encoding: notebook 04.)"""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.in_layers = nn.Sequential(norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.out_norm = norm(c_out)
        self.out_layers = nn.Sequential(nn.SiLU(), zero_init(nn.Conv2d(c_out, c_out, 3, padding=1)))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)  # (B, C_out, H, W)
        e = self.emb_layers(emb)[:, :, None, None]  # (B, C_out, 1, 1): the timestep and z_i
        return self.skip(x) + self.out_layers(self.out_norm(h + e))


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions whose keys and values also hold the S context tokens (GLIDE):
    softmax(q [k_ctx; k_x]^T / sqrt(c)) [v_ctx; v_x], each layer projecting the context with its own weights."""

    def __init__(self, channels: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.context_kv = nn.Linear(context_dim, 2 * channels)
        self.proj_out = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3).unbind(1)  # 3 x (B, HW, C)
        k_ctx, v_ctx = self.context_kv(context).chunk(2, dim=-1)  # 2 x (B, S, C)
        k, v = torch.cat([k_ctx, k], dim=1), torch.cat([v_ctx, v], dim=1)  # (B, S + HW, C)
        heads = lambda z: z.reshape(B, z.shape[1], self.heads, C // self.heads).transpose(1, 2)  # (B, h, N, c)
        keep = torch.cat([context_mask, context_mask.new_ones(B, H * W)], dim=1)  # (B, S + HW) bool
        y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=keep[:, None, None, :])
        y = y.transpose(2, 3).reshape(B, C, H, W)  # (B, h, HW, c) -> (B, C, H, W)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)  # (B, C, H/2, W/2)


def stretched(flat: torch.Tensor, m: int, like: torch.Tensor) -> torch.Tensor:
    """z_i projected to (B, C * m * m) numbers, read as a (B, C, m, m) map and stretched (nearest) over the
    positions of ``like`` (B, C, H', W'): cell (r, c) of the map covers row r, column c of the grid."""
    return F.interpolate(flat.view(flat.shape[0], -1, m, m), size=like.shape[-2:], mode="nearest")


def z_i_mlp(embed_dim: int, out: int, hidden=(LAYOUT_HIDDEN,)) -> nn.Sequential:
    """The small MLP that draws z_i as a picture-shaped map (the layout map, the sketch): D -> hidden... -> out,
    SiLU between layers."""
    widths, layers = [embed_dim, *hidden], []
    for w_in, w_out in zip(widths, widths[1:]):
        layers += [nn.Linear(w_in, w_out), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], out))


class Upsample(nn.Module):
    """Nearest-neighbour 2x; the next residual block's convolutions smooth it. (improved-diffusion adds a 3x3
    convolution here; for the quick U-Net at 32x32 those add about a fifth to the forward FLOPs.)"""

    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")  # (B, C, 2H, 2W)


class UNet(nn.Module):
    """Predicts the noise eps in x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (or x_0 itself, whichever the
    decoder trains it for), given t, z_i and the caption; or, with ``low_res_channels`` > 0 (the upsampler's
    U-Net), given t, a low-resolution image and its augmentation level s instead."""

    def __init__(self, cfg: UNetConfig, low_res_channels: int = 0):
        super().__init__()
        check_config(cfg)
        assert not (low_res_channels and cfg.attention_resolutions), "the upsampler's U-Net has no attention"
        self.cfg, self.low_res_channels = cfg, low_res_channels
        C, E = cfg.base_channels, cfg.emb_dim
        self.time_embed = nn.Sequential(nn.Linear(C, E), nn.SiLU(), nn.Linear(E, E))
        if low_res_channels:  # CDM: the augmentation level s is embedded like the timestep
            self.aug_embed = nn.Sequential(nn.Linear(C, E), nn.SiLU(), nn.Linear(E, E))
        else:
            self.z_i_embed = nn.Linear(cfg.embed_dim, E)  # z_i added to the timestep embedding ...
            self.z_i_tokens = nn.Linear(cfg.embed_dim, cfg.n_context_tokens * E)  # ... and made into context tokens
            self.text_proj = nn.Linear(cfg.text_width, E) if cfg.text_width else None
            self.context_norm = nn.LayerNorm(E)

        def block(c_in, c_out, res):
            layers = [ResBlock(c_in, c_out, E)]
            if res in cfg.attention_resolutions:
                layers.append(AttentionBlock(c_out, E, cfg.heads))
            return nn.ModuleList(layers)

        # Down path: remember every output's channels, each is a skip connection for the up path.
        P = cfg.patch
        self.input_conv = nn.Conv2d((3 + low_res_channels) * P * P, C, 3, padding=1)
        m, k = cfg.z_i_layout, cfg.z_i_sketch
        self.z_i_layout = z_i_mlp(cfg.embed_dim, C * m * m) if m and not low_res_channels else None
        self.sketch = z_i_mlp(cfg.embed_dim, 3 * k * k, cfg.z_i_sketch_hidden) if k and not low_res_channels else None
        # reads the sketch as input channels; zero at first, so a trained U-Net given a sketch begins unchanged
        self.sketch_conv = zero_init(nn.Conv2d(3 * P * P, C, 3, padding=1)) if self.sketch is not None else None
        self.down, skips, ch, res = nn.ModuleList(), [C], C, cfg.image_size // P
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(block(ch, C * mult, res))
                ch = C * mult
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                res //= 2
                skips.append(ch)
        self.middle = nn.ModuleList([ResBlock(ch, ch, E)])
        if not low_res_channels:
            self.middle.append(AttentionBlock(ch, E, cfg.heads))
        self.middle.append(ResBlock(ch, ch, E))
        self.z_i_map = nn.Linear(cfg.embed_dim, ch * cfg.z_i_map ** 2) if cfg.z_i_map and not low_res_channels \
            else None
        # Up path: each block eats one skip; the last block of a level (but the top one) up-samples.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = block(ch + skips.pop(), C * mult, res)
                ch = C * mult
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample())
                    res *= 2
                self.up.append(layers)
        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, 3 * P * P, 3, padding=1)))

    def embedding(self, t, z_i):
        """The embedding every residual block adds to its feature map, (B, E): unCLIP "projects and adds CLIP
        embeddings to the existing timestep embedding", emb = time_embed(sin(t)) + z_i_embed(z_i)."""
        # BEGIN SOLUTION
        return self.time_embed(timestep_embedding(t, self.cfg.base_channels)) + self.z_i_embed(z_i)
        # END SOLUTION

    def context(self, z_i, text_tokens=None, text_mask=None):
        """The tokens every attention layer also attends to: [4 z_i tokens; caption tokens], (B, S, E) + mask.
        z_i_tokens maps z_i (B, D) to n_context_tokens * E numbers; token k is the k-th block of E of them."""
        B = z_i.shape[0]
        # BEGIN SOLUTION
        ctx = self.z_i_tokens(z_i).view(B, self.cfg.n_context_tokens, -1)  # (B, 4, E)
        # END SOLUTION
        mask = torch.ones(B, self.cfg.n_context_tokens, dtype=torch.bool, device=z_i.device)
        if text_tokens is not None:
            assert self.text_proj is not None and text_tokens.shape[-1] == self.cfg.text_width, \
                "caption tokens of another width than the U-Net's (text_width 0: it reads no caption)"
            if text_mask is None:
                text_mask = torch.ones(text_tokens.shape[:2], dtype=torch.bool, device=z_i.device)
            ctx = torch.cat([ctx, self.text_proj(text_tokens)], dim=1)  # (B, 4 + L, E)
            mask = torch.cat([mask, text_mask.bool()], dim=1)
        return self.context_norm(ctx), mask

    def sketch_of(self, z_i: torch.Tensor) -> torch.Tensor:
        """The sketch of z_i: (B, 3, k, k) in pixel space [-1, 1], k = z_i_sketch. Trained (decoder.py) to regress
        the image average-pooled to k x k, so it estimates E[pool(x_0) | z_i]: the layout and colours z_i implies."""
        k = self.cfg.z_i_sketch
        return self.sketch(z_i).view(-1, 3, k, k)

    def forward(self, x_t, t, z_i=None, text_tokens=None, text_mask=None, low_res=None, s=None) -> torch.Tensor:
        """x_t (B, 3, H, W), t (B,) long, z_i (B, D), text_tokens (B, L, W), text_mask (B, L) -> eps (B, 3, H, W).
        The upsampler's U-Net takes low_res (B, low_res_channels, H, W) and s (B,) (a level on t's scale) instead."""
        assert x_t.shape[1:] == (3, self.cfg.image_size, self.cfg.image_size), "images of another size"
        if self.low_res_channels:
            assert low_res is not None and low_res.shape[1:] == (self.low_res_channels, *x_t.shape[2:]) and \
                s is not None and z_i is None, "the upsampler's U-Net reads (x_t, t, low_res, s), no z_i"
            C = self.cfg.base_channels
            # emb = MLP(sin(t)) + MLP(sin(s))
            emb = self.time_embed(timestep_embedding(t, C)) + self.aug_embed(timestep_embedding(s, C))  # (B, E)
            x_t = torch.cat([x_t, low_res], dim=1)  # (B, 3 + low_res_channels, H, W)
            ctx = ctx_mask = None
        else:
            assert z_i.dim() == 2 and z_i.shape[1] == self.cfg.embed_dim, "z_i of another CLIP than the U-Net's"
            emb = self.embedding(t, z_i)  # (B, E)
            ctx, ctx_mask = self.context(z_i, text_tokens, text_mask)  # (B, S, E), (B, S)

        def apply(layers, h):
            for layer in layers:
                if isinstance(layer, ResBlock):
                    h = layer(h, emb)
                elif isinstance(layer, AttentionBlock):
                    h = layer(h, ctx, ctx_mask)
                else:
                    h = layer(h)
            return h

        P = self.cfg.patch
        h = self.input_conv(F.pixel_unshuffle(x_t, P))  # (B, C, H/P, W/P): P x P patches as channels
        if self.z_i_layout is not None:  # z_i drawn as a map by an MLP: the layout, where the pixels are
            h = h + stretched(self.z_i_layout(z_i), self.cfg.z_i_layout, h)
        if self.sketch is not None:  # the sketch, resized to H x W: read like a low-resolution image, but not
            # trained through the U-Net (its own regression loss keeps it a picture of E[x_0 | z_i])
            sketch = F.interpolate(self.sketch_of(z_i).detach(), size=x_t.shape[-2:], mode="bilinear")
            h = h + self.sketch_conv(F.pixel_unshuffle(sketch, P))
        skips = [h]
        for layers in self.down:
            h = apply(layers, h)
            skips.append(h)
        if self.z_i_map is not None:  # z_i drawn as a coarse map, stretched over the middle resolution
            h = h + stretched(self.z_i_map(z_i), self.cfg.z_i_map, h)
        h = apply(self.middle, h)  # (B, C * mult[-1], H / 2^(levels-1), ...)
        for layers in self.up:
            h = apply(layers, torch.cat([h, skips.pop()], dim=1))
        out = self.out(h)  # (B, 3 P^2, H/P, W/P)
        return F.pixel_shuffle(out, P)  # (B, 3, H, W)
