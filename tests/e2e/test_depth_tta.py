"""Stochastic depth and test-time augmentation through a whole run: a tiny ConvNeXt trained with
``model.drop_path_rate`` and ``evaluation.tta``, then scored by `finetune eval` and labelled by
`finetune predict` with the views the run recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import write_recipe
from tests.helpers.images import make_image_folder
from tests.helpers.models import save_tiny


@pytest.mark.e2e
def test_a_run_with_drop_path_and_tta_and_the_commands_that_follow_it(
    tmp_path: Path, caplog, capsys
) -> None:
    from finetune.cli.main import main
    from finetune.models import drop_path

    images = make_image_folder(tmp_path / "images")
    model = save_tiny("convnext", tmp_path / "convnext")
    out = tmp_path / "out"
    recipe = write_recipe(
        tmp_path / "recipe.json", model, images, out,
        model__drop_path_rate=0.2, evaluation={"tta": "hflip+crops"},
    )
    with caplog.at_level("INFO", logger="finetune"):
        assert main(["train", "--recipe", str(recipe)]) == 0
    log = caplog.text
    assert "model.drop_path_rate 0.2: stochastic depth in" in log
    assert "final evaluation: test-time augmentation hflip+crops (10 views per image" in log
    capsys.readouterr()

    # The saved model rebuilds with the rate (its DropPath layers pass everything in eval mode).
    assert json.loads((out / "config.json").read_text())["drop_path_rate"] == 0.2
    from transformers import AutoModelForImageClassification

    assert drop_path.drop_rates(AutoModelForImageClassification.from_pretrained(out)) == pytest.approx([0.2])

    card = (out / "README.md").read_text()
    assert "Test-time augmentation: hflip+crops (10 views per image" in card
    assert "| model.drop_path_rate | `0.2` |" in card

    # `finetune eval` scores with the recorded views by default: the run's own numbers.
    results = json.loads((out / "eval_results.json").read_text())
    assert main(["eval", str(out), "--data", str(images), "--batch-size", "8", "--report-dir", str(tmp_path / "r1")]) == 0
    assert "test-time augmentation hflip+crops" in capsys.readouterr().out
    report = json.loads((tmp_path / "r1" / "eval_report.json").read_text())
    assert report["tta"] == "hflip+crops"
    assert report["loss"] == pytest.approx(results["eval_loss"], rel=1e-6)
    assert report["accuracy"] == pytest.approx(results["eval_accuracy"])
    assert main(["eval", str(out), "--data", str(images), "--batch-size", "8", "--report-dir", str(tmp_path / "r2"),
                 "--tta", "none"]) == 0
    capsys.readouterr()
    single = json.loads((tmp_path / "r2" / "eval_report.json").read_text())
    assert single["tta"] == "none" and single["loss"] != pytest.approx(report["loss"], rel=1e-6)

    # `finetune predict`: the recorded views too, unless told otherwise.
    image = next((images / "test" / "red").iterdir())
    assert main(["predict", str(out), str(image), "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    assert "with test-time augmentation hflip+crops" in captured.err
    views = json.loads(captured.out)["predictions"]
    assert main(["predict", str(out), str(image), "--format", "jsonl", "--tta", "none"]) == 0
    captured = capsys.readouterr()
    assert "test-time augmentation" not in captured.err and json.loads(captured.out)["predictions"] != views
