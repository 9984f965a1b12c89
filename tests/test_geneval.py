"""Ground-truth evaluation: the metrics against closed forms, the prompt suite, the clause checks on renders the
test makes right or wrong on purpose, and the trust rule: an oracle below 99 % is refused."""

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest
import scipy.linalg
import torch

from minidalle2.checkpoint import read_json, write_json
from minidalle2.embeddings import encode_image, encode_text, load_clip
from minidalle2.data import HELD_OUT, PARTIAL_PLANS, POSITIONS, Scene, canonical_caption, make_scene, render
from minidalle2.errors import UserError
from minidalle2.evaluation import geneval, metrics, textdiff
from minidalle2.evaluation.oracle import (attribute_accuracy, check_trusted, fresh_test_scenes, quadrants,
                                          relation_between)
from minidalle2.pipeline import EDIT_METHODS
from minidalle2.presets import ORACLE as PRESETS
from minidalle2.runs import load, train
from minidalle2.tools.cli import main


def gaussian(n, d, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, d) + shift


# ---------------------------------------------------------------- distribution metrics
def test_frechet_distance_is_zero_for_one_set_and_the_squared_shift_for_a_shifted_copy():
    x = gaussian(500, 8, 0)
    assert abs(metrics.frechet_distance(x, x)) < 1e-8
    shift = torch.tensor([3.0, -1.0, 0, 0, 0, 0, 0, 2.0], dtype=torch.float64)
    assert metrics.frechet_distance(x, x + shift) == pytest.approx(shift.square().sum().item(), rel=1e-6)


def test_frechet_distance_matches_scipy_sqrtm():
    x, y = gaussian(300, 6, 1), gaussian(200, 6, 2) @ torch.randn(6, 6, generator=torch.Generator().manual_seed(3),
                                                                  dtype=torch.float64)
    mx, my, sx, sy = x.mean(0).numpy(), y.mean(0).numpy(), np.cov(x.T.numpy()), np.cov(y.T.numpy())
    reference = ((mx - my) ** 2).sum() + np.trace(sx + sy - 2 * scipy.linalg.sqrtm(sx @ sy).real)
    assert metrics.frechet_distance(x, y) == pytest.approx(reference, rel=1e-6)


def test_mmd_matches_a_brute_force_loop_and_grows_with_the_shift():
    x, y = gaussian(12, 3, 4), gaussian(12, 3, 5, shift=0.5)
    sigma = 1.3
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))  # noqa: E731
    xs, ys = x.numpy(), y.numpy()
    pairs = [(i, j) for i in range(12) for j in range(12) if i != j]
    brute = np.mean([k(xs[i], xs[j]) + k(ys[i], ys[j]) - k(xs[i], ys[j]) - k(xs[j], ys[i]) for i, j in pairs])
    assert metrics.mmd_rbf(x, y, sigma) == pytest.approx(brute, rel=1e-9)
    a, b = gaussian(400, 4, 6), gaussian(400, 4, 7)
    same = metrics.mmd_rbf(a, b)
    assert abs(same) < 0.01  # two samples of one distribution
    shifted = [metrics.mmd_rbf(a, b + s) for s in (0.5, 1.0, 2.0)]
    assert same < shifted[0] < shifted[1] < shifted[2]


def test_median_bandwidth_clip_score_and_diversity_on_small_cases():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert metrics.median_bandwidth(x[:1], x[1:]) == pytest.approx(5.0)
    z = torch.nn.functional.normalize(torch.randn(4, 5), dim=-1)
    assert metrics.clip_score(z, z) == pytest.approx(1.0) and metrics.clip_score(z, -z) == pytest.approx(-1.0)
    groups = torch.tensor([[0.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, 1.0]])  # prompt 0: distance 2; prompt 1: 0
    assert metrics.diversity(groups, n=2) == pytest.approx(1.0)
    assert metrics.diversity(groups, n=1) is None
    with pytest.raises(UserError, match="groups of n=3"):
        metrics.diversity(groups, n=3)
    with pytest.raises(UserError, match="at least 2"):
        metrics.frechet_distance(x[:1], x)
    with pytest.raises(UserError, match="one size"):
        metrics.mmd_rbf(z, z[:3])


