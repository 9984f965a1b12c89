"""Shared by every exercise test: seeded, single-threaded torch. When `minidalle2 classroom grade` runs the tests
(MINIDALLE2_GRADE_LOG names a file), what pytest starts (importing minidalle2, collecting a file, running a test)
and each result are also appended to that file as JSON lines: the grader watches it to time each exercise."""

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


@pytest.fixture
def bucket_by_loop():
    """The reference for bucket quantization: the first bucket whose upper edge lies above x; values past either
    end go to the end buckets."""
    def bucket(x, lo, hi, B):
        width = (hi - lo) / B
        for b in range(B):
            if x < lo + (b + 1) * width:
                return b
        return B - 1
    return bucket


@pytest.fixture
def tiny_unet():
    """A U-Net small enough to run in milliseconds, with z_i of size 6 (and captions of width text_width)."""
    from minidalle2.unet import UNet, UNetConfig  # imported late: the grader checks whose package this is

    def make(text_width=0):
        cfg = UNetConfig(image_size=16, base_channels=8, channel_mult=[1, 2], attention_resolutions=[8], heads=2,
                         embed_dim=6, text_width=text_width)
        return UNet(cfg)
    return make


def record(**entry) -> None:
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")


def describe(exc: BaseException) -> str:
    """One line: "syntax error in minidalle2/pipeline.py line 40: invalid syntax" when a SyntaxError is behind the
    exception (pytest wraps one raised while importing a test file), else "TypeError: ..."."""
    seen = exc
    while seen is not None:
        if isinstance(seen, SyntaxError):
            where = os.path.relpath(seen.filename) if seen.filename else "?"
            return f"syntax error in {where} line {seen.lineno}: {seen.msg}"
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def pytest_sessionstart(session):
    if LOG:
        record(kind="start", what="import", nodeid=None)
        try:
            import minidalle2
            record(kind="package", file=getattr(minidalle2, "__file__", None))
        except BaseException as e:  # noqa: BLE001 - any failure of the student's package is reported, not raised
            record(kind="import_error", error=describe(e))


def pytest_collectstart(collector):
    if isinstance(collector, pytest.Module):
        record(kind="start", what="collect", nodeid=collector.nodeid)


def pytest_collection_modifyitems(items):
    for item in items:
        record(kind="collected", nodeid=item.nodeid,
               markers=sorted({m.name for m in item.iter_markers() if m.name.startswith("ex_")}))
    record(kind="collection_done")


_collect_errors = {}  # nodeid -> one line, from pytest_exception_interact (it sees the exception itself)


def pytest_exception_interact(node, call, report):
    if isinstance(node, pytest.Collector) and call.excinfo is not None:
        _collect_errors[node.nodeid] = describe(call.excinfo.value)


def pytest_collectreport(report):
    if report.failed:
        error = _collect_errors.get(report.nodeid) or str(report.longrepr).strip().splitlines()[-1]
        record(kind="collect_error", path=report.nodeid, error=error)


def pytest_runtest_logstart(nodeid, location):
    record(kind="start", what="test", nodeid=nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.when == "call" or not report.passed:
        error = describe(call.excinfo.value) if report.failed and call.excinfo else None
        record(kind="result", nodeid=item.nodeid, when=report.when, outcome=report.outcome, error=error)


def pytest_runtest_logfinish(nodeid, location):
    record(kind="end", nodeid=nodeid)


def pytest_sessionfinish(session):
    record(kind="finished")
