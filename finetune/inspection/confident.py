"""Likely label errors by confident learning (Northcutt, Jiang and Chuang 2021, "Confident
Learning: Estimating Uncertainty in Dataset Labels", JAIR 70), on out-of-fold probabilities
of a linear probe fitted on the backbone's cached features.

1. Out-of-fold probabilities: the images are split into K stratified, seeded folds; for
   each fold a multinomial logistic regression (``finetune.probe.logistic.fit_logistic``) is fitted on
   the other folds and gives the probabilities of this fold's images, so no image is
   judged by a model that saw its label. The L2 strength λ is chosen on the same
   out-of-fold probabilities, by their mean cross-entropy against the given labels,
   walking from strong to weak (each fit warm-started from the previous λ's) and stopping
   once it gets worse; on large sets, on the first fold's alone.
2. Per-class thresholds t_j: the mean probability of class j over the images labelled j
   (the model's average self-confidence in that class).
3. The confident joint C[i][j]: images labelled i whose probability of class j reaches
   t_j (the largest such j when several do). Its off-diagonal sum, the images confidently
   in another class than their label, is the estimated number of label errors
   (cleanlab's ``num_label_issues``, "off_diagonal"); calibrated so each row sums to the
   class's count, and normalised, it estimates Q, the joint distribution of given and true
   labels, whose largest off-diagonal cells say which classes are mixed up.
4. Every image is ranked by its self-confidence relative to its class's threshold,
   p(given) / t_given, lowest first (ties: the lower p(given)); the first as many as
   estimated, among the images whose most likely class is not their given label, are
   flagged (cleanlab's ``filter_by="low_self_confidence"`` with the per-class thresholds).
   Ranking by the threshold-relative score rather than by p(given) alone, or flagging by
   "prune by noise rate", put more of the known flips first on CIFAR-10 (docs/inspect.md).

Written here rather than taken from cleanlab, whose AGPL-3.0 licence does not fit this
Apache-2.0 project.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from finetune.probe.logistic import fit_logistic

#: The L2 strengths λ the out-of-fold fits walk, strongest first (loss = mean
#: cross-entropy + λ/2·‖W‖²).
L2_GRID = (10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)
#: The most L-BFGS iterations per fit: the probabilities are ranked, not reported to
#: many digits, so the fit need not run to the last decimal.
MAX_ITER = 100
#: Above this many images λ is chosen on the first fold alone (see ``out_of_fold``).
PATH_ON_ONE_FOLD = 10_000
#: Added to the thresholds' comparison, as cleanlab does, so that a probability equal to
#: its class's threshold counts despite rounding.
TOLERANCE = 1e-6


@dataclass
class OutOfFold:
    """Out-of-fold probabilities of every image, and how they were fitted."""

    probabilities: np.ndarray  # (images, classes)
    fold: np.ndarray  # per image: the fold it was held out in
    l2: float  # the λ chosen
    cross_entropy: dict[float, float]  # per λ tried: the mean out-of-fold cross-entropy


def _softmax(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(torch.addmm(bias, features, weight.t()), dim=1).double().numpy()


def folds_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold, 0..folds-1: stratified by label and shuffled with ``seed``
    (scikit-learn's StratifiedKFold). A class with fewer images than folds has each in its
    own fold."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    fold = np.empty(len(labels), dtype=np.int64)
    with warnings.catch_warnings():
        # "The least populated class in y has only N members": said in the report instead.
        warnings.simplefilter("ignore", UserWarning)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
            fold[held_out] = k
    return fold


def out_of_fold(
    features: torch.Tensor,
    labels: np.ndarray,
    num_classes: int,
    folds: int,
    seed: int,
    l2_grid: tuple[float, ...] = L2_GRID,
    max_iter: int = MAX_ITER,
    on_fit: Callable[[float, int], None] | None = None,
) -> OutOfFold:
    """Out-of-fold probabilities of a K-fold logistic-regression probe (see the module's
    docstring); ``on_fit(λ, fold)`` is told after every fit.

    With more than :data:`PATH_ON_ONE_FOLD` images, λ is chosen on the first fold alone (its
    held-out images, 2,000 or more, are plenty to choose by) and the other folds are fitted
    with it, starting from the first fold's solution: K + (λ values walked) fits instead of
    K × (λ values walked), which on a large set is most of the command's arithmetic."""
    x = torch.as_tensor(features).float()
    given = np.asarray(labels)
    y = torch.as_tensor(given, dtype=torch.long)
    fold = folds_of(given, folds, seed)
    walked = list(range(folds)) if len(y) <= PATH_ON_ONE_FOLD else [0]
    probs = np.zeros((len(y), num_classes))
    inits: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    best: tuple[float, np.ndarray, float, dict] | None = None
    tried: dict[float, float] = {}

    def fit_fold(k: int, l2: float) -> None:
        train = torch.from_numpy(np.flatnonzero(fold != k))
        held = np.flatnonzero(fold == k)
        fit = fit_logistic(x[train], y[train], num_classes, l2, max_iter, inits.get(k, inits.get(0)))
        inits[k] = (fit.weight, fit.bias)
        probs[held] = _softmax(x[torch.from_numpy(held)], fit.weight, fit.bias)
        if on_fit is not None:
            on_fit(l2, k)

    judged = np.isin(fold, walked)
    for l2 in sorted(l2_grid, reverse=True):
        for k in walked:
            fit_fold(k, l2)
        loss = float(-np.log(np.clip(probs[judged, given[judged]], 1e-12, None)).mean())
        tried[l2] = loss
        if best is None or loss < best[2]:
            best = (l2, probs.copy(), loss, dict(inits))
        elif loss > best[2]:
            break  # weaker penalties from here on fit the labels' noise more, not less
    assert best is not None
    l2, probs[:], _, inits = best
    inits = dict(inits)
    for k in range(folds):
        if k not in walked:
            fit_fold(k, l2)
    return OutOfFold(probs, fold, l2, tried)


