"""Multi-label calibration and trust: the binary ECE over every (image, class) pair, one temperature by binary cross-entropy, no abstention (said why), and reliability.png from the same pairs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from finetune.evaluation import calibration, reliability, trust
from finetune.evaluation.tta import SIGMOID, SOFTMAX, activation_for
from finetune.recipe import EvaluationConfig
from tests.helpers.multi_label_eval import predictions


def _overconfident(n: int = 3000, c: int = 4, scale: float = 2.5, seed: int = 0):
    """Labels drawn from sigmoid(z); the model says z × scale (too sure): T ≈ scale undoes it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, c))
    targets = (rng.random((n, c)) < expit(z)).astype(np.uint8)
    return z * scale, targets


def test_binary_ece_is_the_ece_of_every_pair() -> None:
    p = predictions(100, 3, 0, skill=0.2)
    pairs = calibration.ece(p.probs.ravel(), p.targets.ravel() > 0)
    assert calibration.binary_ece(p.probs, p.targets) == pairs
    # Probabilities equal to the share of positives in their bin: calibrated.
    probs = np.repeat([[0.25, 0.75]], 8, axis=0)
    targets = np.array([[1, 1]] * 2 + [[0, 1]] * 4 + [[0, 0]] * 2)
    assert calibration.binary_ece(probs, targets) == pytest.approx(0.0)


def test_the_temperature_undoes_an_overconfident_model_and_minimises_the_bce() -> None:
    logits, targets = _overconfident()
    fit = calibration.fit_binary_temperature(logits, targets)
    assert fit.temperature == pytest.approx(2.5, rel=0.1) and fit.nll_after < fit.nll_before
    bce = lambda t: calibration._bce(logits, targets > 0, 1 / t)  # noqa: E731
    assert bce(fit.temperature) <= min(bce(fit.temperature * 0.97), bce(fit.temperature * 1.03))
    before = calibration.binary_ece(expit(logits), targets)
    after = calibration.binary_ece(expit(logits / fit.temperature), targets)
    assert after < before


def test_over_views_the_temperature_fits_the_averaged_sigmoid() -> None:
    logits, targets = _overconfident(n=1000)
    views = np.stack([logits, logits + 0.3, logits - 0.3], axis=1)  # N×V×C
    fit = calibration.fit_binary_temperature(views, targets)
    log_p, _ = calibration.log_sigmoids(views, 1 / fit.temperature)
    np.testing.assert_allclose(np.exp(log_p), expit(views / fit.temperature).mean(axis=1), rtol=1e-10)
    assert fit.temperature > 1.5


def test_every_pair_on_the_right_side_fits_no_temperature() -> None:
    targets = np.array([[1, 0], [0, 1]])
    fit = calibration.fit_binary_temperature(np.array([[3.0, -2.0], [-1.0, 4.0]]), targets)
    assert fit.temperature is None and "right side of 0.5" in fit.reason
    assert calibration.fit_binary_temperature(np.zeros((0, 2)), np.zeros((0, 2))).temperature is None


def test_trust_gives_intervals_and_ece_but_no_abstention() -> None:
    p = predictions(200, 4, 1, skill=0.3)
    p.uncalibrated_probs = np.clip(p.probs * 1.1, 0, 1)
    cfg = EvaluationConfig(bootstrap_resamples=200)
    found = trust.trust_metrics(p, ["map", "f1_micro"], 4, cfg)
    assert {"map_ci_low", "map_ci_high", "f1_micro_ci_low", "ci_level", "ci_resamples", "ece", "ece_uncalibrated"} <= set(found)
    assert not any(k.startswith("abstain") for k in found)
    assert found["ece"] == calibration.binary_ece(p.probs, p.targets)
    fields = trust.report_fields(found, multi_label=True)
    assert fields["confidence_intervals"]["map"] == [found["map_ci_low"], found["map_ci_high"]]
    assert fields["abstention"] == {"skipped": trust.MULTI_LABEL_ABSTENTION}
    line = trust.describe(trust.prefixed({**found, "map": 0.8, "f1_micro": 0.7}, "eval"), ["map", "f1_micro"], "eval")
    assert line.startswith("mAP (macro) 0.8000 (95% CI") and "F1 (micro) 0.7000" in line and "ECE" in line


def test_reliability_png_from_every_pair(tmp_path) -> None:
    from PIL import Image

    p = predictions(80, 3, 2, skill=0.2)
    p.uncalibrated_probs = p.probs ** 0.5
    path = reliability.write_reliability(tmp_path, p, "multi-label")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300
    fig = reliability.reliability_figure(p)
    top = fig.axes[0]
    assert "3 classes" in top.get_title() and "pair" in top.get_ylabel()
    # Before and after: two bar series whose legend carries the ECE of the pairs.
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert any(f"ECE {calibration.binary_ece(p.probs, p.targets):.3f}" in label for label in labels)


def test_a_multi_label_config_averages_sigmoids_over_views() -> None:
    assert activation_for({"problem_type": "multi_label_classification"}) is SIGMOID
    assert activation_for({"problem_type": "single_label_classification"}) is SOFTMAX
    assert activation_for({}) is SOFTMAX
