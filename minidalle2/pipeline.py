"""unCLIP end to end (paper Sec. 2 and 3): caption -> prior -> z_i -> decoder -> image, and what the latents allow.

The paper's whole model is one factorisation. z_i is a deterministic function of the image x (CLIP's image
encoder), so P(x | y) = P(x, z_i | y), and by the chain rule

    P(x | y) = P(x | z_i, y) P(z_i | y)
               decoder        prior

Text to image samples right to left: z_i ~ P(z_i | y) with a prior (diffusion or AR; "none" puts the caption's own
z_t in its place, the paper's no-prior ablation), then x ~ P(x | z_i, y) with the decoder.

An image x has a *bipartite latent* (z_i, x_T): z_i = CLIP(x) holds what CLIP sees, and x_T, found by running
DDIM backwards from x under the decoder (inversion), holds what is left. Decoding (z_i, x_T) with DDIM at eta = 0
gives x back, and every manipulation of the paper edits one half of it:

- variations (Fig. 3):      the same (z_i, x_T), decoded with DDIM eta > 0, which re-draws the details;
- interpolations (Fig. 4):  z_i_theta = slerp(z_i1, z_i2, theta), with x_T fixed (or slerped between x_T1, x_T2);
- text diffs (Fig. 5):      z_d = norm(z_t - z_t0) for a caption edit z_t0 -> z_t,
                            z_theta = slerp(z_i, z_d, theta) for theta in [0, theta_max], x_T of the image fixed;
- PCA truncation (Fig. 7):  z_i rebuilt from its first k principal components (the AR prior's PCA), decoded.

The cascade (Sec. 2.1): a run with an upsampler (upsampler.py) takes any of these 32x32 pictures to 64x64 with
``upsample``; it sees only the picture, not z_i or the caption.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from minidalle2 import runs
from minidalle2.checkpoint import is_trained, read_json
from minidalle2.data_folder import load_image
from minidalle2.embeddings import encode_image, encode_text
from minidalle2.errors import MAX_GUIDANCE, UserError, check_number

PRIORS = ("diffusion", "ar", "none")
# How a text diff moves z_i (edit_embedding); "paper" is Sec. 3.3. "_text": the decoder also reads the new caption.
EDIT_METHODS = ("paper", "image", "analogy", "analogy_text")
EDIT_METHOD = "image"  # the default of text_diff: the best on `minidalle2 evaluate textdiff` (docs/textdiff.json)
EDIT_THETA_MAX = {"paper": 0.5, "image": 0.5, "analogy": 1.0, "analogy_text": 1.0}  # text_diff's default range
PRIOR_SAMPLES = 8  # prior draws averaged into one image embedding of a caption, for the image-space text diffs
BATCH = 64  # images sampled at once by the prior and the decoder: memory stays flat however many are asked for
MAX_IMAGES = 1024  # images one call makes; a grid of more is unreadable: run again with another seed
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1 (and numpy's rng no negative seed)


def slerp(a: torch.Tensor, b: torch.Tensor, theta) -> torch.Tensor:
    """Spherical interpolation between a and b (..., D), theta in [0, 1] (a float or a tensor broadcasting to a's
    leading dims):

        slerp(a, b, theta) = sin((1 - theta) Omega) / sin(Omega) a + sin(theta Omega) / sin(Omega) b,
        Omega = arccos(a . b / (|a| |b|))

    It walks the great circle from a to b at constant speed; for unit vectors every point is unit-norm, which is
    where CLIP embeddings live. Nearly parallel vectors (sin Omega ~ 0) fall back to a straight line.
    """
    theta = torch.as_tensor(theta, dtype=a.dtype, device=a.device)
    theta = theta.reshape(theta.shape + (1,) * (a.dim() - theta.dim()))  # (..., 1)
    # BEGIN SOLUTION
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1, keepdim=True).clamp(-1, 1)  # (..., 1)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    near = sin.abs() < 1e-6
    safe = torch.where(near, torch.ones_like(sin), sin)
    wa = torch.where(near, 1 - theta, torch.sin((1 - theta) * omega) / safe)
    wb = torch.where(near, theta, torch.sin(theta * omega) / safe)
    return wa * a + wb * b
    # END SOLUTION


def text_diff_direction(z_t_from: torch.Tensor, z_t_to: torch.Tensor) -> torch.Tensor:
    """The text diff vector of the paper: z_d = norm(z_t - z_t0), from caption z_t0 ("from") to z_t ("to")."""
    # BEGIN SOLUTION
    return F.normalize(z_t_to - z_t_from, dim=-1)
    # END SOLUTION


def analogy_target(z_i: torch.Tensor, z_from: torch.Tensor, z_to: torch.Tensor) -> torch.Tensor:
    """Where the caption edit takes the image's own embedding: z_i' = norm(z_i + z_to - z_from) (..., D).

    With z_from, z_to the prior's image embeddings of the two captions, this is the word-vector analogy
    "z_i is to z_from what z_i' is to z_to" taken in image space: z_i' differs from z_i by what separates two
    *images* of the captions, where the paper's z_d = norm(z_t - z_t0) is a direction between two *texts*.
    """
    # BEGIN SOLUTION
    return F.normalize(z_i + z_to - z_from, dim=-1)
    # END SOLUTION


def edit_embedding(z_i: torch.Tensor, z_from: torch.Tensor, z_to: torch.Tensor, theta, method: str) -> torch.Tensor:
    """z_theta (..., D), unit-norm, of a text diff by ``method`` (EDIT_METHODS); z_theta = z_i at theta = 0.

        paper, image:    z_theta = slerp(z_i, norm(z_to - z_from), theta)    (paper: z_t's; image: the prior's z_i's)
        analogy*:        z_theta = slerp(z_i, norm(z_i + z_to - z_from), theta)   (the prior's z_i's)

    The paper's end point z_d is a unit *difference* vector, nearly orthogonal to every image embedding, so far
    along theta z_theta stops looking like any image; the analogy's end point is an image embedding: theta = 1 is
    the full edit.
    """
    assert method in EDIT_METHODS, method
    if method in ("paper", "image"):
        end = text_diff_direction(z_from, z_to)  # z_d
    else:
        end = analogy_target(z_i, z_from, z_to)  # z_i'
    return F.normalize(slerp(z_i, end, theta), dim=-1)


def check_text_diff(from_caption: str, to_caption: str, method: str) -> None:
    """Refuse a text diff that cannot be made: an unknown method, or two captions that say the same."""
    if method not in EDIT_METHODS:
        raise UserError(f"unknown text-diff method '{method}'; choose one of: {', '.join(EDIT_METHODS)}")
    if from_caption.strip() and " ".join(from_caption.split()) == " ".join(to_caption.split()):
        raise UserError(f"the from and to captions are both '{from_caption}'; a text diff needs two different ones")


def load_priors(run_dir: Path) -> dict:
    """Every trained prior of a run, by name ("diffusion", "ar"); none is an empty dict."""
    return {name: runs.load(f"prior-{name}", run_dir) for name in ("diffusion", "ar")
            if is_trained(run_dir, f"prior-{name}")}


def _check_count(name: str, n: int, least: int = 1, per: int = 1) -> None:
    """``n`` images (``per`` of them for each of that many prompts): at least ``least``, at most MAX_IMAGES."""
    if n < least:
        raise UserError(f"{name}={n}; ask for at least {least}")
    if n * per > MAX_IMAGES:
        each = f" for each of {per} prompts" if per > 1 else ""
        raise UserError(f"{name}={n}{each} is {n * per:,} images, more than the {MAX_IMAGES} one call makes; ask "
                        f"for at most {MAX_IMAGES // per}, and run again with another --seed for more")


def check_sampling(steps: int | None, guidance: float | None, eta: float | None = 0.0, max_steps: int = 1000) -> None:
    """Refuse sampling settings a sampler cannot use (None: the model's default)."""
    if steps is not None and not 0 < steps <= max_steps:
        raise UserError(f"steps={steps} must be a number of sampling steps from 1 to {max_steps} (e.g. 50)")
    if guidance is not None:
        check_number("guidance", guidance, 0, MAX_GUIDANCE, "1: no guidance, larger: follow z_i more closely")
    if eta is not None:
        check_number("eta", eta, 0, float("inf"), "0: deterministic DDIM, 1: DDPM-like")


def check_prior_guidance(guidance: float | None) -> None:
    """Refuse a prior guidance scale the prior cannot use (None: the prior's default)."""
    if guidance is not None:
        check_number("prior guidance", guidance, 0, MAX_GUIDANCE, "1: no guidance, larger: follow the caption more "
                     "closely")


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed {seed} is out of range; choose a whole number from 0 to {MAX_SEED} (2**64 - 1)")


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (checked: torch overflows on a seed outside 0 .. 2**64 - 1)."""
    check_seed(seed)
    return torch.Generator().manual_seed(seed)


def batches(N: int):
    """Slices of 0 .. N in steps of BATCH: sampling one slice at a time keeps memory flat in N."""
    return [slice(s, min(s + BATCH, N)) for s in range(0, N, BATCH)]


class UnCLIP:
    """A trained run assembled into the paper's generator: CLIP, the priors and the decoder.

    Images go in and come out as float tensors (N, 3, H, W) in [0, 1]; image files are read by ``load_images``.
    """

    def __init__(self, clip, decoder, priors: dict, tokenizer=None, run_dir: Path | None = None, upsampler=None):
        self.clip, self.decoder, self.priors, self.tokenizer = clip, decoder, priors, tokenizer
        self.run_dir = run_dir  # named in the train commands of error messages
        self.upsampler = upsampler  # the cascade's 32 -> 64 upsampler, when the run has one

    @classmethod
    def from_run_dir(cls, run_dir: Path) -> "UnCLIP":
        """Load every trained stage of a run dir; the decoder is required, priors are loaded when present."""
        run_dir = Path(run_dir)
        if not (run_dir / "clip").is_dir():
            raise UserError(f"{run_dir} holds no trained run; train one with "
                            f"`minidalle2 train all --preset quick --run-dir {run_dir}`")
        decoder = runs.load("decoder", run_dir)
        priors = load_priors(run_dir)
        tokenizer = priors["ar"].tokenizer if "ar" in priors else None
        upsampler = runs.load("upsampler", run_dir) if is_trained(run_dir, "upsampler") else None
        return cls(runs.load("clip", run_dir), decoder, priors, tokenizer, run_dir, upsampler)

    @property
    def image_size(self) -> int:
        return self.decoder.image_size

    @property
    def device(self) -> torch.device:
        return self.decoder.null_z_i.device

    # --- the two halves of the latent ---------------------------------------------------------------------------

    def embed_text(self, prompts: list[str]):
        """Captions -> (z_t (N, D), per-token features (N, L, W), mask (N, L))."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise UserError("no prompt given; pass at least one caption")
        for k, prompt in enumerate(prompts):
            if not prompt or not prompt.strip():
                raise UserError(f"prompt {k + 1} is empty; write a caption, e.g. 'a large red circle in the top left'")
        for prompt in prompts:
            self._warn_unknown_words(prompt)
        return encode_text(self.clip, list(prompts))

    def _warn_unknown_words(self, prompt: str) -> None:
        """Warn when most words of a prompt hold tokens no caption of the run has: CLIP never learned them, so
        the picture is arbitrary (a script the captions do not use, such as Korean or emoji, for instance)."""
        known = self._known_tokens()
        encode = getattr(self.clip.tokenizer, "encode", None)
        if not known or encode is None:
            return
        words = prompt.split()
        unknown = [w for w in words if not set(encode(w)) <= known]
        if len(unknown) * 2 > len(words):
            print(f"warning: {len(unknown)} of the {len(words)} words of '{prompt}' never occur in this run's "
                  f"captions ({', '.join(unknown[:3])}); CLIP has not learned them and the picture will mean "
                  "little. Use the captions' words, e.g. 'a large red circle in the top left'")

    def _known_tokens(self) -> set[int]:
        """The token ids of every cached caption of the run (empty when there is no cache to read)."""
        if getattr(self, "_known", None) is None:
            self._known = set()
            encode = getattr(self.clip.tokenizer, "encode", None)
            folder = None if self.run_dir is None else Path(self.run_dir) / "embeddings"
            if encode is not None and folder is not None and (folder / "meta.json").exists():
                for split in read_json(folder / "meta.json")["splits"]:
                    for caption in read_json(folder / f"{split}.json")["captions"]:
                        self._known.update(encode(caption))
        return self._known

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] -> z_i (N, D), unit-norm."""
        return encode_image(self.clip, self._check_images(images))

    def encode(self, images: torch.Tensor, steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The bipartite latent (z_i, x_T) of images: z_i = CLIP(x), x_T = DDIM inversion of x given z_i (in
        ``steps`` DDIM steps, default the decoder's; decode with the same number to come back)."""
        images = self._check_images(images)
        check_sampling(steps, None, None, self.decoder.cfg.timesteps)
        z_i = self.embed_images(images)
        return z_i, torch.cat([self.decoder.invert(images[s], z_i[s], steps=steps).cpu() for s in batches(len(z_i))])

    def decode(self, z_i: torch.Tensor, x_T: torch.Tensor | None = None, eta: float = 0.0,
               guidance: float | None = None, steps: int | None = None, seed: int = 0,
               text_tokens=None, text_mask=None) -> torch.Tensor:
        """x ~ p(x | z_i [, y]) by DDIM from x_T (fresh noise from ``seed`` if None): (N, 3, H, W) in [0, 1]."""
        check_sampling(steps, guidance, eta, self.decoder.cfg.timesteps)
        D = self.decoder.cfg.unet.embed_dim
        if z_i.dim() != 2 or z_i.shape[1] != D:
            raise UserError(f"z_i has shape {tuple(z_i.shape)}, the decoder expects (N, {D}); use image embeddings of "
                            "the CLIP it was trained with")
        g = generator(seed)
        if x_T is None:
            x_T = torch.randn((len(z_i), 3, self.image_size, self.image_size), generator=g)
        part = lambda x, s: None if x is None else x[s]  # noqa: E731
        return torch.cat([self.decoder.sample(z_i[s], part(text_tokens, s), part(text_mask, s), guidance=guidance,
                                              steps=steps, eta=eta, noise=x_T[s], generator=g).cpu()
                          for s in batches(len(z_i))])

    # --- text to image ------------------------------------------------------------------------------------------

    def sample_z_i(self, prompts: list[str], prior: str = "diffusion", n: int = 1, seed: int = 0,
                   guidance: float | None = None):
        """z_i for each prompt, n per prompt (prompt-major), and the captions' (tokens, mask) repeated to match.

        prior="none" is the paper's no-prior ablation: the caption's own z_t is handed to the decoder as z_i.
        """
        if prior not in PRIORS:
            raise UserError(f"unknown prior '{prior}'; choose one of: {', '.join(PRIORS)}")
        _check_count("n", n, per=1 if isinstance(prompts, str) else len(prompts))
        check_seed(seed)
        check_prior_guidance(guidance)
        z_t, tokens, mask = self.embed_text(prompts)
        rep = lambda x: x.repeat_interleave(n, dim=0)  # noqa: E731  (P * n, ...)
        z_t, tokens, mask = rep(z_t), rep(tokens), rep(mask)
        if prior == "none":
            return z_t, tokens, mask
        if prior not in self.priors:
            raise UserError(f"this run has no trained {prior} prior; train it with "
                            f"`minidalle2 train prior-{prior} --run-dir {self.run_dir or 'RUN'}`, or choose --prior "
                            f"{' / '.join(list(self.priors) + ['none'])}")
        g = generator(seed)
        z_i = torch.cat([self.priors[prior].sample(tokens[s], mask[s], z_t[s], guidance=guidance, generator=g)
                         for s in batches(len(z_t))])
        return z_i, tokens, mask

    def generate(self, prompts: list[str], prior: str = "diffusion", n: int = 1, guidance: float | None = None,
                 steps: int | None = None, seed: int = 0, prior_guidance: float | None = None) -> torch.Tensor:
        """Text to image: (len(prompts) * n, 3, H, W) in [0, 1], all n images of prompt 0 first.

        ``guidance`` and ``steps`` are the decoder's (default: its config), ``prior_guidance`` the prior's.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        z_i, tokens, mask = self.sample_z_i(prompts, prior, n, seed, prior_guidance)
        return self.decode(z_i, guidance=guidance, steps=steps, seed=seed, text_tokens=tokens, text_mask=mask)

    # --- manipulations of a real image (paper Sec. 3) -----------------------------------------------------------

    def variations(self, image: torch.Tensor, n: int = 8, eta: float = 1.0, seed: int = 0,
                   guidance: float | None = None) -> torch.Tensor:
        """n variations of one image (3, H, W): its (z_i, x_T) decoded with DDIM at ``eta``. eta = 0 reconstructs
        the image; larger eta re-draws more of what z_i does not pin down. Returns (n, 3, H, W)."""
        _check_count("n", n)
        check_seed(seed)
        check_number("eta", eta, 0, float("inf"), "0 reconstructs the image; try 0.5 to 1 for variations")
        z_i, x_T = self.encode(self._one(image)[None])
        return self.decode(z_i.expand(n, -1), x_T.expand(n, -1, -1, -1), eta=eta, guidance=guidance, seed=seed)

    def interpolate(self, image_a: torch.Tensor, image_b: torch.Tensor, n: int = 8, latent: str = "fixed",
                    seed: int = 0) -> torch.Tensor:
        """n images along z_i_theta = slerp(z_i_a, z_i_b, theta), theta = 0 .. 1: (n, 3, H, W).

        latent="fixed" decodes every step from one x_T (random, from ``seed``), so only z_i moves;
        latent="slerp" slerps the inverted x_T of both images too, so the ends reconstruct the two images.
        """
        _check_count("n", n, least=2)
        check_seed(seed)
        if latent not in ("fixed", "slerp"):
            raise UserError(f"unknown latent '{latent}'; choose fixed or slerp")
        z_i, x_T = self.encode(torch.stack([self._one(image_a), self._one(image_b)]))
        theta = torch.linspace(0, 1, n)  # (n,)
        z = F.normalize(slerp(z_i[:1].expand(n, -1), z_i[1:].expand(n, -1), theta), dim=-1)  # (n, D)
        if latent == "slerp":
            flat = x_T.flatten(1)  # (2, 3 H W)
            x = slerp(flat[:1].expand(n, -1), flat[1:].expand(n, -1), theta).view(n, *x_T.shape[1:])
        else:
            x = torch.randn((1, *x_T.shape[1:]), generator=generator(seed)).expand(n, -1, -1, -1)
        return self.decode(z, x, seed=seed)

    def caption_embeddings(self, captions: list[str], space: str, seed: int = 0) -> torch.Tensor:
        """One embedding per caption (N, D), unit-norm: "text" its z_t; "image" the diffusion prior's z_i, the mean
        of PRIOR_SAMPLES draws (from ``seed``) renormalised: the image embedding the caption stands for."""
        z_t, tokens, mask = self.embed_text(captions)
        if space == "text":
            return z_t
        if "diffusion" not in self.priors:
            raise UserError("image-space text diffs use the diffusion prior; train it with `minidalle2 train "
                            f"prior-diffusion --run-dir {self.run_dir or 'RUN'}`, or choose --method paper")
        z_i, _, _ = self.sample_z_i(captions, "diffusion", n=PRIOR_SAMPLES, seed=seed)  # (N * k, D)
        return F.normalize(z_i.view(len(captions), PRIOR_SAMPLES, -1).mean(1), dim=-1)

    def text_diff_batch(self, z_i: torch.Tensor, x_T: torch.Tensor, from_captions: list[str], to_captions: list[str],
                        thetas, method: str = EDIT_METHOD, steps: int | None = None) -> torch.Tensor:
        """Edit N encoded images (z_i (N, D), x_T (N, 3, H, W), from ``encode``) by N caption changes, each at every
        theta: (N, len(thetas), 3, H, W), decoded by DDIM at eta = 0 from each image's own x_T."""
        thetas = [float(t) for t in thetas]
        for t in thetas:
            check_number("theta", t, 0, 1, "a fraction of the way from z_i to the edit's end point")
        for a, b in zip(from_captions, to_captions):
            check_text_diff(a, b, method)
        N, T = len(z_i), len(thetas)
        z = self.caption_embeddings(list(from_captions) + list(to_captions), "text" if method == "paper" else "image")
        z_from, z_to = z[:N], z[N:]  # (N, D) each
        rep = lambda a: a[:, None].expand(N, T, *a.shape[1:]).flatten(0, 1)  # noqa: E731  (N T, ...)
        theta = torch.tensor(thetas).repeat(N)  # (N T,)
        z_theta = edit_embedding(rep(z_i), rep(z_from), rep(z_to), theta, method)  # (N T, D)
        tokens = mask = None
        if method.endswith("_text"):  # the decoder reads the new caption too
            _, tokens, mask = self.embed_text(list(to_captions))
            tokens, mask = rep(tokens), rep(mask)
        out = self.decode(z_theta, rep(x_T), steps=steps, text_tokens=tokens, text_mask=mask)
        return out.view(N, T, *out.shape[1:])

    def text_diff(self, image: torch.Tensor, from_caption: str, to_caption: str, n: int = 6,
                  theta_max: float | None = None, method: str = EDIT_METHOD) -> torch.Tensor:
        """Edit an image by a caption change at n thetas from 0 to theta_max (edit_embedding, ``method``), decoded
        at eta = 0 from the image's own x_T: (n, 3, H, W). The paper's method: z_d = norm(z_t(to) - z_t(from)),
        z_theta = slerp(z_i, z_d, theta). theta_max defaults to the method's (EDIT_THETA_MAX)."""
        _check_count("n", n, least=2)
        theta_max = EDIT_THETA_MAX[method] if theta_max is None and method in EDIT_THETA_MAX else theta_max
        if theta_max is not None:
            check_number("theta_max", theta_max, 0, 1, "a fraction of the way to the edit's end point, e.g. 0.5")
        check_text_diff(from_caption, to_caption, method)
        z_i, x_T = self.encode(self._one(image)[None])
        return self.text_diff_batch(z_i, x_T, [from_caption], [to_caption], torch.linspace(0, theta_max, n).tolist(),
                                    method)[0]

    def pca_reconstructions(self, image: torch.Tensor, dims: list[int], seed: int = 0) -> torch.Tensor:
        """Decode z_i rebuilt from its first k principal components, for each k in ``dims`` (one x_T, from
        ``seed``): how much of the image the leading directions of CLIP space carry (paper Fig. 7). Uses the AR
        prior's PCA. (len(dims), 3, H, W)."""
        if self.tokenizer is None:
            raise UserError("PCA reconstructions use the AR prior's PCA; train it with "
                            f"`minidalle2 train prior-ar --run-dir {self.run_dir or 'RUN'}`")
        K = self.tokenizer.K
        bad = [k for k in dims if not 1 <= k <= K]
        if not dims or bad:
            raise UserError(f"dims {bad or dims} must be component counts between 1 and {K} (the PCA keeps {K})")
        z_i = self.embed_images(self._one(image)[None])
        c = self.tokenizer.to_pca(z_i)  # (1, K)
        keep = torch.arange(K)[None] < torch.tensor(dims)[:, None]  # (len(dims), K)
        z = self.tokenizer.from_pca(c * keep)  # (len(dims), D) unit-norm
        x_T = torch.randn((1, 3, self.image_size, self.image_size), generator=generator(seed)).expand(len(dims), -1, -1, -1)
        return self.decode(z, x_T, seed=seed)

    # --- the cascade ------------------------------------------------------------------------------------------

    @property
    def has_cascade(self) -> bool:
        """Whether this run's upsampler takes its decoder's pictures (what ``upsample`` needs)."""
        return self.upsampler is not None and self.upsampler.cfg.low_res == self.image_size

    def check_upsampler(self) -> None:
        """Refuse to upsample with a run that has no upsampler, or whose decoder already draws at its output size."""
        if self.upsampler is None:
            raise UserError(f"{self.run_dir or 'this run'} has no upsampler; train one with `minidalle2 train "
                            f"upsampler --run-dir {self.run_dir or 'RUN'}`, or leave out --upsample")
        lo, hi = self.upsampler.cfg.low_res, self.upsampler.image_size
        if self.image_size != lo:
            raise UserError(f"this run's decoder draws {self.image_size}x{self.image_size} pictures and the upsampler "
                            f"takes {lo}x{lo} ones to {hi}x{hi}; leave out --upsample")

    def upsample(self, images: torch.Tensor, steps: int | None = None, seed: int = 0) -> torch.Tensor:
        """The cascade's last box: images (N, 3, 32, 32) in [0, 1] -> (N, 3, 64, 64) in [0, 1], DDIM with the
        upsampler's few steps (default: its config) and its small fixed blur of the input."""
        self.check_upsampler()
        images = self._check_images(images)
        check_sampling(steps, None, None, self.upsampler.cfg.timesteps)
        g = generator(seed)
        return torch.cat([self.upsampler.sample(images[s], steps=steps, generator=g).cpu()
                          for s in batches(len(images))])

    # --- inputs ---------------------------------------------------------------------------------------------

    def load_images(self, paths: list[str]) -> torch.Tensor:
        """Image files -> (N, 3, S, S) in [0, 1] at the decoder's size (any mode PIL reads; notes printed)."""
        out = []
        for path in paths:
            image, notes = load_image(path, self.image_size)
            for note in notes:
                print(f"{path}: {note}")
            out.append(image)
        return torch.stack(out)

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        images = torch.as_tensor(images)
        if images.dtype == torch.uint8:
            images = images.float() / 255
        S = self.image_size
        if images.dim() != 4 or images.shape[1:] != (3, S, S):
            raise UserError(f"images have shape {tuple(images.shape)}; this run works on (N, 3, {S}, {S}) "
                            "(load files with UnCLIP.load_images, which resizes them)")
        return images

    def _one(self, image: torch.Tensor) -> torch.Tensor:
        image = torch.as_tensor(image)
        return self._check_images(image if image.dim() == 4 else image[None])[0]