def fit_all(features: torch.Tensor, labels: np.ndarray, num_classes: int, l2: float, max_iter: int = MAX_ITER):
    """One probe fitted on all of ``features`` (the training split) with strength ``l2``,
    for images it is not fitted on (the eval split, the eval sets)."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return fit_logistic(torch.as_tensor(features).float(), y, num_classes, l2, max_iter)


def probabilities(fit, features: torch.Tensor) -> np.ndarray:
    """The class probabilities that a fit (``fit_all``) gives ``features``."""
    return _softmax(torch.as_tensor(features).float(), fit.weight, fit.bias)


def class_thresholds(probabilities: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """t_j: the mean probability of class j over the images labelled j; infinity for a
    class without images (nothing is confidently in it)."""
    labels = np.asarray(labels)
    out = np.full(num_classes, np.inf)
    for j in range(num_classes):
        mine = labels == j
        if mine.any():
            out[j] = probabilities[mine, j].mean()
    return out


def confident_joint(probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """C[i][j]: how many images labelled i are confidently of class j: p(j) reaches t_j,
    and j is the most likely of the classes that do. Images reaching no threshold are not
    counted."""
    num_classes = probabilities.shape[1]
    above = probabilities >= thresholds[None, :] - TOLERANCE
    counted = above.any(axis=1)
    guess = np.where(above, probabilities, -np.inf).argmax(axis=1)
    joint = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(joint, (np.asarray(labels)[counted], guess[counted]), 1)
    return joint


def estimate_joint(joint: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Q: the confident joint with each row scaled to its class's count of given labels,
    then normalised to sum to 1 (the joint distribution of given and true labels)."""
    counts = np.bincount(np.asarray(labels), minlength=joint.shape[0]).astype(float)
    rows = joint.sum(axis=1, keepdims=True).astype(float)
    calibrated = np.divide(joint * counts[:, None], rows, out=np.zeros(joint.shape), where=rows > 0)
    total = calibrated.sum()
    return calibrated / total if total > 0 else calibrated


@dataclass
class LabelIssues:
    """Confident learning's verdict on a set of images."""

    flagged: np.ndarray  # bool per image
    ranked: np.ndarray  # every image, most suspect first
    suggested: np.ndarray  # per image: its most likely class
    self_confidence: np.ndarray  # per image: the probability of its given label
    score: np.ndarray  # per image: self-confidence / its class's threshold (lower: more suspect)
    thresholds: np.ndarray  # t_j per class
    joint: np.ndarray  # the confident joint C (rows: given label, columns: confident class)
    noise: np.ndarray  # Q, the estimated joint of given (rows) and true (columns) labels

    @property
    def estimated_errors(self) -> int:
        """The off-diagonal sum of the confident joint: images confidently in another class."""
        return int(self.joint.sum() - np.trace(self.joint))

    @property
    def flagged_ranked(self) -> np.ndarray:
        """The flagged images, most suspect first."""
        return self.ranked[self.flagged[self.ranked]]


def find_label_issues(probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None = None) -> LabelIssues:
    """Rank and flag the likely label errors among images with these (out-of-sample)
    ``probabilities`` and given ``labels``, with per-class ``thresholds`` (default: the
    images' own, :func:`class_thresholds`); see the module's docstring."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n, num_classes = probabilities.shape
    if thresholds is None:
        thresholds = class_thresholds(probabilities, labels, num_classes)
    joint = confident_joint(probabilities, labels, thresholds)
    noise = estimate_joint(joint, labels)
    self_confidence = probabilities[np.arange(n), labels]
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(np.isfinite(thresholds[labels]) & (thresholds[labels] > 0), self_confidence / thresholds[labels], self_confidence)
    ranked = np.lexsort((np.arange(n), self_confidence, score))
    suggested = probabilities.argmax(axis=1)
    candidates = ranked[suggested[ranked] != labels[ranked]]
    flagged = np.zeros(n, dtype=bool)
    flagged[candidates[: int(joint.sum() - np.trace(joint))]] = True
    return LabelIssues(flagged, ranked, suggested, self_confidence, score, thresholds, joint, noise)
