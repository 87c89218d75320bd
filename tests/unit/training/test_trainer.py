"""trainer.py: the Trainer gets normalised float batches, reads the decode cache through its own
loaders, and mixes in training only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


# ------------------------------------------------------------------------- multi-label


def _multi_label_recipe(tiny_vit: Path, tmp_path: Path, **training):
    return recipe_from_dict({"description": "d", "model": {"name_or_path": str(tiny_vit)}, "data": {"dataset": "x"},
                             "output_dir": str(tmp_path / "o"),
                             "training": {"use_cpu": True, "eval_strategy": "no", **training}})


def _multi_label_model(tiny_vit: Path):
    from transformers import AutoModelForImageClassification

    from finetune.data.multi_label import PROBLEM_TYPE

    return AutoModelForImageClassification.from_pretrained(tiny_vit, problem_type=PROBLEM_TYPE)


def test_multi_label_trainer_mixes_multi_hot_rows_and_scores_them_with_bce(tiny_vit: Path, tmp_path: Path) -> None:
    """Training: the mixed images' λ mixes the multi-hot rows (no one-hot conversion), scored by
    the smoothed binary cross-entropy; evaluation: plain binary cross-entropy with the true rows."""
    from finetune.training.losses import multi_label_loss

    model = _multi_label_model(tiny_vit)
    with torch.no_grad():
        model.classifier.weight.mul_(100)  # logits far from 0, so that the targets make a difference
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["pixel_values"].clone()), with_kwargs=True)
    args = training_arguments(_multi_label_recipe(tiny_vit, tmp_path, label_smoothing_factor=0.1))
    augment = AugmentConfig(crop_scale=None, hflip=False, mixup_alpha=1.0)
    trainer = FinetuneTrainer(model=model, args=args, batch_transform=BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), augment))
    assert trainer.multi_label
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=torch.float32)
    plain = pixels.float() / 127.5 - 1

    model.eval()
    loss, outputs = trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels}, return_outputs=True)
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(outputs["logits"], labels))

    model.train()
    loss = trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels})
    mixed = seen[-1]
    diff = plain - plain.roll(1, 0)
    lam = float(((mixed - plain.roll(1, 0)) * diff).sum() / (diff * diff).sum())
    assert torch.allclose(mixed, lam * plain + (1 - lam) * plain.roll(1, 0), atol=1e-5)
    with torch.no_grad():
        logits = model(pixel_values=mixed).logits
    targets = lam * labels + (1 - lam) * labels.roll(1, 0)
    assert 0.01 < lam < 0.99 and torch.allclose(loss, multi_label_loss(logits, targets, smoothing=0.1), atol=1e-5)
    assert not torch.allclose(loss, multi_label_loss(logits, labels, smoothing=0.1), atol=1e-2)
    assert not torch.allclose(loss, multi_label_loss(logits, targets), atol=1e-2)  # smoothed, once


def test_multi_label_training_loss_of_a_batch_is_the_mean_of_its_halves(tiny_vit: Path, tmp_path: Path) -> None:
    """Gradient accumulation and several processes see halves of the batch: their mean is the whole's loss."""
    model = _multi_label_model(tiny_vit)
    args = training_arguments(_multi_label_recipe(tiny_vit, tmp_path, label_smoothing_factor=0.1))
    trainer = FinetuneTrainer(model=model, args=args, batch_transform=BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), None))
    pixels = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=torch.float32)
    model.train()  # no dropout in the tiny ViT: the same logits for a row alone or in a batch
    whole = trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels})
    halves = [trainer.compute_loss(model, {"pixel_values": pixels[s], "labels": labels[s]}) for s in (slice(0, 3), slice(3, 6))]
    assert torch.allclose(whole, (halves[0] + halves[1]) / 2, atol=1e-5)


