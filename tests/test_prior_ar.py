"""The AR prior: PCA tokenizer checked against scikit-learn, the sequence layout, causality, training, save/load."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.decomposition import PCA

from minidalle2.checkpoint import save_weights, write_config
from minidalle2.embeddings import load_embeddings
from minidalle2.errors import UserError
from minidalle2.evaluation.stages import pca_report
from minidalle2.presets import PRIOR_AR as PRESETS
from minidalle2.prior_ar import ARPrior, filter_probs, fit_tokenizer
from minidalle2.prior_ar_tokenizer import PCATokenizer
from minidalle2.runs import load, train


def write_prior_ar(folder, prior, clip_sha256):
    """The files ``runs.train`` writes for the AR prior, from a prior in memory."""
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / "model.safetensors", prior)
    save_file(prior.tokenizer.to_tensors(), str(folder / "tokenizer.safetensors"))
    write_config(folder, prior.cfg, prior.sampling, clip_sha256=clip_sha256, embed_dim=prior.embed_dim,
                 text_width=prior.text_width, context_length=prior.context_length, n_components=prior.tokenizer.K)


@pytest.fixture(scope="module")
def train_emb(clip_run):
    return load_embeddings(clip_run[0], "train")


@pytest.fixture(scope="module")
def tiny_prior(train_emb):
    """An untrained tiny prior (random weights, fixed seed) over the tiny CLIP's embeddings."""
    cfg = PRESETS["tiny"]
    torch.manual_seed(0)
    meta = train_emb["meta"]
    return ARPrior(cfg.model, fit_tokenizer(cfg.model, train_emb), meta["text_width"], meta["context_length"],
                   cfg.sample).eval()


