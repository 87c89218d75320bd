"""Multi-label metrics: mean average precision, micro and macro F1 at per-class thresholds, exact match, and the per-class report.

A multi-label evaluation keeps every image's sigmoid probability for every class (N × C
float32, and the N × C labels as uint8: 5 bytes × images × classes), because average precision ranks all images of a class
and cannot be accumulated from counts. The labels are the multi-hot rows of
:mod:`finetune.data.multi_label`; an image is predicted to have class c when its probability
is at least c's threshold (tuned on the validation piece, :mod:`finetune.evaluation.thresholds`).

As in the single-label path (:mod:`finetune.evaluation.metrics`), macro averages run over the
classes with at least one positive image in the evaluated set: a class no image has has no
recall and no average precision to measure. Its row stays in the report (support 0, AP null)
and ``absent_classes`` names it. With no positive label at all, the macro F1 runs over every
class and mAP is 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune.data import multi_label
from finetune.recipe.metric_names import MULTI_LABEL_METRICS

logger = logging.getLogger(__name__)


@dataclass
class MultiLabelPredictions:
    """What one multi-label evaluation pass keeps: N × C probabilities and targets."""

    probs: np.ndarray  # N×C sigmoid probabilities (float32)
    targets: np.ndarray  # N×C multi-hot truth (0 / 1)
    thresholds: np.ndarray  # C decision thresholds the predictions below use
    #: The probabilities before temperature scaling, when the model evaluated has a temperature
    #: folded into its head; else None.
    uncalibrated_probs: np.ndarray | None = None

    @property
    def num_images(self) -> int:
        return int(len(self.probs))

    @property
    def predicted(self) -> np.ndarray:
        """N×C: each class at or above its threshold."""
        return np.asarray(self.probs) >= np.asarray(self.thresholds)[None, :]

    @property
    def truth(self) -> np.ndarray:
        """N×C booleans of the targets."""
        return np.asarray(self.targets) > 0.5


def present(targets: np.ndarray) -> np.ndarray:
    """The classes with at least one positive image (what macro averages run over)."""
    return np.flatnonzero((np.asarray(targets) > 0.5).any(axis=0))


def average_precisions(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each class's average precision (scikit-learn's ``average_precision_score``), NaN for a
    class with no positive image."""
    from sklearn.metrics import average_precision_score

    truth = np.asarray(targets) > 0.5
    out = np.full(truth.shape[1], np.nan)
    for c in np.flatnonzero(truth.any(axis=0)):
        out[c] = average_precision_score(truth[:, c], np.asarray(probs)[:, c])
    return out


