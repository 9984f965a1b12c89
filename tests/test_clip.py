"""CLIP stage: open_clip format round trip, training, the embedding cache, and bad input."""

import dataclasses
import json
import math
import subprocess
import sys

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from minidalle2 import clip as clip_mod
from minidalle2.checkpoint import read_json
from minidalle2.clip import build_clip, text_features
from minidalle2.data import ShapesDataset
from minidalle2.embeddings import (CONFIG, WEIGHTS, cache_embeddings, encode_image, encode_text, load_clip,
                                   load_embeddings, save_clip, split_embeddings, tokenize)
from minidalle2.presets import CLIP as PRESETS
from minidalle2.runs import train
from minidalle2.errors import UserError
from minidalle2.evaluation.stages import (binding_labels, evaluate_clip, full_captions, linear_probe_accuracy,
                                         modality_gap, probe_accuracy)

QUIET = dict(progress=False, log=lambda *a: None)


def with_training(preset, **train):
    """The preset with some of its training settings changed."""
    return dataclasses.replace(preset, train=dataclasses.replace(preset.train, **train))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "minidalle2", *args], capture_output=True, text=True,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_checkpoint_loads_with_plain_open_clip(clip_run):
    """Our run dir is open_clip's own local-dir format: open_clip loads it with no minidalle2 code."""
    run, _ = clip_run
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{run / 'clip'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{run / 'clip'}")
    ours = load_clip(run)
    tokens = tokenizer(["a small red circle in the top left"])
    assert tokens.shape[1] == PRESETS["tiny"].model.context_length
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.encode_text(tokens), ours.model.encode_text(tokens), atol=1e-6)
    weights = load_file(str(run / "clip" / WEIGHTS))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_text_features_match_open_clip_encode_text(clip_run):
    """Our opened-up text encoder gives exactly open_clip's z_t, plus per-token features."""
    clip = load_clip(clip_run[0])
    tokens = tokenize(clip, ["a big blue square in the bottom right", "red disc, top-left corner"])
    with torch.no_grad():
        z_t, feats, mask = text_features(clip.model, tokens)
        ref = clip.model.encode_text(tokens, normalize=True)
    assert torch.allclose(z_t, ref, atol=1e-6)
    assert feats.shape == (2, clip.context_length, clip.text_width)
    assert mask[:, 0].all() and mask.sum(1).tolist() == [(t > 0).sum().item() for t in tokens]


def test_training_lowers_the_loss(clip_run):
    history = clip_run[1]["history"]
    assert len(history) == PRESETS["tiny"].train.steps
    assert sum(history[-5:]) / 5 < 0.9 * sum(history[:5]) / 5


def test_a_run_with_both_kinds_of_hard_negative_trains_and_records_them(tmp_path, tiny_clip_cfg):
    """The training stage builds the swapped and the word-order captions and feeds both terms of the loss."""
    model = dataclasses.replace(tiny_clip_cfg.model, swap_negatives=0.5, order_negatives=0.5, order_margin=0.2)
    preset = dataclasses.replace(tiny_clip_cfg, model=model, train=dataclasses.replace(tiny_clip_cfg.train, steps=4,
                                                                                        ckpt_every=2))
    info = train("clip", tmp_path, preset, progress=False, log=lambda *a: None)
    assert len(info["history"]) == 4 and all(math.isfinite(x) for x in info["history"])
    saved = read_json(tmp_path / "clip" / "train_state.json")["config"]["model"]
    assert (saved["swap_negatives"], saved["order_negatives"], saved["order_margin"]) == (0.5, 0.5, 0.2)


