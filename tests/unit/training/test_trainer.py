"""trainer.py: the Trainer gets normalised float batches, reads the decode cache through its own
loaders, and mixes in training only."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from finetune import data
from finetune.data.transforms import BatchTransform
from finetune.recipe import AugmentConfig, recipe_from_dict
from finetune.training.arguments import training_arguments
from finetune.training.trainer import FinetuneTrainer
from tests.helpers.images import make_image_folder


def test_trainer_mixes_in_training_only(tiny_vit: Path, tmp_path: Path) -> None:
    """Training batches are mixed and scored against soft targets; evaluation sees the plain
    images and scores plain cross-entropy with the true classes."""
    from transformers import AutoModelForImageClassification

    from finetune.recipe import recipe_from_dict
    from finetune.training.arguments import training_arguments
    from finetune.training.losses import classification_loss
    from finetune.training.trainer import FinetuneTrainer

    model = AutoModelForImageClassification.from_pretrained(tiny_vit)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["pixel_values"].clone()), with_kwargs=True)
    recipe = recipe_from_dict({"description": "d", "model": {"name_or_path": str(tiny_vit)}, "data": {"dataset": "x"},
                               "output_dir": str(tmp_path / "o"),
                               "training": {"use_cpu": True, "eval_strategy": "no", "label_smoothing_factor": 0.1}})
    augment = AugmentConfig(crop_scale=None, hflip=False, mixup_alpha=1.0)
    trainer = FinetuneTrainer(model=model, args=training_arguments(recipe),
                              batch_transform=BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), augment))
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0, 1, 2, 1])
    plain = pixels.float() / 127.5 - 1

    model.eval()
    loss, outputs = trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels}, return_outputs=True)
    assert torch.allclose(seen[-1], plain, atol=1e-6)
    assert torch.allclose(loss, F.cross_entropy(outputs["logits"], labels))  # no smoothing, no mixing
    assert torch.equal(outputs["loss"], loss)

    model.train()
    loss = trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels})
    mixed = seen[-1]
    assert not torch.allclose(mixed, plain, atol=1e-3)
    with torch.no_grad():
        logits = model(pixel_values=mixed).logits
    # The mix the trainer drew, recovered from its images: mixed = λ·x + (1 − λ)·roll(x).
    diff = plain - plain.roll(1, 0)
    lam = float(((mixed - plain.roll(1, 0)) * diff).sum() / (diff * diff).sum())
    assert torch.allclose(mixed, lam * plain + (1 - lam) * plain.roll(1, 0), atol=1e-5)
    onehot = F.one_hot(labels, 3).float()
    targets = lam * onehot + (1 - lam) * onehot.roll(1, 0)
    assert torch.allclose(loss, classification_loss(logits, targets, smoothing=0.1), atol=1e-4)


def test_model_receives_normalised_float_pixels(tiny_vit: Path, tmp_path: Path) -> None:
    """The Trainer must feed normalised floats: a model given raw 0-255 integers would
    silently cast them and still train (this happened once)."""
    from transformers import AutoModelForImageClassification

    from finetune.data import BatchTransform

    model = AutoModelForImageClassification.from_pretrained(tiny_vit)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["pixel_values"]), with_kwargs=True)
    recipe = recipe_from_dict({"description": "d", "model": {"name_or_path": str(tiny_vit)},
                               "data": {"dataset": "x"}, "output_dir": str(tmp_path / "o"),
                               "training": {"use_cpu": True, "eval_strategy": "no"}})
    args = training_arguments(recipe)
    trainer = FinetuneTrainer(
        model=model, args=args, batch_transform=BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), None)
    )
    batch = {"pixel_values": torch.full((2, 3, 32, 32), 255, dtype=torch.uint8), "labels": torch.tensor([0, 1])}
    trainer.compute_loss(model, batch)
    assert seen[0].dtype == torch.float32 and torch.allclose(seen[0], torch.ones_like(seen[0]))


def test_trainer_reads_fastrows_through_its_public_loaders(tiny_vit: Path, tmp_path: Path) -> None:
    """Decoded splits go to the Trainer already in data.FastRows (no private loader override):
    its loaders then gather each batch from the cache, as uint8 pixels and labels."""
    from datasets import load_dataset
    from transformers import AutoImageProcessor, AutoModelForImageClassification


    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    raw = load_dataset(str(make_image_folder(tmp_path / "images", per_class=3, splits=("train",))))["train"]
    rows = data.FastRows.wrap(data.decode(raw, processor, "image", "label", None, "decoding").dataset)
    assert isinstance(rows, data.FastRows)
    recipe = recipe_from_dict({"description": "d", "model": {"name_or_path": str(tiny_vit)},
                               "data": {"dataset": "x"}, "output_dir": str(tmp_path / "o"),
                               "training": {"use_cpu": True, "per_device_train_batch_size": 4}})
    trainer = FinetuneTrainer(
        model=AutoModelForImageClassification.from_pretrained(tiny_vit), args=training_arguments(recipe),
        train_dataset=rows, eval_dataset=rows, data_collator=data.collate,
        batch_transform=data.BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), None),
    )
    for loader in (trainer.get_train_dataloader(), trainer.get_eval_dataloader(rows)):
        assert loader.dataset is rows
        batch = next(iter(loader))
        # The fixture's 24-px images are cached at their own size, below the model's 32 px.
        assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (4, 3, 24, 24)
        assert batch["labels"].shape == (4,)
