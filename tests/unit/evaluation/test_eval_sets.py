"""eval_sets.py: extra evaluation sets are strict recipe sections, and a set the model cannot score
stops a run before training."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.recipe import RecipeError, recipe_from_dict
from tests.helpers.eval_sets import domain_folder, eval_sets_recipe


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


def test_a_set_with_a_class_the_model_lacks_stops_before_training(tmp_path: Path, tiny_vit: Path, capsys) -> None:
    from finetune.cli.main import main

    odd = domain_folder(tmp_path / "odd", ["red", "purple"])
    recipe = eval_sets_recipe(tmp_path, tiny_vit, {"odd": {"dataset": str(odd)}})
    assert main(["train", "--recipe", str(recipe)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "data.eval_sets.odd" in message and "purple" in message and "does not know" in message
    out = tmp_path / "out"
    assert not (out / "model.safetensors").exists() and not list(out.glob("checkpoint-*"))


def test_a_set_naming_a_missing_split_stops_before_training(tmp_path: Path, tiny_vit: Path, capsys) -> None:
    from finetune.cli.main import main

    night = domain_folder(tmp_path / "night", ["red"])
    recipe = eval_sets_recipe(tmp_path, tiny_vit, {"night": {"dataset": str(night), "split": "validation"}})
    assert main(["train", "--recipe", str(recipe)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "data.eval_sets.night.split: 'validation' is not a split" in message
    assert not (tmp_path / "out" / "model.safetensors").exists()
