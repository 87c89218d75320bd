"""export.py, onnx_model.py, quantize.py: `finetune export` of tiny runs, the exported folder run by `predict` and `eval` with ONNX Runtime (without torch, too), and the bad-input errors."""

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
from PIL import Image

from finetune.cli.main import main
from finetune.deploy import export as export_mod
from finetune.deploy import onnx_classifier as onnx_model
from tests.helpers import ROOT
from tests.helpers.cli import write_recipe
from tests.helpers.images import CLASSES, make_image_folder
from tests.helpers.models import make_tiny_resnet, make_tiny_timm, make_tiny_vit
from tests.helpers.runs import file_hashes

pytest.importorskip("onnxruntime")


def fake_run(base: Path, make, images: Path) -> Path:
    """A finetune output folder (recipe.json, config.json with the classes, weights,
    processor) without the training: export only reads these files."""
    out = base / "run"
    make(out, num_labels=len(CLASSES))
    config = json.loads((out / "config.json").read_text())
    names = sorted(CLASSES)  # the class order that the data package gives an image folder
    config["id2label"] = {str(i): name for i, name in enumerate(names)}
    config["label2id"] = {name: i for i, name in enumerate(names)}
    (out / "config.json").write_text(json.dumps(config))
    recipe = write_recipe(base / "recipe.json", out, images, out)
    (out / "recipe.json").write_text(recipe.read_text())
    return out


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


# ------------------------------------------------------------------------ preprocessing


def _test_images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    sizes = [(24, 24), (37, 23), (23, 41), (64, 48), (97, 101)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _bit_processor(path: Path) -> Path:
    """A shortest-edge resize then a centre crop (DINOv2's and BiT's processor)."""
    from transformers import BitImageProcessor

    BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    (path / "config.json").write_text(json.dumps({"id2label": {"0": "a"}}))
    return path


@pytest.mark.parametrize("make", [make_tiny_vit, make_tiny_resnet, make_tiny_timm, _bit_processor])
def test_preprocessing_equals_the_processors_pil_implementation(make, tmp_path):
    """numpy + PIL preprocessing = the saved processor's own PIL computation (ViT's exact
    resize, ConvNeXt's crop_pct, BiT's shortest edge + crop, timm's evaluation transform)."""
    from transformers import AutoImageProcessor

    folder = make(tmp_path / "model")
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    ours = onnx_model.Preprocessor.from_folder(folder)
    for image in _test_images():
        theirs = np.asarray(processor(images=[image], return_tensors="pt")["pixel_values"].float().numpy())
        got = ours([image])
        assert got.shape == theirs.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, theirs, atol=1e-5)


def test_read_image_and_junk_rule_equal_the_data_package(tmp_path):
    """onnx_model.py reads images as training does (the same torch-free module), and its copy of the junk rule equals the data package's."""
    from finetune import data

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    files = {
        "rgba.png": Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (20, 30), dtype=np.uint8)]), "RGBA"),
        "grey.png": Image.fromarray(rgb[..., 0], "L"),
        "deep.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "palette.gif": Image.fromarray(rgb).convert("P"),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # turned a quarter
    rotated.save(tmp_path / "exif.jpg", exif=exif)
    for path in sorted(tmp_path.iterdir()):
        ours, theirs = onnx_model.read_image(str(path)), data.to_rgb(data.open_image(str(path)))
        assert ours.mode == "RGB" and np.array_equal(np.asarray(ours), np.asarray(theirs)), path.name
        assert np.array_equal(np.asarray(onnx_model.read_image({"bytes": path.read_bytes(), "path": None})), np.asarray(theirs))


@pytest.mark.parametrize("make", [make_tiny_vit, make_tiny_timm])
def test_class_names_read_as_transformers_reads_them(make, tmp_path):
    """timm configs keep the classes in label_names (no id2label in config.json)."""
    from transformers import AutoConfig

    folder = make(tmp_path / "model", num_labels=3)
    config = AutoConfig.from_pretrained(folder)
    config.id2label = {0: "cat", 1: "dog", 2: "émeu"}
    config.label2id = {v: k for k, v in config.id2label.items()}
    if hasattr(config, "label_names"):
        config.label_names = ["cat", "dog", "émeu"]
    config.save_pretrained(folder)
    reloaded = AutoConfig.from_pretrained(folder)
    assert onnx_model.class_names(folder) == [reloaded.id2label[i] for i in range(3)] == ["cat", "dog", "émeu"]