@pytest.fixture(scope="module")
def trained_run(clip_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("ar") / "run"
    shutil.copytree(clip_run[0], run)
    info = train("prior-ar", run, PRESETS["tiny"], progress=False, log=lambda *a: None)
    return run, info


def test_pca_matches_sklearn_and_the_covariance_eigenvectors(train_emb):
    z = train_emb["z_i"]
    tok = PCATokenizer(variance=0.95).fit(z)
    ref = PCA(n_components=tok.K).fit(z.double().numpy())
    # K is the smallest count reaching 95 % of the variance
    ratio = np.cumsum(PCA().fit(z.double().numpy()).explained_variance_ratio_)
    assert ratio[tok.K - 1] >= 0.95 > ratio[tok.K - 2]
    sign = torch.sign((tok.components * torch.from_numpy(ref.components_).float()).sum(-1, keepdim=True))
    torch.testing.assert_close(tok.components * sign, torch.from_numpy(ref.components_).float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(tok.explained_variance, torch.from_numpy(ref.explained_variance_).float())
    torch.testing.assert_close(tok.to_pca(z), torch.from_numpy(ref.transform(z.double().numpy())).float() * sign.T,
                               atol=1e-5, rtol=0)
    # the same from first principles: eigenvectors of the covariance, by decreasing eigenvalue
    evals, evecs = torch.linalg.eigh(torch.cov(z.double().T))
    top = evecs.flip(-1)[:, :tok.K].T.float()  # (K, D)
    assert torch.allclose(evals.flip(0)[:tok.K].float(), tok.explained_variance, rtol=1e-4)
    assert torch.allclose((top * tok.components).sum(-1).abs(), torch.ones(tok.K), atol=1e-3)


def test_quantization_error_is_at_most_half_a_bucket(train_emb):
    z = train_emb["z_i"]
    tok = PCATokenizer(n_components=10, n_buckets=16).fit(z)
    tokens = tok.encode(z)
    assert tokens.dtype == torch.long and tokens.shape == (len(z), 10)
    assert tokens.min() >= 0 and tokens.max() == 15
    centres = tok.lo + (tokens + 0.5) * tok.bucket_width()  # (N, K)
    assert ((tok.to_pca(z) - centres).abs() <= tok.bucket_width() / 2 + 1e-6).all()
    decoded = tok.decode(tokens)
    torch.testing.assert_close(decoded.norm(dim=-1), torch.ones(len(z)))
    report = pca_report(tok, z)
    assert report["cos_quantized"] <= report["cos_pca"] + 1e-4 and report["cos_pca"] > 0.5


def test_more_buckets_and_components_reconstruct_better(train_emb):
    z = train_emb["z_i"]
    coarse, fine = (pca_report(PCATokenizer(n_components=8, n_buckets=b).fit(z), z) for b in (4, 64))
    assert fine["cos_quantized"] > coarse["cos_quantized"]
    everything = pca_report(PCATokenizer(n_components=z.shape[1]).fit(z), z)
    assert everything["cos_pca"] > 0.9999


def test_tokenizer_safetensors_round_trip(train_emb):
    z, meta = train_emb["z_i"], train_emb["meta"]
    tok = PCATokenizer(n_components=6, n_buckets=8, clip_sha256=meta["clip_sha256"]).fit(z, train_emb["z_t"])
    again = PCATokenizer.from_tensors(tok.to_tensors())
    assert again.clip_sha256 == meta["clip_sha256"] and again.embed_dim == z.shape[1]
    tokens = tok.encode(z)
    assert torch.equal(again.encode(z), tokens) and torch.equal(again.decode(tokens), tok.decode(tokens))
    dot = tok.encode_dot(z, train_emb["z_t"])
    assert torch.equal(again.encode_dot(z, train_emb["z_t"]), dot) and dot.min() == 0 and dot.max() == 7


def test_sequence_layout(tiny_prior, train_emb):
    """[text 0..L-1 | z_t at L | dot at L+1 | z_k at L+1+k], padding masked, the null caption unmasked."""
    p, n = tiny_prior, 3
    text, mask, z_t = train_emb["text_tokens"][:n], train_emb["text_mask"][:n], train_emb["z_t"][:n]
    tokens = torch.randint(p.tokenizer.n_buckets, (n, p.tokenizer.K))  # [dot, z_1 .. z_{K-1}]
    seq, key_mask = p.sequence(text, mask, z_t, tokens)
    L = text.shape[1]
    assert seq.shape == (n, L + 1 + p.tokenizer.K, p.cfg.width)
    torch.testing.assert_close(seq[:, :L], p.caption.text_in(text))
    torch.testing.assert_close(seq[:, L], p.caption.z_t_in(z_t))
    B, table = p.tokenizer.n_buckets, p.token_embedding.weight  # token j has its own B rows: j*B .. j*B + B-1
    torch.testing.assert_close(seq[:, L + 1], table[tokens[:, 0]])
    for k in range(1, p.tokenizer.K):
        torch.testing.assert_close(seq[:, L + 1 + k], table[k * B + tokens[:, k]])
    assert torch.equal(key_mask[:, :L], mask) and key_mask[:, L:].all()
    seq_null, mask_null = p.sequence(text, mask, z_t, tokens, drop=torch.tensor([True, False, False]))
    torch.testing.assert_close(seq_null[0, :L], p.caption.null_text)
    torch.testing.assert_close(seq_null[0, L], p.caption.null_z_t)
    assert mask_null[0].all() and torch.equal(seq_null[1:], seq[1:])


def test_causal_mask_later_tokens_never_change_earlier_logits(tiny_prior, train_emb):
    p, K = tiny_prior, tiny_prior.tokenizer.K
    args = (train_emb["text_tokens"][:2], train_emb["text_mask"][:2], train_emb["z_t"][:2])
    tokens = torch.randint(p.tokenizer.n_buckets, (2, K))
    with torch.no_grad():
        base = p(*args, tokens)  # (2, K + 1, B): logits[:, j] predicts token j
        for j in range(K):
            changed = tokens.clone()
            changed[:, j] = (changed[:, j] + 1) % p.tokenizer.n_buckets
            out = p(*args, changed)
            torch.testing.assert_close(out[:, :j + 1], base[:, :j + 1])  # token j is seen from logit j+1 on
            assert not torch.allclose(out[:, j + 1:], base[:, j + 1:])


def test_top_half_keeps_the_buckets_above_the_median():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.6, 0.2, 0.1, 0.1]])
    kept = filter_probs(probs.log(), top_half=True)
    # the medians are bucket 2 (row 0) and bucket 0 (row 1)
    torch.testing.assert_close(kept, torch.tensor([[0, 0, 3 / 7, 4 / 7], [0.6, 0.2, 0.1, 0.1]]))
    torch.testing.assert_close(filter_probs(probs.log(), top_k=1), torch.tensor([[0, 0, 0, 1.0], [1.0, 0, 0, 0]]))
    torch.testing.assert_close(filter_probs(probs.log(), top_p=0.75),
                               torch.tensor([[0, 0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9], [0.75, 0.25, 0, 0]]))


