"""The unCLIP pipeline (paper Sec. 3): slerp, text diffs, text-to-image, variations, interpolations, and their CLI."""

import json
import math
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from minidalle2.embeddings import run_images
from minidalle2.errors import UserError
from minidalle2.pipeline import UnCLIP, slerp, text_diff_direction
from minidalle2.tools import export
from minidalle2.tools.cli import main
from minidalle2.tools.export import export_run
from minidalle2.tools.run import PRETRAINED, train_all


# ---------------------------------------------------------------- the maths
def test_slerp_walks_the_great_circle_at_constant_speed():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(2, 16), dim=-1)
    omega = torch.arccos(a @ b)
    theta = torch.linspace(0, 1, 9)
    path = slerp(a.expand(9, -1), b.expand(9, -1), theta)  # (9, 16)
    assert torch.allclose(path[0], a, atol=1e-6) and torch.allclose(path[-1], b, atol=1e-6)
    assert torch.allclose(path.norm(dim=-1), torch.ones(9), atol=1e-5)  # stays on the sphere
    angle_from_a = torch.arccos((path @ a).clamp(-1, 1))
    assert torch.allclose(angle_from_a, theta * omega, atol=1e-4)  # angle grows linearly in theta


def test_slerp_of_parallel_vectors_is_a_straight_line_not_nan():
    a = torch.tensor([1.0, 0.0, 0.0])
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)


def test_text_diff_direction_is_the_normalised_difference():
    z_t0, z_t = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    z_d = text_diff_direction(z_t0, z_t)
    assert torch.allclose(z_d, torch.tensor([-1.0, 1.0]) / math.sqrt(2))


# ---------------------------------------------------------------- a tiny trained run
# `run`: every stage trained with the tiny preset through `train all` (tests/conftest.py)
@pytest.fixture(scope="module")
def model(run):
    return UnCLIP.from_run_dir(run)


@pytest.fixture(scope="module")
def images(run):
    return run_images(run, "test")[:2].float() / 255  # (2, 3, S, S)


def test_train_all_resumes_without_retraining_finished_stages(run):
    logs = []
    train_all(run, "tiny", progress=False, log=logs.append)
    assert not any(line.startswith("training") for line in logs)


def test_generate_returns_n_images_per_prompt_in_prompt_major_order(model):
    prompts = ["a large red circle in the top left", "a small blue square in the bottom right"]
    for prior in ("diffusion", "ar", "none"):
        out = model.generate(prompts, prior=prior, n=2, seed=0)
        assert out.shape == (4, 3, model.image_size, model.image_size)
        assert 0 <= out.min() and out.max() <= 1
    z_i, _, _ = model.sample_z_i(prompts, prior="none", n=2)
    z_t, _, _ = model.embed_text(prompts)
    assert torch.equal(z_i, z_t.repeat_interleave(2, dim=0))  # the no-prior ablation: z_t stands in for z_i
    assert torch.equal(model.generate(prompts[:1], seed=3), model.generate(prompts[:1], seed=3))


def test_generate_refuses_an_unknown_or_untrained_prior(model):
    with pytest.raises(UserError, match="unknown prior"):
        model.generate(["a red circle"], prior="gan")
    with pytest.raises(UserError, match="no trained ar prior"):
        UnCLIP(model.clip, model.decoder, {}).generate(["a red circle"], prior="ar")


def test_variations_at_eta_0_all_reconstruct_the_same_image_and_differ_at_eta_1(model, images):
    same = model.variations(images[0], n=3, eta=0.0)
    assert torch.allclose(same[0], same[1]) and torch.allclose(same[0], same[2])
    z_i, x_T = model.encode(images[:1])
    assert torch.allclose(same[0], model.decode(z_i, x_T)[0], atol=1e-6)  # (z_i, x_T) decoded at eta 0
    varied = model.variations(images[0], n=3, eta=1.0)
    assert (varied[0] - varied[1]).abs().max() > 1e-3


