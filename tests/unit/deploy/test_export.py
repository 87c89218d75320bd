"""export.py: `finetune export` refuses bad input with one line, before anything is written."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from finetune.cli.main import main
from tests.helpers.export import fake_run, one_line_error
from tests.helpers.images import make_image_folder
from tests.helpers.models import make_tiny_resnet
from tests.helpers.runs import file_hashes

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("export-images") / "images")


# ----------------------------------------------------------------------------- bad input


def test_not_a_finetune_output(tmp_path, tiny_vit, capsys):
    """A bare model folder (no recipe.json), an empty folder, a missing one, the run as --out."""
    before = file_hashes(tiny_vit)
    assert main(["export", str(tiny_vit)]) == 2
    one_line_error(capsys, "not a finetune output folder", "recipe.json")
    assert file_hashes(tiny_vit) == before and not (tiny_vit / "onnx").exists()
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    one_line_error(capsys, "no such folder")
    assert main(["predict", str(tiny_vit), str(tmp_path), "--int8"]) == 2
    one_line_error(capsys, "--int8", "not an exported folder")


def test_out_must_not_be_the_run_folder(tmp_path, images, capsys):
    run = fake_run(tmp_path, make_tiny_resnet, images)
    before = file_hashes(run)
    capsys.readouterr()  # saving the model's progress bar
    assert main(["export", str(run), "--out", str(run)]) == 2
    one_line_error(capsys, "--out", "run's own folder")
    assert file_hashes(run) == before


def test_no_images_for_the_check_or_calibration(tmp_path, capsys):
    """The recipe's data set is gone: a clear error naming --calibration-data, before any export."""
    images = make_image_folder(tmp_path / "gone")
    run = fake_run(tmp_path, make_tiny_resnet, images)
    shutil.rmtree(images)
    before = file_hashes(run)
    capsys.readouterr()
    assert main(["export", str(run), "--quantize", "int8"]) == 2
    one_line_error(capsys, "cannot be loaded", "--calibration-data")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(run), "--quantize", "int8", "--calibration-data", str(empty)]) == 2
    one_line_error(capsys, "--calibration-data", "holds no files")
    assert file_hashes(run) == before and not (run / "onnx").exists()


def test_missing_extra_names_it(tmp_path, images, capsys, monkeypatch):
    run = fake_run(tmp_path, make_tiny_resnet, images)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    capsys.readouterr()
    assert main(["export", str(run)]) == 2
    one_line_error(capsys, "onnxruntime not installed", "optional extra 'export'", 'pip install -e ".[export]"')
    assert not (run / "onnx").exists()


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
    one_line_error(capsys, "cannot export", "dynamo exporter", "TorchScript exporter", "--opset")
    assert file_hashes(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json", "run"]


def test_the_export_card_says_the_model_scores_one_view() -> None:
    from finetune.deploy.export_card import render

    result = {
        "source": "outputs/run", "command": None, "exporter": "torch.onnx.export (dynamo)", "opset": 18,
        "classes": ["a", "b"],
        "check": {
            "preprocessing": "the processor", "images": 2, "max_abs_softmax_diff": 1e-6, "bound": 1e-3,
            "max_abs_logit_diff": 1e-5, "end_to_end_max_abs_softmax_diff": 1e-4, "end_to_end_top1_agreement": 1.0,
        },
    }
    with_views = render({**result, "run_tta": "hflip+crops"})
    assert "The model scores one view per image: the test-time augmentation that the run's final scores used" in with_views
    assert "`evaluation.tta` `hflip+crops`" in with_views
    plain = render({**result, "run_tta": "none"})
    assert "one view per image, as the run's own final scores did (no test-time augmentation)" in plain


@pytest.mark.parametrize(
    "problem, rows, why",
    [
        ("no such folder", None, "the run's data set cannot be loaded (no such folder): int8 uses fp32's thresholds"),
        (None, None, "the run has no validation piece: int8 uses fp32's thresholds"),
        (None, [], "the run has no validation piece: int8 uses fp32's thresholds"),
    ],
)
def test_int8_keeps_fp32s_thresholds_without_a_validation_piece(tmp_path, problem, rows, why) -> None:
    from types import SimpleNamespace

    from finetune.deploy.export import tune_int8_thresholds

    (tmp_path / "config.json").write_text('{"label_thresholds": {"a": 0.5}}')
    images = SimpleNamespace(data_problem=problem, validation_rows=rows)
    assert tune_int8_thresholds(tmp_path, None, images) == {"tuned": False, "why": why}
    assert (tmp_path / "config.json").read_text() == '{"label_thresholds": {"a": 0.5}}'  # nothing written
