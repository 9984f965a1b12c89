"""The cascade's upsampler (upsampler.py): 32x32 -> 64x64 conditioned on the low-resolution picture only."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from minidalle2.data import render, sample_scene
from minidalle2.errors import UserError
from minidalle2.evaluation.oracle import fresh_test_scenes
from minidalle2.evaluation.upsampling import evaluate_upsampler, key, psnr, renders, resize
from minidalle2.pipeline import UnCLIP
from minidalle2.presets import UPSAMPLER, Preset
from minidalle2.runs import get_preset, load, train
from minidalle2.tools.cli import main
from minidalle2.tools.run import PRETRAINED
from minidalle2.training import TrainConfig
from minidalle2.upsampler import (Upsampler, UpsamplerConfig, UpsamplerSampling, area_downsample, gaussian_blur,
                                  quick_unet)


@pytest.fixture
def model():
    """The tiny upsampler, its zero-initialised layers made random (as after some training): at initialisation every
    residual branch and the output are zero, and nothing would depend on anything."""
    torch.manual_seed(0)
    up = Upsampler(get_preset("upsampler", "tiny").model).eval()
    for p in up.parameters():
        if p.dim() > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.1)
    return up


def test_upsampling_takes_32x32_pictures_to_64x64_ones(model):
    out = model.sample(torch.rand(3, 3, 32, 32), steps=2)
    assert out.shape == (3, 3, 64, 64) and 0 <= out.min() and out.max() <= 1
    x_t, t = torch.randn(3, 3, 64, 64), torch.tensor([0, 500, 999])
    assert model(x_t, t, torch.rand(3, 3, 32, 32) * 2 - 1, torch.zeros(3)).shape == (3, 3, 64, 64)
    with pytest.raises(AssertionError, match="another size"):
        model(x_t, t, torch.rand(3, 3, 16, 16), torch.zeros(3))


def test_the_conditioning_image_changes_the_output_and_nothing_else_does(model):
    x_t, t, sigma = torch.randn(2, 3, 64, 64), torch.tensor([10, 900]), torch.zeros(2)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        out_a, out_a2, out_b = model(x_t, t, a, sigma), model(x_t, t, a, sigma), model(x_t, t, b, sigma)
    torch.testing.assert_close(out_a, out_a2)
    assert (out_a - out_b).abs().mean() > 1e-3
    noise = torch.randn(2, 3, 64, 64)
    assert (model.sample((a + 1) / 2, steps=2, noise=noise) - model.sample((b + 1) / 2, steps=2, noise=noise)
            ).abs().mean() > 1e-3


def test_the_blur_level_reaches_the_model_as_an_input_of_its_own(model):
    """A flat grey x_lo is the same picture at any blur: only the level s(sigma) can change the output."""
    x_t, t, flat = torch.randn(2, 3, 64, 64), torch.tensor([500, 500]), torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        sharp, soft = model(x_t, t, flat, torch.zeros(2)), model(x_t, t, flat, torch.full((2,), 0.8))
    torch.testing.assert_close(gaussian_blur(flat, torch.full((2,), 0.8), 1.0), flat)
    assert (sharp - soft).abs().mean() > 1e-4
    torch.testing.assert_close(model.level(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([0.0, 500.0, 1000.0]))


def test_training_blurs_about_p_blur_of_the_conditioning_images_and_tells_the_model_how_much(model, monkeypatch):
    seen = {}
    real = model.unet.forward

    def spy(x_t, t, z_i=None, text_tokens=None, text_mask=None, low_res=None, s=None):
        seen.update(low_res=low_res, s=s)
        return real(x_t, t, z_i, text_tokens, text_mask, low_res, s)

    monkeypatch.setattr(model.unet, "forward", spy)
    x0 = torch.from_numpy(np.stack([render(sample_scene(np.random.default_rng(i), "train"), 64)
                                    for i in range(64)])).permute(0, 3, 1, 2).float() / 127.5 - 1
    model.loss(x0, generator=torch.Generator().manual_seed(0))
    sigma = seen["s"] / 1000 * model.cfg.sigma_max  # the level, back in pixels
    blurred = sigma > 0
    assert 0.3 < blurred.float().mean() < 0.7 and sigma.max() <= model.cfg.sigma_max  # p_blur = 0.5
    x_lo = area_downsample(x0)
    torch.testing.assert_close(seen["low_res"], model.condition(x_lo, sigma))  # blurred by the sigma it is told
    change = (seen["low_res"] - model.condition(x_lo, torch.zeros(64))).abs().flatten(1).amax(1)  # (64,)
    assert (change[~blurred] == 0).all() and change[sigma > 0.2].median() > 0.05


def test_the_blur_is_scipys_gaussian_filter_with_replicated_edges():
    x = torch.rand(3, 3, 32, 32)
    sigma = torch.tensor([0.0, 0.4, 1.0])
    out = gaussian_blur(x, sigma, sigma_max=1.0)
    torch.testing.assert_close(out[0], x[0])
    for k in (1, 2):  # radius ceil(3 sigma_max) = 3 pixels, as scipy's with truncate = 3 / sigma
        ref = gaussian_filter(x[k].numpy(), sigma=(0, sigma[k].item(), sigma[k].item()), mode="nearest",
                              truncate=3 / sigma[k].item())
        torch.testing.assert_close(out[k], torch.from_numpy(ref), atol=1e-5, rtol=1e-5)


def test_a_32px_render_is_the_64px_render_area_downsampled():
    """The training pairs: the renderer's 32-px picture and its 64-px one, downsampled by 2x2 means, agree."""
    scenes = fresh_test_scenes(32, seed=3)
    low, high = renders(scenes, 32), renders(scenes, 64)
    assert (area_downsample(high) - low).abs().mean() < 2 / 255


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A copy of the shipped run (its trained oracle and decoder) with a small upsampler trained into it: about
    15 s on one core."""
    run = tmp_path_factory.mktemp("upsampled") / "run"
    # the shipped run's own upsampler left behind: a small one trains in seconds
    shutil.copytree(PRETRAINED, run, ignore=shutil.ignore_patterns("decoder_samples", "upsampler"))
    small = Preset(UpsamplerConfig(unet=dataclasses.replace(quick_unet(), base_channels=16)),
                   TrainConfig(batch_size=16, steps=150, lr=3e-3, warmup_steps=10, ema_decay=0.9, ckpt_every=150),
                   UpsamplerSampling(sample_steps=2))
    train("upsampler", run, small, progress=False, log=lambda *a: None)
    return run


def test_a_trained_upsampler_draws_a_picture_the_oracle_reads_as_its_input(trained):
    upsampler, oracle = load("upsampler", trained), load("oracle", trained)
    scenes = fresh_test_scenes(32, seed=11)
    low, truth = renders(scenes, 32), renders(scenes, 64)
    up = upsampler.sample(low, generator=torch.Generator().manual_seed(0))
    assert up.shape == (32, 3, 64, 64)
    same = [key(a) == key(b) for a, b in zip(oracle.read(low), oracle.read(up))]
    assert np.mean(same) >= 0.95
    assert psnr(up, truth) > psnr(resize(low, 64, "nearest"), truth)  # closer to the truth than blocky pixels
    assert (area_downsample(up) - low).abs().mean() < 0.05  # and consistent with its input


def test_evaluate_upsampler_reports_real_renders_and_decoder_outputs(trained, tmp_path, capsys):
    result = evaluate_upsampler(trained, n=4)
    assert set(result["psnr"]) == {"upsampler", "nearest", "bilinear", "bicubic"} == set(result["ssim"])
    assert result["psnr"]["bicubic"] > result["psnr"]["nearest"]  # the baselines are what they say
    assert 0 <= result["oracle_agreement"] <= 1 and result["seconds_per_image"] > 0
    assert result["decoder"]["n"] == 4 and 0 <= result["decoder"]["oracle_agreement"] <= 1


def test_the_facade_upsamples_and_the_cli_writes_the_cascades_pictures(trained, tmp_path):
    model = UnCLIP.from_run_dir(trained)
    assert model.upsample(torch.rand(2, 3, 32, 32)).shape == (2, 3, 64, 64)
    out = tmp_path / "g.png"
    assert main(["generate", "a red circle", "--run-dir", str(trained), "-n", "2", "--steps", "2", "--upsample",
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_upsample_on_a_run_without_an_upsampler_is_one_line_and_status_2(tmp_path, capsys):
    copy = tmp_path / "pretrained"  # the shipped run without its upsampler
    shutil.copytree(PRETRAINED, copy, ignore=shutil.ignore_patterns("decoder_samples", "upsampler"))
    assert main(["generate", "a red circle", "--run-dir", str(copy), "--upsample", "--out",
                 str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no upsampler" in err and "minidalle2 train upsampler" in err and "\n" not in err
    assert not (tmp_path / "g.png").exists()


def test_upsample_with_a_64x64_decoder_is_one_line_and_status_2(run, tmp_path, capsys, monkeypatch):
    """The session's tiny run (trained by `train all`, so with an upsampler), its decoder made to draw at 64 px."""
    copy = tmp_path / "run64"
    shutil.copytree(run, copy)
    assert (copy / "upsampler" / "model.safetensors").exists()  # `train all` trains the upsampler too
    config = json.loads((copy / "decoder" / "config.json").read_text())
    config["model"]["unet"]["image_size"] = 64  # the tiny U-Net's weights do not depend on the image size
    (copy / "decoder" / "config.json").write_text(json.dumps(config))
    for command in (["generate", "a red circle"], ["vary", "x.png"]):
        assert main([*command, "--run-dir", str(copy), "--upsample", "--out", str(tmp_path / "g.png")]) == 2
        err = capsys.readouterr().err.strip()
        assert "draws 64x64 pictures" in err and "leave out --upsample" in err and "\n" not in err
    import minidalle2.runs as runs

    monkeypatch.setattr(runs, "run_image_size", lambda run_dir: 64)  # a run of 64-px images
    shutil.rmtree(copy / "upsampler")
    with pytest.raises(UserError, match="pictures are 64x64; the upsampler takes 32x32"):
        train("upsampler", copy, get_preset("upsampler", "tiny"), resume=False, progress=False, log=lambda *a: None)


def test_tiny_generate_upsample_through_the_cli(run, tmp_path):
    out = tmp_path / "g.png"
    assert main(["generate", "a red circle", "--run-dir", str(run), "-n", "1", "--steps", "2", "--upsample",
                 "--out", str(out)]) == 0 and out.stat().st_size > 0


def test_the_presets_keep_the_upsampler_out_of_z_i_and_captions():
    for preset in UPSAMPLER.values():
        model = Upsampler(preset.model)
        names = {n for n, _ in model.named_parameters()}
        assert not any("z_i" in n or "text_proj" in n or "context" in n or "qkv" in n for n in names)
