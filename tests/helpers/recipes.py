"""Recipes as dicts: the smallest valid one, and recipes that break in known ways."""

from __future__ import annotations

from pathlib import Path

from finetune.recipe import recipe_from_dict
from tests.helpers import ROOT


def base() -> dict:
    """The smallest valid recipe (nothing in it is loaded)."""
    return {
        "description": "d",
        "model": {"name_or_path": "some/model"},
        "data": {"dataset": "some/data"},
        "output_dir": "out",
    }


def output_recipe(out: Path, **training):
    """A recipe writing to ``out`` whose model and data are never loaded, with these training keys."""
    return recipe_from_dict(
        {
            "description": "test recipe",
            "expected": {"metric": "accuracy", "value": 0.9},
            "model": {"name_or_path": "unused/model"},
            "data": {"dataset": "unused/data"},
            "training": {"num_train_epochs": 1, "use_cpu": True, **training},
            "output_dir": str(out),
        }
    )


SHIPPED = sorted((ROOT / "recipes").glob("*.json"))


def three_mistakes() -> dict:
    """A misspelt key, a wrong value and a missing required key, in different sections."""
    raw = {**base(), "model": {"name_or_path": "m", "strategy": "half"}, "data": {"dataset": "x", "validaton_fraction": 0.2}}
    del raw["output_dir"]
    return raw
