"""Bootstrap confidence intervals of the eval metrics: how much the score could move with another draw of test images.

A bootstrap resample draws N of the N test images with replacement and scores them again;
the interval is the middle ``level`` share of the scores of many resamples (the percentile
interval). The metrics here (accuracy, macro precision, recall and F1, top-5 accuracy) depend
on an image only through its cell: (true class, predicted class, whether the true class is
in the top five). Drawing N images uniformly is therefore the same as drawing the counts of
the cells from a multinomial with the cells' shares, which numpy does for many resamples in
one call. The cost grows with the number of distinct cells (at most N, at most classes² × 2),
not with N × resamples, so 100,000 test images take about as long as 1,000.

Macro averages run, in every resample as in the reported score, over the classes present in
that resample's true labels (:mod:`finetune.evaluation.metrics`).

Multi-label metrics (:func:`bootstrap_multi_label`) have no small set of cells: average
precision ranks every image of a class. A resample is then a vector of how often each image
was drawn (a multinomial draw over the N images), and every metric is a weighted one: the
F1 scores and exact match from a product of those weights with per-image indicators, and
each class's average precision from cumulative weighted counts down the images sorted once
by that class's probability (the weighted form of scikit-learn's, ties cut together). The
cost grows with resamples × images × classes (docs/trust.md has a measurement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from finetune.evaluation.metrics import TOP_K, Predictions
from finetune.evaluation.multi_label_metrics import Counts, MultiLabelPredictions
from finetune.recipe.metric_names import MULTI_LABEL_METRICS

#: The metrics an interval is computed for (those of the recipe's metrics that depend on the cells).
SUPPORTED = ("accuracy", "f1", "precision", "recall", "top5_accuracy")
#: Resample counts times distinct cells drawn at once: bounds the memory of one block.
_BLOCK_CELLS = 4_000_000


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def _cells(p: Predictions, with_top5: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(true class, predicted class, top-5 hit, count) of each distinct cell."""
    labels = np.asarray(p.labels, dtype=np.int64)
    preds = np.asarray(p.preds, dtype=np.int64)
    hit = (np.asarray(p.topk)[:, :TOP_K] == labels[:, None]).any(axis=1) if with_top5 else np.zeros(len(labels), bool)
    width = int(max(labels.max(initial=0), preds.max(initial=0))) + 1
    keys = (labels * width + preds) * 2 + hit.astype(np.int64)
    cells, counts = np.unique(keys, return_counts=True)
    return cells // 2 // width, cells // 2 % width, (cells % 2).astype(bool), counts


def _scores(
    draws: np.ndarray, true: np.ndarray, pred: np.ndarray, hit: np.ndarray, names: list[str], num_labels: int
) -> dict[str, np.ndarray]:
    """Each metric for each row of ``draws`` (resamples × cells: how often each cell was drawn)."""
    from scipy import sparse

    n = draws.sum(axis=1).astype(np.float64)
    out: dict[str, np.ndarray] = {}
    right = true == pred
    if "accuracy" in names:
        out["accuracy"] = draws[:, right].sum(axis=1) / n
    if "top5_accuracy" in names:
        out["top5_accuracy"] = draws[:, hit].sum(axis=1) / n
    if not {"f1", "precision", "recall"} & set(names):
        return out
    cells = np.arange(len(true))
    shape = (len(true), num_labels)
    ones = np.ones(len(true))
    # Cell → class indicator matrices; a product with the draws gives per-class counts.
    by_true = sparse.csr_matrix((ones, (cells, true)), shape=shape)
    by_pred = sparse.csr_matrix((ones, (cells, pred)), shape=shape)
    by_hit = sparse.csr_matrix((ones[right], (cells[right], true[right])), shape=shape)
    draws_t = draws.T.astype(np.float64)
    support = np.asarray(by_true.T @ draws_t).T
    predicted = np.asarray(by_pred.T @ draws_t).T
    tp = np.asarray(by_hit.T @ draws_t).T
    present = support > 0
    per = {
        "precision": np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0),
        "recall": np.divide(tp, support, out=np.zeros_like(tp), where=present),
        "f1": np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=(support + predicted) > 0),
    }
    classes = np.maximum(present.sum(axis=1), 1)
    for name in ("f1", "precision", "recall"):
        if name in names:
            out[name] = (per[name] * present).sum(axis=1) / classes
    return out


def bootstrap(
    p: Predictions | MultiLabelPredictions,
    metrics: list[str],
    num_labels: int,
    *,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Interval]:
    """The ``level`` percentile interval of each of ``metrics`` (those in ``SUPPORTED``; top-5
    accuracy only with more than five classes, as it is reported) over ``resamples``
    bootstrap resamples of the images of ``p``, seeded. Empty without images."""
    if isinstance(p, MultiLabelPredictions):
        return bootstrap_multi_label(p, metrics, level=level, resamples=resamples, seed=seed)
    names = [m for m in metrics if m in SUPPORTED and (m != "top5_accuracy" or num_labels > TOP_K)]
    total = len(p.labels)
    if not names or total == 0:
        return {}
    true, pred, hit, counts = _cells(p, "top5_accuracy" in names)
    shares = counts / counts.sum()
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // len(counts))
    parts: dict[str, list[np.ndarray]] = {m: [] for m in names}
    for start in range(0, resamples, block):
        draws = rng.multinomial(total, shares, size=min(block, resamples - start))
        for name, values in _scores(draws, true, pred, hit, names, max(num_labels, int(true.max()) + 1)).items():
            parts[name].append(values)
    return _percentiles(parts, level)


