"""Report images of a multi-label evaluation: average precision per class, the worst images, training curves.

``per_class_ap.png`` stands where a single-label run has its confusion matrix (a multi-label
image has no single predicted class to confuse): one bar per class, sorted by average
precision, each labelled with its number of positive images. ``worst_images.png`` stands
where it has its most confident mistakes: the eval images whose probabilities are furthest
from their labels (largest Σ over the classes of |p − y|), each captioned with its true and
its predicted label sets. Drawn like the single-label pictures
(:mod:`finetune.evaluation.plots`: object API, fonts for any script, written whole then renamed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from finetune.evaluation import plots
from finetune.evaluation.multi_label_metrics import MultiLabelPredictions, average_precisions, worst_images
from finetune.recipe.metric_names import DISPLAY_NAMES, MULTI_LABEL_METRICS

#: The pictures a multi-label evaluation writes (beside ``training_curves.png``).
PICTURES = ("per_class_ap.png", "worst_images.png")
#: How many images ``worst_images.png`` shows.
MAX_WORST = 16
#: Above this many classes ``per_class_ap.png`` shows the best and the worst half of this many.
MAX_BARS = 60
#: How many class names a caption lists before "+k", and how many on one line.
CAPTION_NAMES = 4
CAPTION_PER_LINE = 2
#: Class names longer than this are cut with "…" in captions.
CAPTION_CHARS = 16


def write_plots(
    out: Path, predictions: MultiLabelPredictions, class_names: list[str], eval_dataset: Any, log_history: list[dict]
) -> None:
    """Write per_class_ap.png, worst_images.png and training_curves.png into ``out``.

    ``eval_dataset`` rows must be in the order of ``predictions``' arrays; only the images
    that ``worst_images.png`` shows are read from it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = plots.pictured_labels(class_names)
    plots.save_figure(ap_figure(predictions, class_names, labels), out / PICTURES[0])
    plots.save_figure(worst_figure(predictions, class_names, eval_dataset, labels), out / PICTURES[1])
    # The per-epoch curve of the first multi-label metric the run logged (mAP unless the recipe left it out).
    logged = {key for entry in log_history or [] for key in entry}
    metric = next((m for m in MULTI_LABEL_METRICS if f"eval_{m}" in logged), "map")
    plots.save_figure(plots.curves_figure(log_history, metric, DISPLAY_NAMES[metric]), out / "training_curves.png")


def ap_figure(predictions: MultiLabelPredictions, class_names: list[str], labels: plots.ClassLabels | None = None):
    """Horizontal bars of each class's average precision, best on top; a class with no positive
    image in the evaluated set has no AP and is listed at the bottom without a bar."""
    labels = plots.class_labels(class_names) if labels is None else labels
    ap = average_precisions(predictions.probs, predictions.truth) if predictions.num_images else np.full(len(class_names), np.nan)
    support = predictions.truth.sum(axis=0).astype(int) if predictions.num_images else np.zeros(len(class_names), int)
    # Best first; classes without an AP last (by index).
    order = sorted(range(len(class_names)), key=lambda c: (np.isnan(ap[c]), -np.nan_to_num(ap[c]), c))
    shown, gap = order, None
    if len(order) > MAX_BARS:
        half = MAX_BARS // 2
        shown, gap = order[:half] + order[-half:], half
    fig = plots.new_figure(8.0, 1.6 + 0.24 * max(len(shown), 3))
    ax = fig.subplots()
    rows = np.arange(len(shown))
    values = [0.0 if np.isnan(ap[c]) else float(ap[c]) for c in shown]
    ax.barh(rows, values, color=["tab:gray" if np.isnan(ap[c]) else "tab:blue" for c in shown])
    names = [f"{labels.text[c]} ({support[c]})" for c in shown]
    ax.set_yticks(rows, names, fontsize=float(np.clip(300.0 / max(len(shown), 1), 6.0, 9.0)), fontfamily=labels.family)
    ax.invert_yaxis()
    for row, c in zip(rows, shown):
        ax.text(values[row], row, " no positive image" if np.isnan(ap[c]) else f" {ap[c]:.3f}", va="center", fontsize=7)
    if gap is not None:
        ax.axhline(gap - 0.5, color="black", linestyle=":", linewidth=1)
        ax.text(1.0, gap - 0.5, f"{len(order) - len(shown)} classes between ", ha="right", va="bottom", fontsize=7)
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("average precision (in brackets: positive images)")
    found = ap[np.isfinite(ap)]
    ax.set_title(
        f"Average precision per class\nmAP {float(found.mean()) if len(found) else 0.0:.3f} over {len(found)} "
        f"class(es) with a positive image, {predictions.num_images} images",
        fontsize=10,
    )
    if labels.note:
        fig.supxlabel(labels.note, fontsize=8)
    return fig


def label_set(names: list[str], probs: np.ndarray | None = None) -> str:
    """Class names for a caption (with their probabilities when given), at most
    :data:`CAPTION_NAMES`, then "+k", :data:`CAPTION_PER_LINE` to a line; "(none)" for an empty set."""
    if not names:
        return "(none)"
    cut = [n if len(n) <= CAPTION_CHARS else n[: CAPTION_CHARS - 1] + "…" for n in names]
    parts = [f"{n} {p:.2f}" for n, p in zip(cut, probs)] if probs is not None else cut
    shown = parts[:CAPTION_NAMES]
    if len(parts) > CAPTION_NAMES:
        shown[-1] += f" +{len(parts) - CAPTION_NAMES}"
    return ",\n".join(", ".join(shown[i:i + CAPTION_PER_LINE]) for i in range(0, len(shown), CAPTION_PER_LINE))


def worst_figure(
    predictions: MultiLabelPredictions, class_names: list[str], eval_dataset: Any, labels: plots.ClassLabels | None = None
):
    """A grid of the images furthest from their labels, each with its true label set and the
    predicted one (each class at or above its threshold, by probability)."""
    labels = plots.class_labels(class_names) if labels is None else labels
    chosen = worst_images(predictions, MAX_WORST)
    truth, predicted, probs = predictions.truth, predictions.predicted, np.asarray(predictions.probs)
    if len(chosen) == 0:
        fig = plots.new_figure(6, 2.5)
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "No images were evaluated", ha="center", va="center", fontsize=14)
        return fig
    cols = min(4, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = plots.new_figure(3.2 * cols, 3.9 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    wrong_images = int((truth != predicted).any(axis=1).sum())
    for ax, index in zip(axes, chosen):
        # One row at a time: the eval set can be far bigger than memory.
        image = plots.as_hwc(eval_dataset[int(index)]["pixel_values"])
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        true = [labels.text[c] for c in np.flatnonzero(truth[index])]
        said = sorted(np.flatnonzero(predicted[index]), key=lambda c: -probs[index, c])
        right = bool((truth[index] == predicted[index]).all())
        ax.set_title(
            f"true: {label_set(true)}\npred: {label_set([labels.text[c] for c in said], probs[index, said])}",
            fontsize=8, color="black" if right else "firebrick", fontfamily=labels.family,
        )
    fig.suptitle(
        f"Images furthest from their labels (Σ|p − y|): {len(chosen)} shown; {wrong_images} of "
        f"{predictions.num_images} images have some label wrong",
        fontsize=11,
    )
    if labels.note:
        fig.supxlabel(labels.note, fontsize=8)
    return fig
