"""Where two objects go: does the decoder use the layout a two-object z_i carries?

A binding probe reads both objects' quadrants from z_i (evaluation/stages.py), yet a decoder can draw the right
objects in the wrong places. These diagnostics look at the steps that decide the layout, on the test split's
two-object images:

    first_step_quadrants  the decoder's prediction of x_0 at t = T-1 (pure noise in, one step): are its two
                          brightest quadrants the two occupied ones? Chance: 1 pair in 6.
    high_noise_loss       L_decoder at the steps that place the objects (t >= 0.8 T), with z_i and with the null
                          embedding in its place: if z_i lowers it little, the decoder barely uses z_i there.
    sketch_layout         the same question asked of a prior's z_i: a decoder with a sketch of z_i (unet.py)
                          draws E[x_0 | z_i] as a small picture; where it lights the occupied quadrants for the
                          true z_i and not for the prior's z_i of the same captions, the prior lost the layout.
    sketch_mirror         which object the sketch puts where: for the test split's two-object pictures, the share
                          whose sketch s(z_i) is nearer (squared distance of the k x k block means) to the picture
                          than to its mirror image (the two objects exchanged; chance 1/2). Lighting the two
                          occupied quadrants is not enough: a sketch that blends the scene with its mirror lights
                          them both and leaves the U-Net to guess which object goes where.
    prior_layout          the prior's z_i read by a binding probe (an MLP trained on true two-object z_i to read
                          each object's colour, shape, size and quadrant): for captions that state colours, shapes
                          and a relation, the share of samples whose objects are read as the caption binds them
                          (``binding``), and among all samples those whose read quadrants make the stated relation
                          true (``relation``), its opposite (``mirrored``: the caption's order was lost), a relation
                          on the other axis (``other_axis``), or none (``no_relation``: diagonal or one quadrant, a
                          blend of layouts).
    mirror_cost           what a wrong layout costs a prior: z_i of a picture against z_i of the same scene
                          mirrored (the objects exchange places, the caption becomes false). A prior is trained on
                          the squared error of z_i, ||a - b||^2 = 2 (1 - cos(a, b)) for unit vectors: the nearer the
                          mirrored picture's z_i, the less a wrong layout costs it.
    layout_from_z_i       what z_i alone gives away: a linear map and a small MLP trained to predict the image from
                          z_i (the best x_0 prediction at t = T is E[x_0 | z_i]), scored like the first step. If
                          they light the occupied quadrants far more often than the decoder's first step, the
                          layout is in z_i and the decoder's way of reading it is what fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from minidalle2 import runs
from minidalle2.data import COLORS, OPPOSITE, POSITIONS, SHAPES, mirrored_scene, render
from minidalle2.decoder import to_model_space
from minidalle2.embeddings import (encode_image, load_clip, load_embeddings, run_datasets, run_images,
                                  split_embeddings)
from minidalle2.errors import UserError
from minidalle2.evaluation.oracle import quadrants, relation_between
from minidalle2.evaluation.stages import (BINDING_VALUES, binding_labels, probe_predictions, sample_prior,
                                         trained_priors)
from minidalle2.pipeline import UnCLIP

COLOR_NAMES = list(COLORS)  # index -> name, the order of the cache's labels


def two_object_test(run_dir: Path, n: int) -> dict:
    """The first n two-object test images: images (n, 3, S, S) uint8, z_i, caption tokens and mask, and the
    occupied quadrants (n, 4) bool."""
    emb = load_embeddings(run_dir, "test")
    two = (emb["n_objects"] == 2).nonzero().flatten()[:n]  # (n,)
    occupied = torch.zeros(len(two), 4, dtype=torch.bool)
    occupied[torch.arange(len(two)), emb["position0"][two]] = True
    occupied[torch.arange(len(two)), emb["position1"][two]] = True
    return {"images": run_images(run_dir, "test")[two], "z_i": emb["z_i"][two], "tokens": emb["text_tokens"][two],
            "mask": emb["text_mask"][two], "occupied": occupied, "captions": [emb["captions"][i] for i in two]}


@torch.no_grad()
def first_step_quadrants(decoder, data: dict, seed: int = 0) -> float:
    """The share of images whose predicted x_0 at t = T-1 is brightest in the two occupied quadrants."""
    g = torch.Generator().manual_seed(seed)
    B, S = len(data["z_i"]), decoder.image_size
    x_T = torch.randn((B, 3, S, S), generator=g)
    t = torch.full((B,), decoder.cfg.timesteps - 1, dtype=torch.long)
    model_fn = decoder.guided_model_fn(data["z_i"], data["tokens"], data["mask"], decoder.sampling.guidance)
    x0 = decoder.diffusion.to_x0(x_T, t, model_fn(x_T, t)).clamp(-1, 1)  # (B, 3, S, S)
    return occupied_pair_right((x0 + 1) / 2, data["occupied"])


def occupied_pair_right(images: torch.Tensor, occupied: torch.Tensor) -> float:
    """The share of images (B, 3, S, S) in [0, 1] whose two brightest quadrants are the two occupied ones (B, 4)."""
    light = quadrants(images).flatten(2).mean(-1)  # (B, 4): mean brightness per quadrant
    top2 = torch.zeros_like(occupied).scatter(1, light.topk(2, dim=1).indices, True)
    return round((top2 == occupied).all(1).float().mean().item(), 4)


def layout_from_z_i(run_dir: Path, n_train: int = 20_000, steps: int = 1500, hidden: int = 512, seed: int = 0,
                    batch: int = 128) -> dict:
    """Regress the image (at half resolution) on z_i over the first n_train training images, with a linear map
    and with an MLP (one hidden layer); score each like ``first_step_quadrants`` on the test split's two-object
    images. Returns {"linear": share, "mlp": share, "n_test": ...}."""
    g = torch.Generator().manual_seed(seed)
    train = split_embeddings(run_dir, "train", n_train)
    x = F.avg_pool2d(run_images(run_dir, "train")[:len(train["z_i"])].float() / 255, 2)  # (N, 3, S/2, S/2)
    test = two_object_test(run_dir, 10_000)
    D, out_shape = train["z_i"].shape[1], x.shape[1:]
    nets = {"linear": nn.Linear(D, x[0].numel()),
            "mlp": nn.Sequential(nn.Linear(D, hidden), nn.GELU(), nn.Linear(hidden, x[0].numel()))}
    result = {"n_test": len(test["z_i"])}
    for name, net in nets.items():
        torch.manual_seed(seed)
        for p in net.parameters():  # small weights and zero biases, drawn from the seed
            nn.init.normal_(p, std=0.02) if p.dim() > 1 else nn.init.zeros_(p)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(steps):
            b = torch.randint(0, len(x), (batch,), generator=g)
            loss = F.mse_loss(net(train["z_i"][b]).view(-1, *out_shape), x[b])  # E[x_0 | z_i] by least squares
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = net(test["z_i"]).view(-1, *out_shape).clamp(0, 1)
        result[name] = occupied_pair_right(pred, test["occupied"])
    return result


@torch.no_grad()
def high_noise_loss(decoder, data: dict, seed: int = 0, low: float = 0.8) -> dict:
    """L_decoder at t in [low T, T) with z_i and with the null z_i (the same t and noise for both)."""
    g = torch.Generator().manual_seed(seed)
    x0 = to_model_space(data["images"])  # (B, 3, S, S) in [-1, 1]
    B, T = len(x0), decoder.cfg.timesteps
    t = torch.randint(int(low * T), T, (B,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    out = {}
    for name, drop in (("z_i", False), ("null", True)):
        model_fn = lambda x_t, t: decoder(x_t, t, data["z_i"], data["tokens"], data["mask"], drop_zi=drop)  # noqa
        out[name] = round(decoder.diffusion.training_loss(model_fn, x0, t, noise)["loss"].item(), 5)
    return out


def layout_diagnostics(run_dir: Path, n: int = 64, seed: int = 0) -> dict:
    """Both diagnostics on the first n two-object test images of a run."""
    decoder = runs.load("decoder", run_dir)
    data = two_object_test(run_dir, n)
    return {"n": len(data["z_i"]), "first_step_quadrants": first_step_quadrants(decoder, data, seed),
            "first_step_chance": round(1 / 6, 4), "high_noise_loss": high_noise_loss(decoder, data, seed)}


@torch.no_grad()
def sketch_picture(decoder, z_i: torch.Tensor) -> torch.Tensor:
    """The decoder's sketch of z_i (N, D) as a picture in [0, 1], resized to the images' side: (N, 3, H, W)."""
    sketch = ((decoder.unet.sketch_of(z_i) + 1) / 2).clamp(0, 1)  # (N, 3, k, k)
    return F.interpolate(sketch, size=decoder.image_size, mode="nearest")


@torch.no_grad()
def sketch_layout(run_dir: Path, n: int = 128, prior: str = "diffusion", seed: int = 0) -> dict:
    """Where z_i puts two objects, read by the decoder's sketch: for the first n two-object test images, the share
    whose sketch lights the two occupied quadrants (chance 1/6), from their true z_i and from the prior's z_i
    sampled from their captions. Returns {"n", "true_z_i", prior, "chance"}."""
    model = UnCLIP.from_run_dir(run_dir)
    unet = model.decoder.unet
    if unet.sketch is None:
        raise UserError(f"the decoder of {run_dir} has no sketch of z_i (UNetConfig.z_i_sketch = 0); use a run whose "
                        "decoder was trained with one, e.g. data/pretrained")
    data = two_object_test(run_dir, n)
    z_prior = model.sample_z_i(data["captions"], prior=prior, n=1, seed=seed)[0]  # (n, D)

    return {"n": len(data["z_i"]), "true_z_i": occupied_pair_right(sketch_picture(model.decoder, data["z_i"]),
                                                                   data["occupied"]),
            prior: occupied_pair_right(sketch_picture(model.decoder, z_prior), data["occupied"]),
            "chance": round(1 / 6, 4)}


def mirrored_pairs(run_dir: Path, n: int | None, at_least: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n two-object scenes of the test split (all by default), each drawn with its own details and mirrored
    across its relation's axis (``data.mirrored_scene``): (pictures, mirror images), uint8 (n, 3, S, S) each."""
    ds = run_datasets(run_dir)["test"]
    scenes = [(s, ds.details(i, s)) for i, s in enumerate(map(ds.scene, range(len(ds)))) if len(s.objects) == 2][:n]
    if len(scenes) < at_least:
        raise UserError(f"the test split of {run_dir} has fewer than {at_least} two-object scene(s)")

    def draw(mirrored: bool) -> torch.Tensor:
        return torch.from_numpy(np.stack([render(mirrored_scene(s) if mirrored else s, ds.config.image_size, d)
                                          for s, d in scenes])).permute(0, 3, 1, 2)

    return draw(False), draw(True)


