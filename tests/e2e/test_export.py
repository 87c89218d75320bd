"""`finetune export` end to end: int8 exports of tiny runs, checked against PyTorch, run by
`predict` and `eval` with ONNX Runtime, without torch too."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetune.cli.main import main
from finetune.deploy import export as export_mod
from finetune.deploy import onnx_classifier as onnx_model
from tests.helpers import ROOT
from tests.helpers.export import fake_run, odd_sized_images, one_line_error
from tests.helpers.images import CLASSES, make_image_folder
from tests.helpers.models import make_tiny_resnet, make_tiny_vit
from tests.helpers.runs import file_hashes

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("export-images") / "images")


def _exported(tmp_path_factory, images, make, *args) -> tuple[Path, dict, dict]:
    base = tmp_path_factory.mktemp(f"export-{make.__name__}")
    run = fake_run(base, make, images)
    before = file_hashes(run)
    assert main(["export", str(run), *args]) == 0
    return run, before, json.loads((run / "onnx" / "export_report.json").read_text())


@pytest.fixture(scope="module")
def resnet_int8(tmp_path_factory, images):
    return _exported(tmp_path_factory, images, make_tiny_resnet, "--quantize", "int8", "--calibration-size", "24")


@pytest.fixture(scope="module")
def vit_int8(tmp_path_factory, images):
    return _exported(tmp_path_factory, images, make_tiny_vit, "--quantize", "int8")


@pytest.mark.e2e
def test_static_int8_export_of_a_convolutional_model(resnet_int8):
    run, before, report = resnet_int8
    assert {k: v for k, v in file_hashes(run).items() if not k.startswith("onnx/")} == before
    folder = run / "onnx"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "export_report.json", "model.int8.onnx", "model.onnx", "preprocessor_config.json",
    ]
    check = report["check"]
    assert check["images"] == 18 and check["max_abs_softmax_diff"] <= export_mod.FP32_BOUND
    assert check["end_to_end_top1_agreement"] >= 0.9
    quant = report["quantization"]
    assert quant["mode"] == "static" and quant["per_channel"] and quant["calibration_images"] == 24
    sizes = report["files"]
    assert sizes["model.int8.onnx"] == (folder / "model.int8.onnx").stat().st_size < sizes["model.onnx"]
    acc = report["accuracy"]
    assert acc["images"] == 18 and all(0 <= acc[k] <= 1 for k in ("pytorch", "onnx_fp32", "onnx_int8"))
    assert acc["pytorch"] == acc["onnx_fp32"]  # 1e-7 apart in probabilities: the same top-1
    latency = report["latency_ms"]
    assert latency["threads"] >= 1
    for batch in ("batch_1", "batch_32"):
        assert all(latency[batch][f"{k}_ms"] > 0 for k in ("pytorch", "onnx_fp32", "onnx_int8"))
    card = (folder / "README.md").read_text()
    assert "| ONNX int8 |" in card and f"{acc['onnx_int8']:.4f}" in card and "static int8" in card


@pytest.mark.e2e
def test_exported_batch_dimension_is_dynamic(resnet_int8):
    run, _, _ = resnet_int8
    for int8 in (False, True):
        model = onnx_model.load_export(run / "onnx", int8=int8)
        assert isinstance(model.session.get_inputs()[0].shape[0], str)
        pixels = model.preprocessor(odd_sized_images())
        one = np.concatenate([model.logits(pixels[i : i + 1]) for i in range(len(pixels))])
        np.testing.assert_allclose(model.logits(pixels), one, atol=1e-4)


@pytest.mark.e2e
def test_dynamic_int8_export_of_a_transformer(vit_int8):
    run, before, report = vit_int8
    assert report["quantization"]["mode"] == "dynamic" and "attention" in report["quantization"]["why"]
    assert report["check"]["max_abs_softmax_diff"] <= export_mod.FP32_BOUND
    assert report["exporter"].endswith("(dynamo)") and report["exporter_fallback_reason"] is None
    assert (run / "onnx" / "model.int8.onnx").is_file()
    assert {k: v for k, v in file_hashes(run).items() if not k.startswith("onnx/")} == before


@pytest.mark.e2e
def test_predict_and_eval_run_the_exported_folder(resnet_int8, images, capsys, tmp_path):
    run, _, report = resnet_int8
    folder = run / "onnx"
    test_images = images / "test"
    assert main(["predict", str(run), str(test_images), "--top-k", "1"]) == 0
    torch_rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert main(["predict", str(folder), str(test_images), "--top-k", "1"]) == 0
    onnx_rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["path"] for r in onnx_rows] == [r["path"] for r in torch_rows] and len(onnx_rows) == 18
    for ours, theirs in zip(onnx_rows, torch_rows):
        assert ours["label_1"] == theirs["label_1"]
        assert float(ours["probability_1"]) == pytest.approx(float(theirs["probability_1"]), abs=1e-2)
    assert main(["eval", str(folder), "--data", str(images), "--split", "test", "--report-dir", str(tmp_path / "r32")]) == 0
    assert main(["eval", str(folder), "--int8", "--data", str(images), "--report-dir", str(tmp_path / "r8")]) == 0
    fp32 = json.loads((tmp_path / "r32" / "eval_report.json").read_text())
    int8 = json.loads((tmp_path / "r8" / "eval_report.json").read_text())
    # The export scored the same 18 images through the same preprocessing and runtime.
    assert fp32["accuracy"] == report["accuracy"]["onnx_fp32"] and int8["accuracy"] == report["accuracy"]["onnx_int8"]
    assert fp32["runtime"] == "ONNX Runtime (model.onnx)" and int8["runtime"] == "ONNX Runtime (model.int8.onnx)"
    assert (tmp_path / "r8" / "misclassified.png").is_file()
    # An unreadable file is left out and named, as the PyTorch path does.
    broken = tmp_path / "with-broken"
    shutil.copytree(images, broken)
    (broken / "test" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    assert main(["eval", str(folder), "--data", str(broken), "--report-dir", str(tmp_path / "rb")]) == 0
    with_broken = json.loads((tmp_path / "rb" / "eval_report.json").read_text())
    assert with_broken["num_images"] == 18 and [Path(b["path"]).name for b in with_broken["bad_files"]] == ["broken.png"]
    assert "broken.png" in capsys.readouterr().err


@pytest.mark.e2e
def test_a_second_export_needs_overwrite(resnet_int8, capsys):
    run, _, _ = resnet_int8
    before = file_hashes(run)
    assert main(["export", str(run)]) == 2
    one_line_error(capsys, "--overwrite")
    assert file_hashes(run) == before


@pytest.mark.e2e
def test_broken_bound_fails_and_writes_nothing(tmp_path, images, capsys, monkeypatch):
    """ONNX Runtime's logits off by 0.5: the check fails the export."""
    run = fake_run(tmp_path, make_tiny_resnet, images)
    real = onnx_model.OnnxClassifier.logits
    monkeypatch.setattr(onnx_model.OnnxClassifier, "logits", lambda self, pixels: real(self, pixels) + np.array([0.5, 0, 0], np.float32))
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 2
    one_line_error(capsys, "differ from PyTorch's", "bound 0.001")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json", "run"]


@pytest.mark.e2e
def test_exported_folder_runs_where_torch_cannot_be_imported(resnet_int8, images, tmp_path):
    run, _, _ = resnet_int8
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None  # `import torch` raises ImportError\n")
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    script = "import sys; from finetune.run import main; sys.exit(main(sys.argv[1:]))"

    def cli(*args):
        return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=300)

    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "import of torch halted" in blocked.stderr
    for extra in ([], ["--int8"]):
        result = cli("predict", str(run / "onnx"), str(images / "test"), "--format", "jsonl", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(rows) == 18 and all(r["predictions"][0]["label"] in CLASSES for r in rows)
    # The run's own (PyTorch) folder needs torch: the block is real.
    assert cli("predict", str(run), str(images / "test")).returncode != 0
