"""Class balance, and images far from every class centre (outliers).

A class centre is the mean of the training split's normalised features of that class,
normalised. An image's centre similarity is its cosine similarity to the nearest centre:
an image unlike every class (a blank frame, a scanned form among photos, an image of a class
the data set does not have) has a low one. Images below the lower "far out" fence of the
training split's own similarities, Q1 - 3·IQR (Tukey 1977), are flagged; the report lists
the lowest in every part whether flagged or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from finetune.probe.neighbours import normalise

#: Tukey's multiple of the interquartile range for a "far out" value.
FENCE_IQR = 3.0


def class_centres(features: torch.Tensor, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """(classes, dimension): each class's mean normalised feature, normalised; a class
    without images has a zero centre, similar to nothing. ``labels``: class indices, or
    multi-hot rows (multi-label data: an image counts for each of its classes)."""
    z = normalise(features)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return normalise(torch.as_tensor(labels, dtype=z.dtype).t() @ z)
    centres = torch.zeros(num_classes, z.shape[1])
    index = torch.as_tensor(labels, dtype=torch.long)
    centres.index_add_(0, index, z)
    return normalise(centres)


@dataclass
class Centres:
    """Every image of a part against the class centres."""

    similarity: np.ndarray  # to the nearest centre
    nearest_class: np.ndarray
    own: np.ndarray  # to the centre of its given class (multi-label: the nearest of its classes; NaN for none)


def against(features: torch.Tensor, labels: np.ndarray, centres: torch.Tensor) -> Centres:
    sims = (normalise(features) @ centres.t()).double().numpy()
    if sims.shape[0] == 0:
        empty = np.zeros(0)
        return Centres(empty, empty.astype(np.int64), empty)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        given = np.where(labels > 0, sims, -np.inf).max(axis=1)
        own = np.where(np.isfinite(given), given, np.nan)
    else:
        own = sims[np.arange(len(sims)), labels]
    return Centres(sims.max(axis=1), sims.argmax(axis=1), own)


def fence(training_similarity: np.ndarray) -> float:
    """The lower far-out fence Q1 - 3·IQR of the training split's centre similarities."""
    if len(training_similarity) == 0:
        return -np.inf
    q1, q3 = np.percentile(training_similarity, [25, 75])
    return float(q1 - FENCE_IQR * (q3 - q1))


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