def test_cache_matches_a_fresh_encode(clip_run):
    run, _ = clip_run
    clip = load_clip(run)
    test = load_embeddings(run, "test")
    ds = ShapesDataset("test", PRESETS["tiny"].data)
    assert test["captions"][:8] == ds.captions()[:8]
    assert torch.allclose(test["z_i"][:8], encode_image(clip, ds.images()[:8]), atol=1e-5)
    z_t, feats, mask = encode_text(clip, ds.captions()[:8])
    assert torch.allclose(test["z_t"][:8], z_t, atol=1e-5)
    assert torch.allclose(test["text_tokens"][:8], feats, atol=1e-2)  # stored as float16
    assert torch.equal(test["text_mask"][:8], mask)
    assert test["n_objects"].shape == (len(ds),)


def test_a_split_the_cache_lacks_is_encoded_on_demand_as_the_cache_would_hold_it(clip_run_copy):
    cached = load_embeddings(clip_run_copy, "train")
    assert split_embeddings(clip_run_copy, "train", n=6)["captions"] == cached["captions"][:6]
    meta_path = clip_run_copy / "embeddings" / "meta.json"  # drop train from the cache, as export does
    meta = json.loads(meta_path.read_text())
    del meta["splits"]["train"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="split 'train' is not in the cache"):
        load_embeddings(clip_run_copy, "train")
    fresh = split_embeddings(clip_run_copy, "train", n=6)
    assert fresh["captions"] == cached["captions"][:6] and fresh["attributes"] == cached["attributes"][:6]
    for key in ("z_i", "z_t", "text_mask", "n_objects", "color0"):
        assert torch.allclose(fresh[key].float(), cached[key][:6].float(), atol=1e-5), key
    assert torch.allclose(fresh["text_tokens"], cached["text_tokens"][:6], atol=1e-2)  # the cache holds float16


def test_interrupted_run_keeps_its_checkpoint_and_resumes_to_the_same_weights(tmp_path, tiny_clip_cfg, clip_run,
                                                                            monkeypatch):
    real_forward = open_clip.ClipLoss.forward
    calls = {"n": 0}

    def interrupt_at_step_25(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 26:
            raise KeyboardInterrupt
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(open_clip.ClipLoss, "forward", interrupt_at_step_25)
    with pytest.raises(KeyboardInterrupt):
        train("clip", tmp_path, tiny_clip_cfg, **QUIET)
    assert read_json(tmp_path / "clip" / "train_state.json")["step"] == 20  # ckpt_every = 20
    load_clip(tmp_path)  # the last good checkpoint is whole
    monkeypatch.setattr(open_clip.ClipLoss, "forward", real_forward)
    info = train("clip", tmp_path, tiny_clip_cfg, resume=True, **QUIET)
    assert info["step"] == tiny_clip_cfg.train.steps
    resumed, straight = load_file(str(tmp_path / "clip" / WEIGHTS)), load_file(str(clip_run[0] / "clip" / WEIGHTS))
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-5) for k in straight)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, tiny_clip_cfg, monkeypatch):
    cfg = with_training(tiny_clip_cfg, steps=20)
    train("clip", tmp_path, with_training(cfg, steps=10, ckpt_every=10), **QUIET)
    before = (tmp_path / "clip" / WEIGHTS).read_bytes()
    state = read_json(tmp_path / "clip" / "train_state.json")
    state["config"]["train"].update(steps=20, ckpt_every=20)  # continue the same run for longer
    (tmp_path / "clip" / "train_state.json").write_text(json.dumps(state))
    monkeypatch.setattr(open_clip.ClipLoss, "forward", lambda self, *a, **k: torch.tensor(float("nan")))
    with pytest.raises(UserError, match="loss became nan at step 10"):
        train("clip", tmp_path, cfg, resume=True, **QUIET)
    assert (tmp_path / "clip" / WEIGHTS).read_bytes() == before


def test_long_captions_are_truncated_with_a_warning_and_empty_ones_refused(clip_run):
    clip = load_clip(clip_run[0])
    warnings = []
    tokens = tokenize(clip, ["a red circle " * 20], warn=warnings.append)
    assert tokens.shape == (1, clip.context_length) and "truncated" in warnings[0]
    with pytest.raises(UserError, match="caption 1 is empty"):
        tokenize(clip, ["a red circle", "  "])


