"""Extra evaluation sets end to end: a set with some of the classes, scored after training with its own report and card rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.eval_sets import domain_folder, eval_sets_recipe


@pytest.mark.e2e
def test_a_set_with_some_classes_is_scored_with_its_own_report_and_card_rows(tmp_path: Path, tiny_vit: Path) -> None:
    from huggingface_hub import ModelCard

    from finetune.cli.main import main

    night = domain_folder(tmp_path / "night", ["red", "green"])
    recipe = eval_sets_recipe(tmp_path, tiny_vit, {"night": {"dataset": str(night), "split": "test"}})
    assert main(["train", "--recipe", str(recipe)]) == 0
    out = tmp_path / "out"
    results = json.loads((out / "eval_results.json").read_text())
    # The eval split's numbers as before, and the set's beside them under its own name.
    assert {"eval_accuracy", "eval_f1", "night_accuracy", "night_f1", "night_loss"} <= set(results)
    assert results["night_num_images"] == 8 and results["eval_num_images"] == 9

    report = json.loads((out / "eval-night" / "eval_report.json").read_text())
    assert report["absent_classes"] == ["blue"] and report["name"] == "night" and report["split"] == "test"
    assert report["per_class"]["blue"]["support"] == 0
    present = [report["per_class"][c]["f1"] for c in ("red", "green")]
    # Macro F1 over the two classes the set has, not over all three with blue as 0.
    assert report["macro_f1"] == pytest.approx(np.mean(present))
    assert results["night_f1"] == pytest.approx(report["macro_f1"])
    assert (out / "eval-night" / "confusion_matrix.png").is_file()
    # Its interval and calibration error, as the eval split's.
    assert results["night_accuracy_ci_low"] <= results["night_accuracy"] <= results["night_accuracy_ci_high"]
    assert {"night_f1_ci_low", "night_f1_ci_high", "night_ece", "night_ci_level"} <= set(results)
    assert report["confidence_intervals"]["accuracy"] == [results["night_accuracy_ci_low"], results["night_accuracy_ci_high"]]
    assert (out / "eval-night" / "reliability.png").is_file()
    # The run's own report is the eval split's, untouched by the set's.
    assert json.loads((out / "eval_report.json").read_text())["num_images"] == 9

    card = ModelCard.load(out / "README.md")
    by_set = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert by_set[("night", "accuracy")] == pytest.approx(results["night_accuracy"])
    assert by_set[("night", "f1")] == pytest.approx(results["night_f1"])
    night_split = {r.dataset_split for r in card.data.eval_results if r.dataset_name == "night"}
    assert night_split == {"test"}
    assert "### Other evaluation sets" in card.text and "| metric | night |" in card.text
    assert f"| Accuracy | {results['night_accuracy']:.4f} ({results['night_accuracy_ci_low']:.4f}–" in card.text
    assert "| ECE (15 bins) |" in card.text
    assert "1 of the model's classes have no image there (blue)" in card.text
