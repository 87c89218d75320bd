"""task.py: data.task and data.label_separator checked from the keys, and the metrics a run computes once its data says single- or multi-label."""

from __future__ import annotations

import pytest

from finetune.data import multi_label
from finetune.recipe import DataConfig, RecipeError, recipe_from_dict
from finetune.recipe import task as task_lib
from finetune.recipe.metric_names import MULTI_LABEL_METRICS, SINGLE_LABEL_METRICS
from tests.helpers.recipes import base


def recipe(data=None, **top):
    raw = base()
    raw["data"] = {**raw["data"], **(data or {})}
    raw.update(top)
    return recipe_from_dict(raw)


def refused(data=None, **top) -> str:
    with pytest.raises(RecipeError) as err:
        recipe(data, **top)
    return str(err.value)


def test_the_defaults_are_auto_and_the_contracts_separator() -> None:
    d = recipe().data
    assert d.task == "auto" and d.label_separator == multi_label.DEFAULT_SEPARATOR == DataConfig().label_separator


def test_task_takes_its_three_values_only() -> None:
    for value in ("auto", "single_label", "multi_label"):
        assert recipe({"task": value}).data.task == value
    message = refused({"task": "multilabel"})
    assert "'data.task' must be one of 'auto', 'single_label', 'multi_label'" in message


def test_the_separator_must_be_text_and_means_nothing_to_a_single_label_run() -> None:
    assert "'data.label_separator' is empty" in refused({"label_separator": ""})
    assert "'data.label_separator' must be string" in refused({"label_separator": 1})
    message = refused({"task": "single_label", "label_separator": "|"})
    assert "'data.label_separator' splits a text label" in message and "'single_label' never does" in message
    assert recipe({"task": "multi_label", "label_separator": "|"}).data.label_separator == "|"
    assert recipe({"task": "single_label"}).data.task == "single_label"  # the default separator is no problem


@pytest.mark.parametrize(
    "keys, needle",
    [
        ({"samples_per_class": 5}, "'data.samples_per_class' draws k images of each class"),
        ({"sampler": "balanced"}, "'data.sampler' 'balanced' draws a class, then an image of it"),
        ({"streaming": True}, "'data.streaming' true, but 'data.task' 'multi_label'"),
    ],
)
def test_a_multi_label_task_refuses_what_needs_one_class_per_image(keys, needle) -> None:
    message = refused({"task": "multi_label", **keys})
    assert needle in message and len(message.splitlines()) == 1, message
    recipe(keys if "streaming" not in keys else {"streaming": True})  # the same keys are fine without the task


def test_an_explicit_task_refuses_metrics_of_the_other_kind() -> None:
    message = refused({"task": "multi_label"}, metrics=["accuracy", "f1"])
    assert "'metrics' names accuracy, f1, which a multi-label run does not compute" in message
    assert ", ".join(MULTI_LABEL_METRICS) in message and len(message.splitlines()) == 1
    message = refused({"task": "single_label"}, metrics=["map"])
    assert "'metrics' names map, which a single-label run does not compute" in message
    assert ", ".join(SINGLE_LABEL_METRICS) in message
    assert recipe({"task": "multi_label"}, metrics=["map", "exact_match"]).metrics == ["map", "exact_match"]
    assert recipe({"task": "multi_label"}).metrics == list(SINGLE_LABEL_METRICS)  # the default follows the task later


def test_metrics_of_both_kinds_are_refused_whatever_the_task() -> None:
    message = refused(metrics=["accuracy", "map"])
    assert "'metrics' mixes single-label (accuracy) and multi-label (map) metrics" in message


