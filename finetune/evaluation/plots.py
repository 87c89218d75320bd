"""Report images: confusion matrix, worst mistakes, training curves.

Drawn with matplotlib's object API (``Figure`` rendered by the Agg canvas) rather than
``pyplot``: no global backend switch, no figure registry that leaks memory across calls,
and it works on machines without a display. Each PNG is written to a new temporary file and
renamed (``finetune.utils.files.replacing``), so a crash never leaves a half-written image
that the card links to.

Class names are drawn in any script: when matplotlib's default font (DejaVu Sans) lacks
some of their characters (Chinese, Japanese, Korean...), an installed font that has them
is added behind it, and matplotlib falls back to it glyph by glyph. A name that no
installed font can draw is written as its index (``#2``) rather than as empty boxes, and
one log line says which font to install.
"""

from __future__ import annotations

import functools
import logging
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune.evaluation.metrics import Predictions, top_confusions
from finetune.utils.files import replacing

logger = logging.getLogger(__name__)

#: How many of the most confident mistakes ``misclassified.png`` shows.
MAX_MISTAKES = 16
#: Above this many classes the confusion matrix has no numbers in its cells (unreadable).
MAX_ANNOTATED_CLASSES = 20
#: Above this many classes ``confusion_matrix.png`` shows the most frequent confusions as bars
#: instead of the matrix: at the picture's largest size a cell is then under a fifth of an
#: inch and no class name can be read, and the matrix's memory and drawing time grow with
#: the square of the classes.
MAX_MATRIX_PICTURE_CLASSES = 200
#: How many confusions that picture shows.
PICTURED_CONFUSIONS = 30
#: Class names longer than this are cut with "…" on axes and titles.
MAX_NAME_CHARS = 24