def nearer_than_mirror(sketch: torch.Tensor, own: torch.Tensor, mirrored: torch.Tensor) -> float:
    """The share of sketches (N, 3, k, k) nearer, in squared distance, to their own picture's block means (N, 3, k, k)
    than to its mirror image's, all in the same pixel space."""
    d_own = (sketch - own).square().flatten(1).sum(1)
    d_mirrored = (sketch - mirrored).square().flatten(1).sum(1)
    return round((d_own < d_mirrored).float().mean().item(), 4)


@torch.no_grad()
def sketch_mirror(run_dir: Path, n: int | None = None) -> dict:
    """Which object the decoder's sketch puts where: for the first n two-object scenes of the test split (all by
    default), each drawn with its own details and mirrored across its relation's axis (``data.mirrored_scene``), the
    share whose sketch s(z_i) is nearer to the picture's block means than to the mirror image's (chance 1/2).
    Returns {"n", "nearer_than_mirror", "chance"}."""
    model = UnCLIP.from_run_dir(run_dir)
    unet = model.decoder.unet
    if unet.sketch is None:
        raise UserError(f"the decoder of {run_dir} has no sketch of z_i (UNetConfig.z_i_sketch = 0); use a run whose "
                        "decoder was trained with one, e.g. data/pretrained")
    images, mirrors = mirrored_pairs(run_dir, n)
    k = model.decoder.cfg.unet.z_i_sketch
    own, mirrored = (F.adaptive_avg_pool2d(to_model_space(x), k) for x in (images, mirrors))  # pool_k(x_0): L_sketch's
    sketch = unet.sketch_of(encode_image(model.clip, images))  # (n, 3, k, k)
    return {"n": len(images), "nearer_than_mirror": nearer_than_mirror(sketch, own, mirrored), "chance": 0.5}


