"""search_space.py: the search block's grammar, each dimension parsed and sampled as declared, and one line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.recipe import RecipeError, recipe_from_dict, search_space
from tests.helpers.search import LR, search_recipe


def test_dimensions_parse_and_sample_as_declared() -> None:
    pytest.importorskip("optuna")
    lr = search_space.parse("training.learning_rate", {"log_uniform": [1e-5, 1e-2]})
    assert lr.distribution().log and lr.candidates() == [1e-5, 1e-2] and lr.grid() is None
    epochs = search_space.parse("training.num_train_epochs", {"int": [3, 9], "step": 3})
    assert epochs.grid() == [3, 6, 9] and epochs.distribution().step == 3
    l2 = search_space.parse("model.probe_l2", {"choice": [[0.1], [0.01, 0.1]]})
    # Lists travel through optuna as JSON text and come back as lists.
    assert l2.decode(l2.distribution().choices[1]) == [0.01, 0.1]
    assert search_space.parse("training.optim", {"choice": ["sgd", "adamw_torch"]}).decode("sgd") == "sgd"


@pytest.mark.parametrize(
    "spec, needle",
    [
        ({"loguniform": [1, 2]}, "unknown kind 'loguniform'"),
        ({"uniform": [1, 2], "log_uniform": [1, 2]}, "name exactly one of"),
        ({"uniform": [2, 1]}, "needs low < high"),
        ({"log_uniform": [0, 1]}, "needs low > 0"),
        ({"int": [1.5, 3]}, "bounds must be integers"),
        ({"int": [1, 10], "step": 4}, "does not divide"),
        ({"choice": []}, "one or more values"),
        ({"choice": [1, 1]}, "lists a value twice"),
        ({"uniform": [0, 1], "log": True}, "unknown option 'log'"),
        ([1, 2], "must be an object"),
    ],
)
def test_malformed_dimensions_say_what_is_wrong(spec, needle: str) -> None:
    with pytest.raises(search_space.SpaceError, match=needle):
        search_space.parse("training.learning_rate", spec)


@pytest.mark.parametrize(
    "search, needle",
    [
        ({"training.learnig_rate": LR}, "'search' key 'training.learnig_rate' is not a recipe key; did you mean 'training.learning_rate'?"),
        ({"model.stratgy": {"choice": ["full"]}}, "did you mean 'model.strategy'?"),
        ({"training.weight_decay": {"loguniform": [0.1, 1]}}, "unknown kind 'loguniform'; did you mean 'log_uniform'?"),
        ({"model.strategy": {"choice": ["full", "lora_typo"]}}, "the value \"lora_typo\" is not one the key accepts"),
        # An integer key given a float range: optuna would sample 8.37.
        ({"training.per_device_train_batch_size": {"uniform": [8, 64]}}, "the value 8.0 is not one the key accepts"),
        ({"data.augment.random_erasing": {"uniform": [0, 2]}}, "'data.augment.random_erasing' is a probability"),
        ({"training.seed": {"int": [0, 3]}}, "cannot be searched: it changes the validation piece"),
        ({"data.eval_split": {"choice": ["test"]}}, "trials never read the eval split"),
        ({}, "'search' lists no keys"),
    ],
)
def test_search_block_errors_name_the_key_and_the_fix(search: dict, needle: str) -> None:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(search_recipe("m", "d", Path("/tmp/o"), search), "r.json")
    assert needle in str(err.value)
    assert all(line.startswith("r.json: ") for line in str(err.value).splitlines())


def test_values_that_only_clash_with_another_searched_key_are_left_to_the_trial() -> None:
    """lbfgs needs a linear probe: refused against a full fine-tune, accepted when the strategy is searched too."""
    raw = search_recipe("m", "d", Path("/tmp/o"), {"model.probe_solver": {"choice": ["trainer", "lbfgs"]}}, model={"strategy": "full"})
    with pytest.raises(RecipeError, match="\"lbfgs\" is not one the key accepts"):
        recipe_from_dict(raw, "r.json")
    raw["search"]["model.strategy"] = {"choice": ["linear_probe", "full"]}
    assert recipe_from_dict(raw, "r.json").search == raw["search"]