def test_sampling_returns_unit_norm_embeddings(tiny_prior, train_emb):
    n = 5
    args = (train_emb["text_tokens"][:n], train_emb["text_mask"][:n], train_emb["z_t"][:n])
    for kw in ({}, {"guidance": 3.0, "top_k": 4}, {"top_p": 0.9, "temperature": 0.7, "dot_top_half": False}):
        z_i, tokens = tiny_prior.sample(*args, generator=torch.Generator().manual_seed(0), return_tokens=True, **kw)
        assert z_i.shape == (n, train_emb["z_i"].shape[1]) and z_i.dtype == torch.float32
        torch.testing.assert_close(z_i.norm(dim=-1), torch.ones(n))
        assert tokens.shape == (n, tiny_prior.tokenizer.K + 1)


def test_sampling_defaults_come_from_the_config(tiny_prior, train_emb):
    """The default top_k = 2 draws between the two likeliest buckets, so the seed matters; top_k = 1 picks the
    likeliest bucket, so the seed no longer matters."""
    cfg, B = tiny_prior.sampling, tiny_prior.tokenizer.n_buckets
    args = (train_emb["text_tokens"][:8], train_emb["text_mask"][:8], train_emb["z_t"][:8])

    def draw(seed, **kw):
        return tiny_prior.sample(*args, generator=torch.Generator().manual_seed(seed), **kw)

    assert cfg.top_k == 2
    assert not torch.equal(draw(0), draw(1))
    assert torch.equal(draw(0), draw(0, guidance=cfg.guidance, temperature=cfg.temperature, top_k=2))
    assert torch.equal(draw(0, top_k=1), draw(1, top_k=1))
    assert not torch.equal(draw(0, top_k=B), draw(1, top_k=B))


def test_a_few_steps_lower_the_loss(trained_run):
    run, info = trained_run
    h = info["history"]
    assert len(h) == PRESETS["tiny"].train.steps
    assert np.mean(h[-5:]) < np.mean(h[:5]) - 0.3
    for name in ("model.safetensors", "tokenizer.safetensors", "config.json", "train_state.json"):
        assert (run / "prior_ar" / name).exists()
    prior = load("prior-ar", run)
    assert not prior.training and prior.tokenizer.K == PRESETS["tiny"].model.n_components


def test_save_load_round_trip_gives_identical_samples(tiny_prior, train_emb, clip_run_copy):
    write_prior_ar(clip_run_copy / "prior_ar", tiny_prior, train_emb["meta"]["clip_sha256"])
    loaded = load("prior-ar", clip_run_copy)
    args = (train_emb["text_tokens"][:4], train_emb["text_mask"][:4], train_emb["z_t"][:4])
    a = tiny_prior.sample(*args, guidance=2.0, generator=torch.Generator().manual_seed(1))
    b = loaded.sample(*args, guidance=2.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_resume_refits_the_same_tokenizer(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    cfg = dataclasses.replace(PRESETS["tiny"])
    with pytest.raises(UserError, match="already exists"):
        train("prior-ar", run, cfg, progress=False, log=lambda *a: None)
    info = train("prior-ar", run, cfg, resume=True, progress=False, log=lambda *a: None)
    assert info["step"] == cfg.train.steps
    saved = load("prior-ar", run).tokenizer
    refit = fit_tokenizer(cfg.model, load_embeddings(run, "train"))
    assert all(torch.equal(a, b) for a, b in zip(saved.to_tensors().values(), refit.to_tensors().values()))


def test_bad_input_is_refused(train_emb, clip_run, clip_run_copy, tiny_prior):
    z = train_emb["z_i"]
    D = z.shape[1]
    with pytest.raises(ValueError, match=f"only {D} dimensions"):
        PCATokenizer(n_components=D + 1).fit(z)
    with pytest.raises(ValueError, match="at least 2 buckets"):
        PCATokenizer(n_buckets=1)
    tok = PCATokenizer(n_components=4).fit(z)
    with pytest.raises(ValueError, match=f"do not fit this tokenizer \\(N, {D}\\)"):
        tok.encode(torch.randn(3, D + 2))
    with pytest.raises(UserError, match="minidalle2 train prior-ar --run-dir"):
        load("prior-ar", clip_run[0])
    # a prior and tokenizer fitted on another CLIP's embeddings
    folder = clip_run_copy / "prior_ar"
    write_prior_ar(folder, tiny_prior, "ab" * 32)
    tensors = dict(tiny_prior.tokenizer.to_tensors(), clip_sha256=torch.tensor([0xAB] * 32, dtype=torch.uint8))
    save_file(tensors, str(folder / "tokenizer.safetensors"))
    with pytest.raises(UserError, match="another CLIP"):
        load("prior-ar", clip_run_copy)
    with pytest.raises(UserError, match="another CLIP"):
        pca_report(clip_run_copy, z)
