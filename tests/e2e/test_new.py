"""finetune new as a user runs it: real timing on this machine, then the recipe it wrote trained as written."""

from __future__ import annotations

import json

from tests.helpers.cli import run_cli
from tests.helpers.images import make_image_folder


def test_the_written_recipe_trains_within_its_budget_as_printed(tmp_path, tiny_vit):
    data = make_image_folder(tmp_path / "images", per_class=10)
    out = tmp_path / "recipe.json"
    made = run_cli("new", str(data), "--model", str(tiny_vit), "--minutes", "1", "--out", str(out),
                   "--output-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    recipe = json.loads(out.read_text())
    assert recipe["model"]["strategy"] == "linear_probe"
    command = next(line for line in made.stdout.splitlines() if line.startswith("run it: "))
    assert command.endswith(f"--recipe {out}")
    trained = run_cli("--recipe", str(out), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert results["eval_num_images"] == 15  # the test folder: 5 images of each of the 3 classes
    card = (tmp_path / "run" / "README.md").read_text()
    assert "Written by `finetune new`" in card
