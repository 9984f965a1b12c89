"""Classroom mode: a student release generated into a temp dir imports, every exercise's tests fail there with
that exercise's NotImplementedError, no solution line survives, and grading gives the release 0 points, the
reference every point, and a student copy with loops, wrong answers and a syntax error exactly the points of the
exercises it got right."""

import csv
import json
import shutil
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from minidalle2.tools import classroom, grading
from minidalle2.tools.classroom import BY_ID, EXERCISES
from minidalle2.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests" / "exercises"


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("classroom") / "student"
    classroom.release(out, ROOT)
    return out


@pytest.fixture(scope="module")
def release_grade(release_dir):
    return grading.grade(release_dir, ROOT)


RIGHT = ("cosine_schedule", "q_posterior", "causal_mask")  # 20 points, in diffusion.py and transformer.py
ANSWERS = {  # what the student wrote in place of a solution region
    "q_sample": "return x0  # wrong: no noise",
    "guidance": "return cond - uncond  # wrong: the direction, not the guided prediction",
    "ddim_step": "import time\nwhile True:  # never returns (sleeping, to leave the CPU to the other tests)\n"
                 "    time.sleep(0.05)",
}
BROKEN_FILE = "pipeline.py"  # slerp and text_diff live there: a syntax error costs them, and only them
BROKEN_LINE = 1 + next(i for i, line in enumerate((ROOT / "minidalle2" / BROKEN_FILE).read_text().splitlines())
                       if line.startswith("def "))  # before its first function, at the top level
LIMIT_S = 5  # per exercise; the honest tests of these exercises take well under a second


def student_copy(path: Path, answers: dict[str, str], broken: dict[str, int] | None = None) -> Path:
    """The reference package with some solution regions replaced by ``answers``, and a line that does not parse
    inserted into some files, {file: line number} (outside any string or bracket)."""
    shutil.copytree(ROOT / "minidalle2", path / "minidalle2", ignore=classroom.JUNK)
    regions = [r for r in classroom.find_regions(ROOT) if r.exercise in answers]
    for file in {r.path for r in regions}:
        mine = [r for r in regions if r.path == file]
        source = (ROOT / "minidalle2" / file).read_text()
        text = classroom.strip_source(source, [(r.begin, r.end) for r in mine], [answers[r.exercise] for r in mine])
        (path / "minidalle2" / file).write_text(text)
    for file, line in (broken or {}).items():
        lines = (path / "minidalle2" / file).read_text().splitlines(keepends=True)
        lines.insert(line - 1, "def half_written(:\n")
        (path / "minidalle2" / file).write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def realistic_grade(tmp_path_factory):
    """Three exercises right, two wrong, one looping, and a syntax error in the file of two more: graded together,
    as one student's copy."""
    copy = student_copy(tmp_path_factory.mktemp("alice") / "alice", ANSWERS, {BROKEN_FILE: BROKEN_LINE})
    exercises = [*RIGHT, *ANSWERS, "slerp", "text_diff"]
    return grading.grade(copy, ROOT, timeout=LIMIT_S, exercises=exercises)


def solution_lines() -> set[str]:
    """The code lines inside the reference's solution regions, stripped."""
    lines = set()
    for r in classroom.find_regions(ROOT):
        source = (ROOT / "minidalle2" / r.path).read_text().splitlines()[r.begin + 1:r.end]
        lines |= {line.strip() for line in source if line.strip() and not line.strip().startswith("#")}
    return lines


