"""Experiments on the decoder: the U-Net's conditioning paths, guidance, the DDIM sampler and its inversion,
a tiny model memorising four images, and the training stage end to end on the tiny CLIP run."""

import dataclasses
import json
import shutil

import pytest
import torch

import minidalle2.decoder as decoder_module
import minidalle2.evaluation.layout as layout
from minidalle2 import runs
from minidalle2.checkpoint import config_dict, read_tensors
from minidalle2.data import make_scene, render
from minidalle2.decoder import Decoder, DecoderConfig, to_model_space
from minidalle2.diffusion import classifier_free_guidance
from minidalle2.embeddings import load_embeddings, run_images
from minidalle2.errors import UserError
from minidalle2.evaluation.stages import evaluate_decoder
from minidalle2.pipeline import UnCLIP
from minidalle2.presets import DECODER as PRESETS
from minidalle2.presets import Start
from minidalle2.runs import load, train
from minidalle2.tools.cli import _after_base
from minidalle2.tools.run import ensure
from minidalle2.unet import AttentionBlock, ResBlock, UNet, UNetConfig

D, W, L = 8, 12, 5  # z_i size, caption token width, caption length


def tiny_cfg(image_size=16, use_text_tokens=True, predict="eps") -> DecoderConfig:
    unet = UNetConfig(image_size=image_size, base_channels=16, channel_mult=[1, 2], attention_resolutions=[8],
                      heads=2, embed_dim=D, text_width=W if use_text_tokens else 0, patch=1, z_i_map=0)
    return DecoderConfig(unet=unet, timesteps=100, use_text_tokens=use_text_tokens, predict=predict)


def random_decoder(cfg=None, seed=0) -> Decoder:
    """A decoder whose zero-initialised layers (output conv, null z_i...) are random, so every input matters."""
    torch.manual_seed(seed)
    model = Decoder(cfg or tiny_cfg())
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.3)
    return model.eval()


def inputs(B=3, S=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(B, 3, S, S, generator=g)
    t = torch.randint(0, 100, (B,), generator=g)
    z_i = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=-1)
    tokens = torch.randn(B, L, W, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False  # a shorter caption
    return x_t, t, z_i, tokens, mask


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


# ---------------------------------------------------------------- the U-Net
@pytest.mark.parametrize("size", [16, 32, 64])
def test_unet_output_has_the_image_shape(size):
    unet = UNet(tiny_cfg(size).unet)
    x_t, t, z_i, tokens, mask = inputs(B=2, S=size)
    assert unet(x_t, t, z_i, tokens, mask).shape == (2, 3, size, size)


def test_z_i_changes_the_output_and_a_dropped_z_i_is_the_learned_null():
    model = random_decoder()
    x_t, t, z_i, tokens, mask = inputs()
    other = z_i.roll(1, dims=0)
    with torch.no_grad():
        eps = model(x_t, t, z_i)
        assert (eps - model(x_t, t, other)).abs().max() > 1e-3, "z_i must reach the prediction"
        dropped = model(x_t, t, z_i, drop_zi=True)
        torch.testing.assert_close(dropped, model(x_t, t, other, drop_zi=True))  # z_i no longer matters
        torch.testing.assert_close(dropped, model(x_t, t, model.null_z_i.expand_as(z_i)))
        per_example = model(x_t, t, z_i, drop_zi=torch.tensor([True, False, True]))
        torch.testing.assert_close(per_example[1], eps[1])
        torch.testing.assert_close(per_example[0], dropped[0])


@pytest.mark.parametrize("extra", [{}, {"z_i_map": 2, "patch": 2}])
def test_z_i_reaches_every_resolution_through_each_of_its_paths(extra):
    """Each block that reads z_i must respond to it on its own: a residual block through the embedding, an
    attention block through the context tokens, the middle through the z_i map.
    Every block is fed the same features twice, once with z_i's conditioning and once with another z_i's."""
    cfg = tiny_cfg(use_text_tokens=False)
    cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, image_size=32, **extra))
    unet = random_decoder(cfg).unet
    x_t, t, z_i, _, _ = inputs(S=32)
    other = z_i.roll(1, dims=0)
    seen = {}  # block -> the features it was given

    def remember(block, args):
        seen[block] = args[0]

    hooks = [m.register_forward_pre_hook(remember) for m in unet.modules() if isinstance(m, (ResBlock, AttentionBlock))]
    with torch.no_grad():
        unet(x_t, t, z_i)
        for h in hooks:
            h.remove()
        emb_a, emb_b = unet.embedding(t, z_i), unet.embedding(t, other)
        (ctx_a, mask), (ctx_b, _) = unet.context(z_i), unet.context(other)
        reads = {"res": set(), "attn": set()}
        for block, h in seen.items():
            if isinstance(block, ResBlock):
                changed = (block(h, emb_a) - block(h, emb_b)).abs().max() > 1e-4
                reads["res"].add((h.shape[-1], bool(changed)))
            else:
                changed = (block(h, ctx_a, mask) - block(h, ctx_b, mask)).abs().max() > 1e-4
                reads["attn"].add((h.shape[-1], bool(changed)))
    sides = {32 // cfg.unet.patch // 2 ** k for k in range(len(cfg.unet.channel_mult))}
    assert reads["res"] == {(s, True) for s in sides}, "every residual block, at every side, must read z_i"
    assert {s for s, _ in reads["attn"]} == (set(cfg.unet.attention_resolutions) & sides) | {min(sides)}
    assert all(changed for _, changed in reads["attn"]), "every attention layer must read the z_i tokens"
    if cfg.unet.z_i_map:
        z_map = unet.z_i_map(z_i) - unet.z_i_map(other)
        assert z_map.abs().max() > 1e-4, "the z_i map must depend on z_i"


def light_top_right_cell(unet, last, channels):
    """Run a 16x16 U-Net with the output of the MLP layer ``last`` all zero, then with only the top-right cell of
    its (channels, 2, 2) output at 1. Returns where the first features moved and where the prediction moved, each
    (16, 16)."""
    x_t, t, z_i, _, _ = inputs(S=16)
    first = []
    hook = unet.down[0][0].register_forward_pre_hook(lambda block, args: first.append(args[0]))
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        base = unet(x_t, t, z_i)
        last.bias.view(channels, 2, 2)[:, 0, 1] = 1.0  # the top-right cell only
        out = unet(x_t, t, z_i)
    hook.remove()
    return (first[1] - first[0]).abs().amax(dim=(0, 1)), (out - base).abs().amax(dim=(0, 1))


def test_the_layout_map_draws_z_i_where_the_pixels_are():
    """z_i_layout: an MLP turns z_i into a (C, m, m) map added to the first features; cell (r, c) of the map must
    land on the pixels of row r, column c (a transposed or mis-reshaped map would put the layout elsewhere)."""
    cfg = tiny_cfg(use_text_tokens=False)
    cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, image_size=16, patch=1, z_i_layout=2))
    unet = random_decoder(cfg).unet
    moved, _ = light_top_right_cell(unet, unet.z_i_layout[-1], cfg.unet.base_channels)
    assert moved[:8, 8:].min() > 0.99 and moved[:8, 8:].max() < 1.01, "the top-right cell covers the top right"
    moved[:8, 8:] = 0
    assert moved.max() == 0, "and nothing else"


