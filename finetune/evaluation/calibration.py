"""Calibration: expected calibration error, reliability bins, temperature scaling fitted on logits, and the abstention threshold.

A classifier is calibrated when, among the images it labels with top probability 0.8, 80%
are right. The expected calibration error (ECE) measures the gap: the images are put in 15
equal-width bins of their top probability, and ECE is the image-weighted mean of
|accuracy − mean top probability| over the bins (top-label ECE, Guo et al. 2017).

Temperature scaling (Guo et al. 2017) divides every logit by one number T > 0, fitted to
minimise the negative log-likelihood on held-out images. It changes no prediction (the order
of the logits stays), only how sure the probabilities are: T > 1 softens an over-confident
model. The likelihood is convex in 1/T, so a bounded one-dimensional search finds the best T.
When every held-out image is classified right the likelihood keeps rising as T → 0 and no T
can be fitted; :func:`fit_temperature` says so instead of returning the bound.

With test-time views the prediction is the softmax of each view's logits / T, averaged over
the views; :func:`fit_temperature` then takes every view's logits and fits T to that average
(its likelihood need not be convex in 1/T; the same bounded search finds a minimum).

A multi-label model gives each class its own sigmoid probability, and each (image, class)
pair is a yes/no prediction: its ECE is the binary one over all N × C pairs (bins of the
probability, against the share of pairs that are positive), and its one temperature is
fitted by the binary cross-entropy of sigmoid(logits / T) over all pairs
(:func:`fit_binary_temperature`; the sigmoid averaged over the views with test-time views).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Equal-width bins of the top probability, as in Guo et al. 2017 (comparable across runs).
ECE_BINS = 15
#: The temperatures searched: wide enough for any fine-tuned classifier seen in practice.
T_MIN, T_MAX = 0.05, 20.0


def bin_index(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Each image's bin: (k/bins, (k+1)/bins], with a probability of 0 in the first."""
    edges = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    return np.digitize(np.asarray(confidence, dtype=np.float64), edges, right=True)


