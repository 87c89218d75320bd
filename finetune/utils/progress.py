"""Progress bars for finetune's own long passes (the feature pass, the L-BFGS fits), shown as the Trainer shows its own."""

from __future__ import annotations

from typing import Any

# tqdm.auto, as transformers' ProgressCallback: a widget in notebooks, text on stderr elsewhere.
from tqdm.auto import tqdm


def shows_progress(disable_tqdm: bool | None, process_index: int) -> bool:
    """The Trainer's rule (its ProgressCallback): a bar on the main process only, global rank 0,
    and none when ``training.disable_tqdm`` is set. Other ranks would print the same bar again."""
    return not disable_tqdm and process_index == 0


def bar(args: Any, total: int, desc: str, unit: str = "img", process_index: int | None = None):
    """A tqdm bar of ``total`` ``unit`` with its rate (images/s), silent where the Trainer's own
    bars are. ``args``: the run's TrainingArguments, or None outside a Trainer (a bar, then);
    ``process_index``: this process's global rank when ``args`` does not say it."""
    if process_index is None:
        process_index = getattr(args, "process_index", 0)
    show = shows_progress(getattr(args, "disable_tqdm", False), process_index)
    # Thousands as "12.3k" (unit_scale), but small counts as whole numbers: tqdm's scaling
    # would print 9 images as "9.00".
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=total >= 1000, dynamic_ncols=True, disable=not show)