def mean_average_precision(probs: np.ndarray, targets: np.ndarray) -> float:
    """The mean of :func:`average_precisions` over the classes with a positive image (0 when none has)."""
    ap = average_precisions(probs, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


@dataclass
class Counts:
    """Per class: true positives, predicted positives and positives (support)."""

    tp: np.ndarray
    predicted: np.ndarray
    support: np.ndarray

    @classmethod
    def of(cls, truth: np.ndarray, predicted: np.ndarray) -> Counts:
        return cls((truth & predicted).sum(axis=0), predicted.sum(axis=0), truth.sum(axis=0))

    def per_class(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(precision, recall, F1) of each class, 0 where undefined (scikit-learn's ``zero_division=0``)."""
        tp, pp, s = (np.asarray(x, dtype=np.float64) for x in (self.tp, self.predicted, self.support))
        precision = np.divide(tp, pp, out=np.zeros_like(tp), where=pp > 0)
        recall = np.divide(tp, s, out=np.zeros_like(tp), where=s > 0)
        f1 = np.divide(2 * tp, pp + s, out=np.zeros_like(tp), where=(pp + s) > 0)
        return precision, recall, f1

    def f1_micro(self) -> float:
        denominator = float(self.predicted.sum() + self.support.sum())
        return 2 * float(self.tp.sum()) / denominator if denominator else 0.0

    def macro_classes(self) -> np.ndarray:
        """The classes with a positive image; every class when none has one."""
        classes = np.flatnonzero(self.support > 0)
        return classes if len(classes) else np.arange(len(self.support))


def compute(metrics: list[str], p: MultiLabelPredictions) -> dict[str, float]:
    """The recipe's multi-label metrics (names of ``MULTI_LABEL_METRICS``) of ``p`` at its thresholds."""
    unknown = [m for m in metrics if m not in MULTI_LABEL_METRICS]
    if unknown:
        raise ValueError(f"not multi-label metrics: {', '.join(unknown)}; use {', '.join(MULTI_LABEL_METRICS)}")
    if p.num_images == 0:
        return {m: 0.0 for m in metrics}
    truth, predicted = p.truth, p.predicted
    counts = Counts.of(truth, predicted)
    out: dict[str, float] = {}
    for name in metrics:
        if name == "map":
            out[name] = mean_average_precision(p.probs, truth)
        elif name == "f1_micro":
            out[name] = counts.f1_micro()
        elif name == "f1_macro":
            out[name] = float(counts.per_class()[2][counts.macro_classes()].mean())
        elif name == "exact_match":
            out[name] = float((truth == predicted).all(axis=1).mean())
    return out


def per_class_report(p: MultiLabelPredictions, names: list[str]) -> dict[str, Any]:
    """Per-class AP, precision, recall, F1, support and threshold, and the overall scores, for
    ``eval_report.json``. Classes with no positive image are named in ``absent_classes`` (and
    one warning logs them); their AP is null and the macro scores leave them out."""
    n, c = p.num_images, len(names)
    truth, predicted = (p.truth, p.predicted) if n else (np.zeros((0, c), bool), np.zeros((0, c), bool))
    counts = Counts.of(truth, predicted)
    precision, recall, f1 = counts.per_class()
    ap = average_precisions(p.probs, truth) if n else np.full(c, np.nan)
    absent = [names[i] for i in range(c) if counts.support[i] == 0]
    if absent and n:
        logger.warning(
            "%d class(es) have no positive image in the evaluated set: %s%s; their AP is undefined and macro "
            "scores average over the %d class(es) present",
            len(absent), ", ".join(absent[:20]), f" and {len(absent) - 20} more (absent_classes in the report)"
            if len(absent) > 20 else "", c - len(absent),
        )
    macro = counts.macro_classes()
    return {
        "task": "multi_label",
        "num_images": n,
        **compute(list(MULTI_LABEL_METRICS), p),
        "macro_precision": float(precision[macro].mean()) if c else 0.0,
        "macro_recall": float(recall[macro].mean()) if c else 0.0,
        "labels_per_image": float(truth.sum() / max(n, 1)),
        "predicted_labels_per_image": float(predicted.sum() / max(n, 1)),
        "images_without_labels": int((~truth.any(axis=1)).sum()),
        "absent_classes": absent,
        "per_class": {
            names[i]: {
                "ap": None if np.isnan(ap[i]) else float(ap[i]),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(counts.support[i]),
                "predicted": int(counts.predicted[i]),
                "threshold": float(p.thresholds[i]),
            }
            for i in range(c)
        },
    }


def worst_images(p: MultiLabelPredictions, limit: int) -> np.ndarray:
    """The ``limit`` images whose probabilities are furthest from their labels (largest
    Σ_c |p − y|), worst first (ties: lower index first)."""
    error = np.abs(np.asarray(p.probs, dtype=np.float64) - np.asarray(p.targets, dtype=np.float64)).sum(axis=1)
    return np.argsort(-error, kind="stable")[:limit]


def keep_rows(labels: np.ndarray) -> np.ndarray:
    """Which rows of a batch's N×C targets are images (a padding row is ``IGNORE_VALUE`` throughout)."""
    labels = np.asarray(labels)
    return ~(labels == multi_label.IGNORE_VALUE).all(axis=-1)
