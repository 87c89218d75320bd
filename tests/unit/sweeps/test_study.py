"""study.py: the grid × seeds plan (plus the runs from scratch), and the study block's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune.recipe import RecipeError, recipe_from_dict
from finetune.sweeps.study import plan, settings
from tests.helpers.study import base

# ------------------------------------------------------------------------------ the plan


def test_the_plan_is_the_grid_times_the_seeds_plus_scratch() -> None:
    grid = {"model.strategy": ["linear_probe", "full"], "data.samples_per_class": [5, 20]}
    recipe = recipe_from_dict(base(grid=grid, seeds=3, scratch=True))
    cells = plan(recipe, "r.json")
    # 4 combinations, and one from scratch per k (strategy full: the strategies collapse).
    assert len({c.label for c in cells}) == 6 and len(cells) == 18
    scratch = [c for c in cells if c.scratch]
    assert {c.recipe.data.samples_per_class for c in scratch} == {5, 20}
    assert all(c.recipe.model.from_scratch and c.recipe.model.strategy == "full" for c in scratch)
    assert not any(c.recipe.model.from_scratch for c in cells if not c.scratch)
    # Seed i moves the training seed and the k-shot draw's seed alike.
    for cell in cells:
        assert cell.recipe.training["seed"] == 10 + cell.seed and cell.recipe.training["data_seed"] == 10 + cell.seed
        assert cell.recipe.study is None and cell.recipe.expected is None and not cell.recipe.hub.push
    folders = [c.folder for c in cells]
    assert len(set(folders)) == len(folders) and all(f.parent.parent == Path("out") / "runs" for f in folders)
    probe = next(c for c in cells if c.values == {"model.strategy": "linear_probe", "data.samples_per_class": 5})
    assert probe.folder == Path("out/runs/strategy-linear_probe__samples_per_class-5/seed-0")
    assert probe.recipe.data.samples_per_class == 5 and probe.recipe.model.strategy == "linear_probe"


def test_without_a_grid_the_recipe_runs_over_its_seeds() -> None:
    cells = plan(recipe_from_dict(base(seeds=2)), "r.json")
    assert [c.label for c in cells] == ["the recipe as it is"] * 2
    assert [c.recipe.training["seed"] for c in cells] == [10, 11]
    assert settings(recipe_from_dict(base()).study) == [({}, False)]


def test_a_combination_that_makes_no_valid_recipe_is_refused_before_any_run() -> None:
    # Each value alone is valid with the rest of the recipe; L-BFGS with full fine-tuning is not.
    recipe = recipe_from_dict(base(grid={"model.strategy": ["linear_probe", "full"], "model.probe_solver": ["lbfgs"]}))
    with pytest.raises(RecipeError) as err:
        plan(recipe, "r.json")
    message = str(err.value)
    assert message.startswith("r.json: 'model.probe_solver' 'lbfgs'")
    assert message.endswith("(study cell strategy=full, probe_solver=lbfgs)") and len(message.splitlines()) == 1


@pytest.mark.parametrize(
    "study, needle",
    [
        ({"grid": {"model.stratgy": ["full"]}}, "did you mean 'strategy'?"),
        ({"grid": {"model.strategy": ["full", "bogus"]}}, "'study.grid.model.strategy' value \"bogus\""),
        ({"grid": {"training.seed": [1, 2]}}, "use 'study.seeds'"),
        ({"grid": {"output_dir": ["a", "b"]}}, "cannot vary 'output_dir'"),
        ({"grid": {"hub.push": [True]}}, "cannot vary 'hub.push'"),
        ({"grid": {"data.samples_per_class": []}}, "must list one or more values"),
        ({"grid": {"data.samples_per_class": [5, 5]}}, "lists a value twice"),
        ({"grid": {"data.samples_per_class": [0]}}, "'data.samples_per_class' must be a positive integer"),
        ({"seeds": 0}, "'study.seeds' must be >= 1"),
        ({"sedes": 2}, "did you mean 'seeds'?"),
    ],
)
def test_the_study_block_is_strict(study: dict, needle: str) -> None:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(base(**study), "r.json")
    assert needle in str(err.value)
