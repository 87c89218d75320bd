"""eval_sets.py: extra evaluation sets, checked before training, scored once after it, each with its report and card rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune.recipe import RecipeError, recipe_from_dict
from tests.helpers.cli import write_recipe
from tests.helpers.images import CLASSES, class_image, make_image_folder


def base(**eval_sets) -> dict:
    return {
        "description": "d",
        "model": {"name_or_path": "some/model"},
        "data": {"dataset": "some/data", "eval_sets": eval_sets},
        "output_dir": "out",
    }


def problems(raw: dict) -> str:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(raw, "r.json")
    return str(err.value)


# ------------------------------------------------------------------------ the schema


def test_an_eval_set_is_a_strict_section_with_defaults() -> None:
    recipe = recipe_from_dict(base(night={"dataset": "some/night", "label_column": "y"}))
    night = recipe.data.eval_sets["night"]
    assert (night.dataset, night.split, night.label_column, night.config) == ("some/night", "test", "y", None)
    # It survives the round trip through recipe.json that resuming compares.
    assert recipe_from_dict(recipe.to_dict()) == recipe
    text = problems(base(night={"dataset": "some/night", "splt": "test"}))
    assert "unknown key 'data.eval_sets.night.splt'; did you mean 'split'?" in text
    assert "'data.eval_sets.night.dataset' is required" in problems(base(night={"split": "test"}))
    assert "must be a JSON object of NAME" in problems({**base(), "data": {"dataset": "d", "eval_sets": ["night"]}})


@pytest.mark.parametrize(
    "sets, needle",
    [
        ({"eval": {"dataset": "x"}}, "'eval' is taken by the run's own metrics"),
        ({"train": {"dataset": "x"}}, "'train' is taken"),
        ({"night": {"dataset": "x"}, "Night": {"dataset": "y"}}, "differ only in case"),
        ({"site": {"dataset": "x"}, "site_f1": {"dataset": "y"}}, "'site_f1' starts with 'site_'"),
        ({"a b": {"dataset": "x"}}, "letters, digits, '-' or '_'"),
        ({"../up": {"dataset": "x"}}, "letters, digits, '-' or '_'"),
    ],
)
def test_eval_set_names_that_would_collide_are_refused(sets: dict, needle: str) -> None:
    text = problems(base(**sets))
    assert needle in text and text.startswith("r.json: 'data.eval_sets")


def test_names_that_do_not_collide_are_accepted() -> None:
    recipe = recipe_from_dict(base(**{"night": {"dataset": "x"}, "night-b": {"dataset": "y"}, "site_2": {"dataset": "z"}}))
    assert list(recipe.data.eval_sets) == ["night", "night-b", "site_2"]


# ------------------------------------------------------------------- training with sets


def _domain_folder(root: Path, classes: list[str], per_class: int = 4, seed: int = 7) -> Path:
    """A test split whose images have the training classes' colours, or a class of its own."""
    rng = np.random.default_rng(seed)
    for name in classes:
        folder = root / "test" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = class_image(name, rng) if name in CLASSES else Image.new("RGB", (24, 24), (128, 0, 128))
            image.save(folder / f"{name}_{i}.png")
    return root


def _recipe(tmp_path: Path, tiny_vit: Path, eval_sets: dict) -> Path:
    images = make_image_folder(tmp_path / "images", per_class=6)
    return write_recipe(
        tmp_path / "r.json", tiny_vit, images, tmp_path / "out",
        data={"dataset": str(images), "eval_sets": eval_sets, "augment": {"crop_scale": None}},
        training={"num_train_epochs": 1, "per_device_train_batch_size": 8, "use_cpu": True, "disable_tqdm": True, "seed": 0},
    )


@pytest.mark.e2e
def test_a_set_with_some_classes_is_scored_with_its_own_report_and_card_rows(tmp_path: Path, tiny_vit: Path) -> None:
    from huggingface_hub import ModelCard

    from finetune.cli.main import main

    night = _domain_folder(tmp_path / "night", ["red", "green"])
    recipe = _recipe(tmp_path, tiny_vit, {"night": {"dataset": str(night), "split": "test"}})
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
    # The run's own report is the eval split's, untouched by the set's.
    assert json.loads((out / "eval_report.json").read_text())["num_images"] == 9

    card = ModelCard.load(out / "README.md")
    by_set = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert by_set[("night", "accuracy")] == pytest.approx(results["night_accuracy"])
    assert by_set[("night", "f1")] == pytest.approx(results["night_f1"])
    night_split = {r.dataset_split for r in card.data.eval_results if r.dataset_name == "night"}
    assert night_split == {"test"}
    assert "### Other evaluation sets" in card.text and "| metric | night |" in card.text
    assert "1 of the model's classes have no image there (blue)" in card.text


def test_a_set_with_a_class_the_model_lacks_stops_before_training(tmp_path: Path, tiny_vit: Path, capsys) -> None:
    from finetune.cli.main import main

    odd = _domain_folder(tmp_path / "odd", ["red", "purple"])
    recipe = _recipe(tmp_path, tiny_vit, {"odd": {"dataset": str(odd)}})
    assert main(["train", "--recipe", str(recipe)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "data.eval_sets.odd" in message and "purple" in message and "does not know" in message
    out = tmp_path / "out"
    assert not (out / "model.safetensors").exists() and not list(out.glob("checkpoint-*"))


def test_a_set_naming_a_missing_split_stops_before_training(tmp_path: Path, tiny_vit: Path, capsys) -> None:
    from finetune.cli.main import main

    night = _domain_folder(tmp_path / "night", ["red"])
    recipe = _recipe(tmp_path, tiny_vit, {"night": {"dataset": str(night), "split": "validation"}})
    assert main(["train", "--recipe", str(recipe)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "data.eval_sets.night.split: 'validation' is not a split" in message
    assert not (tmp_path / "out" / "model.safetensors").exists()
