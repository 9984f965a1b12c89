"""`minidalle2 bench` and `minidalle2 demo` end to end, with the tiny preset."""

import json
import math

import pytest

from minidalle2.errors import UserError
from minidalle2.tools import bench, demo, machine, run
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
                 "text_to_image.png", "text_to_image_diffusion.png", "text_to_image_ar.png",
                 "text_to_image_none.png", "variations.png", "interpolation.png", "textdiff.png",
                 "metrics.json", "metrics.md"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "metrics.json").read_text())["clip"] == metrics["clip"]
    assert {"diffusion", "ar"} <= set(metrics["priors"]) and "recon_clip_cos" in metrics["decoder"]
    assert metrics["pictures"]["priors"] == ["diffusion", "ar", "none"]
    # the timing report: every part, on one clock, summing to the total
    timings = json.loads((out / "metrics.json").read_text())["timings"]
    parts = {k: v for k, v in timings.items() if k != "total_s"}
    assert set(parts) == {"clip_s", "embedding-cache_s", "prior-diffusion_s", "prior-ar_s", "decoder_s",
                          "evaluation_s", "figures_s", "other_s"}
    assert all(v >= 0 for v in parts.values()) and timings["decoder_s"] > 0 and timings["evaluation_s"] > 0
    assert abs(sum(parts.values()) - timings["total_s"]) < 1.0
    assert 0 < metrics["machine"]["gflops"] < math.inf and metrics["machine"]["threads"] >= 1
    assert "embedding-cache" in (out / "metrics.md").read_text()
    logs = []
    run_demo(out, preset="tiny", progress=False, log=logs.append)  # reuses the finished stages
    assert not any(line.startswith("training") for line in logs)


def test_demo_pretrained_without_shipped_checkpoints_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "PRETRAINED", tmp_path / "absent")
    with pytest.raises(UserError, match="no shipped checkpoints"):
        run_demo(tmp_path / "out", pretrained=True)


def test_bench_times_the_whole_demo(monkeypatch):
    calls = []
    fake = {"timings": {"clip_s": 1.5, "other_s": 0.5, "total_s": 2.0}, "machine": {"gflops": 10.0}}
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: calls.append(kw) or fake)
    result = run_bench("tiny", stages=[], demo=True, log=lambda *a: None)
    assert result["stages"] == {} and calls[0]["preset"] == "tiny"
    assert result["demo"]["clip_s"] == 1.5 and result["demo"]["wall_s"] >= 0
    assert result["demo"]["machine"] == {"gflops": 10.0} and 0 < result["machine"]["gflops"] < math.inf
    assert "demo" in bench.format_bench(result)


def test_the_part_clock_charges_every_second_to_one_part():
    clock = machine.PartClock()
    with clock.part("a"):
        clock.switch("b")  # as the demo does when CLIP starts caching its embeddings
    with clock.part("c"):
        with clock.part("d"):
            pass
    table = clock.table()
    assert list(table) == ["a", "b", "c", "d", "other", "total"]
    assert abs(sum(v for k, v in table.items() if k != "total") - table["total"]) < 0.05


@pytest.mark.parametrize("flags, native", [({"avx2", "avx512_f"}, False), ({"avx2", "avx512_bf16"}, True),
                                           ({"amx_tile", "amx_bf16"}, True), (set(), False)])
def test_native_bf16_reads_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr(machine, "cpu_flags", lambda: flags)
    assert machine.native_bf16() is native


def test_bf16_is_chosen_only_where_native_and_faster(monkeypatch):
    monkeypatch.setattr(machine, "native_bf16", lambda: False)
    assert not machine.choose_bf16(fp32_s=2.0, bf16_s=1.0)  # faster, but emulated: never
    assert bench.bench_decoder_bf16("tiny") == {"native_bf16": False, "bf16": False}  # nothing timed
    assert "not native on this CPU" in format_bench({"device": "cpu", "threads": 1, "torch": "", "preset": "tiny",
                                                     "stages": {}, "decoder_bf16": {"native_bf16": False}})
    monkeypatch.setattr(machine, "native_bf16", lambda: True)
    assert machine.choose_bf16(fp32_s=2.0, bf16_s=1.0) and not machine.choose_bf16(fp32_s=1.0, bf16_s=2.0)
    assert not machine.choose_bf16(fp32_s=1.0, bf16_s=0.97)  # within the noise: fp32 stays
    r = bench.bench_decoder_bf16("tiny", steps=1, warmup=1)  # timed both ways (emulated here if not native)
    assert r["fp32_s_per_step"] > 0 and r["bf16_s_per_step"] > 0
    assert r["bf16"] == (r["bf16_s_per_step"] < 0.9 * r["fp32_s_per_step"])