def test_interpolation_with_slerped_latents_ends_at_each_image_reconstruction(model, images):
    path = model.interpolate(images[0], images[1], n=4, latent="slerp")
    assert path.shape == (4, 3, model.image_size, model.image_size)
    recon = model.decode(*model.encode(images))  # (2, ...): both images' (z_i, x_T) decoded at eta 0
    assert torch.allclose(path[0], recon[0], atol=1e-4) and torch.allclose(path[-1], recon[1], atol=1e-4)
    fixed = model.interpolate(images[0], images[1], n=4, latent="fixed")
    assert not torch.allclose(fixed[0], recon[0], atol=1e-3)  # a random x_T, not the image's own


def test_text_diff_starts_from_the_reconstruction_and_rotates_towards_z_d(model, images, monkeypatch):
    src, dst = "a large red circle in the top left", "a large blue circle in the top left"
    out = model.text_diff(images[0], src, dst, n=3, theta_max=0.5, method="paper")
    assert torch.allclose(out[0], model.variations(images[0], n=1, eta=0.0)[0], atol=1e-4)  # theta = 0
    seen = {}
    decode = model.decode

    def spy(z, x_T, **kw):
        seen.update(z=z, x_T=x_T, **kw)
        return decode(z, x_T, **kw)

    monkeypatch.setattr(model, "decode", spy)
    model.text_diff(images[0], src, dst, n=3, theta_max=0.5, method="paper")
    assert seen["text_tokens"] is None  # the paper's edit: z_theta alone
    z_i, x_T = model.encode(images[:1])
    z_t = model.embed_text([src, dst])[0]
    z_d = F.normalize(z_t[1] - z_t[0], dim=0)
    assert torch.allclose(seen["z"][0], z_i[0], atol=1e-5)
    assert torch.allclose(seen["z"][-1], F.normalize(slerp(z_i[0], z_d, 0.5), dim=0), atol=1e-5)
    assert (seen["z"] @ z_d).diff().min() > 0  # each step is closer to the edit direction
    assert torch.allclose(seen["x_T"], x_T.expand(3, -1, -1, -1))  # the image's own x_T throughout
    with pytest.raises(UserError, match="theta_max"):
        model.text_diff(images[0], "a", "b", theta_max=-0.1)  # [0, 1]: 0 is allowed (every step reconstructs)
    model.text_diff(images[0], src, dst, n=2, method="analogy_text")  # the decoder reads the new caption too
    assert seen["text_tokens"].shape[0] == 2 and torch.allclose(seen["z"][0], z_i[0], atol=1e-5)


def test_pca_reconstruction_with_every_component_decodes_the_pca_round_trip(model, images):
    K = model.tokenizer.K
    out = model.pca_reconstructions(images[0], [1, K], seed=1)
    assert out.shape == (2, 3, model.image_size, model.image_size)
    z_i = model.embed_images(images[:1])
    z_K = model.tokenizer.from_pca(model.tokenizer.to_pca(z_i))
    x_T = torch.randn((1, 3, model.image_size, model.image_size), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out[1], model.decode(z_K, x_T, seed=1)[0], atol=1e-5)
    with pytest.raises(UserError, match="between 1 and"):
        model.pca_reconstructions(images[0], [K + 1])


def test_bad_inputs_get_one_clear_error(model, images, tmp_path):
    with pytest.raises(UserError, match="images have shape"):
        model.variations(torch.rand(3, 7, 7))
    with pytest.raises(UserError, match="at least 2"):
        model.interpolate(images[0], images[1], n=1)
    with pytest.raises(UserError, match="no trained run"):
        UnCLIP.from_run_dir(tmp_path / "nothing")


