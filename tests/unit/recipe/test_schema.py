"""schema.py: defaults filled in, unknown keys with a suggestion, wrong types named by their key."""

from __future__ import annotations

import pytest

from finetune.recipe import RecipeError, recipe_from_dict
from tests.helpers.recipes import base


def test_defaults_are_filled_in() -> None:
    recipe = recipe_from_dict(base())
    assert recipe.model.strategy == "full"
    assert recipe.data.validation_fraction == 0.1 and recipe.data.eval_split == "test"
    assert recipe.to_dict()["data"]["augment"] == {
        "crop_scale": [0.5, 1.0], "hflip": True, "preset": None, "random_erasing": 0.0,
        "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_prob": 1.0,
    }


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"training": {"learnig_rate": 1e-3}}, "did you mean 'learning_rate'"),
        ({"modle": {}}, "did you mean 'model'"),
        ({"data": {"dataset": "x", "validaton_fraction": 0.2}}, "did you mean 'validation_fraction'"),
        ({"data": {"dataset": "x", "augment": {"hflp": False}}}, "did you mean 'hflip'"),
    ],
)
def test_unknown_keys_suggest_the_right_one(patch: dict, needle: str) -> None:
    raw = {**base(), **patch}
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(raw, "r.json")
    message = str(err.value)
    assert needle in message and message.startswith("r.json: ") and "\n" not in message


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"training": {"learning_rate": "fast"}}, "training.learning_rate"),
        ({"training": {"num_train_epochs": True}}, "training.num_train_epochs"),
        ({"training": {"eval_strategy": "sometimes"}}, "training.eval_strategy"),
        ({"model": {"name_or_path": "m", "strategy": "half"}}, "model.strategy"),
        ({"data": {"dataset": "x", "augment": {"preset": "randaugment"}}}, "data.augment.preset"),
        ({"data": {"dataset": "x", "max_train_samples": 1.5}}, "data.max_train_samples"),
        ({"metrics": "accuracy"}, "metrics"),
    ],
)
def test_wrong_types_name_the_key(patch: dict, key: str) -> None:
    with pytest.raises(RecipeError, match=f"'{key}' must be"):
        recipe_from_dict({**base(), **patch}, "r.json")


def test_a_wrongly_typed_section_is_not_also_reported_missing() -> None:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict({**base(), "data": "some/data"}, "r.json")
    assert str(err.value) == "r.json: 'data' must be a JSON object, got 'some/data'"
