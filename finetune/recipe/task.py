"""The task a recipe runs, single- or multi-label (``data.task``), and the metrics that go with it: checked from the keys before any data is read, resolved once the data says which it is.

``data.task: "auto"`` leaves the choice to the data (:func:`finetune.data.columns.is_multi_label_column`),
so until the data is read a name that refers to a metric (``training.metric_for_best_model``,
``expected.metric``) is checked against what the run may compute (:func:`possible_metrics`);
after it, :func:`resolve_metrics` gives the metrics the run computes and refuses a recipe whose
names are of the other kind, in one line naming ``metrics`` and the right names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from finetune.recipe.builder import suggest
from finetune.recipe.metric_names import KNOWN_METRICS, MULTI_LABEL_METRICS, SINGLE_LABEL_METRICS
from finetune.recipe.schema import DataConfig, Recipe, RecipeError

SINGLE_LABEL, MULTI_LABEL, AUTO = "single_label", "multi_label", "auto"


def metric_task(name: str) -> str:
    """Which task a metric belongs to: "multi_label" for mAP and its kin, else "single_label"."""
    return MULTI_LABEL if name in MULTI_LABEL_METRICS else SINGLE_LABEL


def leaves_default(metrics: Sequence[str]) -> bool:
    """Whether ``metrics`` is the recipe's default list, which follows the task."""
    return list(metrics) == list(SINGLE_LABEL_METRICS)


def possible_metrics(metrics: Sequence[str], task: str) -> list[str]:
    """What a run of a recipe with these ``metrics`` and ``data.task`` may compute, before its
    data is read: the recipe's own names, or for the default list those of the task (both
    kinds while ``task`` is "auto")."""
    if not leaves_default(metrics):
        return list(metrics)
    if task == MULTI_LABEL:
        return list(MULTI_LABEL_METRICS)
    if task == SINGLE_LABEL:
        return list(SINGLE_LABEL_METRICS)
    return list(SINGLE_LABEL_METRICS) + list(MULTI_LABEL_METRICS)


def _wrong_kind(metrics: Sequence[str], multi_label: bool, why: str) -> str | None:
    """The one-line problem of explicit metric names of the other kind, or None."""
    want = MULTI_LABEL if multi_label else SINGLE_LABEL
    wrong = [m for m in metrics if metric_task(m) != want]
    if not wrong or leaves_default(metrics):
        return None
    right = MULTI_LABEL_METRICS if multi_label else SINGLE_LABEL_METRICS
    kind = "multi-label" if multi_label else "single-label"
    return (
        f"'metrics' names {', '.join(wrong)}, which a {kind} run does not compute ({why}); use some of "
        f"{', '.join(right)}, or leave 'metrics' out (its default follows the task)"
    )


def check(recipe: Recipe, source: str) -> list[str]:
    """The problems of ``data.task``, ``data.label_separator`` and the metrics' kind that the
    keys alone show (one line each, naming the key and the fix)."""
    d = recipe.data
    problems = [
        f"{source}: unknown metric '{name}' in 'metrics'; {suggest(name, KNOWN_METRICS)}"
        for name in recipe.metrics
        if name not in KNOWN_METRICS
    ]
    if not recipe.metrics:
        problems.append(f"{source}: 'metrics' must list at least one of {', '.join(KNOWN_METRICS)}")
    possible = possible_metrics(recipe.metrics, d.task)
    if recipe.expected is not None and recipe.expected.metric not in possible:
        problems.append(
            f"{source}: 'expected.metric' is '{recipe.expected.metric}' but the run does not compute it; "
            f"use one of {', '.join(possible)}"
        )
    kinds = {metric_task(m) for m in recipe.metrics}
    if len(kinds) > 1:
        problems.append(
            f"{source}: 'metrics' mixes single-label ({', '.join(m for m in recipe.metrics if metric_task(m) == SINGLE_LABEL)}) "
            f"and multi-label ({', '.join(m for m in recipe.metrics if metric_task(m) == MULTI_LABEL)}) metrics; a run "
            "computes one kind: keep the names of its task, or leave 'metrics' out"
        )
    elif d.task != AUTO:
        wrong = _wrong_kind(recipe.metrics, d.task == MULTI_LABEL, f"'data.task' is '{d.task}'")
        if wrong is not None:
            problems.append(f"{source}: {wrong}")
    if not d.label_separator:
        problems.append(
            f"{source}: 'data.label_separator' is empty; give the text between an image's classes, e.g. \";\""
        )
    elif d.task == SINGLE_LABEL and d.label_separator != DataConfig().label_separator:
        problems.append(
            f"{source}: 'data.label_separator' splits a text label into several classes, which 'data.task' "
            "'single_label' never does; remove the separator, or set data.task to 'multi_label' or 'auto'"
        )
    if d.task == MULTI_LABEL:
        problems += [f"{source}: {p}" for p in multi_label_refusals(d)]
    return problems


def multi_label_refusals(d: DataConfig) -> list[str]:
    """The data keys a multi-label run refuses, one line each (the recipe checks when
    ``data.task`` says so; the data path when "auto" finds multi-label data)."""
    out = []
    if d.samples_per_class is not None:
        out.append(
            "'data.samples_per_class' draws k images of each class, which multi-label data cannot do (an image "
            "counts for each of its classes); use data.max_train_samples, a seeded subset that keeps every class"
        )
    if d.sampler is not None:
        out.append(
            "'data.sampler' 'balanced' draws a class, then an image of it, which multi-label data does not define "
            "(an image has several classes or none); remove it (data.class_weights 'balanced' weighs each class's "
            "positives instead)"
        )
    return out


def resolve_metrics(recipe: Recipe, multi_label: bool, source: str = "recipe") -> list[str]:
    """The metrics a run computes once its data says whether it is multi-label: the recipe's
    ``metrics``, or for the default list those of the task. Raises a RecipeError (one line
    each) for names of the other kind, and for ``expected.metric`` or
    ``training.metric_for_best_model`` naming a metric the run does not compute."""
    why = "its label column holds several classes per image" if multi_label else "its label column holds one class per image"
    wrong = _wrong_kind(recipe.metrics, multi_label, why)
    if wrong is not None:
        raise RecipeError(f"{source}: {wrong}")
    metrics = list(MULTI_LABEL_METRICS) if multi_label and leaves_default(recipe.metrics) else list(recipe.metrics)
    problems = []
    if recipe.expected is not None and recipe.expected.metric not in metrics:
        problems.append(
            f"{source}: 'expected.metric' is '{recipe.expected.metric}', which this run does not compute; use one of "
            f"{', '.join(metrics)}"
        )
    best = recipe.training.get("metric_for_best_model")
    if isinstance(best, str) and best.removeprefix("eval_") not in ("loss", *metrics):
        problems.append(
            f"{source}: 'training.metric_for_best_model' is '{best}', which this run does not compute; use 'loss' "
            f"or one of {', '.join(metrics)}"
        )
    if problems:
        raise RecipeError("\n".join(problems))
    return metrics


def for_data(recipe: Recipe, multi_label: bool, source: str = "recipe") -> Recipe:
    """A copy of ``recipe`` whose ``metrics`` are those the run computes (:func:`resolve_metrics`),
    for every later stage (metrics, card, search) to read; the recipe itself is unchanged."""
    return dataclasses.replace(recipe, metrics=resolve_metrics(recipe, multi_label, source))
