"""training_block.py: TrainingArguments read from source equals the real class; the checks refuse
what torch and transformers would."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, Literal

import pytest

from finetune.recipe import RecipeError, recipe_from_dict
from finetune.recipe import training_block as training_fields
from finetune.recipe.training_block import RANGES, check_consistency, check_ranges, strategy_defaults
from finetune.training.arguments import training_arguments
from tests.helpers.recipes import base

LAYOUT = "transformers changed TrainingArguments' source layout; see finetune/training_fields.py"


def _shape(tp: Any) -> Any:
    """A comparable form of an annotation: enums by name and values, other libraries' classes as Any."""
    if tp is Any or isinstance(tp, str):
        return "Any"
    if tp is None or tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return ("union", frozenset(_shape(a) for a in typing.get_args(tp)))
    if origin is Literal:
        return ("literal", typing.get_args(tp))
    if origin is not None:
        return (origin.__name__, tuple(_shape(a) for a in typing.get_args(tp)))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return ("enum", tp.__name__, frozenset(m.value for m in tp))
    if isinstance(tp, type) and tp.__module__ == "builtins":
        return tp.__name__
    return "Any"  # e.g. accelerate's ParallelismConfig: no JSON value is one


@pytest.fixture
def fresh_cache():
    training_fields.fields.cache_clear()
    yield
    training_fields.fields.cache_clear()


def test_fields_read_from_source_equal_the_real_training_arguments(fresh_cache) -> None:
    from transformers import TrainingArguments

    real = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}
    read = training_fields._from_source()
    assert set(read) == set(real), f"{LAYOUT}: fields differ: {sorted(set(read) ^ set(real))}"
    for name, f in real.items():
        assert _shape(read[name].type) == _shape(f.type), f"{LAYOUT}: field {name!r}: {read[name].type} != {f.type}"
        if read[name].default is not dataclasses.MISSING:
            assert read[name].default == f.default, f"{LAYOUT}: default of {name!r}"
    # The enums that a recipe's strings are checked against were rebuilt, not left as Any.
    args = typing.get_args(read["lr_scheduler_type"].type)
    (schedules,) = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
    assert {"linear", "cosine"} <= {m.value for m in schedules}
    cached = training_fields.fields()
    assert cached is training_fields.fields() and set(cached) == set(read)  # read once per process, from source
    assert {_shape(f.type) for f in cached.values()} == {_shape(f.type) for f in read.values()}


def test_missing_source_falls_back_to_importing_transformers(monkeypatch, fresh_cache) -> None:
    monkeypatch.setattr(training_fields.importlib.util, "find_spec", lambda name: None)
    got = training_fields.fields()
    assert got["learning_rate"].type is float and "eval_strategy" in got
    assert set(got) == set(training_fields._from_import())


def test_unparsable_source_falls_back_to_importing_transformers(monkeypatch, fresh_cache) -> None:
    def broken(path):
        raise SyntaxError("zipped install")

    monkeypatch.setattr(training_fields, "_parse", broken)
    got = training_fields.fields()
    assert "per_device_train_batch_size" in got and got["seed"].type is int


def test_unknown_names_become_any_and_enums_keep_their_values() -> None:
    import ast

    enums = training_fields._enums(ast.parse("class Color(ExplicitEnum):\n    RED = 'red'\n    _hidden = 'x'\n"))
    namespace = {**training_fields._namespace(ast.parse(""), training_fields.package_dir(), set()), **enums}
    resolve = lambda text: training_fields._resolve(ast.parse(text, mode="eval").body, namespace)  # noqa: E731
    assert {m.value for m in resolve("Color")} == {"red"}
    assert resolve("SomeClass | None") == typing.Optional[Any]
    assert resolve("np.ndarray") is Any
    assert resolve("list[str]") == list[str]


