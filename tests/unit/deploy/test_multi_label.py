"""A multi-label model deployed: `finetune predict` (PyTorch and ONNX) lists every label at its
threshold, `finetune export` keeps the task and thresholds and reports int8 in mAP, and the ONNX
runner applies the sigmoid without torch."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetune.cli.main import main
from finetune.data import multi_label
from finetune.deploy import onnx_classifier as onnx_model
from tests.helpers import ROOT
from tests.helpers.export import fake_run
from tests.helpers.images import make_image_folder
from tests.helpers.models import make_tiny_resnet

THRESHOLDS = {"blue": 0.3, "green": 0.62}  # "red" keeps the default


# ------------------------------------------------------------------- the runner's pieces


def test_the_runner_reads_config_json_as_the_contract_module_does() -> None:
    """onnx_classifier keeps its own copy (the contract module's package imports torch): the same."""
    assert onnx_model.MULTI_LABEL_PROBLEM == multi_label.PROBLEM_TYPE
    assert onnx_model.THRESHOLDS_KEY == multi_label.THRESHOLDS_KEY
    assert onnx_model.DEFAULT_THRESHOLD == multi_label.DEFAULT_THRESHOLD
    names = ["a", "b", "c"]
    for config in ({}, {"problem_type": "single_label_classification"}, {"problem_type": multi_label.PROBLEM_TYPE},
                   {"problem_type": multi_label.PROBLEM_TYPE, multi_label.THRESHOLDS_KEY: {"b": 0.2, "z": 0.9}}):
        assert onnx_model.is_multi_label(config) == multi_label.is_multi_label(config)
        assert np.array_equal(onnx_model.thresholds(config, names), multi_label.thresholds(config, names))


def test_sigmoid_is_exact_and_does_not_overflow() -> None:
    x = np.array([[-1000.0, -20.0, -1.0, 0.0, 1.0, 20.0, 1000.0]], dtype=np.float32)
    with np.errstate(over="raise"):
        got = onnx_model.sigmoid(x)
    expected = 1 / (1 + np.exp(-x.astype(np.float64).clip(-700, 700)))
    assert got.dtype == np.float32 and np.allclose(got, expected, atol=1e-7)


def test_above_thresholds_lists_every_class_at_its_threshold_most_probable_first() -> None:
    probs = np.array([[0.30, 0.95, 0.61, 0.10], [0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.9, 0.5]])
    names = ["a", "b", "c", "d"]
    limits = np.array([0.3, 0.5, 0.62, 0.05])
    got = onnx_model.above_thresholds(probs, names, limits)
    assert got[0] == [("b", 0.95), ("a", 0.30), ("d", 0.10)]  # c: 0.61 < 0.62; a: at its threshold counts
    assert got[1] == [("d", 0.2)]
    assert got[2] == [("c", 0.9), ("a", 0.5), ("b", 0.5), ("d", 0.5)]  # ties: the lower index first
    one = onnx_model.above_thresholds(probs, names, limits, minimum=0.5)  # one value for every class
    assert [[n for n, _ in row] for row in one] == [["b", "c"], [], ["c", "a", "b", "d"]]


def test_runner_and_predict_import_no_torch() -> None:
    code = (
        "import sys, finetune.deploy.onnx_classifier, finetune.deploy.predict, finetune.cli.predict; "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


# ------------------------------------------------------------------ a multi-label run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A finished multi-label run (the tiny ResNet, thresholds saved for two of its classes,
    a head that makes several classes likely) and its int8 export."""
    import torch
    from transformers import AutoModelForImageClassification

    base = tmp_path_factory.mktemp("multi-label-run")
    images = make_image_folder(base / "images")
    run = fake_run(base, make_tiny_resnet, images)
    model = AutoModelForImageClassification.from_pretrained(run)
    with torch.no_grad():
        torch.manual_seed(0)
        model.classifier[-1].weight.normal_(0, 2.0)
        model.classifier[-1].bias.copy_(torch.tensor([0.0, -1.0, -3.5]))
    model.config.problem_type = multi_label.PROBLEM_TYPE
    names = [model.config.id2label[i] for i in range(3)]
    multi_label.set_thresholds(model.config, list(THRESHOLDS), list(THRESHOLDS.values()))
    model.save_pretrained(run)
    assert main(["export", str(run), "--quantize", "int8", "--calibration-size", "24"]) == 0
    report = json.loads((run / "onnx" / "export_report.json").read_text())
    return run, images, names, report


def _torch_probabilities(run: Path, files: list[Path], flip: bool = False) -> np.ndarray:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(run).eval()
    processor = AutoImageProcessor.from_pretrained(run)
    rows = []
    for path in files:
        with Image.open(path) as im:
            pixels = processor(images=[im.convert("RGB")], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            p = model(pixel_values=pixels).logits.sigmoid()
            if flip:
                p = (p + model(pixel_values=pixels.flip(-1)).logits.sigmoid()) / 2
        rows.append(p[0].numpy())
    return np.stack(rows)


def _expected_labels(probs: np.ndarray, names: list[str], minimum: float | None = None) -> list[list[str]]:
    limits = [minimum if minimum is not None else THRESHOLDS.get(n, multi_label.DEFAULT_THRESHOLD) for n in names]
    return [[names[i] for i in np.argsort(-row, kind="stable") if row[i] >= limits[i]] for row in probs]


def _files(images: Path) -> list[Path]:
    return sorted((images / "test").rglob("*.png"))[::2]  # every class


def test_predict_lists_every_label_at_its_threshold(exported, capsys) -> None:
    run, images, names, _ = exported
    files = _files(images)
    assert main(["predict", str(run), *map(str, files), "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    probs = _torch_probabilities(run, files)
    expected = _expected_labels(probs, names)
    assert [[p["label"] for p in r["predictions"]] for r in rows] == expected
    assert any(len(labels) > 1 for labels in expected) and any(len(labels) == 0 for labels in expected)
    for row, p in zip(rows, probs):
        for item in row["predictions"]:
            assert item["probability"] == pytest.approx(float(p[names.index(item["label"])]), abs=2e-6)
        assert "abstained" not in row
    assert "multi-label" in captured.err and "got no label" in captured.err
    # --min-probability replaces every threshold; --top-k caps the count.
    assert main(["predict", str(run), *map(str, files), "--format", "jsonl", "--min-probability", "0.2", "--top-k", "2"]) == 0
    capped = [[p["label"] for p in json.loads(line)["predictions"]] for line in capsys.readouterr().out.splitlines()]
    assert capped == [labels[:2] for labels in _expected_labels(probs, names, minimum=0.2)]


def test_predict_csv_joins_the_labels_and_tta_averages_the_sigmoids(exported, capsys) -> None:
    run, images, names, _ = exported
    files = _files(images)
    assert main(["predict", str(run), *map(str, files), "--tta", "hflip"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == ["path", "labels", "probabilities", "error"]
    probs = _torch_probabilities(run, files, flip=True)
    assert [r["labels"].split(";") if r["labels"] else [] for r in rows] == _expected_labels(probs, names)
    for row, p in zip(rows, probs):
        if row["labels"]:
            got = [float(v) for v in row["probabilities"].split(";")]
            assert got == pytest.approx([float(p[names.index(n)]) for n in row["labels"].split(";")], abs=2e-6)


def test_export_keeps_the_task_and_thresholds_and_the_runner_applies_them(exported, capsys) -> None:
    run, images, names, report = exported
    config = json.loads((run / "onnx" / "config.json").read_text())
    assert config["problem_type"] == multi_label.PROBLEM_TYPE and config[multi_label.THRESHOLDS_KEY] == THRESHOLDS
    assert report["multi_label"] and report["check"]["activation"] == "sigmoid"
    assert report["check"]["max_abs_sigmoid_diff"] <= 1e-3 and report["check"]["end_to_end_label_set_agreement"] == 1.0
    runner = onnx_model.load_export(run / "onnx")
    assert runner.multi_label and runner.thresholds.tolist() == [THRESHOLDS.get(n, 0.5) for n in names]
    files = _files(images)
    pixels = runner.preprocessor([onnx_model.read_image(str(f)) for f in files])
    assert np.abs(runner.probabilities(pixels) - onnx_model.sigmoid(runner.logits(pixels))).max() == 0
    torch_probs = _torch_probabilities(run, files)
    assert np.abs(runner.probabilities(pixels) - torch_probs).max() < 1e-3
    assert main(["predict", str(run / "onnx"), *map(str, files), "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [[p["label"] for p in r["predictions"]] for r in rows] == [[n for n, _ in row] for row in runner.labels(pixels)]
    assert "mAP" in (run / "onnx" / "README.md").read_text()


def test_int8_is_scored_in_map_against_fp32(exported) -> None:
    """The int8 report gives mAP (over the eval split's classes, scikit-learn's average
    precision), its change from fp32, and how often int8 keeps fp32's set of labels."""
    from sklearn.metrics import average_precision_score

    run, images, names, report = exported
    assert report["metric"] == "map" and "accuracy" not in report
    scores = report["map"]
    assert {"pytorch", "onnx_fp32", "onnx_int8", "int8_minus_fp32"} <= set(scores) and scores["images"] == 18
    assert scores["int8_minus_fp32"] == pytest.approx(scores["onnx_int8"] - scores["onnx_fp32"])
    assert scores["pytorch"] == pytest.approx(scores["onnx_fp32"], abs=1e-3)
    # The eval split's images (one class each here, so one-hot rows), scored by hand.
    files = sorted((images / "test").rglob("*.png"))
    y = np.eye(3)[[names.index(f.parent.name) for f in files]]
    probs = _torch_probabilities(run, files)
    assert scores["pytorch"] == pytest.approx(np.mean([average_precision_score(y[:, c], probs[:, c]) for c in range(3)]))
    versus = report["int8_vs_fp32"]
    assert 0 <= versus["label_set_agreement"] <= 1 and 0 <= versus["mean_abs_sigmoid_diff"] <= versus["max_abs_sigmoid_diff"]


def test_csv_refuses_class_names_holding_the_separator(tmp_path, capsys) -> None:
    from transformers import AutoConfig

    model = make_tiny_resnet(tmp_path / "run", num_labels=2)
    config = AutoConfig.from_pretrained(model)
    config.problem_type = multi_label.PROBLEM_TYPE
    config.id2label, config.label2id = {0: "cat;dog", 1: "emu"}, {"cat;dog": 0, "emu": 1}
    config.save_pretrained(model)
    image = make_image_folder(tmp_path / "images", per_class=1, splits=("train",))
    capsys.readouterr()
    assert main(["predict", str(model), str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("finetune: error: --format csv: class name 'cat;dog' contains ';'") and "--format jsonl" in err
    assert main(["predict", str(model), str(image), "--format", "jsonl"]) == 0
