"""Stage 2a: the autoregressive prior p(z_i | y) over PCA-reduced, quantized CLIP image embeddings (§2.2).

The paper turns z_i into a short sequence of discrete codes and models it with a decoder-only transformer:

  1. PCA. CLIP image embeddings live near a low-dimensional subspace; the paper keeps the 319 principal
     components (of 1024) that reconstruct z_i with under 1 % error. ``PCATokenizer`` fits scikit-learn's PCA on
     the training z_i and keeps the top K components (by count, or by an explained-variance threshold).
  2. Quantization. Each kept coordinate c_k = (z_i - mean) . u_k is cut into B uniform buckets over its
     training range [lo_k, hi_k]; the token is its bucket index, and decoding uses the bucket centre, so
     |c_k - centre_k| <= (hi_k - lo_k) / (2 B) on the training data.
  3. The dot-product token. z_i . z_t (how well the caption describes the image) is quantized into B
     buckets of its own and placed *before* the z_i tokens. At sampling time it is drawn from the top half of
     its predicted distribution, so the prior is asked for images its caption describes well.

``ARPrior`` reads, in order (L caption tokens, K components):

    position  0 .. L-1    caption token features (projected; padding masked)
    position  L           z_t (projected)
    position  L+1         dot token  (bucket of z_i . z_t)
    position  L+1+k       z_i token k, k = 1 .. K-1   (z_K is never fed: nothing comes after it)

and the output at position L+j predicts token j (j = 0 the dot token, j = k the k-th PCA token):

    L_prior = - sum_j log p(token_j | tokens_<j, y)      (cross-entropy over B buckets per position)

Classifier-free guidance: 10 % of the time in training the caption (token features and z_t) is replaced by
learned null embeddings; at sampling logits = logits_null + s (logits_y - logits_null). The quick preset then
takes the likeliest bucket of each token (top_k = 1, s = 1): on our small model a random draw strays too far
from z_i on too many components (see ``ARPriorConfig``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from minidalle2.checkpoint import prepare_stage_dir, read_json, read_tensors, save_weights, write_json
from minidalle2.diffusion import classifier_free_guidance
from minidalle2.embeddings import load_embeddings, load_meta
from minidalle2.errors import UserError
from minidalle2.training import train
from minidalle2.transformer import CausalTransformer

STAGE = "prior_ar"


# --- the tokenizer: PCA + uniform buckets ----------------------------------------------------------------------

class PCATokenizer:
    """z_i (N, D) <-> tokens (N, K): PCA to K components, each quantized into ``n_buckets`` uniform buckets.

    Components are ordered by decreasing eigenvalue, so token 1 carries the most variance. ``n_components``
    fixes K; otherwise K is the smallest count whose explained variance reaches ``variance``. Each coordinate's
    range is its training min .. max, so every training z_i is within half a bucket of its decoding; a new z_i
    outside the range is clamped to the end bucket.
    """

    def __init__(self, n_components: int | None = None, variance: float = 0.99, n_buckets: int = 16,
                 clip_sha256: str = ""):
        if n_buckets < 2:
            raise UserError(f"n_buckets is {n_buckets}; quantizing needs at least 2 buckets per component")
        if n_components is not None and n_components < 1:
            raise UserError(f"n_components is {n_components}; keep at least 1 PCA component")
        if not 0 < variance <= 1:
            raise UserError(f"variance threshold is {variance}; choose a fraction in (0, 1], e.g. 0.99")
        self.n_components, self.variance, self.n_buckets = n_components, variance, n_buckets
        self.clip_sha256 = clip_sha256

    # PCA -----------------------------------------------------------------------------------------------------

    def fit(self, z_i: torch.Tensor, z_t: torch.Tensor | None = None) -> "PCATokenizer":
        """Fit PCA and the bucket ranges on training z_i (N, D); with z_t, also the range of z_i . z_t."""
        from sklearn.decomposition import PCA

        N, D = z_i.shape
        if self.n_components is not None and self.n_components > D:
            raise UserError(f"n_components is {self.n_components} but the embeddings have only {D} dimensions; "
                            f"keep at most {D}")
        if N < max(2, self.n_components or 0):
            raise UserError(f"PCA of {self.n_components or 2} components needs at least as many embeddings, got {N}")
        pca = PCA(n_components=min(N, D), svd_solver="full").fit(z_i.double().numpy())
        ratio = np.cumsum(pca.explained_variance_ratio_)
        K = self.n_components or int(np.searchsorted(ratio, self.variance - 1e-9) + 1)
        K = min(K, len(ratio))
        self.embed_dim = D
        self.mean = torch.from_numpy(pca.mean_).float()  # (D,)
        self.components = torch.from_numpy(pca.components_[:K]).float()  # (K, D), rows u_k
        self.explained_variance = torch.from_numpy(pca.explained_variance_[:K]).float()  # (K,) eigenvalues
        self.explained_variance_ratio = torch.from_numpy(pca.explained_variance_ratio_).float()  # (min(N, D),) all
        c = self.to_pca(z_i)  # (N, K)
        self.lo, self.hi = c.min(0).values, c.max(0).values  # (K,) training range of each coordinate
        if z_t is not None:
            dot = (z_i * z_t).sum(-1)  # (N,)
            self.dot_lo, self.dot_hi = dot.min(), dot.max()
        else:
            self.dot_lo, self.dot_hi = torch.tensor(-1.0), torch.tensor(1.0)
        return self

    @property
    def K(self) -> int:
        return len(self.components)

    def check_dim(self, z: torch.Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.embed_dim:
            raise UserError(f"embeddings of shape {tuple(z.shape)} do not fit this tokenizer (N, {self.embed_dim}); "
                            "use embeddings of the CLIP it was fitted on")

    def check_clip(self, clip_sha256: str, where: str = "the tokenizer") -> None:
        if self.clip_sha256 != clip_sha256:
            raise UserError(f"{where} was fitted on another CLIP's embeddings (clip_sha256 {self.clip_sha256[:12]}, "
                            f"this run's CLIP is {clip_sha256[:12]}); retrain `minidalle2 train prior-ar`")

    def to_pca(self, z_i: torch.Tensor) -> torch.Tensor:
        """c = (z_i - mean) U^T: (N, D) -> (N, K) PCA coordinates."""
        self.check_dim(z_i)
        # BEGIN SOLUTION
        return (z_i.float() - self.mean) @ self.components.T
        # END SOLUTION

    def from_pca(self, c: torch.Tensor) -> torch.Tensor:
        """z_i = normalize(mean + c U): (N, K) -> (N, D) unit-norm (the inverse PCA, back on CLIP's sphere)."""
        # BEGIN SOLUTION
        return F.normalize(self.mean.to(c.device) + c @ self.components.to(c.device), dim=-1)
        # END SOLUTION

    # buckets -------------------------------------------------------------------------------------------------

    @staticmethod
    def _bucketize(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, B: int) -> torch.Tensor:
        """Index of the uniform bucket of [lo, hi] that holds x (values outside are clamped to the end buckets):
        b = clamp(floor((x - lo) / w), 0, B - 1), w = (hi - lo) / B. Int64, shaped like x."""
        # BEGIN SOLUTION
        width = (hi - lo).clamp_min(1e-8) / B
        return ((x - lo) / width).floor().long().clamp(0, B - 1)
        # END SOLUTION

    @staticmethod
    def _centre(tokens: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, B: int) -> torch.Tensor:
        """The value a bucket stands for, its centre: lo + (b + 1/2) (hi - lo) / B. Float, shaped like tokens."""
        # BEGIN SOLUTION
        return lo + (tokens.float() + 0.5) * (hi - lo) / B
        # END SOLUTION

    def encode(self, z_i: torch.Tensor) -> torch.Tensor:
        """z_i (N, D) -> tokens (N, K) int64 in [0, B)."""
        return self._bucketize(self.to_pca(z_i), self.lo, self.hi, self.n_buckets)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (N, K) -> z_i (N, D) unit-norm, from the bucket centres through the inverse PCA."""
        if tokens.ndim != 2 or tokens.shape[1] != self.K:
            raise UserError(f"tokens of shape {tuple(tokens.shape)} do not fit this tokenizer (N, {self.K})")
        lo, hi = self.lo.to(tokens.device), self.hi.to(tokens.device)
        return self.from_pca(self._centre(tokens, lo, hi, self.n_buckets))

    def encode_dot(self, z_i: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """The dot-product token: bucket of z_i . z_t over its training range [dot_lo, dot_hi], (N,) int64."""
        # BEGIN SOLUTION
        return self._bucketize((z_i * z_t).sum(-1), self.dot_lo, self.dot_hi, self.n_buckets)
        # END SOLUTION

    def decode_dot(self, tokens: torch.Tensor) -> torch.Tensor:
        """Bucket centres of dot tokens: (N,) -> the z_i . z_t they stand for."""
        return self._centre(tokens, self.dot_lo, self.dot_hi, self.n_buckets)

    def bucket_width(self) -> torch.Tensor:
        return (self.hi - self.lo) / self.n_buckets  # (K,)

    # safetensors -------------------------------------------------------------------------------------------------

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Everything ``decode`` needs, as tensors for safetensors (the CLIP fingerprint as its 32 bytes)."""
        t = {"mean": self.mean, "components": self.components, "explained_variance": self.explained_variance,
             "explained_variance_ratio": self.explained_variance_ratio, "lo": self.lo, "hi": self.hi,
             "dot_range": torch.stack([self.dot_lo, self.dot_hi]).float(),
             "n_buckets": torch.tensor(self.n_buckets), "embed_dim": torch.tensor(self.embed_dim),
             "clip_sha256": torch.tensor(list(bytes.fromhex(self.clip_sha256)), dtype=torch.uint8)}
        return {k: v.contiguous() for k, v in t.items()}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "PCATokenizer":
        try:
            tok = cls(n_components=len(t["components"]), n_buckets=int(t["n_buckets"]),
                      clip_sha256=bytes(t["clip_sha256"].tolist()).hex())
            tok.embed_dim = int(t["embed_dim"])
            tok.mean, tok.components, tok.lo, tok.hi = t["mean"], t["components"], t["lo"], t["hi"]
            tok.explained_variance = t["explained_variance"]
            tok.explained_variance_ratio = t["explained_variance_ratio"]
            tok.dot_lo, tok.dot_hi = t["dot_range"][0], t["dot_range"][1]
        except KeyError as e:
            raise UserError(f"the tokenizer file lacks {e}; it is incomplete, retrain `minidalle2 train prior-ar`"
                            ) from None
        return tok


# --- the model ---------------------------------------------------------------------------------------------------

@dataclass
class ARPriorConfig:
    """Defaults are the ``quick`` preset (about 75 s on 2 idle CPU cores).

    Why 16 buckets for D = 64: each component's training range spans about 5 standard deviations, so a bucket is
    ~0.3 std wide, about the spread the caption leaves in the top components (a linear fit z_t -> PCA coordinates
    leaves 0.2-0.4 std). Finer buckets would mostly split the prior's own uncertainty into more classes to learn
    (B = 32 and 64 learned far more slowly in our budget) while the rounding they remove is already small: at
    K = 22 the reconstruction cos is 0.991 with 16 buckets, 0.995 without any rounding. Uniform buckets beat
    equal-mass (quantile) ones here: with 16 quantile buckets the val reconstruction cos fell to 0.986 (bucket
    midpoints) or 0.990 (bucket means), because the outer buckets must stretch over the long tails.

    Sampling defaults (chosen on the val split, first 500 captions; baseline cos(z_t, z_i) = 0.973). Each
    token's distribution over 16 buckets is still wide, and a *draw* lands a few buckets off on many of the 22
    components; the errors add up, so plain sampling (s = 2, temperature 1) reached only cos 0.960. Taking the
    likeliest bucket (``top_k = 1``) gave 0.971 at s = 2 and 0.974 at s = 1: with a single choice per token,
    guidance no longer trades diversity for fidelity, it only pushes away from the null caption and overshoots
    (s = 1.5: 0.973). Temperature 0.3-0.5 or top_k = 2 stayed below the baseline. So the quick preset samples the
    mode of p(z_i | y), token by token; pass ``top_k=n_buckets`` (no cut) for diverse samples.

    Training budget (1 thread, per step: batch 128 0.138 s, batch 64 0.068 s, batch 48 0.052 s): at about equal
    time, 2000 steps of 64 beat 1000 steps of 128 on val (cos 0.976 vs 0.974, greedy, s = 1); the loss is far
    from converged, so more updates matter more than cleaner gradients. 1600 steps of 64 (0.79x the time of
    1000 x 128, i.e. ~75 s on 2 idle cores) keep most of the gain (0.975) and beat 2000 x 48 (0.9747).
    On the full test split that run reaches cos 0.975 against the baseline's 0.973 (+0.0019, closer to z_i than
    z_t is for 67 % of captions); on the held-out caption combinations it stays below (0.894
    against 0.908; the old preset, 1000 x 128 with s = 2 draws, reached 0.874).
    """
    n_components: int | None = None  # PCA components kept (K); None: as many as `variance` needs
    variance: float = 0.99       # explained-variance threshold when n_components is None (paper: <1 % error)
    n_buckets: int = 16          # uniform buckets per component, and for the dot token (paper: 1024)
    width: int = 64              # transformer width
    layers: int = 3
    heads: int = 2
    cond_drop: float = 0.1       # probability of the null caption in training (classifier-free guidance)
    guidance: float = 1.0        # default guidance scale s at sampling (see above)
    temperature: float = 1.0     # default sampling temperature
    top_k: int | None = 1        # default top-k cut at sampling (1: the likeliest bucket; None: no cut)
    batch_size: int = 64         # more, smaller steps: see above
    steps: int = 1600
    lr: float = 1e-2             # high for a transformer, but this one is small and pre-norm; 5e-3 learned slower
    weight_decay: float = 0.01
    warmup_steps: int = 50
    ema_decay: float = 0.99
    ckpt_every: int = 250
    seed: int = 0


PRESETS = {
    "tiny": ARPriorConfig(n_components=8, width=32, layers=1, batch_size=64, steps=40, lr=3e-3, warmup_steps=5,
                          ckpt_every=20, ema_decay=0.8),
    "quick": ARPriorConfig(),
    "full": ARPriorConfig(variance=0.999, n_buckets=64, width=128, layers=6, heads=4, batch_size=1024, steps=20000,
                          lr=5e-4, warmup_steps=500, ema_decay=0.9995, ckpt_every=2000),
}


class ARPrior(nn.Module):
    """p(dot, z_1 .. z_K | y): a causal transformer over [caption tokens, z_t, dot token, PCA tokens].

    Bucket b of component k and bucket b of component k' stand for different numbers, so each of the K + 1
    token positions has its own B rows in the (single) embedding table and its own output layer. Without this
    the network must learn to multiply "which bucket" by "which component" before it can read or write a
    value; with it, reading z_t and writing bucket logits is close to a linear map, and training is several
    times faster. Shapes: N captions, L caption tokens, C width, K components, B buckets.
    """

    def __init__(self, cfg: ARPriorConfig, tokenizer: PCATokenizer, text_width: int, context_length: int):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.embed_dim, self.text_width, self.context_length = tokenizer.embed_dim, text_width, context_length
        C, B, K = cfg.width, tokenizer.n_buckets, tokenizer.K
        self.text_in = nn.Linear(text_width, C)
        self.z_t_in = nn.Linear(self.embed_dim, C)
        self.token_embedding = nn.Embedding((K + 1) * B, C)  # rows j*B .. j*B + B-1: the buckets of token j
        self.null_text_embedding = nn.Parameter(torch.randn(context_length, C) * 0.02)  # learned "no caption"
        self.null_z_t_embedding = nn.Parameter(torch.randn(C) * 0.02)
        self.transformer = CausalTransformer(C, cfg.layers, cfg.heads, max_len=context_length + 1 + K)
        self.head_weight = nn.Parameter(torch.randn(K + 1, C, B) / C ** 0.5)  # one output layer per token
        self.head_bias = nn.Parameter(torch.zeros(K + 1, B))

    def sequence(self, text_tokens, text_mask, z_t, tokens, drop=None):
        """The input sequence (N, L + 1 + n, C) and key mask, for ``tokens`` (N, n) = [dot, z_1 .. z_{n-1}].

        ``drop`` (N,) bool replaces the caption (token features and z_t) by the learned null embeddings.
        """
        N, L, _ = text_tokens.shape
        text = self.text_in(text_tokens)  # (N, L, C)
        z_t_tok = self.z_t_in(z_t)  # (N, C)
        mask = text_mask
        if drop is not None and drop.any():
            d = drop[:, None]  # (N, 1)
            text = torch.where(d[..., None], self.null_text_embedding[:L], text)
            z_t_tok = torch.where(d, self.null_z_t_embedding, z_t_tok)
            mask = text_mask | d  # the null caption has no padding
        offset = torch.arange(tokens.shape[1], device=tokens.device) * self.tokenizer.n_buckets  # (n,)
        seq = torch.cat([text, z_t_tok[:, None], self.token_embedding(tokens + offset)], dim=1)  # (N, L + 1 + n, C)
        key_mask = torch.cat([mask, torch.ones(N, 1 + tokens.shape[1], dtype=torch.bool, device=mask.device)], 1)
        return seq, key_mask

    def forward(self, text_tokens, text_mask, z_t, tokens, drop=None):
        """Logits (N, n + 1, B) for tokens 0 .. n, given the first n tokens (N, n), 0 <= n <= K."""
        if z_t.shape[-1] != self.embed_dim or text_tokens.shape[-1] != self.text_width:
            raise UserError(f"embeddings of dimension {z_t.shape[-1]} / text width {text_tokens.shape[-1]} do not "
                            f"match this prior ({self.embed_dim} / {self.text_width}); use the CLIP it was trained on")
        seq, key_mask = self.sequence(text_tokens, text_mask, z_t, tokens, drop)
        h = self.transformer(seq, key_mask)  # (N, L + 1 + n, C)
        L = text_tokens.shape[1]
        h = h[:, L:]  # (N, n + 1, C): outputs from z_t onwards
        n = h.shape[1]
        return torch.einsum("bjc,jcv->bjv", h, self.head_weight[:n]) + self.head_bias[:n]  # (N, n + 1, B)

    def loss(self, text_tokens, text_mask, z_t, tokens, drop=None):
        """Cross-entropy of all K + 1 tokens (N, K + 1) = [dot, z_1 .. z_K], teacher-forced."""
        logits = self(text_tokens, text_mask, z_t, tokens[:, :-1], drop)  # (N, K + 1, B)
        return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())

    @torch.no_grad()
    def sample(self, text_tokens, text_mask, z_t, guidance: float | None = None, temperature: float | None = None,
               top_k: int | None = None, top_p: float | None = None, generator=None, dot_top_half: bool = True,
               return_tokens: bool = False):
        """Draw z_i ~ p(z_i | y) token by token: (N, D) unit-norm float32 (and the (N, K + 1) tokens if asked).

        ``guidance``, ``temperature`` and ``top_k`` default to the config's (None); ``top_k = B`` keeps every bucket.
        Per step: logits = null + s (cond - null), divided by ``temperature``, cut to ``top_k`` / nucleus
        ``top_p``. The dot token (step 0) is drawn from the top half of its distribution when ``dot_top_half``:
        buckets below the median of the predicted p(dot | y) are removed, i.e. dot ~ p(dot | y, dot >= median).
        The transformer is simply re-run on the growing sequence (K + 1 short steps, no KV cache).
        """
        s = self.cfg.guidance if guidance is None else guidance
        temperature = self.cfg.temperature if temperature is None else temperature
        top_k = self.cfg.top_k if top_k is None else top_k
        if temperature <= 0 or s < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
            raise UserError(f"need temperature > 0, guidance >= 0, top_k >= 1 and 0 < top_p <= 1 "
                            f"(got {temperature}, {s}, {top_k}, {top_p})")
        N = len(z_t)
        tokens = torch.zeros(N, 0, dtype=torch.long, device=z_t.device)
        null = torch.ones(N, dtype=torch.bool, device=z_t.device)
        for j in range(self.tokenizer.K + 1):
            logits = self(text_tokens, text_mask, z_t, tokens)[:, -1]  # (N, B)
            if s != 1:
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


