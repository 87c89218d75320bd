"""TrainingArguments from a recipe: finetune's defaults under the recipe's ``training`` block."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import TrainingArguments

from .recipe import Recipe, RecipeError
from .util import first_line


def data_seed(recipe: Recipe) -> int:
    """The seed of every split and subset: training.data_seed, else training.seed, else 42."""
    t = recipe.training
    return int(t.get("data_seed") if t.get("data_seed") is not None else t.get("seed", 42))


def training_arguments(recipe: Recipe, source: str = "recipe") -> TrainingArguments:
    """TrainingArguments from the recipe's ``training`` block over finetune's defaults."""
    has_validation = recipe.data.validation_fraction > 0
    on_gpu = torch.cuda.is_available()
    accelerator = on_gpu or torch.backends.mps.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    defaults: dict[str, Any] = {
        # Without an accelerator, say so: under a multi-process launcher accelerate then
        # joins the ranks with gloo instead of running N independent single-process jobs.
        "use_cpu": not accelerator,
        # Per-epoch scores on the validation piece (never on the eval split): see data.py.
        "eval_strategy": "epoch" if has_validation else "no",
        "save_strategy": "epoch",
        "logging_strategy": "steps",
        "logging_steps": 10,
        "save_total_limit": 2,
        "report_to": "none",
        "seed": 42,
        # bf16 autocast on GPUs that have it: the usual 2× for free.
        "bf16": bool(on_gpu and torch.cuda.is_bf16_supported()),
        "tf32": bool(on_gpu and torch.cuda.get_device_capability()[0] >= 8),
        # Workers only read uint8 rows of the decoded cache; on CPU they would compete
        # with the model for the same cores.
        "dataloader_num_workers": min(4, (os.cpu_count() or 2) // 2) if on_gpu else 0,
    }
    user = dict(recipe.training)
    if "per_device_train_batch_size" in user and "per_device_eval_batch_size" not in user:
        defaults["per_device_eval_batch_size"] = user["per_device_train_batch_size"]
    if not has_validation and user.get("eval_strategy", "no") != "no":
        raise RecipeError(
            f"{source}: 'training.eval_strategy' is '{user['eval_strategy']}' but there is no validation piece "
            "(data.validation_fraction is 0); set data.validation_fraction > 0 or eval_strategy to 'no'"
        )
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
