"""Autograding of student copies: every exercise test, public and hidden, run with pytest in a subprocess.

Each exercise is graded on its own: it earns ``points * passed / tests`` over its own tests, and has its own time
limit. The tests run in one pytest process (starting Python, pytest and torch costs more than all the tests),
each exercise's tests one after the other, while the grader watches a log the tests' conftest.py writes. When an
exercise runs past its limit, or kills the process, the process is stopped, that exercise is "timed out" or an
"error", and a new process grades the exercises not graded yet. So a loop or a crash costs its own exercise and
about one time limit, nothing else. A file that does not parse costs the exercises whose tests import it.
Grading imports and runs the student's code with your permissions: it is not a sandbox.
"""

from __future__ import annotations

import csv
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
from minidalle2.tools.classroom import BY_ID, EXERCISE_TESTS, EXERCISES, HIDDEN, JUNK, PACKAGE, project_root

TIMEOUT_S = 30.0   # per exercise. Measured on a loaded 2-core machine: the slowest honest test 0.04 s, importing the
#                    slowest module an exercise's tests need (pipeline.py, with open_clip) about 4 s
STARTUP_S = 120.0  # Python, pytest and torch starting, before anything of the student's runs
POLL_S = 0.1       # how often the grader reads the tests' log
STATUSES = ("passed", "failed", "not implemented", "timed out", "error")


def pytest_ini() -> str:
    """The grader's own pytest configuration: only the exercise markers, none of the student's settings."""
    markers = "".join(f"\n    {ex.marker}: exercise {ex.id}" for ex in EXERCISES)
    return f"[pytest]\nmarkers ={markers}\n"


def _exercise_of_file(nodeid: str | None) -> str | None:
    """"exercises/hidden/test_q_sample_hidden.py::test_x" -> "q_sample"."""
    if not nodeid:
        return None
    stem = Path(nodeid.split("::")[0]).stem
    name = stem.removeprefix("test_").removesuffix("_hidden")
    return name if name in BY_ID else None


def syntax_errors(student: Path) -> list[str]:
    """One line per file of the student's package that does not parse (compiled, not run)."""
    errors = []
    for file in sorted((student / PACKAGE).rglob("*.py")):
        try:
            compile(file.read_bytes(), str(file), "exec")
        except SyntaxError as e:
            errors.append(f"syntax error in {file.relative_to(student).as_posix()} line {e.lineno}: {e.msg}")
        except ValueError as e:  # null bytes
            errors.append(f"{file.relative_to(student).as_posix()}: {e}")
    return errors


