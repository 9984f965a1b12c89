"""What CLIP's z_i keeps and drops, and what unCLIP's variations change (paper Sec. 3.1, Fig. 3).

A variation encodes an image to its bipartite latent (z_i, x_T) and decodes it again with DDIM at eta > 0. The
paper's claim: the variations keep what CLIP's embedding keeps (the objects, the style) and re-draw what it drops.
With the details of render.py (background, fill, turn: never named by any caption) the claim can be measured:

- the probe: a classifier trained on the train split reads each stated attribute and each detail from z_i (an MLP
  and a linear probe) and from z_t, on the test split's one-object images. Stated attributes are what the
  contrastive loss needs to tell captions apart; a detail is kept only as far as it helps that.
- the variations: for a fixed set of test images, n variations each at eta = 1 and at eta = 0 (the
  reconstruction), read by the oracle: ``kept`` is the share of variations whose stated attributes all read as in
  the input (``kept_one``, ``kept_two``: the same of the one- and two-object inputs); ``detail_entropy.<detail>``
  the normalised entropy of the detail across an image's variations,

      H / log K = -sum_v q(v) log q(v) / log K,   q the share of the n variations showing value v of K,

  averaged over images (1: spread evenly over every value; 0: always the same). ``details_same`` is the share of
  detail readings equal to the input's. Interpolation end points (theta = 0 and 1 of ``interpolate``, one random
  x_T per seed) are scored the same way over n seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from minidalle2 import runs
from minidalle2.data import COLORS, POSITIONS, SHAPES, SIZES, Scene
from minidalle2.embeddings import load_embeddings, run_datasets
from minidalle2.errors import UserError
from minidalle2.evaluation.metrics import coverage
from minidalle2.evaluation.oracle import TRUST, check_trusted, is_trusted
from minidalle2.evaluation.stages import linear_probe_accuracy, probe_accuracy
from minidalle2.render import BACKGROUNDS, DETAILS, FILLS, TURNABLE, TURNS, Details

STATED = {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES, "position": POSITIONS}


# --- the probe -------------------------------------------------------------------------------------------------

def probe_labels(emb: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-object images of a split and their labels (n, 7): colour, shape, size, position, background, fill,
    turn (-1 where a turn does not apply)."""
    one = torch.tensor([a["n_objects"] == 1 for a in emb["attributes"]])
    rows = [[STATED[k].index(a[f"{k}0"]) for k in STATED]
            + [tuple(BACKGROUNDS).index(a["background"]), FILLS.index(a["fill0"]),
               TURNS.index(a["turn0"]) if a["turn0"] else -1]
            for a, keep in zip(emb["attributes"], one) if keep]
    return one, torch.tensor(rows, dtype=torch.long)


def has_details(run_dir: Path) -> bool:
    """Whether the run's cached embeddings come with unstated details and a train split to fit a probe on."""
    try:
        test = load_embeddings(run_dir, "test")
    except UserError:
        return False
    return "train" in test["meta"]["splits"] and "background" in (test["attributes"] or [{}])[0]


def details_probe(run_dir: Path, n_train: int = 4000, seed: int = 0) -> dict:
    """Accuracy of reading each stated attribute and each detail of a one-object image, per embedding (z_i with an
    MLP and a linear probe, z_t with an MLP), beside chance (the commonest test value's share)."""
    train, test = load_embeddings(run_dir, "train"), load_embeddings(run_dir, "test")
    one_train, y_train = probe_labels(train)
    one_test, y_test = probe_labels(test)
    names = list(STATED) + list(DETAILS)
    n_values = [len(v) for v in STATED.values()] + [len(v) for v in DETAILS.values()]
    turnable_train, turnable_test = y_train[:n_train, 6] >= 0, y_test[:, 6] >= 0
    result = {"n_train": min(n_train, len(y_train)), "n_test": len(y_test), "chance": {}}
    for k, name in enumerate(names):
        y = y_test[turnable_test, k] if name == "turn" else y_test[:, k]
        result["chance"][name] = round(float(torch.bincount(y).max() / len(y)), 4)
    for z in ("z_i", "z_i_linear", "z_t"):
        x_train, x_test = train[z[:3]][one_train][:n_train], test[z[:3]][one_test]
        right = {}
        for cols, rows_train, rows_test in (([0, 1, 2, 3, 4, 5], slice(None), slice(None)),
                                            ([6], turnable_train, turnable_test)):
            xa, ya = x_train[rows_train], y_train[:n_train][rows_train][:, cols]
            xb, yb = x_test[rows_test], y_test[rows_test][:, cols]
            hits = (linear_probe_accuracy(xa, ya, xb, yb) if z.endswith("linear") else
                    probe_accuracy(xa, ya, xb, yb, [n_values[c] for c in cols], seed=seed))
            right.update({names[c]: round(hits[:, j].float().mean().item(), 4) for j, c in enumerate(cols)})
        result[z] = right
    return result


