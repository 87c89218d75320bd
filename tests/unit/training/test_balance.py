"""balance.py: class imbalance: balanced class weights in the loss, and the seeded class-balanced sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finetune.training.balance import BalancedSampler, class_weights, train_labels

LABELS = np.array([0] * 90 + [1] * 30 + [2] * 6)


def test_class_weights_are_sklearns_balanced_weights() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    weights = class_weights(LABELS, 3)
    hand = torch.tensor([126 / (3 * 90), 126 / (3 * 30), 126 / (3 * 6)])
    assert torch.allclose(weights, hand)
    assert np.allclose(weights.numpy(), compute_class_weight("balanced", classes=np.arange(3), y=LABELS))
    assert float(weights[torch.from_numpy(LABELS)].mean()) == pytest.approx(1.0)  # the loss keeps its scale


def test_class_weights_count_classes_the_head_has_but_train_lacks_as_errors() -> None:
    with pytest.raises(ValueError):
        class_weights(np.array([0, 0, 1]), 3)  # train.py stops earlier, naming the empty class


def test_sampler_draws_classes_evenly() -> None:
    drawn = LABELS[list(BalancedSampler(LABELS, seed=0))]
    assert len(drawn) == len(LABELS)
    counts = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.all(np.abs(counts - 1 / 3) < 0.12), counts  # against 0.71 / 0.24 / 0.05 without it
    many = np.concatenate([LABELS[list(BalancedSampler(LABELS, seed=s))] for s in range(20)])
    assert np.allclose(np.bincount(many) / len(many), 1 / 3, atol=0.03)


def test_sampler_order_is_a_function_of_seed_and_epoch() -> None:
    a, b = BalancedSampler(LABELS, seed=3), BalancedSampler(LABELS, seed=3)
    first = list(a)
    second = list(a)  # the next epoch without set_epoch: another order
    assert first != second
    b.set_epoch(1)  # a resumed run that starts in epoch 1
    assert list(b) == second
    b.set_epoch(0)
    assert list(b) == first
    assert list(BalancedSampler(LABELS, seed=4)) != first
    before = torch.random.get_rng_state()
    list(a)
    assert torch.equal(torch.random.get_rng_state(), before), "the global generator must be left alone"


def _rows(tmp_path: Path, tiny_vit: Path, per_class: dict[str, int]):
    from datasets import load_dataset
    from transformers import AutoImageProcessor

    from finetune import data
    from tests.helpers.images import make_image_folder

    images = make_image_folder(tmp_path / "images", per_class=max(per_class.values()), splits=("train",))
    for name, keep in per_class.items():  # make it imbalanced
        for extra in sorted((images / "train" / name).glob("*.png"))[keep:]:
            extra.unlink()
    raw = load_dataset(str(images))["train"]
    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    return data.FastRows.wrap(data.decode(raw, processor, "image", "label", None, "decoding").dataset)


def _trainer(tiny_vit: Path, tmp_path: Path, rows, **data_keys):
    from transformers import AutoModelForImageClassification

    from finetune import data
    from finetune.recipe import recipe_from_dict
    from finetune.training.arguments import training_arguments
    from finetune.training.trainer import FinetuneTrainer, trainer_options

    recipe = recipe_from_dict({"description": "d", "model": {"name_or_path": str(tiny_vit)},
                               "data": {"dataset": "x", **data_keys}, "output_dir": str(tmp_path / "o"),
                               "training": {"use_cpu": True, "eval_strategy": "no", "per_device_train_batch_size": 4,
                                            "data_seed": 5}})
    return FinetuneTrainer(
        model=AutoModelForImageClassification.from_pretrained(tiny_vit), args=training_arguments(recipe),
        train_dataset=rows, data_collator=data.collate,
        batch_transform=data.BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), None), **trainer_options(recipe),
    )


def test_trainer_weights_the_loss_by_the_train_pieces_classes(tiny_vit: Path, tmp_path: Path) -> None:
    rows = _rows(tmp_path, tiny_vit, {"red": 6, "green": 3, "blue": 1})
    labels = train_labels(rows)
    assert sorted(np.bincount(labels).tolist()) == [1, 3, 6]
    trainer = _trainer(tiny_vit, tmp_path, rows, class_weights="balanced")
    assert torch.allclose(trainer.class_weights, torch.from_numpy(10 / (3 * np.bincount(labels))).float())
    model = trainer.model
    model.train()  # the tiny ViT has no dropout: the same logits twice
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = torch.tensor([0, 1, 2, 2])
    loss = trainer.compute_loss(model, {"pixel_values": pixels, "labels": batch}).detach()
    with torch.no_grad():
        logits = model(pixel_values=pixels.float() / 127.5 - 1).logits
    w = trainer.class_weights
    hand = sum(float(w[y]) * float(-F.log_softmax(logits[i], 0)[y]) for i, y in enumerate(batch.tolist())) / 4
    assert float(loss) == pytest.approx(hand, rel=1e-5)
    assert float(loss) != pytest.approx(float(F.cross_entropy(logits, batch)), rel=1e-3)
    model.eval()  # evaluation: plain cross-entropy
    eval_loss, outputs = trainer.compute_loss(model, {"pixel_values": pixels, "labels": batch}, return_outputs=True)
    assert torch.allclose(eval_loss, F.cross_entropy(outputs["logits"], batch))


def test_trainer_loads_training_batches_through_the_balanced_sampler(tiny_vit: Path, tmp_path: Path) -> None:
    rows = _rows(tmp_path, tiny_vit, {"red": 6, "green": 3, "blue": 1})
    trainer = _trainer(tiny_vit, tmp_path, rows, sampler="balanced")
    assert isinstance(trainer.train_sampler, BalancedSampler) and trainer.train_sampler.seed == 5  # data_seed
    loader = trainer.get_train_dataloader()
    loader.set_epoch(2)  # as the Trainer does before each epoch
    seen = torch.cat([batch["labels"] for batch in loader]).numpy()
    labels = train_labels(rows)
    expected = BalancedSampler(labels, seed=5)
    expected.set_epoch(2)
    assert seen.tolist() == labels[list(expected)].tolist()
    plain = _trainer(tiny_vit, tmp_path, rows)
    assert plain.train_sampler is None and not isinstance(plain._get_train_sampler(rows), BalancedSampler)


# ------------------------------------------------------------------------- multi-label

LISTS = [[0], [0, 1], [0], [2], [0, 2], [], [0], [0, 1, 2], [0], [0]]


def test_train_targets_read_class_lists_and_multi_hot_rows() -> None:
    from datasets import Dataset

    from finetune.data.multi_label import multi_hot
    from finetune.training.balance import train_targets

    expected = multi_hot(LISTS, 3)
    assert np.array_equal(train_targets(Dataset.from_dict({"labels": LISTS}), 3), expected)
    assert np.array_equal(train_targets(Dataset.from_dict({"labels": LISTS}).with_format("numpy"), 3), expected)
    # Two labels on every image: numpy gives a 2-D integer array, still class indices.
    pairs = Dataset.from_dict({"labels": [[0, 2], [1, 2]]}).with_format("numpy")
    assert np.array_equal(train_targets(pairs, 3), np.array([[1, 0, 1], [0, 1, 1]], dtype=np.float32))
    rows = Dataset.from_dict({"labels": expected.tolist()}).with_format("numpy")  # already multi-hot floats
    assert np.array_equal(train_targets(rows, 3), expected)


def test_positive_weights_balance_each_class_positives_against_its_negatives() -> None:
    from finetune.data.multi_label import multi_hot
    from finetune.training.balance import positive_weights

    targets = multi_hot(LISTS, 3)
    w = positive_weights(targets)
    positives = targets.sum(0)
    assert torch.allclose(w, torch.tensor((10 - positives) / positives, dtype=torch.float32))
    # The property the weights are for: per class, the weighted positives count as much as the negatives.
    assert np.allclose(w.numpy() * positives, 10 - positives)
    everywhere = np.ones((4, 2), dtype=np.float32)
    everywhere[0, 1] = 0
    assert positive_weights(everywhere).tolist() == [1.0, pytest.approx(1 / 3)]  # no negative: nothing to balance


def test_positive_weights_name_a_class_without_positive_images() -> None:
    from finetune.training.balance import positive_weights
    from finetune.utils.errors import UserError

    with pytest.raises(UserError) as err:
        positive_weights(np.array([[1, 0, 0], [1, 0, 1]], dtype=np.float32), ["cat", "dog", "emu"])
    message = str(err.value)
    assert "\n" not in message and message.startswith("data.class_weights: class 'dog' has no positive image")


def test_sampler_refuses_multi_hot_labels() -> None:
    with pytest.raises(ValueError, match="one class"):
        BalancedSampler(np.zeros((4, 3)), seed=0)


def _multi_label_trainer(tiny_vit: Path, tmp_path: Path, **data_keys):
    from datasets import Dataset
    from transformers import AutoModelForImageClassification

    from finetune import data
    from finetune.data.multi_label import PROBLEM_TYPE
    from finetune.recipe import recipe_from_dict
    from finetune.training.arguments import training_arguments
    from finetune.training.trainer import FinetuneTrainer, trainer_options

    model = AutoModelForImageClassification.from_pretrained(tiny_vit, problem_type=PROBLEM_TYPE)
    recipe = recipe_from_dict({"description": "d", "model": {"name_or_path": str(tiny_vit)},
                               "data": {"dataset": "x", **data_keys}, "output_dir": str(tmp_path / "o"),
                               "training": {"use_cpu": True, "eval_strategy": "no"}})
    return FinetuneTrainer(
        model=model, args=training_arguments(recipe), train_dataset=Dataset.from_dict({"labels": LISTS}),
        batch_transform=data.BatchTransform([0.5] * 3, [0.5] * 3, (32, 32), None), **trainer_options(recipe),
    )


def test_multi_label_trainer_turns_balanced_class_weights_into_positive_weights(tiny_vit: Path, tmp_path: Path) -> None:
    from finetune.data.multi_label import multi_hot
    from finetune.training.balance import positive_weights

    trainer = _multi_label_trainer(tiny_vit, tmp_path, class_weights="balanced")
    assert trainer.multi_label and torch.equal(trainer.class_weights, positive_weights(multi_hot(LISTS, 3)))
    assert "balanced positive weights (negatives / positives per class)" in trainer.describe_regularisers()
    model = trainer.model
    model.train()
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1]], dtype=torch.float32)
    loss = trainer.compute_loss(model, {"pixel_values": pixels, "labels": targets}).detach()
    with torch.no_grad():
        logits = model(pixel_values=pixels.float() / 127.5 - 1).logits
    w = trainer.class_weights
    hand = -(w * targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits)).mean()
    assert float(loss) == pytest.approx(float(hand), rel=1e-5)
    model.eval()  # evaluation: plain binary cross-entropy
    eval_loss = trainer.compute_loss(model, {"pixel_values": pixels, "labels": targets})
    assert torch.allclose(eval_loss, F.binary_cross_entropy_with_logits(logits, targets), atol=1e-6)


def test_multi_label_trainer_refuses_the_balanced_sampler_in_one_line(tiny_vit: Path, tmp_path: Path) -> None:
    from finetune.utils.errors import UserError

    with pytest.raises(UserError) as err:
        _multi_label_trainer(tiny_vit, tmp_path, sampler="balanced")
    message = str(err.value)
    assert "\n" not in message and message.startswith("data.sampler: 'balanced'") and "remove data.sampler" in message
