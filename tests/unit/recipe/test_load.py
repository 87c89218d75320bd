"""load.py: recipe files (the shipped ones too) read with their --set overrides, every problem
reported at once, without importing torch or transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from finetune.recipe import RecipeError, apply_overrides, load_recipe, parse_override, recipe_from_dict
from finetune.training.arguments import training_arguments
from tests.helpers import ROOT
from tests.helpers.recipes import SHIPPED, base, three_mistakes


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.description and recipe.expected is not None and recipe.expected.value > 0
    assert recipe.expected.metric in recipe.metrics
    # The training block must also make consistent TrainingArguments.
    args = training_arguments(recipe, str(path))
    assert args.batch_eval_metrics and not args.remove_unused_columns


def test_shipped_recipe_set() -> None:
    names = {p.name for p in SHIPPED}
    assert {"quickstart.json", "cifar10_vit.json", "cifar10_resnet18_linear_probe.json"} <= names


def test_cifar10_recipes_report_on_official_test_split() -> None:
    vit = load_recipe(ROOT / "recipes" / "cifar10_vit.json")
    assert vit.model.name_or_path == "google/vit-base-patch16-224-in21k"
    assert vit.data.dataset == "uoft-cs/cifar10" and vit.data.eval_split == "test"
    assert vit.model.strategy == "full" and 0.98 <= vit.expected.value <= 0.99
    probe = load_recipe(ROOT / "recipes" / "cifar10_resnet18_linear_probe.json")
    assert probe.model.name_or_path == "microsoft/resnet-18" and probe.model.strategy == "linear_probe"
    t = probe.training
    assert (t["optim"], t["optim_args"], t["learning_rate"], t["per_device_train_batch_size"], t["num_train_epochs"]) == (
        "sgd", "momentum=0.9", 0.001, 64, 10
    )
    assert probe.data.image_size == 224 and "0.5" in probe.description


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(three_mistakes(), "r.json")
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(line.startswith("r.json: ") for line in lines)
    for needle in ("'model.strategy' must be one of", "did you mean 'validation_fraction'", "'output_dir' is required"):
        assert sum(needle in line for line in lines) == 1, (needle, lines)


def test_parse_override_reads_json_else_string() -> None:
    assert parse_override("training.learning_rate=3e-4") == (["training", "learning_rate"], 3e-4)
    assert parse_override("data.max_train_samples=500") == (["data", "max_train_samples"], 500)
    assert parse_override("output_dir=/tmp/x") == (["output_dir"], "/tmp/x")
    assert parse_override("data.eval_split=null") == (["data", "eval_split"], None)
    assert parse_override("data.augment.crop_scale=[0.5, 1]") == (["data", "augment", "crop_scale"], [0.5, 1])
    assert parse_override("model.name_or_path=a=b") == (["model", "name_or_path"], "a=b")
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_override("training.learning_rate")


def test_overrides_apply_in_order_without_touching_the_input() -> None:
    raw = base()
    out = apply_overrides(raw, ["training.seed=1", "training.seed=2", "data.image_size=64"], "r.json")
    assert out["training"]["seed"] == 2 and out["data"]["image_size"] == 64
    assert "training" not in raw
    with pytest.raises(RecipeError, match="not an object"):
        apply_overrides(raw, ["output_dir.x=1"], "r.json")


def test_load_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"description": "x",}')
    with pytest.raises(RecipeError, match=r"bad.json: invalid JSON at line 1"):
        load_recipe(bad)


def test_loading_a_recipe_imports_neither_torch_nor_transformers() -> None:
    # `finetune validate` and a bad recipe's error must not pay torch's seconds of import.
    code = (
        "import sys; from finetune.recipe import load_recipe; load_recipe(sys.argv[1]); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(ROOT / "recipes" / "quickstart.json")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