def test_corrupt_and_mismatched_checkpoints_are_refused(clip_run_copy):
    folder = clip_run_copy / "clip"
    cfg = json.loads((folder / CONFIG).read_text())
    cfg["model_cfg"]["embed_dim"] = 48
    (folder / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="does not match"):
        load_clip(clip_run_copy)
    (folder / WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not readable"):
        load_clip(clip_run_copy)


def test_cache_from_another_clip_is_refused(clip_run_copy, tiny_clip_cfg):
    other = build_clip(tiny_clip_cfg.model)
    save_clip(other, tiny_clip_cfg.model.model_cfg(), clip_run_copy / "clip")
    with pytest.raises(UserError, match="different CLIP"):
        load_embeddings(clip_run_copy, "test")


def test_evaluate_clip_reports_every_attribute(clip_run):
    result = evaluate_clip(clip_run[0])
    assert set(result["zero_shot_accuracy"]) == {"color", "shape", "size", "position"}
    assert all(0 <= v <= 1 for v in result["zero_shot_accuracy"].values())
    assert set(result["retrieval"]) == {"image_to_text_r1", "image_to_text_r5", "text_to_image_r1",
                                        "text_to_image_r5"}
    probe = result["binding_probe"]
    assert probe["n_test"] > 0 and set(probe["z_i"]) == {"color", "shape", "size", "position", "fully_right"}
    assert 0 <= probe["z_i"]["fully_right"] <= min(probe["z_i"][a] for a in ("color", "shape", "size", "position"))


def test_modality_gap_is_reported_for_full_and_partial_captions_and_retrieval_uses_full_ones(clip_run):
    result = evaluate_clip(clip_run[0])
    test = load_embeddings(clip_run[0], "test")
    full = full_captions(test)
    assert 0 < result["modality_gap"]["n_partial"] == int((~full).sum()) < len(full)  # the tiny preset: half partial
    cos = (test["z_i"] * test["z_t"]).sum(-1)
    assert result["modality_gap"]["full"] == pytest.approx(cos[full].mean().item(), abs=1e-4)
    assert result["modality_gap"]["partial"] == pytest.approx(cos[~full].mean().item(), abs=1e-4)
    for i in range(len(full)):  # a caption is full exactly when it names every clause its scene has
        stated = test["attributes"][i]["stated"].split()
        assert bool(full[i]) == (len(stated) == 4), test["captions"][i]
    gap = modality_gap(torch.eye(2), torch.tensor([[1.0, 0.0], [0.6, 0.8]]), torch.tensor([True, False]))
    assert gap == {"full": 1.0, "partial": 0.8, "n_partial": 1}


def test_input_size_gives_the_resnet_one_cell_per_quadrant():
    """At 32x32 the ResNet's attention pool sees one cell (plus its query token); upsampled to 64, a 2x2 grid."""
    for input_size, cells in ((32, 1), (64, 4)):
        cfg = dataclasses.replace(PRESETS["tiny"].model, input_size=input_size)
        model = build_clip(cfg).eval()
        assert model.visual.attnpool.positional_embedding.shape[0] == cells + 1
        z_i = model.encode_image(torch.zeros(1, 3, input_size, input_size))
        assert z_i.shape == (1, cfg.embed_dim)


def test_swap_loss_is_a_two_way_cross_entropy_against_the_swapped_caption():
    """L_swap rebuilt with F.cross_entropy over (own caption, swapped caption) for each image."""
    g = torch.Generator().manual_seed(0)
    z_i, z_t, z_swap = (torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=-1) for _ in range(3))
    logits = 10.0 * torch.stack([(z_i * z_t).sum(-1), (z_i * z_swap).sum(-1)], 1)  # (6, 2)
    ref = torch.nn.functional.cross_entropy(logits, torch.zeros(6, dtype=torch.long))
    assert torch.allclose(clip_mod.swap_loss(z_i, z_t, z_swap, 10.0), ref, atol=1e-6)
    assert clip_mod.swap_loss(z_i, z_i, -z_i, 10.0) < 1e-8  # the image's own caption wins by far: no loss
    # the margin m: a negative as near as the caption costs log 2 without it, and more with it
    assert clip_mod.swap_loss(z_i, z_t, z_t, 10.0) == pytest.approx(math.log(2), abs=1e-6)
    assert clip_mod.swap_loss(z_i, z_t, z_t, 10.0, margin=0.2) == pytest.approx(math.log(1 + math.exp(2)), abs=1e-5)


