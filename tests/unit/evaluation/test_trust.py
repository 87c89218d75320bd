"""One evaluation's trust metrics: the flat keys, the terminal line, the report fields, the accumulator's uncalibrated probabilities, the reliability diagram."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from finetune.evaluation import metrics, reliability, trust
from finetune.evaluation.metrics import Predictions
from finetune.recipe import EvaluationConfig


def made_up(n: int = 200, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    preds = np.where(rng.random(n) < 0.7, labels, (labels + 1) % 3)
    confidence = rng.uniform(0.4, 1.0, n)
    return Predictions(labels, preds, np.stack([preds, (preds + 1) % 3, (preds + 2) % 3], 1), confidence, confidence,
                       uncalibrated_confidence=np.minimum(confidence * 1.3, 1.0))


def test_trust_metrics_keys_and_line() -> None:
    p = made_up()
    values = trust.trust_metrics(p, ["accuracy", "f1"], 3, EvaluationConfig(ci_level=0.9, bootstrap_resamples=200))
    assert values["ci_level"] == 0.9 and values["ci_resamples"] == 200
    accuracy = float(np.mean(p.preds == p.labels))
    assert values["accuracy_ci_low"] < accuracy < values["accuracy_ci_high"]
    assert values["accuracy_ci_high"] - values["accuracy_ci_low"] < 0.15
    assert {"f1_ci_low", "f1_ci_high", "ece", "ece_uncalibrated", "abstain_target_accuracy"} <= set(values)
    assert "accuracy_ci_exact_low" not in values
    prefixed = trust.prefixed(values, "eval") | {"eval_accuracy": 0.7, "eval_f1": 0.69}
    line = trust.describe(prefixed, ["accuracy", "f1"], "eval")
    assert line.startswith("Accuracy 0.7000 (90% CI ") and "F1 (macro) 0.6900 (90% CI" in line
    assert "ECE" in line and "before temperature scaling" in line
    report = trust.report_fields(values)
    assert report["confidence_intervals"]["macro_f1"] == [values["f1_ci_low"], values["f1_ci_high"]]
    assert report["abstention"]["target_accuracy"] == 0.95


def test_every_image_right_gives_the_exact_binomial_interval_too() -> None:
    labels = np.zeros(18, dtype=np.int64)
    p = Predictions(labels, labels, labels[:, None], np.ones(18), np.ones(18))
    values = trust.trust_metrics(p, ["accuracy"], 2)
    assert values["accuracy_ci_low"] == values["accuracy_ci_high"] == 1.0
    # Clopper-Pearson for 18 of 18 at 95%: (0.025)^(1/18).
    assert values["accuracy_ci_exact_low"] == pytest.approx(0.025 ** (1 / 18), abs=1e-6)
    assert values["accuracy_ci_exact_high"] == 1.0
    assert "exact binomial" in trust.describe(values | {"accuracy": 1.0}, ["accuracy"])


def test_the_accumulator_keeps_the_probabilities_before_a_folded_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(20, 4, generator=g) * 3
    labels = torch.randint(0, 4, (20,), generator=g)
    acc = metrics.MetricAccumulator(["accuracy"], 4)
    acc.temperature = 2.5
    acc(EvalPrediction(predictions=raw / 2.5, label_ids=labels), compute_result=True)
    p = acc.last
    np.testing.assert_allclose(p.uncalibrated_confidence, raw.softmax(-1).max(-1).values.numpy(), rtol=1e-5)
    np.testing.assert_allclose(p.confidence, (raw / 2.5).softmax(-1).max(-1).values.numpy(), rtol=1e-5)
    acc.temperature = None
    acc(EvalPrediction(predictions=raw, label_ids=labels), compute_result=True)
    assert acc.last.uncalibrated_confidence is None


def test_reliability_png(tmp_path) -> None:
    from PIL import Image

    path = reliability.write_reliability(tmp_path, made_up())
    assert path.name == "reliability.png" and Image.open(path).size[0] > 300
    plain = made_up()
    plain.uncalibrated_confidence = None
    reliability.write_reliability(tmp_path / "plain", plain)
    assert (tmp_path / "plain" / "reliability.png").is_file()
