"""Evaluation of each stage on the test split: CLIP, the priors (and the AR prior's PCA), the decoder.

CLIP: zero-shot attribute classification and retrieval. Zero-shot follows the CLIP paper's prompt ensembling:
the class "red" is the normalised mean z_t of the canonical captions of every single-object scene that is red
(all shapes, sizes, positions), and an image is assigned the class whose embedding has the largest cos with z_i.

Binding: does z_i say which attribute belongs to which object? A probe trained on the train split reads every
attribute of both objects of a two-object image; the share of test images it gets fully right measures it.

Priors: cos(sample, z_i) against the baseline cos(z_t, z_i), caption by caption. Decoder: the CLIP embedding of
the decoded z_i against z_i itself.

The AR prior's ``quick`` preset (prior_ar.py) was chosen with these measurements.

Why 16 buckets for D = 64: each component's training range spans about 5 standard deviations, so a bucket is
~0.3 std wide, about the spread the caption leaves in the top components (a linear fit z_t -> PCA coordinates
leaves 0.2-0.4 std). Finer buckets would mostly split the prior's own uncertainty into more classes to learn
(B = 32 and 64 learned far more slowly in our budget) while the rounding they remove is already small: at
K = 22 the reconstruction cos is 0.991 with 16 buckets, 0.995 without any rounding. Uniform buckets beat
equal-mass (quantile) ones here: with 16 quantile buckets the val reconstruction cos fell to 0.986 (bucket
midpoints) or 0.990 (bucket means), because the outer buckets must stretch over the long tails.

Sampling defaults (chosen on the val split, first 500 captions; baseline cos(z_t, z_i) = 0.973). Each
token's distribution over 16 buckets is still wide, and a *draw* lands a few buckets off on many of the 22
components; the errors add up, so plain sampling (s = 2, temperature 1) reached only cos 0.960. Taking the
likeliest bucket (``top_k = 1``) gave 0.971 at s = 2 and 0.974 at s = 1: with a single choice per token,
guidance no longer trades diversity for fidelity, it only pushes away from the null caption and overshoots
(s = 1.5: 0.973). Temperature 0.3-0.5 or top_k = 2 stayed below the baseline. That was with full captions only.
Once half the captions are partial (data.py), greedy decoding gives every sample of a caption the same z_i: 16
samples of "a red circle" had pairwise cos 1.000, so every image sits in the same quadrant at the same size.
Measured on the quick run with partial captions (test split, first 300 captions; pairwise cos of 16 samples of
"a red circle" / "a large red circle in the top left" / "a green shape"):

    top_k = 1 (greedy)        cos to true z_i: full 0.959, partial 0.772   pairwise 1.000 / 1.000 / 1.000
    top_k = 2                 full 0.945, partial 0.757                    pairwise 0.705 / 0.961 / 0.491
    top_p = 0.8               full 0.938, partial 0.759                    pairwise 0.756 / 0.966 / 0.563
    no cut (top_k = 16)       full 0.904, partial 0.739                    pairwise 0.692 / 0.937 / 0.317
    (the diffusion prior)                                                  pairwise 0.823 / 1.000 / 0.464

So the presets draw from the two likeliest buckets: samples spread over what the caption leaves open, and stay
close to z_i where it says everything.

Training budget (1 thread, per step: batch 128 0.138 s, batch 64 0.068 s, batch 48 0.052 s): at about equal
time, 2000 steps of 64 beat 1000 steps of 128 on val (cos 0.976 vs 0.974, greedy, s = 1); the loss is far
from converged, so more updates matter more than cleaner gradients. 1600 steps of 64 (0.79x the time of
1000 x 128, i.e. ~75 s on 2 idle cores) keep most of the gain (0.975) and beat 2000 x 48 (0.9747).
On the full test split that run reaches cos 0.975 against the baseline's 0.973 (+0.0019, closer to z_i than
z_t is for 67 % of captions); on the held-out caption combinations it stays below (0.894
against 0.908; the old preset, 1000 x 128 with s = 2 draws, reached 0.874).
"""

from __future__ import annotations