@dataclass
class Reliability:
    """Per bin: how many images, their accuracy and their mean top probability (NaN when empty)."""

    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def ece(self) -> float:
        total = self.counts.sum()
        if total == 0:
            return 0.0
        used = self.counts > 0
        gaps = np.abs(self.accuracy[used] - self.confidence[used])
        return float((self.counts[used] * gaps).sum() / total)

    def to_dict(self) -> dict[str, list]:
        return {
            "counts": self.counts.tolist(),
            "accuracy": [None if np.isnan(a) else float(a) for a in self.accuracy],
            "confidence": [None if np.isnan(c) else float(c) for c in self.confidence],
        }


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """The reliability bins of top probabilities ``confidence`` and whether each top class was right."""
    index = bin_index(confidence, bins)
    counts = np.bincount(index, minlength=bins)
    right = np.bincount(index, weights=np.asarray(correct, dtype=np.float64), minlength=bins)
    sure = np.bincount(index, weights=np.asarray(confidence, dtype=np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return Reliability(counts, np.where(counts > 0, right / counts, np.nan), np.where(counts > 0, sure / counts, np.nan))


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error over ``bins`` equal-width bins."""
    return reliability(confidence, correct, bins).ece


# --------------------------------------------------------------------- temperature


def log_probabilities(logits: np.ndarray, inverse_t: float = 1.0) -> np.ndarray:
    """log softmax(logits / T) of N×C logits, or of N×V×C logits (V test-time views) the log
    of that softmax averaged over the views: N×C."""
    from scipy.special import logsumexp

    scaled = logits * inverse_t
    log_p = scaled - logsumexp(scaled, axis=-1, keepdims=True)
    if log_p.ndim == 3:
        log_p = logsumexp(log_p, axis=1) - np.log(log_p.shape[1])
    return log_p


def _nll(logits: np.ndarray, labels: np.ndarray, inverse_t: float) -> float:
    return float(-np.mean(log_probabilities(logits, inverse_t)[np.arange(len(labels)), labels]))


@dataclass
class TemperatureFit:
    """The fitted temperature, or why there is none, with the held-out likelihood before and after."""

    temperature: float | None
    num_images: int
    nll_before: float
    nll_after: float
    #: Why no temperature was fitted (None when one was).
    reason: str | None = None


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> TemperatureFit:
    """The T in [``T_MIN``, ``T_MAX``] that minimises the mean negative log-likelihood of
    softmax(logits / T) for ``labels`` (float64, deterministic). ``logits``: N×C, or N×V×C
    for the softmax averaged over V test-time views."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    # Over views: each view of each image right (the averaged one alone is not enough: a wrong
    # view keeps the likelihood below 1 as T → 0).
    right = len(labels) > 0 and bool(np.all(logits.argmax(axis=-1) == (labels if logits.ndim == 2 else labels[:, None])))
    views = " (in every view)" if logits.ndim == 3 else ""
    return _fit(lambda inverse_t: _nll(logits, labels, inverse_t), len(labels), right,
                f"every one of its {len(labels)} images is classified right{views}")


def _fit(loss, n: int, all_right: bool, all_right_text: str) -> TemperatureFit:
    """The T in [``T_MIN``, ``T_MAX``] minimising ``loss(1 / T)`` over ``n`` held-out images,
    or why there is none: no image, or every prediction already right (``all_right``: the
    likelihood then keeps rising as T → 0). Brent's bounded search: the loss is convex in 1/T
    for one view, so it finds the global minimum there."""
    from scipy.optimize import minimize_scalar

    if n == 0:
        return TemperatureFit(None, 0, float("nan"), float("nan"), "the held-out piece has no images")
    before = loss(1.0)
    if all_right:
        return TemperatureFit(None, n, before, before, f"{all_right_text}, so the likelihood keeps rising as T → 0 "
                              "and no temperature can be fitted")
    best = minimize_scalar(loss, bounds=(1 / T_MAX, 1 / T_MIN), method="bounded", options={"xatol": 1e-7})
    temperature = float(1 / best.x)
    return TemperatureFit(temperature, n, before, loss(1 / temperature))


def binary_ece(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """The expected calibration error of N × C multi-label probabilities: every (image, class)
    pair binned by its probability, the gap between the bin's mean probability and its share
    of positive pairs."""
    return ece(np.asarray(probs).ravel(), np.asarray(targets).ravel() > 0.5, bins)


def log_sigmoids(logits: np.ndarray, inverse_t: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(log p, log (1 − p)) of p = sigmoid(logits / T), N × C; of N × V × C logits (V test-time
    views), p is the sigmoid averaged over the views."""
    from scipy.special import log_expit, logsumexp

    scaled = logits * inverse_t
    log_p, log_q = log_expit(scaled), log_expit(-scaled)
    if log_p.ndim == 3:
        views = np.log(log_p.shape[1])
        log_p, log_q = logsumexp(log_p, axis=1) - views, logsumexp(log_q, axis=1) - views
    return log_p, log_q


def _bce(logits: np.ndarray, truth: np.ndarray, inverse_t: float) -> float:
    log_p, log_q = log_sigmoids(logits, inverse_t)
    return float(-np.mean(np.where(truth, log_p, log_q)))


def fit_binary_temperature(logits: np.ndarray, targets: np.ndarray) -> TemperatureFit:
    """The T in [``T_MIN``, ``T_MAX``] that minimises the mean binary cross-entropy of
    sigmoid(logits / T) over every (image, class) pair of multi-hot ``targets`` (N × C);
    ``logits`` N × C, or N × V × C for the sigmoid averaged over V test-time views. As for one
    softmax: when every pair is on the right side of 0 (in every view), the likelihood keeps
    rising as T → 0 and no T is fitted."""
    logits = np.asarray(logits, dtype=np.float64)
    truth = np.asarray(targets) > 0.5
    right = len(truth) > 0 and bool(np.where(truth if logits.ndim == 2 else truth[:, None, :], logits > 0, logits < 0).all())
    views = " (in every view)" if logits.ndim == 3 else ""
    return _fit(lambda inverse_t: _bce(logits, truth, inverse_t), len(truth), right,
                f"every label of its {len(truth)} images is predicted on the right side of 0.5{views}")


# ---------------------------------------------------------------------- abstention


@dataclass
class Abstention:
    """Abstaining below ``threshold`` (top probability) keeps ``accuracy`` on ``kept`` of the images."""

    target: float
    #: None: no threshold reaches the target (even the most confident image is wrong).
    threshold: float | None
    kept: float
    accuracy: float

    @property
    def abstained(self) -> float:
        return 1.0 - self.kept


def abstention_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> Abstention:
    """The lowest top-probability threshold whose kept images (top probability ≥ threshold)
    are right at least ``target`` of the time: the one that abstains on the fewest images.
    Ties in probability are kept or abstained on together, as a threshold must."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(confidence)
    if n == 0:
        return Abstention(target, None, 0.0, float("nan"))
    order = np.argsort(-confidence, kind="stable")
    sure, right = confidence[order], correct[order]
    cumulative = np.cumsum(right) / np.arange(1, n + 1)
    # A threshold can only fall where the next image is strictly less sure.
    cut = np.append(sure[1:] < sure[:-1], True)
    ok = np.flatnonzero(cut & (cumulative >= target - 1e-12))
    if len(ok) == 0:
        return Abstention(target, None, 0.0, float("nan"))
    last = int(ok[-1])
    threshold = 0.0 if last == n - 1 else float(sure[last])
    return Abstention(target, threshold, (last + 1) / n, float(cumulative[last]))
