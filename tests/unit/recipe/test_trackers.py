"""training.report_to: trackers read from transformers' source, checked before anything loads."""

from __future__ import annotations

import importlib.util

import pytest

from finetune.recipe import RecipeError, recipe_from_dict
from finetune.recipe import trackers as reporting


def _recipe(report_to) -> dict:
    return {
        "description": "d",
        "model": {"name_or_path": "m"},
        "data": {"dataset": "d"},
        "output_dir": "o",
        "training": {"report_to": report_to},
    }


def test_the_trackers_read_from_source_are_the_ones_transformers_has() -> None:
    """The ast reading must match what the Trainer checks against; when transformers moves or
    renames INTEGRATION_TO_CALLBACK this fails, instead of every name passing unchecked."""
    from transformers.integrations import integration_utils

    assert reporting.integrations() == tuple(integration_utils.INTEGRATION_TO_CALLBACK), (
        "transformers changed where INTEGRATION_TO_CALLBACK lives or what it holds; update finetune/reporting.py"
    )


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (["tensorbord"], "'tensorbord', which transformers does not know; did you mean 'tensorboard'?"),
        ("wandbb", "did you mean 'wandb'?"),
        (["tensorboard", "qqqqqq"], "'qqqqqq', which transformers does not know; use one of azure_ml"),
    ],
)
def test_an_unknown_tracker_is_a_recipe_error(value, needle: str) -> None:
    with pytest.raises(RecipeError, match="r.json: 'training.report_to' names") as err:
        recipe_from_dict(_recipe(value), "r.json")
    assert needle in str(err.value)
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("value", ["none", "all", ["none"], [], ["wandb", "mlflow"]])
def test_known_trackers_and_the_special_values_pass(value) -> None:
    recipe_from_dict(_recipe(value), "r.json")


def test_tensorboard_missing_names_the_extra(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a)
    )
    with pytest.raises(RecipeError, match=r"'tensorboard', which is not installed; it comes with the optional extra 'tensorboard'"):
        recipe_from_dict(_recipe(["tensorboard"]), "r.json")