def test_every_exercise_has_an_equation_tests_a_marker_and_a_stage():
    assert len(EXERCISES) >= 12 and len(BY_ID) == len(EXERCISES)
    regions = classroom.find_regions(ROOT)  # refuses regions no exercise names, and exercises without regions
    assert {r.exercise for r in regions} == set(BY_ID)
    for ex in EXERCISES:
        assert ex.points > 0 and ex.title and ex.section and set(ex.needs) <= set(BY_ID)
        assert ex.notebook is None or (ROOT / "notebooks" / ex.notebook).is_file()
        for path in (TESTS / f"test_{ex.id}.py", TESTS / "hidden" / f"test_{ex.id}_hidden.py"):
            assert f"pytestmark = pytest.mark.{ex.marker}\n" in path.read_text(), path
    assert {p.stem.removeprefix("test_") for p in TESTS.glob("test_*.py")} == set(BY_ID)
    files = {place.split(":")[0] for ex in EXERCISES for place in ex.where}
    assert {"clip.py", "diffusion.py", "prior_ar.py", "prior_diffusion.py", "transformer.py", "unet.py",
            "pipeline.py"} <= files  # CLIP, the shared diffusion, both priors, the decoder, the manipulations
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert {m.split(":")[0] for m in markers} >= {ex.marker for ex in EXERCISES}


def test_release_is_the_student_copy_without_hidden_tests(release_dir):
    assert (release_dir / "README.md").read_text().startswith("# minidalle2 — exercises")
    for ex in EXERCISES:
        assert f"`{ex.id}`" in (release_dir / "README.md").read_text()
    assert (release_dir / "PROJECT_README.md").is_file() and (release_dir / "pyproject.toml").is_file()
    assert sorted(p.name for p in (release_dir / "notebooks").glob("*.ipynb")) == \
        sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    tests = sorted(p.relative_to(release_dir).as_posix() for p in (release_dir / "tests").rglob("*.py"))
    assert tests == sorted(["tests/exercises/conftest.py"] + [f"tests/exercises/test_{ex.id}.py" for ex in EXERCISES])
    assert not any(p.name == "__pycache__" or p.suffix == ".pyc" for p in release_dir.rglob("*"))
    instructors = (ROOT / "INSTRUCTORS.md").read_text()
    assert not (release_dir / "INSTRUCTORS.md").exists(), "it describes the hidden tests"
    listed = instructors[instructors.index("The release holds"):instructors.index("The hidden tests and")]
    for path in release_dir.iterdir():  # every file and folder of the release is in the instructors' list
        assert f"`{path.name}" in listed, path.name


def test_no_solution_line_survives_the_release(release_dir):
    solutions = solution_lines()
    assert len(solutions) >= len(EXERCISES)
    for path in release_dir.rglob("*"):
        if path.suffix == ".ipynb":
            cells = json.loads(path.read_text())["cells"]
            text = "\n".join("".join(c["source"]) for c in cells)
        elif path.suffix in (".py", ".md", ".toml", ".yml"):
            text = path.read_text()
        else:
            continue
        lines = {line.strip() for line in text.splitlines()}
        assert not solutions & lines, (path, solutions & lines)
        assert not {classroom.BEGIN, classroom.END, classroom.NB_BEGIN, classroom.NB_END} & lines, path
    package = "".join(p.read_text() for p in (release_dir / "minidalle2").rglob("*.py"))
    for ex in EXERCISES:
        assert package.count(classroom.stub(ex)) == len(ex.where), ex.id


