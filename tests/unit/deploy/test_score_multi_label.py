"""score.py on a multi-label model (`finetune eval`): scored at the thresholds saved in its config.json, with the multi-label metrics, the sigmoid averaged over test-time views, its report and pictures; an exported (ONNX) multi-label folder likewise."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import expit

from finetune.cli import eval as eval_cli
from finetune.data import multi_label
from finetune.deploy import score
from finetune.deploy.saved_run import load_saved
from finetune.evaluation import multi_label_metrics
from finetune.recipe.metric_names import MULTI_LABEL_METRICS
from tests.helpers import multi_label_eval as ml

NAMES = ["cat", "dog", "bird"]
THRESHOLDS = [0.3, 0.5, 0.7]



@pytest.fixture
def saved(tiny_vit, tmp_path):
    """A multi-label model saved as a run saves it: problem_type and thresholds in config.json."""
    model, processor = ml.multi_label_model(tiny_vit)
    model.config.id2label = dict(enumerate(NAMES))
    model.config.label2id = {n: i for i, n in enumerate(NAMES)}
    multi_label.set_thresholds(model.config, NAMES, THRESHOLDS)
    out = tmp_path / "run"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return load_saved(out)


def _logits(saved, images, flip: bool = False):
    from finetune import data

    transform = data.BatchTransform.for_processor(saved.processor, None)
    pixels = transform(np.stack([r["pixel_values"].numpy() for r in images]), train=False)
    import torch

    with torch.no_grad():
        x = torch.as_tensor(pixels)
        return saved.model(pixel_values=x.flip(-1) if flip else x).logits.double().numpy()


def test_eval_scores_at_the_saved_thresholds(saved, tmp_path) -> None:
    images = ml.rows(30, 3, 7)
    scores, predictions = score.trainer_scores(saved, images, 8, str(tmp_path / "scratch"))
    assert isinstance(predictions, multi_label_metrics.MultiLabelPredictions)
    np.testing.assert_allclose(predictions.thresholds, THRESHOLDS)
    probs = expit(_logits(saved, images))
    np.testing.assert_allclose(predictions.probs, probs, rtol=1e-4, atol=1e-6)
    targets = np.stack([r["labels"].numpy() for r in images])
    expected = multi_label_metrics.compute(list(MULTI_LABEL_METRICS), multi_label_metrics.MultiLabelPredictions(probs, targets, np.array(THRESHOLDS)))
    for name in MULTI_LABEL_METRICS:
        assert scores[f"eval_{name}"] == pytest.approx(expected[name], abs=1e-6)
    assert "eval_accuracy" not in scores


def test_eval_with_views_averages_the_sigmoid(saved, tmp_path) -> None:
    images = ml.rows(12, 3, 8)
    _, predictions = score.trainer_scores(saved, images, 4, str(tmp_path / "scratch"), tta="hflip")
    expected = (expit(_logits(saved, images)) + expit(_logits(saved, images, flip=True))) / 2
    np.testing.assert_allclose(predictions.probs, expected, rtol=1e-4, atol=1e-6)


def test_the_report_holds_the_multi_label_scores_and_pictures(saved, tmp_path) -> None:
    images = ml.rows(30, 3, 9)
    scores, predictions = score.trainer_scores(saved, images, 8, str(tmp_path / "scratch"))
    target = tmp_path / "report"
    result, where = score._write_report(saved.path, target, "some/data", None, "test", NAMES, predictions,
                                        float(scores["eval_loss"]), ml.eval_images(30), [])
    assert where == target
    report = json.loads((target / "eval_report.json").read_text())
    assert report["task"] == "multi_label" and report["map"] == pytest.approx(scores["eval_map"])
    assert report["thresholds"]["values"] == dict(zip(NAMES, THRESHOLDS))
    assert set(report["confidence_intervals"]) >= {"map", "f1_micro", "f1_macro", "exact_match", "level"}
    assert report["abstention"]["skipped"] and "ece" in report
    assert sorted(p.name for p in target.glob("*.png")) == [
        "per_class_ap.png", "reliability.png", "training_curves.png", "worst_images.png"
    ]


def test_an_exported_multi_label_model_applies_the_sigmoid_and_its_thresholds(tmp_path) -> None:
    from datasets import Dataset, Features, Image, Sequence, Value
    from PIL import Image as PILImage

    folder = tmp_path / "onnx"
    folder.mkdir()
    config = {"problem_type": multi_label.PROBLEM_TYPE, "id2label": {str(i): n for i, n in enumerate(NAMES)},
              multi_label.THRESHOLDS_KEY: dict(zip(NAMES, THRESHOLDS))}
    (folder / "config.json").write_text(json.dumps(config))
    paths, labels = [], [[0], [1, 2], [], [0, 1, 2]]
    for i, shade in enumerate((10, 90, 170, 250)):
        path = tmp_path / f"{i}.png"
        PILImage.new("RGB", (8, 8), (shade, shade, shade)).save(path)
        paths.append(str(path))
    rows = Dataset.from_dict({"image": paths, "labels": labels},
                             features=Features({"image": Image(), "labels": Sequence(Value("int64"))}))
    weights = np.array([[0.02, -0.01, 0.005]])

    class Preprocessor:
        def __call__(self, images):
            return np.stack([np.asarray(im, dtype=np.float32).mean(axis=(0, 1))[:1] for im in images])

        def geometry(self, image):
            return image

    classifier = SimpleNamespace(path=folder, class_names=NAMES, preprocessor=Preprocessor(),
                                 logits=lambda pixels: (pixels @ weights - 1.0).astype(np.float32))
    predictions, loss, images, bad = score.onnx_scores(classifier, rows, "image", "labels", 3)
    assert bad == [] and predictions.num_images == 4
    z = np.array([[10.0], [90.0], [170.0], [250.0]]) @ weights - 1.0
    np.testing.assert_allclose(predictions.probs, expit(z), rtol=1e-5)
    np.testing.assert_array_equal(predictions.targets, multi_label.multi_hot(labels, 3))
    np.testing.assert_allclose(predictions.thresholds, THRESHOLDS)
    y = multi_label.multi_hot(labels, 3)
    assert loss == pytest.approx(float(-np.mean(y * np.log(expit(z)) + (1 - y) * np.log(1 - expit(z)))), rel=1e-6)
    assert images[0]["pixel_values"].shape == (3, 8, 8)


def test_the_command_line_says_the_multi_label_scores(monkeypatch, capsys) -> None:
    result = {"task": "multi_label", "map": 0.8, "f1_micro": 0.7, "f1_macro": 0.6, "exact_match": 0.4,
              "num_images": 10, "tta": "none", "bad_files": [], "ece": 0.05,
              "confidence_intervals": {"level": 0.95, "map": [0.7, 0.9]}}
    monkeypatch.setattr(score, "evaluate_saved", lambda *a, **k: (result, Path("where")))
    args = argparse.Namespace(output_dir="run", data="d", split="test", config=None, revision=None, image_column=None,
                              label_column=None, batch_size=8, report_dir=None, int8=False, tta=None)
    assert eval_cli.run(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("eval: mAP 0.8000 (95% CI 0.7000–0.9000), F1 micro 0.7000, F1 macro 0.6000, exact match 0.4000")
    assert "at the run's thresholds on 10 images" in out and "ECE 0.0500" in out