def grade(student_dir: Path, root: Path | None = None, timeout: float = TIMEOUT_S,
          exercises: list[str] | None = None) -> dict:
    """Run the exercise tests (public and hidden) of every exercise, or of ``exercises``, on the student's package.

    pytest runs from the student's folder with it first on PYTHONPATH, on a temporary copy of the instructor's
    tests and the grader's pytest configuration (the student's test files and settings play no part). An exercise
    whose tests (or the import of its test files) run longer than ``timeout`` seconds is "timed out"; the run
    fails loudly if it imported minidalle2 from anywhere but the student's folder.
    """
    root = project_root() if root is None else Path(root)
    student = Path(student_dir).resolve()
    if not (student / PACKAGE / "__init__.py").is_file():
        raise UserError(f"{student} holds no {PACKAGE}/ package; pass the folder `minidalle2 classroom release` "
                        "wrote (the one with minidalle2/ and tests/ in it)")
    if timeout <= 0:
        raise UserError(f"the time limit is {timeout} s; give a positive number of seconds")
    unknown = sorted(set(exercises or ()) - set(BY_ID))
    if unknown:
        raise UserError(f"no exercise {', '.join(unknown)}; `minidalle2 classroom list` names them")
    chosen = [ex.id for ex in EXERCISES if exercises is None or ex.id in exercises]
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="minidalle2-grade-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(root / EXERCISE_TESTS, tmp / "exercises", ignore=JUNK)
        (tmp / "pytest.ini").write_text(pytest_ini())
        kept, stopped, pending, runs, output, package_error = [], {}, chosen, 0, "", None
        while pending and package_error is None:  # each pass grades at least one exercise for good
            runs += 1
            records, how, current, output = _run_pytest(student, tmp, pending, timeout, runs)
            final = set(pending) if how == "finished" else _finished(records, pending)
            culprit = _exercise_of_file(current.get("nodeid")) if how != "finished" else None
            if how != "finished" and culprit is None:  # the student's package itself hung or crashed the process
                if current.get("what") == "startup":
                    raise UserError(f"pytest did not start ({how}); its output ends:\n{output[-2000:]}")
                package_error = (f"importing {PACKAGE} timed out after {timeout:g} s" if how == "timed out" else
                                 f"importing {PACKAGE} killed the test process ({how})")
            elif culprit is not None:
                where = current["nodeid"].split("::")[-1] if current["what"] == "test" else \
                    f"importing {current['nodeid']}"
                stopped[culprit] = ("timed out", f"timed out after {timeout:g} s in {where}") if how == "timed out" \
                    else ("error", f"the test process died ({how}) in {where}")
                final.add(culprit)
            kept += [r for r in records if r["kind"] in ("package", "import_error")
                     or _exercise_of_file(r.get("nodeid") or r.get("path")) in final]
            pending = [ex for ex in pending if ex not in final]
    if package_error:
        kept.append({"kind": "import_error", "error": package_error})
    report = score(kept, stopped, chosen)
    if report["package"] is not None and not Path(report["package"]).resolve().is_relative_to(student):
        raise UserError(f"grading imported {PACKAGE} from {report['package']}, not from {student}; uninstall other "
                        f"copies of {PACKAGE} from this Python, or grade with another one")
    report.update(student=student.name, student_dir=str(student), syntax_errors=syntax_errors(student),
                  time_limit_s=timeout, wall_s=round(time.monotonic() - start, 1), pytest_runs=runs,
                  output_tail=output[-4000:])
    return report


def _test_files(tmp: Path, exercises: list[str]) -> list[str]:
    """Each exercise's public then hidden test file, exercise after exercise: pytest keeps this order."""
    files = []
    for ex in exercises:
        for path in (tmp / "exercises" / f"test_{ex}.py", tmp / "exercises" / HIDDEN / f"test_{ex}_hidden.py"):
            if path.is_file():
                files.append(str(path))
    return files


def _run_pytest(student: Path, tmp: Path, exercises: list[str], timeout: float, run: int):
    """One pytest process on the exercises' test files, watched through the tests' log. Returns the log's records,
    how it ended ("finished", "timed out", or "exit code N" when it died), what it was doing last (a "start"
    record: {"what": "startup" | "import" | "collect" | "test", "nodeid": ...}) and its output."""
    log, out = tmp / f"log{run}.jsonl", tmp / f"output{run}.txt"
    path = [str(student)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), MINIDALLE2_GRADE_LOG=str(log),
               PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1", MINIDALLE2_SMOKE="1")
    cmd = [sys.executable, "-m", "pytest", "-c", str(tmp / "pytest.ini"), "--rootdir", str(tmp),
           "-p", "no:cacheprovider", "-q", "--no-header", "--continue-on-collection-errors",
           *_test_files(tmp, exercises)]
    records, offset, current, since = [], 0, {"what": "startup"}, time.monotonic()
    clock = "startup"  # whose time is running: an exercise's id, "import" or "startup"; it resets when that changes
    with open(out, "w") as output:  # a file, not a pipe: a pipe nobody reads while we watch could fill and block
        proc = subprocess.Popen(cmd, cwd=student, env=env, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)
        while True:
            try:
                code = proc.wait(timeout=POLL_S)
            except subprocess.TimeoutExpired:
                code = None
            if log.exists():
                with open(log, "rb") as f:
                    f.seek(offset)
                    text = f.read()
                done = text[:text.rfind(b"\n") + 1]  # whole lines only: the tests may be writing one
                offset += len(done)
                for line in done.decode().splitlines():
                    records.append(json.loads(line))
                    if records[-1]["kind"] == "start":
                        current = records[-1]
                        if (_exercise_of_file(current["nodeid"]) or current["what"]) != clock:
                            clock, since = _exercise_of_file(current["nodeid"]) or current["what"], time.monotonic()
            finished = bool(records) and records[-1]["kind"] == "finished"
            if code is not None:
                how = "finished" if finished else f"exit code {code}"
                break
            if time.monotonic() - since > (STARTUP_S if clock == "startup" else timeout):
                _kill(proc)  # after "finished", a thread the student's code left running keeps Python from exiting
                proc.wait()
                how = "finished" if finished else "timed out"
                break
    return records, how, current, out.read_text(errors="replace")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and anything the student's code started
    except (AttributeError, ProcessLookupError, PermissionError):
        proc.kill()


