"""Shared by every exercise test: seeded, single-threaded torch. When `minidalle2 classroom grade` runs the tests
(MINIDALLE2_GRADE_LOG names a file), each result is also appended to that file as one JSON line for the grader."""

import json
import os
import sys

import pytest
import torch

torch.set_num_threads(1)  # tiny tensors: threads would only wait on each other
LOG = os.environ.get("MINIDALLE2_GRADE_LOG")


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def record(**entry) -> None:
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")


def pytest_collection_modifyitems(items):
    for item in items:
        record(kind="collected", nodeid=item.nodeid,
               markers=sorted({m.name for m in item.iter_markers() if m.name.startswith("ex_")}))


def pytest_collectreport(report):
    if report.failed:
        record(kind="collect_error", path=report.nodeid, error=str(report.longrepr)[-2000:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.when == "call" or not report.passed:
        error = f"{call.excinfo.typename}: {call.excinfo.value}" if report.failed and call.excinfo else None
        record(kind="result", nodeid=item.nodeid, when=report.when, outcome=report.outcome, error=error)


def pytest_sessionfinish(session):
    package = sys.modules.get("minidalle2")
    record(kind="package", file=getattr(package, "__file__", None))
