"""Small experiments on the captioned-shapes data and the bring-your-own-images loader."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from minidalle2.data import (
    COLORS, HELD_OUT, POSITION_WORDS, POSITIONS, RELATION_WORDS, RELATIONS, SHAPE_WORDS, SHAPES, SIZE_WORDS,
    COLOR_ONLY_WORDS, FULL, PARTIAL_PLANS, SIZES, SPLITS, Obj, Scene, ShapesConfig, ShapesDataset, canonical_caption,
    caption, encode_attributes, make_scene, mirrored_scene, render, sample_scene, stated_clauses, swapped_scene,
)
from minidalle2.data_folder import FolderDataset, load_image
from minidalle2.errors import UserError

SMALL = ShapesConfig(n_train=3000, n_val=300, n_test=300, n_heldout=500, p_partial=0.0)  # full captions


def scenes(split, n=3000, p_two_objects=0.3, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, split, p_two_objects) for _ in range(n)]


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_split_index_gives_same_image_and_caption():
    a, b = ShapesDataset("train", SMALL), ShapesDataset("train", SMALL)
    for i in (0, 7, 2999):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"]
        assert x["attributes"] == y["attributes"]
    # the cached images() path gives the same pixels as on-the-fly rendering
    assert torch.equal(a.images()[7].float() / 255, b[7]["image"])


def test_splits_and_seeds_give_different_images():
    def first_images(split, seed=0):
        ds = ShapesDataset(split, ShapesConfig(seed=seed, n_train=20, n_val=20, n_test=20, n_heldout=20))
        return ds.images(), ds.captions()

    train, train_caps = first_images("train")
    for other in [first_images(s) for s in ("val", "test", "heldout")] + [first_images("train", seed=1)]:
        assert not torch.equal(train, other[0]) and train_caps != other[1]


# --------------------------------------------------------------------------------------------- captions

_ANY = lambda table: "|".join(sorted((w for ws in table.values() for w in ws), key=len, reverse=True))  # noqa: E731
OBJECT_RE = re.compile(rf"\b({_ANY(SIZE_WORDS)}) ({'|'.join(COLORS)}) ({_ANY(SHAPE_WORDS)})\b")


def _canonical(table, word):
    return next(key for key, words in table.items() if word in words)


def _parse_objects(text):
    """[(size, colour, shape), ...] in the order they are mentioned, with synonyms mapped back."""
    return [(_canonical(SIZE_WORDS, z), c, _canonical(SHAPE_WORDS, s)) for z, c, s in OBJECT_RE.findall(text)]


def test_captions_agree_with_attributes():
    ds = ShapesDataset("train", SMALL)
    texts, seen_templates = set(), set()
    for i in range(2000):
        scene, text = ds.scene(i), ds.caption(i)
        texts.add(text)
        truth = [(o.size, o.color, o.shape) for o in scene.objects]
        mentioned = _parse_objects(text)
        words = set(re.findall(r"[a-z]+", text))
        assert len(words & set(COLORS)) == len({o.color for o in scene.objects}), text  # no stray colours
        if len(scene.objects) == 1:
            assert mentioned == truth, text
            said = [p for p, ws in POSITION_WORDS.items() if any(w in text for w in ws)]
            assert said == [scene.objects[0].position], text
        else:
            # "a B with a A <rel> it" mentions the subject second; every other template mentions it first
            subject_second = text.endswith(" it")
            assert mentioned == (truth[::-1] if subject_second else truth), text
            between = OBJECT_RE.split(text)[-1 if subject_second else 4]
            said = [r for r, ws in RELATION_WORDS.items() if any(re.search(rf"\b{w}\b", between) for w in ws)]
            assert said == [scene.relation], text
            seen_templates.add(subject_second)
    assert len(texts) > 1500 and seen_templates == {True, False}  # captions really vary


def test_canonical_caption_is_plain():
    assert canonical_caption(make_scene("red", "circle", "small", "top left")) == "a small red circle in the top left"
    a, b = make_scene("red", "circle", "small").objects[0], make_scene("blue", "square", "large", "top right").objects[0]
    assert canonical_caption(Scene((a, b), "left of")) == "a small red circle left of a large blue square"
    for seed in range(20):  # random captions of the same scene name the same objects
        mentioned = _parse_objects(caption(Scene((a, b), "left of"), np.random.default_rng(seed)))
        assert sorted(mentioned) == [("large", "blue", "square"), ("small", "red", "circle")]


def _words(text, table):
    """The keys of ``table`` whose words occur in text, in order of appearance (longest synonyms first)."""
    pattern = re.compile(rf"\b({_ANY(table)})\b")
    return [_canonical(table, m) for m in pattern.findall(text)]


def _claims(text):
    """What a caption claims, read back with a parser independent of the caption code."""
    return {"color": re.findall(rf"\b({'|'.join(COLORS)})\b", text), "shape": _words(text, SHAPE_WORDS),
            "size": _words(text, SIZE_WORDS), "position": _words(text, POSITION_WORDS),
            "relation": _words(text.replace(" it", ""), RELATION_WORDS)}


def test_partial_captions_never_state_a_false_clause_and_say_exactly_what_they_record():
    ds = ShapesDataset("train", ShapesConfig(n_train=3000, p_partial=0.5))
    plans = set()
    for i in range(3000):
        scene, text, item = ds.scene(i), ds.caption(i), ds[i]
        stated = item["attributes"]["stated"].split()
        assert item["caption"] == text
        claims = _claims(text)
        subject_second = text.endswith(" it")
        objs = scene.objects[::-1] if subject_second else scene.objects
        for clause in ("color", "shape", "size"):
            # the caption names this clause for every object, or for none
            assert claims[clause] == ([getattr(o, clause) for o in objs] if clause in stated else []), text
        if len(objs) == 1:
            assert claims["position"] == ([scene.objects[0].position] if "position" in stated else []), text
        else:
            assert claims["relation"] == ([scene.relation] if "relation" in stated else []), text
        if "shape" not in stated:
            assert any(w in text.split() for w in COLOR_ONLY_WORDS), text
        assert not re.search(r"\ba [aeiou]", text), text  # "an orange circle"
        plans.add((len(objs), tuple(stated)))
    assert plans == {(n, FULL[n]) for n in (1, 2)} | {(n, p) for n in (1, 2) for p in PARTIAL_PLANS[n]}


@pytest.mark.parametrize("p_partial", [0.0, 0.3, 0.5, 1.0])
def test_share_of_partial_captions_matches_the_setting(p_partial):
    ds = ShapesDataset("train", ShapesConfig(n_train=4000, p_partial=p_partial))
    partial = [ds.stated(i) != FULL[len(ds.scene(i).objects)] for i in range(4000)]
    assert abs(np.mean(partial) - p_partial) < 0.03  # 4000 draws: 3 standard errors at p = 0.5 is 0.024


def test_full_captions_do_not_depend_on_p_partial_and_a_swap_keeps_the_stated_clauses():
    full, half = ShapesDataset("train", SMALL), ShapesDataset("train", ShapesConfig(n_train=3000, p_partial=0.5))
    same = [full.caption(i) == half.caption(i) for i in range(500) if len(half.stated(i)) == 4]
    assert same and all(same)
    for i, swapped in enumerate(half.swapped_captions()[:500]):
        if swapped is not None:
            said = lambda text: {k for k, v in _claims(text).items() if v}  # noqa: E731
            assert said(swapped) == said(half.caption(i))
            assert swapped != half.caption(i)


def test_a_word_order_negative_exchanges_the_objects_or_changes_the_relation():
    """"a red circle left of a blue square" -> "a blue square left of a red circle" (the same words, so a bag of
    words cannot tell them apart) or "a red circle above a blue square" (the same objects, another relation); one
    of each kind about equally often, and only where the caption states a relation."""
    ds = ShapesDataset("train", ShapesConfig(n_train=1000, p_partial=0.5))
    kinds = []
    for i, negative in enumerate(ds.order_swapped_captions()):
        scene, stated, text = ds.scene(i), ds.stated(i), ds.caption(i)
        if len(scene.objects) == 1 or "relation" not in stated:
            assert negative is None
            continue
        if sorted(negative.split()) == sorted(text.split()):
            kinds.append("exchanged")
            a, b = scene.objects
            assert negative != text or (a.color, a.shape, a.size) == (b.color, b.shape, b.size)
        else:
            kinds.append("relation")
            claims, said = _claims(negative), _claims(text)
            assert claims["relation"] and claims["relation"] != said["relation"]
            assert sorted(claims["color"]) == sorted(said["color"]) and claims["shape"] == said["shape"]
    assert len(kinds) > 100 and 0.35 < kinds.count("exchanged") / len(kinds) < 0.65


def test_a_caption_must_state_colour_or_shape_and_only_its_kind_of_clauses():
    scene = make_scene("orange", "circle", "large", "top left")
    assert canonical_caption(scene, ("color", "shape")) == "an orange circle"
    assert canonical_caption(scene, ("color",)) == "an orange shape"
    assert canonical_caption(scene, ("shape", "position")) == "a circle in the top left"
    for bad in [("size", "position"), ("color", "relation")]:
        with pytest.raises(ValueError, match="states some of"):
            canonical_caption(scene, bad)
    assert stated_clauses(scene, None, p_partial=1.0) == FULL[1]  # no rng: the canonical, full caption


# ---------------------------------------------------------------------------------------------- held out


def test_held_out_pairs_never_in_train_val_test_but_everywhere_in_heldout():
    assert len(HELD_OUT) == 5
    train_colours, train_shapes = set(), set()
    for split in ("train", "val", "test"):
        for scene in scenes(split, p_two_objects=0.5):
            for o in scene.objects:
                assert (o.color, o.shape) not in HELD_OUT, (split, o)
                train_colours.add(o.color)
                train_shapes.add(o.shape)
    assert train_colours == set(COLORS) and train_shapes == set(SHAPES)
    seen = set()
    for scene in scenes("heldout", p_two_objects=0.5):
        pairs = {(o.color, o.shape) for o in scene.objects}
        assert pairs & HELD_OUT, scene
        seen |= pairs & HELD_OUT
    assert seen == HELD_OUT


def test_two_object_scenes_have_distinct_objects_and_all_relations():
    two = scenes("train", 1000, p_two_objects=1.0)
    assert all(len(s.objects) == 2 for s in two)
    assert all((s.objects[0].color, s.objects[0].shape) != (s.objects[1].color, s.objects[1].shape) for s in two)
    assert {s.relation for s in two} == set(RELATIONS)
    one = scenes("train", 300, p_two_objects=0.0)
    assert all(len(s.objects) == 1 and s.relation is None for s in one)


# -------------------------------------------------------------------------------------------- rendering


def _quadrant(position, size):
    half = size // 2
    rows = slice(0, half) if "top" in position else slice(half, size)
    cols = slice(0, half) if "left" in position else slice(half, size)
    return rows, cols


def test_swapped_scene_swaps_one_attribute_between_the_objects_and_nothing_else():
    """The hard negatives CLIP can train with: same places and relation, colours, shapes or sizes swapped."""
    rng = np.random.default_rng(0)
    two = [s for s in scenes("train") if len(s.objects) == 2]
    kinds, none = set(), 0
    for scene in two:
        swapped = swapped_scene(scene, rng)
        if swapped is None:  # both swaps would name a held-out pair
            none += 1
            continue
        (a, b), (a2, b2) = scene.objects, swapped.objects
        assert swapped.relation == scene.relation and (a2.position, b2.position) == (a.position, b.position)
        pairs = {f: ((getattr(a, f), getattr(b, f)), (getattr(a2, f), getattr(b2, f))) for f in ("color", "shape", "size")}
        changed = [f for f, (before, after) in pairs.items() if before != after]
        assert len(changed) == 1
        kind = changed[0]
        assert pairs[kind][1] == pairs[kind][0][::-1]
        assert caption(swapped, None) != caption(scene, None)
        assert not {(o.color, o.shape) for o in swapped.objects} & HELD_OUT
        kinds.add(kind)
    assert kinds == {"color", "shape", "size"} and none < 0.2 * len(two)
    assert swapped_scene(make_scene("red", "circle"), rng) is None


@pytest.mark.parametrize("size", [16, 32, 64])
def test_render_shapes_and_refuses_other_sizes(size):
    image = render(make_scene("red", "circle"), size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    with pytest.raises(ValueError, match="16, 32, 64"):
        render(make_scene("red", "circle"), 48)
    with pytest.raises(ValueError, match="48"):
        ShapesDataset("train", ShapesConfig(image_size=48))


def test_centre_pixel_has_object_colour_and_shape_stays_in_its_quadrant():
    rng = np.random.default_rng(0)
    for size in (32, 64):
        for colour in COLORS:
            for shape in SHAPES:
                for obj_size in SIZES:
                    position = POSITIONS[rng.integers(4)]
                    scene = make_scene(colour, shape, obj_size, position, rng=rng)
                    image, o = render(scene, size), scene.objects[0]
                    assert tuple(image[int(o.cy * size), int(o.cx * size)]) == COLORS[colour], (size, scene)
                    outside = image.copy()
                    outside[_quadrant(position, size)] = 0
                    assert outside.max() == 0, (size, scene)


def test_large_covers_clearly_more_pixels_than_small():
    for shape in SHAPES:
        lit = {z: (render(make_scene("green", shape, z), 64).max(-1) > 0).sum() for z in SIZES}
        assert lit["large"] > 1.8 * lit["small"], (shape, lit)


def test_edges_are_anti_aliased():
    image = render(make_scene("blue", "circle", "large"), 32)
    blue = image[..., 2]
    between = (blue > 0) & (blue < COLORS["blue"][2])
    assert between.sum() >= 8  # a ring of partially covered pixels, not a hard staircase


def test_two_object_relation_is_true_in_the_pixels():
    checked = 0
    for scene in scenes("train", 200, p_two_objects=1.0):
        a, b = scene.objects
        if a.color == b.color:
            continue
        image = render(scene, 32)
        centres = []
        for o in (a, b):
            ys, xs = np.nonzero((image == COLORS[o.color]).all(-1))
            centres.append((xs.mean() / 32, ys.mean() / 32))
        (ax, ay), (bx, by) = centres
        row_same, col_same = (a.cy < 0.5) == (b.cy < 0.5), (a.cx < 0.5) == (b.cx < 0.5)
        expected = {"left of": ax < bx and row_same, "right of": ax > bx and row_same,
                    "above": ay < by and col_same, "below": ay > by and col_same}
        assert expected[scene.relation], scene
        assert a.position != b.position
        checked += 1
    assert checked > 100


# --------------------------------------------------------------------------------------- dataset & API


def test_item_format_and_dataloader_batches_it():
    ds = ShapesDataset("val", SMALL)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    json.dumps(ds.attributes()[:50])  # JSON-able
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=16)))  # one- and two-object items mix
    assert batch["image"].shape == (16, 3, 32, 32) and len(batch["caption"]) == 16
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_encode_attributes_matches_scenes():
    ss = scenes("train", 200, p_two_objects=0.5)
    enc = encode_attributes([s.attributes() for s in ss])
    assert all(v.dtype == np.int64 and v.shape == (200,) for v in enc.values())
    for i, s in enumerate(ss):
        assert enc["n_objects"][i] == len(s.objects)
        assert list(COLORS)[enc["color0"][i]] == s.objects[0].color and SHAPES[enc["shape0"][i]] == s.objects[0].shape
        if len(s.objects) == 1:
            assert enc["color1"][i] == enc["position1"][i] == enc["relation"][i] == -1
        else:
            assert POSITIONS[enc["position1"][i]] == s.objects[1].position and RELATIONS[enc["relation"][i]] == s.relation


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="magenta"):
        make_scene("magenta", "circle")
    with pytest.raises(ValueError, match="hexagon"):
        make_scene("red", "hexagon")
    with pytest.raises(ValueError, match="middle"):
        make_scene("red", "circle", position="middle")
    with pytest.raises(ValueError, match="training"):
        ShapesDataset("training")
    assert SPLITS == ("train", "val", "test", "heldout")
    assert isinstance(make_scene("red", "cross").objects[0], Obj)


# ------------------------------------------------------------------------------------ your own images


def _write_images(root, n=3):
    for i in range(n):
        Image.new("RGB", (40, 40), (10 * i, 100, 200)).save(root / f"img{i}.png")


def test_folder_dataset_round_trip_csv_and_jsonl(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        _write_images(tmp_path / d)
    (tmp_path / "a" / "captions.csv").write_text('file,caption\nimg0.png,a red circle\nimg1.png,"blue, big"\nimg2.png,x\n')
    rows = [{"file": f"img{i}.png", "caption": c} for i, c in enumerate(["a red circle", "blue, big", "x"])]
    (tmp_path / "b" / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    a, b = FolderDataset(tmp_path / "a"), FolderDataset(tmp_path / "b")
    assert len(a) == len(b) == 3 and a.captions() == b.captions() == ["a red circle", "blue, big", "x"]
    assert torch.equal(a.images(), b.images()) and a.images().shape == (3, 3, 32, 32)
    item = a[1]
    assert item["image"].shape == (3, 32, 32) and item["attributes"] == {} and a.attributes() == [{}] * 3
    assert torch.allclose(item["image"][:, 5, 5], torch.tensor([10, 100, 200]) / 255)


@pytest.mark.parametrize("row, problem", [
    ("missing.png,a cat", "not found"),
    ("notimage.png,a cat", "cannot read"),
    ("img0.png,", "empty caption"),
    ("img0.png,a red circle, top left", "3 fields"),
])
def test_bad_csv_rows_name_file_and_line(tmp_path, row, problem):
    _write_images(tmp_path)
    (tmp_path / "notimage.png").write_text("hello")
    (tmp_path / "captions.csv").write_text(f"file,caption\nimg1.png,fine\n{row}\nimg2.png,fine\n")
    with pytest.raises(UserError, match=rf"captions\.csv line 3: .*{problem}") as e:
        FolderDataset(tmp_path)
    assert "\n" not in str(e.value)
    ds = FolderDataset(tmp_path, skip_bad=True)
    assert len(ds) == 2 and ds.skipped == 1 and "line 3" in ds.problems[0]


def test_bad_jsonl_lines_are_skipped_and_counted(tmp_path):
    _write_images(tmp_path)
    lines = ['{"file": "img0.png", "caption": "ok"}', "{not json", '{"file": "img1.png"}', '["img2.png", "x"]',
             '{"file": "img2.png", "caption": "ok too"}']
    (tmp_path / "captions.jsonl").write_text("\n".join(lines))
    with pytest.raises(UserError, match=r"captions\.jsonl line 2: not valid JSON"):
        FolderDataset(tmp_path)
    ds = FolderDataset(tmp_path, skip_bad=True)
    assert ds.captions() == ["ok", "ok too"] and ds.skipped == 3
    assert [p.split(": ")[0][-6:] for p in ds.problems] == ["line 2", "line 3", "line 4"]


def test_missing_or_empty_folder_says_which_files_are_expected(tmp_path):
    with pytest.raises(UserError, match="captions.csv.*captions.jsonl"):
        FolderDataset(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        FolderDataset(tmp_path / "nope")
    (tmp_path / "captions.csv").write_text("file,caption\n")
    with pytest.raises(UserError, match="no usable rows"):
        FolderDataset(tmp_path)


def test_load_image_converts_modes_and_sizes(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128  # half-transparent red over black -> dark red
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.new("L", (32, 32), 128).save(tmp_path / "gray.png")
    Image.new("RGB", (32, 32), (0, 255, 0)).convert("P").save(tmp_path / "palette.png")
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("RGB", (100, 80), (1, 2, 3)).save(tmp_path / "wide.png")

    x, notes = load_image(tmp_path / "rgba.png", 32)
    assert notes == ["converted RGBA to RGB (composited on black)", "resized 20x20 to 32x32"]
    assert abs(x[0, 16, 16].item() - 100 / 255) < 2 / 255 and x[1:].max() == 0
    x, notes = load_image(tmp_path / "gray.png", 32)
    assert notes == ["converted L to RGB"] and torch.allclose(x[:, 0, 0], torch.full((3,), 128 / 255))
    x, notes = load_image(tmp_path / "palette.png", 32)
    assert notes == ["converted P to RGB"] and x[1, 0, 0] == 1
    x, notes = load_image(tmp_path / "cmyk.jpg", 16)
    assert notes[0] == "converted CMYK to RGB" and x[0, 8, 8] > 0.9 and x[1:, 8, 8].max() < 0.1  # red
    x, notes = load_image(tmp_path / "wide.png", 32)
    assert x.shape == (3, 32, 32) and "resized 100x80 to 32x32" in notes[0]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match="bad.png"):
        load_image(tmp_path / "bad.png", 32)


def test_high_bit_depth_greyscale_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((16, 16), 32768, np.uint16)).save(tmp_path / "grey16.png")  # 16-bit mid-grey
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    image, notes = load_image(tmp_path / "grey16.png", 16)
    assert abs(image.mean().item() - 0.5) < 0.01 and "scaled to 8 bits" in notes[0]  # clipping gave white (1.0)


def test_folder_dataset_summarises_its_conversions(tmp_path):
    rows = ["file,caption"]
    for k in range(3):
        Image.new("RGBA", (64, 64), (255, 0, 0, 255)).save(tmp_path / f"{k}.png")
        rows.append(f"{k}.png,a red square")
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    summary = FolderDataset(tmp_path, image_size=32).summary()
    assert "3 of 3 images converted" in summary
    assert "3 converted RGBA to RGB (composited on black)" in summary and "3 resized 64x64 to 32x32" in summary


def test_a_mirrored_scene_makes_its_caption_false_and_the_exchanged_caption_true():
    """"a red circle left of a blue square" mirrored: the objects exchange quadrants along the relation's axis (same
    row or column, same colours, shapes, sizes), so the relation turns into its opposite; two circles mirrored
    left-right are the picture flipped left-right, pixel for pixel up to rounding."""
    rng = np.random.default_rng(0)
    seen = set()
    while len(seen) < 4:
        scene = sample_scene(rng, "train", p_two_objects=1.0)
        m = mirrored_scene(scene)
        seen.add(scene.relation)
        assert m.relation == {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[
            scene.relation]
        for o, k in zip(scene.objects, m.objects):
            assert (o.color, o.shape, o.size) == (k.color, k.shape, k.size)
        assert [k.position for k in m.objects] == [o.position for o in scene.objects[::-1]]
    assert mirrored_scene(make_scene("red", "circle")) is None
    a, b = (Obj(c, "circle", "large", p, x, 0.3, 0.15) for c, p, x in (("red", "top left", 0.27),
                                                                          ("blue", "top right", 0.74)))
    picture, mirrored = (render(s, 32).astype(int) for s in (Scene((a, b), "left of"),
                                                             mirrored_scene(Scene((a, b), "left of"))))
    assert np.abs(mirrored - picture[:, ::-1]).max() <= 1
