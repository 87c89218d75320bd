"""A run as resolved once from its recipe: what each stage of training needs, filled in stage by stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import Trainer

from finetune.models import strategies
from finetune.recipe import Recipe
from finetune.training.interrupts import InterruptCallback
from finetune.training.prepared_data import Prepared
from finetune.training.shared import SharedWork


@dataclass
class Run:
    """A run as resolved once from its recipe, filled in stage by stage: what each stage
    needs comes from here, not from the recipe again."""

    recipe: Recipe
    #: The TrainingArguments the recipe makes (finetune's defaults applied).
    args: Any
    #: accelerate's PartialState: this process's rank among the run's processes.
    state: Any
    out: Path
    strategy: strategies.Strategy
    #: The checkpoint training resumes from, or None.
    resume: str | None = None
    #: What the runs of a study or search share (None for a single run).
    shared: SharedWork | None = None
    #: How ``finetune search`` chose this recipe, for the card; None otherwise.
    search: dict[str, Any] | None = None
    #: A search trial: no eval split, no files written, the trial's cache kept.
    for_trial: bool = False
    interrupts: InterruptCallback | None = None
    # Filled in by _build.
    prepared: Prepared | None = None
    loaded: Any = None
    transform: Any = None
    accumulator: Any = None
    trainer: Trainer | None = None
    #: Whether the run calibrates, decided before training (:func:`finetune.training.calibrate.plan`).
    calibration: Any = None
    #: LP-FT's probe phase (:mod:`finetune.training.lp_ft`), or None.
    lp_record: dict[str, Any] | None = None
    #: What ``finetune.training.finish.finish`` has done, for the message if a signal stops it.
    done: list[str] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.state.is_main_process