def format_probe(p: dict) -> str:
    names = list(STATED) + list(DETAILS)
    lines = [f"  what z_i keeps ({p['n_test']} one-object test images; stated | unstated details)",
             f"  {'probe':<22}" + "".join(f"{n:>11}" for n in names)]
    for z, label in (("z_i", "z_i, MLP"), ("z_i_linear", "z_i, linear"), ("z_t", "z_t, MLP"), ("chance", "chance")):
        lines.append(f"  {label:<22}" + "".join(f"{p[z][n]:>11.3f}" for n in names))
    return "\n".join(lines)


# --- variations --------------------------------------------------------------------------------------------------

def stated_of(scene: Scene) -> set:
    """What a reading says that a caption could state: each object's (colour, shape, size, quadrant)."""
    return {(o.color, o.shape, o.size, o.position) for o in scene.objects}


def detail_values(details: Details, scene: Scene, reference: Scene) -> dict[str, list[str]]:
    """A reading's details at the reference's objects (matched by quadrant; a missing object gives "absent")."""
    at = {o.position: k for k, o in enumerate(scene.objects)}
    out = {"background": [details.background], "fill": [], "turn": []}
    for o in reference.objects:
        k = at.get(o.position)
        out["fill"].append(details.fill[k] if k is not None else "absent")
        if o.shape in TURNABLE:
            out["turn"].append(details.turn[k] if k is not None and details.turn[k] else "absent")
    return out


def variation_scores(inputs: list[tuple[Scene, Details]], readings: list[list[tuple[Scene, Details]]]) -> dict:
    """``kept``, ``details_same`` and ``detail_entropy`` (see the module docstring) from the oracle's readings of
    each input image and of its variations (readings[i] = the n variations of input i)."""
    kept, same, entropy = [], [], {d: [] for d in DETAILS}
    kept_by = {1: [], 2: []}  # the same, by the input's number of objects
    for (scene, details), variations in zip(inputs, readings):
        reference = detail_values(details, scene, scene)
        seen = {d: [] for d in DETAILS}  # per detail: one list of values per slot (background, object k)
        for v_scene, v_details in variations:
            kept.append(stated_of(v_scene) == stated_of(scene))
            kept_by[min(len(scene.objects), 2)].append(kept[-1])
            values = detail_values(v_details, v_scene, scene)
            for d in DETAILS:
                same += [a == b for a, b in zip(values[d], reference[d])]
                seen[d].append(values[d])
        for d in DETAILS:
            for slot in zip(*seen[d]):  # the n variations' values of one slot
                entropy[d].append(coverage(list(slot), list(DETAILS[d]))["entropy"])
    return {"kept": round(float(np.mean(kept)), 4),
            **{f"kept_{name}": round(float(np.mean(k)), 4) if k else None
               for name, k in (("one", kept_by[1]), ("two", kept_by[2]))},
            "details_same": round(float(np.mean(same)), 4),
            "detail_entropy": {d: round(float(np.mean(e)), 4) if e else None for d, e in entropy.items()},
            "n_images": len(inputs), "n_each": len(readings[0]) if readings else 0}


