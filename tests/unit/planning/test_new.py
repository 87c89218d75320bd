"""finetune new on generated folders: what it finds, what it chooses and why, the recipe it writes (timing faked: no steps run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from finetune.cli import main as cli
from finetune.planning import new as planning
from finetune.planning.scan import scan
from finetune.planning.timing import Timing
from finetune.recipe import load_recipe
from tests.helpers.images import CLASSES, class_image


def fake_measure(model_cfg, num_labels, sizes, batch, multi_label=False) -> Timing:
    return Timing(device="CPU (fake)", train={s: 0.01 for s in sizes}, infer={s: 0.003 for s in sizes}, load=0.1,
                  convolutional=False, blocks=2, unfreeze_last_n=1)


def folder(root: Path, counts: list[int], test: int | None = 4, seed: int = 0) -> Path:
    """Class folders with counts[i] training images of CLASSES[i] (and ``test`` of each in test/)."""
    rng = np.random.default_rng(seed)
    for split, per in (("train", counts), ("test", [test] * len(counts) if test else [])):
        for name, n in zip(CLASSES, per):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                class_image(name, rng).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture
def fake_timing(monkeypatch):
    monkeypatch.setattr("finetune.planning.timing.measure", fake_measure)


def test_the_scan_counts_classes_splits_sizes_and_unreadable_files(tmp_path):
    root = folder(tmp_path / "d", [5, 3, 2])
    (root / "train" / "red" / "broken.png").write_bytes(b"not a png")
    (root / "train" / "red" / ".DS_Store").write_bytes(b"junk")
    found = scan(str(root))
    assert found.splits == {"train": 11, "test": 12}
    assert found.eval_split == "test"
    assert dict(zip(found.class_names, found.counts)) == {"blue": 2, "green": 3, "red": 6}
    assert found.headers_read == 11 and len(found.bad) == 1 and "broken.png" in found.bad[0][0]
    assert found.junk_files == 1
    assert found.sizes[0] == (24, 24) and found.median_side == 24
    assert found.imbalance == 3.0


def test_few_images_per_class_give_a_linear_probe_with_the_lbfgs_head(tmp_path, tiny_vit, fake_timing):
    root = folder(tmp_path / "d", [10, 10, 10])
    found, _, plan = planning.make_plan(str(root), model=str(tiny_vit), minutes=2)
    recipe = plan.recipe
    assert recipe["model"]["strategy"] == "linear_probe" and recipe["model"]["probe_solver"] == "lbfgs"
    assert recipe["data"]["eval_split"] == "test" and recipe["data"]["validation_fraction"] == 0.1
    assert any("linear probe" in note and "k-shot" in note for note in recipe["notes"])
    assert "sampler" not in recipe["data"]


def test_an_imbalanced_middle_sized_set_gets_a_partial_fine_tune_and_the_balanced_sampler(tmp_path, tiny_vit, fake_timing):
    root = folder(tmp_path / "d", [240, 60, 50], test=2)
    _, _, plan = planning.make_plan(str(root), model=str(tiny_vit), minutes=30)
    recipe = plan.recipe
    assert recipe["model"]["strategy"] == "partial"
    assert recipe["data"]["sampler"] == "balanced"
    assert any("imbalanced 4.8×" in note for note in recipe["notes"])
    assert recipe["training"]["num_train_epochs"] >= 5


def test_without_a_test_split_the_held_out_piece_is_reported_and_said_so(tmp_path, tiny_vit, fake_timing):
    root = folder(tmp_path / "d", [10, 10, 10], test=None)
    _, _, plan = planning.make_plan(str(root), model=str(tiny_vit), minutes=2)
    assert plan.recipe["data"]["eval_split"] is None
    assert plan.recipe["data"]["validation_fraction"] == planning.VALIDATION_WITHOUT
    assert any("no held-out split" in note for note in plan.recipe["notes"])


def test_the_command_writes_a_valid_recipe_prints_why_and_how_to_run_it(tmp_path, tiny_vit, fake_timing, capsys):
    root = folder(tmp_path / "d", [10, 10, 10])
    out = tmp_path / "recipe.json"
    assert cli.main(["new", str(root), "--model", str(tiny_vit), "--minutes", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    recipe = load_recipe(out)  # the recipe's own checks pass
    assert recipe.model.strategy == "linear_probe" and recipe.notes
    assert json.loads(out.read_text())["notes"] == recipe.notes
    assert "labels: single-label, 3 classes" in printed
    assert f"accelerate launch finetune/run.py --recipe {out}" in printed
    assert "planned: about" in printed


def test_an_existing_recipe_is_kept_unless_forced(tmp_path, tiny_vit, fake_timing, capsys):
    root = folder(tmp_path / "d", [10, 10, 10])
    out = tmp_path / "recipe.json"
    out.write_text("mine")
    assert cli.main(["new", str(root), "--model", str(tiny_vit), "--out", str(out)]) == 2
    assert out.read_text() == "mine"
    assert "--force" in capsys.readouterr().err
    assert cli.main(["new", str(root), "--model", str(tiny_vit), "--out", str(out), "--force"]) == 0
    assert load_recipe(out).notes


def test_search_writes_a_search_block_around_the_choices(tmp_path, tiny_vit, fake_timing, capsys):
    root = folder(tmp_path / "d", [60, 60, 60], test=2)
    out = tmp_path / "recipe.json"
    assert cli.main(["new", str(root), "--model", str(tiny_vit), "--out", str(out), "--search", "8"]) == 0
    recipe = json.loads(out.read_text())
    lr = recipe["training"]["learning_rate"]
    assert recipe["search"]["training.learning_rate"] == {"log_uniform": [lr / 3, lr * 3]}
    assert "finetune search" in capsys.readouterr().out and "--trials 8" in out.read_text() + " --trials 8"
    load_recipe(out)


def test_a_missing_folder_is_one_line_naming_it(tmp_path, capsys):
    assert cli.main(["new", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]
    assert not (tmp_path / "r.json").exists()


def test_a_multi_label_csv_is_found_and_written_as_multi_label(tmp_path, tiny_vit, fake_timing):
    from tests.helpers.multi_label import write_multi_label_set

    found_set = write_multi_label_set(tmp_path / "set", kind="csv", n_train=40, n_test=8)
    found = scan(found_set.dataset)
    assert found.multi_label and found.class_names == found_set.classes
    assert found.unlabelled == sum(1 for labels in found_set.labels["train"] if not labels)
    assert found.labels_per_image > 1
    _, _, plan = planning.make_plan(found_set.dataset, model=str(tiny_vit), minutes=2)
    assert plan.recipe["data"]["task"] == "multi_label"
    assert "label_smoothing_factor" not in plan.recipe["training"]
    recipe = load_recipe_dict(plan.recipe)
    assert recipe.data.task == "multi_label"


def load_recipe_dict(raw: dict):
    from finetune.recipe import recipe_from_dict

    return recipe_from_dict(raw)


def test_too_few_images_to_hold_one_out(tmp_path, tiny_vit, fake_timing):
    with_test = folder(tmp_path / "a", [1, 1, 1])
    _, _, plan = planning.make_plan(str(with_test), model=str(tiny_vit), minutes=2)
    assert plan.recipe["data"]["validation_fraction"] == 0.0
    assert plan.recipe["model"]["probe_l2"] == [planning.PROBE_L2_WITHOUT_EVAL_SPLIT]
    load_recipe_dict(plan.recipe)
    without = folder(tmp_path / "b", [1, 1, 1], test=None)
    from finetune.data import DataError

    with pytest.raises(DataError, match="too few to hold any out"):
        planning.make_plan(str(without), model=str(tiny_vit), minutes=2)
