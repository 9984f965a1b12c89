"""Distribution metrics on CLIP image embeddings: how close generated images are to real ones, as a whole.

The oracle (oracle.py) checks each image against its prompt. These numbers look at the set instead, the way
the paper's FID does, but in our own CLIP's embedding space (no Inception network is trained on shapes):

    fd_clip   = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))    Frechet distance of two fitted Gaussians
    cmmd      = MMD^2 with k(x, y) = exp(-||x - y||^2 / (2 sigma^2))     no Gaussian assumption (Jayasumana et
                                                                          al. 2024, "Rethinking FID")
    clip_score = mean cos(z_i of the image, z_t of its prompt)           does the image match its caption?
    diversity = mean ||z_a - z_b|| over pairs of images of one prompt    do samples of one prompt differ?

sigma is the median heuristic: the median distance between all pairs of the pooled embeddings.

Coverage looks at what a caption left open ("a red circle": where? how big?) over a prompt's n images, against
the data's distribution p of that attribute given the caption (uniform over its K possible values):

    normalised entropy = H(q) / log K,   q the empirical distribution over the K values      1: every mode, evenly
    total variation    = 1/2 sum_v |q(v) - p(v)|, values outside p's support included        0: q = p
"""

from __future__ import annotations

import torch

from minidalle2.errors import UserError


def _check_sets(x: torch.Tensor, y: torch.Tensor, minimum: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise UserError(f"need two sets of embeddings (N, D) with the same D; got {tuple(x.shape)} and "
                        f"{tuple(y.shape)}")
    if len(x) < minimum or len(y) < minimum:
        raise UserError(f"need at least {minimum} embeddings in each set; got {len(x)} and {len(y)}")
    return x.double(), y.double()


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """FD between Gaussians fitted to the rows of x (N, D) and y (M, D).

    Tr((S_x S_y)^(1/2)) = sum sqrt(eig(S_x^(1/2) S_y S_x^(1/2))): the middle matrix is symmetric PSD, so a
    symmetric eigensolver suffices (the product S_x S_y itself is not symmetric).
    """
    x, y = _check_sets(x, y)
    mu_x, mu_y = x.mean(0), y.mean(0)
    s_x, s_y = torch.cov(x.T), torch.cov(y.T)  # (D, D)
    w, v = torch.linalg.eigh(s_x)
    root_x = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T  # S_x^(1/2)
    tr_root = torch.linalg.eigvalsh(root_x @ s_y @ root_x).clamp(min=0).sqrt().sum()
    return ((mu_x - mu_y).square().sum() + s_x.trace() + s_y.trace() - 2 * tr_root).item()


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> float:
    """sigma = median of ||a - b|| over all pairs a != b of the pooled set."""
    z = torch.cat([x, y]).double()
    d = torch.cdist(z, z)
    return d[~torch.eye(len(z), dtype=torch.bool)].median().item()


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, sigma: float | None = None) -> float:
    """Unbiased MMD^2 between the rows of x (N, D) and y (N, D) with an RBF kernel (sigma: median heuristic):

        MMD^2_u = 1 / (N (N - 1)) sum_{i != j} [k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(x_j, y_i)]

    the estimator of Gretton et al. (2012, eq. 3) for two sets of one size. Leaving out the pairs (x_i, y_i) too
    matters here: x_i and y_i are images of the same prompt, and that pair is more alike than two random draws.
    Zero in expectation when both sets come from one distribution (so it can come out slightly negative).
    """
    x, y = _check_sets(x, y)
    if len(x) != len(y):
        raise UserError(f"the MMD estimator compares sets of one size; got {len(x)} and {len(y)} embeddings")
    sigma = median_bandwidth(x, y) if sigma is None else sigma
    if not sigma > 0:
        raise UserError("all embeddings are identical, so the MMD bandwidth is 0; compare sets that vary")
    k = lambda a, b: torch.exp(-torch.cdist(a, b).square() / (2 * sigma**2))  # noqa: E731  (N, N)
    n = len(x)
    h = k(x, x) + k(y, y) - k(x, y) - k(y, x)  # (N, N)
    return ((h.sum() - h.diagonal().sum()) / (n * (n - 1))).item()


def clip_score(z_i: torch.Tensor, z_t: torch.Tensor) -> float:
    """mean_k cos(z_i^k, z_t^k) for matching rows."""
    return torch.nn.functional.cosine_similarity(z_i.double(), z_t.double(), dim=-1).mean().item()


def diversity(z: torch.Tensor, n: int) -> float | None:
    """Mean distance between two different images of one prompt, averaged over prompts; z is (P * n, D) in
    prompt-major order (the n images of prompt 0 first). None when n < 2 (no pairs)."""
    if n < 2:
        return None
    if len(z) % n:
        raise UserError(f"{len(z)} embeddings do not split into groups of n={n} images per prompt")
    groups = z.double().view(-1, n, z.shape[-1])  # (P, n, D)
    d = torch.cdist(groups, groups)  # (P, n, n)
    return (d.sum((1, 2)) / (n * (n - 1))).mean().item()


def coverage(values: list, support: list) -> dict[str, float]:
    """Normalised entropy and total-variation distance of observed ``values`` against the uniform distribution on
    ``support`` (the values the data gives this attribute under this caption). No values: nothing covered."""
    if len(support) < 2:
        raise UserError(f"coverage needs an attribute with at least 2 possible values; got {support}")
    if not values:
        return {"entropy": 0.0, "tv": 1.0}
    counts = {v: values.count(v) for v in set(values)}
    inside = torch.tensor([counts.get(v, 0) for v in support], dtype=torch.float64)
    entropy = 0.0
    if inside.sum() > 0:
        q = inside[inside > 0] / inside.sum()
        entropy = max(0.0, float(-(q * q.log()).sum() / torch.log(torch.tensor(float(len(support))))))  # not -0.0
    q_all = {v: c / len(values) for v, c in counts.items()}
    tv = 0.5 * (sum(abs(q_all.get(v, 0.0) - 1 / len(support)) for v in support)
                + sum(c for v, c in q_all.items() if v not in support))
    return {"entropy": round(entropy, 4), "tv": round(tv, 4)}
