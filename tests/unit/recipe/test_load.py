"""Recipes: the schema, overrides, and one-line errors before anything is loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.recipe import RecipeError, apply_overrides, load_recipe, parse_override, recipe_from_dict
from finetune.training.arguments import training_arguments
from tests.helpers import ROOT
from tests.helpers.cli import run_cli
from tests.helpers.recipes import base

SHIPPED = sorted((ROOT / "recipes").glob("*.json"))


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


def test_defaults_are_filled_in() -> None:
    recipe = recipe_from_dict(base())
    assert recipe.model.strategy == "full"
    assert recipe.data.validation_fraction == 0.1 and recipe.data.eval_split == "test"
    assert recipe.to_dict()["data"]["augment"] == {
        "crop_scale": [0.5, 1.0], "hflip": True, "preset": None, "random_erasing": 0.0,
        "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "mix_prob": 1.0,
    }


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"training": {"learnig_rate": 1e-3}}, "did you mean 'learning_rate'"),
        ({"modle": {}}, "did you mean 'model'"),
        ({"data": {"dataset": "x", "validaton_fraction": 0.2}}, "did you mean 'validation_fraction'"),
        ({"data": {"dataset": "x", "augment": {"hflp": False}}}, "did you mean 'hflip'"),
    ],
)
def test_unknown_keys_suggest_the_right_one(patch: dict, needle: str) -> None:
    raw = {**base(), **patch}
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(raw, "r.json")
    message = str(err.value)
    assert needle in message and message.startswith("r.json: ") and "\n" not in message


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"training": {"learning_rate": "fast"}}, "training.learning_rate"),
        ({"training": {"num_train_epochs": True}}, "training.num_train_epochs"),
        ({"training": {"eval_strategy": "sometimes"}}, "training.eval_strategy"),
        ({"model": {"name_or_path": "m", "strategy": "half"}}, "model.strategy"),
        ({"data": {"dataset": "x", "augment": {"preset": "randaugment"}}}, "data.augment.preset"),
        ({"data": {"dataset": "x", "max_train_samples": 1.5}}, "data.max_train_samples"),
        ({"metrics": "accuracy"}, "metrics"),
    ],
)
def test_wrong_types_name_the_key(patch: dict, key: str) -> None:
    with pytest.raises(RecipeError, match=f"'{key}' must be"):
        recipe_from_dict({**base(), **patch}, "r.json")


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"output_dir": ""}, "'output_dir' is required"),
        ({"training": {"output_dir": "x"}}, "use the top-level 'output_dir'"),
        ({"model": {"name_or_path": "m", "trust_remote_code": True}}, "40-character commit"),
        ({"metrics": ["acuracy"]}, "did you mean 'accuracy'"),
        ({"data": {"dataset": "x", "eval_split": None, "validation_fraction": 0}}, "validation_fraction' must be > 0"),
        ({"data": {"dataset": "x", "samples_per_class": 5, "max_train_samples": 10}}, "only one of"),
        ({"hub": {"push": True}}, "hub.repo_id"),
        ({"expected": {"metric": "top5_accuracy", "value": 1}, "metrics": ["accuracy"]}, "expected.metric"),
        ({"model": {"name_or_path": "m", "probe_solver": "lbfgs"}}, "needs 'model.strategy' 'linear_probe'"),
        (
            {"model": {"name_or_path": "m", "strategy": "linear_probe", "feature_cache": False, "probe_solver": "lbfgs"}},
            "'model.feature_cache' true",
        ),
        ({"model": {"name_or_path": "m", "strategy": "linear_probe", "probe_solver": "lbfgs", "probe_l2": [-1.0]}}, ">= 0"),
        (
            {"model": {"name_or_path": "m", "strategy": "linear_probe", "probe_solver": "lbfgs"},
             "data": {"dataset": "x", "validation_fraction": 0}},
            "give one value",
        ),
        (
            {"model": {"name_or_path": "m", "strategy": "linear_probe", "probe_solver": "lbfgs"},
             "data": {"dataset": "x", "eval_split": None}},
            "the reported split must not pick them",
        ),
        ({"model": {"name_or_path": "m", "strategy": "linear_probe", "probe_solver": "lbfgs", "probe_max_iter": 0}}, ">= 1"),
        ({"model": {"name_or_path": "m", "feature_runtime": "torch"}}, "'model.feature_runtime' chooses"),
        (
            {"model": {"name_or_path": "m", "strategy": "linear_probe", "feature_cache": False, "feature_runtime": "onnxruntime"}},
            "'model.feature_runtime' chooses",
        ),
        ({"model": {"name_or_path": "m", "feature_runtime": "tensorrt"}}, "feature_runtime"),
        ({"data": {"dataset": "x", "augment": {"random_erasing": 1.5}}}, "'data.augment.random_erasing' is a probability"),
    ],
)
def test_checks_between_keys(patch: dict, needle: str) -> None:
    with pytest.raises(RecipeError, match=needle.replace("(", r"\(")):
        recipe_from_dict({**base(), **patch}, "r.json")


def _three_mistakes() -> dict:
    """A misspelt key, a wrong value and a missing required key, in different sections."""
    raw = {**base(), "model": {"name_or_path": "m", "strategy": "half"}, "data": {"dataset": "x", "validaton_fraction": 0.2}}
    del raw["output_dir"]
    return raw


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(_three_mistakes(), "r.json")
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(line.startswith("r.json: ") for line in lines)
    for needle in ("'model.strategy' must be one of", "did you mean 'validation_fraction'", "'output_dir' is required"):
        assert sum(needle in line for line in lines) == 1, (needle, lines)


def test_a_wrongly_typed_section_is_not_also_reported_missing() -> None:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict({**base(), "data": "some/data"}, "r.json")
    assert str(err.value) == "r.json: 'data' must be a JSON object, got 'some/data'"


def test_validate_prints_every_problem(tmp_path: Path, capsys) -> None:
    from finetune.cli.main import main

    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(_three_mistakes()))
    assert main(["validate", str(recipe)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(f"FAIL {recipe}: ") for line in lines)


def test_trust_remote_code_with_pinned_commit_is_accepted() -> None:
    recipe = recipe_from_dict({**base(), "model": {"name_or_path": "m", "trust_remote_code": True, "revision": "a" * 40}})
    assert recipe.model.trust_remote_code


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


def test_inconsistent_training_block_is_a_recipe_error() -> None:
    inconsistent = {"load_best_model_at_end": True, "eval_strategy": "epoch", "save_strategy": "steps", "save_steps": 7}
    # Found by the recipe check, without building TrainingArguments (which imports torch)...
    with pytest.raises(RecipeError, match="'training.load_best_model_at_end' needs .* to match"):
        recipe_from_dict({**base(), "training": inconsistent}, "r.json")
    # ...and by TrainingArguments itself for a recipe changed after validation.
    recipe = recipe_from_dict(base())
    recipe.training.update(inconsistent)
    with pytest.raises(RecipeError, match="'training' is inconsistent"):
        training_arguments(recipe, "r.json")


def test_eval_strategy_without_validation_piece_is_refused() -> None:
    raw = {**base(), "data": {"dataset": "x", "validation_fraction": 0}, "training": {"eval_strategy": "epoch"}}
    with pytest.raises(RecipeError, match="'training.eval_strategy' is 'epoch' but there is no validation piece"):
        recipe_from_dict(raw, "r.json")


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


def test_best_model_metric_must_be_one_the_run_computes() -> None:
    """Without early stopping too: the Trainer would look the metric up only after the first
    evaluation, and stop there with a KeyError."""
    raw = {**base(), "metrics": ["accuracy"], "training": {"metric_for_best_model": "f1", "load_best_model_at_end": True}}
    with pytest.raises(RecipeError, match="'training.metric_for_best_model' is 'f1', which the run does not compute"):
        recipe_from_dict(raw, "r.json")
    for fine in ("accuracy", "eval_accuracy", "loss", "eval_loss"):
        recipe_from_dict({**raw, "training": {"metric_for_best_model": fine}}, "r.json")
