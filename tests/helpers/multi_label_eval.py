"""Multi-label evaluation inputs made on the spot: probabilities and multi-hot labels, a decoded eval set, tiny multi-label models and the Trainer that scores them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def fake_multi_label(num_images: int, num_classes: int, seed: int = 0, positive: float = 0.3, skill: float = 0.5):
    """(probabilities N×C float32, multi-hot targets N×C uint8): each class positive with
    probability ``positive``; the probabilities lean towards the truth by ``skill``."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((num_images, num_classes)) < positive).astype(np.uint8)
    probs = np.clip((1 - skill) * rng.random((num_images, num_classes)) + skill * targets, 0, 1).astype(np.float32)
    return probs, targets


def predictions(num_images: int, num_classes: int, seed: int = 0, thresholds=None, **kwargs):
    from finetune.evaluation.multi_label_metrics import MultiLabelPredictions

    probs, targets = fake_multi_label(num_images, num_classes, seed, **kwargs)
    values = np.full(num_classes, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    return MultiLabelPredictions(probs, targets, values)


def eval_images(num_images: int, size: int = 16, seed: int = 0):
    """A decoded eval set (uint8 3×size×size pixels, numpy format, like data.decode's)."""
    from datasets import Array3D, Dataset, Features

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (num_images, 3, size, size), dtype=np.uint8)
    dataset = Dataset.from_dict({"pixel_values": pixels}, features=Features({"pixel_values": Array3D((3, size, size), "uint8")}))
    dataset.set_format("numpy", columns=["pixel_values"])
    return dataset


def multi_label_model(path: Path):
    """A tiny model from tests/conftest.py, made multi-label by hand (as load_model(multi_label=True) does)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from finetune.data import multi_label

    model = AutoModelForImageClassification.from_pretrained(path)
    model.config.problem_type = multi_label.PROBLEM_TYPE
    return model, AutoImageProcessor.from_pretrained(path)


def rows(num_images: int, num_classes: int, seed: int, size: int = 32, positive: float = 0.4) -> list[dict]:
    """Decoded rows as a multi-label split gives them: uint8 pixels and a float32 multi-hot row."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_images):
        labels = (rng.random(num_classes) < positive).astype(np.float32)
        pixels = rng.integers(0, 256, (3, size, size), dtype=np.uint8)
        out.append({"pixel_values": torch.from_numpy(pixels), "labels": torch.from_numpy(labels)})
    return out


def trainer(model, processor, out: Path, accumulator, tta=None, batch_size: int = 8):
    """A FinetuneTrainer that scores as finish and ``finetune eval`` do (CPU, batch metrics)."""
    from transformers import TrainingArguments

    from finetune import data
    from finetune.training.trainer import FinetuneTrainer

    args = TrainingArguments(
        output_dir=str(out), report_to="none", per_device_eval_batch_size=batch_size, batch_eval_metrics=True,
        remove_unused_columns=False, label_names=["labels"], use_cpu=True,
    )
    return FinetuneTrainer(
        model=model, args=args, data_collator=data.collate, compute_metrics=accumulator,
        batch_transform=data.BatchTransform.for_processor(processor, None), tta=tta, processing_class=processor,
    )
