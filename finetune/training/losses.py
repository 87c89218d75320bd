"""Training losses as pure functions of logits and targets: cross-entropy with hard or soft targets, binary cross-entropy with multi-hot ones, class weights and label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from finetune.data.multi_label import IGNORE_VALUE


def classification_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean over the batch of each image's cross-entropy with its target.

    ``targets``: class indices (integers, shape (N,)) or soft rows (floats, shape (N, C),
    each summing to 1, such as mixup's and CutMix's). Each image's loss is
    ``Σ_c w_c · t_c · −log softmax(logits)_c`` with ``t`` its target smoothed once,
    ``t = (1 − smoothing) · target + smoothing / C``, and ``w`` the class ``weights``
    (all 1 when None). For class indices that is torch's ``cross_entropy`` of the image.

    The batch mean divides by the number of images, not by the sum of their weights as
    torch's weighted ``reduction="mean"`` does: so the loss of a batch is the sum of its
    images' losses over a fixed count, and a batch split over accumulation steps or
    processes gives the same gradient as the whole batch (the Trainer averages the
    micro-batches' means, DDP the processes'). Balanced class weights average 1 over the
    training set, so the loss keeps its scale.

    Smoothing soft rows is the same as mixing smoothed one-hot rows (smoothing is affine,
    mixing takes convex combinations), so it does not matter that mixup ran first; it must
    only run once, here.

    The logits are taken in float32 (as autocast runs cross-entropy), and the result is a
    0-dim tensor. Composable: another term (e.g. distillation on a teacher's logits) can be
    added to it.
    """
    if weights is not None:
        weights = weights.to(device=logits.device, dtype=torch.float32)
    if targets.is_floating_point():
        targets = targets.to(torch.float32)
    per_image = F.cross_entropy(logits.float(), targets, weight=weights, label_smoothing=smoothing, reduction="none")
    return per_image.mean()


def multi_label_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Binary cross-entropy of each (image, class) pair, averaged over all N × C of them: the
    loss of a multi-label model, whose classes each get a sigmoid of their own (transformers'
    and timm's multi-label loss).

    ``targets``: float rows (N, C), 1.0 where the image has the class, or mixed rows in
    between (mixup's and CutMix's, :class:`finetune.data.transforms.BatchMix`). Label
    smoothing is timm's ``BinaryCrossEntropy``'s: a target 1 becomes ``1 − smoothing +
    smoothing / C`` and a target 0 ``smoothing / C``, i.e. ``t·(1 − smoothing) + smoothing / C``;
    affine, so smoothing mixed rows is mixing smoothed rows, as for the single-label loss.
    ``pos_weight`` (C,): the weight of each class's positive term (``data.class_weights``
    "balanced": negatives / positives of the class on the training split,
    :func:`finetune.training.balance.positive_weights`); the negative terms keep weight 1.

    Each image adds C terms, whatever its labels, so the mean is a sum over a fixed count
    per image: the loss of a batch is the mean of its equal parts' losses, and gradient
    accumulation and several processes train as one big batch (see
    :func:`classification_loss`). The logits are taken in float32; the result is a 0-dim
    tensor, to which other terms (distillation) can be added.
    """
    x = logits.float()
    t = targets.to(device=x.device, dtype=torch.float32)
    if t.shape != x.shape:
        raise ValueError(f"multi-label targets must be N×C rows like the logits {tuple(x.shape)}, got {tuple(t.shape)}")
    if smoothing:
        t = t * (1.0 - smoothing) + smoothing / x.shape[-1]
    if pos_weight is not None:
        pos_weight = pos_weight.to(device=x.device, dtype=torch.float32)
    return F.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight, reduction="mean")


def ignored_rows(labels: torch.Tensor) -> torch.Tensor:
    """Which rows of a batch's labels are not scored: -100 (single-label) or a row of
    :data:`~finetune.data.multi_label.IGNORE_VALUE` in every entry (multi-label), a streamed
    evaluation's padding and unreadable images."""
    if labels.is_floating_point() and labels.ndim == 2:
        return (labels == IGNORE_VALUE).all(dim=-1)
    return labels == -100


def evaluation_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """The loss every evaluation reports and model selection reads: plain cross-entropy with
    the true classes (``multi_label``: plain binary cross-entropy with the multi-hot rows,
    :func:`multi_label_loss` without weights or smoothing), whatever weights, smoothing or
    mixing training used, so that runs with different regularisers are scored on the same
    scale.

    Rows labelled -100 (a streamed evaluation's padding and unreadable images; for
    multi-label, rows of -100.0) are left out; a batch of padding alone scores 0."""
    loss = multi_label_loss if multi_label else classification_loss
    kept = ~ignored_rows(labels)
    if bool(kept.all()):
        return loss(logits, labels)
    if not bool(kept.any()):
        return logits.float().sum() * 0.0
    return loss(logits[kept], labels[kept])
