"""The choices of ``finetune new``, each a rule taken from the project's own study tables (docs/new.md lists them with their sources), each with the reason the recipe's notes give."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from finetune.planning.scan import Scan
from finetune.planning.timing import Timing

#: Fewer training images per class (the median class) than this: a linear probe on cached
#: features with the L-BFGS head. The k-shot study: the probe beats the full fine-tune at 5
#: per class and ties it at 20 at a fraction of the cost; the fine-tune leads at 100.
PROBE_BELOW = 50
#: From this many images per class on: a full fine-tune. Between the two a partial fine-tune,
#: which beat the full one with 200 per class (the small-data table); above a
#: thousand per class the regularising effect of freezing matters less and the table has no
#: measurement, so the usual default, full, is taken.
FULL_FROM = 1000
#: The most frequent class's images over the rarest's from which the balanced sampler is set
#: (the imbalance bench in docs/strategies.md: the sampler raised the macro recall most).
IMBALANCE_FROM = 3.0
#: Epochs the partial or full fine-tune aims for: the small-data table's best (5 tied 4 on the
#: validation piece) and the most worth planning for at this scale.
TARGET_EPOCHS = 5
MAX_EPOCHS = 10
#: Input sizes tried, smallest first; none above the model's own.
SIZES = (64, 96, 128, 160, 192, 224, 256, 288, 320, 384)
#: Inputs below this many times the images' own shorter side gain nothing from a larger size
#: (the small-data recipe trains 32-px CIFAR images at 96 px).
UPSCALE = 3
#: A run's fixed costs besides the model's load: the launcher and imports, the pictures, the
#: card and saving (the quickstart's start-up to its first step, in bench/README.md).
STARTUP_S = 12.0
#: The decode pass's own start (its worker processes, the cache's files), besides its images.
DECODE_FIXED_S = 3.0
#: What the plan leaves unspent, for the step-time noise of a shared or throttled machine.
MARGIN = 0.85


@dataclass
class Plan:
    """The recipe ``finetune new`` writes, and why."""

    recipe: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    #: Seconds the run is planned to take, by stage.
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def strategy_for(scan: Scan) -> tuple[str, str]:
    """The strategy for the data's images per class, and why."""
    k = scan.per_class
    if k < PROBE_BELOW:
        return "linear_probe", (
            f"{k:g} training images per class (median) is below {PROBE_BELOW}: a linear probe on cached features "
            "with the L-BFGS head (the k-shot study: it beats a full fine-tune at 5 per class, ties it at 20, and "
            "trains in seconds)"
        )
    if k < FULL_FROM:
        return "partial", (
            f"{k:g} training images per class (median), between {PROBE_BELOW} and {FULL_FROM}: a partial fine-tune, "
            "the early layers frozen (the small-data table: 0.764 against 0.721 for a full fine-tune and 0.643 for "
            "LP-FT with 200 per class)"
        )
    return "full", (
        f"{k:g} training images per class (median), {FULL_FROM} or more: a full fine-tune (freezing layers "
        "regularises small sets; at this size every layer is worth training)"
    )


def size_cap(scan: Scan, native: int) -> tuple[int, str]:
    """The largest input size worth training at: the model's own, or less for small images."""
    if scan.median_side and UPSCALE * scan.median_side < native:
        cap = max(s for s in SIZES if s <= max(SIZES[1], UPSCALE * scan.median_side))
        return cap, (
            f"the images' shorter side is {scan.median_side} px (median): inputs above {cap} px "
            f"({UPSCALE}× upscaled at most) add cost and little detail"
        )
    return native, f"the model's own input size, {native} px"


def batch_size(num_train: int) -> int:
    """64 (the shipped recipes' batch), smaller for a tiny set so an epoch has ≥ 8 steps."""
    batch = 64
    while batch > 8 and num_train / batch < 8:
        batch //= 2
    return batch


def plan_time(
    strategy: str, size: int, epochs: float, scan: Scan, timing: Timing, num_train: int, num_eval: int
) -> dict[str, float]:
    """Seconds of each stage of a run at ``size`` for ``epochs``."""
    total_images = sum(scan.splits.values())
    out = {
        "start-up": STARTUP_S + timing.load,
        "decode": DECODE_FIXED_S + total_images * timing.decode,
        # The eval split once, and the validation piece once more for the temperature.
        "final evaluation": (num_eval + scan.num_train - num_train) * timing.infer[size],
    }
    if strategy == "linear_probe":
        out["feature pass"] = scan.num_train * timing.infer[size]  # the training split, validation piece included
    else:
        out["training"] = epochs * num_train * timing.train[size]
        out["validation"] = epochs * (scan.num_train - num_train) * timing.infer[size]
    return out


def choose_size_and_epochs(
    strategy: str, sizes: list[int], scan: Scan, timing: Timing, budget_s: float, num_train: int, num_eval: int
) -> tuple[int, float, str]:
    """The largest size at which ``TARGET_EPOCHS`` fit the budget (a probe: one feature pass);
    then more epochs, up to ``MAX_EPOCHS``, with the time left; else fewer epochs at the
    smallest size. Returns (size, epochs, why)."""
    usable = budget_s * MARGIN
    fits = [s for s in sizes if sum(plan_time(strategy, s, TARGET_EPOCHS, scan, timing, num_train, num_eval).values()) <= usable]
    if strategy == "linear_probe":
        size = max(fits) if fits else min(sizes)
        why = (f"{size} px: the largest input whose feature pass fits the budget" if fits
               else f"{size} px, the smallest tried: even its feature pass may exceed the budget")
        return size, 0, why
    if fits:
        size = max(fits)
        per_epoch = plan_time(strategy, size, 1, scan, timing, num_train, num_eval)
        fixed = sum(v for k, v in per_epoch.items() if k not in ("training", "validation"))
        epoch_s = per_epoch.get("training", 0) + per_epoch.get("validation", 0)
        epochs = min(MAX_EPOCHS, max(TARGET_EPOCHS, math.floor((usable - fixed) / epoch_s))) if epoch_s else TARGET_EPOCHS
        return size, epochs, (
            f"{size} px, {epochs} epochs: the largest input at which {TARGET_EPOCHS} epochs fit the budget"
            + (f", and the time left buys {epochs - TARGET_EPOCHS} more" if epochs > TARGET_EPOCHS else "")
        )
    size = min(sizes)
    per_epoch = plan_time(strategy, size, 1, scan, timing, num_train, num_eval)
    fixed = sum(v for k, v in per_epoch.items() if k not in ("training", "validation"))
    epoch_s = per_epoch.get("training", 0) + per_epoch.get("validation", 0)
    epochs = max(0.25, math.floor(4 * (usable - fixed) / epoch_s) / 4) if epoch_s else 1
    return size, epochs, (
        f"{size} px, {epochs:g} epoch(s): the smallest input, and as many epochs as the budget allows "
        f"(fewer than the {TARGET_EPOCHS} the measurements favour; a longer budget would help)"
    )


def learning_rate(strategy: str, convolutional: bool) -> tuple[float, str]:
    """The fine-tune's peak learning rate (AdamW, batch 64, cosine after 10% warmup)."""
    if convolutional:
        return 2e-3, "learning rate 2e-3: the best of 1e-3, 2e-3, 3e-3 and 4e-3 in the small-data table (EfficientNet-Lite0)"
    return 1e-4, (
        "learning rate 1e-4: the usual fine-tuning rate for attention models (ViT, DeiT, Swin) at batch 64; "
        "not measured here, so worth a `--search`"
    )
