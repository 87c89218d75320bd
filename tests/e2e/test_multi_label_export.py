"""`finetune export` of a multi-label run: the folder keeps the task and the thresholds, the ONNX
runner and `predict` on it apply the sigmoid and thresholds, and int8 is reported in mAP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finetune.cli.main import main
from finetune.data import multi_label
from finetune.deploy import onnx_classifier as onnx_model
from tests.helpers.export import MULTI_LABEL_THRESHOLDS, multi_label_run, torch_sigmoids
from tests.helpers.images import make_image_folder

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("multi-label-export")
    images = make_image_folder(base / "images")
    run, names = multi_label_run(base, images)
    assert main(["export", str(run), "--quantize", "int8", "--calibration-size", "24"]) == 0
    return run, images, names, json.loads((run / "onnx" / "export_report.json").read_text())


def _files(images: Path) -> list[Path]:
    return sorted((images / "test").rglob("*.png"))[::2]  # every class


def test_export_keeps_the_task_and_thresholds_and_the_runner_applies_them(exported, capsys) -> None:
    run, images, names, report = exported
    config = json.loads((run / "onnx" / "config.json").read_text())
    assert config["problem_type"] == multi_label.PROBLEM_TYPE
    assert config[multi_label.THRESHOLDS_KEY] == MULTI_LABEL_THRESHOLDS
    assert report["multi_label"] and report["check"]["activation"] == "sigmoid"
    assert report["check"]["max_abs_sigmoid_diff"] <= 1e-3 and report["check"]["end_to_end_label_set_agreement"] == 1.0
    runner = onnx_model.load_export(run / "onnx")
    assert runner.multi_label
    assert runner.thresholds.tolist() == [MULTI_LABEL_THRESHOLDS.get(n, multi_label.DEFAULT_THRESHOLD) for n in names]
    files = _files(images)
    pixels = runner.preprocessor([onnx_model.read_image(str(f)) for f in files])
    assert np.array_equal(runner.probabilities(pixels), onnx_model.sigmoid(runner.logits(pixels)))
    assert np.abs(runner.probabilities(pixels) - torch_sigmoids(run, files)).max() < 1e-3
    assert main(["predict", str(run / "onnx"), *map(str, files), "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = [[n for n, _ in row] for row in runner.labels(pixels)]
    assert [[p["label"] for p in r["predictions"]] for r in rows] == expected and any(len(e) > 1 for e in expected)
    card = (run / "onnx" / "README.md").read_text()
    assert "| | mAP |" in card and "label_thresholds" in card


def test_int8_is_scored_in_map_against_fp32(exported) -> None:
    """mAP on the eval split (one class per image here, so one-hot rows), scikit-learn's
    average precision per class, its change from fp32, and how often int8 keeps fp32's labels."""
    from sklearn.metrics import average_precision_score

    run, images, names, report = exported
    assert report["metric"] == "map" and "accuracy" not in report
    scores = report["map"]
    assert scores["images"] == 18 and scores["int8_minus_fp32"] == pytest.approx(scores["onnx_int8"] - scores["onnx_fp32"])
    files = sorted((images / "test").rglob("*.png"))
    y = np.eye(len(names))[[names.index(f.parent.name) for f in files]]
    probs = torch_sigmoids(run, files)
    hand = np.mean([average_precision_score(y[:, c], probs[:, c]) for c in range(len(names))])
    assert scores["pytorch"] == pytest.approx(hand) and scores["onnx_fp32"] == pytest.approx(hand, abs=1e-3)
    versus = report["int8_vs_fp32"]
    assert 0 <= versus["label_set_agreement"] <= 1
    assert 0 <= versus["mean_abs_sigmoid_diff"] <= versus["max_abs_sigmoid_diff"] < 0.2


def test_int8_gets_thresholds_of_its_own_tuned_on_the_validation_piece(exported) -> None:
    """Tuned from the int8 model's probabilities for the run's validation piece (not the eval
    split), saved beside fp32's, applied by the int8 runner only; F1 reported for both."""
    from finetune.deploy.export_images import Images
    from finetune.evaluation import thresholds

    run, images, names, report = exported
    config = json.loads((run / "onnx" / "config.json").read_text())
    assert config[multi_label.THRESHOLDS_KEY] == MULTI_LABEL_THRESHOLDS  # fp32's, unchanged
    own = config[onnx_model.INT8_THRESHOLDS_KEY]
    rows = Images(run, None, None)
    assert report["int8_thresholds"] == {
        "tuned": True, "on": "the run's validation piece", "images": len(rows.validation_rows),
        "classes_tuned": len(own), "key": onnx_model.INT8_THRESHOLDS_KEY,
    }
    assert len(rows.validation_rows) != report["map"]["images"]  # not the eval split's 18
    int8 = onnx_model.load_export(run / "onnx", int8=True)
    probs, truth = [], []
    for batch, labels in rows.validation_batches():
        probs.append(int8.probabilities(int8.preprocessor(batch)))
        truth.append(np.eye(len(names))[labels])
    fit = thresholds.tune(np.concatenate(probs), np.concatenate(truth))
    assert own == {n: pytest.approx(v) for n, v, ok in zip(names, fit.values, fit.tuned) if ok} and own
    assert int8.thresholds.tolist() == pytest.approx([own.get(n, MULTI_LABEL_THRESHOLDS.get(n, 0.5)) for n in names])
    assert onnx_model.load_export(run / "onnx").thresholds.tolist() == [
        MULTI_LABEL_THRESHOLDS.get(n, multi_label.DEFAULT_THRESHOLD) for n in names
    ]
    f1 = report["f1_micro"]
    assert set(f1) == {"onnx_fp32", "onnx_int8_at_fp32_thresholds", "onnx_int8"}
    assert all(0 <= v <= 1 for v in f1.values())
