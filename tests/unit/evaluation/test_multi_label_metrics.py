"""multi_label_metrics.py and the multi-label MetricAccumulator: the metrics equal scikit-learn's, padding rows are left out, batches add up to one."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_recall_fscore_support

from finetune.data import multi_label
from finetune.evaluation import multi_label_metrics as mlm
from finetune.evaluation.metrics import MetricAccumulator
from finetune.recipe.metric_names import MULTI_LABEL_METRICS, SINGLE_LABEL_METRICS
from tests.helpers.multi_label_eval import fake_multi_label, predictions

ALL = list(MULTI_LABEL_METRICS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_metrics_equal_scikit_learns_on_random_data(seed) -> None:
    rng = np.random.default_rng(seed)
    thresholds = rng.uniform(0.2, 0.8, 7)
    p = predictions(300, 7, seed, thresholds=thresholds)
    p.targets[:, 3] = 0  # a class with no positive image: left out of the macro averages
    p.probs[:40] = np.round(p.probs[:40], 1)  # ties
    got = mlm.compute(ALL, p)
    present = [c for c in range(7) if c != 3]
    predicted = p.probs >= thresholds
    assert got["map"] == pytest.approx(average_precision_score(p.targets[:, present], p.probs[:, present], average="macro"), abs=1e-12)
    assert got["f1_micro"] == pytest.approx(f1_score(p.targets, predicted, average="micro"), abs=1e-12)
    assert got["f1_macro"] == pytest.approx(f1_score(p.targets, predicted, average="macro", labels=present), abs=1e-12)
    assert got["exact_match"] == pytest.approx(accuracy_score(p.targets, predicted), abs=1e-12)


def test_the_per_class_report_holds_each_class_with_its_threshold() -> None:
    thresholds = np.array([0.3, 0.5, 0.7, 0.5])
    p = predictions(200, 4, 5, thresholds=thresholds)
    p.targets[:, 2] = 0
    names = ["cat", "dog", "bird", "猫"]
    report = mlm.per_class_report(p, names)
    precision, recall, f1, support = precision_recall_fscore_support(
        p.targets, p.probs >= thresholds, average=None, zero_division=0
    )
    assert list(report["per_class"]) == names and report["absent_classes"] == ["bird"]
    for c, name in enumerate(names):
        row = report["per_class"][name]
        assert row["precision"] == pytest.approx(precision[c]) and row["recall"] == pytest.approx(recall[c])
        assert row["f1"] == pytest.approx(f1[c]) and row["support"] == support[c]
        assert row["threshold"] == thresholds[c]
    assert report["per_class"]["bird"]["ap"] is None
    assert report["per_class"]["cat"]["ap"] == pytest.approx(average_precision_score(p.targets[:, 0], p.probs[:, 0]))
    assert report["map"] == pytest.approx(np.mean([report["per_class"][n]["ap"] for n in ("cat", "dog", "猫")]))
    assert report["task"] == "multi_label" and report["num_images"] == 200
    import json

    json.dumps(report)  # eval_report.json: plain JSON types only


def test_no_positive_label_at_all_scores_zero_map() -> None:
    p = predictions(20, 3, 0)
    p.targets[:] = 0
    assert mlm.compute(["map"], p) == {"map": 0.0}


def test_the_worst_images_are_those_furthest_from_their_labels() -> None:
    p = predictions(50, 4, 1)
    worst = mlm.worst_images(p, 5)
    error = np.abs(p.probs.astype(np.float64) - p.targets).sum(axis=1)
    assert list(worst) == list(np.argsort(-error, kind="stable")[:5])
    assert error[worst[0]] == error.max()


def _batch(logits, labels):
    return SimpleNamespace(predictions=logits, label_ids=labels)


def _logits_and_targets(n: int, c: int, seed: int):
    probs, targets = fake_multi_label(n, c, seed)
    logits = np.log(np.clip(probs, 1e-4, 1 - 1e-4) / (1 - np.clip(probs, 1e-4, 1 - 1e-4))).astype(np.float32)
    return logits, targets.astype(np.float32)


def test_three_batches_equal_one_batch() -> None:
    logits, targets = _logits_and_targets(90, 5, 3)
    whole = MetricAccumulator(ALL, 5, multi_label=True)
    one = whole(_batch(logits, targets), compute_result=True)
    parts = MetricAccumulator(ALL, 5, multi_label=True)
    for start, stop in ((0, 20), (20, 61), (61, 90)):
        out = parts(_batch(logits[start:stop], targets[start:stop]), compute_result=stop == 90)
    assert out == pytest.approx(one, abs=1e-9) and one["num_images"] == 90
    # (torch's vectorised sigmoid may round the last bit differently with the batch's length)
    np.testing.assert_allclose(parts.last.probs, whole.last.probs, rtol=1e-6)
    np.testing.assert_array_equal(parts.last.targets, whole.last.targets)
    assert parts.kept.all() and len(parts.kept) == 90


def test_padding_rows_are_left_out() -> None:
    logits, targets = _logits_and_targets(40, 4, 4)
    clean = MetricAccumulator(ALL, 4, multi_label=True)(_batch(logits, targets))
    padded_logits = np.concatenate([logits[:10], np.full((3, 4), 9.0, np.float32), logits[10:], np.zeros((2, 4), np.float32)])
    pad = np.full((3, 4), multi_label.IGNORE_VALUE, np.float32)
    padded_targets = np.concatenate([targets[:10], pad, targets[10:], pad[:2]])
    accumulator = MetricAccumulator(ALL, 4, multi_label=True)
    assert accumulator(_batch(padded_logits, padded_targets)) == clean
    assert accumulator.kept.tolist() == [True] * 10 + [False] * 3 + [True] * 30 + [False] * 2
    assert accumulator.last.num_images == 40


def test_the_thresholds_move_f1_and_exact_match_but_not_map() -> None:
    logits, targets = _logits_and_targets(100, 3, 5)
    accumulator = MetricAccumulator(ALL, 3, multi_label=True)
    at_half = accumulator(_batch(logits, targets))
    np.testing.assert_array_equal(accumulator.last.thresholds, [0.5, 0.5, 0.5])
    accumulator.thresholds = np.array([0.2, 0.6, 0.9])
    moved = accumulator(_batch(logits, targets))
    assert moved["map"] == at_half["map"] and moved["f1_micro"] != at_half["f1_micro"]
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert moved["f1_micro"] == pytest.approx(f1_score(targets, probs >= [0.2, 0.6, 0.9], average="micro"), abs=1e-6)


def test_a_temperature_keeps_the_probabilities_before_it() -> None:
    logits, targets = _logits_and_targets(30, 3, 6)
    accumulator = MetricAccumulator(ALL, 3, multi_label=True)
    accumulator.temperature = 2.0
    accumulator(_batch(logits, targets))
    expected = 1 / (1 + np.exp(-2.0 * logits.astype(np.float64)))
    np.testing.assert_allclose(accumulator.last.uncalibrated_probs, expected, rtol=1e-5)


def test_the_default_metric_list_becomes_the_multi_label_one() -> None:
    assert MetricAccumulator(list(SINGLE_LABEL_METRICS), 3, multi_label=True).metrics == ALL
    assert MetricAccumulator(["map"], 3, multi_label=True).metrics == ["map"]
    assert MetricAccumulator(list(SINGLE_LABEL_METRICS), 3).metrics == list(SINGLE_LABEL_METRICS)
    with pytest.raises(ValueError, match="not multi-label metrics: accuracy"):
        MetricAccumulator(["accuracy", "map"], 3, multi_label=True)(_batch(*_logits_and_targets(5, 3, 0)))