# ---------------------------------------------------------------- the prompt suite
def test_suite_v2_keeps_v1_adds_partial_prompts_and_speaks_the_datas_language():
    suite = geneval.prompt_suite()
    assert geneval.SUITE_VERSION == 2 and len(suite) == 85
    assert [sum(p.kind == k for p in suite) for k in geneval.KINDS] == [30, 20, 15, 20]
    assert len({p.text for p in suite}) == 85
    for p in suite:
        assert p.text == canonical_caption(p.scene, p.stated or None)
        assert (p.kind == "partial") == bool(p.open) == bool(p.stated)
        if p.stated:
            assert p.stated in PARTIAL_PLANS[len(p.scene.objects)]
        held = any((o.color, o.shape) in HELD_OUT for o in p.scene.objects)
        assert held == (p.kind == "held_out")
        if len(p.scene.objects) == 2:  # the caption's relation is true of the scene
            a, b = p.scene.objects
            assert relation_between(a.position, b.position) == p.scene.relation
    assert suite[0].text == "a small red circle in the top left"
    # version 1's prompts are unchanged, so full-prompt numbers compare across versions
    v1 = "\n".join(f"{p.kind}: {p.text}" for p in suite[:65])
    assert hashlib.sha256(v1.encode()).hexdigest()[:16] == "722374458deadde3"
    # a versioned suite must not drift with the data's sampler: if this fails, bump SUITE_VERSION
    listing = "\n".join(f"{p.kind}: {p.text}" for p in suite)
    assert hashlib.sha256(listing.encode()).hexdigest()[:16] == "7260887072001ea9"


def test_renders_of_a_partial_prompt_draw_what_it_leaves_open_and_keep_what_it_states():
    p = next(p for p in geneval.prompt_suite() if p.stated == ("color", "shape"))  # e.g. "a red circle"
    images = geneval.render_prompts([p], 400, 32, seed=0)
    o = p.scene.objects[0]
    rng = np.random.default_rng([1, 0])  # render_prompts' stream for seed 0
    scenes = [geneval._complete(p, rng) for _ in range(400)]
    assert torch.equal(images[-1], torch.from_numpy(render(scenes[-1], 32)).permute(2, 0, 1).float() / 255)
    assert {(s.objects[0].color, s.objects[0].shape) for s in scenes} == {(o.color, o.shape)}
    for attribute, support in (("position", POSITIONS), ("size", ("small", "large"))):
        values = [getattr(s.objects[0], attribute) for s in scenes]
        assert geneval.metrics.coverage(values, list(support))["entropy"] > 0.98


# ---------------------------------------------------------------- clause checks
def test_the_truth_passes_every_clause_and_a_recoloured_object_fails():
    single, two = geneval.prompt_suite()[0], geneval.prompt_suite()[30]
    for p in (single, two):
        assert all(geneval.check(p, p.scene).values())
    o = single.scene.objects[0]
    recoloured = make_scene("blue", o.shape, o.size, o.position)
    checks = geneval.check(single, recoloured)
    assert not checks["color"] and not checks["all"] and checks["shape"] and checks["position"]
    extra = Scene(single.scene.objects + make_scene("green", "cross", "small", "bottom right").objects, None)
    assert not geneval.check(single, extra)["count"]


def test_two_objects_with_swapped_colours_fail_binding_but_not_the_colour_set():
    p = next(p for p in geneval.prompt_suite() if p.kind == "two_object")
    a, b = p.scene.objects
    swapped = Scene((make_scene(b.color, a.shape, a.size, a.position).objects[0],
                     make_scene(a.color, b.shape, b.size, b.position).objects[0]), p.scene.relation)
    checks = geneval.check(p, swapped)
    assert checks["colors"] and checks["shapes"] and not checks["binding"] and not checks["all"]
    moved = Scene((a, dataclasses.replace(b, position=a.position)), None)  # both in one quadrant: no relation
    assert not geneval.check(p, moved)["relation"]