# ---------------------------------------------------------------- the command line
def test_cli_commands_write_png_grids(run, images, tmp_path, capsys):
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"image{k}.png")
        Image.fromarray((images[k].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(paths[-1])
    commands = {
        "gen.png": ["generate", "a large red circle in the top left", "--prior", "none", "-n", "2"],
        "vary.png": ["vary", str(paths[0]), "-n", "2", "--eta", "0.5"],
        "interp.png": ["interpolate", str(paths[0]), str(paths[1]), "-n", "3"],
        "diff.png": ["textdiff", str(paths[0]), "--from", "a red circle", "--to", "a blue circle", "-n", "2"],
    }
    for name, argv in commands.items():
        out = tmp_path / name
        assert main(argv + ["--run-dir", str(run), "--out", str(out)]) == 0, name
        assert Image.open(out).size[0] > 100, name
    assert main(["vary", str(tmp_path / "missing.png"), "--run-dir", str(run), "--out", str(tmp_path / "x.png")]) == 2
    assert "image file not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def image_files(images, tmp_path_factory):
    """A test image saved as RGB, RGBA, grayscale and palette PNGs, and at twice the size; plus a non-image."""
    folder = tmp_path_factory.mktemp("files")
    rgb = Image.fromarray((images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    files = {"rgb": rgb, "rgba": rgb.convert("RGBA"), "gray": rgb.convert("L"), "palette": rgb.convert("P"),
             "big": rgb.resize((2 * rgb.width, 2 * rgb.height))}
    for name, im in files.items():
        im.save(folder / f"{name}.png")
    (folder / "notes.png").write_text("not a picture")
    return {name: str(folder / f"{name}.png") for name in [*files, "notes"]}


@pytest.mark.parametrize("kind", ["rgba", "gray", "palette", "big"])
def test_cli_converts_odd_images_and_says_so(run, image_files, kind, tmp_path, capsys):
    out = tmp_path / "vary.png"
    assert main(["vary", image_files[kind], "-n", "2", "--run-dir", str(run), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert ("resized" if kind == "big" else "converted") in said and out.exists()


BAD_CLI_INPUTS = {  # argv (before --run-dir/--out) -> what the one error line must name
    "empty prompt": (["generate", ""], "prompt 1 is empty"),
    "n <= 0": (["generate", "a red circle", "-n", "0"], "n=0"),
    "steps <= 0": (["generate", "a red circle", "--steps", "0"], "steps"),
    "guidance < 0": (["generate", "a red circle", "--guidance", "-1"], "guidance"),
    "theta_max > 1": (["textdiff", "IMAGE", "--from", "a red circle", "--to", "a blue circle", "--theta-max", "1.5"],
                      "theta_max=1.5"),
    "same captions": (["textdiff", "IMAGE", "--from", "a red circle", "--to", "a red circle"], "two different"),
    "unknown text-diff method": (["textdiff", "IMAGE", "--from", "a red circle", "--to", "a blue circle", "--method",
                                  "magic"], "unknown text-diff method 'magic'"),
    "not an image": (["vary", "NOTES"], "cannot read image"),
    "missing image": (["vary", "MISSING"], "image file not found"),
    "missing out folder": (["generate", "a red circle", "--out", "OUT/nowhere/x.png"], "does not exist"),
    "out not a png": (["generate", "a red circle", "--out", "OUT/x.jpg"], "should name a .png"),
    "NaN guidance": (["generate", "a red circle", "--guidance", "nan"], "guidance=nan must be a finite number"),
    "inf guidance": (["generate", "a red circle", "--guidance", "inf"], "guidance=inf must be a finite number"),
    "NaN prior guidance": (["generate", "a red circle", "--prior-guidance", "nan"], "prior guidance=nan"),
    "NaN eta": (["vary", "IMAGE", "--eta", "nan"], "eta=nan must be a finite number"),
    "NaN theta_max": (["textdiff", "IMAGE", "--from", "a red circle", "--to", "a blue circle", "--theta-max", "nan"],
                      "theta_max=nan"),
    "seed overflow": (["generate", "a red circle", "--seed", "18446744073709551616"], "choose a whole number from 0"),
    "too many images": (["generate", "a red circle", "-n", "100000"], "ask for at most 1024"),
}


@pytest.mark.parametrize("case", list(BAD_CLI_INPUTS))
def test_cli_bad_input_is_one_clear_line_and_writes_nothing(run, image_files, case, tmp_path, capsys):
    argv, expected = BAD_CLI_INPUTS[case]
    swap = {"IMAGE": image_files["rgb"], "NOTES": image_files["notes"], "MISSING": str(tmp_path / "missing.png")}
    argv = [swap.get(a, a).replace("OUT", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "grid.png")]
    assert main(argv + ["--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, not even half a file


def run_hashes(run) -> dict:
    """sha256 of every file of a run dir: a refused command must leave all of them as they were."""
    import hashlib

    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*"))
            if p.is_file()}


def _edit_config(stage: str, edit):
    def apply(run):
        path = run / stage / "config.json"
        saved = json.loads(path.read_text())
        edit(saved)
        path.write_text(json.dumps(saved))
    return apply


def _poison(run):
    from safetensors.torch import load_file, save_file

    path = run / "decoder" / "model.safetensors"
    weights = load_file(str(path))
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 4)
    weights[name].view(-1)[:4] = float("nan")
    save_file(weights, str(path))


BAD_RUNS = {  # how a copy of the tiny run is damaged -> what the one error line must name
    "wrong type": (_edit_config("decoder", lambda c: c["model"]["unet"].update(base_channels="32")),
                   "decoder/config.json: 'model.unet.base_channels' is \"32\"; it should be a whole number"),
    "wrong value": (_edit_config("decoder", lambda c: c["model"].update(schedule="cosin")),
                    "'model.schedule' is \"cosin\"; it should be one of cosine, linear"),
    "typo in a key": (_edit_config("decoder", lambda c: c["model"].update(predcit="eps")),
                      "unknown setting 'model.predcit'"),
    "unknown U-Net key": (_edit_config("decoder", lambda c: c["model"]["unet"].update(depth=3)),
                          "unknown setting 'model.unet.depth'"),
    "missing unet section": (_edit_config("decoder", lambda c: c["model"].pop("unet")),
                             "the setting 'model.unet' is missing"),
    "missing setting": (_edit_config("decoder", lambda c: c["model"].pop("predict")),
                        "decoder/config.json: the setting 'model.predict' is missing"),
    "typo in a section's name": (_edit_config("decoder", lambda c: c.update(sampel={"guidance": 3.0})),
                                 "decoder/config.json: unknown key 'sampel'"),
    "NaN in a config": (_edit_config("prior_diffusion", lambda c: c["sample"].update(guidance=float("nan"))),
                        "prior_diffusion/config.json: 'sample.guidance' is NaN; it should be a finite number"),
    "NaN-poisoned weights": (_poison, "decoder/model.safetensors is damaged"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_cli_refuses_a_damaged_run_in_one_line_and_changes_nothing(run, case, tmp_path, capsys):
    damage, expected = BAD_RUNS[case]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    damage(copy)
    before = run_hashes(copy)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["generate", "a red circle", "-n", "1", "--steps", "2", "--run-dir", str(copy),
                 "--out", str(out / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert run_hashes(copy) == before and not list(out.iterdir())


def test_cli_refuses_a_typo_in_the_shipped_runs_config(tmp_path, capsys):
    """A typo in data/pretrained's decoder config (a copy) is refused too."""
    copy = tmp_path / "pretrained"
    shutil.copytree(PRETRAINED, copy, ignore=shutil.ignore_patterns("decoder_samples"))
    _edit_config("decoder", lambda c: c["model"].update(predcit="eps"))(copy)
    before = run_hashes(copy)
    assert main(["generate", "a red circle", "--run-dir", str(copy), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "decoder/config.json: unknown setting" in err and "predcit'" in err and "\n" not in err
    assert run_hashes(copy) == before and not (tmp_path / "g.png").exists()


def test_generate_samples_prior_and_decoder_in_bounded_batches(model, monkeypatch):
    """Memory stays flat in -n: neither the prior nor the decoder ever sees more than BATCH images at once, and
    the batched images are those of one call (for n <= BATCH)."""
    import minidalle2.pipeline as pipeline

    whole = model.generate(["a red circle"], n=3, steps=2, seed=1)
    sizes = {"prior": [], "decoder": []}
    prior_sample, decoder_sample = model.priors["diffusion"].sample, model.decoder.sample
    monkeypatch.setattr(pipeline, "BATCH", 2)
    monkeypatch.setattr(model.priors["diffusion"], "sample",
                        lambda *a, **k: sizes["prior"].append(len(a[2])) or prior_sample(*a, **k))
    monkeypatch.setattr(model.decoder, "sample",
                        lambda z_i, *a, **k: sizes["decoder"].append(len(z_i)) or decoder_sample(z_i, *a, **k))
    out = model.generate(["a red circle", "a blue square"], n=3, steps=2, seed=1)
    assert sizes == {"prior": [2, 2, 2], "decoder": [2, 2, 2]} and out.shape[0] == 6
    monkeypatch.setattr(pipeline, "BATCH", 64)
    assert torch.equal(model.generate(["a red circle"], n=3, steps=2, seed=1), whole)


def test_cli_warns_when_most_words_of_a_prompt_are_unknown(run, tmp_path, capsys):
    argv = ["-n", "1", "--steps", "2", "--prior", "none", "--run-dir", str(run), "--out", str(tmp_path / "g.png")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["generate", "빨간 원 🔴"] + argv) == 0
    assert "never occur in this run's captions" in capsys.readouterr().out
    assert not [w for w in caught if "Glyph" in str(w.message)], "the caption's undrawable characters are shown as ?"
    assert main(["generate", "a red circle"] + argv) == 0
    assert "warning" not in capsys.readouterr().out


def test_interrupted_training_offers_resume_only_with_a_checkpoint(run, tmp_path, monkeypatch, capsys):
    import minidalle2.runs as runs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(runs, "train", interrupted)
    fresh = tmp_path / "fresh"
    assert main(["train", "decoder", "--run-dir", str(fresh), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "continue with --resume" not in err
    assert not fresh.exists()  # no empty run dir left behind
    assert main(["train", "decoder", "--run-dir", str(run), "--resume", "--no-progress"]) == 130
    assert "continue with --resume" in capsys.readouterr().err


def test_failed_first_train_on_a_folder_leaves_no_run_dir_and_names_the_flag(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "captions.csv").write_text("file,caption\nmissing.png,a cat\n")
    new = tmp_path / "new_run"
    assert main(["train", "clip", "--preset", "tiny", "--run-dir", str(new), "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--skip-bad" in err and "skip_bad=True" not in err and "\n" not in err
    assert not new.exists()


def test_evaluate_pipeline_says_it_does_not_apply_to_a_folder_run(tmp_path, capsys):
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "train_state.json").write_text(json.dumps({"data": {"folder": "/my/pictures"}}))
    for stage in ("pipeline", "all"):
        assert main(["evaluate", stage, "--run-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "does not apply" in err and "/my/pictures" in err and "evaluate clip" in err


def test_clip_report_says_why_zero_shot_is_missing_for_a_folder():
    from minidalle2.evaluation.stages import NO_ATTRIBUTES, format_clip_report

    r = {k: 0.5 for k in ("image_to_text_r1", "image_to_text_r5", "text_to_image_r1", "text_to_image_r5")}
    report = format_clip_report({"n_test": 5, "retrieval": r, "not_measured": {"zero_shot_accuracy": NO_ATTRIBUTES}})
    assert "zero-shot, binding probe: not measured" in report and "no shape attributes" in report


def test_cli_warns_and_truncates_a_prompt_longer_than_the_context(run, tmp_path, capsys):
    long = " ".join(["a large red circle left of a small blue square"] * 6)
    assert main(["generate", long, "-n", "1", "--steps", "2", "--run-dir", str(run),
                 "--out", str(tmp_path / "g.png")]) == 0
    assert "truncated" in capsys.readouterr().out


def test_cli_missing_stage_names_the_train_command(run, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(run, partial)
    shutil.rmtree(partial / "prior_ar")
    assert main(["generate", "a red circle", "--prior", "ar", "--run-dir", str(partial),
                 "--out", str(tmp_path / "g.png")]) == 2
    assert "minidalle2 train prior-ar" in capsys.readouterr().err


# ---------------------------------------------------------------- export (how data/pretrained is made)
def test_export_copies_what_inference_needs_and_records_a_manifest(run, tmp_path):
    out = tmp_path / "shipped"
    manifest = export_run(run, out, log=lambda *a: None)
    assert manifest["preset"] == "tiny" and manifest["command"] == "minidalle2 train all --preset tiny --run-dir run"
    assert set(manifest["stages"]) >= {"clip", "prior-diffusion", "prior-ar", "decoder"}
    assert "diffusion" in manifest["check"]["priors"] and "recon_clip_cos" in manifest["evaluation"]["decoder"]
    upsampler = manifest["evaluation"]["upsampler"]  # the cascade is measured on the copy too
    assert {"psnr", "ssim", "oracle_agreement"} <= set(upsampler) and upsampler["oracle_trusted"] is False  # tiny
    assert not list(out.rglob("train_state.safetensors"))  # optimizer moments stay behind
    assert not (out / "embeddings" / "train.safetensors").exists()
    model = UnCLIP.from_run_dir(out)  # the copy is a working run
    assert model.generate(["a red circle"], n=1, steps=2).shape[0] == 1
    with pytest.raises(UserError, match="already exists"):
        export_run(run, out)
    assert "note" not in manifest
    noted = export_run(run, tmp_path / "noted", log=lambda *a: None, note="the decoder was trained at another commit")
    assert noted["note"] == "the decoder was trained at another commit"
    assert set(noted["presets"].values()) == {"tiny"}


def test_export_names_each_stage_s_preset_when_they_differ(run, tmp_path):
    """A stage trained with its own settings (here the decoder, its learning rate changed) makes the run "mixed":
    the manifest names each stage's preset and says which is custom."""
    changed = tmp_path / "changed"
    shutil.copytree(run, changed)
    state_file = changed / "decoder" / "train_state.json"
    state = json.loads(state_file.read_text())
    state["config"]["train"]["lr"] *= 2
    state_file.write_text(json.dumps(state))
    manifest = export_run(changed, tmp_path / "mixed", log=lambda *a: None)
    assert manifest["preset"] == "mixed" and manifest["presets"]["decoder"] == "custom"
    assert manifest["presets"]["clip"] == "tiny"
    assert "minidalle2 train clip --preset tiny" in manifest["command"]
    assert "decoder: a custom recipe" in manifest["command"]


def test_export_records_the_commit_and_ignores_only_its_own_folder_s_changes(monkeypatch):
    top = Path(export.__file__).resolve().parents[2]
    status = {"out": " M data/pretrained/decoder/model.safetensors\n D data/pretrained/x.png\n"}

    def fake_git(args, **kw):
        said = {"rev-parse HEAD": "abc123\n", "rev-parse --show-toplevel": f"{top}\n"}.get(" ".join(args[1:3]))
        return subprocess.CompletedProcess(args, 0, said if said is not None else status["out"], "")

    monkeypatch.setattr(export.subprocess, "run", fake_git)
    assert export._git_commit(top / "data" / "pretrained") == "abc123"  # replacing the shipped run is the point
    assert export._git_commit() == "abc123 (with uncommitted changes)"
    status["out"] += " M minidalle2/decoder.py\n"  # code that differs from the commit is recorded as such
    assert export._git_commit(top / "data" / "pretrained") == "abc123 (with uncommitted changes)"