def sketch_cfg(k=4):
    cfg = tiny_cfg(use_text_tokens=False)
    return dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, image_size=16, z_i_sketch=k))


def test_the_sketch_is_read_where_its_pixels_are_and_changes_the_output_with_z_i():
    """z_i_sketch: the sketch (B, 3, k, k) is resized (bilinear) to H x W and read like input channels; its
    top-right cell must move the first features most in the top right and not at all at the far bottom or far
    left (bilinear weights reach from one cell's centre to the next, a 3x3 convolution one pixel further), and
    it must change the prediction."""
    unet = random_decoder(sketch_cfg(k=2)).unet
    moved, moved_out = light_top_right_cell(unet, unet.sketch[-1], 3)
    quads = {(r, c): moved[8 * r:8 * r + 8, 8 * c:8 * c + 8].mean() for r in (0, 1) for c in (0, 1)}
    assert max(quads, key=quads.get) == (0, 1), "the top-right cell moves the top right most"
    assert moved[13:, :].max() == 0 and moved[:, :3].max() == 0, "and never the far bottom or the far left"
    assert moved_out.max() > 1e-3, "the sketch reaches the prediction"


def test_the_sketch_mlp_has_the_hidden_widths_its_config_names():
    """z_i_sketch_hidden: D -> widths... -> 3 k^2, a SiLU after every hidden layer; the default is one layer of 256."""
    cfg = sketch_cfg(k=2)
    assert [m.out_features for m in random_decoder(cfg).unet.sketch if isinstance(m, torch.nn.Linear)] == [256, 12]
    cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, z_i_sketch_hidden=[16, 8]))
    sketch = random_decoder(cfg).unet.sketch
    assert [type(m).__name__ for m in sketch] == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    assert [(m.in_features, m.out_features) for m in sketch[::2]] == [(cfg.unet.embed_dim, 16), (16, 8), (8, 12)]