class PerfectReader:
    """Stands in for a trained oracle: it 'reads' each render by looking up the scene it was drawn from, sure of
    it unless the scene is listed in ``unsure``."""

    def __init__(self, scenes, image_size, unsure=()):
        self.table = {render(s, image_size).tobytes(): s for s in scenes}
        self.unsure = [render(s, image_size).tobytes() for s in unsure]

    def read_with_confidence(self, images):
        u8 = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return ([self.table.get(im.tobytes(), Scene((), None)) for im in u8],
                [0.5 if im.tobytes() in self.unsure else 1.0 for im in u8])


def test_partial_prompts_are_scored_on_what_they_state_and_invalid_scenes_count():
    p = next(p for p in geneval.prompt_suite() if p.stated == ("color", "shape"))  # no size, no position
    o = p.scene.objects[0]
    elsewhere = make_scene(o.color, o.shape, "large" if o.size == "small" else "small", "bottom right")
    assert geneval.check(p, elsewhere)["all"]  # unstated size and position are not checked
    assert set(geneval.check(p, elsewhere)) == {"count", "clean", "color", "shape", "valid", "all"}
    assert not geneval.check(p, make_scene("cyan" if o.color != "cyan" else "red", o.shape))["all"]
    duplicate = Scene(elsewhere.objects + make_scene(o.color, o.shape, o.size, "top left").objects, None)
    empty = Scene((), None)
    for invalid in (duplicate, empty):
        assert not geneval.check(p, invalid)["valid"] and not geneval.check(p, invalid)["all"]
    blend = geneval.check(p, elsewhere, confidence=geneval.CLEAN - 0.01)  # e.g. a colour between two
    assert not blend["clean"] and not blend["valid"] and not blend["all"]
    two = next(p for p in geneval.prompt_suite() if "relation" in p.open)
    a, b = two.scene.objects
    diagonal = Scene((make_scene(a.color, a.shape, a.size, "top left").objects[0],
                      make_scene(b.color, b.shape, b.size, "bottom right").objects[0]), None)
    assert geneval.check(two, diagonal)["all"]  # no relation stated: any layout of the two objects


def test_coverage_is_one_on_uniform_draws_and_zero_on_a_constant():
    support = list(POSITIONS)
    assert metrics.coverage(support * 5, support) == {"entropy": 1.0, "tv": 0.0}
    assert metrics.coverage(["top left"] * 20, support) == {"entropy": 0.0, "tv": 0.75}
    assert metrics.coverage([], support) == {"entropy": 0.0, "tv": 1.0}
    half = metrics.coverage(["top left", "top right"] * 4, support)  # two of four modes, evenly
    assert half["entropy"] == pytest.approx(0.5) and half["tv"] == pytest.approx(0.5)
    outside = metrics.coverage(["diagonal"] * 4, ["left of", "right of", "above", "below"])
    assert outside == {"entropy": 0.0, "tv": 1.0}  # values the data never shows are all distance
    with pytest.raises(UserError, match="at least 2"):
        metrics.coverage(["small"], ["small"])


