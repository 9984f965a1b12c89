"""Classroom mode: the paper's equations as exercises, a student release, and autograding with pytest.

An exercise is a few lines of the package inside a function its ``Exercise`` names, between a comment line
``# BEGIN SOLUTION`` and a comment line ``# END SOLUTION`` (see ``classifier_free_guidance`` in diffusion.py).
``release`` copies the project for students with every such region replaced by
``raise NotImplementedError("Exercise <id>: <title>")``. Notebooks may hold exercises too, with nbgrader's
``### BEGIN SOLUTION`` / ``### END SOLUTION`` in a code cell. The tests of exercise <id> are

    tests/exercises/test_<id>.py                public: shipped in the release
    tests/exercises/hidden/test_<id>_hidden.py  hidden: left out of the release, run by ``grade``

all marked ``ex_<id>``, so ``pytest -m ex_<id>`` runs them. ``grading.grade`` runs every exercise test against a
student's copy and scores it.
"""

from __future__ import annotations

import ast
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from minidalle2.errors import UserError

PACKAGE = "minidalle2"
EXERCISE_TESTS = Path("tests") / "exercises"  # public tests; hidden ones in its hidden/ folder
HIDDEN = "hidden"
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
NB_BEGIN, NB_END = "### BEGIN SOLUTION", "### END SOLUTION"  # nbgrader's markers, in notebook code cells
# copied if present; not INSTRUCTORS.md, which tells how the hidden tests check each exercise
RELEASE_FILES = ("pyproject.toml", "environment.yml", "conftest.py", "LICENSE")
JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", ".pytest_cache")


@dataclass(frozen=True)
class Exercise:
    id: str                   # the pytest marker is ex_<id>; the tests are test_<id>.py and hidden/test_<id>_hidden.py
    title: str
    points: int
    section: str              # where the equation is: the unCLIP paper or the paper it builds on
    where: tuple[str, ...]    # "file.py:function" (path inside the package) holding its solution regions
    notebook: str | None      # the notebook that explains it, if one does
    needs: tuple[str, ...] = ()  # exercises its tests also call: do those first

    @property
    def marker(self) -> str:
        return f"ex_{self.id}"


