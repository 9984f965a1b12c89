"""The checkpoints shipped in data/pretrained: they load, and their recorded numbers reproduce."""

import json
import shutil

import pytest

from minidalle2.checkpoint import is_trained, read_config
from minidalle2.errors import UserError
from minidalle2.evaluation import stages as evaluate
from minidalle2.pipeline import UnCLIP
from minidalle2.presets import PRESETS
from minidalle2.tools import run as run_module
from minidalle2.tools.demo import run_demo
from minidalle2.tools.export import BUDGET_MB, FILE_LIMIT_MB, shipped_mb
from minidalle2.runs import STAGES
from minidalle2.tools.run import PRETRAINED


@pytest.fixture(scope="module")
def manifest():
    path = PRETRAINED / "manifest.json"
    assert path.exists(), f"{path} is missing: the shipped checkpoints are part of the repository"
    return json.loads(path.read_text())


def test_manifest_records_how_the_run_was_made(manifest):
    assert manifest["command"].startswith("minidalle2 train ")
    assert set(manifest.get("presets", {})) <= set(manifest["stages"])
    assert manifest["git_commit"] and manifest["hardware"]
    assert set(manifest["stages"]) >= {"clip", "prior-diffusion", "prior-ar", "decoder"}
    assert all(s["wall_s"] > 0 for s in manifest["stages"].values())
    size = sum(f.stat().st_size for f in PRETRAINED.rglob("*") if f.is_file())
    assert size <= 50 * 2**20, f"data/pretrained is {size / 2**20:.1f} MB; the budget is 50 MB"
    assert not list(PRETRAINED.rglob("*.pt")) and not list(PRETRAINED.rglob("*.pkl"))  # safetensors + JSON only
    assert all(is_trained(PRETRAINED, s) for s in STAGES if s in manifest["stages"])


def test_recorded_clip_numbers_reproduce(manifest):
    recorded = manifest["evaluation"]["clip"]
    result = evaluate.evaluate_clip(PRETRAINED)
    for key, value in recorded["zero_shot_accuracy"].items():
        assert result["zero_shot_accuracy"][key] == pytest.approx(value, abs=0.005), key
    for key, value in recorded["retrieval"].items():
        assert result["retrieval"][key] == pytest.approx(value, abs=0.005), key


def test_recorded_prior_numbers_reproduce(manifest):
    check = manifest["check"]
    result = evaluate.evaluate_priors(PRETRAINED, n=check["priors_n"])
    assert result["baseline_cos_text_image"] == pytest.approx(check["priors"]["baseline_cos_text_image"], abs=1e-4)
    for name in ("diffusion", "ar"):
        for key, value in check["priors"][name].items():
            assert result[name][key] == pytest.approx(value, abs=0.005), (name, key)


def test_the_shipped_run_generates(manifest):
    model = UnCLIP.from_run_dir(PRETRAINED)
    images = model.generate(["a large red circle in the top left"], n=2, steps=5)
    assert images.shape == (2, 3, model.image_size, model.image_size)


def test_demo_pretrained_draws_every_picture_with_the_recorded_metrics(manifest, tmp_path):
    metrics = run_demo(tmp_path, pretrained=True, progress=False, log=lambda *a: None)
    for name in ("text_to_image.png", "variations.png", "interpolation.png", "textdiff.png", "priors.png",
                 "metrics.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert metrics["priors"] == manifest["evaluation"]["priors"]  # recorded on this copy, not measured again
    assert "run" not in {p.name for p in tmp_path.iterdir()}  # nothing was trained
    # the shipped run carries the cascade: every picture goes through its upsampler, 32 -> 64
    assert "upsampler" in manifest["stages"]
    assert metrics["pictures"]["upsampled"] and metrics["pictures"]["side"] == 64


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_a_run_of_each_preset_fits_the_shipping_budget(preset):
    sizes = shipped_mb(preset)
    assert max(sizes.values()) <= FILE_LIMIT_MB, sizes
    assert sum(sizes.values()) <= 0.9 * BUDGET_MB, sizes  # the rest: JSON, sample grids


def test_the_size_estimate_matches_the_shipped_files(manifest):
    shipped = read_config(PRETRAINED / "decoder", PRESETS["decoder"]["quick"])["model"]  # its own U-Net
    estimate = shipped_mb(manifest.get("presets", {}).get("clip", manifest["preset"]), decoder=shipped)
    files = {"clip": "clip/open_clip_model.safetensors", "decoder": "decoder/model.safetensors",
             "prior-diffusion": "prior_diffusion/model.safetensors"}
    for stage, path in files.items():
        actual = (PRETRAINED / path).stat().st_size / 2**20
        assert actual == pytest.approx(estimate[stage], rel=0.1), stage
    # the AR prior's estimate is for the most PCA components it could keep, an upper bound
    assert (PRETRAINED / "prior_ar" / "model.safetensors").stat().st_size / 2**20 <= estimate["prior-ar"]


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A copy of data/pretrained that the shipped-run code uses instead of the real one."""
    copy = tmp_path / "pretrained"
    shutil.copytree(PRETRAINED, copy)
    monkeypatch.setattr(run_module, "PRETRAINED", copy)
    return copy


def test_the_manifest_lists_every_shipped_file_with_its_hash(manifest):
    files = {str(f.relative_to(PRETRAINED)) for f in PRETRAINED.rglob("*") if f.is_file()}
    assert set(manifest["files"]) == files - {"manifest.json"}
    run_module.check_shipped(PRETRAINED)  # the checkout's copy is whole


@pytest.mark.parametrize("damage", ["missing", "changed", "manifest"])
def test_a_damaged_shipped_run_is_refused_with_how_to_restore_it(shipped_copy, tmp_path, monkeypatch, damage):
    weights = shipped_copy / "decoder" / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    elif damage == "changed":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        (shipped_copy / "manifest.json").write_text('{"preset": "quick", "fil')  # cut short
    out = tmp_path / "demo_out"
    with pytest.raises(UserError, match="git checkout -- data/pretrained") as error:
        run_demo(out, pretrained=True, progress=False, log=lambda *a: None)
    said = "unreadable" if damage == "manifest" else f"1 file(s) {damage}: decoder/model.safetensors"
    assert said in str(error.value)
    assert not out.exists()  # nothing half-written
    monkeypatch.setattr(run_module, "SMOKE", False)  # as a student runs them
    with pytest.raises(UserError, match="git checkout -- data/pretrained"):
        run_module.notebook_run(["decoder"])  # the notebooks stop with the same message
