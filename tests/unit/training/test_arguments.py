"""TrainingArguments from a recipe: machine-dependent defaults (precision) and early stopping."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import EarlyStoppingCallback

from finetune.recipe import RecipeError, recipe_from_dict
from finetune.training.arguments import callbacks, device_defaults, precision, training_arguments
from tests.helpers.cli import run_cli


def recipe(training: dict | None = None, **data) -> object:
    return recipe_from_dict({
        "description": "d", "model": {"name_or_path": "some/model"}, "data": {"dataset": "x", **data},
        "output_dir": "out", "training": training or {},
    })


def _gpu(monkeypatch, capability: tuple[int, int], bf16: bool) -> None:
    """Pretend to run on a CUDA GPU of this compute capability."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)


def test_cpu_runs_in_fp32(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    defaults = device_defaults({})
    assert defaults["use_cpu"] and not defaults["tf32"] and defaults["dataloader_num_workers"] == 0
    assert "bf16" not in defaults and "fp16" not in defaults
    args = training_arguments(recipe({"use_cpu": True}))
    assert not args.bf16 and not args.fp16 and precision(args) == "fp32"


def test_ampere_gpu_defaults_to_bf16_and_tf32(monkeypatch) -> None:
    _gpu(monkeypatch, (8, 0), bf16=True)
    defaults = device_defaults({})
    assert defaults["bf16"] and not defaults["fp16"] and defaults["tf32"] and not defaults["use_cpu"]
    assert precision(SimpleNamespace(**defaults)) == "bf16 mixed precision, TF32 matmuls"


def test_gpu_without_bf16_defaults_to_fp16(monkeypatch) -> None:
    """A T4 (Colab) emulates bf16 slowly: fp16 with the Trainer's grad scaler instead."""
    _gpu(monkeypatch, (7, 5), bf16=False)
    defaults = device_defaults({})
    assert defaults["fp16"] and not defaults["bf16"] and not defaults["tf32"]
    # TrainingArguments sets up the (pretend) GPU when built, so the log line is checked alone.
    assert precision(SimpleNamespace(**defaults)) == "fp16 mixed precision (the Trainer's grad scaler)"


@pytest.mark.parametrize("user", [{"bf16": True}, {"fp16": False}, {"use_cpu": True}])
def test_the_recipe_decides_precision_when_it_names_it(user: dict, monkeypatch) -> None:
    _gpu(monkeypatch, (7, 5), bf16=False)
    defaults = device_defaults(user)
    assert "fp16" not in defaults and "bf16" not in defaults


# ------------------------------------------------------------------ early stopping


def test_early_stopping_defaults_what_it_needs() -> None:
    r = recipe({"early_stopping_patience": 2, "early_stopping_threshold": 0.01, "use_cpu": True})
    args = training_arguments(r)
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_loss" and not args.greater_is_better
    assert args.eval_strategy == "epoch" and args.restore_callback_states_from_checkpoint
    assert not hasattr(args, "early_stopping_patience")  # finetune's key, not a TrainingArguments field
    (callback,) = callbacks(r)
    assert isinstance(callback, EarlyStoppingCallback)
    assert callback.early_stopping_patience == 2 and callback.early_stopping_threshold == 0.01


def test_early_stopping_keeps_the_users_metric() -> None:
    args = training_arguments(recipe({"early_stopping_patience": 1, "metric_for_best_model": "accuracy", "use_cpu": True}))
    assert args.metric_for_best_model == "accuracy" and args.greater_is_better
    assert callbacks(recipe({"use_cpu": True})) == []


@pytest.mark.parametrize(
    "training, data, message",
    [
        ({"early_stopping_patience": 2}, {"validation_fraction": 0.0}, "data.validation_fraction is 0"),
        ({"early_stopping_patience": 2, "load_best_model_at_end": False}, {}, "needs 'training.load_best_model_at_end' true"),
        ({"early_stopping_patience": 2, "eval_strategy": "no"}, {}, "'training.eval_strategy' is 'no'"),
        ({"early_stopping_patience": 0}, {}, "'training.early_stopping_patience' must be >= 1, got 0"),
        ({"early_stopping_patience": 1, "early_stopping_threshold": -0.1}, {}, "must be >= 0, got -0.1"),
        ({"early_stopping_threshold": 0.1}, {}, "does nothing without 'training.early_stopping_patience'"),
        ({"early_stopping_patience": 1, "metric_for_best_model": "top5_accuracy"}, {}, "which the run does not compute"),
    ],
)
def test_early_stopping_contradictions_are_recipe_errors(training: dict, data: dict, message: str) -> None:
    raw = {
        "description": "d", "model": {"name_or_path": "m"}, "data": {"dataset": "x", **data},
        "output_dir": "o", "training": training, "metrics": ["accuracy"],
    }
    # Found by the recipe's checks (so `finetune validate` reports them without torch) ...
    with pytest.raises(RecipeError, match=message) as err:
        recipe_from_dict(raw, "r.json")
    assert "\n" not in str(err.value) and str(err.value).startswith("r.json: ")
    # ... and by training_arguments, for a recipe changed in code after it was checked.
    r = recipe_from_dict({**raw, "training": {}, "data": {"dataset": "x"}}, "r.json")
    r.training, r.data.validation_fraction = training, data.get("validation_fraction", r.data.validation_fraction)
    with pytest.raises(RecipeError, match=message) as err:
        training_arguments(r, "r.json")
    assert "\n" not in str(err.value) and str(err.value).startswith("r.json: ")


def test_early_stopping_keys_are_type_checked() -> None:
    with pytest.raises(RecipeError, match="'training.early_stopping_patience' must be integer, got \"3\""):
        recipe({"early_stopping_patience": "3"})
    with pytest.raises(RecipeError, match="'training.early_stopping_threshold' must be number"):
        recipe({"early_stopping_patience": 3, "early_stopping_threshold": [0.1]})


def test_validate_reports_early_stopping_without_validation_piece(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({
        "description": "d", "model": {"name_or_path": "m"}, "data": {"dataset": "x", "validation_fraction": 0},
        "output_dir": "o", "training": {"early_stopping_patience": 3},
    }))
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert "early_stopping_patience' stops on the validation piece's scores" in result.stderr
