"""study_report.py: the study's table, its mean ± std per cell, and its picture in any script."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetune.recipe import recipe_from_dict
from finetune.sweeps.study import plan
from finetune.sweeps.study_report import markdown, numeric_key, write
from tests.helpers.study import base


def _rows(recipe) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for cell in plan(recipe, "r.json"):
        accuracy = (0.3 if cell.scratch else 0.6) + 0.001 * cell.values.get("data.samples_per_class", 0) + 0.01 * cell.seed
        rows.append({
            "cell": cell.label, **cell.values, "init": "scratch" if cell.scratch else "pretrained", "seed": cell.seed,
            "eval_accuracy": accuracy, "eval_f1": accuracy - 0.05, "eval_num_images": 200,
            "train_runtime": float(rng.uniform(1, 2)), "folder": str(cell.folder),
        })
    return rows


def test_the_report_has_a_row_per_run_and_mean_and_std_per_cell(tmp_path: Path) -> None:
    recipe = recipe_from_dict(
        {**base(grid={"model.strategy": ["linear_probe", "full"], "data.samples_per_class": [5, 50]}, seeds=2, scratch=True),
         "metrics": ["accuracy", "f1"]}
    )
    rows = _rows(recipe)
    write(tmp_path, recipe, rows, len(rows))
    import csv

    with (tmp_path / "study.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 12 and {"cell", "seed", "init", "model.strategy", "eval_accuracy", "folder"} <= set(table[0])
    text = (tmp_path / "study.md").read_text()
    assert "A report, not a selection" in text and "`test`" in text and "(200 images)" in text
    # linear_probe at k=5: seeds 0 and 1 give 0.605 and 0.615: mean 0.61, sample std 0.00707.
    line = next(l for l in text.splitlines() if l.startswith("| linear_probe | 5 | pretrained |"))
    assert "| 2 | 0.6100 ± 0.0071 | 0.5600 ± 0.0071 |" in line
    assert sum(l.startswith("| full | 5 | scratch |") for l in text.splitlines()) == 1
    assert (tmp_path / "study.png").stat().st_size > 10_000
    assert numeric_key(recipe.study) == "data.samples_per_class"


def test_the_picture_draws_grid_values_in_any_script(tmp_path: Path) -> None:
    recipe = recipe_from_dict(base(grid={"training.optim": ["adamw_torch", "sgd"], "data.samples_per_class": [1, 2]}))
    rows = _rows(recipe)
    for row in rows:
        row["training.optim"] = "猫" if row["training.optim"] == "sgd" else row["training.optim"]
        row["cell"] = f"optim={row['training.optim']}, samples_per_class={row['data.samples_per_class']}"
    write(tmp_path, recipe, rows, len(rows))
    assert (tmp_path / "study.png").is_file() and "猫" in (tmp_path / "study.csv").read_text(encoding="utf-8")
    assert markdown(recipe, rows[:1], len(rows)).count("\n| ") == 2  # header and the one finished cell