# ------------------------------------------------------------------------------ export


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
        pixels = model.preprocessor(_test_images())
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
    _one_line_error(capsys, "--overwrite")
    assert file_hashes(run) == before


# ----------------------------------------------------------------------------- bad input


def _one_line_error(capsys, *needles: str) -> str:
    """The one error line (progress bars of the libraries may come before it)."""
    captured = capsys.readouterr().err
    errors = [line for line in captured.splitlines() if "finetune: error:" in line]
    assert len(errors) == 1 and errors[0].startswith("finetune: error:"), captured[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_not_a_finetune_output(tmp_path, tiny_vit, capsys):
    """A bare model folder (no recipe.json), an empty folder, a missing one, the run as --out."""
    before = file_hashes(tiny_vit)
    assert main(["export", str(tiny_vit)]) == 2
    _one_line_error(capsys, "not a finetune output folder", "recipe.json")
    assert file_hashes(tiny_vit) == before and not (tiny_vit / "onnx").exists()
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    _one_line_error(capsys, "no such folder")
    assert main(["predict", str(tiny_vit), str(tmp_path), "--int8"]) == 2
    _one_line_error(capsys, "--int8", "not an exported folder")


def test_out_must_not_be_the_run_folder(tmp_path, images, capsys):
    run = fake_run(tmp_path, make_tiny_resnet, images)
    before = file_hashes(run)
    capsys.readouterr()  # saving the model's progress bar
    assert main(["export", str(run), "--out", str(run)]) == 2
    _one_line_error(capsys, "--out", "run's own folder")
    assert file_hashes(run) == before


def test_no_images_for_the_check_or_calibration(tmp_path, capsys):
    """The recipe's data set is gone: a clear error naming --calibration-data, before any export."""
    images = make_image_folder(tmp_path / "gone")
    run = fake_run(tmp_path, make_tiny_resnet, images)
    shutil.rmtree(images)
    before = file_hashes(run)
    capsys.readouterr()
    assert main(["export", str(run), "--quantize", "int8"]) == 2
    _one_line_error(capsys, "cannot be loaded", "--calibration-data")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(run), "--quantize", "int8", "--calibration-data", str(empty)]) == 2
    _one_line_error(capsys, "--calibration-data", "holds no files")
    assert file_hashes(run) == before and not (run / "onnx").exists()


def test_missing_extra_names_it(tmp_path, images, capsys, monkeypatch):
    run = fake_run(tmp_path, make_tiny_resnet, images)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    capsys.readouterr()
    assert main(["export", str(run)]) == 2
    _one_line_error(capsys, "onnxruntime not installed", "optional extra 'export'", 'pip install -e ".[export]"')
    assert not (run / "onnx").exists()


def test_the_export_extra_is_declared_and_installed_by_ci():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = project["optional-dependencies"]["export"]
    for package in ("onnx", "onnxruntime", "onnxscript"):
        assert any(req.split(">")[0].split("=")[0] == package for req in extra), package
    install = (ROOT / ".ci" / "run").read_text().split("pip install", 1)[1].splitlines()[0]
    assert "export" in install.split("[", 1)[1].split("]")[0].split(",")


def test_a_model_that_cannot_be_traced(tmp_path, images, capsys, monkeypatch):
    """Both exporters fail: one line naming both reasons; nothing written anywhere."""
    import torch

    run = fake_run(tmp_path, make_tiny_resnet, images)
    before = file_hashes(run)

    def refuse(*args, **kwargs):
        raise RuntimeError(f"data-dependent control flow ({'dynamo' if kwargs.get('dynamo') else 'TorchScript'})")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 2
    _one_line_error(capsys, "cannot export", "dynamo exporter", "TorchScript exporter", "--opset")
    assert file_hashes(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json", "run"]


@pytest.mark.e2e
def test_broken_bound_fails_and_writes_nothing(tmp_path, images, capsys, monkeypatch):
    """ONNX Runtime's logits off by 0.5: the check fails the export."""
    run = fake_run(tmp_path, make_tiny_resnet, images)
    real = onnx_model.OnnxClassifier.logits
    monkeypatch.setattr(onnx_model.OnnxClassifier, "logits", lambda self, pixels: real(self, pixels) + np.array([0.5, 0, 0], np.float32))
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 2
    _one_line_error(capsys, "differ from PyTorch's", "bound 0.001")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json", "run"]


# ------------------------------------------------------------------------ without torch


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
