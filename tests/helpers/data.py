"""Small labelled data sets built in memory, and the data section of a recipe."""

from __future__ import annotations

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature

from finetune.recipe import DataConfig
from tests.helpers.images import CLASSES, class_image


def cfg(**kw) -> DataConfig:
    """A data section (dataset 'x' unless given) with these keys."""
    return DataConfig(dataset=kw.pop("dataset", "x"), **kw)


def labelled(n_per_class: list[int], seed: int = 0) -> DatasetDict:
    """Tiny images in memory, ``n_per_class[c]`` of class c in train, every third of them in test."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c, n in enumerate(n_per_class):
        for _ in range(n):
            images.append(class_image(CLASSES[c % 3], rng, size=8))
            labels.append(c)
    names = [f"c{i}" for i in range(len(n_per_class))]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
    train = Dataset.from_dict({"image": images, "label": labels}, features=features)
    test = Dataset.from_dict({"image": images[::3], "label": labels[::3]}, features=features)
    return DatasetDict(train=train, test=test)