def test_nearer_than_mirror_tells_a_sketch_of_the_scene_from_one_of_its_mirror():
    g = torch.Generator().manual_seed(0)
    own, mirrored = torch.rand(6, 3, 4, 4, generator=g), torch.rand(6, 3, 4, 4, generator=g)
    assert layout.nearer_than_mirror(own, own, mirrored) == 1.0
    assert layout.nearer_than_mirror(mirrored, own, mirrored) == 0.0
    assert layout.nearer_than_mirror(0.6 * own + 0.4 * mirrored, own, mirrored) == 1.0, "a blend leaning the right way"
    mixed = torch.cat([own[:3], mirrored[3:]])
    assert layout.nearer_than_mirror(mixed, own, mirrored) == 0.5


def test_sketch_mirror_scores_every_two_object_test_scene(run):
    ds = layout.run_datasets(run)["test"]
    two = sum(len(ds.scene(i).objects) == 2 for i in range(len(ds)))
    result = layout.sketch_mirror(run)
    assert result["n"] == two > 0 and 0 <= result["nearer_than_mirror"] <= 1 and result["chance"] == 0.5
    assert layout.sketch_mirror(run, n=3)["n"] == 3


def test_the_sketch_learns_the_pooled_image_by_its_own_loss_and_nothing_else_trains_it():
    """L = L_decoder + || sketch(z_i) - pool_k(x_0) ||^2 with the sketch detached inside the U-Net: the diffusion
    loss gives the sketch's MLP no gradient, and a few steps of the sum fit the sketch to the pooled images."""
    model = random_decoder(sketch_cfg(k=4))
    x_t, t, z_i, _, _ = inputs(S=16)
    model(x_t, t, z_i).square().mean().backward()
    assert all(p.grad is None for p in model.unet.sketch.parameters()), "the U-Net's loss must not train the sketch"
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    target = torch.nn.functional.adaptive_avg_pool2d(x0, 4)
    error = lambda: (model.unet.sketch_of(z_i) - target).square().mean().item()  # noqa: E731
    before = error()
    model.cfg.p_drop_zi = 0.0
    opt = torch.optim.Adam(model.unet.sketch.parameters(), lr=1e-2)
    model.train()
    for _ in range(200):
        opt.zero_grad()
        model.loss(x0, z_i, generator=g).backward()
        opt.step()
    assert error() < 0.05 * before


def test_a_decoder_without_a_sketch_loads_into_one_and_predicts_the_same():
    """The sketch's input convolution starts at zero: a trained decoder given the sketch path begins unchanged
    (that is how a trained decoder can be taught to read the sketch)."""
    plain = random_decoder(tiny_cfg(use_text_tokens=False))
    with_sketch = Decoder(dataclasses.replace(sketch_cfg(), unet=dataclasses.replace(sketch_cfg().unet,
                                                                                      image_size=16))).eval()
    missing, unexpected = with_sketch.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("unet.sketch") for k in missing)
    x_t, t, z_i, _, _ = inputs(S=16)
    with torch.no_grad():
        torch.testing.assert_close(with_sketch(x_t, t, z_i), plain(x_t, t, z_i))


def test_the_papers_recipe_stays_reachable_next_to_the_quick_one():
    """`paper`: GLIDE's U-Net at full resolution, eps target, the caption's tokens, z_i through the embedding and 4
    context tokens only. `quick` changes what measured better on the CPU and keeps the paper's conditioning paths."""
    paper, quick = PRESETS["paper"], PRESETS["quick"]
    assert paper.model.predict == "eps" and paper.model.use_text_tokens
    assert paper.model.unet.patch == 1 and not paper.model.unet.z_i_map
    assert quick.model.unet.n_context_tokens == paper.model.unet.n_context_tokens == 4
    assert quick.model.predict == "x0" and quick.model.unet.patch == 2 and quick.model.unet.z_i_map == 4
    for preset in (paper, quick):
        unet = dataclasses.replace(preset.model.unet, embed_dim=D, text_width=W if preset.model.use_text_tokens else 0)
        model = Decoder(dataclasses.replace(preset.model, unet=unet))
        x_t, t, z_i, tokens, mask = inputs(S=32)
        assert model(x_t, t, z_i, tokens, mask).shape == x_t.shape


def test_the_caption_changes_the_output_unless_dropped():
    model = random_decoder()
    x_t, t, z_i, tokens, mask = inputs()
    with torch.no_grad():
        a, b = model(x_t, t, z_i, tokens, mask), model(x_t, t, z_i, tokens.flip(0), mask)
        assert (a - b).abs().max() > 1e-3
        torch.testing.assert_close(model(x_t, t, z_i, tokens, mask, drop_text=True),
                                   model(x_t, t, z_i, tokens.flip(0), mask, drop_text=True))
        # padding is invisible: changing the tokens after a caption's end changes nothing
        padded = tokens.clone()
        padded[0, 3:] = 100.0
        torch.testing.assert_close(model(x_t, t, z_i, padded, mask)[0], a[0])


