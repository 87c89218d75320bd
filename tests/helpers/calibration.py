"""An over-confident classifier by construction, for the calibration tests: a tiny ViT whose logits are SCALE × those of a model that the generated labels make calibrated.

Random colour images go through a tiny ViT whose head is scaled so that its logits z spread
over a few units; each image's label is drawn from softmax(z), so a model with logits z is
calibrated on these images (in expectation) and one with logits SCALE × z is over-confident,
with SCALE the temperature that undoes it. The saved model is the over-confident one; a run
with learning rate 0 leaves it as it is, so what the calibration finds can be checked
against SCALE.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.helpers.models import make_tiny_vit

SCALE = 4.0
CLASSES = ["c0", "c1", "c2"]  # sorted as the data package orders an image folder's classes


def _images(rng: np.random.Generator, count: int) -> list[Image.Image]:
    out = []
    for _ in range(count):
        colour = rng.integers(0, 256, 3)
        noise = rng.integers(-60, 60, (32, 32, 3))
        out.append(Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)))
    return out


def _logits(model, processor, images: list[Image.Image]) -> np.ndarray:
    with torch.no_grad():
        return model(**processor(images=images, return_tensors="pt")).logits.numpy().astype(np.float64)


def overconfident_model_and_data(base: Path, train: int = 300, test: int = 300, seed: int = 0) -> tuple[Path, Path]:
    """(the over-confident model's folder, an image folder train/ and test/ labelled from the calibrated one)."""
    from scipy.special import softmax
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder = make_tiny_vit(base / "vit", num_labels=len(CLASSES))
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    rng = np.random.default_rng(seed)
    images = {"train": _images(rng, train), "test": _images(rng, test)}
    z = {split: _logits(model, processor, imgs) for split, imgs in images.items()}
    spread = 1.5 / np.concatenate(list(z.values())).std()  # the calibrated model: logits z × spread
    root = base / "images"
    for split, imgs in images.items():
        probs = softmax(z[split] * spread, axis=1)
        for i, (image, p) in enumerate(zip(imgs, probs)):
            label = CLASSES[rng.choice(len(CLASSES), p=p)]
            (root / split / label).mkdir(parents=True, exist_ok=True)
            image.save(root / split / label / f"{split}_{i}.png")
    with torch.no_grad():
        model.classifier.weight.mul_(spread * SCALE)
        model.classifier.bias.mul_(spread * SCALE)
    model.config.id2label = dict(enumerate(CLASSES))
    model.config.label2id = {c: i for i, c in enumerate(CLASSES)}
    out = base / "overconfident"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    shutil.rmtree(folder)
    return out, root


def recipe_extra(**more) -> dict:
    """write_recipe's changes for a run that leaves the model as it is (learning rate 0) and
    holds half of train out as the validation piece."""
    extra = {
        "training": {
            "num_train_epochs": 1, "learning_rate": 0.0, "per_device_train_batch_size": 50, "seed": 0,
            "use_cpu": True, "disable_tqdm": True,
        },
        "data__validation_fraction": 0.5,
        "metrics": ["accuracy", "f1"],
    }
    extra.update(more)
    return extra
