"""Recipes: the schema, loading with ``--set`` overrides, and every check, before any model or data is loaded (no torch here).

A recipe is data, not code (the torchtune / big_vision lesson): every key is declared in
:mod:`finetune.recipe.schema` with its type and default, unknown keys are errors with a "did
you mean" suggestion, and every problem is one line naming the file, the key and the fix.
All the problems of a recipe are found in one pass and raised together, one line each.

The names below are the recipe's public API: the rest of finetune imports them from here;
the modules of this package import each other directly.
"""

from finetune.recipe.load import (
    apply_overrides,
    load_recipe,
    parse_override,
    read_recipe,
    recipe_from_dict,
    recipe_keys,
)
from finetune.recipe.schema import (
    DISTILL_ALPHA,
    DISTILL_TEMPERATURE,
    EVAL_SET_NAME,
    FINETUNE_TRAINING_KEYS,
    LORA_KEYS,
    STUDY_OWN_KEYS,
    TRAINING_KEYS_ELSEWHERE,
    TTA,
    AugmentConfig,
    DataConfig,
    EvalSetConfig,
    EvaluationConfig,
    Expected,
    HubConfig,
    ModelConfig,
    Recipe,
    RecipeError,
    Strategy,
    StudyConfig,
)

__all__ = [
    "DISTILL_ALPHA",
    "DISTILL_TEMPERATURE",
    "EVAL_SET_NAME",
    "FINETUNE_TRAINING_KEYS",
    "LORA_KEYS",
    "STUDY_OWN_KEYS",
    "TRAINING_KEYS_ELSEWHERE",
    "TTA",
    "AugmentConfig",
    "DataConfig",
    "EvalSetConfig",
    "EvaluationConfig",
    "Expected",
    "HubConfig",
    "ModelConfig",
    "Recipe",
    "RecipeError",
    "Strategy",
    "StudyConfig",
    "apply_overrides",
    "load_recipe",
    "parse_override",
    "read_recipe",
    "recipe_from_dict",
    "recipe_keys",
]
