"""data.streaming and data.shuffle_buffer: their types, and one line for each thing only the decode cache does."""

from __future__ import annotations

import pytest

from finetune.recipe import RecipeError, recipe_from_dict
from finetune.recipe.checks import needs_decode_cache


def raw(data: dict | None = None, model: dict | None = None, training: dict | None = None) -> dict:
    return {"description": "d", "model": {"name_or_path": "some/model", **(model or {})},
            "data": {"dataset": "some/data", **(data or {})}, "training": training or {}, "output_dir": "out"}


def test_defaults_and_types() -> None:
    recipe = recipe_from_dict(raw())
    assert (recipe.data.streaming, recipe.data.shuffle_buffer) == ("auto", 1000)
    for value in (True, False, "auto"):
        assert recipe_from_dict(raw({"streaming": value})).data.streaming == value
    with pytest.raises(RecipeError, match="'data.streaming' must be true/false or one of 'auto'"):
        recipe_from_dict(raw({"streaming": "yes"}))
    with pytest.raises(RecipeError, match="'data.shuffle_buffer' must be >= 1"):
        recipe_from_dict(raw({"shuffle_buffer": 0}))


@pytest.mark.parametrize("keys, needle", [
    ({"data": {"samples_per_class": 5}}, "data.samples_per_class"),
    ({"data": {"max_eval_samples": 50}}, "data.max_eval_samples"),
    ({"data": {"class_weights": "balanced"}}, "data.class_weights"),
    ({"data": {"sampler": "balanced"}}, "data.sampler"),
    ({"data": {"leaked_eval": "drop"}}, "'data.leaked_eval' 'drop'"),
    ({"model": {"strategy": "linear_probe"}}, "'model.strategy' 'linear_probe'"),
    ({"data": {"dataset": "builtin:digits"}}, "built-in set"),
    ({"training": {"dataloader_persistent_workers": True}}, "dataloader_persistent_workers"),
])
def test_streaming_true_refuses_what_only_the_cache_does(keys: dict, needle: str) -> None:
    data = {"streaming": True, **keys.get("data", {})}
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(raw(data, keys.get("model"), keys.get("training")))
    assert needle in str(err.value) and "set data.streaming to false or 'auto'" in str(err.value)
    recipe = recipe_from_dict(raw({**data, "streaming": "auto"}, keys.get("model"), keys.get("training")))
    assert any(needle in why for why in needs_decode_cache(recipe))  # auto keeps the cache, and says why


def test_a_shuffle_buffer_without_streaming_is_refused() -> None:
    with pytest.raises(RecipeError, match="'data.shuffle_buffer' shuffles streamed images, but 'data.streaming' is false"):
        recipe_from_dict(raw({"streaming": False, "shuffle_buffer": 50}))
    assert recipe_from_dict(raw({"shuffle_buffer": 50})).data.shuffle_buffer == 50
