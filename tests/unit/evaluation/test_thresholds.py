"""thresholds.py: each class's threshold maximises its F1 on the held-out images; ties go low; a class without a positive keeps 0.5."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from finetune.data import multi_label
from finetune.evaluation import thresholds
from tests.helpers.multi_label_eval import fake_multi_label


def _f1(probs, truth, t) -> float:
    return f1_score(truth, probs >= t, zero_division=0)


def test_a_constructed_case_gets_the_threshold_between_the_right_probabilities() -> None:
    # Positives at 0.9, 0.8, 0.4; negatives at 0.7, 0.3, 0.1: F1 is best (0.8) cutting below 0.4
    # (3 positives, 1 negative labelled): halfway between 0.4 and 0.3.
    probs = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.1])
    truth = np.array([1, 1, 0, 1, 0, 0], bool)
    threshold, f1 = thresholds.best_threshold(probs, truth)
    assert threshold == pytest.approx(0.35) and f1 == pytest.approx(6 / 7)
    assert f1 == pytest.approx(_f1(probs, truth, threshold))


@pytest.mark.parametrize("seed", range(5))
def test_the_tuned_threshold_maximises_f1_over_every_possible_cut(seed) -> None:
    probs, targets = fake_multi_label(120, 6, seed, skill=0.3)
    probs[:30] = np.round(probs[:30], 1)  # ties cut together
    fit = thresholds.tune(probs, targets)
    for c in range(6):
        candidates = np.append(np.unique(probs[:, c]), 1.1)  # every distinct cut, and labelling none
        labelled = probs[:, c][None, :] >= candidates[:, None]
        truth = targets[:, c].astype(bool)
        best = float(np.max(2 * (labelled & truth).sum(axis=1) / (labelled.sum(axis=1) + truth.sum())))
        assert fit.f1[c] == pytest.approx(best, abs=1e-12)
        assert _f1(probs[:, c], targets[:, c], fit.values[c]) == pytest.approx(best, abs=1e-12)
        # The threshold is strictly inside the gap it cuts: no held-out probability sits on it.
        assert not np.any(probs[:, c] == fit.values[c])


def test_ties_go_to_the_lowest_threshold() -> None:
    probs = np.array([0.9, 0.8, 0.6, 0.5])
    truth = np.array([1, 0, 0, 1], bool)
    # F1 at 0.9: 2·1/(1+2) = 2/3; at 0.8: 2/(2+2) = 1/2; at 0.6: 2/(3+2)=2/5; at 0.5: 4/(4+2) = 2/3.
    threshold, f1 = thresholds.best_threshold(probs, truth)
    assert f1 == pytest.approx(2 / 3) and threshold == pytest.approx(0.25)  # the lower of the two (0.5 / 2)


def test_a_class_without_a_positive_keeps_the_default() -> None:
    probs, targets = fake_multi_label(50, 3, 1)
    targets[:, 1] = 0
    fit = thresholds.tune(probs, targets)
    assert fit.values[1] == multi_label.DEFAULT_THRESHOLD and not fit.tuned[1] and np.isnan(fit.f1[1])
    assert fit.untuned == [1] and fit.tuned[0] and fit.tuned[2] and fit.num_images == 50


def test_no_held_out_images_means_every_class_at_the_default() -> None:
    fit = thresholds.tune(np.zeros((0, 4)), np.zeros((0, 4)))
    assert fit.values.tolist() == [0.5] * 4 and fit.reason and fit.untuned == [0, 1, 2, 3]
    fixed = thresholds.fixed(3, "no validation piece")
    assert fixed.values.tolist() == [0.5] * 3 and fixed.reason == "no validation piece"