def test_a_single_label_teacher_for_a_multi_label_student_is_refused(tiny_vit: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageClassification

    from finetune.training.distill import Teacher, TeacherError

    args = training_arguments(_multi_label_recipe(tiny_vit, tmp_path))
    transform = BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), None)
    single = Teacher(AutoModelForImageClassification.from_pretrained(tiny_vit), "teach", 0.5, 2.0, (32, 32))
    with pytest.raises(TeacherError) as err:
        FinetuneTrainer(model=_multi_label_model(tiny_vit), args=args, batch_transform=transform, teacher=single)
    message = str(err.value)
    assert "\n" not in message and message.startswith("model.teacher: 'teach' is a single-label")
    multi = Teacher(_multi_label_model(tiny_vit), "teach", 0.5, 2.0, (32, 32), multi_label=True)
    with pytest.raises(TeacherError, match="is a multi-label"):
        FinetuneTrainer(model=AutoModelForImageClassification.from_pretrained(tiny_vit), args=args,
                        batch_transform=transform, teacher=multi)
    trainer = FinetuneTrainer(model=_multi_label_model(tiny_vit), args=args, batch_transform=transform, teacher=multi)
    assert trainer.teacher is multi


class _MultiHotImages(torch.utils.data.Dataset):
    """Random uint8 images with multi-hot float rows, as the multi-label decoded splits give them."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(3)
        self.pixels = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        self.labels = (torch.rand(n, 3, generator=g) > 0.5).float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


@pytest.mark.parametrize("strategy", ["lora", "partial"])
def test_lora_and_partial_multi_label_models_train_a_step_with_the_multi_label_loss(
    strategy: str, tiny_vit: Path, tmp_path: Path
) -> None:
    from finetune.data.multi_label import is_multi_label
    from finetune.models.classifier import load_model, load_processor
    from finetune.recipe import ModelConfig
    from finetune.training import losses

    cfg = ModelConfig(name_or_path=str(tiny_vit), strategy=strategy, unfreeze_last_n=1)
    loaded = load_model(cfg, ["a", "b", "c"], load_processor(cfg, None), multi_label=True)
    model = loaded.model
    assert is_multi_label(model.config)
    calls: list[torch.Tensor] = []
    original = losses.multi_label_loss

    def spy(logits, targets, *rest):
        calls.append(targets)
        return original(logits, targets, *rest)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = training_arguments(_multi_label_recipe(tiny_vit, tmp_path, max_steps=1, per_device_train_batch_size=4,
                                                  learning_rate=0.05, report_to=[], save_strategy="no"))
    trainer = FinetuneTrainer(model=model, args=args, train_dataset=_MultiHotImages(4), data_collator=data.collate,
                              batch_transform=BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), None))
    try:
        losses.multi_label_loss = spy
        result = trainer.train()
    finally:
        losses.multi_label_loss = original
    assert len(calls) == 1 and calls[0].shape == (4, 3) and calls[0].dtype == torch.float32
    assert 0 < result.training_loss < 2
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable and trainable != set(before)
    trainer.save_final_model()  # LoRA: the adapters merged, as pipeline() loads it
    saved = json.loads((tmp_path / "o" / "config.json").read_text())
    assert is_multi_label(saved) and len(saved["id2label"]) == 3


def test_multi_label_evaluation_with_views_scores_the_averaged_sigmoids(tiny_vit: Path, tmp_path: Path) -> None:
    from finetune.evaluation.tta import SIGMOID, TestTimeAugmentation

    model = _multi_label_model(tiny_vit).eval()
    args = training_arguments(_multi_label_recipe(tiny_vit, tmp_path))
    transform = BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), None)
    trainer = FinetuneTrainer(model=model, args=args, batch_transform=transform, tta=TestTimeAugmentation("hflip", SIGMOID))
    pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 1]], dtype=torch.float32)
    loss, outputs = trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels}, return_outputs=True)
    x = pixels.float() / 127.5 - 1
    with torch.no_grad():
        p = (model(pixel_values=x).logits.sigmoid() + model(pixel_values=x.flip(-1)).logits.sigmoid()) / 2
    assert torch.allclose(outputs["logits"].sigmoid(), p, atol=1e-5)
    assert torch.allclose(loss, F.binary_cross_entropy(p, labels), atol=1e-5)
    trainer.tta = TestTimeAugmentation("hflip")  # the softmax's: not what a multi-label model's views average
    with pytest.raises(ValueError, match="averaged as sigmoids"):
        trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels})