def weighted_average_precision(probs: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One class's average precision under each row of ``weights`` (R × N: how often each image
    counts), as scikit-learn's ``average_precision_score(truth, probs, sample_weight=row)``:
    Σ over the distinct probabilities, highest first, of the recall gained there times the
    precision at that cut. NaN for a row whose weighted positives are 0."""
    order = np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")
    sorted_p, sorted_y = np.asarray(probs)[order], np.asarray(truth, dtype=bool)[order]
    cuts = np.flatnonzero(np.append(sorted_p[1:] < sorted_p[:-1], True))
    # Only the cuts with a positive image gain recall: the others add nothing to the sum.
    positives_to = np.cumsum(sorted_y)[cuts]
    gaining = np.flatnonzero(np.diff(positives_to, prepend=0) > 0)
    w = weights[:, order]
    counted = np.cumsum(w, axis=1)[:, cuts[gaining]]
    tp = np.cumsum(w[:, sorted_y], axis=1)[:, positives_to[gaining] - 1]
    gained = np.diff(tp, axis=1, prepend=0)
    precision = np.divide(tp, counted, out=np.zeros(tp.shape), where=counted > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (gained * precision).sum(axis=1) / (tp[:, -1] if tp.shape[1] else np.zeros(len(w)))


def _multi_label_scores(weights: np.ndarray, p: MultiLabelPredictions, names: list[str]) -> dict[str, np.ndarray]:
    """Each multi-label metric for each row of ``weights`` (R × N image counts)."""
    truth, predicted = p.truth, p.predicted
    w = weights.astype(np.float32)  # image counts: exact in float32 up to 16 million images
    # R × C each; the sums are whole numbers, the ratios below in float64.
    counts = Counts(*((w @ x).astype(np.float64) for x in (truth & predicted, predicted, truth)))
    out: dict[str, np.ndarray] = {}
    if "f1_micro" in names:
        denominator = counts.predicted.sum(axis=1) + counts.support.sum(axis=1)
        out["f1_micro"] = np.divide(2 * counts.tp.sum(axis=1), denominator, out=np.zeros(len(w)), where=denominator > 0)
    if "f1_macro" in names:
        f1 = np.divide(2 * counts.tp, counts.predicted + counts.support, out=np.zeros_like(counts.tp),
                       where=(counts.predicted + counts.support) > 0)
        present = counts.support > 0
        # As in the reported score: over the classes with a positive image, all when none has.
        mask = np.where(present.any(axis=1, keepdims=True), present, True)
        out["f1_macro"] = (f1 * mask).sum(axis=1) / mask.sum(axis=1)
    if "exact_match" in names:
        out["exact_match"] = (w @ (truth == predicted).all(axis=1)).astype(np.float64) / w.sum(axis=1, dtype=np.float64)
    if "map" in names:
        ap = np.stack([weighted_average_precision(p.probs[:, c], truth[:, c], w) for c in range(truth.shape[1])], axis=1)
        with np.errstate(invalid="ignore"):
            found = np.isfinite(ap)
            out["map"] = np.where(found.any(axis=1), np.nansum(ap, axis=1) / np.maximum(found.sum(axis=1), 1), 0.0)
    return out


def bootstrap_multi_label(
    p: MultiLabelPredictions, metrics: list[str], *, level: float = 0.95, resamples: int = 1000, seed: int = 0
) -> dict[str, Interval]:
    """The ``level`` percentile interval of each multi-label metric of ``metrics`` over
    ``resamples`` bootstrap resamples of the images of ``p`` (at its thresholds), seeded."""
    names = [m for m in metrics if m in MULTI_LABEL_METRICS]
    total = p.num_images
    if not names or total == 0:
        return {}
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // total)  # resamples × images at once: bounds one block's memory
    parts: dict[str, list[np.ndarray]] = {m: [] for m in names}
    shares = np.full(total, 1.0 / total)
    for start in range(0, resamples, block):
        weights = rng.multinomial(total, shares, size=min(block, resamples - start))
        for name, values in _multi_label_scores(weights, p, names).items():
            parts[name].append(values)
    return _percentiles(parts, level)


def _percentiles(parts: dict[str, list[np.ndarray]], level: float) -> dict[str, Interval]:
    """Each metric's percentile interval at ``level`` from its resampled scores (in blocks)."""
    tail = (1 - level) / 2
    out = {}
    for name, blocks in parts.items():
        low, high = np.quantile(np.concatenate(blocks), [tail, 1 - tail])
        out[name] = Interval(float(low), float(high))
    return out
