"""The regularisers a recipe asks for (mixup/CutMix, label smoothing, class imbalance, EMA): the checks between their keys, and what the log and card say about them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # recipe_checks.py imports this module
    from .recipe import Recipe


def check(recipe: Recipe, source: str) -> list[str]:
    """One-line problems of the regularising keys (mixup/CutMix, class imbalance, the EMA of
    the weights), against each other and the rest of the recipe; empty when none."""
    problems: list[str] = []
    d, a, t = recipe.data, recipe.data.augment, recipe.training
    for key in ("mixup_alpha", "cutmix_alpha"):
        if getattr(a, key) < 0:
            problems.append(f"{source}: 'data.augment.{key}' must be >= 0 (0 turns it off), got {getattr(a, key)}")
    if not 0 <= a.mix_prob <= 1:
        problems.append(f"{source}: 'data.augment.mix_prob' is a probability: use a number in [0, 1], got {a.mix_prob}")
    elif a.mix_prob != 1 and not a.mixes:
        problems.append(
            f"{source}: 'data.augment.mix_prob' does nothing without 'data.augment.mixup_alpha' or "
            "'data.augment.cutmix_alpha' > 0; set one (e.g. mixup_alpha 0.2) or remove mix_prob"
        )
    if d.class_weights is not None and d.sampler is not None:
        problems.append(
            f"{source}: 'data.class_weights' and 'data.sampler' both correct the class imbalance, and together "
            "over-weight the rare classes; set only one of them"
        )
    if d.sampler is not None and t.get("train_sampling_strategy") not in (None, "random"):
        problems.append(
            f"{source}: 'data.sampler' '{d.sampler}' replaces the Trainer's sampler, so "
            "'training.train_sampling_strategy' cannot be set too; remove one of them"
        )
    ema = t.get("ema_decay")
    if isinstance(ema, (int, float)) and not isinstance(ema, bool) and not 0 < ema < 1:
        problems.append(f"{source}: 'training.ema_decay' must be in (0, 1), e.g. 0.999 (null: off), got {ema}")
    if ema is None and "ema_warmup" in t:
        problems.append(f"{source}: 'training.ema_warmup' does nothing without 'training.ema_decay'; set it or remove ema_warmup")
    if ema is not None and (t.get("fsdp") or t.get("deepspeed")):
        problems.append(
            f"{source}: 'training.ema_decay' keeps a full copy of the weights on each process, which FSDP and "
            "DeepSpeed shard; remove ema_decay or run with DDP"
        )
    if ema is not None and recipe.model.strategy == "lora":
        # Its checkpoints hold the adapters alone; an average of the whole model would put a
        # full copy of the frozen weights in each of them.
        problems.append(
            f"{source}: 'training.ema_decay' is not available with 'model.strategy' 'lora' (its checkpoints hold "
            "the adapters alone, an average would add the whole model to each); remove ema_decay"
        )
    if recipe.model.caches_features:
        used = [
            key for key, on in (
                ("data.augment.mixup_alpha", a.mixup_alpha > 0), ("data.augment.cutmix_alpha", a.cutmix_alpha > 0),
                ("data.class_weights", d.class_weights is not None), ("data.sampler", d.sampler is not None),
                ("training.ema_decay", ema is not None),
            ) if on
        ]
        if used:
            problems.append(
                f"{source}: {', '.join(repr(k) for k in used)} act(s) on the training of the whole model, but the "
                "linear probe trains its head on cached features; set model.feature_cache false (the backbone "
                "then runs every step) or remove them"
            )
    return problems
