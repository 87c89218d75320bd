"""search.py: what a search refuses before loading anything, and the objective it scores trials by."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.recipe import recipe_from_dict
from finetune.sweeps.search import Options, SearchError, check, objective
from tests.helpers.search import search_recipe


def test_search_refuses_what_it_cannot_do_before_loading(tmp_path: Path) -> None:
    def problem(raw: dict, **options) -> str:
        with pytest.raises(SearchError) as err:
            check(recipe_from_dict(raw), Options(trials=3, **options), "r.json")
        return str(err.value)

    base = search_recipe("m", "d", tmp_path / "o")
    assert "no 'search' block" in problem({k: v for k, v in base.items() if k != "search"})
    assert "trials are scored on the validation piece" in problem({**base, "data": {"dataset": "d", "validation_fraction": 0}})
    null_eval = {**base, "data": {"dataset": "d", "eval_split": None, "validation_fraction": 0.2}}
    assert "pass --no-final" in problem(null_eval)
    check(recipe_from_dict(null_eval), Options(trials=3, final=False), "r.json")  # fine without a final run
    assert "is a continuous range" in problem(base, sampler="grid")


def test_the_objective_follows_metric_for_best_model() -> None:
    base = search_recipe("m", "d", Path("/tmp/o"))
    assert objective(recipe_from_dict(base)) == ("accuracy", "maximize")
    loss = {**base, "training": {**base["training"], "metric_for_best_model": "eval_loss"}}
    assert objective(recipe_from_dict(loss)) == ("loss", "minimize")