def test_training_loss_adds_each_kind_of_hard_negative_with_its_weight():
    """L = L_clip + swap_negatives L_swap + order_negatives L_order, each hard-negative term over its own images,
    rebuilt from the embeddings with open_clip's ClipLoss and swap_loss."""
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, vision_cfg={"image_size": 16, "patch_size": 8, "width": 32, "layers": 1,
                                                     "head_width": 16},
                           text_cfg={"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1})
    g = torch.Generator().manual_seed(1)
    x, tokens = torch.randn(4, 3, 16, 16, generator=g), torch.randint(1, 60, (4, 8), generator=g)
    swap, order = torch.randint(1, 60, (2, 8), generator=g), torch.randint(1, 60, (3, 8), generator=g)
    two, ordered = torch.tensor([True, False, True, False]), torch.tensor([True, True, False, True])
    cfg = clip_mod.ClipConfig(swap_negatives=0.5, order_negatives=2.0, order_margin=0.2)
    loss = clip_mod.training_loss(model, cfg, x, tokens, swap, two, order_tokens=order, ordered=ordered)
    with torch.no_grad():
        z_i, z_t = model.encode_image(x, normalize=True), model.encode_text(tokens, normalize=True)
        scale = model.logit_scale.exp()
        ref = (open_clip.ClipLoss()(z_i, z_t, scale)
               + 0.5 * clip_mod.swap_loss(z_i[two], z_t[two], model.encode_text(swap, normalize=True), scale)
               + 2.0 * clip_mod.swap_loss(z_i[ordered], z_t[ordered], model.encode_text(order, normalize=True), scale,
                                          0.2))
    assert torch.allclose(loss, ref, atol=1e-5)


def test_invariance_loss_is_zero_for_identical_views_and_one_minus_the_mean_cosine():
    z = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert clip_mod.invariance_loss(z, z).abs() < 1e-6
    assert torch.isclose(clip_mod.invariance_loss(z, -z), torch.tensor(2.0))
    w = torch.nn.functional.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert torch.isclose(clip_mod.invariance_loss(z, w), 1 - (z * w).sum(-1).mean())


def test_training_loss_adds_the_detail_invariance_with_its_weight():
    """L = L_clip + detail_invariance L_inv, L_inv between the batch and the same scenes with other details."""
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, vision_cfg={"image_size": 16, "patch_size": 8, "width": 32, "layers": 1,
                                                     "head_width": 16},
                           text_cfg={"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1})
    g = torch.Generator().manual_seed(1)
    x, view, tokens = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g), \
        torch.randint(1, 60, (4, 8), generator=g)
    cfg = clip_mod.ClipConfig(swap_negatives=0.0, detail_invariance=3.0)
    loss = clip_mod.training_loss(model, cfg, x, tokens, x_view=view)
    with torch.no_grad():
        z_i, z_t = model.encode_image(x, normalize=True), model.encode_text(tokens, normalize=True)
        ref = (open_clip.ClipLoss()(z_i, z_t, model.logit_scale.exp())
               + 3.0 * clip_mod.invariance_loss(z_i, model.encode_image(view, normalize=True)))
    assert torch.allclose(loss, ref, atol=1e-5)


def test_detail_invariance_trains_on_redrawn_details_and_is_refused_without_details(tmp_path, tiny_clip_cfg):
    model = dataclasses.replace(tiny_clip_cfg.model, detail_invariance=1.0)
    preset = with_training(dataclasses.replace(tiny_clip_cfg, model=model), steps=3, ckpt_every=3)
    info = train("clip", tmp_path / "on", preset, **QUIET)
    assert all(math.isfinite(x) for x in info["history"])
    assert read_json(tmp_path / "on" / "clip" / "train_state.json")["config"]["model"]["detail_invariance"] == 1.0
    plain = dataclasses.replace(preset, data=dataclasses.replace(preset.data, details=False))
    with pytest.raises(UserError, match="draws none"):
        train("clip", tmp_path / "off", plain, **QUIET)


def test_binding_probe_reads_bound_attributes_and_not_a_bag_of_them():
    """Three made-up embeddings of the same two-object scenes (colour, shape, size, position of A, then B):
    one-hot codes per object (bound: the probe reads everything), the sum of the two objects' codes (a bag of
    attributes: each colour is there, but not whose it is) and noise (chance)."""
    g = torch.Generator().manual_seed(0)
    n_values = [7, 5, 2, 4] * 2
    y = torch.stack([torch.randint(n, (1200,), generator=g) for n in n_values], 1)  # (N, 8)
    codes = [torch.nn.functional.one_hot(y[:, k], n).float() for k, n in enumerate(n_values)]
    bound = torch.cat(codes, 1)  # (N, 36)
    bag = torch.cat([codes[k] + codes[k + 4] for k in range(4)], 1)  # (N, 18): which values, not whose
    noise = torch.randn(1200, 36, generator=g)
    scores = {}
    for name, x in (("bound", bound), ("bag", bag), ("noise", noise)):
        right = probe_accuracy(x[:1000], y[:1000], x[1000:], y[1000:], n_values)  # (200, 8)
        scores[name] = right.all(1).float().mean().item(), right[:, [0, 4]].float().mean().item()
    assert scores["bound"][0] > 0.95
    assert scores["bag"][0] < 0.3 and 0.4 < scores["bag"][1] < 0.75  # colours right by luck half the time
    assert scores["noise"][0] < 0.02 and scores["noise"][1] < 0.3  # chance: 1/7 per colour


def test_binding_labels_name_the_objects_by_position():
    """Object A is the one in the lower-numbered quadrant, whichever the caption named first."""
    emb = {"n_objects": torch.tensor([1, 2, 2])}
    for attr, values in (("color", ([0, 1, 2], [-1, 3, 4])), ("shape", ([0, 1, 2], [-1, 3, 4])),
                         ("size", ([0, 0, 1], [-1, 1, 0])), ("position", ([0, 0, 3], [-1, 1, 2]))):
        emb[f"{attr}0"], emb[f"{attr}1"] = torch.tensor(values[0]), torch.tensor(values[1])
    two, labels = binding_labels(emb)
    assert two.tolist() == [False, True, True]
    assert labels.tolist() == [[1, 1, 0, 0, 3, 3, 1, 1], [4, 4, 0, 2, 2, 2, 1, 3]]


def test_train_on_a_folder_of_images(tmp_path, tiny_clip_cfg):
    from PIL import Image

    data = tmp_path / "mine"
    data.mkdir()
    rows = ["file,caption"]
    for k in range(24):
        Image.new("RGB", (40, 40), (10 * k, 0, 255 - 10 * k)).save(data / f"{k}.png")
        rows.append(f"{k}.png,a colour number {k}")
    rows.append("missing.png,a lost image")
    (data / "captions.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match="missing.png"):
        train("clip", tmp_path / "run", tiny_clip_cfg, data_dir=data, **QUIET)
    cfg = with_training(tiny_clip_cfg, steps=3)
    train("clip", tmp_path / "run2", cfg, data_dir=data, skip_bad=True, **QUIET)
    meta = cache_embeddings(tmp_path / "run2", log=lambda *a: None)
    assert sum(meta["splits"].values()) == 24
    assert "zero_shot_accuracy" not in evaluate_clip(tmp_path / "run2")


@pytest.mark.parametrize("args, message", [
    (["train", "clip", "--preset", "huge", "--run-dir", "{tmp}/r"], "unknown preset 'huge'"),
    (["train", "clip", "--resume", "--run-dir", "{tmp}/nothing"], "no checkpoint to resume"),
    (["evaluate", "clip", "--run-dir", "{tmp}"], "no trained CLIP"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_refuses_to_overwrite_a_trained_stage(clip_run):
    result = cli("train", "clip", "--preset", "tiny", "--run-dir", str(clip_run[0]))
    assert result.returncode == 2 and "already exists; pass --resume" in result.stderr


def test_hub_models_fail_offline_with_one_clear_message():
    for spec in ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "ViT-B-32:laion2b_s34b_b79k"):
        result = subprocess.run([sys.executable, "-c", f"from minidalle2.embeddings import load_clip; load_clip('{spec}')"],
                                capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
        assert "UserError" in result.stderr and "local-dir:PATH" in result.stderr


def test_the_linear_probe_reads_a_planted_linear_layout_and_not_an_xor_one():
    """A quadrant written as a one-hot code is a linear read; the XOR of two coordinates is not, though an MLP
    reads it: the difference between the two probes is what a linear projection of z_i cannot express."""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(4, (1200,), generator=g)
    linear = torch.nn.functional.one_hot(q, 4).float() + 0.1 * torch.randn(1200, 4, generator=g)
    bits = torch.randint(2, (1200, 2), generator=g)
    xor = (bits[:, 0] ^ bits[:, 1])[:, None]  # (N, 1)
    x_xor = bits.float() + 0.05 * torch.randn(1200, 2, generator=g)
    assert linear_probe_accuracy(linear[:1000], q[:1000, None], linear[1000:], q[1000:, None]).float().mean() > 0.98
    # a line separates at most 3 of XOR's 4 corners correctly: 75 % at best
    assert linear_probe_accuracy(x_xor[:1000], xor[:1000], x_xor[1000:], xor[1000:]).float().mean() < 0.8
    assert probe_accuracy(x_xor[:1000], xor[:1000], x_xor[1000:], xor[1000:], [2]).float().mean() > 0.95


def test_text_order_cosines_are_reported(clip_run):
    result = evaluate_clip(clip_run[0])
    order = result["text_order"]
    assert order["n"] == 40 and all(-1 <= order[k] <= 1 for k in ("exchanged", "relation_flipped", "other_colour"))
    assert set(result["binding_probe"]["z_i_linear"]) == {"color", "shape", "size", "position", "fully_right"}


def test_a_probe_fitted_to_the_same_data_is_reused_and_other_data_gets_its_own(monkeypatch):
    """evaluate clip and evaluate priors read z_i with the same binding probe: fitted once, it reads the same; new
    training data fits a new one."""
    from minidalle2.evaluation import stages
    fits = []
    fit = stages.MLPClassifier.fit
    monkeypatch.setattr(stages.MLPClassifier, "fit", lambda self, *a: fits.append(1) or fit(self, *a))
    g = torch.Generator().manual_seed(1)
    y = torch.randint(3, (300, 1), generator=g)
    x = torch.nn.functional.one_hot(y[:, 0], 3).float() + 0.1 * torch.randn(300, 3, generator=g)
    first = stages.probe_predictions(x[:200], y[:200], [x[200:]], [3])[0]
    again = stages.probe_predictions(x[:200], y[:200], [x[200:]], [3])[0]
    assert len(fits) == 1 and torch.equal(first, again) and (first == y[200:]).float().mean() > 0.95
    stages.probe_predictions(x[100:], y[100:], [x[:100]], [3])
    assert len(fits) == 2
