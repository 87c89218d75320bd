"""Metrics: local evaluate modules, batch-by-batch accumulation, the per-class report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, top_k_accuracy_score
from transformers import EvalPrediction

from finetune.evaluation import metrics


def random_eval(n: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += 1.5  # better than chance, not perfect
    return logits, labels


def test_modules_load_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metrics.load_metric.cache_clear()
    assert metrics.load_metric("accuracy").compute(predictions=[1, 0], references=[1, 1]) == {"accuracy": 0.5}


@pytest.mark.parametrize("classes", [3, 10])
def test_batched_accumulation_equals_whole_set(classes: int) -> None:
    logits, labels = random_eval(203, classes)
    acc = metrics.MetricAccumulator(list(("accuracy", "f1", "precision", "recall", "top5_accuracy")), classes)
    out = {}
    for start in range(0, 203, 32):
        end = min(start + 32, 203)
        out = acc(EvalPrediction(predictions=logits[start:end], label_ids=labels[start:end]), compute_result=end == 203)
        if end < 203:
            assert out == {}
    preds = logits.argmax(-1).numpy()
    y = labels.numpy()
    assert out["num_images"] == 203
    assert out["accuracy"] == pytest.approx(accuracy_score(y, preds))
    assert out["f1"] == pytest.approx(f1_score(y, preds, average="macro", labels=range(classes), zero_division=0))
    assert out["precision"] == pytest.approx(precision_score(y, preds, average="macro", labels=range(classes), zero_division=0))
    assert out["recall"] == pytest.approx(recall_score(y, preds, average="macro", labels=range(classes), zero_division=0))
    if classes > 5:
        assert out["top5_accuracy"] == pytest.approx(top_k_accuracy_score(y, logits.numpy(), k=5, labels=range(classes)))
    else:
        assert "top5_accuracy" not in out
    # The accumulator starts afresh for the next evaluation.
    again = acc(EvalPrediction(predictions=logits[:10], label_ids=labels[:10]), compute_result=True)
    assert again["num_images"] == 10


def test_accumulator_keeps_no_logits() -> None:
    logits, labels = random_eval(64, 100)
    acc = metrics.MetricAccumulator(["accuracy"], 100)
    acc(EvalPrediction(predictions=logits, label_ids=labels), compute_result=False)
    kept = sum(a.nbytes for part in acc._parts for a in part)
    assert kept < logits.numel() * 4 / 5  # a few numbers per image, not 100 scores


def test_per_class_report() -> None:
    logits, labels = random_eval(120, 6, seed=1)
    acc = metrics.MetricAccumulator(["accuracy"], 6)
    acc(EvalPrediction(predictions=logits, label_ids=labels), compute_result=True)
    names = [f"class {i}" for i in range(6)]
    report = metrics.per_class_report(acc.last, names)
    preds = logits.argmax(-1).numpy()
    y = labels.numpy()
    assert set(report["per_class"]) == set(names)
    assert sum(row["support"] for row in report["per_class"].values()) == 120
    assert report["per_class"]["class 2"]["f1"] == pytest.approx(f1_score(y, preds, average=None, labels=range(6))[2])
    assert report["weighted_f1"] == pytest.approx(f1_score(y, preds, average="weighted"))
    assert np.array(report["confusion_matrix"]).sum() == 120 and "top5_accuracy" in report


def _one_hot_eval(labels: list[int], preds: list[int], classes: int) -> EvalPrediction:
    logits = torch.full((len(preds), classes), -5.0)
    logits[torch.arange(len(preds)), torch.tensor(preds)] = 5.0
    return EvalPrediction(predictions=logits, label_ids=torch.tensor(labels))


def test_classes_absent_from_the_eval_set_are_left_out_of_macro_scores(caplog) -> None:
    """Trained on a, b, c; the test set has only a and b, all right: every macro score is 1,
    not 2/3 (class c has no recall to measure), and c is named as absent."""
    names = ["a", "b", "c"]
    acc = metrics.MetricAccumulator(["accuracy", "f1", "precision", "recall"], 3)
    out = acc(_one_hot_eval([0, 0, 1, 1, 1], [0, 0, 1, 1, 1], 3), compute_result=True)
    assert out["accuracy"] == out["f1"] == out["precision"] == out["recall"] == 1.0
    with caplog.at_level("WARNING", logger="finetune.evaluation.metrics"):
        report = metrics.per_class_report(acc.last, names)
    assert report["macro_f1"] == report["macro_precision"] == report["macro_recall"] == 1.0
    assert report["weighted_f1"] == 1.0
    assert report["absent_classes"] == ["c"]
    assert set(report["per_class"]) == set(names) and report["per_class"]["c"]["support"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "c" in warnings[0] and "no image in the evaluated set" in warnings[0]


def test_a_present_class_that_is_never_predicted_still_counts_as_zero(caplog) -> None:
    labels, preds = [0, 0, 1, 1, 2], [0, 0, 1, 1, 0]
    acc = metrics.MetricAccumulator(["f1", "precision", "recall"], 3)
    out = acc(_one_hot_eval(labels, preds, 3), compute_result=True)
    with caplog.at_level("WARNING", logger="finetune.evaluation.metrics"):
        report = metrics.per_class_report(acc.last, ["a", "b", "c"])
    expected = f1_score(labels, preds, labels=[0, 1, 2], average="macro", zero_division=0)
    assert out["f1"] == pytest.approx(expected) == pytest.approx((0.8 + 1.0 + 0.0) / 3)
    assert report["macro_f1"] == pytest.approx(expected) and report["per_class"]["c"]["f1"] == 0.0
    assert out["recall"] == pytest.approx(recall_score(labels, preds, labels=[0, 1, 2], average="macro"))
    assert report["absent_classes"] == [] and not caplog.records


def test_predicting_an_absent_class_still_costs_the_true_class_its_recall() -> None:
    labels, preds = [0, 0, 1, 1], [0, 2, 1, 1]
    acc = metrics.MetricAccumulator(["f1", "precision", "recall"], 3)
    out = acc(_one_hot_eval(labels, preds, 3), compute_result=True)
    report = metrics.per_class_report(acc.last, ["a", "b", "c"])
    for name in ("f1", "precision", "recall"):
        expected = {"f1": f1_score, "precision": precision_score, "recall": recall_score}[name](
            labels, preds, labels=[0, 1], average="macro", zero_division=0
        )
        assert out[name] == pytest.approx(expected) and report[f"macro_{name}"] == pytest.approx(expected)
    assert out["recall"] == pytest.approx(0.75)  # a: 1 of 2 found, b: 2 of 2
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["absent_classes"] == ["c"]