def relation_readings(read: torch.Tensor, subject: list[tuple[str, str]], other: list[tuple[str, str]],
                      relations: list[str]) -> dict:
    """Score probe readings of two-object z_i against their captions. ``read`` (n, 8): colour, shape, size,
    quadrant of object A, then of object B (indices, as ``binding_labels``); subject[j], other[j]: the (colour,
    shape) of caption j's subject and other object; relations[j]: its relation. Returns the shares of samples with
    ``binding`` right and, among those, with the relation right, ``mirrored``, on the ``other_axis``, or with
    ``no_relation`` (diagonal or one quadrant); the last four add up to ``binding``."""
    n = len(read)
    counts = {"binding": 0, "relation": 0, "mirrored": 0, "other_axis": 0, "no_relation": 0}
    for r, subj, oth, rel in zip(read.tolist(), subject, other, relations):
        a, b = (COLOR_NAMES[r[0]], SHAPES[r[1]]), (COLOR_NAMES[r[4]], SHAPES[r[5]])
        if (a, b) == (subj, oth):
            where = (POSITIONS[r[3]], POSITIONS[r[7]])  # (subject's quadrant, the other's)
        elif (a, b) == (oth, subj):
            where = (POSITIONS[r[7]], POSITIONS[r[3]])
        else:
            continue
        counts["binding"] += 1
        got = relation_between(*where)
        key = ("relation" if got == rel else "mirrored" if got == OPPOSITE[rel] else "no_relation" if got is None
               else "other_axis")
        counts[key] += 1
    return {key: round(v / max(n, 1), 4) for key, v in counts.items()}