def _finished(records: list[dict], exercises: list[str]) -> set[str]:
    """The exercises a stopped run graded completely: collection was over and every test of theirs ended."""
    if not any(r["kind"] == "collection_done" for r in records):
        return set()
    ended = {r["nodeid"] for r in records if r["kind"] == "end"}
    tests = {}
    for r in records:
        if r["kind"] == "collected":
            tests.setdefault(_exercise_of_file(r["nodeid"]), []).append(r["nodeid"])
    return {ex for ex in exercises if all(nodeid in ended for nodeid in tests.get(ex, []))}


def score(records: list[dict], stopped: dict | None = None, exercises: list[str] | None = None) -> dict:
    """Points per exercise from the tests' log: points * passed / tests. An exercise one of whose test files did
    not even import earns 0 (its test count is unknown); ``stopped`` holds the exercises whose process was stopped,
    {id: (status, reason)}: their tests that never ended count as failed."""
    stopped = stopped or {}
    tests, broken, package, import_error = {}, {}, None, None
    for r in records:
        if r["kind"] == "collected":
            ids = [m[3:] for m in r["markers"] if m[3:] in BY_ID]
            tests[r["nodeid"]] = {"exercise": ids[0] if len(ids) == 1 else None, "passed": False, "error": None}
        elif r["kind"] == "collect_error":
            broken.setdefault(_exercise_of_file(r["path"]), []).append(r["error"])
        elif r["kind"] == "result" and r["nodeid"] in tests:
            test = tests[r["nodeid"]]
            if r["outcome"] == "failed":
                test["passed"], test["error"] = False, test["error"] or r["error"] or f"failed in {r['when']}"
            elif r["outcome"] == "skipped":
                test["error"] = test["error"] or "skipped"
            elif r["when"] == "call":
                test["passed"] = test["error"] is None
        elif r["kind"] == "package":
            package = r["file"]
        elif r["kind"] == "import_error":
            import_error = r["error"]
    graded = []
    for ex in EXERCISES:
        if exercises is not None and ex.id not in exercises:
            continue
        mine = {nodeid: t for nodeid, t in tests.items() if t["exercise"] == ex.id}
        n, passed = len(mine), sum(t["passed"] for t in mine.values())
        failures = [{"test": "(import of the test file)", "error": e} for e in broken.get(ex.id, [])]
        failures += [{"test": nodeid, "error": (t["error"] or stopped.get(ex.id, ("", "did not run"))[1])[:300]}
                     for nodeid, t in mine.items() if not t["passed"]]
        first = failures[0]["error"] if failures else None
        earned = 0.0 if ex.id in broken or not n or import_error else round(ex.points * passed / n, 2)
        if import_error:
            status, reason, first = "error", f"{PACKAGE} does not import: {import_error}", import_error
        elif ex.id in stopped:
            status, reason = stopped[ex.id]
        elif ex.id in broken:
            status, reason = "error", broken[ex.id][0]
        elif not n:
            status, reason = "error", "no tests were collected"
        elif passed == n:
            status, reason = "passed", f"all {n} tests passed"
        elif not passed and all(f["error"].startswith("NotImplementedError") for f in failures):
            status, reason = "not implemented", first
        else:
            status, reason = "failed", f"{n - passed} of {n} tests failed: {first}"
        graded.append({"id": ex.id, "title": ex.title, "points": earned, "max_points": ex.points,
                       "tests_passed": passed, "tests": n, "status": status, "reason": reason,
                       "first_failure": first, "failures": failures})
    return {"points": round(sum(e["points"] for e in graded), 2), "max_points": sum(e["max_points"] for e in graded),
            "exercises": graded, "package": package, "import_error": import_error,
            "unscored_tests": sorted(nodeid for nodeid, t in tests.items() if t["exercise"] is None)}


