"""A classifier loaded for a linear probe, an image folder decoded for it, and the batch transform of its processor."""

from __future__ import annotations

from pathlib import Path

from finetune import data
from finetune.models import classifier as model_lib
from finetune.recipe import ModelConfig

NAMES = ["red", "green", "blue"]


def load_probe_model(path: Path, strategy: str = "linear_probe"):
    """A model loaded for a strategy (the linear probe by default) with the test classes, and its processor."""
    cfg = ModelConfig(name_or_path=str(path), strategy=strategy)
    processor = model_lib.load_processor(cfg, None)
    return model_lib.load_model(cfg, NAMES, processor), processor


def decode_folder(folder: Path, processor):
    """An image folder's train split decoded for ``processor``."""
    from datasets import load_dataset

    raw = load_dataset(str(folder))["train"]
    return data.decode(raw, processor, "image", "label", None, "decoding").dataset


def batch_transform(processor) -> data.BatchTransform:
    """The processor's batch transform, without augmentation."""
    return data.BatchTransform.for_processor(processor, None)
