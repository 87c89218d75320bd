"""The command line on recipes, in a subprocess: a bad recipe exits 2 with one line before loading anything, and validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.recipes import SHIPPED, base


@pytest.mark.e2e
def test_cli_bad_recipe_exits_2_with_one_line(tmp_path: Path) -> None:
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({**base(), "training": {"learnig_rate": 0.1}}))
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"finetune: error: {recipe}: unknown key 'training.learnig_rate' "
                     "(not a transformers.TrainingArguments field); did you mean 'learning_rate'?"]


@pytest.mark.e2e
def test_cli_validate(tmp_path: Path) -> None:
    ok = run_cli("validate", *map(str, SHIPPED))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("ok ") == len(SHIPPED)
    broken = run_cli("validate", str(SHIPPED[0]), "--set", "model.strategy=frozen")
    assert broken.returncode == 2 and "'model.strategy' must be one of" in broken.stderr


@pytest.mark.e2e
def test_cli_out_of_range_value_exits_2_before_loading(tmp_path: Path) -> None:
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({**base(), "training": {"learning_rate": -0.001}}))
    result = run_cli("--recipe", str(recipe))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"finetune: error: {recipe}: 'training.learning_rate' must be >= 0, got -0.001"]
