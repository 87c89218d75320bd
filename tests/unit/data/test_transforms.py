"""Mixup and CutMix of training batches (data/transforms.py BatchMix): soft targets, seeding, and training only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from finetune.data.transforms import BatchMix, BatchTransform
from finetune.recipe import AugmentConfig

N, C = 8, 3


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])


def _kinds(mix: BatchMix, pixels, labels, seeds) -> list[str]:
    """What each seed did to the batch: 'mixup', 'cutmix' or 'none'."""
    out = []
    for seed in seeds:
        mixed, targets = mix(pixels.clone(), labels, C, seed=seed)
        if torch.equal(targets, F.one_hot(labels, C).float()):
            assert torch.equal(mixed, pixels)
            out.append("none")
        elif (mixed == pixels).all(dim=1).any():  # some pixels exactly untouched: a pasted box
            out.append("cutmix")
        else:
            out.append("mixup")
    return out


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_soft_targets_sum_to_one_and_are_reproducible_per_seed(batch, mixup, cutmix) -> None:
    pixels, labels = batch
    mix = BatchMix(mixup, cutmix)
    before = torch.random.get_rng_state()
    mixed, targets = mix(pixels.clone(), labels, C, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before), "the global generator must be left as it was"
    assert targets.shape == (N, C) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(N)) and (targets >= 0).all()
    # Each target mixes the image's own class and its neighbour's (v2 pairs consecutive images).
    own = targets.gather(1, labels[:, None])[:, 0]
    assert (own >= 0).all() and not torch.equal(targets, F.one_hot(labels, C).float())
    again = mix(pixels.clone(), labels, C, seed=7)
    assert torch.equal(mixed, again[0]) and torch.equal(targets, again[1])
    other = mix(pixels.clone(), labels, C, seed=8)
    assert not torch.equal(mixed, other[0])


def test_mixup_blends_images_in_the_proportion_of_their_targets(batch) -> None:
    pixels, labels = batch
    mixed, targets = BatchMix(mixup_alpha=0.4)(pixels.clone(), labels, C, seed=3)
    onehot = F.one_hot(labels, C).float()
    assert labels[0] != labels[-1]  # image 0 is mixed with the last one, of another class:
    lam = float(targets[0, labels[0]])  # its own class's share is the mixing weight
    assert torch.allclose(targets, lam * onehot + (1 - lam) * onehot.roll(1, 0), atol=1e-6)
    assert torch.allclose(mixed, lam * pixels + (1 - lam) * pixels.roll(1, 0), atol=1e-5)


def test_cutmix_pastes_a_box_whose_area_is_the_targets_share(batch) -> None:
    pixels, labels = batch
    mixed, targets = BatchMix(cutmix_alpha=1.0)(pixels.clone(), labels, C, seed=3)
    pasted = (mixed != pixels).any(dim=1)  # N×H×W: where a neighbour's pixels went
    assert torch.equal(mixed[:, :, ~pasted[0]], pixels[:, :, ~pasted[0]])
    assert torch.equal(mixed[:, :, pasted[0]], pixels.roll(1, 0)[:, :, pasted[0]])
    share = pasted[0].float().mean()
    onehot = F.one_hot(labels, C).float()
    assert torch.allclose(targets, (1 - share) * onehot + share * onehot.roll(1, 0), atol=1e-6)


def test_both_on_choose_one_per_batch_and_mix_prob_leaves_some_batches_alone(batch) -> None:
    pixels, labels = batch
    kinds = _kinds(BatchMix(0.4, 1.0, prob=0.5), pixels, labels, range(40))
    assert {"mixup", "cutmix", "none"} <= set(kinds)
    assert 8 <= kinds.count("none") <= 32
    assert set(_kinds(BatchMix(0.4, 0.0), pixels, labels, range(10))) == {"mixup"}
    assert set(_kinds(BatchMix(0.4, 0.0, prob=0.0), pixels, labels, range(5))) == {"none"}


def test_channels_last_batches_stay_channels_last(batch) -> None:
    pixels, labels = batch
    mixed, _ = BatchMix(0.4, 1.0)(pixels.contiguous(memory_format=torch.channels_last), labels, C, seed=1)
    assert mixed.is_contiguous(memory_format=torch.channels_last)


def test_batch_transform_builds_the_mix_from_the_recipe_and_describes_it() -> None:
    plain = BatchTransform([0.5] * 3, [0.5] * 3, (16, 16), AugmentConfig(crop_scale=None, hflip=False))
    assert plain.mix is None and plain.describe() == "none"
    mixing = BatchTransform([0.5] * 3, [0.5] * 3, (16, 16), AugmentConfig(mixup_alpha=0.2, mix_prob=0.5))
    assert isinstance(mixing.mix, BatchMix) and mixing.mix.prob == 0.5
    assert "mixup (α=0.2)" in mixing.describe() and "random resized crop" in mixing.describe()
    assert mixing.without_augmentation().mix is None


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
