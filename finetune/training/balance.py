"""Class imbalance: balanced class weights (multi-label: positive weights) for the loss, and a class-balanced training sampler, all from the train piece's labels alone."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from finetune.data.multi_label import multi_hot
from finetune.utils.errors import UserError


def train_labels(dataset: Any) -> np.ndarray:
    """The class index of each image of a decoded split (bare, or in ``data.FastRows``)."""
    split = getattr(dataset, "dataset", dataset)  # FastRows keeps the decoded split here
    return np.asarray(split["labels"][:], dtype=np.int64)


def train_targets(dataset: Any, num_classes: int) -> np.ndarray:
    """The multi-hot rows (N × ``num_classes``, float32) of a multi-label decoded split (bare,
    or in ``data.FastRows``), whose label column holds each image's list of class indices
    (or, already, its multi-hot row: floats)."""
    split = getattr(dataset, "dataset", dataset)
    values = split["labels"][:]
    if isinstance(values, np.ndarray) and values.dtype.kind == "f" and values.ndim == 2:
        return values.astype(np.float32, copy=False)
    return multi_hot(([int(c) for c in np.asarray(v).reshape(-1)] for v in values), num_classes)


def positive_weights(targets: np.ndarray, class_names: Sequence[str] | None = None) -> torch.Tensor:
    """``data.class_weights: balanced`` for a multi-label loss: the weight of each class's
    positive term, negatives / positives of the class over the training images (the
    ``pos_weight`` of torch's ``BCEWithLogitsLoss``), so that a class's positive images weigh
    as much in its binary loss as its negative ones. A class on every training image keeps 1:
    there is no negative to balance against. A class without a positive image has no weight
    to give: a UserError naming it (by ``class_names``, else by index)."""
    targets = np.asarray(targets, dtype=np.float64)
    positives = targets.sum(axis=0)
    negatives = len(targets) - positives
    empty = np.flatnonzero(positives == 0)
    if len(empty):
        name = class_names[int(empty[0])] if class_names is not None else str(int(empty[0]))
        raise UserError(
            f"data.class_weights: class '{name}' has no positive image in the training split, so it has no "
            "positive weight; remove data.class_weights, or give the class some training images"
        )
    weights = np.where(negatives > 0, negatives / np.maximum(positives, 1), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """scikit-learn's ``compute_class_weight("balanced")``: n_images / (n_classes × count of
    the class), so that every class weighs as much in the loss in all, and the weights
    average 1 over the images. Every class must have an image
    (``finetune.training.prepared_data.check_prepared`` checks that first)."""
    from sklearn.utils.class_weight import compute_class_weight

    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
    return torch.tensor(weights, dtype=torch.float32)


class BalancedSampler(torch.utils.data.WeightedRandomSampler):
    """Draws ``len(labels)`` images an epoch, with replacement, each class with equal chance
    (an image's weight is 1 / its class's count: scikit-learn's
    ``compute_sample_weight("balanced")``, up to a constant).

    The draws of epoch ``e`` depend on ``seed`` and ``e`` alone, as accelerate's seedable
    sampler does for shuffled epochs: the Trainer and accelerate call :meth:`set_epoch`
    before each epoch (also after a resume, and on every process, which all draw the same
    order and each take their share of its batches), so a resumed or multi-process run
    sees the batches an uninterrupted single-process run sees.
    """

    def __init__(self, labels: np.ndarray, seed: int) -> None:
        from sklearn.utils.class_weight import compute_sample_weight

        if np.ndim(labels) != 1:
            # Multi-label: an image has several classes (or none), so "its class's count" is
            # undefined; FinetuneTrainer refuses data.sampler for such data in one line.
            raise ValueError("BalancedSampler draws by each image's one class; multi-label data has none")

        weights = torch.as_tensor(compute_sample_weight("balanced", labels), dtype=torch.float64)
        super().__init__(weights, num_samples=len(labels), replacement=True)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from super().__iter__()
        self.epoch += 1  # as accelerate's sampler: a second pass without set_epoch draws anew