def test_guidance_mixes_the_conditional_and_the_null_prediction():
    model = random_decoder()
    x_t, t, z_i, tokens, mask = inputs()
    with torch.no_grad():
        cond = model(x_t, t, z_i, tokens, mask)
        uncond = model(x_t, t, z_i, tokens, mask, drop_zi=True, drop_text=True)
        torch.testing.assert_close(model.guided_model_fn(z_i, tokens, mask, 1.0)(x_t, t), cond)
        torch.testing.assert_close(model.guided_model_fn(z_i, tokens, mask, 0.0)(x_t, t), uncond, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.guided_model_fn(z_i, tokens, mask, 3.0)(x_t, t),
                                   classifier_free_guidance(cond, uncond, 3.0), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- sampling
def test_ddim_with_eta_0_is_deterministic_and_eta_1_is_not():
    model = random_decoder()
    _, _, z_i, tokens, mask = inputs()
    gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    a = model.sample(z_i, tokens, mask, steps=5, generator=gen(0))
    assert a.shape == (3, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    noise = torch.randn(3, 3, 16, 16, generator=gen(0))
    torch.testing.assert_close(model.sample(z_i, tokens, mask, steps=5, noise=noise, generator=gen(1)), a)
    b = model.sample(z_i, tokens, mask, steps=5, eta=1.0, noise=noise, generator=gen(2))
    c = model.sample(z_i, tokens, mask, steps=5, eta=1.0, noise=noise, generator=gen(3))
    assert (b - c).abs().max() > 1e-3, "eta > 0 adds fresh noise at every step"
    images, trajectory = model.sample(z_i, tokens, mask, steps=5, noise=noise, return_trajectory=True)
    assert len(trajectory) == 5
    torch.testing.assert_close(images, a)


@pytest.fixture(scope="module", params=["eps", "x0", "x0 on patches with a z_i map"])
def memorised(request):
    """A tiny U-Net, predicting eps or x_0 (the last also with the quick recipe's 2x2 patches and z_i map), trained
    on four 16x16 images that each have their own z_i (one-hot).
    Returns the model, x_0 in [-1, 1], z_i, and the loss on fixed (t, eps) draws before and after training."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy shared CPU, torch's threads wait on each other for every small op
    torch.manual_seed(0)
    scenes = [make_scene(c, s, "large", p) for c, s, p in
              [("red", "circle", "top left"), ("blue", "square", "bottom right"),
               ("yellow", "triangle", "top right"), ("cyan", "cross", "bottom left")]]
    x0 = to_model_space(torch.stack([torch.from_numpy(render(s, 16)).permute(2, 0, 1) for s in scenes]))
    z_i = torch.eye(4, D)
    cfg = tiny_cfg(use_text_tokens=False, predict=request.param.split()[0])
    if "patches" in request.param:
        cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, patch=2, z_i_map=2))
    model = Decoder(cfg)
    g = torch.Generator().manual_seed(0)
    fixed_t = torch.randint(0, 100, (64,), generator=g)
    fixed_noise = torch.randn(64, 3, 16, 16, generator=g)

    def fixed_loss():
        with torch.no_grad():
            fn = lambda x_t, t: model(x_t, t, z_i.repeat(16, 1))  # noqa: E731
            return model.diffusion.training_loss(fn, x0.repeat(16, 1, 1, 1), fixed_t, fixed_noise)["loss"].item()

    start = fixed_loss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(120):
        loss = model.loss(x0.repeat(4, 1, 1, 1), z_i.repeat(4, 1), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = fixed_loss()
    torch.set_num_threads(threads)
    return model.eval(), x0, z_i, start, end


def test_a_tiny_unet_memorises_four_images(memorised):
    """The loss falls far below its start (the zero-initialised output predicts 0: loss = E[target^2])."""
    model, x0, z_i, start, end = memorised
    assert start > 0.7 and end < 0.2 * start, (start, end)
    if model.cfg.predict == "x0":  # an eps model needs far longer before its samples are clean
        drawn = model.sample(z_i, guidance=1.0, steps=20, generator=torch.Generator().manual_seed(0))
        assert ((drawn - (x0 + 1) / 2).abs().mean(dim=(1, 2, 3)) < 0.15).all(), "z_i of image k draws image k"


def test_ddim_inversion_gives_back_the_image(memorised):
    """sample(z_i, x_T) -> x_0; invert(x_0) -> x_T'; sample(z_i, x_T') is x_0 again. Also for real images."""
    model, x0, z_i, _, _ = memorised
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    sample = model.sample(z_i, guidance=1.0, steps=20, noise=noise)
    again = model.sample(z_i, guidance=1.0, steps=20, noise=model.invert(sample, z_i, steps=20))
    assert (again - sample).abs().mean() < 0.06
    real = (x0 + 1) / 2
    again = model.sample(z_i, guidance=1.0, steps=20, noise=model.invert(real, z_i, steps=20))
    assert (again - real).abs().mean() < 0.06


# ---------------------------------------------------------------- bad input
def test_unsupported_image_size_names_the_supported_ones():
    with pytest.raises(ValueError, match="16, 32, 64"):
        UNet(UNetConfig(image_size=48))
    with pytest.raises(ValueError, match="use one of 32, 64"):
        UNet(UNetConfig(image_size=16, patch=1, channel_mult=[1, 2, 2, 2]))


def test_bad_sampling_requests_are_user_errors_at_the_facade_and_assertions_below_it():
    """The UnCLIP facade checks what a user passes; the decoder asserts what a programmer must get right."""
    model = random_decoder()
    x_t, t, z_i, tokens, mask = inputs()
    unclip = UnCLIP(clip=None, decoder=model, priors={})
    with pytest.raises(UserError, match="z_i has shape"):
        unclip.decode(torch.randn(3, 2 * D), steps=2)
    for steps in (0, -1, 101):
        with pytest.raises(UserError, match="steps"):
            unclip.decode(z_i, steps=steps)
        with pytest.raises(AssertionError):
            model.invert(torch.rand(3, 3, 16, 16), z_i, steps=steps)
    with pytest.raises(UserError, match="guidance"):
        unclip.decode(z_i, guidance=-1.0, steps=2)
    with pytest.raises(UserError, match="guidance"):
        unclip.decode(z_i, guidance=float("nan"), steps=2)
    with pytest.raises(AssertionError):
        model(x_t, t, torch.randn(3, D + 1))
    with pytest.raises(AssertionError):
        model.invert(torch.rand(3, 3, 32, 32), z_i, steps=2)


# ---------------------------------------------------------------- the training stage
@pytest.fixture(scope="module")
def decoder_run(clip_run, tmp_path_factory):
    """The tiny CLIP run with a tiny decoder trained into it (read-only)."""
    run = tmp_path_factory.mktemp("decoder") / "run"
    shutil.copytree(clip_run[0], run)
    info = train("decoder", run, PRESETS["tiny"], progress=False, log=lambda *a: None)
    return run, info


def test_train_tiny_preset_end_to_end_and_load(decoder_run):
    run, info = decoder_run
    cfg = PRESETS["tiny"]
    assert info["step"] == cfg.train.steps and len(info["history"]) == cfg.train.steps
    state = json.loads((run / "decoder" / "train_state.json").read_text())
    assert state["config"] == config_dict(cfg), "the training state names the preset (run.ensure compares it)"
    assert sorted(p.name for p in (run / "decoder_samples").glob("*.png")) == ["step_00006.png", "step_00012.png"]
    saved = json.loads((run / "decoder" / "config.json").read_text())
    meta = json.loads((run / "embeddings" / "meta.json").read_text())
    assert saved["clip_sha256"] == meta["clip_sha256"]
    unet = saved["model"]["unet"]
    assert unet["embed_dim"] == meta["embed_dim"] and unet["text_width"] == meta["text_width"]

    model = load("decoder", run)
    assert not model.training
    val = load_embeddings(run, "val")
    images = model.sample(val["z_i"][:2], val["text_tokens"][:2], val["text_mask"][:2], steps=3)
    assert images.shape == (2, 3, unet["image_size"], unet["image_size"])

    result = evaluate_decoder(run, n=4, steps=2)
    for key in ("recon_clip_cos", "recon_clip_cos_guidance_1", "random_pair_cos"):
        assert -1 <= result[key] <= 1
    assert result["guidance"] == cfg.sample.guidance


def test_load_refuses_a_missing_decoder_or_another_clip(decoder_run, clip_run, tmp_path):
    with pytest.raises(UserError, match="minidalle2 train decoder --run-dir"):
        load("decoder", clip_run[0])
    run = tmp_path / "run"
    shutil.copytree(decoder_run[0], run)
    config = run / "decoder" / "config.json"
    config.write_text(config.read_text().replace(json.loads(config.read_text())["clip_sha256"], "0" * 64))
    with pytest.raises(UserError, match="another CLIP"):
        load("decoder", run)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(clip_run_copy, monkeypatch):
    real_loss = Decoder.loss
    calls = []

    def exploding_loss(self, *args, **kwargs):
        calls.append(1)
        loss = real_loss(self, *args, **kwargs)
        return loss * float("nan") if len(calls) > 8 else loss

    monkeypatch.setattr(decoder_module.Decoder, "loss", exploding_loss)
    with pytest.raises(UserError, match="last good checkpoint"):
        train("decoder", clip_run_copy, PRESETS["tiny"], progress=False, log=lambda *a: None)
    state = json.loads((clip_run_copy / "decoder" / "train_state.json").read_text())
    assert state["step"] == PRESETS["tiny"].train.ckpt_every
    monkeypatch.undo()
    load("decoder", clip_run_copy)  # the checkpoint before the NaN is whole
    info = train("decoder", clip_run_copy, PRESETS["tiny"], resume=True, progress=False, log=lambda *a: None)
    assert info["step"] == PRESETS["tiny"].train.steps


def test_layout_diagnostics_read_the_first_step_and_the_high_noise_loss(decoder_run):
    """On the tiny run: the first-step quadrant share is a share, and z_i vs the null z_i are scored on the same
    steps and noise (the null is what the decoder learned for "no z_i")."""
    from minidalle2.evaluation.layout import layout_diagnostics

    result = layout_diagnostics(decoder_run[0], n=8)
    assert result["n"] > 0 and 0 <= result["first_step_quadrants"] <= 1
    assert result["first_step_chance"] == pytest.approx(1 / 6, abs=1e-4)
    assert set(result["high_noise_loss"]) == {"z_i", "null"} and all(v > 0 for v in result["high_noise_loss"].values())


def test_layout_from_z_i_scores_a_linear_map_and_an_mlp_like_the_first_step(decoder_run):
    """On the tiny run: both regressions of the image on z_i are scored on the same two-object test images."""
    from minidalle2.evaluation.layout import layout_from_z_i, two_object_test

    result = layout_from_z_i(decoder_run[0], n_train=64, steps=5, batch=16)
    assert result["n_test"] == len(two_object_test(decoder_run[0], 10_000)["z_i"]) > 0
    assert set(result) == {"n_test", "linear", "mlp"} and all(0 <= result[k] <= 1 for k in ("linear", "mlp"))


def test_sketch_layout_scores_the_sketch_of_the_true_and_the_prior_s_z_i(run, monkeypatch):
    """sketch_layout reads the decoder's sketch of both z_i like the first step. With a sketch planted to light the
    top half whatever z_i is, both scores must be the share of scenes that occupy the top left and top right."""
    real = layout.UnCLIP.from_run_dir

    def planted(run_dir):
        model = real(run_dir)
        last, k = model.decoder.unet.sketch[-1], model.decoder.cfg.unet.z_i_sketch
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(-1.0)
            last.bias.view(3, k, k)[:, :k // 2, :] = 1.0  # the top half lit: the top-left and top-right quadrants
        return model

    monkeypatch.setattr(layout.UnCLIP, "from_run_dir", staticmethod(planted))
    result = layout.sketch_layout(run, n=64)
    occupied = layout.two_object_test(run, 64)["occupied"]
    top = round((occupied == torch.tensor([True, True, False, False])).all(1).float().mean().item(), 4)
    assert 0 < top < 1 and result["true_z_i"] == result["diffusion"] == top and result["n"] == len(occupied)


def test_sketch_layout_needs_a_decoder_with_a_sketch(run, monkeypatch):
    real = layout.UnCLIP.from_run_dir

    def without(run_dir):
        model = real(run_dir)
        model.decoder.unet.sketch = None  # as a decoder built with z_i_sketch = 0
        return model

    monkeypatch.setattr(layout.UnCLIP, "from_run_dir", staticmethod(without))
    with pytest.raises(UserError, match="no sketch"):
        layout.sketch_layout(run, n=8)
    with pytest.raises(UserError, match="no sketch"):
        layout.sketch_mirror(run, n=8)


def test_relation_readings_tell_a_right_a_mirrored_and_a_blended_layout():
    """Probe readings (colour, shape, size, quadrant of A, then of B) of five z_i for "a red circle left of a blue
    square": right, mirrored, on the other axis, diagonal, and colours bound to the wrong shapes (which counts for
    nothing else)."""
    red, blue, circle, square, large = 0, 2, 0, 1, 1
    tl, tr, bl, br = 0, 1, 2, 3
    read = torch.tensor([[red, circle, large, tl, blue, square, large, tr],     # circle left of square
                         [blue, square, large, tl, red, circle, large, tr],     # square left of circle: mirrored
                         [red, circle, large, tl, blue, square, large, bl],     # circle above square: other axis
                         [red, circle, large, tl, blue, square, large, br],     # diagonal: no relation
                         [red, square, large, tl, blue, circle, large, tr]])    # wrong binding
    result = layout.relation_readings(read, [("red", "circle")] * 5, [("blue", "square")] * 5, ["left of"] * 5)
    assert result == {"binding": 0.8, "relation": 0.2, "mirrored": 0.2, "other_axis": 0.2, "no_relation": 0.2}


def test_prior_layout_reads_the_true_and_the_prior_s_z_i(run):
    result = layout.prior_layout(run, priors=("diffusion", "ar"))
    assert result["n"] > 0 and set(result) == {"n", "true_z_i", "diffusion", "ar"}
    for row in ("true_z_i", "diffusion", "ar"):
        r = result[row]
        assert 0 <= r["binding"] <= 1
        assert r["relation"] + r["mirrored"] + r["other_axis"] + r["no_relation"] == pytest.approx(r["binding"],
                                                                                                 abs=1e-3)


def test_mirror_cost_compares_a_picture_with_its_mirror_image(run, monkeypatch):
    """The mirrored pictures are what gets encoded: with a 'mirror' that changes nothing the cost is 0."""
    real = layout.mirror_cost(run, n=40)
    assert real["n"] == 40 and real["cos_mirrored"] < 1
    assert real["cost"] == pytest.approx((1 - real["cos_mirrored"]) / (1 - real["cos_other_scene"]), abs=1e-3)
    monkeypatch.setattr(layout, "mirrored_scene", lambda scene: scene)
    same = layout.mirror_cost(run, n=40)
    assert same["cos_mirrored"] == pytest.approx(1, abs=1e-5) and same["cost"] == pytest.approx(0, abs=1e-4)
    assert same["cos_other_scene"] == real["cos_other_scene"]


def test_first_step_quadrants_counts_the_two_brightest_quadrants():
    """A stand-in decoder whose first x_0 lights given quadrants: right when they are the occupied ones."""
    from minidalle2.evaluation.layout import first_step_quadrants

    model = random_decoder(tiny_cfg(image_size=16, use_text_tokens=False, predict="x0"))
    lit = torch.full((2, 3, 16, 16), -1.0)
    lit[0, :, :8, :8] = lit[0, :, :8, 8:] = 1.0  # top left, top right
    lit[1, :, 8:, :8] = lit[1, :, :8, :8] = 1.0  # bottom left, top left
    model.guided_model_fn = lambda *a, **k: (lambda x_t, t: lit)
    occupied = torch.tensor([[True, True, False, False], [True, False, True, False]])
    data = {"z_i": torch.zeros(2, D), "tokens": None, "mask": None, "occupied": occupied}
    assert first_step_quadrants(model, data) == 1.0
    data["occupied"] = occupied.flip(0)
    assert first_step_quadrants(model, data) == 0.0


def start_preset():
    """The tiny decoder as the full one is trained: a base without the sketch first, then the sketch fitted alone
    and the whole decoder trained on from the base's weights."""
    tiny = PRESETS["tiny"]
    base = dataclasses.replace(tiny, model=dataclasses.replace(
        tiny.model, unet=dataclasses.replace(tiny.model.unet, z_i_sketch=0)))
    return dataclasses.replace(tiny, train=dataclasses.replace(tiny.train, steps=6, lr=3e-4, sample_every=0),
                               start=Start(base, fit_steps=30, fit_batch=16, fit_lr=2e-3))


