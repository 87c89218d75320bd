"""The recipe's pretrained backbone run once over decoded splits: the features that ``finetune inspect`` fits and compares, and that the eval-leak check (``data.leaked_eval``) compares.

The backbone is the model the recipe names, with its pretrained weights (never a
fine-tuned one: a model trained on the labels has fitted their mistakes too, and would
vouch for them). Its features are the input of its last Linear layer, computed by the
cached feature pass (``finetune.probe.features``), on ONNX Runtime on a CPU where that pays
(``finetune.probe.engine``).
With ``mirror`` each image is also passed mirrored left to right and the two features are
averaged: a second view of every image, for data whose classes do not change in a mirror
(the recipe's ``data.augment.hflip``); a mirrored copy of an image then has the same
features as the image.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from finetune import data
from finetune.models.classifier import load_model
from finetune.probe.engine import FeatureRuntime
from finetune.probe.features import compute_features
from finetune.recipe import ModelConfig

logger = logging.getLogger("finetune")


class Mirrored:
    """A batch transform whose output is the given one's, mirrored left to right."""

    def __init__(self, transform: data.BatchTransform) -> None:
        self.transform = transform

    def __call__(self, pixels: torch.Tensor, train: bool) -> torch.Tensor:
        return self.transform(pixels, train=train).flip(-1)


def backbone_config(model: ModelConfig) -> ModelConfig:
    """The recipe's model as a frozen, pretrained backbone: its name, revision and code
    settings, nothing of its training strategy (a LoRA, a teacher, training from scratch)."""
    return ModelConfig(
        name_or_path=model.name_or_path,
        revision=model.revision,
        trust_remote_code=model.trust_remote_code,
        strategy="linear_probe",
        feature_runtime=model.feature_runtime,
    )


@dataclass
class BackboneFeatures:
    """Features of several decoded splits, and how they were computed (for the log and the report)."""

    features: list[torch.Tensor]
    runtime: str
    seconds: float
    images: int
    mirror: bool


def backbone_features(
    model_cfg: ModelConfig,
    class_names: list[str],
    processor: Any,
    datasets: list[Any],
    *,
    mirror: bool,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    args: Any = None,
) -> BackboneFeatures:
    """The pretrained backbone's features of every row of each decoded split in ``datasets``
    (in order), each (rows, dimension), on the CPU. ``args``: a run's TrainingArguments (its
    precision and progress-bar settings), or None."""
    loaded = load_model(backbone_config(model_cfg), class_names, processor)
    transform = data.BatchTransform.for_processor(processor, None)
    runtime = FeatureRuntime(model_cfg.feature_runtime)
    start = time.perf_counter()
    out, images = [], 0
    try:
        for dataset in datasets:
            views = [transform, Mirrored(transform)] if mirror else [transform]
            computed = [
                compute_features(loaded.model, dataset, view, device=device, batch_size=batch_size, args=args, runtime=runtime).features
                for view in views
            ]
            images += len(dataset) * len(views)
            out.append(sum(computed[1:], computed[0]) / len(computed) if len(computed) > 1 else computed[0])
    finally:
        del loaded
    seconds = time.perf_counter() - start
    return BackboneFeatures(out, runtime.chosen or "torch", seconds, images, mirror)