EXERCISES = (
    Exercise("clip_loss", "CLIP's symmetric contrastive loss", 10, "CLIP (Radford et al. 2021) Fig. 3; unCLIP §2",
             ("clip.py:clip_loss",), "01_clip_embeddings.ipynb"),
    Exercise("cosine_schedule", "the cosine noise schedule beta_t", 5, "Improved DDPM (Nichol & Dhariwal 2021) Eq. 17",
             ("diffusion.py:cosine_beta_schedule",), "04_decoder.ipynb"),
    Exercise("q_sample", "sample x_t from q(x_t | x_0)", 5, "DDPM (Ho et al. 2020) Eq. 4",
             ("diffusion.py:GaussianDiffusion.q_sample",), "04_decoder.ipynb"),
    Exercise("q_posterior", "the posterior q(x_{t-1} | x_t, x_0)", 10, "DDPM (Ho et al. 2020) Eqs. 6-7",
             ("diffusion.py:GaussianDiffusion.posterior_coefficients",), None),
    Exercise("ddim_step", "one DDIM step from t to t_prev", 15, "DDIM (Song et al. 2021) Eq. 12",
             ("diffusion.py:GaussianDiffusion.ddim_sample",), "03_diffusion_prior.ipynb"),
    Exercise("guidance", "classifier-free guidance", 5, "unCLIP §2.1; Ho & Salimans 2021",
             ("diffusion.py:classifier_free_guidance",), "04_decoder.ipynb"),
    Exercise("pca_projection", "PCA projection of z_i and its inverse", 5, "unCLIP §2.2 (AR prior)",
             ("prior_ar_tokenizer.py:PCATokenizer.to_pca", "prior_ar_tokenizer.py:PCATokenizer.from_pca"),
             "02_ar_prior_pca.ipynb"),
    Exercise("quantize", "uniform bucket quantization and bucket centres", 5, "unCLIP §2.2 (AR prior)",
             ("prior_ar_tokenizer.py:PCATokenizer._bucketize", "prior_ar_tokenizer.py:PCATokenizer._centre"),
             "02_ar_prior_pca.ipynb"),
    Exercise("dot_token", "the dot-product token and its top-half sampling", 5, "unCLIP §2.2 (AR prior)",
             ("prior_ar_tokenizer.py:PCATokenizer.encode_dot", "prior_ar.py:filter_probs"), "02_ar_prior_pca.ipynb",
             needs=("quantize",)),
    Exercise("prior_sequence", "the diffusion prior's token sequence", 10, "unCLIP §2.2 (diffusion prior)",
             ("prior_diffusion.py:DiffusionPrior.sequence",), "03_diffusion_prior.ipynb"),
    Exercise("causal_mask", "the causal attention mask with padding", 5, "unCLIP §2.2 (decoder-only Transformer)",
             ("transformer.py:attention_mask",), "03_diffusion_prior.ipynb"),
    Exercise("zi_conditioning", "z_i conditioning in the U-Net", 10, "unCLIP §2.1",
             ("unet.py:UNet.embedding", "unet.py:UNet.context"), "04_decoder.ipynb"),
    Exercise("slerp", "spherical interpolation (slerp)", 5, "unCLIP §3.2",
             ("pipeline.py:slerp",), "05_variations_interpolations_textdiffs.ipynb"),
    Exercise("text_diff", "the text diff direction", 5, "unCLIP §3.3",
             ("pipeline.py:text_diff_direction",), "05_variations_interpolations_textdiffs.ipynb"),
    Exercise("coverage", "anti-aliased coverage of a hollow shape", 5,
             "unCLIP §3.1 (the details a variation may change)", ("render.py:hollow_coverage",),
             "05_variations_interpolations_textdiffs.ipynb"),
    Exercise("gathered_clip_loss", "one rank's share of CLIP's loss, over every rank's features", 5,
             "CLIP (Radford et al. 2021) Fig. 3 on N processes; open_clip's ClipLoss(local_loss=True)",
             ("clip.py:local_clip_loss",), None),
    Exercise("blur_kernel", "the Gaussian blur of conditioning augmentation", 5,
             "unCLIP §2.1 (upsamplers); CDM (Ho et al. 2021) §3.2", ("upsampler.py:gaussian_kernel",),
             "07_upsampler.ipynb"),
    Exercise("text_analogy", "the text diff in image space (analogy)", 5, "unCLIP §3.3, in image space (this project)",
             ("pipeline.py:analogy_target",), "05_variations_interpolations_textdiffs.ipynb"),
    Exercise("sketch_loss", "the decoder's sketch of z_i: E[pool_k(x_0) | z_i] by least squares", 5,
             "unCLIP §2.1 (the decoder reads z_i), this project", ("decoder.py:Decoder.sketch_loss",),
             "04_decoder.ipynb"),
    Exercise("hard_negatives", "a hard negative's loss with a margin (swapped attributes, word order)", 5,
             "NegCLIP (Yuksekgonul et al. 2023) §4; CLIP Fig. 3", ("clip.py:swap_loss",), "01_clip_embeddings.ipynb"),
    Exercise("detail_invariance", "z_i of two views that differ only in unstated details should agree", 5,
             "unCLIP §3.1 (what z_i drops); SLIP (Mu et al. 2022) §3", ("clip.py:invariance_loss",),
             "05_variations_interpolations_textdiffs.ipynb"),
)
BY_ID = {ex.id: ex for ex in EXERCISES}


def project_root() -> Path:
    """The source checkout this package was installed from (``pip install -e .``): it holds the exercise tests."""
    root = Path(__file__).resolve().parents[2]
    if not (root / EXERCISE_TESTS).is_dir():
        raise UserError(f"{root / EXERCISE_TESTS} not found: classroom commands need the project's source checkout; "
                        "run them from a clone installed with `pip install -e .`")
    return root


# --- solution regions ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Region:
    path: str        # inside the package, e.g. "diffusion.py"
    begin: int       # 0-based line of the BEGIN marker
    end: int         # 0-based line of the END marker
    function: str    # qualified name of the function holding it, e.g. "GaussianDiffusion.q_sample"
    exercise: str


def marker_spans(source: str, begin: str = BEGIN, end: str = END, where: str = "") -> list[tuple[int, int]]:
    """(begin, end) 0-based line numbers of each region; a marker is a line that is exactly the marker, indented."""
    spans, start = [], None
    for i, line in enumerate(source.splitlines()):
        text = line.strip()
        if text == begin:
            if start is not None:
                raise UserError(f"{where}:{i + 1}: '{begin}' inside another solution region; close it first")
            start = i
        elif text == end:
            if start is None:
                raise UserError(f"{where}:{i + 1}: '{end}' without a '{begin}' before it")
            if i == start + 1:
                raise UserError(f"{where}:{i + 1}: an empty solution region")
            spans.append((start, i))
            start = None
    if start is not None:
        raise UserError(f"{where}:{start + 1}: '{begin}' is never closed by '{end}'")
    return spans