# --- many copies -----------------------------------------------------------------------------------------------

def find_copies(paths: list[Path]) -> list[Path]:
    """The student copies among ``paths``: a folder holding minidalle2/ is one; a folder of folders, one per student,
    stands for each of them (a student folder without the package is kept, to be reported, not skipped)."""
    copies = []
    for path in map(Path, paths):
        inside = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if path.is_dir() and not (path / PACKAGE).exists() else []
        copies += inside if any((p / PACKAGE / "__init__.py").is_file() for p in inside) else [path]
    return copies


def grade_many(paths: list[Path], root: Path | None = None, timeout: float = TIMEOUT_S,
               exercises: list[str] | None = None, progress=None) -> list[dict]:
    """Grade each copy; a copy that cannot be graded at all (no package, the wrong package imported) becomes a row
    with its "error" and 0 points instead of stopping the class's grading."""
    reports = []
    for copy in find_copies(paths):
        try:
            report = grade(copy, root, timeout, exercises)
        except UserError as e:
            report = {"student": copy.name, "student_dir": str(copy.resolve()), "points": 0.0, "max_points": None,
                      "exercises": [], "error": str(e)}
        reports.append(report)
        if progress:
            progress(report)
    return reports


def csv_rows(reports: list[dict]) -> list[dict]:
    """One row per student: total, then each exercise's points and status (its reason is in the JSON)."""
    rows = []
    for r in reports:
        row = {"student": r["student"], "points": r["points"], "max_points": r["max_points"],
               "error": r.get("error") or r.get("import_error") or "", "student_dir": r["student_dir"]}
        by_id = {e["id"]: e for e in r["exercises"]}
        for ex in EXERCISES:
            e = by_id.get(ex.id)
            row[ex.id] = "" if e is None else e["points"]
            row[f"{ex.id} status"] = "" if e is None else e["status"]
        rows.append(row)
    return rows


def write_csv(path: Path, reports: list[dict]) -> None:
    rows = csv_rows(reports)
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["student"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


# --- printing --------------------------------------------------------------------------------------------------

def format_grade(report: dict) -> str:
    if report.get("error"):
        return f"{report['student_dir']}: not graded: {report['error']}"
    lines = [f"graded {report['student_dir']} ({PACKAGE} imported from {report['package']}; "
             f"{report['wall_s']:g} s, time limit {report['time_limit_s']:g} s per exercise)"]
    if report["import_error"]:
        lines.append(f"{PACKAGE} does not import: {report['import_error']}")
    lines += [f"  {e}" for e in report["syntax_errors"] if e != report["import_error"]]
    lines.append(f"{'exercise':<16} {'points':>12} {'tests':>7}  {'status':<16} reason")
    for e in report["exercises"]:
        reason = "" if e["status"] == "passed" or report["import_error"] else e["reason"]
        lines.append(f"{e['id']:<16} {e['points']:>6g} / {e['max_points']:<3} {e['tests_passed']:>3}/{e['tests']:<3}  "
                     f"{e['status']:<16} {reason[:110]}")
    lines.append(f"{'total':<16} {report['points']:>6g} / {report['max_points']}")
    return "\n".join(lines)


def format_summary(report: dict) -> str:
    """One line per student, for a class."""
    if report.get("error"):
        return f"{report['student']:<24} not graded: {report['error'].splitlines()[0]}"
    other = [f"{e['id']} {e['status']}" for e in report["exercises"] if e["status"] not in ("passed", "failed")]
    return (f"{report['student']:<24} {report['points']:>6g} / {report['max_points']:<4} {report['wall_s']:>5g} s  "
            + ("; ".join(other) if not report["import_error"] else f"does not import: {report['import_error']}"))