@torch.no_grad()
def mirror_cost(run_dir: Path, n: int | None = None) -> dict:
    """What a wrong layout costs in z_i, for the first n two-object scenes of the test split (all by default): the
    mean cos(z_i, z^m_i) of each picture and the same scene mirrored (``data.mirrored_scene``), the mean cos with
    another scene's z_i, and the squared error of the mirror as a share of another scene's,

        cost = E ||z_i - z^m_i||^2 / E ||z_i - z_i'||^2 = (1 - cos_mirrored) / (1 - cos_other)

    Returns {"n", "cos_mirrored", "cos_other_scene", "cost"}."""
    images, mirrors = mirrored_pairs(run_dir, n, at_least=2)
    clip = load_clip(run_dir)
    z, z_mirrored = encode_image(clip, images), encode_image(clip, mirrors)  # (n, D) each
    cos_mirrored = (z * z_mirrored).sum(-1).mean().item()
    cos_other = (z * z.roll(1, 0)).sum(-1).mean().item()  # each scene against the next one
    return {"n": len(images), "cos_mirrored": round(cos_mirrored, 4), "cos_other_scene": round(cos_other, 4),
            "cost": round((1 - cos_mirrored) / (1 - cos_other), 4)}


def relation_captions(split: dict) -> dict:
    """The captions of an embedding split that state both colours, both shapes and a relation: their indices
    ("idx"), each one's subject and other object as (colour, shape), and the stated relation."""
    keep = [i for i, a in enumerate(split["attributes"])
            if a["n_objects"] == 2 and {"color", "shape", "relation"} <= set(a["stated"].split())]
    attrs = [split["attributes"][i] for i in keep]
    return {"idx": torch.tensor(keep, dtype=torch.long), "subject": [(a["color0"], a["shape0"]) for a in attrs],
            "other": [(a["color1"], a["shape1"]) for a in attrs], "relations": [a["relation"] for a in attrs]}


def prior_layout(run_dir: Path, priors: tuple[str, ...] = ("diffusion",), seed: int = 0) -> dict:
    """Where a prior's z_i puts two objects, read by a binding probe trained on the train split's true z_i: for the
    test captions that state both colours, both shapes and a relation, ``relation_readings`` of the true z_i and of
    each prior's z_i sampled from the same captions. Needs the train split's embeddings (a run trained here)."""
    train, test = load_embeddings(run_dir, "train"), load_embeddings(run_dir, "test")
    two_train, y_train = binding_labels(train)
    stated = relation_captions(test)
    idx = stated["idx"]
    if not len(idx):
        raise UserError(f"the test split of {run_dir} has no two-object caption that states a relation")
    captions = {k: test[k][idx] for k in ("z_t", "text_tokens", "text_mask")}
    available = trained_priors(run_dir)
    z = {"true_z_i": test["z_i"][idx], **{name: sample_prior(available[name], captions, seed=seed) for name in priors}}
    reads = probe_predictions(train["z_i"][two_train], y_train, list(z.values()), BINDING_VALUES, seed=seed)
    return {"n": len(idx), **{name: relation_readings(r, stated["subject"], stated["other"], stated["relations"])
                              for name, r in zip(z, reads)}}
