"""Stage 2a: the autoregressive prior p(z_i | y) over PCA-reduced, quantized CLIP image embeddings (§2.2).

The paper turns z_i into a short sequence of discrete codes and models it with a decoder-only transformer. The
codes come from ``PCATokenizer`` (prior_ar_tokenizer.py): z_i's top K principal components, each quantized into B
uniform buckets, and before them a dot-product token, the bucket of z_i . z_t (how well the caption describes
the image). At sampling time the dot token is drawn from the top half of its predicted distribution, so the
prior is asked for images its caption describes well.

``ARPrior`` reads, in order (L caption tokens, K components):

    position  0 .. L-1    caption token features (projected; padding masked)
    position  L           z_t (projected)
    position  L+1         dot token  (bucket of z_i . z_t)
    position  L+1+k       z_i token k, k = 1 .. K-1   (z_K is never fed: nothing comes after it)

and the output at position L+j predicts token j (j = 0 the dot token, j = k the k-th PCA token):

    L_prior = - sum_j log p(token_j | tokens_<j, y)      (cross-entropy over B buckets per position)

Classifier-free guidance: 10 % of the time in training the caption (token features and z_t) is replaced by
learned null embeddings; at sampling logits = logits_null + s (logits_y - logits_null). The presets then draw
each token from its two likeliest buckets (top_k = 2, s = 1): on our small model a draw from all 16 strays too far
from z_i on too many components, and the likeliest bucket alone (top_k = 1) gives one and the same z_i for every
sample of "a red circle", losing the sizes and positions the caption leaves open (``evaluation/stages.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from minidalle2.diffusion import classifier_free_guidance
from minidalle2.prior_ar_tokenizer import PCATokenizer
from minidalle2.transformer import CaptionConditioning, CausalTransformer


@dataclass
class ARPriorConfig:
    """The tokenizer, the transformer and its loss. Defaults: the ``quick`` model (16 uniform buckets: see
    ``evaluation/stages.py``)."""
    n_components: int | None = None  # PCA components kept (K); None: as many as `variance` needs
    variance: float = 0.99       # explained-variance threshold when n_components is None (paper: <1 % error)
    n_buckets: int = 16          # uniform buckets per component, and for the dot token (paper: 1024)
    width: int = 64              # transformer width
    layers: int = 3              # transformer blocks
    heads: int = 2               # attention heads
    cond_drop: float = 0.1       # probability of the null caption in training (classifier-free guidance)


@dataclass
class ARPriorSampling:
    """How ``ARPrior.sample`` draws tokens by default: from the two likeliest buckets of each (see the module
    docstring and ``evaluation/stages.py``); ``top_k=n_buckets`` (no cut) gives the most diverse samples."""
    guidance: float = 1.0        # guidance scale s
    temperature: float = 1.0     # softmax temperature
    top_k: int | None = 2        # top-k cut (1: the likeliest bucket, greedy; None: no cut)


class ARPrior(nn.Module):
    """p(dot, z_1 .. z_K | y): a causal transformer over [caption tokens, z_t, dot token, PCA tokens].

    Bucket b of component k and bucket b of component k' stand for different numbers, so each of the K + 1
    token positions has its own B rows in the (single) embedding table and its own output layer. Without this
    the network must learn to multiply "which bucket" by "which component" before it can read or write a
    value; with it, reading z_t and writing bucket logits is close to a linear map, and training is several
    times faster. Shapes: N captions, L caption tokens, C width, K components, B buckets.
    """

    def __init__(self, cfg: ARPriorConfig, tokenizer: PCATokenizer, text_width: int, context_length: int,
                 sampling: ARPriorSampling | None = None):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.sampling = sampling or ARPriorSampling()  # defaults of ``sample``
        self.embed_dim, self.text_width, self.context_length = tokenizer.embed_dim, text_width, context_length
        C, B, K = cfg.width, tokenizer.n_buckets, tokenizer.K
        self.caption = CaptionConditioning(C, text_width, self.embed_dim, context_length)
        self.token_embedding = nn.Embedding((K + 1) * B, C)  # rows j*B .. j*B + B-1: the buckets of token j
        self.transformer = CausalTransformer(C, cfg.layers, cfg.heads, max_len=context_length + 1 + K)
        self.head_weight = nn.Parameter(torch.randn(K + 1, C, B) / C ** 0.5)  # one output layer per token
        self.head_bias = nn.Parameter(torch.zeros(K + 1, B))

    def sequence(self, text_tokens, text_mask, z_t, tokens, drop=None):
        """The input sequence (N, L + 1 + n, C) and key mask, for ``tokens`` (N, n) = [dot, z_1 .. z_{n-1}].

        ``drop`` (N,) bool replaces the caption (token features and z_t) by the learned null embeddings.
        """
        caption, mask = self.caption(text_tokens, text_mask, z_t, drop)  # (N, L + 1, C), (N, L + 1)
        N, n = tokens.shape
        offset = torch.arange(n, device=tokens.device) * self.tokenizer.n_buckets  # (n,): token j's rows start at j*B
        seq = torch.cat([caption, self.token_embedding(tokens + offset)], dim=1)  # (N, L + 1 + n, C)
        key_mask = torch.cat([mask, torch.ones(N, n, dtype=torch.bool, device=mask.device)], 1)
        return seq, key_mask

    def forward(self, text_tokens, text_mask, z_t, tokens, drop=None):
        """Logits (N, n + 1, B) for tokens 0 .. n, given the first n tokens (N, n), 0 <= n <= K."""
        assert z_t.shape[-1] == self.embed_dim and text_tokens.shape[-1] == self.text_width, \
            "embeddings of another CLIP than the prior's"
        seq, key_mask = self.sequence(text_tokens, text_mask, z_t, tokens, drop)
        h = self.transformer(seq, key_mask)  # (N, L + 1 + n, C)
        L = text_tokens.shape[1]
        h = h[:, L:]  # (N, n + 1, C): outputs from z_t onwards
        n = h.shape[1]
        return torch.einsum("bjc,jcv->bjv", h, self.head_weight[:n]) + self.head_bias[:n]  # (N, n + 1, B)

    def loss(self, text_tokens, text_mask, z_t, tokens, generator=None):
        """L_prior: cross-entropy of all K + 1 tokens (N, K + 1) = [dot, z_1 .. z_K], teacher-forced, with the caption
        dropped 10 % of the time."""
        drop = torch.rand(len(z_t), generator=generator) < self.cfg.cond_drop  # (N,)
        logits = self(text_tokens, text_mask, z_t, tokens[:, :-1], drop)  # (N, K + 1, B)
        return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())

    @torch.no_grad()
    def sample(self, text_tokens, text_mask, z_t, guidance: float | None = None, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None, generator=None, dot_top_half: bool = True,
               return_tokens: bool = False):
        """Draw z_i ~ p(z_i | y) token by token: (N, D) unit-norm float32 (and the (N, K + 1) tokens if asked).

        ``guidance``, ``temperature`` and ``top_k`` default to ``self.sampling``'s (None); ``top_k = B`` keeps every
        bucket. Per step: logits = null + s (cond - null), divided by ``temperature``, cut to ``top_k`` / nucleus
        ``top_p``. The dot token (step 0) is drawn from the top half of its distribution when ``dot_top_half``:
        buckets below the median of the predicted p(dot | y) are removed, i.e. dot ~ p(dot | y, dot >= median).
        The transformer is simply re-run on the growing sequence (K + 1 short steps, no KV cache).
        """
        s = self.sampling.guidance if guidance is None else guidance
        temperature = self.sampling.temperature if temperature is None else temperature
        top_k = self.sampling.top_k if top_k is None else top_k
        assert temperature > 0 and s >= 0 and (top_k is None or top_k >= 1) and (top_p is None or 0 < top_p <= 1)
        N = len(z_t)
        tokens = torch.zeros(N, 0, dtype=torch.long, device=z_t.device)
        null = torch.ones(N, dtype=torch.bool, device=z_t.device)
        for j in range(self.tokenizer.K + 1):
            logits = self(text_tokens, text_mask, z_t, tokens)[:, -1]  # (N, B)
            if s != 1:  # logits = logits_null + s (logits_y - logits_null)
                logits = classifier_free_guidance(logits, self(text_tokens, text_mask, z_t, tokens, null)[:, -1], s)
            probs = filter_probs(logits / temperature, top_k, top_p, top_half=(j == 0 and dot_top_half))
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(tokens.device)  # (N, 1)
            tokens = torch.cat([tokens, nxt], dim=1)
        z_i = self.tokenizer.decode(tokens[:, 1:].cpu()).to(z_t.device)  # (N, D)
        return (z_i, tokens) if return_tokens else z_i


def filter_probs(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None,
                 top_half: bool = False) -> torch.Tensor:
    """softmax(logits) (N, B) with the chosen cuts, renormalised.

    top_half keeps the buckets at or above the distribution's median (bucket order = value order);
    top_k keeps the k likeliest; top_p the smallest set of likeliest buckets holding probability p.
    """
    probs = logits.float().softmax(-1)  # (N, B)
    if top_half:
        # BEGIN SOLUTION
        probs = probs.masked_fill(probs.cumsum(-1) < 0.5, 0)  # P(dot <= b) < 1/2: b is below the median
        # END SOLUTION
    if top_k is not None:
        kth = probs.topk(min(top_k, probs.shape[-1]), dim=-1).values[:, -1:]  # (N, 1)
        probs = probs.masked_fill(probs < kth, 0)
    if top_p is not None:
        p, order = probs.sort(-1, descending=True)
        outside = p.cumsum(-1) - p >= top_p * p.sum(-1, keepdim=True)  # likelier ones already hold top_p
        probs = probs.scatter(-1, order, p.masked_fill(outside, 0))
    return probs / probs.sum(-1, keepdim=True)


# --- the tokens it learns ----------------------------------------------------------------------------------

def fit_tokenizer(cfg: ARPriorConfig, emb: dict) -> PCATokenizer:
    """The deterministic tokenizer of a run: PCA (full SVD) + ranges of the train split's z_i and z_i . z_t."""
    tok = PCATokenizer(cfg.n_components, cfg.variance, cfg.n_buckets, clip_sha256=emb["meta"]["clip_sha256"])
    return tok.fit(emb["z_i"], emb["z_t"])


def all_tokens(tok: PCATokenizer, z_i: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """The training targets (N, K + 1) = [dot token, z_1 .. z_K]."""
    return torch.cat([tok.encode_dot(z_i, z_t)[:, None], tok.encode(z_i)], dim=1)
