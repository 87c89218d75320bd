"""Class imbalance: balanced class weights for the loss, and a class-balanced training sampler, both from the train piece's labels alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def train_labels(dataset: Any) -> np.ndarray:
    """The class index of each image of a decoded split (bare, or in ``data.FastRows``)."""
    split = getattr(dataset, "dataset", dataset)  # FastRows keeps the decoded split here
    return np.asarray(split["labels"][:], dtype=np.int64)


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

        weights = torch.as_tensor(compute_sample_weight("balanced", labels), dtype=torch.float64)
        super().__init__(weights, num_samples=len(labels), replacement=True)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from super().__iter__()
        self.epoch += 1  # as accelerate's sampler: a second pass without set_epoch draws anew