# --- training, saving, loading -----------------------------------------------------------------------------

def fit_tokenizer(cfg: ARPriorConfig, emb: dict) -> PCATokenizer:
    """The deterministic tokenizer of a run: PCA (full SVD) + ranges of the train split's z_i and z_i . z_t."""
    tok = PCATokenizer(cfg.n_components, cfg.variance, cfg.n_buckets, clip_sha256=emb["meta"]["clip_sha256"])
    return tok.fit(emb["z_i"], emb["z_t"])


def all_tokens(tok: PCATokenizer, z_i: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """The training targets (N, K + 1) = [dot token, z_1 .. z_K]."""
    return torch.cat([tok.encode_dot(z_i, z_t)[:, None], tok.encode(z_i)], dim=1)


def train_prior_ar(cfg: ARPriorConfig, run_dir: Path, resume: bool = False, progress: bool = True,
                   log=print) -> dict:
    """Fit the PCA tokenizer and train the AR prior on the cached train-split embeddings of ``run_dir``."""
    run_dir = Path(run_dir)
    emb = load_embeddings(run_dir, "train")  # names `minidalle2 train clip` if missing
    stage_dir = prepare_stage_dir(run_dir, STAGE, resume)
    meta = emb["meta"]
    tok = fit_tokenizer(cfg, emb)
    kept = tok.explained_variance_ratio[:tok.K].sum().item()
    log(f"PCA keeps {tok.K} of {tok.embed_dim} components ({100 * kept:.2f} % of the variance), "
        f"{tok.n_buckets} buckets each")
    torch.manual_seed(cfg.seed)
    prior = ARPrior(cfg, tok, meta["text_width"], meta["context_length"])
    targets = all_tokens(tok, emb["z_i"], emb["z_t"])  # (N, K + 1)
    text, mask, z_t = emb["text_tokens"], emb["text_mask"], emb["z_t"]

    def step_loss(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(len(targets), (cfg.batch_size,), generator=g)
        drop = torch.rand(cfg.batch_size, generator=g) < cfg.cond_drop
        return prior.loss(text[idx], mask[idx], z_t[idx], targets[idx], drop)

    def write_weights(folder: Path, ema) -> None:
        write_prior_ar(folder, prior, meta["clip_sha256"], state=ema.shadow)

    return train(stage_dir, prior, cfg, step_loss, write_weights, resume=resume, ema_decay=cfg.ema_decay,
                 extra_info={"clip_sha256": meta["clip_sha256"], "n_components": tok.K}, progress=progress)


def write_prior_ar(folder: Path, prior: ARPrior, clip_sha256: str, state: dict | None = None) -> None:
    """``model.safetensors`` (``state``, e.g. the EMA weights, or the model's own), ``tokenizer.safetensors``,
    ``config.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / "model.safetensors", prior, state)
    save_file(prior.tokenizer.to_tensors(), str(folder / "tokenizer.safetensors"))
    write_json(folder / "config.json", {"config": dataclasses.asdict(prior.cfg), "clip_sha256": clip_sha256,
                                        "embed_dim": prior.embed_dim, "text_width": prior.text_width,
                                        "context_length": prior.context_length, "n_components": prior.tokenizer.K})


def load_tokenizer(run_dir: Path) -> PCATokenizer:
    """The run's fitted tokenizer, checked against the run's current CLIP."""
    run_dir = Path(run_dir)
    folder = run_dir / STAGE
    if not (folder / "config.json").exists():
        raise UserError(f"{run_dir} has no AR prior; run `minidalle2 train prior-ar --run-dir {run_dir}`")
    tok = PCATokenizer.from_tensors(read_tensors(folder / "tokenizer.safetensors"))
    tok.check_clip(load_meta(run_dir)["clip_sha256"], where=f"the AR prior in {folder}")
    return tok


def load_prior_ar(run_dir: Path) -> ARPrior:
    """The trained AR prior (EMA weights, eval mode) with its tokenizer, checked against the run's current CLIP."""
    run_dir = Path(run_dir)
    folder = run_dir / STAGE
    tok = load_tokenizer(run_dir)
    saved = read_json(folder / "config.json")
    if saved["clip_sha256"] != tok.clip_sha256:
        raise UserError(f"{folder}/config.json and tokenizer.safetensors name different CLIPs; retrain "
                        f"`minidalle2 train prior-ar --run-dir {run_dir}` in a new run dir")
    prior = ARPrior(ARPriorConfig(**saved["config"]), tok, saved["text_width"], saved["context_length"])
    try:
        prior.load_state_dict(read_tensors(folder / "model.safetensors"))
    except RuntimeError as e:
        raise UserError(f"{folder}/model.safetensors does not match its config.json ({str(e)[:80]}...); "
                        "retrain it") from None
    return prior.eval()


# --- measurements ------------------------------------------------------------------------------------------

@torch.no_grad()
def pca_report(run_dir_or_tokenizer, z_i: torch.Tensor) -> dict:
    """How well the tokenizer keeps z_i: mean cos(z_i, decode(encode(z_i))) and, without the buckets, the PCA-only
    cos(z_i, from_pca(to_pca(z_i)))."""
    tok = run_dir_or_tokenizer
    if not isinstance(tok, PCATokenizer):
        tok = load_tokenizer(tok)
    cos_pca = (tok.from_pca(tok.to_pca(z_i)) * z_i).sum(-1)  # (N,)
    cos_q = (tok.decode(tok.encode(z_i)) * z_i).sum(-1)  # (N,)
    return {"n_components": tok.K, "embed_dim": tok.embed_dim, "n_buckets": tok.n_buckets,
            "explained_variance": tok.explained_variance_ratio[:tok.K].sum().item(),
            "cos_pca": cos_pca.mean().item(), "cos_quantized": cos_q.mean().item(),
            "cos_pca_min": cos_pca.min().item(), "cos_quantized_min": cos_q.min().item()}
