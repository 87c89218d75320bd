"""`finetune validate`: every problem of a recipe printed, one line each."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.recipes import three_mistakes


def test_validate_prints_every_problem(tmp_path: Path, capsys) -> None:
    from finetune.cli.main import main

    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(three_mistakes()))
    assert main(["validate", str(recipe)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(f"FAIL {recipe}: ") for line in lines)