def test_release_imports_and_the_rest_of_the_package_still_works(release_dir):
    """Import every module of the student copy (and no other copy), and run code no exercise touches."""
    script = """
import importlib, pkgutil, sys
import minidalle2
assert minidalle2.__file__.startswith(sys.argv[1]), minidalle2.__file__
for module in pkgutil.walk_packages(minidalle2.__path__, "minidalle2."):
    if module.name != "minidalle2.__main__":  # that one runs the CLI
        importlib.import_module(module.name)
import torch
from minidalle2.tools.cli import main
from minidalle2.data import make_scene, render
from minidalle2.diffusion import GaussianDiffusion
from minidalle2.unet import UNet, UNetConfig
assert main(["classroom", "list"]) == 0
assert render(make_scene("red", "circle"), 16).shape[:2] == (16, 16)
d = GaussianDiffusion(100, "linear")
x_t, eps, t = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([5, 50])
assert d.predict_eps_from_x0(x_t, t, d.predict_x0_from_eps(x_t, t, eps)).sub(eps).abs().max() < 1e-3
UNet(UNetConfig(image_size=16, base_channels=8, channel_mult=[1, 2], attention_resolutions=[]))
print("student copy ok")
"""
    env = dict(os.environ, PYTHONPATH=str(release_dir), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([sys.executable, "-c", script, str(release_dir)], cwd=release_dir, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "student copy ok" in result.stdout and "clip_loss" in result.stdout


def test_grading_the_release_gives_0_and_every_exercise_is_not_implemented(release_grade, release_dir):
    r = release_grade
    assert Path(r["package"]).is_relative_to(release_dir), "grading must import the student's package"
    assert r["pytest_runs"] == 1 and not r["unscored_tests"] and not r["syntax_errors"] and r["points"] == 0
    assert r["max_points"] == 105 and [e["id"] for e in r["exercises"]] == list(BY_ID)
    for e in r["exercises"]:
        ex = BY_ID[e["id"]]
        assert e["status"] == "not implemented" and e["reason"] == e["first_failure"], e
        assert e["tests"] > 0 and e["tests_passed"] == 0 and len(e["failures"]) == e["tests"], e
        assert any("/hidden/" in f["test"] for f in e["failures"]), "the grader runs the hidden tests too"
        allowed = tuple(f"NotImplementedError: {classroom.message(BY_ID[i])}" for i in (ex.id, *ex.needs))
        for f in e["failures"]:
            assert f["error"].startswith(allowed), (e["id"], f)


def test_grading_the_reference_gives_every_point():
    r = grading.grade(ROOT, ROOT)
    assert Path(r["package"]).is_relative_to(ROOT)
    assert r["points"] == r["max_points"] == 105, grading.format_grade(r)
    assert all(e["status"] == "passed" and e["tests_passed"] == e["tests"] > 0 for e in r["exercises"])


def test_a_looping_exercise_costs_its_own_points_and_one_time_limit(realistic_grade):
    r = realistic_grade
    status = {e["id"]: e["status"] for e in r["exercises"]}
    assert r["points"] == sum(BY_ID[ex].points for ex in RIGHT) == 20, grading.format_grade(r)
    assert [ex for ex, s in status.items() if s == "passed"] == list(RIGHT)
    assert status["q_sample"] == status["guidance"] == "failed" and status["ddim_step"] == "timed out"
    ddim = next(e for e in r["exercises"] if e["id"] == "ddim_step")
    assert ddim["reason"].startswith(f"timed out after {LIMIT_S} s") and ddim["points"] == 0
    guidance = next(e for e in r["exercises"] if e["id"] == "guidance")
    assert guidance["reason"].startswith(f"{guidance['tests']} of {guidance['tests']} tests failed: ")
    # one process up to the loop, one for the exercises after it; the old grader took its whole 600 s
    assert r["pytest_runs"] == 2 and r["wall_s"] < 120


def test_a_syntax_error_costs_only_the_exercises_that_import_its_file(realistic_grade):
    r = realistic_grade
    expected = f"syntax error in minidalle2/{BROKEN_FILE} line {BROKEN_LINE}: "
    assert r["import_error"] is None and len(r["syntax_errors"]) == 1 and r["syntax_errors"][0].startswith(expected)
    for e in r["exercises"]:
        if e["id"] in ("slerp", "text_diff"):
            assert e["status"] == "error" and e["points"] == 0 and e["reason"].startswith(expected), e
        else:
            assert "syntax error" not in (e["reason"] or ""), e


def test_a_package_that_does_not_import_is_reported_once_with_file_and_line(tmp_path):
    copy = student_copy(tmp_path / "bob", {}, {"__init__.py": 3})
    r = grading.grade(copy, ROOT, timeout=LIMIT_S, exercises=["guidance"])
    assert r["import_error"].startswith("syntax error in minidalle2/__init__.py line 3: ") and r["points"] == 0
    assert [e["status"] for e in r["exercises"]] == ["error"]
    printed = grading.format_grade(r)
    assert printed.count("__init__.py line 3") == 1, printed


def test_a_class_is_graded_into_one_row_per_student(realistic_grade, release_grade, tmp_path, capsys):
    """A folder of copies stands for all of them; a copy that cannot be graded is a row, not a crash."""
    rows = grading.csv_rows([realistic_grade, release_grade])
    assert [row["points"] for row in rows] == [20, 0] and rows[0]["ddim_step status"] == "timed out"
    (tmp_path / "class" / "carol").mkdir(parents=True)  # handed in nothing
    (tmp_path / "class" / "dave" / "minidalle2").mkdir(parents=True)
    (tmp_path / "class" / "dave" / "minidalle2" / "__init__.py").write_text("")
    assert grading.find_copies([tmp_path / "class"]) == [tmp_path / "class" / "carol", tmp_path / "class" / "dave"]
    assert main(["classroom", "grade", str(tmp_path / "class" / "carol"), str(tmp_path / "nobody"),
                 "--csv", str(tmp_path / "grades.csv"), "--json", str(tmp_path / "grades.json")]) == 2
    with open(tmp_path / "grades.csv") as f:
        written = list(csv.DictReader(f))
    assert [row["student"] for row in written] == ["carol", "nobody"] and "holds no minidalle2/" in written[0]["error"]
    assert [r["student"] for r in json.loads((tmp_path / "grades.json").read_text())] == ["carol", "nobody"]
    assert "not a sandbox" in capsys.readouterr().err


def test_a_file_that_fails_to_import_zeroes_its_exercise():
    """Its test count is unknown, so the tests that did pass cannot be turned into a fraction."""
    records = [{"kind": "collected", "nodeid": "exercises/test_q_sample.py::test_a", "markers": ["ex_q_sample"]},
               {"kind": "result", "nodeid": "exercises/test_q_sample.py::test_a", "when": "call",
                "outcome": "passed", "error": None},
               {"kind": "collect_error", "path": "exercises/hidden/test_q_sample_hidden.py", "error": "ImportError: x"},
               {"kind": "collected", "nodeid": "exercises/test_guidance.py::test_b", "markers": ["ex_guidance"]},
               {"kind": "result", "nodeid": "exercises/test_guidance.py::test_b", "when": "call",
                "outcome": "passed", "error": None}]
    scores = {e["id"]: (e["points"], e["status"]) for e in grading.score(records)["exercises"]}
    assert scores["q_sample"] == (0, "error") and scores["guidance"] == (BY_ID["guidance"].points, "passed")


def test_notebook_regions_are_replaced_as_nbgrader_does():
    code = "def f(x):\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION\n"
    nb = {"cells": [{"cell_type": "markdown", "source": ["Write f between the markers: ### BEGIN SOLUTION"]},
                    {"cell_type": "code", "source": code.splitlines(keepends=True), "outputs": [{"text": "2"}],
                     "execution_count": 3}]}
    assert classroom.strip_notebook(nb, "06_exercise.ipynb") == 1
    cell = nb["cells"][1]
    source = "".join(cell["source"])
    assert "y = x + 1" not in source and "    # YOUR CODE HERE\n    raise NotImplementedError(" in source
    assert cell["outputs"] == [] and cell["execution_count"] is None
    compile(source, "cell", "exec")


def test_cli_lists_and_refuses_mistakes_with_one_line(tmp_path, capsys):
    assert main(["classroom", "list"]) == 0
    listing = capsys.readouterr().out
    assert all(ex.id in listing for ex in EXERCISES) and "105" in listing
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert main(["classroom", "release", str(tmp_path / "taken")]) == 2
    assert main(["classroom", "grade", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not an empty folder" in err and "holds no minidalle2/ package" in err
