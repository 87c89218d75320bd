"""Values that cannot work are refused with one line naming the key and its limit, before
anything loads: an image size no model or memory takes, a decode pass of thousands of processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from finetune.recipe import RecipeError, recipe_from_dict
from finetune.recipe.schema import MAX_DECODE_WORKERS, MAX_IMAGE_SIZE

ROOT = Path(__file__).resolve().parents[3]


def _recipe(**data) -> dict:
    return {"description": "d", "model": {"name_or_path": "some/model"}, "data": {"dataset": "some/data", **data},
            "output_dir": "out"}


@pytest.mark.parametrize(
    "key, value, limit",
    [("image_size", 100_000, MAX_IMAGE_SIZE), ("image_size", MAX_IMAGE_SIZE + 1, MAX_IMAGE_SIZE),
     ("preprocessing_num_workers", 10_000, MAX_DECODE_WORKERS), ("preprocessing_num_workers", 0, MAX_DECODE_WORKERS),
     ("preprocessing_num_workers", -2, MAX_DECODE_WORKERS)],
)
def test_values_past_the_bound_are_refused_naming_key_and_limit(key: str, value: int, limit: int) -> None:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(_recipe(**{key: value}), "r.json")
    message = str(err.value)
    assert f"'data.{key}'" in message and str(limit) in message and str(value) in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("key, value", [("image_size", MAX_IMAGE_SIZE), ("preprocessing_num_workers", 1),
                                        ("preprocessing_num_workers", MAX_DECODE_WORKERS)])
def test_values_up_to_the_bound_pass(key: str, value: int) -> None:
    assert getattr(recipe_from_dict(_recipe(**{key: value})).data, key) == value


def test_validate_refuses_them_with_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "finetune" / "run.py"), "validate", str(ROOT / "recipes" / "quickstart.json"),
         "--set", "data.image_size=100000", "--set", "data.preprocessing_num_workers=10000"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2
    assert "'data.image_size' is at most 4096" in result.stdout + result.stderr
    assert "'data.preprocessing_num_workers' must be from 1 to 64" in result.stdout + result.stderr