def test_every_range_names_a_numeric_field() -> None:
    fields = training_fields.fields()
    for key in RANGES:
        assert key in fields, f"{LAYOUT}: RANGES names {key!r}, which TrainingArguments no longer has"
        assert _shape(fields[key].type) in ("int", "float", ("union", frozenset({"int", "None"})),
                                            ("union", frozenset({"float", "None"}))), key


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("learning_rate", -0.001, ">= 0"),
        ("per_device_train_batch_size", 0, ">= 1"),
        ("per_device_eval_batch_size", -2, ">= 1"),
        ("gradient_accumulation_steps", 0, ">= 1"),
        ("num_train_epochs", -1, ">= 0"),
        ("max_steps", 0, ">= 1 (or -1 to let num_train_epochs decide)"),
        ("max_steps", -5, ">= 1"),
        ("save_total_limit", 0, "or null to keep every checkpoint"),
        ("logging_steps", 0, "> 0"),
        ("eval_steps", -10, "> 0"),
        ("save_steps", 0, "> 0"),
        ("warmup_steps", -0.1, ">= 0"),
        ("weight_decay", -0.01, ">= 0"),
        ("adam_beta1", 1.0, "[0, 1)"),
        ("adam_beta2", -0.1, "[0, 1)"),
        ("adam_epsilon", -1e-8, ">= 0"),
        ("max_grad_norm", -1.0, ">= 0"),
        ("label_smoothing_factor", 1, "[0, 1)"),
        ("dataloader_num_workers", -1, ">= 0"),
        ("seed", -1, "[0, 4294967295]"),
        ("data_seed", 2**32, "[0, 4294967295]"),
    ],
)
def test_out_of_range_values_are_one_line_problems(key: str, value: float, allowed: str) -> None:
    problems = check_ranges({key: value}, "r.json")
    assert len(problems) == 1, problems
    message = problems[0]
    assert message.startswith(f"r.json: 'training.{key}' must be ") and allowed in message
    assert message.endswith(f"got {value}") and "\n" not in message


def test_in_range_values_pass() -> None:
    good = {
        "learning_rate": 0.0, "per_device_train_batch_size": 1, "num_train_epochs": 0.5, "max_steps": -1,
        "save_total_limit": None, "logging_steps": 0.05, "eval_steps": 50, "save_steps": 100.0, "warmup_steps": 0.1,
        "adam_beta1": 0.0, "adam_beta2": 0.999, "label_smoothing_factor": 0.1, "seed": 0, "data_seed": 2**32 - 1,
        "max_grad_norm": 0.0, "dataloader_num_workers": 0, "lr_scheduler_type": "cosine",
    }
    assert check_ranges(good, "r.json") == []


def test_fractional_step_counts_above_one_and_non_finite_numbers() -> None:
    assert "whole number" in check_ranges({"save_steps": 10.5}, "r.json")[0]
    assert "finite" in check_ranges({"learning_rate": float("nan")}, "r.json")[0]
    assert "finite" in check_ranges({"num_train_epochs": float("inf")}, "r.json")[0]


def test_zero_epochs_without_max_steps_is_refused() -> None:
    for training in ({"num_train_epochs": 0}, {"num_train_epochs": 0, "max_steps": -1}):
        (message,) = check_ranges(training, "r.json")
        assert "'training.num_train_epochs' is 0 and 'training.max_steps' is not set" in message
        assert "nothing would be trained" in message
    assert check_ranges({"num_train_epochs": 0, "max_steps": 5}, "r.json") == []


def test_recipe_refuses_a_negative_learning_rate_before_anything_loads() -> None:
    raw = {"description": "d", "model": {"name_or_path": "m"}, "data": {"dataset": "x"}, "output_dir": "o",
           "training": {"learning_rate": -0.001}}
    with pytest.raises(RecipeError, match=r"^r.json: 'training.learning_rate' must be >= 0, got -0.001$"):
        recipe_from_dict(raw, "r.json")


def test_early_stopping_brings_the_best_model_checks_as_training_arguments_does(tmp_path) -> None:
    """Early stopping turns load_best_model_at_end on, so save and eval strategies must then
    match: the recipe says so, and TrainingArguments (through args.py) agrees."""
    from finetune.training.arguments import training_arguments

    raw = {"description": "d", "model": {"name_or_path": "m"}, "data": {"dataset": "x"}, "output_dir": str(tmp_path),
           "training": {"early_stopping_patience": 2, "save_strategy": "steps", "use_cpu": True}}
    with pytest.raises(RecipeError, match=r"^r.json: 'training.load_best_model_at_end' needs .* to match") as err:
        recipe_from_dict(raw, "r.json")
    assert "\n" not in str(err.value)
    recipe = recipe_from_dict({**raw, "training": {"use_cpu": True}}, "r.json")
    recipe.training = raw["training"]
    with pytest.raises(RecipeError, match="'training' is inconsistent"):
        training_arguments(recipe, "r.json")
    assert recipe_from_dict({**raw, "training": {"early_stopping_patience": 2}}, "r.json")  # the defaults agree