def evaluate_variations(run_dir: Path, n: int = 8, n_images: int = 12, seed: int = 0, trust_oracle: bool = True
                        ) -> dict:
    """Variations at eta = 1 and eta = 0 and interpolation end points of the first ``n_images`` test images, n of
    each, scored by the oracle (``variation_scores``). ``trust_oracle=False`` scores with an oracle below the 99 %
    bar (smoke tests of tiny runs only)."""
    from minidalle2.pipeline import UnCLIP

    run_dir = Path(run_dir)
    if n < 2:
        raise UserError(f"-n {n}: the spread of a detail across an image's variations needs at least 2 of them; "
                        f"try -n 8")
    assert n_images >= 2, "interpolation end points need a pair of images"
    test = run_datasets(run_dir)["test"]
    if not getattr(test, "config", None) or not test.config.details:
        raise UserError(f"the data of {run_dir} has no unstated details (ShapesConfig.details is off, as in the quick "
                        f"and full presets), so there is nothing for a variation to change; train a run whose CLIP "
                        f"preset's data has ShapesConfig(details=True) (the tiny preset does)")
    model = UnCLIP.from_run_dir(run_dir)  # one line naming the command for a missing CLIP or decoder
    oracle = runs.load("oracle", run_dir)
    if trust_oracle:
        check_trusted(oracle.accuracy, run_dir)
    if not oracle.cfg.details or trust_oracle and not is_trusted(oracle.detail_accuracy):
        raise UserError(f"the oracle in {run_dir / 'oracle'} does not read the details (>= {TRUST:.0%}); retrain it: "
                        f"`minidalle2 train oracle --run-dir {run_dir} --preset quick` in place of the old one")
    images = torch.stack([test[i]["image"] for i in range(n_images)])  # (M, 3, S, S)

    def read(batch: torch.Tensor) -> list[tuple[Scene, Details]]:
        scenes = oracle.read(batch)
        return list(zip(scenes, oracle.read_details(batch, scenes)))

    inputs = read(images)
    result = {"n": n, "n_images": n_images, "seed": seed, "oracle_detail_accuracy": oracle.detail_accuracy}
    for key, eta in (("eta1", 1.0), ("eta0", 0.0)):
        readings = [read(model.variations(image, n=n, eta=eta, seed=seed + i)) for i, image in enumerate(images)]
        result[key] = variation_scores(inputs, readings)
    ends = [[], []]  # per input: its end point under each seed
    for a in range(0, n_images - 1, 2):
        pairs = [model.interpolate(images[a], images[a + 1], n=2, seed=seed + s) for s in range(n)]  # n x (2, ...)
        ends[0].append(read(torch.stack([p[0] for p in pairs])))
        ends[1].append(read(torch.stack([p[1] for p in pairs])))
    firsts = [inputs[a] for a in range(0, n_images - 1, 2)] + [inputs[a + 1] for a in range(0, n_images - 1, 2)]
    result["interpolation_ends"] = variation_scores(firsts, ends[0] + ends[1])
    result["input_kept"] = round(float(np.mean([stated_of(s) == stated_of(test.scene(i))
                                                for i, (s, _) in enumerate(inputs)])), 4)
    return result


def format_variations_report(result: dict) -> str:
    lines = [f"variations of {result['n_images']} test images, {result['n']} each "
             f"(the oracle reads {result['input_kept']:.0%} of the inputs as their ground truth)",
             f"  {'':<22}{'kept':>8}{'one obj.':>10}{'two obj.':>10}{'details same':>14}"
             + "".join(f"{'H(' + d + ')':>14}" for d in DETAILS)]
    cell = lambda x, w: f"{x:>{w}.3f}" if x is not None else f"{'-':>{w}}"  # noqa: E731  None: no such input
    for key, label in (("eta1", "eta = 1"), ("eta0", "eta = 0"), ("interpolation_ends", "interpolation ends")):
        r = result[key]
        lines.append(f"  {label:<22}{r['kept']:>8.3f}{cell(r.get('kept_one'), 10)}{cell(r.get('kept_two'), 10)}"
                     f"{r['details_same']:>14.3f}" + "".join(cell(r["detail_entropy"][d], 14) for d in DETAILS))
    return "\n".join(lines)


def read_out(oracle, images: torch.Tensor, reference: Scene | None = None) -> list[str]:
    """A caption per image with what the oracle reads: its details ("grey, hollow, turned") and, given the input's
    reading, whether the stated attributes are the input's ("same objects") or not."""
    scenes = oracle.read(images)
    out = []
    for scene, d in zip(scenes, oracle.read_details(images, scenes)):
        words = [d.background] + [f"{f} {t}".strip() for f, t in zip(d.fill, d.turn)]
        same = "" if reference is None else ("same objects; " if stated_of(scene) == stated_of(reference) else
                                             "OBJECTS CHANGED; ")
        out.append(same + ", ".join(words))
    return out
