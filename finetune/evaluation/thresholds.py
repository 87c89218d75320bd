"""Per-class decision thresholds of a multi-label model, each chosen to maximise that class's F1 on held-out images.

For one class, sort the held-out images by probability, highest first. Predicting the class
for every image at or above a threshold can only give as many different predictions as there
are distinct probabilities (plus predicting it for none), so the F1 of each is computed in one
pass of cumulative counts, and the best is taken. The threshold returned lies halfway between
the lowest probability it predicts the class for and the next lower distinct probability (0
below the lowest): it makes the same predictions on these images as any value in that gap,
and the middle leaves new images the most room on either side.

Ties: among cut points with the same best F1, the one predicting the class for the most
images (the lowest threshold) is taken, favouring recall. A class with no positive image in
the held-out piece has no F1 to maximise (it is 0 for every threshold) and keeps
``multi_label.DEFAULT_THRESHOLD``; so does every class when there is no held-out piece.
The thresholds are fitted on the validation piece, never on the eval split (whose numbers
they would make optimistic).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from finetune.data import multi_label


@dataclass
class ThresholdFit:
    """The thresholds (one per class), and for each whether it was tuned and its F1 there."""

    values: np.ndarray
    tuned: np.ndarray  # bool per class: False where the class had no positive image
    f1: np.ndarray  # the F1 at the chosen threshold on the held-out images (NaN: not tuned)
    num_images: int = 0
    #: Why no threshold was tuned, when none was (no held-out images).
    reason: str | None = None
    untuned: list[int] = field(default_factory=list)


def best_threshold(probs: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) of one class: the F1-maximising cut of ``probs`` (N) for the boolean
    ``truth`` (N, with at least one positive); ties go to the lowest threshold."""
    probs = np.asarray(probs, dtype=np.float64)
    truth = np.asarray(truth, dtype=bool)
    order = np.argsort(-probs, kind="stable")
    sorted_p, sorted_y = probs[order], truth[order]
    # The last index of each run of equal probabilities: where a threshold can cut.
    cuts = np.flatnonzero(np.append(sorted_p[1:] < sorted_p[:-1], True))
    tp = np.cumsum(sorted_y)[cuts].astype(np.float64)
    predicted = (cuts + 1).astype(np.float64)
    positives = float(sorted_y.sum())
    f1 = 2 * tp / (predicted + positives)
    best = float(f1.max())
    # The lowest threshold among the best: the last cut (most predicted) reaching it.
    k = int(np.flatnonzero(f1 >= best - 1e-12)[-1])
    below = float(sorted_p[cuts[k] + 1]) if cuts[k] + 1 < len(sorted_p) else 0.0
    return (float(sorted_p[cuts[k]]) + below) / 2, best


def tune(probs: np.ndarray, targets: np.ndarray) -> ThresholdFit:
    """Each class's F1-maximising threshold on held-out ``probs`` (N × C) and multi-hot
    ``targets`` (N × C); ``DEFAULT_THRESHOLD`` for a class without a positive image."""
    probs = np.asarray(probs, dtype=np.float64)
    truth = np.asarray(targets) > 0.5
    classes = probs.shape[1]
    values = np.full(classes, multi_label.DEFAULT_THRESHOLD)
    f1 = np.full(classes, np.nan)
    tuned = truth.any(axis=0) if len(probs) else np.zeros(classes, dtype=bool)
    for c in np.flatnonzero(tuned):
        values[c], f1[c] = best_threshold(probs[:, c], truth[:, c])
    reason = "the validation piece has no images" if len(probs) == 0 else None
    return ThresholdFit(values, tuned, f1, len(probs), reason, np.flatnonzero(~tuned).tolist())


def fixed(classes: int, reason: str) -> ThresholdFit:
    """Every class at ``DEFAULT_THRESHOLD``, untuned, saying why."""
    return ThresholdFit(
        np.full(classes, multi_label.DEFAULT_THRESHOLD), np.zeros(classes, dtype=bool), np.full(classes, np.nan), 0,
        reason, list(range(classes)),
    )
