"""The report's pictures: the top label suspects, the closest duplicate pairs, the outliers,
the class balance and the similarity histogram. Drawn as ``finetune.evaluation.plots`` draws the
run's own (matplotlib's object API, written through a rename, class names in any script)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from finetune.evaluation import plots
from finetune.evaluation.plots import ClassLabels

#: Images per row of a grid.
COLUMNS = 4


def _same_height(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two images at the larger one's height (the other resized, its aspect kept)."""
    height = max(a.shape[0], b.shape[0])

    def fit(x: np.ndarray) -> np.ndarray:
        if x.shape[0] == height:
            return x
        width = max(1, round(x.shape[1] * height / x.shape[0]))
        return np.asarray(Image.fromarray(x).resize((width, height), Image.Resampling.BICUBIC))

    return fit(a), fit(b)


def side_by_side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two H×W×3 images next to each other with a white gap, as one image."""
    a, b = _same_height(a, b)
    gap = np.full((a.shape[0], max(2, a.shape[0] // 12), 3), 255, dtype=np.uint8)
    return np.concatenate([a, gap, b], axis=1)


def grid(cells: list[tuple[np.ndarray, str, str]], title: str, labels: ClassLabels, empty: str, wide: bool = False):
    """A grid of images, each with its caption (text, colour); ``empty``: what to say when there are none."""
    if not cells:
        fig = plots.new_figure(6, 2.0)
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, empty, ha="center", va="center", fontsize=12)
        return fig
    columns = min(COLUMNS if not wide else COLUMNS // 2 + 1, len(cells))
    rows = math.ceil(len(cells) / columns)
    cell_w = 4.6 if wide else 2.9
    fig = plots.new_figure(cell_w * columns, 3.1 * rows + 0.5)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, (image, caption, colour) in zip(axes, cells):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8.5, color=colour, fontfamily=labels.family)
    fig.suptitle(title, fontsize=11)
    if labels.note:
        fig.supxlabel(labels.note, fontsize=8)
    return fig


def balance_figure(parts: list[tuple[str, np.ndarray]], labels: ClassLabels):
    """Images per class in each part: grouped bars (up to 40 classes), else each part's
    counts sorted, as a curve (a long tail shows as one)."""
    n = len(labels.text)
    fig = plots.new_figure(min(max(6.0, 0.35 * n * max(1, len(parts)) / 2 + 2), 30.0) if n <= 40 else 8.0, 4.2)
    ax = fig.subplots()
    if n <= 40:
        width = 0.8 / max(1, len(parts))
        for k, (name, counts) in enumerate(parts):
            ax.bar(np.arange(n) + k * width - 0.4 + width / 2, counts, width, label=name)
        ax.set_xticks(range(n), labels.text, rotation=90 if n > 8 else 0, fontsize=8, fontfamily=labels.family)
    else:
        for name, counts in parts:
            ax.plot(np.sort(counts)[::-1], label=name)
        ax.set_xlabel("classes, most images first")
    ax.set_ylabel("images")
    ax.set_title("Images per class")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def similarity_figure(series: list[tuple[str, np.ndarray]], threshold: float):
    """Histograms of each image's similarity to its nearest other image, per view and part:
    duplicates are the bump at the right, above the threshold."""
    views = sorted({name.split(": ")[0] for name, _ in series})
    fig = plots.new_figure(5.2 * len(views), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(views)))
    for ax, view in zip(axes, views):
        for name, values in series:
            if name.split(": ")[0] != view or len(values) == 0:
                continue
            values = values[np.isfinite(values)]
            ax.hist(values, bins=np.linspace(min(0.0, float(values.min())), 1.0, 101), histtype="step", log=True, label=name.split(": ", 1)[1])
        ax.axvline(threshold, color="firebrick", linestyle="--", label=f"threshold {threshold:g}")
        ax.set_title(f"nearest-image similarity, {view}")
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("images (log)")
        ax.legend(fontsize=7)
    return fig


def save(fig, path: Path) -> None:
    plots.save_figure(fig, path)
