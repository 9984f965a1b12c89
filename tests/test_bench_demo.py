"""`minidalle2 bench` and `minidalle2 demo` end to end, with the tiny preset."""

import json

import pytest

from minidalle2.errors import UserError
from minidalle2.tools import bench, demo, run
from minidalle2.tools.bench import format_bench, run_bench
from minidalle2.tools.demo import run_demo


def test_bench_reports_every_stage_with_positive_figures():
    result = run_bench("tiny", log=lambda *a: None)
    assert result["device"] and result["threads"] >= 1
    assert {"clip", "prior-diffusion", "prior-ar", "decoder", "oracle"} <= set(result["stages"])
    for figures in result["stages"].values():
        assert all(v > 0 for k, v in figures.items() if k.startswith(("train_", "sample_s")))
    assert "samples/s" in format_bench(result)


def test_demo_trains_every_stage_writes_figures_and_resumes(tmp_path):
    out = tmp_path / "demo"
    metrics = run_demo(out, preset="tiny", progress=False, log=lambda *a: None)
    for name in ("dataset.png", "clip_loss.png", "clip_similarity.png", "clip_zero_shot.png", "priors.png",
                 "text_to_image.png", "variations.png", "interpolation.png", "textdiff.png",
                 "metrics.json", "metrics.md"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "metrics.json").read_text())["clip"] == metrics["clip"]
    assert {"diffusion", "ar"} <= set(metrics["priors"]) and "recon_clip_cos" in metrics["decoder"]
    assert metrics["pictures"]["priors"] == ["diffusion", "ar", "none"]
    logs = []
    run_demo(out, preset="tiny", progress=False, log=logs.append)  # reuses the finished stages
    assert not any(line.startswith("training") for line in logs)


def test_demo_pretrained_without_shipped_checkpoints_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "PRETRAINED", tmp_path / "absent")
    with pytest.raises(UserError, match="no shipped checkpoints"):
        run_demo(tmp_path / "out", pretrained=True)


def test_bench_times_the_whole_demo(monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: calls.append(kw) or {"timings": {"clip_s": 1.5}})
    result = run_bench("tiny", stages=[], demo=True, log=lambda *a: None)
    assert result["stages"] == {} and calls[0]["preset"] == "tiny"
    assert result["demo"]["clip_s"] == 1.5 and result["demo"]["wall_s"] >= 0
    assert "demo" in bench.format_bench(result)
