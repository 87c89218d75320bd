"""Metrics: local evaluate modules, batch-by-batch accumulation, the per-class report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, top_k_accuracy_score
from transformers import EvalPrediction

from finetune import metrics


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
