"""study.py and study_report.py: the grid × seeds plan, the runs (skipped when finished), shared probe features and the report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetune.recipe import RecipeError, load_recipe, recipe_from_dict
from finetune.sweeps.study import plan, settings
from finetune.sweeps.study_report import markdown, numeric_key, write
from tests.helpers import ROOT
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.images import make_image_folder

HEAVY = ("torch", "transformers", "datasets", "matplotlib", "timm", "huggingface_hub")


def base(**study) -> dict:
    return {
        "description": "d",
        "model": {"name_or_path": "some/model", "strategy": "linear_probe"},
        "data": {"dataset": "some/data"},
        "training": {"seed": 10},
        "output_dir": "out",
        "study": study,
    }


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


def _args(recipe: Path, *argv: str) -> argparse.Namespace:
    from finetune.cli.main import build_parser

    return build_parser().parse_args(["study", str(recipe), *argv])


def test_command_line_options_override_the_study_block_key_by_key(tmp_path: Path) -> None:
    from finetune.cli.study import study_recipe

    path = tmp_path / "r.json"
    path.write_text(json.dumps(base(grid={"model.strategy": ["linear_probe", "full"], "data.samples_per_class": [5]}, seeds=3)))
    recipe = study_recipe(_args(path, "--grid", "data.samples_per_class=1,10", "--seeds", "2", "--scratch"))
    assert recipe.study.grid == {"model.strategy": ["linear_probe", "full"], "data.samples_per_class": [1, 10]}
    assert recipe.study.seeds == 2 and recipe.study.scratch
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({k: v for k, v in base().items() if k != "study"}))
    recipe = study_recipe(_args(plain, "--grid", "training.learning_rate=1e-3,1e-2", "--grid", "model.strategy=full"))
    assert recipe.study.grid == {"training.learning_rate": [1e-3, 1e-2], "model.strategy": ["full"]}
    assert recipe.study.seeds == 1 and not recipe.study.scratch
    with pytest.raises(RecipeError, match="expected KEY=V1,V2"):
        study_recipe(_args(plain, "--grid", "model.strategy"))
    with pytest.raises(RecipeError, match="did you mean 'learning_rate'"):
        study_recipe(_args(plain, "--grid", "training.learning_rat=1,2"))


def test_study_help_and_a_bad_grid_import_no_heavy_library(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**base(grid={"model.strategy": ["ful"]}), "output_dir": str(tmp_path / "o")}))
    probe = (
        "import json, sys\nfrom finetune.run import main\ncodes = []\n"
        "for argv in ([['study', '--help'], ['study', sys.argv[1]]]):\n"
        "    try:\n        codes.append(main(argv))\n    except SystemExit as e:\n        codes.append(e.code)\n"
        f"print(json.dumps({{'codes': codes, 'loaded': [m for m in {list(HEAVY)!r} if m in sys.modules]}}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", probe, str(bad)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 2], "loaded": []}, result.stderr[-2000:]
    assert "'study.grid.model.strategy' value \"ful\"" in result.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- the report


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


# ---------------------------------------------------------------------- running a study


def _study_recipe(tmp_path: Path, model: Path, **study) -> Path:
    images = make_image_folder(tmp_path / "images", per_class=8)
    return write_recipe(
        tmp_path / "r.json", model, images, tmp_path / "out",
        model={"name_or_path": str(model), "strategy": "linear_probe"},
        data={"dataset": str(images), "validation_fraction": 0.0, "augment": {"crop_scale": None}},
        # Not seed 0: the tiny model's "pretrained" weights are a random draw with seed 0.
        training={"max_steps": 3, "per_device_train_batch_size": 4, "use_cpu": True, "disable_tqdm": True, "seed": 3},
        study=study,
    )


@pytest.mark.e2e
def test_a_probe_study_shares_features_and_a_rerun_skips_finished_runs(tmp_path: Path, tiny_vit: Path, caplog) -> None:
    from finetune.sweeps.study import run_study

    path = _study_recipe(tmp_path, tiny_vit, grid={"data.samples_per_class": [2, 4]}, seeds=2)
    recipe = load_recipe(path)
    caplog.set_level(logging.INFO, logger="finetune")
    rows = run_study(recipe, str(path))
    assert len(rows) == 4 and all(0 <= r["eval_accuracy"] <= 1 and r["eval_num_images"] == 12 for r in rows)
    assert [r["train_images"] for r in rows] == [6, 6, 12, 12]  # k per class × 3 classes
    passes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("feature cache:")]
    # The backbone runs over each run's own k-shot draw, and over the eval split once: the
    # three later runs take its features from the first.
    reused = [m for m in passes if "from an earlier run" in m]
    assert len(reused) == 3 and all(m.startswith("feature cache: 12 images'") for m in reused)
    assert len(passes) == 4 + 1 + 3
    # The two seeds drew different images.
    draws = [json.loads((Path(r["folder"]) / "recipe.json").read_text())["training"]["data_seed"] for r in rows]
    assert draws == [3, 4, 3, 4]
    out = tmp_path / "out"
    assert {"study.csv", "study.md", "study.png", "study.json"} <= {p.name for p in out.iterdir()}

    # A run cut off before it finished (no results yet) runs again; the others are skipped.
    cut = Path(rows[3]["folder"])
    (cut / "eval_results.json").unlink()
    (cut / "README.md").unlink()
    stamps = {r["folder"]: (Path(r["folder"]) / "eval_results.json").stat().st_mtime_ns for r in rows[:3]}
    again = run_study(recipe, str(path))
    assert [r["folder"] for r in again] == [r["folder"] for r in rows]
    assert {f: (Path(f) / "eval_results.json").stat().st_mtime_ns for f in stamps} == stamps
    assert (cut / "eval_results.json").is_file()
    assert again[3]["eval_accuracy"] == pytest.approx(rows[3]["eval_accuracy"])  # same recipe, same seed


@pytest.mark.e2e
def test_scratch_runs_the_architecture_from_random_initialisation(tmp_path: Path, tiny_vit: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from finetune.sweeps.study import run_study

    path = _study_recipe(tmp_path, tiny_vit, grid={"model.strategy": ["full"]}, seeds=1, scratch=True)
    rows = run_study(load_recipe(path), str(path))
    assert [r["init"] for r in rows] == ["pretrained", "scratch"]
    pretrained = load_file(tiny_vit / "model.safetensors")
    for row in rows:
        weights = load_file(Path(row["folder"]) / "model.safetensors")
        name = "vit.embeddings.patch_embeddings.projection.weight"
        # Three steps move a pretrained weight a little; a scratch one is another draw entirely.
        distance = float((weights[name] - pretrained[name]).abs().max())
        assert (distance > 0.05) == (row["init"] == "scratch"), (row["init"], distance)
        card = (Path(row["folder"]) / "README.md").read_text()
        assert ("trained from random" in card) == (row["init"] == "scratch")
    text = (tmp_path / "out" / "study.md").read_text()
    assert "| full | pretrained | 1 |" in text and "| full | scratch | 1 |" in text
    assert torch.is_tensor(pretrained[name])


@pytest.mark.e2e
def test_the_study_command_runs_end_to_end(tmp_path: Path, tiny_vit: Path) -> None:
    path = _study_recipe(tmp_path, tiny_vit)
    result = run_cli("study", str(path), "--grid", "data.samples_per_class=2,3", "--seeds", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "out" / "study.md").read_text()
    assert "4 of 4 run(s) finished" in text and "| 2 | 2 |" in text and "| 3 | 2 |" in text
    again = run_cli("study", str(path), "--grid", "data.samples_per_class=2,3", "--seeds", "2")
    assert again.returncode == 0 and "4 already finished" in again.stderr
