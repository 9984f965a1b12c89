"""Text diffs scored by the oracle: the suite is fixed and each edit changes one attribute, success is computed right
on hand-made readings, every edit method starts at z_i and stays on the sphere, and bad input is one clear line."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from minidalle2.checkpoint import read_json, write_json
from minidalle2.data import HELD_OUT, Scene, make_scene
from minidalle2.errors import UserError
from minidalle2.evaluation import textdiff as td
from minidalle2.pipeline import EDIT_METHOD, EDIT_METHODS, analogy_target, check_text_diff, edit_embedding, slerp
from minidalle2.tools.cli import main

SUITE_SHA256 = "49e4a0f83f438940d4beeb0c36194ca7fb95a0dc211d0bb504c667c426443254"  # version 1; a new suite: new version


# ---------------------------------------------------------------- the suite
def test_the_suite_is_the_pinned_file_and_build_suite_still_makes_it():
    assert td.suite_sha256() == SUITE_SHA256
    assert json.loads(td.SUITE_PATH.read_text())["edits"] == td.build_suite()


def test_every_edit_changes_exactly_its_one_stated_attribute_of_a_valid_scene():
    edits = td.load_suite()
    assert {k: sum(e.kind == k for e in edits) for k in td.KINDS} == {k: td.PER_KIND for k in td.KINDS}
    for e in edits:
        before, after = e.scene.attributes(), e.target.attributes()
        changed = [k for k in before if before[k] != after[k]]
        assert changed == [f"{e.field}{e.obj}"] and after[changed[0]] == e.value, e
        assert e.source != e.text and len(e.source.split()) == len(e.text.split())
        assert not {(o.color, o.shape) for s in (e.scene, e.target) for o in s.objects} & HELD_OUT
        if len(e.scene.objects) == 2:  # two different objects, before and after
            assert len({(o.color, o.shape, o.size) for o in e.target.objects}) == 2


def test_the_record_is_of_this_suite_and_its_best_method_is_the_default():
    record = json.loads((td.SUITE_PATH.parents[2] / "docs" / "textdiff.json").read_text())
    assert record["suite_sha256"] == SUITE_SHA256 and set(record["methods"]) == set(EDIT_METHODS)
    assert record["best"] == td.best_method(record) == EDIT_METHOD
    assert record["methods"]["paper"]["success"]  # the paper's method reported beside it


@pytest.mark.parametrize("change, expected", [
    ({"to": "a large red circle in the bottom right"}, "changes 2 word(s)"),  # colour and position
    ({"to": "a small blue circle in the top left"}, "changes 2 word(s)"),  # colour and size
    ({"from": "a small red circle in the top left"}, "'from' is"),
    ({"to_value": "red"}, "is the input's own"),
    ({"attribute": "shape"}, "does not fit"),
    ({"objects": [{"color": "pink", "shape": "circle", "size": "large", "position": "top left"}]}, "pink"),
])
def test_a_suite_row_that_is_not_one_stated_change_is_one_clear_line(change, expected, tmp_path):
    row = {"kind": "colour", "objects": [{"color": "red", "shape": "circle", "size": "large", "position": "top left"}],
           "relation": None, "object": 0, "attribute": "color", "to_value": "blue",
           "from": "a large red circle in the top left", "to": "a large blue circle in the top left"}
    assert td.parse_edit(row).target.objects[0].color == "blue"
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"version": td.SUITE_VERSION, "edits": [{**row, **change}]}))
    with pytest.raises(UserError, match="edit 1 of the text-diff suite") as e:
        td.load_suite(path)
    assert expected in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- success on hand-made readings
def scene(*objs, relation=None):
    return Scene(tuple(make_scene(*o).objects[0] for o in objs), relation)


def edit(kind, objs, obj, field, value, relation=None):
    s = scene(*objs, relation=relation)
    return td.Edit(kind, s, td._changed(s, obj, field, value), obj, field, value, "from", "to")


RED = ("red", "circle", "large", "top left")
BLUE_SQUARE = ("blue", "square", "small", "top right")


def test_success_needs_the_target_and_everything_else_kept():
    e = edit("colour", [RED], 0, "color", "blue")
    assert td.score_edit(e, e.target) == {"reached": True, "kept": True, "success": True}
    shrunk = scene(("blue", "circle", "small", "top left"))  # the README's failure: right colour, wrong size
    assert td.score_edit(e, shrunk) == {"reached": True, "kept": False, "success": False}
    assert td.score_edit(e, e.scene) == {"reached": False, "kept": True, "success": False}  # unchanged picture
    assert td.score_edit(e, e.target, confidence=0.3)["success"] is False  # a blend of two colours
    extra = scene(("blue", "circle", "large", "top left"), ("red", "cross", "small", "bottom right"))
    assert td.score_edit(e, extra)["success"] is False  # an object appeared
    assert td.score_edit(e, scene())["reached"] is False  # the object vanished


def test_a_position_edit_moves_the_object_and_leaves_its_old_quadrant_empty():
    e = edit("position", [RED], 0, "position", "bottom right")
    assert td.score_edit(e, e.target)["success"]
    both = scene(RED, ("red", "circle", "large", "bottom right"))  # copied, not moved
    assert td.score_edit(e, both) == {"reached": True, "kept": False, "success": False}
    assert td.score_edit(e, e.scene) == {"reached": False, "kept": True, "success": False}


def test_a_two_object_edit_must_keep_the_other_object():
    e = edit("two_colour", [RED, BLUE_SQUARE], 1, "color", "green", relation="left of")
    assert td.score_edit(e, e.target)["success"]
    both_green = scene(("green", "circle", "large", "top left"), ("green", "square", "small", "top right"))
    assert td.score_edit(e, both_green) == {"reached": True, "kept": False, "success": False}
    assert td.score_edit(e, scene(RED, ("blue", "square", "large", "top right")))["kept"] is False  # size, too


def test_summary_picks_one_theta_per_kind_and_each_edits_own_best():
    e = [edit("colour", [RED], 0, "color", "blue")] * 2
    hit, miss = {"reached": 1, "kept": 1, "success": 1}, {"reached": 0, "kept": 1, "success": 0}
    scores = [[miss, hit, hit], [miss, miss, hit]]  # thetas 0.1, 0.2, 0.3
    s = td.summarise(e, (0.1, 0.2, 0.3), scores)
    assert s["success"]["colour"] == 1.0 and s["theta"]["colour"] == 0.3
    assert s["success_any_theta"]["colour"] == 1.0 and s["smallest_theta"]["colour"] == 0.25  # median of 0.2, 0.3
    assert s["curves"]["colour"]["reached"] == [0.0, 0.5, 1.0] and "size" not in s["success"]


# ---------------------------------------------------------------- the methods
@pytest.mark.parametrize("method", EDIT_METHODS)
def test_every_method_starts_at_z_i_and_stays_unit_norm(method):
    z_i, z_from, z_to = F.normalize(torch.randn(3, 3, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    theta = torch.tensor([0.0, 0.3, 1.0])
    z = edit_embedding(z_i, z_from, z_to, theta, method)  # (3, 16): one theta per row
    torch.testing.assert_close(z[0], z_i[0])
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))
    ends = analogy_target(z_i, z_from, z_to) if method.startswith("analogy") else F.normalize(z_to - z_from, dim=-1)
    torch.testing.assert_close(z[2], ends[2], atol=1e-5, rtol=0)  # theta = 1: the method's end point
    torch.testing.assert_close(z[1], slerp(z_i[1], ends[1], 0.3))  # on the great circle between them


def test_bad_text_diffs_are_one_clear_line():
    with pytest.raises(UserError, match="two different"):
        check_text_diff("a red circle", " a red  circle", "paper")
    with pytest.raises(UserError, match="unknown text-diff method 'magic'"):
        check_text_diff("a red circle", "a blue circle", "magic")
    with pytest.raises(UserError, match="theta 1.5 is outside"):
        td.evaluate_textdiff("nowhere", thetas=(0.5, 1.5))


# ---------------------------------------------------------------- on a tiny run
def test_evaluate_textdiff_on_a_tiny_run_scores_every_method_kind_and_theta(run, tmp_path, monkeypatch, capsys):
    copy_ = tmp_path / "run"
    shutil.copytree(run, copy_)
    cfg = read_json(copy_ / "oracle" / "config.json")  # the tiny oracle is below the trust bar: lift it for the test
    write_json(copy_ / "oracle" / "config.json", {**cfg, "accuracy": {k: 1.0 for k in cfg["accuracy"]}})
    few = [e for k in td.KINDS for e in td.load_suite() if e.kind == k][::td.PER_KIND]  # one edit of each kind
    monkeypatch.setattr(td, "load_suite", lambda: few)
    monkeypatch.setattr(td, "STEPS", 2)
    monkeypatch.setattr(td, "THETAS", (0.2, 0.8))
    out = tmp_path / "td.json"
    argv = ["evaluate", "textdiff", "--run-dir", str(copy_), "--seeds", "0", "--methods", "paper,analogy_text"]
    assert main(argv + ["--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_edits"] == len(td.KINDS) and result["thetas"] == [0.2, 0.8] and result["seeds"] == [0]
    for method in ("paper", "analogy_text"):
        m = result["methods"][method]
        assert set(m["success"]) == set(td.KINDS) and all(0 <= v <= 1 for v in m["success"].values())
        assert all(m["theta"][k] in (0.2, 0.8) for k in td.KINDS)
        assert all(m["success_any_theta"][k] >= m["success"][k] for k in td.KINDS)
        assert all(len(c["reached"]) == 2 for c in m["curves"].values())
    assert result["best"] in ("paper", "analogy_text") and "two_colour" in capsys.readouterr().out
    assert main(argv[:-1] + ["magic", "--json", str(out)]) == 2
    assert "unknown text-diff method 'magic'" in capsys.readouterr().err
