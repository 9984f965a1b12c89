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

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from minidalle2.checkpoint import prepare_stage_dir, read_config, read_tensors, save_weights, stage_dir, write_config
from minidalle2.diffusion import classifier_free_guidance
from minidalle2.embeddings import check_clip, load_embeddings
from minidalle2.errors import MAX_GUIDANCE, UserError, check_number
from minidalle2.prior_ar_tokenizer import PCATokenizer
from minidalle2.training import TrainConfig, train
from minidalle2.transformer import CausalTransformer

STAGE = "prior_ar"


# --- the model ---------------------------------------------------------------------------------------------------

@dataclass
class ARPriorConfig:
    """The tokenizer, the transformer and its loss. Defaults are the ``quick`` preset's; how its numbers were chosen
    (16 buckets, uniform ones, 1600 steps of 64) is measured in ``evaluation/stages.py``."""
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


@dataclass
class ARPriorPreset:
    """An AR prior preset. Defaults are ``quick`` (about 75 s on 2 idle CPU cores)."""
    model: ARPriorConfig = field(default_factory=ARPriorConfig)
    sample: ARPriorSampling = field(default_factory=ARPriorSampling)
    # lr 1e-2 is high for a transformer, but this one is small and pre-norm (5e-3 learned slower); more, smaller
    # steps beat fewer, larger ones in the same time
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=64, steps=1600, lr=1e-2,
                                                                   weight_decay=0.01, warmup_steps=50,
                                                                   ema_decay=0.99, ckpt_every=250))


PRESETS = {
    "tiny": ARPriorPreset(ARPriorConfig(n_components=8, width=32, layers=1), ARPriorSampling(),
                          TrainConfig(batch_size=64, steps=40, lr=3e-3, weight_decay=0.01, warmup_steps=5,
                                      ema_decay=0.8, ckpt_every=20)),
    "quick": ARPriorPreset(),
    # full: quick's transformer, 1.5x the steps
    "full": ARPriorPreset(train=TrainConfig(batch_size=64, steps=2400, lr=1e-2, weight_decay=0.01, warmup_steps=50,
                                            ema_decay=0.99, ckpt_every=400)),
}


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

        ``guidance``, ``temperature`` and ``top_k`` default to ``self.sampling``'s (None); ``top_k = B`` keeps every
        bucket. Per step: logits = null + s (cond - null), divided by ``temperature``, cut to ``top_k`` / nucleus
        ``top_p``. The dot token (step 0) is drawn from the top half of its distribution when ``dot_top_half``:
        buckets below the median of the predicted p(dot | y) are removed, i.e. dot ~ p(dot | y, dot >= median).
        The transformer is simply re-run on the growing sequence (K + 1 short steps, no KV cache).
        """
        s = self.sampling.guidance if guidance is None else guidance
        temperature = self.sampling.temperature if temperature is None else temperature
        top_k = self.sampling.top_k if top_k is None else top_k
        check_number("prior guidance", s, 0, MAX_GUIDANCE, "1: no guidance, larger: follow the caption more closely")
        check_number("temperature", temperature, 1e-6, 100, "1: the model's distribution, lower: sharper")
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


def train_prior_ar(preset: ARPriorPreset, run_dir: Path, resume: bool = False, progress: bool = True,
                   log=print) -> dict:
    """Fit the PCA tokenizer and train the AR prior on the cached train-split embeddings of ``run_dir``."""
    run_dir = Path(run_dir)
    emb = load_embeddings(run_dir, "train")  # names `minidalle2 train clip` if missing
    stage_dir = prepare_stage_dir(run_dir, STAGE, resume)
    meta = emb["meta"]
    tok = fit_tokenizer(preset.model, emb)
    kept = tok.explained_variance_ratio[:tok.K].sum().item()
    log(f"PCA keeps {tok.K} of {tok.embed_dim} components ({100 * kept:.2f} % of the variance), "
        f"{tok.n_buckets} buckets each")
    seed, batch_size = preset.train.seed, preset.train.batch_size
    torch.manual_seed(seed)
    prior = ARPrior(preset.model, tok, meta["text_width"], meta["context_length"], preset.sample)
    targets = all_tokens(tok, emb["z_i"], emb["z_t"])  # (N, K + 1)
    text, mask, z_t = emb["text_tokens"], emb["text_mask"], emb["z_t"]

    def step_loss(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(len(targets), (batch_size,), generator=g)
        drop = torch.rand(batch_size, generator=g) < preset.model.cond_drop
        return prior.loss(text[idx], mask[idx], z_t[idx], targets[idx], drop)

    def write_weights(folder: Path, ema, step: int) -> None:
        write_prior_ar(folder, prior, meta["clip_sha256"], state=ema.shadow)

    return train(stage_dir, prior, preset, step_loss, write_weights, resume=resume,
                 extra_info={"clip_sha256": meta["clip_sha256"], "n_components": tok.K}, progress=progress)


def write_prior_ar(folder: Path, prior: ARPrior, clip_sha256: str, state: dict | None = None) -> None:
    """``model.safetensors`` (``state``, e.g. the EMA weights, or the model's own), ``tokenizer.safetensors``,
    ``config.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / "model.safetensors", prior, state)
    save_file(prior.tokenizer.to_tensors(), str(folder / "tokenizer.safetensors"))
    write_config(folder, prior.cfg, prior.sampling, clip_sha256=clip_sha256, embed_dim=prior.embed_dim,
                 text_width=prior.text_width, context_length=prior.context_length, n_components=prior.tokenizer.K)


def load_tokenizer(run_dir: Path) -> PCATokenizer:
    """The run's fitted tokenizer, checked against the run's current CLIP."""
    run_dir = Path(run_dir)
    folder = stage_dir(run_dir, STAGE)
    if not (folder / "config.json").exists():
        raise UserError(f"{run_dir} has no AR prior; run `minidalle2 train prior-ar --run-dir {run_dir}`")
    tok = PCATokenizer.from_tensors(read_tensors(folder / "tokenizer.safetensors"))
    check_clip(run_dir, tok.clip_sha256, f"the AR prior's tokenizer in {folder}", "prior-ar")
    return tok


def load_prior_ar(run_dir: Path) -> ARPrior:
    """The trained AR prior (EMA weights, eval mode) with its tokenizer, checked against the run's current CLIP."""
    run_dir = Path(run_dir)
    folder = stage_dir(run_dir, STAGE)
    tok = load_tokenizer(run_dir)
    saved = read_config(folder, PRESETS["quick"])
    if saved["clip_sha256"] != tok.clip_sha256:
        raise UserError(f"{folder}/config.json and tokenizer.safetensors name different CLIPs; retrain "
                        f"`minidalle2 train prior-ar --run-dir {run_dir}` in a new run dir")
    prior = ARPrior(ARPriorConfig(**saved["model"]), tok, saved["text_width"], saved["context_length"],
                    ARPriorSampling(**saved["sample"]))
    try:
        prior.load_state_dict(read_tensors(folder / "model.safetensors"))
    except RuntimeError as e:
        raise UserError(f"{folder}/model.safetensors does not match its config.json ({str(e)[:80]}...); "
                        "retrain it") from None
    return prior.eval()
