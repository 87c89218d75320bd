"""Extra evaluation sets: test splits of the training classes' colours or of a class of their own, and a recipe naming them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.cli import write_recipe
from tests.helpers.images import CLASSES, class_image, make_image_folder


def domain_folder(root: Path, classes: list[str], per_class: int = 4, seed: int = 7) -> Path:
    """A test split whose images have the training classes' colours, or a class of its own."""
    rng = np.random.default_rng(seed)
    for name in classes:
        folder = root / "test" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = class_image(name, rng) if name in CLASSES else Image.new("RGB", (24, 24), (128, 0, 128))
            image.save(folder / f"{name}_{i}.png")
    return root


def eval_sets_recipe(tmp_path: Path, tiny_vit: Path, eval_sets: dict) -> Path:
    """A one-epoch recipe of the tiny ViT on generated images, with these extra evaluation sets."""
    images = make_image_folder(tmp_path / "images", per_class=6)
    return write_recipe(
        tmp_path / "r.json", tiny_vit, images, tmp_path / "out",
        data={"dataset": str(images), "eval_sets": eval_sets, "augment": {"crop_scale": None}},
        training={"num_train_epochs": 1, "per_device_train_batch_size": 8, "use_cpu": True, "disable_tqdm": True, "seed": 0},
    )
