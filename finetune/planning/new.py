"""From a data set, a model (or none) and a time budget to a checked recipe with the reason for each choice."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any

from finetune.planning import choose
from finetune.planning import scan as scanning
from finetune.planning import timing as timing_lib
from finetune.planning.choose import Plan
from finetune.recipe import ModelConfig, recipe_from_dict
from finetune.recipe import builtins as builtin_names

logger = logging.getLogger("finetune")

#: The built-in model ``finetune new`` picks on a CPU, and on a GPU with a short budget.
SMALL_MODEL = "builtin:efficientnet-lite0"
#: On a GPU with at least ``LARGER_MODEL_MINUTES`` and the ``models`` extra installed.
LARGER_MODEL = "builtin:efficientnet-lite2"
LARGER_MODEL_MINUTES = 10.0
#: The share of the training split held out as the validation piece: with a held-out split to
#: report on, the piece only selects (the L-BFGS head's λ, per-epoch scores, thresholds,
#: the temperature); without one, it is also what is reported, so it is larger.
VALIDATION_WITH_EVAL_SPLIT = 0.1
VALIDATION_WITHOUT = 0.2
#: The L-BFGS head's L2 strength when no separate piece may choose one.
PROBE_L2_WITHOUT_EVAL_SPLIT = 1e-3


def choose_model(requested: str | None, minutes: float, gpu: bool) -> tuple[str, str]:
    """The backbone, and why."""
    if requested:
        return requested, f"model {requested}: as asked (--model)"
    if gpu and minutes >= LARGER_MODEL_MINUTES and builtin_names.model_problem(LARGER_MODEL) is None:
        return LARGER_MODEL, (
            f"model {LARGER_MODEL} (ImageNet weights, 260 px): a GPU and {minutes:g} minutes afford the larger built-in"
        )
    where = "a GPU with a short budget" if gpu else "a CPU"
    return SMALL_MODEL, (
        f"model {SMALL_MODEL} (ImageNet weights): the smallest built-in, on {where}, where the cost of each image "
        "decides how many epochs fit"
    )


def make_plan(
    dataset: str,
    *,
    model: str | None = None,
    minutes: float = 10.0,
    train_split: str = "train",
    output_dir: str | None = None,
    search_trials: int | None = None,
    measure=None,
) -> tuple[scanning.Scan, timing_lib.Timing, Plan]:
    """Scan, choose, time and write down the recipe (not to disk). ``measure``: the timing
    function (tests pass a fake one)."""
    import torch

    found = scanning.scan(dataset, train_split)
    if len(found.class_names) < 2:
        raise scanning.data.DataError(f"{dataset}: {len(found.class_names)} class found; classification needs at least 2")
    gpu = torch.cuda.is_available()
    notes: list[str] = []
    strategy, why = choose.strategy_for(found)
    notes.append(why)
    name, why = choose_model(model, minutes, gpu)
    notes.append(why)

    validation = VALIDATION_WITH_EVAL_SPLIT if found.eval_split else VALIDATION_WITHOUT
    num_val = round(validation * found.num_train)
    # A class keeps at least one training image, so a class of one image gives none.
    spare = sum(max(c - 1, 0) for c in found.counts)
    if num_val == 0 or spare == 0:
        if not found.eval_split:
            raise scanning.data.DataError(
                f"{dataset}: {found.num_train} training image(s), {found.per_class:g} per class: too few to hold any out "
                "for a score; add a 'test' folder of other images (test/CLASS/...), or more images"
            )
        validation, num_val = 0.0, 0
        notes.append(f"no validation piece: {found.num_train} training image(s) are too few to spare one")
    num_train = found.num_train - num_val
    num_eval = found.splits[found.eval_split] if found.eval_split else num_val
    if found.eval_split:
        notes.append(
            f"eval split '{found.eval_split}' ({num_eval:,} images), scored once at the end"
            + (f"; a seeded {validation:g} of '{found.train_split}' ({num_val:,} images) is the validation piece"
               if num_val else "")
        )
    else:
        notes.append(
            f"no held-out split in the data: a seeded {validation:g} of '{found.train_split}' ({num_val:,} images) "
            "is held out and reported (add a 'test' folder of other images for an independent score)"
        )

    model_cfg = ModelConfig(name_or_path=name, strategy=strategy)
    if strategy == "linear_probe":
        model_cfg.probe_solver = "lbfgs"
    batch = choose.batch_size(num_train)
    native = _native_size(model_cfg)
    cap, why_cap = choose.size_cap(found, native)
    sizes = [s for s in choose.SIZES if s <= cap] or [cap]
    timing = (measure or timing_lib.measure)(model_cfg, len(found.class_names), sizes, batch, multi_label=found.multi_label)
    timing.decode, timing.workers = timing_lib.decode_seconds(found.train, found.image_column, max(sizes))
    size, epochs, why_size = choose.choose_size_and_epochs(
        strategy, sizes, found, timing, minutes * 60, num_train, num_eval
    )
    notes.append(f"{why_size} ({why_cap}); {timing.describe()}")
    seconds = choose.plan_time(strategy, size, epochs, found, timing, num_train, num_eval)
    recipe = _recipe(found, name, strategy, size, epochs, batch, validation, gpu, timing, notes, output_dir)
    if found.imbalance >= choose.IMBALANCE_FROM and strategy != "linear_probe":
        if found.multi_label:
            recipe["data"]["class_weights"] = "balanced"
            notes.append(
                f"classes imbalanced {found.imbalance:.1f}× (≥ {choose.IMBALANCE_FROM:g}×): class weights, each "
                "class's positives weighted by its negatives over its positives (multi-label has no per-image class to sample by)"
            )
        else:
            recipe["data"]["sampler"] = "balanced"
            notes.append(
                f"classes imbalanced {found.imbalance:.1f}× (≥ {choose.IMBALANCE_FROM:g}×): the balanced sampler draws "
                "every class equally (the imbalance bench: macro recall 0.617 → 0.675 at 10×)"
            )
    if search_trials:
        recipe["search"] = _search_block(recipe, strategy)
        notes.append(
            f"search: {search_trials} trials around these choices; each trial costs about as much as the plan "
            f"({sum(seconds.values()) / 60:.1f} min), so the search takes about {search_trials * sum(seconds.values()) / 60:.0f} min"
        )
    plan = Plan(recipe=recipe, notes=notes, seconds=seconds)
    recipe["notes"] = notes
    recipe["description"] = _description(found, name, strategy, size, epochs, minutes, timing, plan)
    recipe_from_dict(recipe, "the written recipe")  # RecipeError if any choice does not fit together
    return found, timing, plan


def _native_size(cfg: ModelConfig) -> int:
    """The model's own input size, from its processor."""
    from finetune.data import output_size
    from finetune.models import classifier as model_lib

    return int(max(output_size(model_lib.load_processor(cfg, None))))


