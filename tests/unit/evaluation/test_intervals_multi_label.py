"""intervals.py, multi-label: each resample's scores equal scikit-learn's with the draw as sample weights; the intervals hold the score, are seeded, and are fast."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score

from finetune.evaluation import intervals
from finetune.recipe.metric_names import MULTI_LABEL_METRICS
from tests.helpers.multi_label_eval import predictions

ALL = list(MULTI_LABEL_METRICS)


def test_weighted_average_precision_equals_scikit_learns_with_sample_weights() -> None:
    p = predictions(400, 3, 2)
    p.probs[:100] = np.round(p.probs[:100], 1)  # ties
    rng = np.random.default_rng(0)
    weights = rng.multinomial(400, np.full(400, 1 / 400), size=6).astype(np.float32)
    weights[0, p.targets[:, 0] > 0] = 0  # a draw without a positive: no AP
    for c in range(3):
        ours = intervals.weighted_average_precision(p.probs[:, c], p.targets[:, c] > 0, weights)
        for row, value in zip(weights, ours):
            if row[p.targets[:, c] > 0].sum() == 0:
                assert np.isnan(value)
            else:
                assert value == pytest.approx(average_precision_score(p.targets[:, c], p.probs[:, c], sample_weight=row), abs=1e-6)


def test_each_resample_scores_as_the_metrics_on_the_drawn_images() -> None:
    p = predictions(150, 4, 3, thresholds=[0.3, 0.5, 0.6, 0.45])
    rng = np.random.default_rng(1)
    draws = [rng.integers(0, 150, 150) for _ in range(3)]
    weights = np.stack([np.bincount(d, minlength=150) for d in draws])
    scores = intervals._multi_label_scores(weights, p, ALL)
    for i, d in enumerate(draws):
        y, pred, probs = p.targets[d], p.predicted[d], p.probs[d]
        present = [c for c in range(4) if y[:, c].any()]
        assert scores["f1_micro"][i] == pytest.approx(f1_score(y, pred, average="micro"), abs=1e-9)
        assert scores["f1_macro"][i] == pytest.approx(f1_score(y, pred, average="macro", labels=present), abs=1e-9)
        assert scores["exact_match"][i] == pytest.approx(accuracy_score(y, pred), abs=1e-9)
        assert scores["map"][i] == pytest.approx(average_precision_score(y[:, present], probs[:, present]), abs=1e-6)


def test_the_intervals_hold_the_score_and_are_seeded() -> None:
    from finetune.evaluation.multi_label_metrics import compute

    p = predictions(300, 5, 4, skill=0.3)  # some mistakes: every score has room to move
    found = intervals.bootstrap(p, ALL, 5, resamples=300, seed=7)
    score = compute(ALL, p)
    assert set(found) == set(ALL)
    for name, interval in found.items():
        assert interval.low <= score[name] <= interval.high and interval.low < interval.high
    assert intervals.bootstrap(p, ALL, 5, resamples=300, seed=7) == found
    assert intervals.bootstrap(p, ALL, 5, resamples=300, seed=8) != found
    # Single-label names ask for nothing here.
    assert intervals.bootstrap(p, ["accuracy"], 5) == {}


def test_a_thousand_resamples_of_two_thousand_images_take_seconds() -> None:
    p = predictions(2000, 10, 5)
    start = time.perf_counter()
    intervals.bootstrap(p, ALL, 10, resamples=1000)
    # Vectorised over resamples: seconds, not minutes (docs/trust.md has the measurement); a loose bound.
    assert time.perf_counter() - start < 20
