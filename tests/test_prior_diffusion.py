"""The diffusion prior: its token sequence, causal mask, training, sampling and bad input."""

import dataclasses
import json

import pytest
import torch

from minidalle2.embeddings import load_embeddings
from minidalle2.errors import UserError
from minidalle2.evaluation.stages import evaluate_priors, format_priors_report
from minidalle2.presets import PRIOR_DIFFUSION as PRESETS
from minidalle2.prior_diffusion import DiffusionPrior
from minidalle2.runs import load, train

QUIET = dict(progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def batch(clip_run):
    emb = load_embeddings(clip_run[0], "test")
    return {k: emb[k][:6] for k in ("z_i", "z_t", "text_tokens", "text_mask")}, emb["meta"]


def make_prior(meta):
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    return DiffusionPrior(cfg.model, meta["embed_dim"], meta["text_width"], meta["context_length"], cfg.sample).eval()


def test_sequence_layout_is_text_then_zt_t_zi_final(batch):
    b, meta = batch
    prior = make_prior(meta)
    x_t, t = torch.randn(6, meta["embed_dim"]), torch.full((6,), 500)
    seq, key_mask = prior.sequence(x_t, t, b["text_tokens"], b["text_mask"], b["z_t"])
    L = int(b["text_mask"].sum(1).max())  # padding after the longest caption is cut
    assert L < meta["context_length"] and not b["text_mask"][:, L:].any()
    assert seq.shape == (6, L + 4, prior.cfg.width)
    assert torch.allclose(seq[:, :L], prior.caption.text_in(b["text_tokens"][:, :L]))
    assert torch.allclose(seq[:, L], prior.caption.z_t_in(b["z_t"] * prior.scale))
    assert torch.allclose(seq[:, L + 2], prior.z_i_in(x_t))
    assert torch.equal(seq[:, L + 3], prior.final_token.expand(6, -1))
    assert torch.equal(key_mask[:, :L], b["text_mask"][:, :L]) and key_mask[:, L:].all()


def test_causal_mask_a_later_token_never_changes_an_earlier_output(batch):
    b, meta = batch
    prior = make_prior(meta)
    seq, key_mask = prior.sequence(torch.randn(6, meta["embed_dim"]), torch.full((6,), 10), b["text_tokens"],
                                   b["text_mask"], b["z_t"])
    L = int(b["text_mask"].sum(1).max())
    changed = seq.clone()
    # perturb the noised z_i token (not by a constant: LayerNorm would remove that, and nothing could change)
    changed[:, L + 2] += 5.0 * torch.randn(changed[:, L + 2].shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h, h2 = prior.transformer(seq, key_mask), prior.transformer(changed, key_mask)
    assert torch.allclose(h[:, :L + 2], h2[:, :L + 2], atol=1e-6)
    assert not torch.allclose(h[:, L + 3], h2[:, L + 3])


def test_dropped_caption_ignores_the_caption(batch):
    b, meta = batch
    prior = make_prior(meta)
    x_t, t, drop = torch.randn(6, meta["embed_dim"]), torch.full((6,), 300), torch.ones(6, dtype=torch.bool)
    with torch.no_grad():
        a = prior(x_t, t, b["text_tokens"], b["text_mask"], b["z_t"], drop=drop)
        other = prior(x_t, t, b["text_tokens"].roll(1, 0), b["text_mask"].roll(1, 0), b["z_t"].roll(1, 0), drop=drop)
        cond = prior(x_t, t, b["text_tokens"], b["text_mask"], b["z_t"])
    assert torch.allclose(a, other, atol=1e-5) and not torch.allclose(a, cond)


def test_guidance_scale_one_is_the_conditional_sample(batch):
    b, meta = batch
    prior = make_prior(meta)
    args = (b["text_tokens"], b["text_mask"], b["z_t"])
    one = prior.sample(*args, guidance=1.0, generator=torch.Generator().manual_seed(1))
    assert one.shape == (6, meta["embed_dim"])
    assert torch.allclose(one.norm(dim=-1), torch.ones(6), atol=1e-5)
    again = prior.sample(*args, guidance=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(one, again)  # DDIM with eta = 0 and the same noise is deterministic
    guided = prior.sample(*args, guidance=3.0, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(one, guided)


def test_best_of_two_keeps_the_candidate_closer_to_z_t(batch):
    b, meta = batch
    prior = make_prior(meta)
    args = (b["text_tokens"], b["text_mask"], b["z_t"])
    best = prior.sample(*args, best_of=2, generator=torch.Generator().manual_seed(3))
    # the two candidates are the rows 2k and 2k+1 of a best_of=1 draw of the repeated batch with the same noise
    rep = [x.repeat_interleave(2, 0) for x in args]
    both = prior.sample(*rep, best_of=1, generator=torch.Generator().manual_seed(3)).view(6, 2, -1)
    dots = (both * b["z_t"][:, None]).sum(-1)
    assert torch.allclose(best, both[torch.arange(6), dots.argmax(1)], atol=1e-5)


def test_training_lowers_the_loss_and_the_checkpoint_reloads(clip_run_copy, batch):
    info = train("prior-diffusion", clip_run_copy, PRESETS["tiny"], **QUIET)
    h = info["history"]
    assert sum(h[-5:]) / 5 < 0.8 * sum(h[:5]) / 5
    prior = load("prior-diffusion", clip_run_copy)
    b, _ = batch
    z = prior.sample(b["text_tokens"], b["text_mask"], b["z_t"], generator=torch.Generator().manual_seed(0))
    assert z.shape == b["z_t"].shape and torch.isfinite(z).all()
    result = evaluate_priors(clip_run_copy, n=20)
    assert set(result["diffusion"]) == {"cos_pred_true", "cos_pred_text", "cos_unrelated_text", "margin",
                                     "error_reduction", "wins"}
    r = result["diffusion"]
    assert r["margin"] == pytest.approx(r["cos_pred_true"] - result["baseline_cos_text_image"], abs=1e-6)
    assert "heldout_diffusion" in result and -1 <= result["baseline_cos_text_image"] <= 1
    assert result["mirror_cost"]["n"] <= 20 and "wrong layout costs" in format_priors_report(result)


def test_wrong_embedding_dimension_is_a_programmer_error(batch):
    b, meta = batch
    prior = make_prior(meta)
    with pytest.raises(AssertionError, match="another CLIP"):
        prior.sample(b["text_tokens"], b["text_mask"], torch.randn(6, meta["embed_dim"] + 1))
    with pytest.raises(AssertionError):
        prior.sample(b["text_tokens"], b["text_mask"], b["z_t"], steps=0)


def test_missing_clip_names_the_command(tmp_path):
    with pytest.raises(UserError, match="minidalle2 train clip"):
        train("prior-diffusion", tmp_path, PRESETS["tiny"], **QUIET)


def test_prior_of_another_clip_is_refused(clip_run_copy):
    tiny = PRESETS["tiny"]
    train("prior-diffusion", clip_run_copy, dataclasses.replace(tiny, train=dataclasses.replace(tiny.train, steps=2)),
          **QUIET)
    cfg_path = clip_run_copy / "prior_diffusion" / "config.json"
    saved = json.loads(cfg_path.read_text())
    saved["clip_sha256"] = "0" * 64
    cfg_path.write_text(json.dumps(saved))
    with pytest.raises(UserError, match="another CLIP"):
        load("prior-diffusion", clip_run_copy)


def test_non_finite_loss_stops_and_keeps_the_checkpoint(clip_run_copy, monkeypatch):
    tiny = PRESETS["tiny"]
    cfg = dataclasses.replace(tiny, train=dataclasses.replace(tiny.train, steps=40, ckpt_every=20))
    calls = {"n": 0}
    real = DiffusionPrior.loss

    def nan_after_25(self, *a, **k):
        calls["n"] += 1
        loss = real(self, *a, **k)
        return loss * float("nan") if calls["n"] > 25 else loss

    monkeypatch.setattr(DiffusionPrior, "loss", nan_after_25)
    with pytest.raises(UserError, match="loss became nan at step 25"):
        train("prior-diffusion", clip_run_copy, cfg, **QUIET)
    state = json.loads((clip_run_copy / "prior_diffusion" / "train_state.json").read_text())
    assert state["step"] == 20
    load("prior-diffusion", clip_run_copy)