def test_score_row_measures_the_coverage_of_what_partial_prompts_leave_open(clip_run):
    clip = load_clip(clip_run[0])
    partial = [p for p in geneval.prompt_suite() if p.stated == ("color", "shape", "size")][:2]  # position open
    rng = np.random.default_rng(0)
    spread = [dataclasses.replace(partial[0].scene, objects=(make_scene(o.color, o.shape, o.size, q).objects[0],))
              for o in partial[0].scene.objects for q in POSITIONS]  # every quadrant once
    o = partial[1].scene.objects[0]
    blurred = make_scene(o.color, o.shape, o.size, o.position, rng)  # jittered: another render the reader is unsure of
    stuck = [partial[1].scene] * 3 + [blurred]  # always the same quadrant
    scenes = spread + stuck
    images = torch.from_numpy(np.stack([render(s, 32) for s in scenes])).permute(0, 3, 1, 2).float() / 255
    row, _ = geneval.score_row(PerfectReader(scenes, 32, unsure=[blurred]), clip, partial, images, 4, None, None)
    assert row["partial_all"] == pytest.approx(7 / 8) and row["partial_invalid"] == pytest.approx(1 / 8)
    assert row["position_entropy"] == pytest.approx(0.5) and row["fd_clip"] is None  # (1 + 0) / 2
    spread_cov, stuck_cov = row["coverage"]
    assert spread_cov["position"]["entropy"] == 1.0 and stuck_cov["n_valid"] == 3
    assert stuck_cov["position"] == {"entropy": 0.0, "tv": 0.75, "counts": {o.position: 3}}


def test_score_row_gives_renders_full_marks_and_recoloured_renders_zero(clip_run):
    clip = load_clip(clip_run[0])
    prompts = [p for k in geneval.KINDS[:3] for p in geneval.prompt_suite() if p.kind == k][::8]  # a few full ones
    scenes = [p.scene for p in prompts]
    images = torch.from_numpy(np.stack([render(s, 32) for s in scenes])).permute(0, 3, 1, 2).float() / 255
    z_t = encode_text(clip, [p.text for p in prompts])[0]
    z_ref = encode_image(clip, geneval.render_prompts(prompts, 1, 32, seed=1))
    row, per_image = geneval.score_row(PerfectReader(scenes, 32), clip, prompts, images, 1, z_t, z_ref)
    assert row["single_all"] == row["two_object_all"] == row["held_out_all"] == row["held_out_single_all"] == 1.0
    assert all(r["checks"]["all"] for r in per_image)
    assert row["diversity"] is None and row["fd_clip"] >= 0

    recolour = {"red": "green", "green": "red", "blue": "yellow", "yellow": "blue", "purple": "cyan",
                "cyan": "orange", "orange": "purple"}
    wrong = [Scene(tuple(dataclasses.replace(o, color=recolour[o.color]) for o in s.objects), s.relation)
             for s in scenes]
    images = torch.from_numpy(np.stack([render(s, 32) for s in wrong])).permute(0, 3, 1, 2).float() / 255
    row, _ = geneval.score_row(PerfectReader(wrong, 32), clip, prompts, images, 1, z_t, z_ref)
    assert row["single_color"] == 0 and row["single_shape"] == 1 and row["single_all"] == 0
    assert row["two_object_all"] == 0 and row["held_out_all"] == 0 and row["held_out_single_all"] == 0


# ---------------------------------------------------------------- the oracle
def test_relation_is_read_off_the_quadrants():
    assert relation_between("top left", "top right") == "left of"
    assert relation_between("bottom right", "bottom left") == "right of"
    assert relation_between("top right", "bottom right") == "above"
    assert relation_between("bottom left", "top left") == "below"
    assert relation_between("top left", "bottom right") is None and relation_between("top left", "top left") is None


def test_quadrant_crops_come_in_the_order_of_the_positions():
    for q, position in enumerate(POSITIONS):
        image = torch.from_numpy(render(make_scene("red", "circle", "large", position), 32)).permute(2, 0, 1)
        lit = quadrants(image[None].float())[0].flatten(1).sum(-1) > 0  # (4,)
        assert lit.tolist() == [k == q for k in range(4)]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """An oracle trained for ~10 s: enough to pass the 99 % bar on fresh renders (the quick preset reaches 100 %).
    It reads the stated attributes only: the details take longer to learn (test_variations checks a quick one)."""
    quick = PRESETS["quick"]
    cfg = dataclasses.replace(quick, model=dataclasses.replace(quick.model, details=False),
                              data=dataclasses.replace(quick.data, n_eval=500),
                              train=dataclasses.replace(quick.train, steps=300, batch_size=32, warmup_steps=20,
                                                        ckpt_every=300))
    run = tmp_path_factory.mktemp("oracle")
    train("oracle", run, cfg, progress=False, log=lambda *a: None)
    oracle = load("oracle", run)
    check_trusted(oracle.accuracy, run)  # refuses it if it is below 99 %
    return oracle


