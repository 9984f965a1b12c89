"""Details no caption states, and what variations keep and change (render.py, evaluation/variations.py)."""

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from minidalle2.data import Scene, ShapesConfig, ShapesDataset, make_scene, render
from minidalle2.evaluation.oracle import detail_accuracy, measure_accuracy, plain
from minidalle2.evaluation.variations import evaluate_variations, format_variations_report, variation_scores
from minidalle2.render import BACKGROUNDS, DETAILS, TURNABLE, Details
from minidalle2.runs import load
from minidalle2.tools.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
# sha256 of the first 300 train images (32 px) as rendered before details existed
PLAIN_SHA256 = "ef2e510b75d26ff3f5101da2148815d35d451452db259edbf023cbe7cfb6349b"


def test_details_off_renders_the_plain_images_bit_for_bit():
    images = ShapesDataset("train", ShapesConfig(n_train=300)).images()
    assert hashlib.sha256(images.numpy().tobytes()).hexdigest() == PLAIN_SHA256


def test_details_come_from_their_own_stream():
    """Turning details on changes the pixels and nothing else: same scenes, captions, stated clauses, swaps."""
    off = ShapesDataset("train", ShapesConfig(n_train=200))
    on = ShapesDataset("train", ShapesConfig(n_train=200, details=True))
    assert off.captions() == on.captions() and off.swapped_captions() == on.swapped_captions()
    for i in range(200):
        a_off, a_on = off.attributes_of(i), on.attributes_of(i)
        assert a_off == {k: v for k, v in a_on.items() if k in a_off}
        assert {k for k in a_on if k not in a_off} == {"background", "fill0", "fill1", "turn0", "turn1"}
    assert not torch.equal(off.images(), on.images())
    # every detail value occurs, and a turn is recorded exactly for the shapes it applies to
    attrs = on.attributes()
    assert {a["background"] for a in attrs} == set(BACKGROUNDS)
    assert {a["fill0"] for a in attrs} == set(DETAILS["fill"])
    for a in attrs:
        for k in range(a["n_objects"]):
            assert (a[f"turn{k}"] != "") == (a[f"shape{k}"] in TURNABLE)


def test_redrawn_details_keep_the_scene_and_change_only_the_details():
    """The second view of the CLIP's detail invariance: same scenes and captions, the details drawn again."""
    ds = ShapesDataset("train", ShapesConfig(n_train=64, details=True))
    first, second = ds.images(), ds.redrawn_images()
    assert torch.equal(second, ds.redrawn_images())  # a pure function of the item, like the first draw
    changed = [i for i in range(64) if ds.details(i) != ds.details(i, redrawn=True)]
    assert len(changed) > 48  # 4 backgrounds x 2 fills: most draws differ
    for i in range(64):
        redrawn = ds.details(i, redrawn=True)
        assert torch.equal(second[i], torch.from_numpy(render(ds.scene(i), 32, redrawn)).permute(2, 0, 1))
        assert torch.equal(first[i], second[i]) == (i not in changed)
    plain = ShapesDataset("train", ShapesConfig(n_train=64))
    assert torch.equal(plain.images(), plain.redrawn_images())  # no details: nothing to draw again


def test_captions_never_name_a_detail():
    words = {w for values in DETAILS.values() for w in values}
    ds = ShapesDataset("train", ShapesConfig(n_train=2000, details=True))
    for text in ds.captions() + [c for c in ds.swapped_captions() if c]:
        assert not words & set(re.findall(r"[a-z]+", text)), text


def test_a_plain_render_is_the_black_solid_upright_corner_of_the_details():
    from minidalle2.data import render
    scene = make_scene("orange", "triangle", "large", "bottom right")
    assert np.array_equal(render(scene, 32), render(scene, 32, plain(scene)))
    turned = Details("black", ("solid",), ("turned",))
    assert not np.array_equal(render(scene, 32), render(scene, 32, turned))
    hollow = Details("black", ("hollow",), ("upright",))
    assert render(scene, 32, hollow).sum() < render(scene, 32).sum()  # the inside dimmed


def _reading(colour="red", background="grey", fill="solid", turn="upright"):
    scene = make_scene(colour, "triangle", "large", "top left")
    return scene, Details(background, (fill,), (turn,))


def test_variation_scores_all_kept_and_spread():
    inputs = [_reading()]
    variations = [[_reading(background=b, fill=f, turn=t)
                   for b in BACKGROUNDS for f in ("solid", "hollow") for t in ("upright", "turned")]]
    r = variation_scores(inputs, variations)
    assert r["kept"] == 1.0
    assert r["detail_entropy"] == {"background": 1.0, "fill": 1.0, "turn": 1.0}
    assert 0 < r["details_same"] < 1


def test_variation_scores_identical_copies_have_no_spread():
    r = variation_scores([_reading()], [[_reading()] * 6])
    assert r["kept"] == 1.0 and r["details_same"] == 1.0
    assert r["detail_entropy"] == {"background": 0.0, "fill": 0.0, "turn": 0.0}


def test_variation_scores_a_changed_colour_is_not_kept():
    r = variation_scores([_reading()], [[_reading(), _reading(colour="blue"), _reading(), _reading(colour="cyan")]])
    assert r["kept"] == 0.5 and r["kept_one"] == 0.5 and r["kept_two"] is None


def test_variation_scores_count_one_and_two_object_inputs_apart():
    two = Scene(make_scene("red", "circle", "small", "top left").objects
                + make_scene("blue", "square", "large", "top right").objects, "left of")
    pair = (two, Details("grey", ("solid", "solid"), ("", "")))
    lost = (make_scene("red", "circle", "small", "top left"), Details("grey", ("solid",), ("",)))
    r = variation_scores([_reading(), pair], [[_reading()] * 4, [pair, lost, lost, lost]])
    assert (r["kept_one"], r["kept_two"], r["kept"]) == (1.0, 0.25, 0.625)
    # no input here has a turnable shape: the report shows a dash for the turn's spread, not a crash
    plain_inputs = variation_scores([pair], [[pair, lost]])
    assert plain_inputs["detail_entropy"]["turn"] is None and plain_inputs["kept_one"] is None
    report = format_variations_report({"n_images": 1, "n": 2, "input_kept": 1.0, "eta1": plain_inputs,
                                       "eta0": plain_inputs, "interpolation_ends": plain_inputs})
    assert report.splitlines()[2].split()[-1] == "-" and "0.500" in report


def test_detail_reader_reads_renders():
    """The quick preset's oracle (trained by `minidalle2 train oracle --preset quick`, kept as a fixture) reads every
    detail and every stated attribute of fresh renders, half of them with details, at >= 99 %."""
    oracle = load("oracle", FIXTURES / "details_run")  # RUN/oracle only: config.json and model.safetensors
    assert min(detail_accuracy(oracle, 1000, seed=7).values()) >= 0.99
    assert min(measure_accuracy(oracle, 1000, seed=7).values()) >= 0.99


def test_evaluate_variations_on_the_tiny_run(run):
    r = evaluate_variations(run, n=2, n_images=2, trust_oracle=False)
    for key in ("eta1", "eta0", "interpolation_ends"):
        assert 0 <= r[key]["kept"] <= 1 and set(r[key]["detail_entropy"]) == set(DETAILS)


@pytest.mark.parametrize("extra", [[], ["-n", "0"]])
def test_evaluate_variations_refuses_with_one_line(clip_run_copy, capsys, extra):
    """A run without a decoder, or -n 0: one line and exit status 2, before any sampling."""
    assert main(["evaluate", "variations", "--run-dir", str(clip_run_copy), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("decoder" in err if not extra else "-n 0" in err), err
