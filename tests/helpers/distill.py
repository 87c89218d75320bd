"""Teachers for knowledge distillation (tiny models of the test classes), and the student's recipe, trained in this process."""

from __future__ import annotations

from pathlib import Path

from finetune.recipe import recipe_from_dict
from tests.helpers.images import CLASSES
from tests.helpers.models import make_tiny_resnet, make_tiny_vit


def with_classes(path: Path, classes: list[str]) -> Path:
    """A tiny model saved as a classifier of ``classes`` (as a finetune output folder is)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    config.id2label = dict(enumerate(classes))
    config.label2id = {c: i for i, c in enumerate(classes)}
    config.save_pretrained(path)
    return path


def imagenet_normalised(path: Path) -> Path:
    """The model at ``path`` given a ConvNeXt processor with ImageNet's normalisation."""
    from transformers import ConvNextImageProcessor

    ConvNextImageProcessor(
        size={"shortest_edge": 32}, crop_pct=0.875, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    ).save_pretrained(path)
    return path


def make_teachers(root: Path) -> dict[str, Path]:
    """Tiny teachers under ``root``, by name: other normalisations and sizes, the classes in another order, other classes."""
    return {
        # ImageNet normalisation (the student's is 0.5 / 0.5), the student's 32 px.
        "resnet": imagenet_normalised(with_classes(make_tiny_resnet(root / "resnet", num_labels=3), CLASSES)),
        # The student's normalisation, a larger input: 48 px.
        "vit48": with_classes(make_tiny_vit(root / "vit48", image_size=48, num_labels=3), CLASSES),
        # The same classes in another order.
        "shuffled": with_classes(make_tiny_resnet(root / "shuffled", num_labels=3), CLASSES[::-1]),
        "other": with_classes(make_tiny_resnet(root / "other", num_labels=3), ["cat", "dog", "red"]),
    }


def student_recipe(model: Path, images: Path, out: Path, **model_keys) -> dict:
    """The student's recipe, with these model keys (the teacher's among them)."""
    return {
        "description": "distillation test",
        "model": {"name_or_path": str(model), "strategy": "full", **model_keys},
        "data": {"dataset": str(images), "augment": {"crop_scale": [0.5, 1.0], "hflip": True, "preset": "trivial_augment"}},
        "training": {
            "num_train_epochs": 2, "learning_rate": 5e-3, "per_device_train_batch_size": 8, "seed": 0,
            "use_cpu": True, "disable_tqdm": True, "logging_steps": 1, "save_total_limit": None,
        },
        "metrics": ["accuracy"],
        "output_dir": str(out),
    }


def train_recipe(raw: dict) -> dict:
    """The recipe trained in this process; its results."""
    from finetune.training import train as train_lib

    return train_lib.train(recipe_from_dict(raw))