def test_a_trained_oracle_reads_fresh_renders_and_scores_the_suite_renders_correct(oracle):
    assert min(oracle.accuracy.values()) >= 0.99
    truth = fresh_test_scenes(200, seed=7)  # not the scenes its accuracy was measured on
    images = torch.from_numpy(np.stack([render(s, 32) for s in truth])).permute(0, 3, 1, 2)
    assert min(attribute_accuracy(oracle.read(images), truth).values()) >= 0.98
    suite = geneval.prompt_suite()
    seen = oracle.read(geneval.render_prompts(suite, 1, 32, seed=3))
    assert np.mean([geneval.check(p, s)["all"] for p, s in zip(suite, seen)]) >= 0.95


def test_a_trained_oracle_marks_recoloured_and_moved_objects_wrong(oracle):
    p = geneval.prompt_suite()[0]  # a small red circle in the top left
    o = p.scene.objects[0]
    variants = {"color": make_scene("blue", o.shape, o.size, o.position),
                "shape": make_scene(o.color, "square", o.size, o.position),
                "size": make_scene(o.color, o.shape, "large", o.position),
                "position": make_scene(o.color, o.shape, o.size, "bottom right")}
    images = torch.from_numpy(np.stack([render(s, 32) for s in variants.values()])).permute(0, 3, 1, 2)
    for (clause, _), seen in zip(variants.items(), oracle.read(images)):
        checks = geneval.check(p, seen)
        assert not checks[clause] and not checks["all"], clause


# ---------------------------------------------------------------- the whole evaluation
# `run`: every stage trained with the tiny preset (tests/conftest.py)
def test_a_tiny_oracle_is_refused_with_its_accuracy_and_the_fix(run, capsys):
    acc = read_json(run / "oracle" / "config.json")["accuracy"]
    assert set(acc) == {"n_objects", "color", "shape", "size", "position", "relation"}
    with pytest.raises(UserError, match=r"reads \w+ correctly in only .*minidalle2 train oracle"):
        geneval.evaluate_pipeline(run, n=1, log=lambda *a: None)
    assert main(["evaluate", "pipeline", "--run-dir", str(run)]) == 2
    assert "not be trustworthy" in capsys.readouterr().err