def _recipe(
    found: scanning.Scan, name: str, strategy: str, size: int, epochs: float, batch: int, validation: float,
    gpu: bool, timing: timing_lib.Timing, notes: list[str], output_dir: str | None,
) -> dict[str, Any]:
    model: dict[str, Any] = {"name_or_path": name, "strategy": strategy}
    data: dict[str, Any] = {
        "dataset": found.dataset,
        "train_split": found.train_split,
        "eval_split": found.eval_split,
        "validation_fraction": validation,
        "image_column": found.image_column,
        "label_column": found.label_column,
        "image_size": size,
    }
    if found.multi_label:
        data["task"] = "multi_label"
    training: dict[str, Any] = {"per_device_eval_batch_size": 128, "seed": 42}
    if strategy == "linear_probe":
        model["probe_solver"] = "lbfgs"
        data["augment"] = {"crop_scale": None, "hflip": False}
        if not found.eval_split or not validation:
            # The piece held out is also the one reported (or there is none): it must not choose λ.
            model["probe_l2"] = [PROBE_L2_WITHOUT_EVAL_SPLIT]
            notes.append(
                f"one L2 strength, {PROBE_L2_WITHOUT_EVAL_SPLIT:g} (the one the small-data LP-FT run chose on its "
                "validation piece): no separate validation piece may choose it here"
            )
        notes.append(
            "the L-BFGS head: multinomial logistic regression on the cached features, its L2 strength chosen on the "
            "validation piece (no learning rate, epochs or augmentation: the features are computed once)"
        )
    else:
        if strategy == "partial":
            model["unfreeze_last_n"] = timing.unfreeze_last_n
            notes.append(
                f"the last {timing.unfreeze_last_n} of the backbone's {timing.blocks} blocks train (the measured "
                "Lite0 recipe trains its last 4 of 7 stages; the same share here)"
            )
        lr, why = choose.learning_rate(strategy, timing.convolutional)
        data["augment"] = {"crop_scale": [0.6, 1.0], "hflip": True}
        training.update({
            "num_train_epochs": epochs,
            "learning_rate": lr,
            "weight_decay": 0.05,
            "warmup_steps": 0.1,
            "lr_scheduler_type": "cosine",
            "per_device_train_batch_size": batch,
            "save_total_limit": 1,
        })
        if not found.multi_label:
            training["label_smoothing_factor"] = 0.1
        notes.append(
            f"{why}; batch {batch}; weight decay 0.05, label smoothing 0.1, crops of 60-100% of the image and flips "
            "(the small-data recipe's; set data.augment.hflip false for text, digits or anything a mirror changes)"
        )
    if gpu:
        import torch

        key = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        training[key] = True
        notes.append(f"{key}: the fast precision of this GPU" + (" (no bf16 here: fp16 with a loss scaler)" if key == "fp16" else ""))
    else:
        notes.append("fp32: on a CPU, mixed precision does not pay")
    stem = Path(found.dataset.rstrip("/")).name or "data"
    return {
        "description": "",
        "model": model,
        "data": data,
        "training": training,
        "output_dir": output_dir or f"outputs/{stem}",
    }


def _search_block(recipe: dict[str, Any], strategy: str) -> dict[str, Any]:
    """A search around the choices: the learning rate ×/÷ 3, two epochs either way, the crop."""
    if strategy == "linear_probe":
        size = recipe["data"]["image_size"]
        return {"data.image_size": {"choice": sorted({max(64, size // 2), size})}}
    lr = recipe["training"]["learning_rate"]
    epochs = int(recipe["training"]["num_train_epochs"])
    return {
        "training.learning_rate": {"log_uniform": [lr / 3, lr * 3]},
        "training.num_train_epochs": {"int": [max(1, epochs - 2), epochs + 2]},
        "data.augment.crop_scale": {"choice": [[0.35, 1.0], [0.6, 1.0], [0.8, 1.0]]},
    }


def _description(
    found: scanning.Scan, name: str, strategy: str, size: int, epochs: float, minutes: float,
    timing: timing_lib.Timing, plan: Plan,
) -> str:
    what = "a linear probe (L-BFGS head on cached features)" if strategy == "linear_probe" else (
        f"a {strategy} fine-tune for {epochs:g} epochs")
    return (
        f"Written by `finetune new` on {datetime.date.today().isoformat()} for {found.dataset}: "
        f"{len(found.class_names)} classes, {found.num_train:,} training images ({found.per_class:g} per class, median). "
        f"{name}, {what}, at {size} px; planned to take about {plan.total_seconds / 60:.1f} of the {minutes:g} minutes "
        f"asked on {timing.device}. The notes say why each choice was made."
    )
