"""checks.py: the checks between a recipe's keys, the regularising keys' (mixup/CutMix, class
imbalance, the EMA) among them, one clear line per mistake before anything loads."""

from __future__ import annotations

import pytest

from finetune.recipe import RecipeError, recipe_from_dict
from finetune.training.arguments import training_arguments
from finetune.utils.errors import UserError


def base(**sections) -> dict:
    raw = {"description": "d", "model": {"name_or_path": "some/model"}, "data": {"dataset": "some/data"}, "output_dir": "out"}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return raw


def test_defaults_turn_every_regulariser_off() -> None:
    recipe = recipe_from_dict(base())
    a = recipe.data.augment
    assert (a.mixup_alpha, a.cutmix_alpha, a.mix_prob, a.mixes) == (0.0, 0.0, 1.0, False)
    assert recipe.data.class_weights is None and recipe.data.sampler is None
    assert "ema_decay" not in recipe.training


def test_all_of_them_together_validate_and_stay_out_of_training_arguments() -> None:
    recipe = recipe_from_dict(base(
        data={"sampler": "balanced", "augment": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_prob": 0.5}},
        training={"ema_decay": 0.999, "ema_warmup": False, "label_smoothing_factor": 0.1, "use_cpu": True},
    ))
    assert recipe.data.augment.mixes
    args = training_arguments(recipe)  # ema_* are finetune's keys, not TrainingArguments fields
    assert args.label_smoothing_factor == 0.1 and not hasattr(args, "ema_decay")


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"data": {"augment": {"mixup_alpha": -0.1}}}, "'data.augment.mixup_alpha' must be >= 0 (0 turns it off), got -0.1"),
        ({"data": {"augment": {"cutmix_alpha": -1}}}, "'data.augment.cutmix_alpha' must be >= 0"),
        ({"data": {"augment": {"mixup_alpha": 0.2, "mix_prob": 1.5}}}, "'data.augment.mix_prob' is a probability"),
        ({"data": {"augment": {"mix_prob": 0.5}}}, "'data.augment.mix_prob' does nothing without"),
        ({"data": {"class_weights": "inverse"}}, "'data.class_weights' must be one of 'balanced' or null, got \"inverse\""),
        ({"data": {"sampler": "weighted"}}, "'data.sampler' must be one of 'balanced' or null"),
        ({"data": {"class_weights": "balanced", "sampler": "balanced"}}, "set only one of them"),
        ({"data": {"sampler": "balanced"}, "training": {"train_sampling_strategy": "sequential"}},
         "'training.train_sampling_strategy' cannot be set too"),
        ({"training": {"ema_decay": 1.0}}, "'training.ema_decay' must be in (0, 1), e.g. 0.999 (null: off), got 1.0"),
        ({"training": {"ema_decay": 0}}, "'training.ema_decay' must be in (0, 1)"),
        ({"training": {"ema_decay": "fast"}}, "'training.ema_decay' must be number or null"),
        ({"training": {"ema_warmup": True}}, "'training.ema_warmup' does nothing without 'training.ema_decay'"),
        ({"training": {"ema_decay": 0.99, "fsdp": "full_shard"}}, "FSDP and DeepSpeed shard"),
        ({"model": {"strategy": "lora"}, "training": {"ema_decay": 0.99}}, "not available with 'model.strategy' 'lora'"),
        ({"model": {"strategy": "linear_probe"}, "data": {"class_weights": "balanced", "augment": {"mixup_alpha": 0.2}}},
         "'data.augment.mixup_alpha', 'data.class_weights' act(s) on the training of the whole model"),
        ({"model": {"strategy": "linear_probe"}, "training": {"ema_decay": 0.9}}, "set model.feature_cache false"),
    ],
)
def test_mistakes_are_one_line_each(patch: dict, needle: str) -> None:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(base(**patch), "r.json")
    lines = str(err.value).splitlines()
    assert any(needle in line and line.startswith("r.json: ") for line in lines), lines
    assert isinstance(err.value, UserError)  # exit code 2, before anything loads


def test_the_per_step_linear_probe_takes_them() -> None:
    """Without the feature cache the backbone runs every step through FinetuneTrainer."""
    recipe_from_dict(base(model={"strategy": "linear_probe", "feature_cache": False},
                          data={"class_weights": "balanced", "augment": {"cutmix_alpha": 1.0}}, training={"ema_decay": 0.9}))


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


def test_trust_remote_code_with_pinned_commit_is_accepted() -> None:
    recipe = recipe_from_dict({**base(), "model": {"name_or_path": "m", "trust_remote_code": True, "revision": "a" * 40}})
    assert recipe.model.trust_remote_code


def test_the_evaluation_block_defaults() -> None:
    e = recipe_from_dict(base()).evaluation
    assert (e.ci_level, e.bootstrap_resamples, e.bootstrap_seed, e.calibrate, e.abstain_accuracy) == (0.95, 1000, 0, None, 0.95)


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"evaluation": {"ci_level": 95}}, "'evaluation.ci_level' must be in (0, 1), e.g. 0.95, got 95"),
        ({"evaluation": {"bootstrap_resamples": 20}}, "'evaluation.bootstrap_resamples' must be >= 100"),
        ({"evaluation": {"abstain_accuracy": 0}}, "'evaluation.abstain_accuracy' must be in (0, 1]"),
        ({"evaluation": {"calibrate": "yes"}}, "'evaluation.calibrate' must be true/false or null"),
        ({"evaluation": {"calibrate": True}, "data": {"validation_fraction": 0}},
         "'evaluation.calibrate' true fits the temperature on the validation piece, which 'data.validation_fraction' 0"),
        ({"evaluation": {"ece_bins": 10}}, "unknown key 'evaluation.ece_bins'"),
    ],
)
def test_evaluation_block_mistakes(patch: dict, needle: str) -> None:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(base(**patch))
    assert needle in str(err.value)


def test_calibration_may_be_on_without_a_validation_piece_only_by_default() -> None:
    recipe = recipe_from_dict(base(data={"validation_fraction": 0}))
    assert recipe.evaluation.calibrate is None  # off at run time, with a log line


def test_evaluation_tta_choices_and_the_cached_probe() -> None:
    from finetune.recipe import RecipeError, recipe_from_dict
    from tests.helpers.recipes import base

    assert recipe_from_dict(base()).evaluation.tta == "none"
    assert recipe_from_dict({**base(), "evaluation": {"tta": "hflip+crops"}}).evaluation.tta == "hflip+crops"
    with pytest.raises(RecipeError, match=r"'evaluation.tta' must be one of 'none', 'hflip', 'hflip\+crops', got \"vflip\""):
        recipe_from_dict({**base(), "evaluation": {"tta": "vflip"}})
    probe = {**base(), "model": {"name_or_path": "m", "strategy": "linear_probe"}, "evaluation": {"tta": "hflip"}}
    with pytest.raises(RecipeError, match=r"'evaluation.tta' 'hflip' scores every view with the whole model.*finetune eval OUTPUT_DIR --tta hflip"):
        recipe_from_dict(probe)
    probe["model"]["feature_cache"] = False  # the backbone runs every step: the views can be scored
    recipe_from_dict(probe)


def test_a_search_cannot_vary_the_views() -> None:
    from finetune.recipe import RecipeError, recipe_from_dict
    from tests.helpers.recipes import base

    with pytest.raises(RecipeError, match="'search' key 'evaluation.tta' cannot be searched: trials are scored"):
        recipe_from_dict({**base(), "search": {"evaluation.tta": {"choices": ["none", "hflip"]}}})
