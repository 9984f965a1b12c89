"""The project around the package: install files, README commands, the console script."""

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from minidalle2.tools.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_installs_this_package_with_its_dev_extra():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps and "conda-forge" in env["channels"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip == ["-e .[dev]"]  # pyproject.toml stays the single source of dependencies
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "minidalle2" and "dev" in project["optional-dependencies"]
    assert not any(re.match(r"torch\s*==", d) for d in project["dependencies"])  # no exact torch pin


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("minidalle2 ")]


def test_every_minidalle2_command_in_the_readme_parses():
    commands = readme_commands()
    assert "minidalle2 demo" in commands
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])  # argparse exits on an unknown option


def test_readme_quickstart_is_install_demo_pytest():
    text = (ROOT / "README.md").read_text()
    quick = text[text.index("## Quickstart"):]
    for step in ('pip install -e ".[dev]"', "minidalle2 demo", "pytest"):
        assert step in quick


def test_console_script_and_module_both_run():
    result = subprocess.run([sys.executable, "-m", "minidalle2", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout
    script = Path(sys.executable).parent / "minidalle2"
    if script.exists():
        assert subprocess.run([str(script), "--help"], capture_output=True).returncode == 0


def test_readme_layout_names_every_file_of_the_package():
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("## Layout"):text.index("### How the code is organised")]
    named = set(re.findall(r"[\w.]+\.py|\w+/", layout))
    package = ROOT / "minidalle2"
    files = {p.name for p in package.rglob("*.py")} | {p.name + "/" for p in package.iterdir() if p.is_dir()
                                                      and p.name != "__pycache__"}
    assert files <= named, sorted(files - named)


def test_every_committed_notebook_was_run_top_to_bottom_without_errors_and_stays_small():
    """The notebooks are committed with their outputs (executed on the shipped run, not in smoke mode), so their
    pictures show on a repository page; pytest runs them again in smoke mode without writing back."""
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert len(notebooks) == 7
    for path in notebooks:
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        counts = [c["execution_count"] for c in cells]
        assert counts == list(range(1, len(cells) + 1)), f"{path.name} was not run top to bottom: {counts}"
        outputs = [o for c in cells for o in c["outputs"]]
        assert any(o.get("data", {}).get("image/png") for o in outputs), f"{path.name} has no pictures"
        errors = [o.get("ename") for o in outputs if o["output_type"] == "error"]
        assert not errors, f"{path.name} stopped with {errors}"
        text = "".join("".join(o.get("text", "")) for o in outputs)
        text += "".join("".join(o.get("data", {}).get("text/plain", "")) for o in outputs)
        assert "smoke mode: True" not in text and "preset: tiny" not in text, f"{path.name} was run in smoke mode"
        assert "Warning" not in text, f"{path.name} shows a warning in its outputs"
        assert str(ROOT) not in text and "/home/" not in text, f"{path.name} prints an absolute path"
        assert path.stat().st_size <= 1.5 * 2**20, f"{path.name} weighs more than 1.5 MB (smaller figures)"
    size = sum(p.stat().st_size for p in notebooks)
    assert size <= 5 * 2**20, f"the notebooks weigh {size / 2**20:.1f} MB; keep them under 5 MB (smaller figures)"


def test_paths_are_shown_relative_to_the_checkout():
    """Notebook outputs are committed: they print the shipped run as data/pretrained, not the author's home."""
    from minidalle2.tools.run import CHECKOUT, PRETRAINED, shown
    assert shown(PRETRAINED) == "data/pretrained"
    assert shown(CHECKOUT / "runs" / "x") == "runs/x"
    outside = Path("/") / "elsewhere" / "run"
    assert shown(outside) == str(outside)
