"""Calibration maths on hand-made predictions: ECE and its bins, the temperature fit, the abstention threshold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from finetune.evaluation import calibration


def test_ece_by_hand() -> None:
    # Ten images at 0.9: nine right is calibrated, five right is 0.4 off.
    assert calibration.ece(np.full(10, 0.9), np.arange(10) < 9) == pytest.approx(0.0)
    assert calibration.ece(np.full(10, 0.9), np.arange(10) < 5) == pytest.approx(0.4)
    # Two bins, weighted by their images: 4 at 0.95 all right (0.05 off), 6 at 0.55 half right (0.05 off).
    confidence = np.array([0.95] * 4 + [0.55] * 6)
    correct = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=bool)
    assert calibration.ece(confidence, correct) == pytest.approx(0.4 * 0.05 + 0.6 * 0.05)


def test_bins_are_fifteen_equal_widths_closed_on_the_right() -> None:
    edges = np.linspace(0, 1, 16)
    assert calibration.bin_index(np.array([0.0, edges[1], edges[1] + 1e-9, 0.5, 1.0])).tolist() == [0, 0, 1, 7, 14]
    r = calibration.reliability(np.array([0.99, 0.98, 0.3]), np.array([True, False, True]))
    assert r.counts.sum() == 3 and r.counts[14] == 2 and r.counts[4] == 1
    assert r.accuracy[14] == pytest.approx(0.5) and r.confidence[14] == pytest.approx(0.985)
    assert np.isnan(r.accuracy[0]) and r.to_dict()["accuracy"][0] is None


def overconfident(n: int, t: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits t × z whose labels were drawn from softmax(z): calibrated at T = t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, 5))
    labels = np.array([rng.choice(5, p=row) for row in softmax(z, axis=1)])
    return t * z, labels


def test_temperature_fit_recovers_the_temperature_and_lowers_the_ece() -> None:
    logits, labels = overconfident(4000, 3.0, seed=0)
    fit = calibration.fit_temperature(logits, labels)
    assert fit.temperature == pytest.approx(3.0, rel=0.08)
    assert fit.nll_after < fit.nll_before and fit.num_images == 4000
    # Brent's answer is the grid's minimum.
    grid = np.linspace(1.0, 6.0, 501)
    nll = [calibration._nll(logits, labels, 1 / t) for t in grid]
    assert fit.temperature == pytest.approx(grid[int(np.argmin(nll))], abs=0.02)
    # On other images from the same source, the ECE drops.
    test_logits, test_labels = overconfident(4000, 3.0, seed=1)
    correct = test_logits.argmax(1) == test_labels
    before = calibration.ece(softmax(test_logits, axis=1).max(1), correct)
    after = calibration.ece(softmax(test_logits / fit.temperature, axis=1).max(1), correct)
    assert before > 0.1 and after < before / 3


def test_an_under_confident_model_gets_a_temperature_below_one() -> None:
    logits, labels = overconfident(3000, 0.5, seed=2)
    assert calibration.fit_temperature(logits, labels).temperature == pytest.approx(0.5, rel=0.1)


def test_no_temperature_without_a_mistake() -> None:
    logits = np.eye(3)[[0, 1, 2, 0]] * 2.0
    fit = calibration.fit_temperature(logits, np.array([0, 1, 2, 0]))
    assert fit.temperature is None and "every one of its 4 images" in fit.reason
    assert calibration.fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)).temperature is None


def test_abstention_threshold_by_hand() -> None:
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 0, 1, 0, 1], dtype=bool)
    # Keeping the top 4 gives 3/4, the top 2 gives 2/2.
    a = calibration.abstention_threshold(confidence, correct, 0.75)
    assert (a.threshold, a.kept, a.accuracy) == (0.8, pytest.approx(4 / 6), 0.75)
    a = calibration.abstention_threshold(confidence, correct, 0.9)
    assert a.threshold == 0.95 and a.abstained == pytest.approx(4 / 6)
    # Reached on every image: no need to abstain.
    a = calibration.abstention_threshold(confidence, correct, 0.6)
    assert a.threshold == 0.0 and a.kept == 1.0
    # Not reachable: the most confident image is wrong.
    assert calibration.abstention_threshold(np.array([0.9, 0.5]), np.array([False, True]), 0.9).threshold is None


def test_tied_probabilities_are_kept_or_abstained_on_together() -> None:
    confidence = np.array([0.9, 0.9, 0.9, 0.5])
    correct = np.array([1, 1, 0, 0], dtype=bool)
    # The first two alone would be 100% right, but a threshold cannot split the three 0.9s.
    a = calibration.abstention_threshold(confidence, correct, 0.9)
    assert a.threshold is None
    a = calibration.abstention_threshold(confidence, correct, 0.6)
    assert a.threshold == 0.9 and a.kept == 0.75


def test_over_views_the_fit_calibrates_the_averaged_softmax() -> None:
    """N×V×C logits: T minimises the likelihood of softmax(z_v / T) averaged over the views
    (checked on a grid), one view is the N×C fit, and the averaged T is not the one-view T."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (800, 4))
    labels = np.array([rng.choice(4, p=row) for row in softmax(z, axis=1)])
    views = 3 * np.stack([z + rng.normal(0, 0.8, z.shape), z + rng.normal(0, 0.8, z.shape)], axis=1)
    one = calibration.fit_temperature(views[:, 0], labels)
    assert calibration.fit_temperature(views[:, :1], labels).temperature == pytest.approx(one.temperature, rel=1e-6)
    fitted = calibration.fit_temperature(views, labels)

    def nll(t: float) -> float:
        averaged = softmax(views / t, axis=-1).mean(axis=1)
        return float(-np.log(averaged[np.arange(len(labels)), labels]).mean())

    grid = np.linspace(0.5, 8, 751)
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    assert fitted.temperature == pytest.approx(best, abs=0.02)
    assert fitted.nll_after == pytest.approx(nll(fitted.temperature), rel=1e-9) and fitted.nll_after < fitted.nll_before
    assert abs(fitted.temperature - one.temperature) > 0.05


def test_over_views_no_temperature_only_when_every_view_is_right() -> None:
    labels = np.array([0, 1])
    right = np.array([[[4.0, 0.0], [3.0, 1.0]], [[0.0, 4.0], [1.0, 3.0]]])
    assert "in every view" in calibration.fit_temperature(right, labels).reason
    one_view_wrong = right.copy()
    one_view_wrong[0, 1] = [0.0, 1.0]  # the average still right, one view not
    assert calibration.fit_temperature(one_view_wrong, labels).reason is None