def _functions(tree: ast.AST) -> list[tuple[str, int, int]]:
    """(qualified name, first line, last line) of every function, lines 1-based, e.g. ("UNet.context", 180, 195)."""
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not isinstance(child, ast.ClassDef):
                    found.append((prefix + child.name, child.lineno, child.end_lineno))
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def find_regions(root: Path) -> list[Region]:
    """Every solution region of the package, each matched to the exercise whose ``where`` names its function."""
    owner = {}
    for ex in EXERCISES:
        for place in ex.where:
            owner[tuple(place.split(":"))] = ex.id
    regions = []
    for file in sorted((root / PACKAGE).rglob("*.py")):
        path = file.relative_to(root / PACKAGE).as_posix()
        source = file.read_text()
        spans = marker_spans(source, where=f"{PACKAGE}/{path}")
        if not spans:
            continue
        functions = _functions(ast.parse(source))
        for begin, end in spans:
            line = begin + 2  # 1-based number of the region's first line
            inside = [f for f in functions if f[1] <= line <= f[2]]
            function = max(inside, key=lambda f: f[1])[0] if inside else "<module>"
            if (path, function) not in owner:
                raise UserError(f"{PACKAGE}/{path}:{begin + 1}: a solution region in {function}, which no exercise "
                                f"names; add '{path}:{function}' to an exercise's `where` in classroom.py")
            regions.append(Region(path, begin, end, function, owner[(path, function)]))
    for ex in EXERCISES:
        for place in ex.where:
            path, function = place.split(":")
            if not any(r.path == path and r.function == function for r in regions):
                raise UserError(f"exercise {ex.id}: {PACKAGE}/{path} has no solution region in {function}; mark the "
                                f"solution with '{BEGIN}' / '{END}'")
    return regions


def message(exercise: Exercise) -> str:
    return f"Exercise {exercise.id}: {exercise.title}"


def stub(exercise: Exercise) -> str:
    """The line that stands in for the solution in the release."""
    return f"raise NotImplementedError({json.dumps(message(exercise), ensure_ascii=False)})"


def strip_source(source: str, spans: list[tuple[int, int]], stubs: list[str]) -> str:
    """Replace each (begin, end) span, markers included, by its stub, indented like the BEGIN marker."""
    lines = source.splitlines(keepends=True)
    for (begin, end), text in sorted(zip(spans, stubs), reverse=True):
        indent = lines[begin][:len(lines[begin]) - len(lines[begin].lstrip())]
        lines[begin:end + 1] = [f"{indent}{line}\n" for line in text.split("\n")]
    return "".join(lines)


def strip_notebook(nb: dict, name: str) -> int:
    """Replace the nbgrader solution regions of a notebook's code cells in place, as nbgrader does, and clear
    those cells' outputs. Returns the number of regions."""
    count = 0
    for i, cell in enumerate(nb.get("cells", [])):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        spans = marker_spans(source, NB_BEGIN, NB_END, where=f"{name} cell {i}")
        if not spans:
            continue
        message = json.dumps(f"Exercise in {name}, cell {i}", ensure_ascii=False)
        source = strip_source(source, spans, [f"# YOUR CODE HERE\nraise NotImplementedError({message})"] * len(spans))
        cell["source"] = source.splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
        count += len(spans)
    return count


# --- release ---------------------------------------------------------------------------------------------------

