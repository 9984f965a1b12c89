"""Issue 24 (docs/two_objects.json, prior_whitening.loss_weighting): the full preset's diffusion prior trained with
the shipped loss plus a weighted whitened one (K top principal directions of the train z_i, each at unit variance),

    L = mean_D (x^_0 - x_0)^2 + W mean_K ((x^_0 - x_0) V_K^T / (sqrt(D) sigma_K))^2; sampling unchanged.

RUN: a copy of data/pretrained without prior_diffusion/, its embedding cache holding the train split
(``minidalle2.embeddings.cache_embeddings(RUN)``).

    python docs/scripts/prior_whitened_loss.py W K RUN"""
import sys
import torch
from minidalle2.embeddings import load_embeddings
from minidalle2.tools.cli import main
from prior_extra_loss import add_term

W, K, RUN = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
Z = load_embeddings(RUN, "train")["z_i"].float()
_, S, V = torch.linalg.svd(Z - Z.mean(0), full_matrices=False)
SIG, VK = S[:K] / (len(Z) - 1) ** 0.5, V[:K]


def whitened(prior, predicted, z_i):
    """W mean_K ((x^_0 - x_0) V_K^T / (sqrt(D) sigma_K))^2."""
    err = predicted - z_i * prior.scale
    return W * (((err @ VK.T) / (SIG * prior.scale)) ** 2).mean()


add_term(whitened)
sys.exit(main(["train", "prior-diffusion", "--preset", "full", "--run-dir", RUN, "--no-progress"]))
