"""The README's bring-your-own-data commands, as written, on a small generated folder of captioned PNGs."""

import copy
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minidalle2 import presets
from minidalle2.checkpoint import read_json
from minidalle2.data import ShapesConfig, ShapesDataset
from minidalle2.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent


def readme_folder_commands() -> list[list[str]]:
    """The bash block of the README that trains on a folder (`--data-dir`), one argv per command."""
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S) if "--data-dir" in b)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


@pytest.fixture
def short_presets(monkeypatch):
    """Every preset as written, trained for a few steps: the settings under test are the presets' own."""
    table = copy.deepcopy(presets.PRESETS)
    for stage in table.values():
        for preset in stage.values():
            preset.train.steps, preset.train.ckpt_every, preset.train.batch_size = 4, 2, 8
            preset.train.warmup_steps, preset.train.sample_every = 1, 2
    monkeypatch.setattr(presets, "PRESETS", table)
    monkeypatch.setattr("minidalle2.runs.PRESETS", table)
    return table


def test_the_readme_folder_commands_train_clip_prior_and_decoder_and_generate(tmp_path, monkeypatch, capsys,
                                                                              short_presets):
    folder = tmp_path / "path" / "to" / "folder"
    folder.mkdir(parents=True)
    shapes = ShapesDataset("test", ShapesConfig(n_test=48, image_size=64))  # larger than the preset's 32x32
    rows = ["file,caption"]
    for i in range(len(shapes)):
        image = shapes[i]["image"].permute(1, 2, 0).numpy()
        Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / f"img_{i:03d}.png")
        rows.append(f'img_{i:03d}.png,"{shapes[i]["caption"]}"')
    rows.append("missing.png,a picture that is not there")  # --skip-bad skips it
    (folder / "captions.csv").write_text("\n".join(rows) + "\n")

    monkeypatch.chdir(tmp_path)
    commands = readme_folder_commands()
    assert any(c[:2] == ["minidalle2", "train"] and "--preset" in c and c[c.index("--preset") + 1] == "quick"
               for c in commands)
    for argv in commands:
        if argv[0] == "mkdir":
            Path(argv[-1]).mkdir(parents=True, exist_ok=True)
            continue
        assert main(argv[1:] + (["--no-progress"] if argv[1] == "train" else [])) == 0, argv
    out = capsys.readouterr().out
    assert "swap_negatives and p_partial need the shapes data; off for the folder" in out
    state = read_json(tmp_path / "runs" / "mine" / "clip" / "train_state.json")
    assert state["data"]["folder"] == str(folder.resolve()) and state["data"]["skip_bad"]
    assert state["config"]["model"]["swap_negatives"] == 0 and state["config"]["data"]["p_partial"] == 0
    assert read_json(tmp_path / "runs" / "mine" / "embeddings" / "meta.json")["splits"] == \
        {"train": 44, "val": 2, "test": 2}
    generated = next(Path(c[-1]) for c in commands if c[:2] == ["minidalle2", "generate"])
    assert Image.open(generated).size[0] > 0
