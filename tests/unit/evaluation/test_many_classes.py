"""A report of many classes stays within a bounded size and time: the per-class report is
complete, the full confusion matrix gives way to the most frequent confusions (in
eval_report.json above MAX_MATRIX_CLASSES, in the picture above MAX_MATRIX_PICTURE_CLASSES)."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from finetune.evaluation import metrics, plots
from finetune.evaluation.metrics import Predictions, per_class_report, top_confusions


def _predictions(classes: int, images: int, seed: int = 0) -> Predictions:
    """Generated predictions: right 60% of the time; each class's mistakes mostly go to the
    next class, so some confusions are far more frequent than others."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, images)
    preds = labels.copy()
    wrong = rng.random(images) > 0.6
    preds[wrong] = np.where(rng.random(wrong.sum()) < 0.8, (labels[wrong] + 1) % classes, rng.integers(0, classes, wrong.sum()))
    topk = np.stack([preds] + [(preds + k) % classes for k in range(1, 5)], axis=1)
    confidence = rng.random(images).astype(np.float32)
    return Predictions(labels, preds, topk, confidence, confidence)


def test_top_confusions_are_counted_without_a_matrix() -> None:
    p = Predictions(
        labels=np.array([0, 0, 0, 1, 1, 2, 2, 2, 2]),
        preds=np.array([1, 1, 0, 2, 1, 0, 0, 1, 2]),
        topk=np.zeros((9, 1), dtype=np.int64), confidence=np.ones(9), true_prob=np.ones(9),
    )
    assert top_confusions(p, ["a", "b", "c"]) == [
        {"true": "a", "predicted": "b", "count": 2, "share_of_true": 2 / 3},
        {"true": "c", "predicted": "a", "count": 2, "share_of_true": 0.5},
        {"true": "b", "predicted": "c", "count": 1, "share_of_true": 0.5},
        {"true": "c", "predicted": "b", "count": 1, "share_of_true": 0.25},
    ]
    assert top_confusions(p, ["a", "b", "c"], limit=1)[0]["count"] == 2


def test_twenty_thousand_classes_need_memory_linear_in_images_and_classes() -> None:
    n = 20_000
    p = _predictions(n, 40_000)
    tracemalloc.start()
    try:
        pairs = top_confusions(p, [f"c{i}" for i in range(n)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(pairs) == metrics.TOP_CONFUSIONS and pairs[0]["count"] >= pairs[-1]["count"]
    assert peak < 20e6  # a 20,000² matrix of counts alone would be 3.2 GB


def test_a_report_of_many_classes_is_complete_per_class_and_bounded(tmp_path: Path) -> None:
    n = 3_000
    names = [f"species {i:04d}" for i in range(n)]
    p = _predictions(n, 9_000)
    started = time.monotonic()
    report = per_class_report(p, names)
    text = json.dumps(report)
    assert time.monotonic() - started < 60
    assert len(report["per_class"]) == n and sum(r["support"] for r in report["per_class"].values()) == 9_000
    assert report["confusion_matrix"] is None  # 9 million counts
    assert len(report["top_confusions"]) == metrics.TOP_CONFUSIONS
    assert report["top_confusions"][0]["predicted"] == names[(names.index(report["top_confusions"][0]["true"]) + 1) % n]
    assert len(text) < 2_000_000  # the matrix as JSON: about 18 MB

    started = time.monotonic()
    plots.write_plots(tmp_path, p, names, eval_dataset=[{"pixel_values": np.zeros((3, 8, 8), np.uint8)}] * 9_000,
                      log_history=[])
    assert time.monotonic() - started < 120
    picture = tmp_path / "confusion_matrix.png"
    assert picture.stat().st_size < 500_000
    from PIL import Image

    with Image.open(picture) as image:
        assert image.width * image.height < 2_000_000


@pytest.mark.parametrize("n", [5, plots.MAX_MATRIX_PICTURE_CLASSES])
def test_few_classes_keep_the_full_matrix(n: int) -> None:
    p = _predictions(n, 40 * n)
    report = per_class_report(p, [f"c{i}" for i in range(n)])
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (n, n) and matrix.sum() == 40 * n
    assert report["top_confusions"][0]["count"] == np.max(matrix - np.diag(np.diag(matrix)))
    figure = plots.confusion_figure(p, [f"c{i}" for i in range(n)])
    assert figure.axes[0].images  # the matrix, drawn as an image