import hashlib
import itertools
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from minidalle2 import runs
from minidalle2.data import (COLORS, FULL, OPPOSITE, POSITIONS, SHAPES, SIZES, Scene, canonical_caption, make_scene,
                             sample_scene)
from minidalle2.embeddings import encode_image, encode_text, load_clip, load_embeddings, load_meta
from minidalle2.errors import UserError
from minidalle2.pipeline import check_sampling, load_priors
from minidalle2.prior_ar_tokenizer import PCATokenizer

ATTRIBUTES = ("color", "shape", "size", "position")
BINDING_VALUES = [len(v) for v in (COLORS, SHAPES, SIZES, POSITIONS)] * 2  # values of each label of binding_labels


def attribute_prompts(clip) -> dict[str, torch.Tensor]:
    """For each attribute, its class embeddings (n_values, D) from prompt ensembles of canonical captions."""
    values = {"color": list(COLORS), "shape": list(SHAPES), "size": list(SIZES), "position": list(POSITIONS)}
    combos = list(itertools.product(*values.values()))
    z_t = encode_text(clip, [canonical_caption(make_scene(*c)) for c in combos])[0]  # (n_combos, D)
    out = {}
    for a, attr in enumerate(ATTRIBUTES):
        classes = [z_t[[i for i, c in enumerate(combos) if c[a] == v]].mean(0) for v in values[attr]]
        out[attr] = F.normalize(torch.stack(classes), dim=-1)
    return out


def zero_shot(z_i: torch.Tensor, emb: dict, prompts: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy per attribute on the single-object images of a split."""
    single = emb["n_objects"] == 1
    return {attr: (z_i[single] @ prompts[attr].T).argmax(-1).eq(emb[f"{attr}0"][single]).float().mean().item()
            for attr in ATTRIBUTES}


def retrieval(z_i: torch.Tensor, z_t: torch.Tensor, same: torch.Tensor) -> dict[str, float]:
    """Recall@k both ways; ``same[a, b]`` says whether item b is a correct answer for query a."""
    sims = z_i @ z_t.T  # (N, N)
    out = {}
    for name, s, ok in (("image_to_text", sims, same), ("text_to_image", sims.T, same.T)):
        top = s.topk(min(5, len(s)), dim=-1).indices  # (N, 5)
        hits = ok.gather(1, top)  # (N, 5)
        out[f"{name}_r1"] = hits[:, 0].float().mean().item()
        out[f"{name}_r5"] = hits.any(-1).float().mean().item()
    return out


def full_captions(emb: dict) -> torch.Tensor:
    """(N,) bool: which captions of a cache split state every clause (data.FULL); all, for data without "stated"."""
    attrs = emb["attributes"]
    return torch.tensor([not a or "stated" not in a or len(a["stated"].split()) == len(FULL[a["n_objects"]])
                         for a in attrs], dtype=torch.bool)


def modality_gap(z_i: torch.Tensor, z_t: torch.Tensor, full: torch.Tensor) -> dict:
    """Mean cos(z_t, z_i) of matching pairs, for full and for partial captions. A partial caption fits many
    images, so its z_t can sit only near their average: the gap a prior must bridge (real CLIP: about 0.3)."""
    cos = (z_i * z_t).sum(-1)  # (N,) unit-norm embeddings
    gap = {kind: round(cos[mask].mean().item(), 4) if mask.any() else None
           for kind, mask in (("full", full), ("partial", ~full))}
    return {**gap, "n_partial": int((~full).sum())}


def binding_labels(emb: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-object images of a split and their labels (n, 8): colour, shape, size, position of object A, then B.

    A caption's first object is the relation's subject, which may be either one, so the objects are renamed by
    position: A is the one in the lower-numbered quadrant (top left < top right < bottom left < bottom right).
    """
    two = emb["n_objects"] == 2
    first = emb["position0"][two] < emb["position1"][two]  # (n,) is object 0 object A?
    a = torch.stack([torch.where(first, emb[f"{attr}0"][two], emb[f"{attr}1"][two]) for attr in ATTRIBUTES], 1)
    b = torch.stack([torch.where(first, emb[f"{attr}1"][two], emb[f"{attr}0"][two]) for attr in ATTRIBUTES], 1)
    return two, torch.cat([a, b], dim=1)  # (N,) bool, (n, 8)


_FITTED_PROBES: dict = {}  # probe_predictions' last fitted probes, by a digest of their data and settings


def probe_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                   n_values: list[int], hidden: int = 256, seed: int = 0) -> torch.Tensor:
    """Train an MLP probe to read every label of y (N, K) from x (N, D); return which test labels it got right.

    One MLP (one hidden layer of ``hidden``) outputs all K labels at once as their concatenated one-hot codes
    (sigmoid outputs; the prediction for label k is its largest output among the n_values[k]). Returns (n_test, K)
    bool.
    """
    return probe_predictions(x_train, y_train, [x_test], n_values, hidden, seed)[0] == y_test


