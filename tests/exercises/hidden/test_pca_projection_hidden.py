"""Exercise pca_projection, hidden tests: decorrelation, the truncated inverse, and the mean."""

import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

from minidalle2.prior_ar_tokenizer import PCATokenizer

pytestmark = pytest.mark.ex_pca_projection


def embeddings(N=100, D=5):
    rotation = torch.linalg.qr(torch.randn(D, D))[0]
    return (torch.randn(N, D) * torch.tensor([2.0, 1.5, 1.0, 0.3, 0.1])) @ rotation + 0.5


def test_coordinates_are_uncorrelated_with_the_eigenvalues_as_variances():
    z = embeddings()
    tok = PCATokenizer(n_components=4).fit(z)
    c = tok.to_pca(z).double()
    cov = c.T @ c / (len(c) - 1)  # the coordinates have mean 0 on the training data
    ref = torch.from_numpy(PCA(n_components=4).fit(z.double().numpy()).explained_variance_)
    torch.testing.assert_close(cov, torch.diag(ref), atol=1e-4, rtol=1e-4)


def test_truncated_inverse_matches_scikit_learn():
    z = embeddings()
    tok = PCATokenizer(n_components=2).fit(z)
    pca = PCA(n_components=2).fit(z.double().numpy())
    ref = torch.from_numpy(pca.inverse_transform(pca.transform(z.double().numpy()))).float()
    torch.testing.assert_close(tok.from_pca(tok.to_pca(z)), F.normalize(ref, dim=-1), atol=1e-4, rtol=1e-4)


def test_the_mean_is_the_origin_of_pca_space():
    z = embeddings()
    tok = PCATokenizer(n_components=3).fit(z)
    torch.testing.assert_close(tok.to_pca(z.mean(0, keepdim=True)), torch.zeros(1, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(tok.from_pca(torch.zeros(1, 3)), F.normalize(z.mean(0, keepdim=True), dim=-1),
                               atol=1e-5, rtol=1e-5)