def test_names_that_refer_to_a_metric_may_name_the_tasks_metrics() -> None:
    # task auto, default metrics: either kind, until the data says.
    assert recipe(training={"metric_for_best_model": "eval_map"}).training["metric_for_best_model"] == "eval_map"
    assert recipe(expected={"metric": "map", "value": 0.5}).expected.metric == "map"
    assert recipe({"task": "multi_label"}, training={"metric_for_best_model": "f1_macro"})
    message = refused({"task": "single_label"}, training={"metric_for_best_model": "map"})
    assert "'training.metric_for_best_model' is 'map', which the run does not compute" in message
    message = refused({"task": "multi_label"}, expected={"metric": "accuracy", "value": 0.9})
    assert "'expected.metric' is 'accuracy' but the run does not compute it" in message
    # Explicit metrics are what the run computes.
    assert "'training.metric_for_best_model' is 'map'" in refused(metrics=["accuracy"], training={"metric_for_best_model": "map"})


def test_possible_metrics_follow_the_task_only_for_the_default_list() -> None:
    default = list(SINGLE_LABEL_METRICS)
    assert task_lib.possible_metrics(default, "single_label") == default
    assert task_lib.possible_metrics(default, "multi_label") == list(MULTI_LABEL_METRICS)
    assert set(task_lib.possible_metrics(default, "auto")) == set(SINGLE_LABEL_METRICS) | set(MULTI_LABEL_METRICS)
    assert task_lib.possible_metrics(["f1"], "auto") == ["f1"]


def test_the_resolved_metrics_follow_the_data() -> None:
    r = recipe()
    assert task_lib.resolve_metrics(r, multi_label=True) == list(MULTI_LABEL_METRICS)
    assert task_lib.resolve_metrics(r, multi_label=False) == list(SINGLE_LABEL_METRICS)
    chosen = recipe(metrics=["map"])
    assert task_lib.resolve_metrics(chosen, multi_label=True) == ["map"]
    resolved = task_lib.for_data(r, multi_label=True)
    assert resolved.metrics == list(MULTI_LABEL_METRICS) and r.metrics == list(SINGLE_LABEL_METRICS)
    assert resolved.data is r.data


def test_resolving_names_of_the_wrong_kind_is_one_line_naming_metrics_and_the_right_names() -> None:
    with pytest.raises(RecipeError) as err:
        task_lib.resolve_metrics(recipe(metrics=["accuracy", "top5_accuracy"]), multi_label=True, source="r.json")
    message = str(err.value)
    assert message.startswith("r.json: 'metrics' names accuracy, top5_accuracy, which a multi-label run does not compute")
    assert "its label column holds several classes per image" in message and ", ".join(MULTI_LABEL_METRICS) in message
    assert len(message.splitlines()) == 1
    with pytest.raises(RecipeError, match="'metrics' names map, which a single-label run does not compute"):
        task_lib.resolve_metrics(recipe(metrics=["map"]), multi_label=False)


def test_resolving_checks_the_names_that_refer_to_the_metrics() -> None:
    r = recipe(training={"metric_for_best_model": "map"}, expected={"metric": "map", "value": 0.4})
    assert task_lib.resolve_metrics(r, multi_label=True) == list(MULTI_LABEL_METRICS)
    with pytest.raises(RecipeError) as err:
        task_lib.resolve_metrics(r, multi_label=False)
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert "'expected.metric' is 'map', which this run does not compute" in lines[0]
    assert "'training.metric_for_best_model' is 'map', which this run does not compute" in lines[1]
    assert task_lib.resolve_metrics(recipe(training={"metric_for_best_model": "eval_loss"}), multi_label=True)


def test_a_task_refusal_names_each_key_once() -> None:
    refusals = task_lib.multi_label_refusals(DataConfig(samples_per_class=2, sampler="balanced"))
    assert [r.split("'")[1] for r in refusals] == ["data.samples_per_class", "data.sampler"]
    assert task_lib.multi_label_refusals(DataConfig()) == []


def test_training_arguments_accept_a_multi_label_metric_for_early_stopping() -> None:
    from finetune.training.arguments import training_arguments

    r = recipe(training={"early_stopping_patience": 2, "metric_for_best_model": "map", "use_cpu": True})
    args = training_arguments(r)
    assert args.metric_for_best_model == "map" and args.greater_is_better
