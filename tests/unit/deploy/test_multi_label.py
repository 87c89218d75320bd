"""A multi-label model deployed: `finetune predict` lists every label at its threshold, int8 is
scored in mAP, and the ONNX runner's sigmoid and thresholds need no torch (the export itself:
tests/e2e/test_multi_label_export.py)."""

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
from tests.helpers.export import labels_at_thresholds, multi_label_run, torch_sigmoids
from tests.helpers.images import make_image_folder
from tests.helpers.models import make_tiny_resnet

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
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("multi-label-run")
    images = make_image_folder(base / "images")
    path, names = multi_label_run(base, images)
    return path, images, names


def _files(images: Path) -> list[Path]:
    return sorted((images / "test").rglob("*.png"))[::2]  # every class


def test_predict_lists_every_label_at_its_threshold(run, capsys) -> None:
    path, images, names = run
    files = _files(images)
    assert main(["predict", str(path), *map(str, files), "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    probs = torch_sigmoids(path, files)
    expected = labels_at_thresholds(probs, names)
    assert [[p["label"] for p in r["predictions"]] for r in rows] == expected
    assert any(len(labels) > 1 for labels in expected) and any(len(labels) == 0 for labels in expected)
    for row, p in zip(rows, probs):
        for item in row["predictions"]:
            assert item["probability"] == pytest.approx(float(p[names.index(item["label"])]), abs=2e-6)
        assert "abstained" not in row
    assert "multi-label" in captured.err and "got no label" in captured.err
    # --min-probability replaces every threshold; --top-k caps the count.
    assert main(["predict", str(path), *map(str, files), "--format", "jsonl", "--min-probability", "0.2", "--top-k", "2"]) == 0
    capped = [[p["label"] for p in json.loads(line)["predictions"]] for line in capsys.readouterr().out.splitlines()]
    assert capped == [labels[:2] for labels in labels_at_thresholds(probs, names, minimum=0.2)]


def test_predict_csv_joins_the_labels_and_tta_averages_the_sigmoids(run, capsys) -> None:
    path, images, names = run
    files = _files(images)
    assert main(["predict", str(path), *map(str, files), "--tta", "hflip"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == ["path", "labels", "probabilities", "error"]
    probs = torch_sigmoids(path, files, flip=True)
    assert [r["labels"].split(";") if r["labels"] else [] for r in rows] == labels_at_thresholds(probs, names)
    for row, p in zip(rows, probs):
        if row["labels"]:
            got = [float(v) for v in row["probabilities"].split(";")]
            assert got == pytest.approx([float(p[names.index(n)]) for n in row["labels"].split(";")], abs=2e-6)


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


# ------------------------------------------------------------------ int8 against fp32


class _Linear:
    """A stand-in for an exported model: logits = features @ W (the 'images' are feature rows)."""

    def __init__(self, weight: np.ndarray, noise: float = 0.0, multi: bool = True) -> None:
        self.weight, self.noise, self.multi_label = weight, noise, multi
        self.class_names = [f"c{i}" for i in range(weight.shape[1])]
        self.thresholds = np.array([0.5, 0.3, 0.7])[: weight.shape[1]]
        self.preprocessor = np.stack

    def logits(self, x: np.ndarray) -> np.ndarray:
        out = (x @ self.weight).astype(np.float32)
        # A disturbance that depends on the image alone, not on its batch.
        return out + (self.noise * np.sin(37 * x[:, :1] + np.arange(out.shape[1]))).astype(np.float32)

    def activation(self, logits: np.ndarray) -> np.ndarray:
        return onnx_model.sigmoid(logits) if self.multi_label else onnx_model.softmax(logits)


class _Images:
    def __init__(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.x, self.y = x, y
        self.labelled, self.eval_name, self.data_problem = y is not None, "test", "no data set"

    def eval_batches(self):
        for start in range(0, len(self.x), 16):
            yield list(self.x[start : start + 16]), self.y[start : start + 16]


def _torch_side(weight: np.ndarray):
    import torch

    class Model(torch.nn.Module):
        def forward(self, pixel_values):
            return type("Out", (), {"logits": pixel_values @ torch.from_numpy(weight)})()

    def processor(images, return_tensors):
        return {"pixel_values": torch.from_numpy(np.stack(images))}

    return Model(), processor


def test_int8_is_scored_in_map_and_by_how_often_it_keeps_fp32s_labels() -> None:
    from sklearn.metrics import average_precision_score

    from finetune.deploy.export import compare_int8

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    weight = rng.normal(size=(5, 3)).astype(np.float32)
    y = (x @ weight + rng.normal(size=(40, 3)) > 0).astype(np.float32)
    y[:, 2] = 0  # a class without a positive image: left out of the mean
    fp32, int8 = _Linear(weight), _Linear(weight, noise=0.4)
    model, processor = _torch_side(weight)
    out = compare_int8(model, processor, fp32, int8, _Images(x, y), list(x[:4]))
    assert out["metric"] == "map" and "accuracy" not in out
    scores = out["map"]

    def ap(p):
        return np.mean([average_precision_score(y[:, c], p[:, c]) for c in (0, 1)])

    assert scores["onnx_fp32"] == pytest.approx(ap(fp32.activation(fp32.logits(x)))) == pytest.approx(scores["pytorch"])
    assert scores["onnx_int8"] == pytest.approx(ap(int8.activation(int8.logits(x))))
    assert scores["int8_minus_fp32"] == pytest.approx(scores["onnx_int8"] - scores["onnx_fp32"]) and scores["images"] == 40
    p32, p8 = fp32.activation(fp32.logits(x)), int8.activation(int8.logits(x))
    versus = out["int8_vs_fp32"]
    assert versus["mean_abs_sigmoid_diff"] == pytest.approx(np.abs(p8 - p32).mean(), rel=1e-5)
    assert versus["max_abs_sigmoid_diff"] == pytest.approx(np.abs(p8 - p32).max(), rel=1e-5)
    same = ((p8 >= fp32.thresholds) == (p32 >= fp32.thresholds)).all(axis=1).mean()
    assert versus["label_set_agreement"] == pytest.approx(same) and 0 < same < 1
    # Unlabelled check images: no mAP, the int8-against-fp32 figures on them.
    blind = compare_int8(model, processor, fp32, int8, _Images(x, None), list(x[:4]))
    assert "not_measured" in blind["map"] and blind["int8_vs_fp32"]["images"] == 4
    # A single-label model keeps accuracy and top-1 agreement.
    single = compare_int8(model, processor, _Linear(weight, multi=False), _Linear(weight, 0.4, multi=False),
                          _Images(x, y[:, 0].astype(np.int64)), list(x[:4]))
    assert single["metric"] == "accuracy" and "top1_agreement" in single["int8_vs_fp32"]