def release(out_dir: Path, root: Path | None = None) -> dict:
    """Write the student copy into ``out_dir`` (new or empty): the package with every solution region replaced by
    its NotImplementedError, the notebooks (nbgrader regions replaced), the public exercise tests, the install
    files, ``data/`` and a student README. Hidden tests and the project's own test suite stay behind."""
    root = project_root() if root is None else Path(root)
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder; release into a new folder")
    for inside in (root / PACKAGE, root / "tests", root / "notebooks"):
        if out.is_relative_to(inside.resolve()):
            raise UserError(f"{out} is inside {inside}; release into a folder outside the package, tests and notebooks")
    regions = find_regions(root)
    package = {}  # everything is prepared and checked before anything is written
    for path in sorted({r.path for r in regions}):
        mine = [r for r in regions if r.path == path]
        source = (root / PACKAGE / path).read_text()
        stubs = [stub(BY_ID[r.exercise]) for r in mine]
        package[path] = strip_source(source, [(r.begin, r.end) for r in mine], stubs)
        try:
            compile(package[path], path, "exec")
        except SyntaxError as e:
            raise UserError(f"the student copy of {PACKAGE}/{path} does not compile ({e.msg}, line {e.lineno}); a "
                            "solution region must hold whole statements") from None
    notebooks = {}  # name -> (notebook, regions replaced); with none, the file is copied as it is
    for nb_path in sorted((root / "notebooks").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        notebooks[nb_path.name] = (nb, strip_notebook(nb, nb_path.name))

    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(root / PACKAGE, out / PACKAGE, ignore=JUNK)
    for path, text in package.items():
        (out / PACKAGE / path).write_text(text)
    (out / "notebooks").mkdir()
    for name, (nb, count) in notebooks.items():
        if count:
            (out / "notebooks" / name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        else:
            shutil.copy2(root / "notebooks" / name, out / "notebooks" / name)
    public = shutil.ignore_patterns(HIDDEN, "__pycache__", "*.pyc")
    shutil.copytree(root / EXERCISE_TESTS, out / EXERCISE_TESTS, ignore=public)
    for name in RELEASE_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, out / name)
    if (root / "data").is_dir():  # the shipped checkpoints (data/pretrained), when this checkout has them
        shutil.copytree(root / "data", out / "data", ignore=JUNK)
    if (root / "README.md").is_file():
        shutil.copy2(root / "README.md", out / "PROJECT_README.md")
    (out / "README.md").write_text(student_readme())
    return {"out": str(out), "exercises": len(EXERCISES), "regions": len(regions),
            "notebook_regions": sum(count for _, count in notebooks.values()),
            "public_tests": sorted(p.name for p in (out / EXERCISE_TESTS).glob("test_*.py")),
            "hidden_tests_left_out": sorted(p.name for p in (root / EXERCISE_TESTS / HIDDEN).glob("test_*.py"))}


def format_release(info: dict) -> str:
    return (f"wrote the student copy to {info['out']}: {info['exercises']} exercises ({info['regions']} solution "
            f"regions in the package, {info['notebook_regions']} in notebooks), {len(info['public_tests'])} public "
            f"test files; {len(info['hidden_tests_left_out'])} hidden test files left out")


STUDENT_README = """\
# minidalle2 — exercises

This is minidalle2, a small DALL-E 2 / unCLIP (Ramesh et al. 2022) that trains on a laptop CPU, with the
equations taken out. Each exercise is a function of the package that now raises
`NotImplementedError("Exercise <id>: ...")`. Open the file, read the function's docstring (it states the
equation, in the paper's notation), and replace the `raise` line with your code. Everything else in the
package is complete; `PROJECT_README.md` describes it.

## Setup

```bash
python3 -m venv .venv && source .venv/bin/activate
pip install -e ".[dev]"
```

## Work on one exercise

```bash
pytest -m ex_q_sample          # the tests of exercise q_sample
pytest tests/exercises         # every exercise
```

An exercise's tests are in `tests/exercises/test_<id>.py`. Each builds a small case and compares your function
with something trusted: a closed form, open_clip's `ClipLoss`, scikit-learn's PCA, or a plain loop. Your
instructor grades with these tests and a few more that are not in this copy, so passing the public tests is
necessary, not sufficient: make your code right for every input the docstring allows, not only these.
Grading runs the instructor's copy of the tests on your `minidalle2/` folder, so changing the tests changes
nothing; keep the functions' names and arguments as they are. Each exercise is graded on its own, with a time
limit (30 s by default): code that never returns costs that exercise, and a file that does not parse costs
every exercise whose tests import it, so run `pytest tests/exercises` before you hand in.

Some exercises build on others ("needs" below): do those first. Code that calls an exercise you have not done
yet fails with that exercise's `NotImplementedError`; training a stage (`minidalle2 train ...`, the notebooks)
needs every exercise on its path, so the notebooks work once you have done the exercises they use.

## The exercises

{table}

The notebooks are in `notebooks/` (`jupyter lab notebooks/`); each opens with what the paper says.
"""


def student_readme() -> str:
    rows = ["| id | exercise | points | where | paper | notebook | needs |", "|---|---|---|---|---|---|---|"]
    for ex in EXERCISES:
        where = "<br>".join(f"`{PACKAGE}/{w.replace(':', '` `')}`" for w in ex.where)
        title = ex.title.replace("|", "\\|")  # a bar would end the table cell
        rows.append(f"| `{ex.id}` | {title} | {ex.points} | {where} | {ex.section} | {ex.notebook or '–'} | "
                    f"{', '.join(ex.needs) or '–'} |")
    rows.append(f"| | **total** | **{sum(ex.points for ex in EXERCISES)}** | | | | |")
    return STUDENT_README.format(table="\n".join(rows))


def format_list() -> str:
    lines = [f"{'id':<16} {'points':>6}  {'title':<48} where"]
    for ex in EXERCISES:
        lines.append(f"{ex.id:<16} {ex.points:>6}  {ex.title:<48} {', '.join(ex.where)}")
        extra = f"{ex.section}; notebook {ex.notebook or '-'}" + (f"; needs {', '.join(ex.needs)}" if ex.needs else "")
        lines.append(f"{'':<16} {'':>6}  {extra}")
    lines.append(f"{'total':<16} {sum(ex.points for ex in EXERCISES):>6}   (tests: pytest -m ex_<id>)")
    return "\n".join(lines)
