"""Autograding of a student's copy: every exercise test, public and hidden, run with pytest in a subprocess.

Each exercise earns its points times the fraction of its tests that pass (classroom.py defines the exercises).
Grading imports and runs the student's code with your permissions: it is not a sandbox.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minidalle2.errors import UserError
from minidalle2.tools.classroom import BY_ID, EXERCISE_TESTS, EXERCISES, JUNK, PACKAGE, project_root


def pytest_ini() -> str:
    """The grader's own pytest configuration: only the exercise markers, none of the student's settings."""
    markers = "".join(f"\n    {ex.marker}: exercise {ex.id}" for ex in EXERCISES)
    return f"[pytest]\nmarkers ={markers}\n"


def grade(student_dir: Path, root: Path | None = None, timeout: float = 600.0) -> dict:
    """Run every exercise test (public and hidden) against the student's package and score it.

    pytest runs in a subprocess, from the student's folder with it first on PYTHONPATH, on a temporary copy of
    the instructor's tests and this pytest configuration (so the student's test files and settings play no
    part). The tests' conftest.py writes each result to a log; after ``timeout`` seconds the process group is
    killed and tests without a result count as failed. The run fails loudly if it imported minidalle2 from
    anywhere but the student's folder. Grading runs the student's code: it is not a sandbox.
    """
    root = project_root() if root is None else Path(root)
    student = Path(student_dir).resolve()
    if not (student / PACKAGE / "__init__.py").is_file():
        raise UserError(f"{student} holds no {PACKAGE}/ package; pass the folder `minidalle2 classroom release` "
                        "wrote (the one with minidalle2/ and tests/ in it)")
    if timeout <= 0:
        raise UserError(f"the time limit is {timeout} s; give a positive number of seconds")
    with tempfile.TemporaryDirectory(prefix="minidalle2-grade-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(root / EXERCISE_TESTS, tmp / "exercises", ignore=JUNK)
        (tmp / "pytest.ini").write_text(pytest_ini())
        log = tmp / "results.jsonl"
        path = [str(student)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), MINIDALLE2_GRADE_LOG=str(log),
                   PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", MINIDALLE2_SMOKE="1")
        cmd = [sys.executable, "-m", "pytest", "-c", str(tmp / "pytest.ini"), "--rootdir", str(tmp),
               "-p", "no:cacheprovider", "-q", "--no-header", str(tmp / "exercises")]
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=student, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill(proc)
            output, _ = proc.communicate()
            timed_out = True
        wall = time.time() - start
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if not records and not timed_out:
        raise UserError(f"pytest did not run the exercise tests (exit code {proc.returncode}); its output ends:\n"
                        f"{output[-2000:]}")
    report = score(records)
    if report["package"] is not None and not Path(report["package"]).resolve().is_relative_to(student):
        raise UserError(f"grading imported {PACKAGE} from {report['package']}, not from {student}; uninstall other "
                        f"copies of {PACKAGE} from this Python, or grade with another one")
    report.update(student_dir=str(student), timed_out=timed_out, time_limit_s=timeout, wall_s=round(wall, 1),
                  pytest_exit_code=None if timed_out else proc.returncode, output_tail=output[-4000:])
    return report


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and anything the student's code started
    except (AttributeError, ProcessLookupError, PermissionError):
        proc.kill()


def _exercise_of_file(nodeid: str) -> str | None:
    """"exercises/hidden/test_q_sample_hidden.py::test_x" -> "q_sample"."""
    stem = Path(nodeid.split("::")[0]).stem
    name = stem.removeprefix("test_").removesuffix("_hidden")
    return name if name in BY_ID else None


def score(records: list[dict]) -> dict:
    """Points per exercise from the conftest's log: points * passed / tests, and 0 for an exercise one of whose
    test files did not even import (its test count would be unknown)."""
    tests, broken, package = {}, {}, None
    for r in records:
        if r["kind"] == "collected":
            ids = [m[3:] for m in r["markers"] if m[3:] in BY_ID]
            tests[r["nodeid"]] = {"exercise": ids[0] if len(ids) == 1 else None, "passed": False, "error": None,
                                  "ran": False}
        elif r["kind"] == "collect_error":
            broken.setdefault(_exercise_of_file(r["path"]), []).append(f"{r['path']}: {r['error']}")
        elif r["kind"] == "result" and r["nodeid"] in tests:
            test = tests[r["nodeid"]]
            test["ran"] = True
            if r["outcome"] == "failed":
                test["passed"], test["error"] = False, test["error"] or r["error"] or f"failed in {r['when']}"
            elif r["outcome"] == "skipped":
                test["error"] = test["error"] or "skipped"
            elif r["when"] == "call":
                test["passed"] = test["error"] is None
        elif r["kind"] == "package":
            package = r["file"]
    exercises = []
    for ex in EXERCISES:
        mine = {nodeid: t for nodeid, t in tests.items() if t["exercise"] == ex.id}
        passed = sum(t["passed"] for t in mine.values())
        earned = 0.0 if ex.id in broken or not mine else round(ex.points * passed / len(mine), 2)
        failures = [{"test": nodeid, "error": (t["error"] or "not run (time limit)").splitlines()[0][:300]}
                    for nodeid, t in mine.items() if not t["passed"]]
        failures += [{"test": "(collection)", "error": e.splitlines()[-1][:300]} for e in broken.get(ex.id, [])]
        exercises.append({"id": ex.id, "title": ex.title, "points": ex.points, "earned": earned, "passed": passed,
                          "tests": len(mine), "failures": failures})
    return {"total": round(sum(e["earned"] for e in exercises), 2), "max_total": sum(ex.points for ex in EXERCISES),
            "exercises": exercises, "package": package,
            "unscored_tests": sorted(nodeid for nodeid, t in tests.items() if t["exercise"] is None)}


def format_grade(report: dict) -> str:
    lines = [f"graded {report['student_dir']} ({PACKAGE} imported from {report['package']})",
             f"{'exercise':<16} {'points':>12} {'tests':>7}"]
    for e in report["exercises"]:
        lines.append(f"{e['id']:<16} {e['earned']:>6g} / {e['points']:<3} {e['passed']:>3}/{e['tests']:<3}")
    lines.append(f"{'total':<16} {report['total']:>6g} / {report['max_total']}")
    if report["timed_out"]:
        lines.append(f"time limit of {report['time_limit_s']:g} s reached: tests that had not finished count as failed")
    failing = [e for e in report["exercises"] if e["failures"]]
    if failing:
        lines.append("failures (the first of each exercise; --json FILE lists them all):")
        for e in failing:
            first = e["failures"][0]
            lines.append(f"  {e['id']} ({len(e['failures'])}): {first['test'].split('::')[-1]}: {first['error']}")
    return "\n".join(lines)
