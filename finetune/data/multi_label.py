"""What every stage agrees on for multi-label data: how a run knows it is one, how its targets look, where its decision thresholds live.

A multi-label run's label column holds, for each image, the list of its classes
(``Sequence(ClassLabel(names))`` in every split); its batches carry ``labels`` as float32
multi-hot rows (N × C, 1.0 where the image has the class); its model's config says
``problem_type: "multi_label_classification"`` (so ``pipeline("image-classification")``
applies a sigmoid, not a softmax), and holds the per-class decision thresholds tuned on the
validation piece under :data:`THRESHOLDS_KEY`, by class name. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: The config's ``problem_type`` of a multi-label model (transformers' own name).
PROBLEM_TYPE = "multi_label_classification"
#: What separates the classes of one image in a CSV or JSONL text label column
#: ("cat;dog"), unless ``data.label_separator`` says otherwise.
DEFAULT_SEPARATOR = ";"
#: The config attribute holding the decision thresholds: {class name: threshold}.
THRESHOLDS_KEY = "label_thresholds"
#: A class's threshold when none was tuned (no validation piece).
DEFAULT_THRESHOLD = 0.5
#: A padding row of a streamed evaluation (every entry): not scored.
IGNORE_VALUE = -100.0


def is_multi_label(config: Any) -> bool:
    """Whether a model config (a transformers config, or config.json as a dict) is multi-label."""
    value = config.get("problem_type") if isinstance(config, Mapping) else getattr(config, "problem_type", None)
    return value == PROBLEM_TYPE


def multi_hot(label_lists: Iterable[Sequence[int]], num_labels: int) -> np.ndarray:
    """Class-index lists → float32 multi-hot rows (N × ``num_labels``)."""
    lists = list(label_lists)
    out = np.zeros((len(lists), num_labels), dtype=np.float32)
    for row, classes in enumerate(lists):
        if classes:
            out[row, np.asarray(list(classes), dtype=np.int64)] = 1.0
    return out


def thresholds(config: Any, class_names: Sequence[str]) -> np.ndarray:
    """The per-class decision thresholds in ``class_names``' order (:data:`DEFAULT_THRESHOLD`
    for a class the config holds none for)."""
    stored = config.get(THRESHOLDS_KEY) if isinstance(config, Mapping) else getattr(config, THRESHOLDS_KEY, None)
    stored = stored or {}
    return np.asarray([float(stored.get(name, DEFAULT_THRESHOLD)) for name in class_names], dtype=np.float64)


def set_thresholds(config: Any, class_names: Sequence[str], values: Sequence[float]) -> None:
    """Store per-class thresholds on a transformers config (saved with it in config.json)."""
    setattr(config, THRESHOLDS_KEY, {name: float(v) for name, v in zip(class_names, values)})
