"""Stage 1: CLIP, the embedding space both the prior and the decoder live in.

unCLIP never trains CLIP jointly: it takes a trained CLIP and learns to *invert* its image encoder. We build the
CLIP from open_clip_torch's own ``CLIP`` class, tokenizer and ``ClipLoss`` (the symmetric InfoNCE loss of Radford et
al. 2021, Fig. 3). For a batch of B matching (image, caption) pairs with unit-norm embeddings z_i, z_t (B, D):

    logits = exp(tau) z_i z_t^T                          (B, B): image j scored against caption k
    L_clip = (CE(logits, arange(B)) + CE(logits^T, arange(B))) / 2

Row j asks "which of the B captions is image j's?", column k "which image is caption k's?"; the answers sit on the
diagonal. The learned temperature tau is clamped so that exp(tau) <= 100, as in CLIP.

Binding. In a batch of random captions almost no other caption names the same two colours, so L_clip is already
low for an image embedding that only *lists* its attributes. Hard negatives (as NegCLIP, Yuksekgonul et al. 2023)
ask for more: the same caption with colours (or shapes, or sizes) swapped between the two objects must score lower,

    s_j  = exp(tau) z_i_j . z_t_j        image j and "a red circle left of a blue square"
    s~_j = exp(tau) z_i_j . z~_t_j       and "a blue circle left of a red square"
    L_swap = mean_j CE([s_j, s~_j], 0) = mean_j log(1 + exp(s~_j - s_j))
    L = L_clip + swap_negatives * L_swap

which is low only when z_i says which colour goes with which shape. Hard negatives only help once the image tower
can bind: open_clip's ModifiedResNet divides the side by 32, so at a 32 px input its last feature map is one cell in
which both objects' features are already summed; at a 64 px input it is 2x2, one cell per quadrant, and the
attention pool reads which object sits where. So the images are upsampled to ``input_size`` 64.

Loading any open_clip model (a run's, ``local-dir:``, ``hf-hub:``), tokenizing and encoding live in embeddings.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F


@dataclass
class ClipConfig:
    """A tiny CLIP for 32x32 shapes (open_clip's ``model_cfg``) and its loss. Defaults: the ``quick`` model."""
    embed_dim: int = 128         # size of z_i and z_t
    input_size: int = 64         # side CLIP sees; the run's images are upsampled to it (see the module docstring)
    vision_width: int = 8        # stem width of open_clip's ModifiedResNet (its last stage has 32x this)
    vision_layers: tuple = (1, 1, 1, 1)  # residual blocks per ResNet stage
    text_width: int = 64         # text transformer width (= width of the per-token features the priors read)
    text_layers: int = 3         # text transformer blocks
    head_width: int = 32         # attention heads = width / head_width
    context_length: int = 24     # tokens per caption, start/end included; longer captions are cut
    swap_negatives: float = 0.5  # weight of L_swap, the swapped-attribute hard negatives; 0: L_clip alone

    def model_cfg(self) -> dict:
        """The ``model_cfg`` block of open_clip_config.json; open_clip builds ``CLIP(**model_cfg)`` from it, and
        picks its ModifiedResNet because ``layers`` is a list (at 32x32 a small ResNet saw shapes better than a ViT
        of the same cost: zero-shot shape 0.89 against 0.48 after the same CPU time)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": self.input_size, "width": self.vision_width, "head_width": self.head_width,
                           "layers": list(self.vision_layers)},
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408, "width": self.text_width,
                         "heads": self.text_width // self.head_width, "layers": self.text_layers, "mlp_ratio": 2.0},
        }


def build_clip(cfg: ClipConfig) -> open_clip.CLIP:
    """open_clip's own CLIP class, with its vision tower in channels_last (1.2x faster convolutions on a CPU)."""
    model = open_clip.CLIP(**cfg.model_cfg())
    model.visual.to(memory_format=torch.channels_last)
    return model


def text_features(model: open_clip.CLIP, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """open_clip's ``encode_text`` opened up, to keep the per-token features the priors condition on.

    Returns z_t (B, D) unit-norm, token features (B, L, W) after the final LayerNorm, and the mask (B, L) of real
    tokens (start .. end-of-text).
    """
    x = model.token_embedding(tokens) + model.positional_embedding  # (B, L, W)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)  # (B, L, W)
    eot = tokens.argmax(dim=-1)  # the end-of-text token has the largest id
    pooled = x[torch.arange(len(x)), eot]  # (B, W)
    z_t = F.normalize(pooled @ model.text_projection, dim=-1)  # (B, D)
    mask = torch.arange(tokens.shape[1]) <= eot[:, None]  # (B, L)
    return z_t, x, mask


def clip_loss(z_i: torch.Tensor, z_t: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """L_clip over B matching (image, caption) pairs: z_i, z_t (B, D) unit-norm, logit_scale = exp(tau).
    Training uses open_clip's ``ClipLoss``, which computes the same number (the tests check it)."""
    # BEGIN SOLUTION
    # logits = exp(tau) z_i z_t^T
    logits = logit_scale * z_i @ z_t.T  # (B, B)
    labels = torch.arange(len(z_i), device=z_i.device)  # the matching caption of image j is caption j
    # L_clip = (CE(logits, arange(B)) + CE(logits^T, arange(B))) / 2
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    # END SOLUTION


def swap_loss(z_i: torch.Tensor, z_t: torch.Tensor, z_swap: torch.Tensor, logit_scale: torch.Tensor | float
              ) -> torch.Tensor:
    """L_swap = mean_j log(1 + exp(s~_j - s_j)): z_i, z_t, z_swap (n, D) unit-norm, for two-object images."""
    s = logit_scale * (z_i * z_t).sum(-1)  # (n,)  s_j = exp(tau) z_i_j . z_t_j
    s_swap = logit_scale * (z_i * z_swap).sum(-1)  # (n,)  s~_j = exp(tau) z_i_j . z~_t_j
    return F.softplus(s_swap - s).mean()


def training_loss(model: open_clip.CLIP, cfg: ClipConfig, x: torch.Tensor, tokens: torch.Tensor,
                  swap_tokens: torch.Tensor | None = None, two: torch.Tensor | None = None) -> torch.Tensor:
    """L = L_clip + swap_negatives * L_swap on one batch: x (B, 3, S, S) CLIP's normalised input, tokens (B, L);
    ``two`` (B,) bool marks the images with a swapped caption, ``swap_tokens`` (n, L) those captions."""
    z_i = model.encode_image(x, normalize=True)  # (B, D)
    z_t = model.encode_text(tokens, normalize=True)  # (B, D)
    scale = model.logit_scale.exp()  # exp(tau)
    loss = open_clip.ClipLoss()(z_i, z_t, scale)
    if cfg.swap_negatives:
        z_swap = model.encode_text(swap_tokens, normalize=True)  # (n, D)
        loss = loss + cfg.swap_negatives * swap_loss(z_i[two], z_t[two], z_swap, scale)
    return loss


@torch.no_grad()
def clamp_temperature(model: open_clip.CLIP) -> None:
    """exp(tau) <= 100, as in CLIP: a larger scale makes the softmax too sharp to learn from."""
    model.logit_scale.clamp_(0, math.log(100))
