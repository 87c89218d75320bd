"""Training losses as pure functions of logits and targets: cross-entropy with hard or soft targets, class weights and label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def evaluation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss every evaluation reports and model selection reads: plain cross-entropy with
    the true classes, whatever weights, smoothing or mixing training used, so that runs with
    different regularisers are scored on the same scale.

    Rows labelled -100 (a streamed evaluation's padding and unreadable images) are left
    out; a batch of padding alone scores 0."""
    kept = labels != -100
    if bool(kept.all()):
        return classification_loss(logits, labels)
    if not bool(kept.any()):
        return logits.float().sum() * 0.0
    return classification_loss(logits[kept], labels[kept])
