"""The linear probe's L-BFGS head: multinomial (or, for multi-label data, one-vs-rest) logistic regression on cached features, and the mAP that chooses its strength."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class LogisticFit:
    """One L-BFGS fit of the head: weights, and how it went."""

    l2: float
    weight: torch.Tensor
    bias: torch.Tensor
    iterations: int
    #: Mean cross-entropy on the training features, without the penalty (multi-label: mean
    #: binary cross-entropy over the N × C pairs, the training loss's scale).
    train_loss: float
    #: The score that chooses λ on the validation piece: accuracy, or for a multi-label head
    #: mAP (:func:`mean_average_precision`; None when no class has a positive there).
    validation_score: float | None = None
    validation_loss: float | None = None


def mean_average_precision(targets: np.ndarray, scores: np.ndarray) -> float | None:
    """Macro mean of scikit-learn's average precision over the classes with at least one
    positive in ``targets`` (N × C multi-hot); None when no class has one."""
    from sklearn.metrics import average_precision_score

    targets = np.asarray(targets) > 0.5
    present = targets.any(axis=0)
    if not present.any():
        return None
    return float(average_precision_score(targets[:, present], np.asarray(scores)[:, present], average="macro"))


def data_loss(logits: torch.Tensor, y: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """The logistic regression's data term: mean cross-entropy over the images, or for
    one-vs-rest (multi-label) each class's mean binary cross-entropy, summed over the classes."""
    if multi_label:
        return nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum") / len(y)
    return nn.functional.cross_entropy(logits, y)


def reported_loss(logits: torch.Tensor, y: torch.Tensor, multi_label: bool) -> float:
    """The loss the training loss and the evaluation report, on their scale (multi-label: the
    mean over the N × C pairs)."""
    if multi_label:
        return float(nn.functional.binary_cross_entropy_with_logits(logits, y))
    return float(nn.functional.cross_entropy(logits, y))


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    l2: float,
    max_iter: int,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_iteration: Callable[[int], None] | None = None,
    multi_label: bool = False,
) -> LogisticFit:
    """Multinomial logistic regression: minimise mean cross-entropy + l2/2·‖W‖² (the bias is
    not penalised) by full-batch L-BFGS with a strong-Wolfe line search, from ``init`` or
    zeros. ``multi_label``: ``labels`` are multi-hot rows (N × C), and the fit is one-vs-rest
    logistic regression, C binary ones in one solve: Σ_c (mean over the images of class c's
    binary cross-entropy) + l2/2·‖W‖², so each class's row of W is the binary logistic
    regression of that class with penalty l2/2·‖w_c‖² (scikit-learn's
    ``OneVsRestClassifier(LogisticRegression(C=1 / (l2·N)))``, checked in the tests). The features fit in memory by construction (they are cached), so full-batch
    second-order steps beat SGD epochs; the objective is convex, so the result does not
    depend on a learning rate, a schedule or a seed. torch's L-BFGS rather than
    scikit-learn's LogisticRegression (the same optimum, checked in the tests): it runs on
    the training device, a GPU when there is one, on the features already there.
    ``on_iteration`` is told the iteration count at every evaluation of the objective."""
    # Features come from inference mode, whose tensors autograd may not save: copy them out.
    x = features.float().clone()
    y = labels.float().clone() if multi_label else labels.long().clone()
    weight = (init[0].clone() if init is not None else x.new_zeros(num_classes, x.shape[1])).requires_grad_(True)
    bias = (init[1].clone() if init is not None else x.new_zeros(num_classes)).requires_grad_(True)
    solver = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        solver.zero_grad()
        loss = data_loss(torch.addmm(bias, x, weight.t()), y, multi_label) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        if on_iteration is not None:
            on_iteration(solver.state[weight].get("n_iter", 0))
        return loss

    with torch.enable_grad():
        solver.step(objective)
    iterations = int(solver.state[solver.param_groups[0]["params"][0]].get("n_iter", 0))
    weight, bias = weight.detach(), bias.detach()
    with torch.no_grad():
        train_loss = reported_loss(torch.addmm(bias, x, weight.t()), y, multi_label)
    return LogisticFit(l2, weight, bias, iterations, train_loss)