# Each case: (training block, has a validation piece, the phrase of finetune's message or
# None when consistent). The same block, over finetune's defaults, must make
# TrainingArguments raise exactly when the cheap check reports a problem.
CONSISTENCY = [
    ({}, True, None),
    ({}, False, None),
    ({"eval_strategy": "epoch"}, False, "no validation piece"),
    ({"load_best_model_at_end": True}, True, None),
    ({"load_best_model_at_end": True, "save_strategy": "steps"}, True, "to match"),
    ({"load_best_model_at_end": True, "save_strategy": "best"}, True, None),
    ({"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "steps", "eval_steps": 20,
      "save_steps": 50}, True, "multiple"),
    ({"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "steps", "eval_steps": 20,
      "save_steps": 60}, True, None),
    ({"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "steps", "save_steps": 25}, True,
     "multiple"),  # eval_steps falls back to logging_steps (10)
    ({"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "steps", "eval_steps": 0.1,
      "save_steps": 0.3}, True, None),
    ({"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "steps", "eval_steps": 0.1,
      "save_steps": 25}, True, "multiple"),
    ({"lr_scheduler_type": "reduce_lr_on_plateau"}, False, "follows the validation score"),
    ({"lr_scheduler_type": "reduce_lr_on_plateau"}, True, None),
    ({"fp16": True, "bf16": True}, True, "at most one"),
]


@pytest.mark.parametrize("training, has_validation, phrase", CONSISTENCY)
def test_consistency_checks_agree_with_training_arguments(tmp_path, training, has_validation, phrase) -> None:
    from transformers import TrainingArguments

    problems = check_consistency(training, "r.json", has_validation)
    if phrase is None:
        assert problems == []
    else:
        assert len(problems) == 1 and phrase in problems[0] and problems[0].startswith("r.json: 'training.")
    if "eval_strategy" in training and not has_validation:
        return  # finetune's own rule: TrainingArguments does not know about the validation piece
    settings = {**strategy_defaults(has_validation), "use_cpu": True, "report_to": "none", **training}
    try:
        TrainingArguments(output_dir=str(tmp_path), **settings)
    except ValueError:
        assert problems, f"TrainingArguments refuses {training} but the cheap check does not"
    else:
        assert not problems, f"the cheap check refuses {training} but TrainingArguments accepts it"


def test_inconsistent_training_block_is_a_recipe_error() -> None:
    inconsistent = {"load_best_model_at_end": True, "eval_strategy": "epoch", "save_strategy": "steps", "save_steps": 7}
    # Found by the recipe check, without building TrainingArguments (which imports torch)...
    with pytest.raises(RecipeError, match="'training.load_best_model_at_end' needs .* to match"):
        recipe_from_dict({**base(), "training": inconsistent}, "r.json")
    # ...and by TrainingArguments itself for a recipe changed after validation.
    recipe = recipe_from_dict(base())
    recipe.training.update(inconsistent)
    with pytest.raises(RecipeError, match="'training' is inconsistent"):
        training_arguments(recipe, "r.json")


def test_eval_strategy_without_validation_piece_is_refused() -> None:
    raw = {**base(), "data": {"dataset": "x", "validation_fraction": 0}, "training": {"eval_strategy": "epoch"}}
    with pytest.raises(RecipeError, match="'training.eval_strategy' is 'epoch' but there is no validation piece"):
        recipe_from_dict(raw, "r.json")


def test_best_model_metric_must_be_one_the_run_computes() -> None:
    """Without early stopping too: the Trainer would look the metric up only after the first
    evaluation, and stop there with a KeyError."""
    raw = {**base(), "metrics": ["accuracy"], "training": {"metric_for_best_model": "f1", "load_best_model_at_end": True}}
    with pytest.raises(RecipeError, match="'training.metric_for_best_model' is 'f1', which the run does not compute"):
        recipe_from_dict(raw, "r.json")
    for fine in ("accuracy", "eval_accuracy", "loss", "eval_loss"):
        recipe_from_dict({**raw, "training": {"metric_for_best_model": fine}}, "r.json")
