"""Figures shared by the notebooks and ``minidalle2 demo`` (matplotlib, headless-safe)."""

from __future__ import annotations

import textwrap

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "inline"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from minidalle2.data import COLORS  # noqa: E402


def _to_hwc(image) -> np.ndarray:
    image = torch.as_tensor(image)
    if image.dtype == torch.uint8:
        image = image.float() / 255
    return image.clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def drawable(text: str) -> str:
    """``text`` with every character matplotlib's font has no glyph for (another script, an emoji) shown as '?',
    where matplotlib would draw an empty box and warn once per character."""
    font = font_manager.get_font(font_manager.findfont(font_manager.FontProperties()))
    return "".join(c if c == "\n" or font.get_char_index(ord(c)) else "?" for c in text)


def image_grid(images, captions=None, ncols: int = 8, size: float = 1.6, wrap: int = 22):
    """A grid of (N, 3, H, W) images (uint8, or float in [0, 1]) with optional captions under each."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    titles = ["\n".join(textwrap.wrap(drawable(c), wrap)) for c in captions] if captions is not None else None
    text_h = 0.15 * max(3, max(t.count("\n") + 1 for t in titles)) if titles else 0  # room for the longest caption
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + text_h)), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(_to_hwc(images[k]), interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[k], fontsize=7)
    fig.tight_layout()
    return fig


def training_curve(history, title: str = "training loss", smooth: int = 20):
    """Raw loss per step (faint) and its running mean."""
    fig, ax = plt.subplots(figsize=(5, 3))
    h = np.asarray(history, dtype=float)
    ax.plot(h, alpha=0.3, label="per step")
    if len(h) >= smooth:
        ax.plot(np.arange(smooth - 1, len(h)), np.convolve(h, np.ones(smooth) / smooth, "valid"), label="mean")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def similarity_heatmap(z_i, z_t, captions, n: int = 12):
    """cos(z_i, z_t) for the first n pairs: a bright diagonal means each image is closest to its caption."""
    sims = (z_i[:n] @ z_t[:n].T).cpu().numpy()
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(sims, cmap="viridis")
    ax.set_xticks(range(n), [textwrap.shorten(c, 32) for c in captions[:n]], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), [f"image {k}" for k in range(n)], fontsize=7)
    ax.set(xlabel="caption (z_t)", ylabel="image (z_i)", title="cos(z_i, z_t)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def embedding_projection(z, labels, names, title: str = "z_i, first two principal components", colors=None):
    """2-D PCA of embeddings, coloured by an integer attribute (``labels[n]`` indexes ``names``).

    ``colors``: {name: (r, g, b) in 0..255} to draw each value in its own colour; by default a colour name of
    the data (``data.COLORS``) is drawn in that colour, anything else in matplotlib's cycle."""
    pca = PCA(2).fit(z.cpu().numpy())
    xy = pca.transform(z.cpu().numpy())
    labels = np.asarray(labels)
    colors = COLORS if colors is None else colors
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for k, name in enumerate(names):
        m = labels == k
        c = np.array(colors[name])[None] / 255 if name in colors else None
        ax.scatter(xy[m, 0], xy[m, 1], s=8, alpha=0.7, color=c, edgecolors="k", linewidths=0.15, label=name)
    share = pca.explained_variance_ratio_
    ax.set(title=title, xlabel=f"principal component 1 ({share[0]:.0%} of the variance)",
           ylabel=f"principal component 2 ({share[1]:.0%})", xticks=[], yticks=[])
    ax.legend(fontsize=8, markerscale=2, loc="best")
    fig.tight_layout()
    return fig


def accuracy_bars(scores: dict[str, dict[str, float]], title: str = "zero-shot accuracy"):
    """Grouped bars: ``scores[group][attribute] = accuracy``."""
    groups = list(scores)
    attrs = list(next(iter(scores.values())))
    fig, ax = plt.subplots(figsize=(5, 3))
    width = 0.8 / len(groups)
    for g, group in enumerate(groups):
        ax.bar(np.arange(len(attrs)) + g * width, [scores[group][a] for a in attrs], width, label=group)
    ax.set_xticks(np.arange(len(attrs)) + 0.4 - width / 2, attrs)
    ax.set(ylim=(0, 1.05), title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def token_layout(groups: list[tuple[str, int, str]], title: str = "input sequence"):
    """Draw a token sequence as labelled boxes: ``groups`` = [(label, count, colour), ...] left to right.

    A group wide enough for its label is labelled under its boxes; a narrow one (a single token: z_t, t, ...) gets
    its label on a row of its own below, joined to its box by a line, so neighbouring labels never run together.
    The leftmost narrow group takes the lowest row: each label then runs to the right below the lines of the
    tokens after it, never across them."""
    n = sum(count for _, count, _ in groups)
    width = min(10.0, 0.16 * n + 2.5)  # inches; at most 10 so that a notebook shows it unscaled
    unit = width / (n + 0.4)  # inches per token
    narrow = [count * unit < 0.075 * len(label) + 0.2 for label, count, _ in groups]  # 10-pt text: ~0.075 in/char
    rows = 1 + sum(narrow)
    fig, ax = plt.subplots(figsize=(width, 1.3 + 0.3 * rows))
    x, row = 0, rows - 1  # rows - 1 narrow groups: the first goes lowest
    for (label, count, colour), thin in zip(groups, narrow):
        for k in range(count):
            ax.add_patch(plt.Rectangle((x + k, 0), 0.9, 0.9, color=colour, alpha=0.8))
        mid = x + count / 2 - 0.05
        if thin:
            y = -0.35 - 0.7 * row
            row -= 1
            ax.plot([mid, mid, mid + 0.5], [-0.05, y, y], c=colour, lw=1.2)  # an elbow from the box to its label
            ax.text(mid + 0.7, y, label, ha="left", va="center", fontsize=10)
        else:
            ax.text(mid, -0.35, label, ha="center", va="top", fontsize=10)
        x += count
    ax.set(xlim=(-0.2, n + 0.2), ylim=(-0.35 - 0.7 * rows, 1.1))
    ax.set_title(title, fontsize=11)
    ax.axis("off")
    fig.tight_layout()
    return fig


def mode_counts(tables: dict[str, np.ndarray], rows: list[str], cols: list[str], title: str = "",
                ncols: int | None = None):
    """Heatmaps of counts, one per entry of ``tables`` ({name: (len(rows), len(cols)) array}), ``ncols`` to a line
    (default: all side by side), each cell written out: where the images of one caption landed (size x position,
    say) for each way of making them. One colour scale for all panels, so an empty mode looks empty everywhere."""
    vmax = max(float(t.max()) for t in tables.values()) or 1.0
    ncols = ncols or len(tables)
    nrows = -(-len(tables) // ncols)
    width = ncols * (0.6 * len(cols) + 1.2)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, nrows * (0.5 * len(rows) + 1.8)), squeeze=False)
    for ax in axes.flat[len(tables):]:
        ax.axis("off")
    for k, (ax, (name, t)) in enumerate(zip(axes.flat, tables.items())):
        ax.imshow(t, cmap="Blues", vmin=0, vmax=vmax)
        for (r, c), v in np.ndenumerate(t):
            ax.text(c, r, int(v), ha="center", va="center", fontsize=8, color="white" if v > vmax / 2 else "black")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows if k % ncols == 0 else [""] * len(rows), fontsize=7)
        ax.set_title(f"{name} ({int(t.sum())})", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
