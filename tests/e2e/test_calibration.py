"""Temperature scaling in whole runs: it lowers the eval split's ECE of an over-confident model, the saved model is the checkpoint's divided by T (pipeline and ONNX give the calibrated probabilities), a rerun does not divide twice, the eval split does not change T, LoRA folds after merging, and a head that is not whole is skipped or refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from tests.helpers.calibration import SCALE, overconfident_model_and_data, recipe_extra
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.models import make_tiny_distilled_deit


def _train(base: Path, model: Path, images: Path, name: str, **more):
    recipe = write_recipe(base / f"{name}.json", model, images, base / name, **recipe_extra(**more))
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 0, result.stderr[-3000:]
    return SimpleNamespace(out=base / name, recipe=recipe, result=result)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("calibration")
    model, images = overconfident_model_and_data(base)
    run = _train(base, model, images, "out")
    return SimpleNamespace(base=base, model=model, images=images, **vars(run))


def _json(path: Path):
    return json.loads(path.read_text())


def _logits(folder, pixels):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(pixel_values=pixels).logits


def _head(folder) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))["classifier.weight"]


def test_calibration_lowers_the_ece_of_an_overconfident_model(setup) -> None:
    scores, record = _json(setup.out / "eval_results.json"), _json(setup.out / "calibration.json")
    t = record["temperature"]
    assert SCALE / 1.6 < t < SCALE * 1.6, t
    assert scores["eval_calibration_temperature"] == t and record["validation_images"] == 150
    assert scores["eval_ece_uncalibrated"] > 0.15 and scores["eval_ece"] < scores["eval_ece_uncalibrated"] / 2
    assert record["ece"] == scores["eval_ece"] and record["ece_uncalibrated"] == scores["eval_ece_uncalibrated"]
    # The interval of every metric, in the results, the report, the card and the terminal.
    for metric in ("accuracy", "f1"):
        assert scores[f"eval_{metric}_ci_low"] <= scores[f"eval_{metric}"] <= scores[f"eval_{metric}_ci_high"]
    assert scores["eval_ci_level"] == 0.95 and scores["eval_ci_resamples"] == 1000
    report = _json(setup.out / "eval_report.json")
    assert report["confidence_intervals"]["accuracy"] == [scores["eval_accuracy_ci_low"], scores["eval_accuracy_ci_high"]]
    card = (setup.out / "README.md").read_text()
    assert f"| Accuracy | {scores['eval_accuracy']:.4f} | {scores['eval_accuracy_ci_low']:.4f}–" in card
    assert f"T = {t:.4f}" in card and f"**{scores['eval_ece_uncalibrated']:.4f} before, {scores['eval_ece']:.4f} after**" in card
    assert "### Abstaining when unsure" in card
    with Image.open(setup.out / "reliability.png") as image:
        assert image.format == "PNG"
    log = setup.result.stderr
    assert f"calibration: temperature T = {t:.4f} fitted on the 150 images of the validation piece" in log
    assert "eval: Accuracy" in log and "(95% CI" in log and "before temperature scaling" in log


def test_the_saved_model_is_the_uncalibrated_checkpoint_divided_by_t(setup) -> None:
    from transformers import pipeline

    t = _json(setup.out / "calibration.json")["temperature"]
    checkpoints = sorted(setup.out.glob("checkpoint-*"))
    assert checkpoints
    # What a resume reads stays uncalibrated: the learning rate was 0, so it is the model trained.
    assert torch.equal(_head(checkpoints[-1]), _head(setup.model))
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_logits(setup.out, pixels), _logits(checkpoints[-1], pixels) / t, rtol=1e-5, atol=1e-5)
    # pipeline() applies its softmax to those logits: the calibrated probabilities, with no extra code.
    image = next((setup.images / "test").rglob("*.png"))
    from transformers import AutoImageProcessor

    inputs = AutoImageProcessor.from_pretrained(setup.out)(images=[Image.open(image).convert("RGB")], return_tensors="pt")
    expected = torch.softmax(_logits(checkpoints[-1], inputs["pixel_values"])[0] / t, -1)
    scores = pipeline("image-classification", model=str(setup.out), device="cpu")(str(image), top_k=3)
    for item in scores:
        label = int(item["label"][1:])
        assert item["score"] == pytest.approx(float(expected[label]), abs=1e-5)


def test_a_rerun_that_finishes_the_run_does_not_divide_twice(setup) -> None:
    again = setup.base / "again"
    shutil.copytree(setup.out, again)
    recipe = json.loads(setup.recipe.read_text())
    recipe["output_dir"] = str(again)
    path = setup.base / "again.json"
    path.write_text(json.dumps(recipe))
    result = run_cli("--recipe", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stderr
    assert _json(again / "calibration.json")["temperature"] == _json(setup.out / "calibration.json")["temperature"]
    torch.testing.assert_close(_head(again), _head(setup.out), rtol=0, atol=0)


def test_the_eval_split_does_not_change_the_temperature(setup) -> None:
    images = setup.base / "other-test"
    shutil.copytree(setup.images / "train", images / "train")
    _, other = overconfident_model_and_data(setup.base / "other", train=3, test=150, seed=7)
    shutil.copytree(other / "test", images / "test")
    run = _train(setup.base, setup.model, images, "other-out")
    first, second = _json(setup.out / "eval_results.json"), _json(run.out / "eval_results.json")
    assert second["eval_num_images"] == 150 != first["eval_num_images"]
    assert second["eval_calibration_temperature"] == first["eval_calibration_temperature"]


def test_lora_folds_the_temperature_after_merging(setup) -> None:
    run = _train(setup.base, setup.model, setup.images, "lora", model__strategy="lora")
    t = _json(run.out / "calibration.json")["temperature"]
    assert t is not None and "merged into its weights" in run.result.stderr
    # Learning rate 0: the adapters are still zero, so the merged model is the original one, its head / T.
    torch.testing.assert_close(_head(run.out), _head(setup.model) / t, rtol=1e-6, atol=1e-7)
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(_logits(run.out, pixels), _logits(setup.model, pixels) / t, rtol=1e-5, atol=1e-5)


def test_the_onnx_export_returns_the_calibrated_probabilities(setup, tmp_path) -> None:
    from finetune.cli.main import main

    export = tmp_path / "onnx"
    assert main(["export", str(setup.out), "--out", str(export)]) == 0
    test_images = sorted((setup.images / "test").rglob("*.png"))[:8]
    rows = {}
    for folder in (setup.out, export):
        target = tmp_path / f"{folder.name}.jsonl"
        assert main(["predict", str(folder), *map(str, test_images), "--output", str(target), "--min-probability", "0.9"]) == 0
        rows[folder.name] = [json.loads(line) for line in target.read_text().splitlines()]
    for torch_row, onnx_row in zip(rows[setup.out.name], rows["onnx"]):
        assert onnx_row["predictions"][0]["label"] == torch_row["predictions"][0]["label"]
        assert onnx_row["predictions"][0]["probability"] == pytest.approx(torch_row["predictions"][0]["probability"], abs=1e-4)
        assert onnx_row["abstained"] == (onnx_row["predictions"][0]["probability"] < 0.9)


def test_a_head_that_is_not_whole_is_refused_when_asked_and_skipped_by_default(setup, tmp_path) -> None:
    deit = make_tiny_distilled_deit(tmp_path / "deit")
    recipe = write_recipe(tmp_path / "asked.json", deit, setup.images, tmp_path / "asked",
                          **recipe_extra(evaluation={"calibrate": True}))
    result = run_cli("--recipe", str(recipe))
    errors = [line for line in result.stderr.splitlines() if "finetune: error:" in line]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-3000:]
    assert "evaluation.calibrate: true, but its last Linear layer (timm_model.head_dist) is not the whole head" in errors[0]
    assert not list((tmp_path / "asked").glob("checkpoint-*"))  # stopped before training
    run = _train(tmp_path, deit, setup.images, "default")
    assert "calibration: off: its last Linear layer (timm_model.head_dist) is not the whole head" in run.result.stderr
    scores = _json(run.out / "eval_results.json")
    assert "eval_ece" in scores and "eval_ece_uncalibrated" not in scores and "eval_accuracy_ci_low" in scores
    assert "The probabilities are not temperature-scaled: its last Linear layer" in (run.out / "README.md").read_text()
    assert _json(run.out / "calibration.json")["temperature"] is None


def test_with_test_time_views_the_averaged_probabilities_are_calibrated_and_read_everywhere(setup, tmp_path) -> None:
    """evaluation.tta hflip: T is fitted to the softmax averaged over both views (not the one-view
    T), the ECE before it is that of the uncalibrated model scored over the views, and `finetune
    eval` and `finetune predict --min-probability` on the run read the calibrated average."""
    from finetune.cli.main import main

    run = _train(setup.base, setup.model, setup.images, "tta", evaluation={"tta": "hflip"})
    record, scores = _json(run.out / "calibration.json"), _json(run.out / "eval_results.json")
    t, one_view = record["temperature"], _json(setup.out / "calibration.json")["temperature"]
    assert record["tta"] == "hflip" and t is not None and t != pytest.approx(one_view, rel=1e-4)
    assert "averaged over 2 test-time views" in run.result.stderr
    assert scores["eval_ece"] < scores["eval_ece_uncalibrated"]
    report = _json(run.out / "eval_report.json")
    assert report["tta"] == "hflip" and report["ece"] == pytest.approx(scores["eval_ece"])
    assert "test-time views hflip" in (run.out / "README.md").read_text()

    # The learning rate was 0: the checkpoint is the uncalibrated model. Scored over the same
    # views by `finetune eval`, its ECE is the run's "before".
    before = tmp_path / "before"
    shutil.copytree(run.out, before)
    shutil.copy(sorted(run.out.glob("checkpoint-*"))[-1] / "model.safetensors", before / "model.safetensors")
    assert main(["eval", str(before), "--data", str(setup.images), "--report-dir", str(tmp_path / "r0")]) == 0
    assert _json(tmp_path / "r0" / "eval_report.json")["ece"] == pytest.approx(scores["eval_ece_uncalibrated"], abs=1e-6)
    assert main(["eval", str(run.out), "--data", str(setup.images), "--report-dir", str(tmp_path / "r1")]) == 0
    again = _json(tmp_path / "r1" / "eval_report.json")
    assert again["tta"] == "hflip" and again["ece"] == pytest.approx(scores["eval_ece"], abs=1e-6)
    assert again["confidence_intervals"]["accuracy"] == [scores["eval_accuracy_ci_low"], scores["eval_accuracy_ci_high"]]

    images = sorted((setup.images / "test").rglob("*.png"))[:6]
    target = tmp_path / "rows.jsonl"
    assert main(["predict", str(run.out), *map(str, images), "--tta", "hflip", "--min-probability", "0.9",
                 "--output", str(target)]) == 0
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(run.out)
    for path, row in zip(images, rows):
        pixels = processor(images=[Image.open(path).convert("RGB")], return_tensors="pt")["pixel_values"]
        averaged = (torch.softmax(_logits(run.out, pixels), -1) + torch.softmax(_logits(run.out, pixels.flip(-1)), -1)) / 2
        top = row["predictions"][0]
        assert top["probability"] == pytest.approx(float(averaged[0].max()), abs=1e-5)
        assert row["abstained"] == (top["probability"] < 0.9)
