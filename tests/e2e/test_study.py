"""Studies end to end: shared probe features, finished runs skipped on a rerun, runs from random
initialisation, and the command."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from finetune.recipe import load_recipe
from tests.helpers.cli import run_cli, write_recipe
from tests.helpers.images import make_image_folder


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
