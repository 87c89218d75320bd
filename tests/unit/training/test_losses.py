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


# ------------------------------------------------------------------------- multi-label


@pytest.fixture
def multi_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, C, generator=g, dtype=torch.float64).float() * 2
    targets = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0]]).float()
    return logits, targets


def _hand_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """−(w·t·log σ(x) + (1 − t)·log(1 − σ(x))) per (image, class), averaged over all of them."""
    x, t = logits.double(), targets.double()
    w = torch.ones(C, dtype=torch.float64) if pos_weight is None else pos_weight.double()
    return -(w * t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x)).mean()


def test_multi_label_loss_is_mean_binary_cross_entropy_over_every_pair(multi_batch) -> None:
    from finetune.training.losses import multi_label_loss

    logits, targets = multi_batch
    loss = multi_label_loss(logits, targets)
    assert torch.allclose(loss.double(), _hand_bce(logits, targets), atol=1e-6)
    assert torch.allclose(loss, torch.nn.BCEWithLogitsLoss()(logits, targets))
    # As transformers computes it for a model whose config says multi_label_classification.
    from transformers.loss.loss_utils import ForSequenceClassificationLoss

    config = type("Config", (), {"problem_type": "multi_label_classification", "num_labels": C})()
    assert torch.allclose(loss, ForSequenceClassificationLoss(targets, logits, config))


def test_multi_label_smoothing_is_timms(multi_batch) -> None:
    """timm's BinaryCrossEntropy: off = s/C, on = 1 − s + off; on one-hot rows our loss is timm's."""
    from timm.loss import BinaryCrossEntropy

    from finetune.training.losses import multi_label_loss

    logits, targets = multi_batch
    s = 0.1
    smoothed = targets * (1 - s - s / C) + s / C + targets * s / C  # on = 1 − s + s/C where 1, s/C where 0
    assert torch.allclose(smoothed, targets * (1 - s) + s / C)
    loss = multi_label_loss(logits, targets, smoothing=s)
    assert torch.allclose(loss.double(), _hand_bce(logits, smoothed), atol=1e-6)
    classes = torch.tensor([0, 3, 1, 2, 2, 0])
    onehot = F.one_hot(classes, C).float()
    theirs = BinaryCrossEntropy(smoothing=s)(logits, classes)
    assert torch.allclose(multi_label_loss(logits, onehot, smoothing=s), theirs, atol=1e-6)


def test_multi_label_positive_weights_weigh_the_positive_terms(multi_batch) -> None:
    from finetune.training.losses import multi_label_loss

    logits, targets = multi_batch
    w = torch.tensor([2.0, 0.5, 1.0, 3.0])
    loss = multi_label_loss(logits, targets, w)
    assert torch.allclose(loss.double(), _hand_bce(logits, targets, w), atol=1e-6)
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, targets, pos_weight=w))
    # All-negative rows are untouched by positive weights.
    zero = torch.zeros_like(targets)
    assert torch.allclose(multi_label_loss(logits, zero, w), multi_label_loss(logits, zero))


def test_multi_label_loss_of_a_batch_is_the_mean_of_its_halves(multi_batch) -> None:
    """Each image adds C terms, so equal parts average to the whole: accumulation and processes agree."""
    from finetune.training.losses import multi_label_loss

    logits, targets = multi_batch
    w = torch.tensor([2.0, 0.5, 1.0, 3.0])
    whole = multi_label_loss(logits, targets, w, smoothing=0.1)
    halves = (multi_label_loss(logits[:3], targets[:3], w, 0.1) + multi_label_loss(logits[3:], targets[3:], w, 0.1)) / 2
    assert torch.allclose(whole, halves, atol=1e-6)
    # Whatever the number of labels per image: the half with more positives does not weigh more.
    thirds = sum(multi_label_loss(logits[i : i + 2], targets[i : i + 2], w, 0.1) for i in (0, 2, 4)) / 3
    assert torch.allclose(whole, thirds, atol=1e-6)


def test_multi_label_smoothing_with_mixup_is_applied_once(multi_batch) -> None:
    from finetune.training.losses import multi_label_loss

    logits, targets = multi_batch
    lam, s = 0.7, 0.1
    mixed = lam * targets + (1 - lam) * targets.roll(1, 0)
    smooth = targets * (1 - s) + s / C
    loss = multi_label_loss(logits, mixed, smoothing=s).double()
    assert torch.allclose(loss, _hand_bce(logits, lam * smooth + (1 - lam) * smooth.roll(1, 0)), atol=1e-6)
    twice = (mixed * (1 - s) + s / C) * (1 - s) + s / C
    assert not torch.allclose(loss, _hand_bce(logits, twice), atol=1e-4)


def test_multi_label_loss_is_float32_and_refuses_class_indices(multi_batch) -> None:
    from finetune.training.losses import multi_label_loss

    logits, targets = multi_batch
    loss = multi_label_loss(logits.bfloat16(), targets)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    with pytest.raises(ValueError, match="N×C rows"):
        multi_label_loss(logits, torch.tensor([0, 1, 2, 3, 0, 1]))


def test_multi_label_evaluation_loss_is_plain_and_leaves_out_padding_rows(multi_batch) -> None:
    from finetune.data.multi_label import IGNORE_VALUE
    from finetune.training.losses import evaluation_loss, multi_label_loss

    logits, targets = multi_batch
    assert torch.allclose(evaluation_loss(logits, targets, multi_label=True), multi_label_loss(logits, targets))
    padded = torch.cat([targets, torch.full((2, C), IGNORE_VALUE)])
    more = torch.cat([logits, torch.randn(2, C) * 50])
    assert torch.allclose(evaluation_loss(more, padded, multi_label=True), multi_label_loss(logits, targets))
    alone = evaluation_loss(more[-2:], padded[-2:], multi_label=True)
    assert alone.item() == 0.0 and alone.dtype == torch.float32
    # A row with some entries 0 and 1 is scored, even if one looks like the padding value elsewhere.
    assert torch.allclose(evaluation_loss(logits[:1], targets[:1], multi_label=True), multi_label_loss(logits[:1], targets[:1]))