def write_plots(
    out: Path, predictions: Predictions, class_names: list[str], eval_dataset: Any, log_history: list[dict]
) -> None:
    """Write confusion_matrix.png, misclassified.png and training_curves.png into ``out``.

    ``eval_dataset`` rows must be in the order of ``predictions``' arrays; only the images
    that ``misclassified.png`` shows are read from it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = pictured_labels(class_names)
    save_figure(confusion_figure(predictions, class_names, labels), out / "confusion_matrix.png")
    save_figure(mistakes_figure(predictions, class_names, eval_dataset, labels), out / "misclassified.png")
    save_figure(curves_figure(log_history), out / "training_curves.png")


def pictured_labels(class_names: list[str]) -> ClassLabels:
    """:func:`class_labels`, with one warning naming the font to install when some name is
    written as its index."""
    labels = class_labels(class_names)
    if labels.by_index:
        shown = ", ".join(f"#{i} {class_names[i]}" for i in labels.by_index[:5])
        logger.warning(
            "no installed font has the characters of %d class name(s) (%s%s): the pictures write their index "
            "instead (as in config.json's id2label); to see the names, install a font with them (%s) and "
            "evaluate again",
            len(labels.by_index), shown, ", …" if len(labels.by_index) > 5 else "", install_hint(labels.missing),
        )
    return labels


def save_figure(fig, path: Path) -> None:
    """Write a figure as a PNG through a temporary file and a rename: never half an image."""
    # format= is needed because a file object has no name to tell it by; the constrained
    # layout already fits the labels, so no bbox_inches="tight" (a second render).
    with replacing(path) as f:
        fig.savefig(f, format="png", dpi=fig.dpi)


def _short(name: str) -> str:
    name = str(name)
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 1] + "…"


def new_figure(width: float, height: float):
    """A matplotlib ``Figure`` of width × height inches, laid out to fit its labels (no pyplot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


# ------------------------------------------------------------------ names and fonts


@dataclass(frozen=True)
class ClassLabels:
    """What the pictures write for each class, and the font list that draws it."""

    text: list[str]  # the (shortened) name, or "#i" where no installed font can draw it
    family: list[str]  # matplotlib's font.family, then the fonts found for the other characters
    by_index: list[int]  # the classes written as "#i"
    missing: str  # the characters no installed font has (for the install hint)

    @property
    def note(self) -> str | None:
        if not self.by_index:
            return None
        return "#i: class i of config.json's id2label (no installed font can draw its name)"


def candidate_fonts() -> list[str]:
    """Font files to search for missing characters: those matplotlib knows, and those the
    system has now (matplotlib's font list is cached, and misses fonts installed since)."""
    from matplotlib import font_manager

    known = {entry.fname for entry in font_manager.fontManager.ttflist}
    return sorted(known | set(font_manager.findSystemFonts()))


@functools.lru_cache(maxsize=None)
def _font_info(path: str) -> tuple[frozenset[int], Any]:
    """The code points a font file has, and its matplotlib FontEntry (None if unreadable)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    try:
        font = FT2Font(path)
        return frozenset(font.get_charmap()), font_manager.ttfFontProperty(font)
    except (OSError, RuntimeError, ValueError, KeyError):  # not a font FreeType reads
        return frozenset(), None


def _family_files(family: tuple[str, ...]) -> list[str]:
    """The files matplotlib draws ``font.family`` with (one per family it finds)."""
    from matplotlib import font_manager

    files = []
    for name in family:
        try:
            files.append(font_manager.findfont(font_manager.FontProperties(family=[name]), fallback_to_default=False))
        except ValueError:  # a family that is not installed: matplotlib skips it too
            continue
    return files


def _fonts_for(needed: set[str], exclude: list[str]) -> tuple[list[str], set[str]]:
    """Installed fonts that have the ``needed`` characters: the one with most of them
    first (a regular upright face on ties), then for what is left, and so on. Returns
    their family names (registered with matplotlib) and the characters none has."""
    from matplotlib import font_manager

    needed = set(needed)
    candidates = [path for path in candidate_fonts() if path not in set(exclude)]
    chosen: list[str] = []
    while needed:
        best = None
        for path in candidates:
            codes, entry = _font_info(path)
            gain = {ch for ch in needed if ord(ch) in codes}
            # "Last Resort" (shipped with matplotlib) maps every code point to a box
            # naming its Unicode block: the very boxes this search is to avoid.
            if not gain or entry is None or entry.name.startswith("Last Resort"):
                continue
            weight = entry.weight if isinstance(entry.weight, int) else 400
            key = (-len(gain), abs(weight - 400), entry.style != "normal", path)
            if best is None or key < best[0]:
                best = (key, path, gain, entry)
        if best is None:
            break
        _, path, gain, entry = best
        if path not in {e.fname for e in font_manager.fontManager.ttflist}:
            font_manager.fontManager.addfont(path)
        if entry.name not in chosen:
            chosen.append(entry.name)
        needed -= gain
        candidates.remove(path)
    return chosen, needed


def class_labels(class_names: list[str]) -> ClassLabels:
    """Each class's name, with the fonts that can draw it; ``#i`` where none can."""
    from matplotlib import rcParams

    names = [_short(c) for c in class_names]
    family = list(rcParams["font.family"])
    default_files = _family_files(tuple(family))
    have = frozenset().union(*(_font_info(path)[0] for path in default_files))
    needed = {ch for name in names for ch in name if ord(ch) not in have and ch != "\n"}
    missing: set[str] = set()
    if needed:
        extra, missing = _fonts_for(needed, default_files)
        family += extra
    by_index = [i for i, name in enumerate(names) if missing.intersection(name)]
    text = [f"#{i}" if i in set(by_index) else name for i, name in enumerate(names)]
    return ClassLabels(text, family, by_index, "".join(sorted(missing)))


def install_hint(characters: str) -> str:
    """Which font package to install for ``characters`` (Debian/Ubuntu package names)."""
    scripts = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO", "IDEOGRAPHIC")
    if any(unicodedata.name(ch, "").startswith(scripts) for ch in characters):
        return "Debian/Ubuntu: apt-get install fonts-noto-cjk; elsewhere: Noto Sans CJK"
    return "Debian/Ubuntu: apt-get install fonts-noto-core; elsewhere: a Noto font for that script"


# -------------------------------------------------------------------- confusion matrix


def confusion_counts(predictions: Predictions, num_classes: int) -> np.ndarray:
    """C×C counts: rows are true classes, columns predicted classes."""
    labels = np.asarray(predictions.labels, dtype=np.int64)
    preds = np.asarray(predictions.preds, dtype=np.int64)
    flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat[: num_classes * num_classes].reshape(num_classes, num_classes)


def confusion_figure(predictions: Predictions, class_names: list[str], labels: ClassLabels | None = None):
    """Rows normalised to recall (so small and big classes share one colour scale); the
    counts are written in the cells while there are few enough classes to read them.
    Above :data:`MAX_MATRIX_PICTURE_CLASSES` classes, :func:`top_confusions_figure` instead."""
    labels = class_labels(class_names) if labels is None else labels
    n = len(class_names)
    if n > MAX_MATRIX_PICTURE_CLASSES:
        return top_confusions_figure(predictions, class_names, labels)
    counts = confusion_counts(predictions, n)
    support = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, support, out=np.zeros(counts.shape, dtype=float), where=support > 0)
    # ~0.28 inch per class keeps 100 class names legible at 6-7 pt; capped so huge
    # label sets still give a PNG of a few megapixels.
    side = float(min(max(5.0, 1.5 + 0.28 * n), 40.0))
    tick_size = float(np.clip(220.0 / max(n, 1), 5.0, 10.0))
    fig = new_figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="share of the true class (row)")
    ax.set_xticks(range(n), labels.text, rotation=90, fontsize=tick_size, fontfamily=labels.family)
    ax.set_yticks(range(n), labels.text, fontsize=tick_size, fontfamily=labels.family)
    if labels.note:
        fig.supxlabel(labels.note, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = float(np.trace(counts) / max(counts.sum(), 1))
    ax.set_title(f"Confusion matrix: {int(counts.sum())} images, accuracy {accuracy:.3f}")
    if n <= MAX_ANNOTATED_CLASSES:
        cell_size = float(np.clip(160.0 / n, 6.0, 11.0))
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(
                        j, i, str(counts[i, j]), ha="center", va="center", fontsize=cell_size,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
    return fig


def top_confusions_figure(predictions: Predictions, class_names: list[str], labels: ClassLabels | None = None):
    """The most frequent (true → predicted) mistakes as horizontal bars, each with its count
    and its share of the true class: what the confusion matrix of many classes would show
    in its brightest off-diagonal cells. Its size does not grow with the classes."""
    labels = class_labels(class_names) if labels is None else labels
    index = {name: i for i, name in enumerate(class_names)}
    pairs = top_confusions(predictions, class_names, PICTURED_CONFUSIONS)
    fig = new_figure(9.0, 1.6 + 0.3 * max(len(pairs), 3))
    ax = fig.subplots()
    total = len(predictions.labels)
    accuracy = float(np.mean(np.asarray(predictions.preds) == np.asarray(predictions.labels))) if total else 0.0
    ax.set_title(
        f"Most frequent confusions: {len(class_names)} classes (too many for a matrix), "
        f"{total} images, accuracy {accuracy:.3f}",
        fontsize=10,
    )
    if not pairs:
        ax.axis("off")
        ax.text(0.5, 0.5, "No misclassified images", ha="center", va="center", fontsize=14)
        return fig
    names = [f"{labels.text[index[p['true']]]} → {labels.text[index[p['predicted']]]}" for p in pairs]
    counts = [p["count"] for p in pairs]
    rows = np.arange(len(pairs))
    ax.barh(rows, counts, color="tab:blue")
    ax.set_yticks(rows, names, fontsize=8, fontfamily=labels.family)
    ax.invert_yaxis()  # the most frequent on top
    for row, pair in zip(rows, pairs):
        ax.text(pair["count"], row, f" {pair['count']} ({pair['share_of_true']:.0%} of the true class)",
                va="center", fontsize=7)
    ax.set_xlim(0, max(counts) * 1.35)
    ax.set_xlabel("images (true → predicted)")
    if labels.note:
        fig.supxlabel(labels.note, fontsize=8)
    return fig


# ------------------------------------------------------------------------ mistakes


def worst_mistakes(predictions: Predictions, limit: int = MAX_MISTAKES) -> np.ndarray:
    """Indices of wrong predictions, most confident first (ties: lower index first)."""
    wrong = np.flatnonzero(np.asarray(predictions.preds) != np.asarray(predictions.labels))
    if len(wrong) == 0:
        return wrong
    order = np.argsort(-np.asarray(predictions.confidence)[wrong], kind="stable")
    return wrong[order[:limit]]


def as_hwc(pixels: Any) -> np.ndarray:
    """A dataset row's uint8 C×H×W pixels (tensor or array) as H×W×3, or H×W for one channel."""
    if hasattr(pixels, "detach"):
        pixels = pixels.detach().cpu().numpy()
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[0] in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr.astype(np.uint8, copy=False)


def mistakes_figure(
    predictions: Predictions, class_names: list[str], eval_dataset: Any, labels: ClassLabels | None = None
):
    """A grid of the most confident mistakes: image, true and predicted class, confidence."""
    chosen = worst_mistakes(predictions)
    total_wrong = int((np.asarray(predictions.preds) != np.asarray(predictions.labels)).sum())
    if len(chosen) == 0:
        fig = new_figure(6, 2.5)
        ax = fig.subplots()
        ax.axis("off")
        ax.text(
            0.5, 0.5, f"No misclassified images\n(all {len(predictions.labels)} predictions are correct)",
            ha="center", va="center", fontsize=14,
        )
        return fig
    labels = class_labels(class_names) if labels is None else labels
    cols = min(4, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = new_figure(3.0 * cols, 3.3 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, index in zip(axes, chosen):
        # One row at a time: the eval set can be far bigger than memory.
        row = eval_dataset[int(index)]
        image = as_hwc(row["pixel_values"])
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        true_name = labels.text[int(predictions.labels[index])]
        pred_name = labels.text[int(predictions.preds[index])]
        ax.set_title(
            f"true: {true_name}\npred: {pred_name} ({float(predictions.confidence[index]):.2f})",
            fontsize=9, color="firebrick", fontfamily=labels.family,
        )
    fig.suptitle(
        f"Most confident mistakes: {len(chosen)} of {total_wrong} misclassified "
        f"(of {len(predictions.labels)} images)",
        fontsize=11,
    )
    if labels.note:
        fig.supxlabel(labels.note, fontsize=8)
    return fig


# ------------------------------------------------------------------ training curves


def split_history(log_history: list[dict], metric: str = "accuracy") -> dict[str, list[tuple[float, float]]]:
    """(epoch, value) series from ``trainer.state.log_history`` (of ``metric``: ``eval_METRIC``, ``final_METRIC``).

    Entries after the end-of-training summary (the one with ``train_runtime``) are the
    final evaluation on the eval split, not per-epoch validation scores, so they are
    kept apart as ``final_*``.
    """
    series: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("loss", "eval_loss", f"eval_{metric}", "final_loss", f"final_{metric}", "mean_train_loss")
    }
    finished = False
    for entry in log_history:
        epoch = entry.get("epoch")
        if epoch is None:
            continue
        epoch = float(epoch)
        if "train_runtime" in entry:
            finished = True
            # A resumed run that had nothing left to train reports train_loss 0.0.
            if entry.get("train_loss"):
                series["mean_train_loss"].append((epoch, float(entry["train_loss"])))
            continue
        if "loss" in entry:
            series["loss"].append((epoch, float(entry["loss"])))
        prefix = "final_" if finished else "eval_"
        if "eval_loss" in entry:
            series[prefix + "loss"].append((epoch, float(entry["eval_loss"])))
        if f"eval_{metric}" in entry:
            series[prefix + metric].append((epoch, float(entry[f"eval_{metric}"])))
    return series


def curves_figure(log_history: list[dict], metric: str = "accuracy", title: str = "Accuracy"):
    """Loss (train and validation) and the validation ``metric`` (shown as ``title``) against the epoch."""
    s = split_history(log_history or [], metric)
    fig = new_figure(11, 4)
    loss_ax, acc_ax = fig.subplots(1, 2)

    def plot(ax, points, **style) -> None:
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, **style)

    plot(loss_ax, s["loss"], label="train loss", color="tab:blue", linewidth=1.2)
    if not s["loss"] and s["mean_train_loss"]:
        # Fewer steps than logging_steps: only the run's mean loss is known.
        epoch, value = s["mean_train_loss"][-1]
        loss_ax.hlines(value, 0, epoch, colors="tab:blue", linestyles="dashed", label="train loss (mean of run)")
    plot(loss_ax, s["eval_loss"], label="validation loss", color="tab:orange", marker="o")
    plot(loss_ax, s["final_loss"], label="eval split (final)", color="tab:red", marker="*", markersize=12, linestyle="")
    plot(acc_ax, s[f"eval_{metric}"], label=f"validation {metric}", color="tab:orange", marker="o")
    plot(acc_ax, s[f"final_{metric}"], label="eval split (final)", color="tab:red", marker="*", markersize=12, linestyle="")
    epochs = [e for points in s.values() for e, _ in points]
    for ax, name in ((loss_ax, "Loss"), (acc_ax, title)):
        if epochs:
            # Both panels on one epoch axis from 0, also when there is a single point.
            ax.set_xlim(0, max(max(epochs), 1e-3) * 1.05)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        if ax.lines or ax.collections:
            ax.legend(fontsize=8)
    if not (s["loss"] or s["mean_train_loss"] or s["eval_loss"] or s["final_loss"]):
        loss_ax.text(0.5, 0.5, "no loss was logged", ha="center", va="center", transform=loss_ax.transAxes)
    if not s[f"eval_{metric}"]:
        acc_ax.text(
            0.5, 0.55 if s[f"final_{metric}"] else 0.5,
            "no per-epoch validation scores\n(data.validation_fraction 0 or eval_strategy 'no')",
            ha="center", va="center", transform=acc_ax.transAxes, fontsize=9,
        )
    else:
        acc_ax.set_ylim(-0.02, 1.02)
    return fig
