"""TrainingArguments from a recipe: finetune's defaults, its own ``training`` keys and the checks between them."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import EarlyStoppingCallback, TrainerCallback, TrainingArguments

from finetune.recipe import FINETUNE_TRAINING_KEYS, Recipe, RecipeError
from finetune.recipe import training_block as training_fields
from finetune.utils.devices import has_accelerator
from finetune.utils.errors import first_line


def data_seed(recipe: Recipe) -> int:
    """The seed of every split and subset: training.data_seed, else training.seed, else 42."""
    t = recipe.training
    return int(t.get("data_seed") if t.get("data_seed") is not None else t.get("seed", 42))


def _bf16_native() -> bool:
    # Not is_bf16_supported()'s default: it also says yes where bf16 is only emulated (a T4,
    # compute capability 7.5), which is slower than fp32 there.
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the argument
        return torch.cuda.get_device_capability()[0] >= 8


def device_defaults(user: dict[str, Any]) -> dict[str, Any]:
    """The defaults that depend on the machine: device, mixed precision, TF32 and loader workers.

    Mixed precision on CUDA: bf16 where the GPU has it natively (Ampere and newer), else fp16
    (a T4 or V100; the Trainer then scales the loss with its grad scaler). A recipe that sets
    ``bf16``, ``fp16`` or ``use_cpu`` decides the precision itself.
    """
    on_gpu = torch.cuda.is_available() and not user.get("use_cpu", False)
    accelerator = on_gpu or has_accelerator()
    defaults: dict[str, Any] = {
        # Without an accelerator, say so: under a multi-process launcher accelerate then
        # joins the ranks with gloo instead of running N independent single-process jobs.
        "use_cpu": not accelerator,
        "tf32": bool(on_gpu and torch.cuda.get_device_capability()[0] >= 8),
        # Workers only read uint8 rows of the decoded cache; on CPU they would compete
        # with the model for the same cores.
        "dataloader_num_workers": min(4, (os.cpu_count() or 2) // 2) if on_gpu else 0,
    }
    if on_gpu and "bf16" not in user and "fp16" not in user:
        bf16 = _bf16_native()
        defaults |= {"bf16": bf16, "fp16": not bf16}
    return defaults


def precision(args: TrainingArguments) -> str:
    """What the run computes in, for the log."""
    mode = (
        "bf16 mixed precision" if args.bf16
        else "fp16 mixed precision (the Trainer's grad scaler)" if args.fp16
        else "fp32"
    )
    return mode + (", TF32 matmuls" if args.tf32 else "")


def _early_stopping(recipe: Recipe, defaults: dict[str, Any], source: str) -> None:
    """Default what early stopping needs. The recipe's checks found any contradiction already;
    they run again here for a Recipe built or changed in code."""
    problems = training_fields.check_early_stopping(
        recipe.training, recipe.metrics, recipe.data.validation_fraction > 0, source
    ) + training_fields.check_best_metric(recipe.training, recipe.metrics, source)
    if problems:
        raise RecipeError("\n".join(problems))
    if recipe.training.get("early_stopping_patience") is not None:
        defaults.update(training_fields.early_stopping_defaults())


def callbacks(recipe: Recipe) -> list[TrainerCallback]:
    """The Trainer callbacks that finetune's own ``training`` keys ask for."""
    t = recipe.training
    if t.get("early_stopping_patience") is None:
        return []
    return [EarlyStoppingCallback(t["early_stopping_patience"], float(t.get("early_stopping_threshold") or 0.0))]


def training_arguments(recipe: Recipe, source: str = "recipe") -> TrainingArguments:
    """TrainingArguments from the recipe's ``training`` block over finetune's defaults."""
    has_validation = recipe.data.validation_fraction > 0
    # finetune's own keys (early stopping) are not TrainingArguments fields.
    user = {k: v for k, v in recipe.training.items() if k not in FINETUNE_TRAINING_KEYS}
    defaults: dict[str, Any] = {
        **device_defaults(user),
        **training_fields.strategy_defaults(has_validation),
        "save_total_limit": 2,
        "report_to": "none",
        "seed": 42,
    }
    if "per_device_train_batch_size" in user and "per_device_eval_batch_size" not in user:
        defaults["per_device_eval_batch_size"] = user["per_device_train_batch_size"]
    _early_stopping(recipe, defaults, source)
    forced = {
        "output_dir": recipe.output_dir,
        # Our columns are exactly the model's inputs; nothing may be dropped.
        "remove_unused_columns": False,
        "label_names": ["labels"],
        # Accumulate metrics batch by batch instead of keeping every eval logit.
        "batch_eval_metrics": True,
    }
    try:
        return TrainingArguments(**{**defaults, **user, **forced})
    except (ValueError, TypeError) as err:
        first = first_line(err)
        raise RecipeError(f"{source}: 'training' is inconsistent: {first}") from None
