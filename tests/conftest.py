"""Shared fixtures: one tiny CLIP run and one tiny run of every stage, each trained once per test session."""

import shutil

import pytest
import torch

from minidalle2.runs import get_preset, train
from minidalle2.tools.run import train_all


# Tests use tiny models: one thread avoids oversubscribing a small, often shared, CPU.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_clip_cfg():
    return get_preset("clip", "tiny")


@pytest.fixture(scope="session")
def clip_run(tmp_path_factory, tiny_clip_cfg):
    """A run dir with a tiny trained CLIP and its embedding cache. Treat as read-only; copy it to modify."""
    run = tmp_path_factory.mktemp("run")
    info = train("clip", run, tiny_clip_cfg, progress=False, log=lambda *a: None)  # and caches the embeddings
    return run, info


@pytest.fixture(scope="session")
def run(clip_run, tmp_path_factory):
    """Every stage, the oracle included, trained with the tiny preset on the session's tiny CLIP, through
    `train all`. Treat as read-only; copy it to modify."""
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    shutil.copytree(clip_run[0], run)
    train_all(run, "tiny", progress=False, log=lambda *a: None)
    return run


@pytest.fixture
def clip_run_copy(clip_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(clip_run[0], run)
    return run
