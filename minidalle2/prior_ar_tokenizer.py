"""The AR prior's tokenizer (§2.2): a CLIP image embedding z_i as K discrete tokens, and z_i . z_t as one more.

  1. PCA. CLIP image embeddings live near a low-dimensional subspace; the paper keeps the 319 principal
     components (of 1024) that reconstruct z_i with under 1 % error. ``PCATokenizer`` fits scikit-learn's PCA on
     the training z_i and keeps the top K components (by count, or by an explained-variance threshold).
  2. Quantization. Each kept coordinate c_k = (z_i - mean) . u_k is cut into B uniform buckets over its
     training range [lo_k, hi_k]; the token is its bucket index, and decoding uses the bucket centre, so
     |c_k - centre_k| <= (hi_k - lo_k) / (2 B) on the training data.
  3. The dot-product token. z_i . z_t (how well the caption describes the image) is quantized into B
     buckets of its own over its training range; the prior (prior_ar.py) places it *before* the z_i tokens.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA



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
            raise ValueError(f"n_buckets is {n_buckets}; quantizing needs at least 2 buckets per component")
        if n_components is not None and n_components < 1:
            raise ValueError(f"n_components is {n_components}; keep at least 1 PCA component")
        if not 0 < variance <= 1:
            raise ValueError(f"variance threshold is {variance}; choose a fraction in (0, 1], e.g. 0.99")
        self.n_components, self.variance, self.n_buckets = n_components, variance, n_buckets
        self.clip_sha256 = clip_sha256

    # PCA -----------------------------------------------------------------------------------------------------

    def fit(self, z_i: torch.Tensor, z_t: torch.Tensor | None = None) -> "PCATokenizer":
        """Fit PCA and the bucket ranges on training z_i (N, D); with z_t, also the range of z_i . z_t."""
        N, D = z_i.shape
        if self.n_components is not None and self.n_components > D:
            raise ValueError(f"n_components is {self.n_components} but the embeddings have only {D} dimensions; "
                            f"keep at most {D}")
        if N < max(2, self.n_components or 0):
            raise ValueError(f"PCA of {self.n_components or 2} components needs at least as many embeddings, got {N}")
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
            raise ValueError(f"embeddings of shape {tuple(z.shape)} do not fit this tokenizer (N, {self.embed_dim}); "
                            "use embeddings of the CLIP it was fitted on")

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
            raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not fit this tokenizer (N, {self.K})")
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
            raise ValueError(f"the tokenizer tensors lack {e}") from None
        return tok
