"""Bootstrap intervals: the per-resample scores equal the metrics' own, the multinomial draw of cells matches resampling images, seeded, fast."""

from __future__ import annotations

import time

import numpy as np
import pytest

from finetune.evaluation import intervals, metrics
from finetune.evaluation.metrics import Predictions

ALL = ["accuracy", "f1", "precision", "recall", "top5_accuracy"]


def predictions(n: int, classes: int, right: float, seed: int = 0, absent: int | None = None) -> Predictions:
    """Made-up predictions: about ``right`` of them correct; class ``absent`` never a true label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    if absent is not None:
        labels[labels == absent] = (absent + 1) % classes
    wrong = rng.random(n) > right
    preds = np.where(wrong, (labels + rng.integers(1, classes, n)) % classes, labels)
    k = min(5, classes)
    # The true class among the top five for some of the wrong ones.
    topk = np.stack([(preds + i) % classes for i in range(k)], axis=1)
    confidence = rng.uniform(0.2, 1.0, n)
    return Predictions(labels, preds, topk, confidence, confidence)


@pytest.mark.parametrize("classes", [3, 10])
def test_the_score_of_the_original_counts_is_the_reported_metric(classes: int) -> None:
    p = predictions(400, classes, 0.6, absent=1)
    true, pred, hit, counts = intervals._cells(p, classes > 5)
    names = [m for m in ALL if m != "top5_accuracy" or classes > 5]
    scored = intervals._scores(counts[None, :], true, pred, hit, names, classes)
    expected = metrics.compute(names, p, classes)
    for name in names:
        assert scored[name][0] == pytest.approx(expected[name]), name


def test_multinomial_cells_match_resampling_the_images() -> None:
    from sklearn.metrics import f1_score

    p = predictions(300, 6, 0.7, seed=3)
    found = intervals.bootstrap(p, ["accuracy", "f1"], 6, resamples=3000, seed=1)
    rng = np.random.default_rng(2)
    naive = {"accuracy": [], "f1": []}
    for _ in range(3000):
        idx = rng.integers(0, 300, 300)
        y, pred = p.labels[idx], p.preds[idx]
        naive["accuracy"].append(np.mean(y == pred))
        naive["f1"].append(f1_score(y, pred, labels=np.unique(y), average="macro", zero_division=0))
    for name in ("accuracy", "f1"):
        low, high = np.quantile(naive[name], [0.025, 0.975])
        assert found[name].low == pytest.approx(low, abs=0.012), name
        assert found[name].high == pytest.approx(high, abs=0.012), name


def test_hand_made_intervals() -> None:
    n = 1000
    labels = np.zeros(n, dtype=np.int64)
    preds = np.where(np.arange(n) < 500, 0, 1)  # half right
    p = Predictions(labels, preds, preds[:, None], np.ones(n), np.ones(n))
    found = intervals.bootstrap(p, ["accuracy"], 2, resamples=2000, seed=0)["accuracy"]
    half = 1.96 * np.sqrt(0.25 / n)  # the normal approximation of a proportion's interval
    assert found.low == pytest.approx(0.5 - half, abs=0.006)
    assert found.high == pytest.approx(0.5 + half, abs=0.006)
    # Every image right: every resample scores 1.
    perfect = Predictions(labels, labels, labels[:, None], np.ones(n), np.ones(n))
    assert intervals.bootstrap(perfect, ["accuracy"], 2)["accuracy"] == intervals.Interval(1.0, 1.0)


def test_seeded_and_level() -> None:
    p = predictions(200, 4, 0.6)
    a = intervals.bootstrap(p, ALL, 4, seed=5)
    assert a == intervals.bootstrap(p, ALL, 4, seed=5)
    assert a != intervals.bootstrap(p, ALL, 4, seed=6)
    assert "top5_accuracy" not in a  # reported only with more than five classes
    narrow = intervals.bootstrap(p, ["accuracy"], 4, level=0.5, seed=5)["accuracy"]
    assert a["accuracy"].low < narrow.low <= narrow.high < a["accuracy"].high
    assert intervals.bootstrap(predictions(0, 4, 0.5), ALL, 4) == {}


def test_macro_scores_average_over_the_classes_present_in_each_resample() -> None:
    # Class 2 has one image: many resamples lack it, and then it must not count as 0.
    labels = np.array([0] * 50 + [1] * 50 + [2])
    p = Predictions(labels, labels.copy(), labels[:, None], np.ones(101), np.ones(101))
    found = intervals.bootstrap(p, ["f1", "recall"], 3, resamples=500)
    assert found["f1"] == intervals.Interval(1.0, 1.0)
    assert found["recall"] == intervals.Interval(1.0, 1.0)


def test_fast_enough_for_a_hundred_thousand_images() -> None:
    p = predictions(100_000, 100, 0.7, seed=1)
    start = time.perf_counter()
    found = intervals.bootstrap(p, ALL, 100, resamples=1000)
    seconds = time.perf_counter() - start
    assert set(found) == set(ALL)
    assert found["accuracy"].high - found["accuracy"].low < 0.01
    assert seconds < 60, f"{seconds:.1f} s"