def test_a_recipe_with_a_base_starts_from_its_weights_and_fits_the_sketch_alone(clip_run_copy):
    """The base's EMA weights are loaded whole; only the sketch moves in the fit, and its loss falls."""
    preset, quiet = start_preset(), lambda *a: None
    runs.train_base("decoder", clip_run_copy, preset.start.base, False, False, quiet)
    job = runs.setup_decoder(clip_run_copy, preset, quiet, False)
    images = to_model_space(run_images(clip_run_copy, "train")[:64])
    z_i = load_embeddings(clip_run_copy, "train")["z_i"][:64]
    with torch.no_grad():
        before = job.model.sketch_loss(images, z_i).item()
    lines = []
    runs.start_from_base("decoder", clip_run_copy, job, preset, lines.append)
    base = read_tensors(clip_run_copy / "decoder_base" / "model.safetensors")
    state = job.model.state_dict()
    for k, v in base.items():
        torch.testing.assert_close(state[k], v.float(), msg=k)
    assert set(state) - set(base) and all(k.startswith("unet.sketch") for k in set(state) - set(base))
    with torch.no_grad():
        assert job.model.sketch_loss(images, z_i).item() < before
    assert lines and "L_sketch" in lines[0]


def test_a_recipe_with_a_base_trains_both_and_resumes_across_them(clip_run_copy, monkeypatch):
    """`train all` cut short in the base resumes it, keeps it once finished, and records it beside the decoder."""
    preset = start_preset()
    monkeypatch.setitem(PRESETS, "tiny", preset)
    real_loss, calls = Decoder.loss, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 8:
            raise KeyboardInterrupt
        return real_loss(self, *args, **kwargs)

    monkeypatch.setattr(decoder_module.Decoder, "loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure(clip_run_copy, ["decoder"], "tiny", progress=False, log=lambda *a: None)
    base_state = json.loads((clip_run_copy / "decoder_base" / "train_state.json").read_text())
    assert base_state["step"] == preset.train.ckpt_every and not (clip_run_copy / "decoder").exists()
    with pytest.raises(UserError, match="decoder_base already exists; pass --resume"):
        train("decoder", clip_run_copy, preset, progress=False, log=lambda *a: None)
    monkeypatch.setattr(decoder_module.Decoder, "loss", real_loss)
    ensure(clip_run_copy, ["decoder"], "tiny", progress=False, log=lambda *a: None)  # as `train all` again
    base_state = json.loads((clip_run_copy / "decoder_base" / "train_state.json").read_text())
    state = json.loads((clip_run_copy / "decoder" / "train_state.json").read_text())
    assert base_state["step"] == preset.start.base.train.steps and state["step"] == preset.train.steps
    assert state["config"] == config_dict(preset) and state["base"]["step"] == preset.start.base.train.steps
    assert state["fit_s"] >= 0, "the seconds of loading the base and fitting the sketch alone are recorded"
    assert sorted(p.name for p in (clip_run_copy / "decoder_samples").glob("*.png")) == [
        "step_00006.png", "step_00012.png"], "the base's grids are kept"
    assert load("decoder", clip_run_copy).cfg.unet.z_i_sketch == preset.model.unet.z_i_sketch
    mtime = (clip_run_copy / "decoder_base" / "train_state.json").stat().st_mtime
    shutil.rmtree(clip_run_copy / "decoder")  # cut short before the decoder's first checkpoint
    info = train("decoder", clip_run_copy, preset, resume=True, progress=False, log=lambda *a: None)
    assert info["step"] == preset.train.steps
    assert (clip_run_copy / "decoder_base" / "train_state.json").stat().st_mtime == mtime, "a finished base is kept"


def test_a_base_of_another_shape_is_refused_in_one_line(clip_run_copy):
    preset, quiet = start_preset(), lambda *a: None
    wide = dataclasses.replace(preset.start.base, model=dataclasses.replace(
        preset.start.base.model, unet=dataclasses.replace(preset.start.base.model.unet, base_channels=8)))
    runs.train_base("decoder", clip_run_copy, wide, False, False, quiet)
    job = runs.setup_decoder(clip_run_copy, preset, quiet, False)
    with pytest.raises(UserError, match="decoder_base holds a model this preset cannot start from"):
        runs.start_from_base("decoder", clip_run_copy, job, preset, quiet)


def test_a_start_without_a_base_fits_the_sketch_before_the_first_step(clip_run_copy, monkeypatch):
    """Start(base=None): the sketch is fitted alone on random weights (its loss falls, nothing else moves), then the
    decoder trains as usual, with no decoder_base; a model with no sketch to fit is refused in one line."""
    tiny, lines = PRESETS["tiny"], []
    preset = dataclasses.replace(tiny, train=dataclasses.replace(tiny.train, steps=2, ckpt_every=2, sample_every=0),
                                 start=Start(fit_steps=40, fit_batch=16, fit_lr=2e-3))
    fitted = {}
    real_train = runs.training.train

    def spy(folder, model, *args, **kwargs):  # the model as the first training step finds it
        images = to_model_space(run_images(clip_run_copy, "train")[:64])
        z_i = load_embeddings(clip_run_copy, "train")["z_i"][:64]
        with torch.no_grad():
            fitted["loss"] = model.sketch_loss(images, z_i).item()
            torch.manual_seed(tiny.train.seed)
            fresh = runs.setup_decoder(clip_run_copy, preset, lambda *a: None, False).model
            fitted["before"] = fresh.sketch_loss(images, z_i).item()
            fitted["same_unet"] = all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items()
                                      if not k.startswith("unet.sketch"))
        return real_train(folder, model, *args, **kwargs)

    monkeypatch.setattr(runs.training, "train", spy)
    info = train("decoder", clip_run_copy, preset, progress=False, log=lines.append)
    assert info["step"] == 2 and not (clip_run_copy / "decoder_base").exists() and "base" not in info
    assert info["fit_s"] >= 0 and "a part fitted alone first" in _after_base(info)
    assert fitted["loss"] < fitted["before"] and fitted["same_unet"]
    assert any("L_sketch" in line for line in lines)
    shutil.rmtree(clip_run_copy / "decoder")
    no_sketch = dataclasses.replace(preset, model=dataclasses.replace(
        preset.model, unet=dataclasses.replace(preset.model.unet, z_i_sketch=0)))
    with pytest.raises(UserError, match="no such part"):
        train("decoder", clip_run_copy, no_sketch, progress=False, log=lines.append)
