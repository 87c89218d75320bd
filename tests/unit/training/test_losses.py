"""The training loss: cross-entropy with hard or soft targets, class weights and label smoothing, checked against hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune.training.losses import classification_loss, evaluation_loss

C = 4


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, C, generator=g, dtype=torch.float64).float(), torch.tensor([0, 1, 3, 3, 2, 0])


def _hand(logits: torch.Tensor, target_rows: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_c w_c t_c (−log p_c) per image, averaged over the images: the documented formula."""
    w = torch.ones(C) if weights is None else weights
    return (-(F.log_softmax(logits.double(), 1)) * w.double() * target_rows.double()).sum(1).mean()


def test_hard_labels_give_plain_cross_entropy(batch) -> None:
    logits, labels = batch
    assert torch.allclose(classification_loss(logits, labels), F.cross_entropy(logits, labels))
    assert torch.allclose(evaluation_loss(logits, labels), F.cross_entropy(logits, labels))


def test_class_weights_change_the_loss_as_computed_by_hand(batch) -> None:
    logits, labels = batch
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    hand = sum(weights[y] * -F.log_softmax(logits[i], 0)[y] for i, y in enumerate(labels.tolist())) / len(labels)
    loss = classification_loss(logits, labels, weights)
    assert torch.allclose(loss.double(), hand.double(), atol=1e-6)
    assert not torch.allclose(loss, classification_loss(logits, labels))
    # A batch mean over images, not torch's weighted mean (which divides by the weights' sum).
    assert not torch.allclose(loss, F.cross_entropy(logits, labels, weight=weights))


def test_weighted_loss_of_a_batch_is_the_mean_of_its_halves(batch) -> None:
    """What makes gradient accumulation and several processes train as one big batch."""
    logits, labels = batch
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    whole = classification_loss(logits, labels, weights, smoothing=0.1)
    halves = (classification_loss(logits[:3], labels[:3], weights, 0.1) + classification_loss(logits[3:], labels[3:], weights, 0.1)) / 2
    assert torch.allclose(whole, halves, atol=1e-6)


def test_label_smoothing_matches_the_trainer_and_torch(batch) -> None:
    from transformers.trainer_pt_utils import LabelSmoother

    logits, labels = batch
    ours = classification_loss(logits, labels, smoothing=0.1)
    theirs = LabelSmoother(epsilon=0.1)({"logits": logits}, labels)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(ours, F.cross_entropy(logits, labels, label_smoothing=0.1))
    rows = F.one_hot(labels, C).double() * 0.9 + 0.1 / C
    assert torch.allclose(ours.double(), _hand(logits, rows), atol=1e-6)


def test_soft_targets_and_their_hard_labels_agree(batch) -> None:
    logits, labels = batch
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    rows = F.one_hot(labels, C).float()
    assert torch.allclose(classification_loss(logits, rows, weights, 0.2), classification_loss(logits, labels, weights, 0.2), atol=1e-6)


def test_label_smoothing_with_mixup_is_applied_once(batch) -> None:
    """Mixed one-hot rows smoothed in the loss: the same as mixing smoothed rows (the order
    does not matter), and not smoothed twice."""
    logits, labels = batch
    lam, eps = 0.7, 0.1
    onehot = F.one_hot(labels, C).double()
    mixed = lam * onehot + (1 - lam) * onehot.roll(1, 0)  # what v2.MixUp makes of the labels
    smooth = onehot * (1 - eps) + eps / C
    smoothed_then_mixed = lam * smooth + (1 - lam) * smooth.roll(1, 0)
    loss = classification_loss(logits, mixed.float(), smoothing=eps).double()
    assert torch.allclose(loss, _hand(logits, smoothed_then_mixed), atol=1e-6)
    assert torch.allclose(loss, _hand(logits, mixed * (1 - eps) + eps / C), atol=1e-6)
    twice = (mixed * (1 - eps) + eps / C) * (1 - eps) + eps / C
    assert not torch.allclose(loss, _hand(logits, twice), atol=1e-4)


def test_soft_targets_with_class_weights_follow_the_formula(batch) -> None:
    logits, labels = batch
    weights = torch.tensor([0.5, 2.0, 1.0, 3.0])
    onehot = F.one_hot(labels, C).double()
    mixed = 0.3 * onehot + 0.7 * onehot.roll(1, 0)
    loss = classification_loss(logits, mixed.float(), weights, smoothing=0.05).double()
    assert torch.allclose(loss, _hand(logits, mixed * 0.95 + 0.05 / C, weights), atol=1e-6)


def test_bf16_logits_are_scored_in_float32(batch) -> None:
    logits, labels = batch
    loss = classification_loss(logits.bfloat16(), labels)
    assert loss.dtype == torch.float32 and loss.ndim == 0
