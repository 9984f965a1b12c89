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

which is low only when z_i says which colour goes with which shape. Word order is a second kind of hard negative
(NegCLIP's word-order negatives): the same words with the two objects exchanged,

    z^o_t_j = z_t("a blue square left of a red circle")    for image j of "a red circle left of a blue square"
              (or the relation changed: "a red circle above a blue square")
    L_order = mean_j log(1 + exp(exp(tau) (z_i_j . z^o_t_j - z_i_j . z_t_j + m)))
    L = L_clip + swap_negatives * L_swap + order_negatives * L_order

A bag of words scores both captions alike, so L_order is low only when z_t says which object comes first in the
relation. With exp(tau) = 100 a cosine gap of 0.05 already makes the softplus small, and the two captions' z_t
stay nearly parallel (cos 0.95): the margin m asks for a gap of m more. Hard negatives only help once the image tower
can bind: open_clip's ModifiedResNet divides the side by 32, so at a 32 px input its last feature map is one cell in
which both objects' features are already summed; at a 64 px input it is 2x2, one cell per quadrant, and the
attention pool reads which object sits where. So the images are upsampled to ``input_size`` 64.

What z_i keeps. No caption names the details of render.py (a background tint, a fill, a turn), so L_clip gives z_i
no reason to keep them, and none to drop them either: a small image tower keeps them. Asking two views of one
picture to agree is how SLIP (Mu et al. 2022) adds augmentation invariance to CLIP; here the "other view" x'_j of
picture x_j is the same scene with its details drawn again:

    L_inv = mean_j (1 - z_i_j . z'_i_j)  =  mean_j ||z_i_j - z'_i_j||^2 / 2       (unit vectors)
    L = L_clip + swap_negatives * L_swap + order_negatives * L_order + detail_invariance * L_inv

On N processes (distributed.py), each rank holds b = B / N of the pairs. Its images must still be scored against
all B captions, so the features of every rank are gathered first (open_clip's ``gather_features``) and rank r
computes the rows and columns of its own pairs, whose labels are offset by r b:

    L_r = (CE(exp(tau) z_i^(r) Z_t^T, r b + arange(b)) + CE(exp(tau) z_t^(r) Z_i^T, r b + arange(b))) / 2
    (1/N) sum_r L_r = L_clip of the whole batch          Z_i, Z_t (B, D): every rank's, in rank order

(every row and column of the B x B matrix is computed by exactly one rank). For the gradient to be exact too, the
gather keeps it for every rank's features (``gather_with_grad``): rank r's features also get the gradient of the
other ranks' L_r', which the all-gather's backward sums back to r, and DDP's average over the ranks then gives the
gradient of (1/N) sum_r L_r. ``local_clip_loss`` is L_r written out.

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
    order_negatives: float = 0.0  # weight of L_order, the word-order hard negatives (objects or relation changed)
    order_margin: float = 0.0    # m: how much lower the negative's cosine to z_i must be, before exp(tau)
    detail_invariance: float = 0.0  # weight of L_inv: z_i of a picture and of its details drawn again agree

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


def local_clip_loss(z_i: torch.Tensor, z_t: torch.Tensor, all_z_i: torch.Tensor, all_z_t: torch.Tensor,
                    logit_scale: torch.Tensor | float, rank: int) -> torch.Tensor:
    """L_r, rank r's share of L_clip: its b pairs z_i, z_t (b, D) scored against every rank's all_z_i, all_z_t
    (B, D), gathered in rank order (so its own pairs are rows r b .. r b + b - 1). The mean of L_r over the ranks is
    L_clip of the whole batch. Training uses open_clip's ``ClipLoss(local_loss=True)``, which computes the same."""
    # BEGIN SOLUTION
    b = len(z_i)
    logits_i = logit_scale * z_i @ all_z_t.T  # (b, B): this rank's images against every caption
    logits_t = logit_scale * z_t @ all_z_i.T  # (b, B): this rank's captions against every image
    labels = rank * b + torch.arange(b, device=z_i.device)  # image j of rank r is image r b + j of the batch
    return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2
    # END SOLUTION


def swap_loss(z_i: torch.Tensor, z_t: torch.Tensor, z_swap: torch.Tensor, logit_scale: torch.Tensor | float,
              margin: float = 0.0) -> torch.Tensor:
    """L_swap = mean_j log(1 + exp(s~_j - s_j + exp(tau) m)): z_i, z_t, z_swap (n, D) unit-norm, for two-object
    images; with z^o_t in place of z~_t it is L_order."""
    # BEGIN SOLUTION
    s = logit_scale * (z_i * z_t).sum(-1)  # (n,)  s_j = exp(tau) z_i_j . z_t_j
    s_swap = logit_scale * (z_i * z_swap).sum(-1)  # (n,)  s~_j = exp(tau) z_i_j . z~_t_j
    # mean_j log(1 + exp(s~_j - s_j + exp(tau) m))
    return F.softplus(s_swap - s + logit_scale * margin).mean()
    # END SOLUTION


def invariance_loss(z_i: torch.Tensor, z_view: torch.Tensor) -> torch.Tensor:
    """L_inv = mean_j (1 - z_i_j . z'_i_j): z_i, z_view (B, D) unit-norm, the same pictures with their unstated
    details drawn again; 0 when z_i ignores the details."""
    # BEGIN SOLUTION
    return (1 - (z_i * z_view).sum(-1)).mean()
    # END SOLUTION


def training_loss(model: open_clip.CLIP, cfg: ClipConfig, x: torch.Tensor, tokens: torch.Tensor,
                  swap_tokens: torch.Tensor | None = None, two: torch.Tensor | None = None, rank: int = 0,
                  world_size: int = 1, order_tokens: torch.Tensor | None = None,
                  ordered: torch.Tensor | None = None, x_view: torch.Tensor | None = None) -> torch.Tensor:
    """L = L_clip + swap_negatives * L_swap + order_negatives * L_order on one batch: x (B, 3, S, S) CLIP's
    normalised input, tokens (B, L); ``two`` (B,) bool marks the images with a swapped caption, ``swap_tokens``
    (n, L) those captions; ``ordered`` (B,) and ``order_tokens`` (m, L) the same for the word-order negatives. On
    ``world_size`` processes: this rank's share L_r of the whole batch's L (the mean of L_r over the ranks is L)."""
    z_i = model.encode_image(x, normalize=True)  # (B, D)
    z_t = model.encode_text(tokens, normalize=True)  # (B, D)
    scale = model.logit_scale.exp()  # exp(tau)
    loss = open_clip.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)(z_i, z_t, scale)
    for weight, margin, negatives, has in ((cfg.swap_negatives, 0.0, swap_tokens, two),
                                           (cfg.order_negatives, cfg.order_margin, order_tokens, ordered)):
        if weight:
            n = has.sum().float()  # this rank's images with such a negative
            n_all = n.clone()
            if world_size > 1:
                torch.distributed.all_reduce(n_all)  # the whole batch's
            if n > 0:
                z_neg = model.encode_text(negatives, normalize=True)  # (n, D)
                # the term is a mean over the whole batch's n_all pairs: this rank's share is its sum / (n_all / N)
                share = n * world_size / n_all
                loss = loss + weight * share * swap_loss(z_i[has], z_t[has], z_neg, scale, margin)
    if cfg.detail_invariance:  # every rank holds B / N pairs, so the mean of the ranks' means is the batch's
        loss = loss + cfg.detail_invariance * invariance_loss(z_i, model.encode_image(x_view, normalize=True))
    return loss


@torch.no_grad()
def clamp_temperature(model: open_clip.CLIP) -> None:
    """exp(tau) <= 100, as in CLIP: a larger scale makes the softmax too sharp to learn from."""
    model.logit_scale.clamp_(0, math.log(100))
