"""search and study on multi-label runs: the objective may be mAP, a trial that lacks the objective stops the search with one line, and the study's table and picture show the metrics the runs computed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from finetune.recipe import recipe_from_dict
from finetune.sweeps import search_trial
from finetune.sweeps.search import declared_multi_label, objective
from finetune.sweeps.study import plan
from finetune.sweeps.study_report import markdown, metric_columns, write
from tests.helpers.search import search_recipe
from tests.helpers.study import base


def test_the_objective_of_a_multi_label_search() -> None:
    raw = search_recipe("m", "d", Path("/tmp/o"))
    listed = recipe_from_dict({**raw, "metrics": ["map", "f1_micro"]})
    assert declared_multi_label(listed) and objective(listed) == ("map", "maximize")
    only_f1 = recipe_from_dict({**raw, "metrics": ["f1_macro", "exact_match"]})
    assert objective(only_f1) == ("f1_macro", "maximize")
    default = recipe_from_dict(raw)  # the single-label default list: multi-label once the data says so
    assert not declared_multi_label(default) and objective(default) == ("accuracy", "maximize")
    assert objective(default, multi_label=True) == ("map", "maximize")
    named = recipe_from_dict({**raw, "metrics": ["map", "f1_micro"],
                              "training": {**raw["training"], "metric_for_best_model": "eval_f1_micro"}})
    assert objective(named) == ("f1_micro", "maximize")


def test_a_trial_without_the_objective_stops_the_search_with_one_line(monkeypatch, tmp_path) -> None:
    from finetune.training import train

    raw = search_recipe("m", "d", tmp_path / "o")
    scores = {"eval_loss": 0.3, "eval_map": 0.8, "eval_f1_micro": 0.7, "eval_num_images": 10}
    monkeypatch.setattr(train, "train_trial", lambda recipe, callbacks, shared: scores)
    state = type("State", (), {"num_processes": 1, "is_main_process": True})()
    with pytest.raises(search_trial.ObjectiveMissing) as err:
        search_trial.run_trial(None, state, raw, "r.json", {}, "accuracy", tmp_path / "t", None, search_trial.Quiet())
    message = str(err.value)
    assert "\n" not in message and "validation accuracy" in message and "map, f1_micro" in message
    assert 'metric_for_best_model to one of them (e.g. "map")' in message and "data.task" in message
    value, pruned, failed, _ = search_trial.run_trial(
        None, state, raw, "r.json", {}, "map", tmp_path / "t", None, search_trial.Quiet()
    )
    assert value == 0.8 and failed is None and pruned is None


def _rows(recipe) -> list[dict]:
    rows = []
    for cell in plan(recipe, "r.json"):
        m = 0.5 + 0.01 * cell.values.get("data.samples_per_class", 0) + 0.01 * cell.seed
        rows.append({
            "cell": cell.label, **cell.values, "init": "pretrained", "seed": cell.seed, "eval_map": m,
            "eval_map_ci_low": m - 0.05, "eval_map_ci_high": m + 0.05, "eval_f1_micro": m - 0.1,
            "eval_f1_macro": m - 0.12, "eval_exact_match": m - 0.3, "eval_num_images": 100, "train_runtime": 1.0,
            "folder": str(cell.folder),
        })
    return rows


def test_the_study_shows_the_metrics_the_runs_computed(tmp_path) -> None:
    # The recipe lists the single-label default; the runs were multi-label.
    recipe = recipe_from_dict(base(grid={"data.samples_per_class": [5, 20]}, seeds=2))
    rows = _rows(recipe)
    assert metric_columns(recipe, rows) == ["eval_map", "eval_f1_micro", "eval_f1_macro", "eval_exact_match"]
    text = markdown(recipe, rows, len(rows))
    assert "mAP (macro)" in text and "Exact match" in text and "±0.0500" in text
    write(tmp_path, recipe, rows, len(rows))
    assert (tmp_path / "study.png").is_file()
    from finetune.sweeps import study_report

    fig = study_report.figure(recipe, rows)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0] == "mAP (macro) on the eval split" and len(titles) == 4
    assert np.isfinite([r["eval_map"] for r in rows]).all()
