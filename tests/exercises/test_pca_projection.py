"""Exercise pca_projection: c = (z_i - mean) U^T and back, checked against scikit-learn's PCA."""

import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from minidalle2.prior_ar_tokenizer import PCATokenizer

pytestmark = pytest.mark.ex_pca_projection


def embeddings(N=80, D=6):
    """Points with very different spreads along D random directions, around a mean away from 0."""
    scales = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2, 0.1])[:D]
    rotation = torch.linalg.qr(torch.randn(D, D))[0]
    return (torch.randn(N, D) * scales) @ rotation + torch.randn(D)


def test_to_pca_matches_scikit_learn():
    z = embeddings()
    tok = PCATokenizer(n_components=3).fit(z)
    c = tok.to_pca(z)
    assert c.shape == (80, 3)
    ref = torch.from_numpy(PCA(n_components=3).fit_transform(z.double().numpy())).float()
    sign = torch.sign((c * ref).sum(0))  # a component's sign is arbitrary
    torch.testing.assert_close(c, ref * sign, atol=1e-4, rtol=1e-4)


def test_from_pca_inverts_to_pca_when_every_component_is_kept():
    """With K = D, PCA is a rotation about the mean: nothing is lost, and from_pca lands back on the sphere."""
    z = embeddings()
    tok = PCATokenizer(n_components=6).fit(z)
    torch.testing.assert_close(tok.from_pca(tok.to_pca(z)), F.normalize(z, dim=-1), atol=1e-5, rtol=1e-5)