def test_missing_or_unfinished_oracle_names_the_command(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = read_json(copy / "oracle" / "config.json")
    write_json(copy / "oracle" / "config.json", {k: v for k, v in cfg.items() if k != "accuracy"})
    with pytest.raises(UserError, match="has not finished training.*--resume"):
        geneval.evaluate_pipeline(copy, log=lambda *a: None)
    shutil.rmtree(copy / "oracle")
    with pytest.raises(UserError, match="train oracle --run-dir"):
        geneval.evaluate_pipeline(copy, log=lambda *a: None)


def test_the_caption_row_needs_a_decoder_that_reads_captions(run, monkeypatch):
    load = geneval.UnCLIP.from_run_dir

    def without_captions(run_dir):
        model = load(run_dir)
        model.decoder.cfg = dataclasses.replace(model.decoder.cfg, use_text_tokens=False)
        return model
    monkeypatch.setattr(geneval.UnCLIP, "from_run_dir", staticmethod(without_captions))
    with pytest.raises(UserError, match="reads the caption's tokens"):
        geneval.evaluate_pipeline(run, rows=("caption",), trust_oracle=False, log=lambda *a: None)


def test_bad_arguments_are_user_errors(run):
    with pytest.raises(UserError, match="at least 1 image"):
        geneval.evaluate_pipeline(run, n=0, trust_oracle=False)
    with pytest.raises(UserError, match="unknown row"):
        geneval.evaluate_pipeline(run, rows=("clip",), trust_oracle=False)
    with pytest.raises(UserError, match="prior guidance"):
        geneval.evaluate_pipeline(run, prior_guidance=-1, trust_oracle=False)
    with pytest.raises(UserError, match=r"\(N, 3, H, W\)"):
        load("oracle", run).read(torch.zeros(3, 32, 32))


def test_evaluate_pipeline_json_has_every_row_and_key(run, tmp_path, monkeypatch):
    """The trust check is satisfied by hand (the tiny oracle's numbers are written as 100 %), so this runs the
    whole command on tiny models; it checks the plumbing, not the scores."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = read_json(copy / "oracle" / "config.json")
    write_json(copy / "oracle" / "config.json", {**cfg, "accuracy": {k: 1.0 for k in cfg["accuracy"]}})
    prompts = [p for k in geneval.KINDS for p in geneval.prompt_suite() if p.kind == k][::10]
    result = geneval.evaluate_pipeline(copy, n=2, prompts=prompts, rows=geneval.ROWS[1:], n_partial=2,
                                       log=lambda *a: None)
    assert set(result["rows"]) == set(geneval.ROWS)
    for row in result["rows"].values():
        assert set(geneval.METRICS) <= set(row)
        axes = {f"relation_{geneval.AXES[p.scene.relation]}" for p in prompts if p.kind == "two_object"}
        absent = {"relation_left_right", "relation_above_below"} - axes  # no prompt on that axis in this subset
        assert all((row[m] is None) == (m in absent) for m in geneval.METRICS)
    assert "diffusion" in geneval.format_pipeline_report(result)
    out = tmp_path / "pipeline.json"
    monkeypatch.setattr(geneval, "prompt_suite", lambda: prompts)  # keeps the test short
    assert main(["evaluate", "pipeline", "--run-dir", str(copy), "-n", "1", "--n-partial", "2",
                 "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["suite_version"] == geneval.SUITE_VERSION and saved["n_prompts"] == len(prompts)
    assert "oracle_accuracy" in saved
    assert set(saved["rows"]) == {"real", "diffusion", "ar", "none"}

    # several seeds: each row is the mean over the seeds, with its standard deviation
    assert main(["evaluate", "pipeline", "--run-dir", str(copy), "-n", "1", "--n-partial", "2", "--seeds", "0,1",
                 "--rows", "none,true_z_i", "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["seeds"] == [0, 1] and set(saved["rows"]) == {"real", "none", "true_z_i"}
    for name, row in saved["rows"].items():
        for m in ("single_all", "clip_score"):
            values = torch.tensor([r["rows"][name][m] for r in saved["per_seed"]], dtype=torch.float64)
            assert row[m] == pytest.approx(values.mean().item(), abs=1e-4)
            assert row["std"][m] == pytest.approx(values.std().item(), abs=1e-4)
    assert "±" in geneval.format_pipeline_report(saved) and "±" in geneval.markdown_table(saved)
    for bad in (["--rows", "clip"], ["--seeds", "zero"], ["--rows", ""], ["--prior-guidance", "-1"]):
        assert main(["evaluate", "pipeline", "--run-dir", str(copy), *bad]) == 2
    assert main(["evaluate", "clip", "--run-dir", str(copy), "--prior-guidance", "3"]) == 2

    # the priors' guidance reaches the priors, and the JSON says which was used
    asked, sample_z_i = [], geneval.UnCLIP.sample_z_i

    def spy(self, prompts, prior="diffusion", n=1, seed=0, guidance=None):
        asked.append(guidance)
        return sample_z_i(self, prompts, prior, n, seed, guidance)
    monkeypatch.setattr(geneval.UnCLIP, "sample_z_i", spy)
    assert main(["evaluate", "pipeline", "--run-dir", str(copy), "-n", "1", "--n-partial", "2", "--rows", "diffusion",
                 "--prior-guidance", "3", "--json", str(out)]) == 0
    assert asked and set(asked) == {3.0} and json.loads(out.read_text())["prior_guidance"] == 3.0


def test_evaluate_all_writes_one_json_and_one_markdown_report(run, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = read_json(copy / "oracle" / "config.json")
    write_json(copy / "oracle" / "config.json", {**cfg, "accuracy": {k: 1.0 for k in cfg["accuracy"]}})
    few = [p for k in geneval.KINDS for p in geneval.prompt_suite() if p.kind == k][::10]
    monkeypatch.setattr(geneval, "prompt_suite", lambda: few)  # keeps the test short
    one = textdiff.load_suite()[:1]
    monkeypatch.setattr(textdiff, "load_suite", lambda: one)  # one text diff, at one theta
    monkeypatch.setattr(textdiff, "THETAS", (0.5,))
    monkeypatch.setattr(textdiff, "STEPS", 2)
    assert main(["evaluate", "all", "--run-dir", str(copy), "-n", "1"]) == 0
    report = json.loads((copy / "evaluation.json").read_text())
    assert set(report) == {"clip", "priors", "decoder", "pipeline", "upsampler", "textdiff"}  # `train all`: an upsampler
    assert {"upsampler", "bicubic"} <= set(report["upsampler"]["psnr"]) and "decoder" in report["upsampler"]
    assert set(report["textdiff"]["methods"]) == set(EDIT_METHODS)
    text = (copy / "evaluation.md").read_text()
    assert "## Pipeline" in text and "| diffusion |" in text and "## Upsampler" in text and "## Text diffs" in text


def test_layout_metrics_split_the_relation_by_axis_and_count_objects_in_their_quadrants():
    """Hand-made readings: the left/right prompt drawn right, the above/below one mirrored vertically (the relation
    fails on that axis only), and 400 scenes placed uniformly at random, whose objects hit their quadrant a quarter
    of the time."""
    red, blue = make_scene("red", "circle", "large", "top left"), make_scene("blue", "square", "large", "top right")
    beside = geneval.Prompt("two_object", Scene(red.objects + blue.objects, "left of"), "beside")
    over = Scene((make_scene("red", "circle", "large", "top left").objects[0],
                  make_scene("blue", "square", "large", "bottom left").objects[0]), "above")
    above = geneval.Prompt("two_object", over, "above")
    flipped = Scene((make_scene("red", "circle", "large", "bottom left").objects[0],
                     make_scene("blue", "square", "large", "top left").objects[0]), "below")
    per_image = [{"prompt": k, "seen": seen, "checks": geneval.check(p, seen)}
                 for k, (p, seen) in enumerate([(beside, beside.scene), (above, flipped)])]
    m = geneval.layout_metrics([beside, above], per_image)
    assert m["relation_left_right"] == 1.0 and m["relation_above_below"] == 0.0
    assert m["object_quadrant"] == 0.5  # both of the first image's objects, neither of the second's

    rng = np.random.default_rng(0)
    per_image = []
    for k in range(400):
        q = rng.permutation(4)[:2]
        seen = Scene(tuple(make_scene(o.color, o.shape, o.size, POSITIONS[i]).objects[0]
                           for o, i in zip(beside.scene.objects, q)), None)
        per_image.append({"prompt": 0, "seen": seen, "checks": geneval.check(beside, seen)})
    m = geneval.layout_metrics([beside], per_image)
    # "left of" holds for 2 of the 12 ordered pairs of quadrants: (top left, top right), (bottom left, bottom right)
    assert abs(m["object_quadrant"] - 0.25) < 0.05 and abs(m["relation_left_right"] - 1 / 6) < 0.05
    assert m["relation_above_below"] is None  # no prompt on that axis