def probe_predictions(x_train: torch.Tensor, y_train: torch.Tensor, x_tests: list[torch.Tensor], n_values: list[int],
                      hidden: int = 256, seed: int = 0) -> list[torch.Tensor]:
    """The MLP probe of ``probe_accuracy``, trained once, read on each of ``x_tests``: a list of (n, K) labels.
    A probe already fitted to the same data and settings is reused (the binding probe of ``evaluate clip`` and
    ``prior_layout`` of ``evaluate priors`` fit the same one)."""
    key = (hashlib.sha1(x_train.numpy().tobytes() + y_train.numpy().tobytes()).hexdigest(), tuple(n_values), hidden,
           seed)
    if key not in _FITTED_PROBES:
        one_hot = np.concatenate([np.eye(n)[y_train[:, k].numpy()] for k, n in enumerate(n_values)], 1)  # (N, sum n)
        probe = make_pipeline(StandardScaler(), MLPClassifier((hidden,), max_iter=200, random_state=seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(x_train.numpy(), one_hot)
        if len(_FITTED_PROBES) >= 4:  # a few at a time: the binding probe fits one for z_i and one for z_t
            _FITTED_PROBES.pop(next(iter(_FITTED_PROBES)))
        _FITTED_PROBES[key] = probe
    probe = _FITTED_PROBES[key]
    out = []
    for x_test in x_tests:
        scores = probe.predict_proba(x_test.numpy())  # (n_test, sum n)
        groups = np.split(scores, np.cumsum(n_values)[:-1], axis=1)
        out.append(torch.from_numpy(np.stack([g.argmax(1) for g in groups], 1)))  # (n_test, K)
    return out


def linear_probe_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor
                          ) -> torch.Tensor:
    """``probe_accuracy`` with a linear probe: one multinomial logistic regression per label, softmax(W x + b).
    What it reads, a linear map of x (such as the decoder's z_i tokens and z_i map) can express; what only the MLP
    reads is in x, but not linearly. Returns (n_test, K) bool."""
    pred = []
    for k in range(y_train.shape[1]):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(x_train.numpy(), y_train[:, k].numpy())
        pred.append(torch.from_numpy(probe.predict(x_test.numpy())))
    return torch.stack(pred, 1) == y_test


def binding_probe(run_dir: Path, hidden: int = 256, seed: int = 0) -> dict:
    """How well z_i (and z_t) binds attributes to objects: a probe reads both objects of a two-object image.

    The probe (``probe_accuracy``) is trained on the train split's two-object images to read the colour, shape,
    size and position of object A and of object B, and scored on the test split's two-object images: accuracy
    per attribute (both objects pooled) and ``fully_right``, the share of images with all eight labels right.
    An embedding that says "red, blue, circle, square" but not which colour goes with which shape gets each
    attribute right often and the pairs right only by luck, so the share fully right is what measures binding.
    From z_t, position is right about half the time at best: "a red circle left of a blue square" does not say
    whether the pair is at the top or the bottom.
    """
    train, test = load_embeddings(run_dir, "train"), load_embeddings(run_dir, "test")
    two_train, y_train = binding_labels(train)
    two_test, y_test = binding_labels(test)
    result = {"n_train": len(y_train), "n_test": len(y_test)}
    for z in ("z_i", "z_t", "z_i_linear"):
        x_train, x_test = train[z[:3]][two_train], test[z[:3]][two_test]
        right = (linear_probe_accuracy(x_train, y_train, x_test, y_test) if z.endswith("linear") else
                 probe_accuracy(x_train, y_train, x_test, y_test, BINDING_VALUES, hidden, seed))
        result[z] = {"fully_right": right.all(1).float().mean().item(),
                     **{attr: right[:, [k, k + 4]].float().mean().item() for k, attr in enumerate(ATTRIBUTES)}}
    return result


def text_order(clip, n: int = 40, seed: int = 0) -> dict:
    """Does the caption's word order reach z_t? For n two-object test scenes, the mean cos between z_t of a caption,
    "a large red circle left of a small blue square", and z_t of the same words with subject and object exchanged
    ("a small blue square left of a large red circle"), with the relation flipped ("... right of ..."), and with
    another colour for the subject ("a large green circle ..."). A bag of words gives the first two 1.0; a CLIP
    that reads the order puts them as far as the third, a caption that means another picture."""
    rng = np.random.default_rng([3, seed])
    scenes = [sample_scene(rng, "test", p_two_objects=1.0) for _ in range(n)]
    variants = {"exchanged": [Scene(s.objects[::-1], s.relation) for s in scenes],
                "relation_flipped": [Scene(s.objects, OPPOSITE[s.relation]) for s in scenes],
                "other_colour": [Scene((make_scene(next(c for c in COLORS if c not in (o.color for o in s.objects)),
                                                   s.objects[0].shape, s.objects[0].size,
                                                   s.objects[0].position).objects[0], s.objects[1]), s.relation)
                                 for s in scenes]}
    z_t = encode_text(clip, [canonical_caption(s) for s in scenes])[0]  # (n, D)
    out = {"n": n}
    for name, changed in variants.items():
        z = encode_text(clip, [canonical_caption(s) for s in changed])[0]
        out[name] = round((z_t * z).sum(-1).mean().item(), 4)
    return out


NO_ATTRIBUTES = ("the test images have no shape attributes (your own folder): zero-shot and the binding probe "
                 "read colour, shape, size and position, which only the shapes data labels")


def evaluate_clip(run_dir: Path) -> dict:
    """Zero-shot accuracy per attribute and retrieval on the test split (and zero-shot on held-out combos).

    With ground-truth attributes a retrieved caption counts as correct when it describes the same scene (many
    test images share a description); for a user's own folder only the exact pair counts.
    """
    clip = load_clip(run_dir)
    test = load_embeddings(run_dir, "test")
    z_i, z_t = test["z_i"], test["z_t"]
    full = full_captions(test)  # (N,)
    result = {"n_test": len(z_i), "modality_gap": modality_gap(z_i, z_t, full)}
    if "n_objects" in test:
        prompts = attribute_prompts(clip)
        result["zero_shot_accuracy"] = zero_shot(z_i, test, prompts)
        keys = [k for k in test if k in ("n_objects", "relation") or k[:-1] in ATTRIBUTES]
        labels = torch.stack([test[k] for k in sorted(keys)], dim=1)[full]  # (N_full, n_keys)
        same = (labels[:, None] == labels[None]).all(-1)  # retrieval among full captions: one scene each
        result["text_order"] = text_order(clip)
        if "heldout" in test["meta"]["splits"]:
            held = load_embeddings(run_dir, "heldout")
            result["heldout_zero_shot_accuracy"] = zero_shot(held["z_i"], held, prompts)
        if "train" in test["meta"]["splits"] and (test["n_objects"] == 2).any():
            result["binding_probe"] = binding_probe(run_dir)
    else:
        same = torch.eye(len(z_i), dtype=torch.bool)
        result["not_measured"] = {"zero_shot_accuracy": NO_ATTRIBUTES, "binding_probe": NO_ATTRIBUTES}
    result["retrieval"] = retrieval(z_i[full], z_t[full], same)
    return result


def format_clip_report(result: dict) -> str:
    lines = [f"CLIP on the test split ({result['n_test']} images)"]
    if "zero_shot_accuracy" in result:
        lines.append(f"  {'zero-shot':<22}" + "".join(f"{a:>10}" for a in ATTRIBUTES))
        for key, label in (("zero_shot_accuracy", "test"), ("heldout_zero_shot_accuracy", "held-out combos")):
            if key in result:
                lines.append(f"  {label:<22}" + "".join(f"{result[key][a]:>10.3f}" for a in ATTRIBUTES))
    if "binding_probe" in result:
        p = result["binding_probe"]
        lines.append(f"  {'binding probe':<22}" + "".join(f"{a:>10}" for a in ATTRIBUTES) + f"{'all 8':>10}")
        for z in ("z_i", "z_t", "z_i_linear"):
            if z in p:
                lines.append(f"  {'from ' + z.replace('_linear', ', linear'):<22}"
                             + "".join(f"{p[z][a]:>10.3f}" for a in ATTRIBUTES) + f"{p[z]['fully_right']:>10.3f}")
    if "text_order" in result:
        o = result["text_order"]
        lines.append(f"  word order, mean cos(z_t(caption), z_t(changed)) over {o['n']} two-object captions: "
                     f"subject and object exchanged {o['exchanged']:.3f}, relation flipped "
                     f"{o['relation_flipped']:.3f}, another colour {o['other_colour']:.3f}")
    if "not_measured" in result:
        lines.append(f"  zero-shot, binding probe: not measured, {NO_ATTRIBUTES}")
    gap = result.get("modality_gap")
    if gap:
        full, partial = (f"{gap[k]:.3f}" if gap[k] is not None else "-" for k in ("full", "partial"))
        lines.append(f"  modality gap, mean cos(z_t, z_i): full captions {full}, "
                     f"partial captions {partial} ({gap['n_partial']} of {result['n_test']})")
    r = result["retrieval"]
    lines.append(f"  retrieval  image->text R@1 {r['image_to_text_r1']:.3f}  R@5 {r['image_to_text_r5']:.3f}   "
                 f"text->image R@1 {r['text_to_image_r1']:.3f}  R@5 {r['text_to_image_r5']:.3f}")
    return "\n".join(lines)


# --- priors ----------------------------------------------------------------------------------------------------

def trained_priors(run_dir: Path) -> dict:
    """Every trained prior of the run, by name ("diffusion", "ar"); a run without one is an error."""
    priors = load_priors(run_dir)
    if not priors:
        raise UserError(f"{run_dir} has no trained prior; run `minidalle2 train prior-diffusion --run-dir {run_dir}` "
                        f"or `minidalle2 train prior-ar --run-dir {run_dir}`")
    return priors


@torch.no_grad()
def sample_prior(prior, emb: dict, seed: int = 0, batch_size: int = 500, **kw) -> torch.Tensor:
    """z_i ~ p(z_i | y) for every caption of a split of the cache: (N, D)."""
    g = torch.Generator().manual_seed(seed)
    out = [prior.sample(emb["text_tokens"][i:i + batch_size], emb["text_mask"][i:i + batch_size],
                        emb["z_t"][i:i + batch_size], generator=g, **kw)
           for i in range(0, len(emb["z_t"]), batch_size)]
    return torch.cat(out)


def prior_scores(z_pred: torch.Tensor, emb: dict, seed: int = 0) -> dict[str, float]:
    """The LAION-style prior report: cos to the true z_i, to its own z_t, and to another caption's z_t.

    And how it compares with the baseline z_t, caption by caption: ``margin`` = cos_pred_true - cos(z_t, z_i);
    ``error_reduction`` = 1 - (1 - cos_pred_true) / (1 - cos(z_t, z_i)), the share of the baseline's angular
    error the prior removes; ``wins`` = the fraction of captions where the sample is closer to z_i than z_t is.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(z_pred), generator=g)
    other = perm.roll(1)[perm.argsort()]  # a permutation without fixed points: caption k gets another caption
    cos_true = F.cosine_similarity(z_pred, emb["z_i"])  # (N,)
    cos_base = F.cosine_similarity(emb["z_t"], emb["z_i"])  # (N,)
    return {"cos_pred_true": cos_true.mean().item(),
            "cos_pred_text": F.cosine_similarity(z_pred, emb["z_t"]).mean().item(),
            "cos_unrelated_text": F.cosine_similarity(z_pred, emb["z_t"][other]).mean().item(),
            "margin": (cos_true - cos_base).mean().item(),
            "error_reduction": 1 - (1 - cos_true.mean().item()) / max(1 - cos_base.mean().item(), 1e-9),
            "wins": (cos_true > cos_base).float().mean().item()}


def evaluate_priors(run_dir: Path, n: int | None = None, seed: int = 0) -> dict:
    """Sample each trained prior for the test captions (and the held-out combinations) and score it.

    baseline_cos_text_image = cos(z_t, z_i): what using the text embedding as the image embedding gives.
    """
    priors = trained_priors(run_dir)
    result = {}
    for split, key in (("test", ""), ("heldout", "heldout_")):
        try:
            emb = load_embeddings(run_dir, split)
        except UserError:
            if split == "test":
                raise
            continue
        if n:
            emb = {k: (v[:n] if isinstance(v, (torch.Tensor, list)) else v) for k, v in emb.items()}
        result[f"{key}baseline_cos_text_image"] = F.cosine_similarity(emb["z_t"], emb["z_i"]).mean().item()
        for name, prior in priors.items():
            result[f"{key}{name}"] = prior_scores(sample_prior(prior, emb, seed), emb, seed)
        result[f"{key}n"] = len(emb["z_t"])
    if "ar" in priors:
        result["ar_pca"] = pca_report(priors["ar"].tokenizer, load_embeddings(run_dir, "test")["z_i"])
    from minidalle2.evaluation.layout import mirror_cost, prior_layout  # layout.py builds on this module
    if "n_objects" in load_embeddings(run_dir, "test"):  # the shapes data, not a folder of the user's images
        result["mirror_cost"] = mirror_cost(run_dir, n=n)
    if "train" in load_meta(run_dir)["splits"]:  # the probe learns from the train split (a shipped run has none)
        result["layout"] = prior_layout(run_dir, tuple(priors), seed)
    return result


@torch.no_grad()
def pca_report(run_dir_or_tokenizer, z_i: torch.Tensor) -> dict:
    """How well the AR prior's tokenizer keeps z_i: mean cos(z_i, decode(encode(z_i))) and, without the buckets,
    the PCA-only cos(z_i, from_pca(to_pca(z_i)))."""
    tok = run_dir_or_tokenizer
    if not isinstance(tok, PCATokenizer):
        tok = runs.load("prior-ar", tok).tokenizer
    cos_pca = (tok.from_pca(tok.to_pca(z_i)) * z_i).sum(-1)  # (N,)
    cos_q = (tok.decode(tok.encode(z_i)) * z_i).sum(-1)  # (N,)
    return {"n_components": tok.K, "embed_dim": tok.embed_dim, "n_buckets": tok.n_buckets,
            "explained_variance": tok.explained_variance_ratio[:tok.K].sum().item(),
            "cos_pca": cos_pca.mean().item(), "cos_quantized": cos_q.mean().item(),
            "cos_pca_min": cos_pca.min().item(), "cos_quantized_min": cos_q.min().item()}


def format_priors_report(result: dict) -> str:
    names = [k for k in ("diffusion", "ar") if k in result]
    lines = [f"Priors on the test split ({result['n']} captions); baseline cos(z_t, z_i) = "
             f"{result['baseline_cos_text_image']:.3f}",
             f"  {'':<26}{'cos(pred, z_i)':>16}{'cos(pred, z_t)':>16}{'cos(pred, other z_t)':>22}"]
    for key, label in (("", "test"), ("heldout_", "held-out combos")):
        for name in names:
            if f"{key}{name}" in result:
                r = result[f"{key}{name}"]
                lines.append(f"  {name + ' / ' + label:<26}{r['cos_pred_true']:>16.3f}{r['cos_pred_text']:>16.3f}"
                             f"{r['cos_unrelated_text']:>22.3f}")
        if f"{key}baseline_cos_text_image" in result and key:
            lines.append(f"  {'baseline / ' + label:<26}{result[key + 'baseline_cos_text_image']:>16.3f}")
    for name in names:
        r = result[name]
        verb = "beats" if r["margin"] > 0 else "trails"
        lines.append(f"  {name} prior {verb} the baseline by {r['margin']:+.3f} (removes {r['error_reduction']:.0%} of "
                     f"its error; closer to z_i than z_t is for {r['wins']:.0%} of captions)")
    if "mirror_cost" in result:
        m = result["mirror_cost"]
        lines.append(f"Two objects mirrored ({m['n']} test scenes): cos(z_i, z_i of the mirrored picture) = "
                     f"{m['cos_mirrored']:.3f}, with another scene {m['cos_other_scene']:.3f}; in squared error a "
                     f"wrong layout costs a prior {m['cost']:.1%} of what a wrong scene costs")
    if "layout" in result:
        lay = result["layout"]
        lines += [f"Two objects, read by a probe trained on true z_i ({lay['n']} test captions stating colours, shapes "
                  "and a relation; bound: each object read with its own colour and shape, then how those are placed)",
                  f"  {'':<12}{'bound':>8}{'relation':>10}{'mirrored':>10}{'other axis':>12}{'diagonal or one quadrant':>26}"]
        for row in [k for k in lay if k != "n"]:
            r = lay[row]
            lines.append(f"  {row:<12}{r['binding']:>8.0%}{r['relation']:>10.0%}{r['mirrored']:>10.0%}"
                         f"{r['other_axis']:>12.0%}{r['no_relation']:>26.0%}")
    return "\n".join(lines)


# --- decoder ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_decoder(run_dir: Path, n: int = 64, guidance: float | None = None, steps: int | None = None,
                     batch_size: int = 64, seed: int = 0) -> dict:
    """Decode the z_i of n test images and re-encode the results with the run's CLIP:

        recon_clip_cos = mean_k cos(CLIP(decoder(z_i^k)), z_i^k)

    at guidance 1 and at ``guidance`` (default: the decoder's). For scale: ``random_pair_cos`` is the mean cos
    between z_i of two different test images, and ``recon_top1`` the fraction of decoded images whose CLIP
    embedding is closest to their own z_i among the n."""
    if n < 2:
        raise UserError(f"n={n} must be at least 2 test images")
    decoder, clip = runs.load("decoder", run_dir), load_clip(run_dir)
    test = load_embeddings(run_dir, "test")
    z_i = test["z_i"][:n]  # (n, D)
    n = len(z_i)
    guidance = decoder.sampling.guidance if guidance is None else guidance
    steps = decoder.sampling.sample_steps if steps is None else steps
    check_sampling(steps, guidance)
    tokens = test["text_tokens"][:n] if decoder.cfg.use_text_tokens else None
    mask = test["text_mask"][:n] if decoder.cfg.use_text_tokens else None

    def reencode(scale: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        parts = []
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            parts.append(decoder.sample(z_i[sl], None if tokens is None else tokens[sl],
                                        None if mask is None else mask[sl], guidance=scale, steps=steps,
                                        generator=g).cpu())
        return encode_image(clip, torch.cat(parts))  # (n, D) unit-norm

    start = time.time()
    z_hat_1 = reencode(1.0)
    z_hat = z_hat_1 if guidance == 1 else reencode(guidance)
    result = {"n": n, "steps": steps, "guidance": guidance}
    for suffix, z in (("", z_hat), ("_guidance_1", z_hat_1)):
        sims = z @ z_i.T  # (n, n): decoded image k against every test z_i
        result[f"recon_clip_cos{suffix}"] = round(sims.diag().mean().item(), 4)
        result[f"recon_top1{suffix}"] = round((sims.argmax(dim=1) == torch.arange(n)).float().mean().item(), 4)
    pairs = z_i @ z_i.T
    result["random_pair_cos"] = round(((pairs.sum() - pairs.diag().sum()) / (n * (n - 1))).item(), 4)
    result["wall_s"] = round(time.time() - start, 1)
    return result
