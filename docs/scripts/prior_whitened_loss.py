"""Issue 24 (docs/two_objects.json, prior_whitening.loss_weighting): the full preset's diffusion prior trained with
the shipped loss plus a weighted whitened one (K top principal directions of the train z_i, each at unit variance),

    L = mean_D (x^_0 - x_0)^2 + W mean_K ((x^_0 - x_0) V_K^T / (sqrt(D) sigma_K))^2; sampling unchanged.

RUN: a copy of data/pretrained without prior_diffusion/, its embedding cache holding the train split
(``minidalle2.embeddings.cache_embeddings(RUN)``).

    python docs/scripts/prior_whitened_loss.py W K RUN"""
import sys
import torch
from minidalle2.embeddings import load_embeddings
from minidalle2.prior_diffusion import DiffusionPrior
from minidalle2.tools.cli import main

W, K, RUN = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
Z = load_embeddings(RUN, "train")["z_i"].float()
_, S, V = torch.linalg.svd(Z - Z.mean(0), full_matrices=False)
SIG, VK = S[:K] / (len(Z) - 1) ** 0.5, V[:K]


shipped_loss = DiffusionPrior.loss


def loss(self, z_i, text_tokens, text_mask, z_t, generator=None):
    """The shipped loss, with the prediction it made kept for the whitened term."""
    predicted = []

    def recording(*args, **kwargs):
        out = type(self).forward(self, *args, **kwargs)
        predicted.append(out)
        return out

    self.forward = recording  # nn.Module.__call__ looks forward up on the instance first
    try:
        base = shipped_loss(self, z_i, text_tokens, text_mask, z_t, generator=generator)
    finally:
        del self.forward
    err = predicted[0] - z_i * self.scale
    return base + W * (((err @ VK.T) / (SIG * self.scale)) ** 2).mean()


DiffusionPrior.loss = loss
sys.exit(main(["train", "prior-diffusion", "--preset", "full", "--run-dir", RUN, "--no-progress"]))
